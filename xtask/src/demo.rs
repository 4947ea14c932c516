//! `cargo xtask demo`: build halod, bring up a test bed and show real traffic crossing it.
//!
//! Today the gateway forwards with plain kernel routing: each node runs a small TCP server that
//! answers with its name, and client1 connects to every node through the gateway. The steps are
//! separate methods of [`Demo`] so the control plane can add its own: start `halod run` in the
//! gateway namespace ([`Demo::spawn_in`] with [`workspace::halod_binary`]), `halod node` agents
//! in the node namespaces, traffic to VIP ports, a node failure, the route table.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::command::{self, describe};
use crate::testbed::{Testbed, TestbedOptions};
use crate::{setup, workspace};

/// The demo's own prefix, so it never removes a test bed someone brought up by hand.
pub const PREFIX: &str = "hd-demo-";
/// The port of each node's name server.
pub const NAME_PORT: u16 = 7000;

pub fn run() -> Result<()> {
    setup::require_root("the demo builds network namespaces (CAP_SYS_ADMIN/CAP_NET_ADMIN)")?;
    setup::run()?;
    step("building halod (with the real eBPF object)");
    command::run_visible(workspace::cargo().args(["build", "-p", "halod"]))?;
    println!("built {}", workspace::halod_binary("debug").display());

    step("bringing up the test bed: 3 nodes, 1 client");
    let mut demo = Demo::new(TestbedOptions {
        prefix: PREFIX.into(),
        nodes: 3,
        clients: 1,
    })?;
    print!("{}", Testbed::status_prefix(PREFIX)?);

    step(&format!(
        "starting a name server on port {NAME_PORT} in every node"
    ));
    demo.start_name_servers()?;

    step("client1 connects to every node through the gateway (plain kernel routing)");
    let mut failures = 0;
    for node in 1..=demo.bed.nodes() {
        let addr = demo.bed.node_addr(node);
        match demo.ask_name(1, addr, NAME_PORT) {
            Ok((answer, elapsed)) => println!(
                "client1 {} -> {addr}:{NAME_PORT}: answered {answer:?} in {elapsed:.1?}",
                demo.bed.client_addr(1)
            ),
            Err(e) => {
                failures += 1;
                println!("client1 -> {addr}:{NAME_PORT}: FAILED: {e:#}");
            }
        }
    }

    step("tearing down");
    demo.down()?;
    if failures > 0 {
        bail!("{failures} of 3 connections through the gateway failed");
    }
    println!("demo done: every node answered through the gateway; nothing is left behind");
    Ok(())
}

fn step(what: &str) {
    println!("\n==> {what}");
}

/// A test bed plus the processes the demo started in it.
pub struct Demo {
    pub bed: Testbed,
    children: Vec<(String, Child)>,
}

impl Demo {
    pub fn new(opts: TestbedOptions) -> Result<Demo> {
        Ok(Demo {
            bed: Testbed::up(opts)?,
            children: Vec::new(),
        })
    }

    /// Starts `cmd` (made with [`Testbed::command`]) and keeps it until the demo ends.
    pub fn spawn_in(&mut self, label: &str, mut cmd: Command) -> Result<()> {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {label}: `{}`", describe(&cmd)))?;
        self.children.push((label.to_string(), child));
        Ok(())
    }

    /// One socat per node that answers every connection with the node's name and address.
    pub fn start_name_servers(&mut self) -> Result<()> {
        for node in 1..=self.bed.nodes() {
            let ns = self.bed.node_ns(node);
            let mut cmd = self.bed.command(&ns, "socat");
            cmd.arg(format!("TCP-LISTEN:{NAME_PORT},reuseaddr,fork"))
                .arg(format!("EXEC:echo node{node} {}", self.bed.node_addr(node)))
                .stdout(Stdio::null());
            self.spawn_in(&format!("name server of node{node}"), cmd)?;
        }
        Ok(())
    }

    /// Connects from client `client` to `addr:port` with socat and returns the answer and how
    /// long it took. Retries for a few seconds while the server is still starting.
    pub fn ask_name(&self, client: usize, addr: Ipv4Addr, port: u16) -> Result<(String, Duration)> {
        let ns = self.bed.client_ns(client);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let started = Instant::now();
            let mut cmd = self.bed.command(&ns, "socat");
            cmd.args(["-T", "3", "-u"])
                .arg(format!("TCP:{addr}:{port},connect-timeout=2"))
                .arg("STDOUT");
            match command::run(&mut cmd) {
                Ok(answer) if !answer.trim().is_empty() => {
                    return Ok((answer.trim().to_string(), started.elapsed()));
                }
                Ok(_) if Instant::now() < deadline => {}
                Err(_) if Instant::now() < deadline => {}
                Ok(_) => bail!("`{}` got an empty answer", describe(&cmd)),
                Err(e) => return Err(e),
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Removes the test bed (which kills the processes in it) and reaps the processes.
    pub fn down(mut self) -> Result<()> {
        let result = Testbed::down_prefix(self.bed.prefix());
        self.reap();
        result
    }

    fn reap(&mut self) {
        for (label, child) in &mut self.children {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            if let Err(e) = child.wait() {
                eprintln!("warning: waiting for {label}: {e}");
            }
        }
        self.children.clear();
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // The test bed's own Drop runs after this and removes the namespaces.
        if !self.children.is_empty() {
            let _ = Testbed::down_prefix(self.bed.prefix());
            self.reap();
        }
    }
}
