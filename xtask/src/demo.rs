//! `cargo xtask demo`: the whole gateway in about a minute.
//!
//! Builds halod, brings up a test bed (prefix `hd-demo-`: 4 nodes, 1 client), starts `halod run`
//! in the gateway namespace and, in each node namespace, a backend server that answers every
//! route port with the node's name plus the `halod node` agent (the second node to join waits as
//! the spare). With the first three nodes up, client1 holds two echoing connections per route
//! while n4 joins: the moved routes drain, no connection is reset, and after the window the old
//! nodes' connections are handed over. Then it sends client traffic to every route of the VIP,
//! prints `halod routes` and `halod nodes`, lets n1's machine die (its link goes down, then its
//! agent and backend are killed) under idle client connections, measures how long until n1's
//! first route answers from its new owner and until each idle client is reset (the dead-node
//! flush), prints `halod status` and `halod stats`, and tears everything down (the gateway, its
//! pinned program and state with `halod teardown`, the test bed).

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::command::describe;
use crate::echo::{Conn, EchoClients};
use crate::testbed::{Testbed, TestbedOptions};
use crate::{setup, workspace};

/// The demo's own prefix, so it never removes a test bed someone brought up by hand.
pub const PREFIX: &str = "hd-demo-";
/// Routes of the demo gateway; route `r` is port 8000 + r - 1 and 9000 + r - 1.
const ROUTES: u16 = 12;
const BASES: [u16; 2] = [8000, 9000];
const NODES: usize = 4;
/// `nodes.drain_ms` of the demo gateway: short, to show the window's end.
const DRAIN_MS: u64 = 3000;
const TICK: Duration = Duration::from_millis(100);
const NODES_PORT: u16 = 7000;
const DEADLINE: Duration = Duration::from_secs(30);

pub fn run() -> Result<()> {
    setup::require_root("the demo builds network namespaces and loads XDP (root)")?;
    setup::run()?;
    step("building halod (with the real eBPF object)");
    crate::command::run_visible(workspace::cargo().args(["build", "-p", "halod"]))?;
    let halod = workspace::halod_binary("debug");
    println!("built {}", halod.display());

    step(&format!(
        "bringing up the test bed: {NODES} nodes, 1 client (prefix {PREFIX})"
    ));
    let mut demo = Demo::new(
        TestbedOptions {
            prefix: PREFIX.into(),
            nodes: NODES,
            clients: 1,
        },
        halod,
    )?;
    let result = demo.show();
    step("tearing down");
    let down = demo.down();
    result?;
    down?;
    println!("demo done: nothing is left behind");
    Ok(())
}

fn step(what: &str) {
    println!("\n==> {what}");
}

/// A test bed plus the processes the demo started in it.
pub struct Demo {
    pub bed: Testbed,
    halod: PathBuf,
    dir: PathBuf,
    children: Vec<(String, Child)>,
}

impl Demo {
    pub fn new(opts: TestbedOptions, halod: PathBuf) -> Result<Demo> {
        let dir = std::env::temp_dir().join(format!("halod-demo-{}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Demo {
            bed: Testbed::up(opts)?,
            halod,
            dir,
            children: Vec::new(),
        })
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("halod.yaml")
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("halod.sock")
    }

    fn show(&mut self) -> Result<()> {
        step("starting the gateway: halod run (1 spare, heartbeat 100 ms, dead after 3)");
        self.start_gateway()?;
        println!(
            "gateway up: VIP {}, {ROUTES} routes on ports {}..{} and {}..{}, nodes register at {}:{NODES_PORT}",
            self.bed.vip(),
            BASES[0],
            BASES[0] + ROUTES - 1,
            BASES[1],
            BASES[1] + ROUTES - 1,
            self.bed.gateway_internal_addr()
        );

        step("starting a backend server and the halod node agent in nodes 1 to 3");
        for node in 1..NODES {
            self.start_node(node)?;
        }
        self.wait_served(NODES - 1)?;
        self.join_under_traffic()?;

        step("client1 connects to every route of the VIP (through the XDP program)");
        let answers = self.answers()?;
        let mut by_node: BTreeMap<String, Vec<u16>> = BTreeMap::new();
        for (route, node) in &answers {
            by_node.entry(node.clone()).or_default().push(*route);
        }
        for (node, routes) in &by_node {
            println!("{node} answered routes {routes:?}");
        }

        step("halod routes");
        print!("{}", self.halod_output(&["routes"])?);
        step("halod nodes");
        print!("{}", self.halod_output(&["nodes"])?);

        step(
            "n1's machine dies: its link goes down (no FIN or RST gets out), then its agent and backend are killed",
        );
        let first = answers
            .iter()
            .find(|(_, node)| *node == "n1")
            .map(|(route, _)| *route)
            .context("n1 serves no route")?;
        let n1_ports: Vec<u16> = answers
            .iter()
            .filter(|(_, node)| *node == "n1")
            .map(|(route, _)| BASES[0] + route - 1)
            .collect();
        let mut idle = EchoClients::new(&self.bed, 1);
        idle.open(n1_ports, 2)?;
        println!(
            "client1 holds {} idle connections to n1's routes (nothing sent from now on)",
            idle.conns.len()
        );
        crate::command::run(Command::new("ip").args([
            "-n",
            &self.bed.node_ns(1),
            "link",
            "set",
            crate::testbed::HOST_IF,
            "down",
        ]))?;
        let killed = Instant::now();
        for label in ["agent n1", "backend n1"] {
            if let Some((_, child)) = self.children.iter_mut().find(|(l, _)| l == label) {
                let _ = child.kill();
            }
        }
        let (new_owner, reset) = thread::scope(|scope| -> Result<(String, Vec<Duration>)> {
            let waiting = scope.spawn(|| idle.await_idle(killed, Duration::from_secs(5)));
            let new_owner = loop {
                match self.probe(BASES[0] + first - 1) {
                    Some(node) if node != "n1" => break node,
                    _ => {}
                }
                if killed.elapsed() > DEADLINE {
                    bail!("route {first} was not served again within {DEADLINE:?}");
                }
                thread::sleep(Duration::from_millis(2));
            };
            let failover = killed.elapsed();
            let ended = waiting.join().expect("the idle clients' watch");
            println!(
                "failover: route {first} (n1's) answered by {new_owner} {:.0} ms after the link \
                 went down (the gateway fails a node after dead_after x heartbeat_ms = 300 ms of \
                 silence; client-side, probing every 2 ms)",
                failover.as_secs_f64() * 1000.0
            );
            Ok((
                new_owner,
                ended
                    .into_iter()
                    .filter(|(_, _, why)| why.starts_with("ConnectionReset"))
                    .map(|(_, after, _)| after)
                    .collect(),
            ))
        })?;
        let ms = |t: Option<&Duration>| {
            t.map_or("-".into(), |t| format!("{:.0}", t.as_secs_f64() * 1000.0))
        };
        println!(
            "n1's idle clients: {} of {} reset without sending anything, {}..{} ms after the link \
             went down (the gateway's dead-node flush; the browsers reconnect to {new_owner} at \
             once instead of waiting for their next send or TCP keepalive)",
            reset.len(),
            idle.conns.len(),
            ms(reset.first()),
            ms(reset.last())
        );
        let after = self.answers()?;
        let moved: Vec<u16> = after
            .iter()
            .filter(|(route, node)| answers.get(route) != Some(node))
            .map(|(route, _)| *route)
            .collect();
        println!("routes that changed node: {moved:?} (only n1's: the spare took its slot)");

        step("halod status");
        print!("{}", self.halod_output(&["status"])?);
        step("halod stats");
        print!("{}", self.halod_output(&["stats"])?);
        Ok(())
    }

    /// n4 joins while client1 holds two long-lived connections per route,
    /// each echoing every 100 ms: the routes that move drain, so no
    /// connection is reset; new connections reach n4 at once.
    fn join_under_traffic(&mut self) -> Result<()> {
        step(&format!(
            "client1 opens 2 long-lived connections per route ({} in all), each echoing every 100 ms",
            2 * ROUTES
        ));
        // The joins of n1 to n3 made drains too: let them end first.
        let start = Instant::now();
        while self
            .halod_output(&["routes", "--json"])?
            .contains(r#""draining""#)
        {
            if start.elapsed() > DEADLINE {
                bail!("the drains of the first joins did not end");
            }
            thread::sleep(Duration::from_millis(100));
        }
        let mut clients = EchoClients::new(&self.bed, 1);
        clients.open((0..ROUTES).map(|r| BASES[0] + r), 2)?;
        clients.run_for(Duration::from_millis(500), TICK);
        step("n4 joins under that traffic (nodes.drain_ms: 3000)");
        self.start_node(NODES)?;
        self.wait_served(NODES)?;
        clients.run_for(Duration::from_millis(1000), TICK);
        print!("{}", self.halod_output(&["routes"])?);
        let owners = self.answers()?;
        let moved: Vec<&Conn> = clients
            .conns
            .iter()
            .filter(|c| owners.get(&(c.port - BASES[0] + 1)) != Some(&c.node))
            .collect();
        let reset = clients.ended().filter(|c| c.reset()).count();
        println!(
            "{} connections were on routes that moved to n4; they stay on their old nodes \
             for the drain: {reset} connections reset by the join, {} still echoing",
            moved.len(),
            clients.open_count()
        );
        let fresh = clients.open([BASES[0] + ROUTES - 1], 1)?;
        println!(
            "a new connection to route {ROUTES} (moved) reached {}",
            clients.conns[fresh[0]].node
        );
        clients.run_for(Duration::from_millis(DRAIN_MS + 500), TICK);
        let handed = clients.ended().filter(|c| c.reset()).count();
        println!(
            "after the {:.0} s window, {handed} connections still open on the old nodes reached \
             n4, which reset them (a push server closes them within the window, spread out: \
             examples/node.py does)",
            DRAIN_MS as f64 / 1000.0
        );
        Ok(())
    }

    fn start_gateway(&mut self) -> Result<()> {
        let config = format!(
            "instance: hd_demo\n\
             interfaces: {{external: ext0, internal: int0}}\n\
             vip: {vip}\n\
             routes: {ROUTES}\n\
             listeners:\n  - {{name: browser, base_port: {b0}}}\n  - {{name: app, base_port: {b1}}}\n\
             nodes:\n  listen: {gw}:{NODES_PORT}\n  heartbeat_ms: 100\n  dead_after: 3\n  spares: 1\n  \
             drain_ms: {DRAIN_MS}\n\
             control: {{socket: {socket}}}\n\
             state_file: {dir}/state.json\n",
            vip = self.bed.vip(),
            b0 = BASES[0],
            b1 = BASES[1],
            gw = self.bed.gateway_internal_addr(),
            socket = self.socket().display(),
            dir = self.dir.display(),
        );
        fs::write(self.config_path(), config).context("writing the demo config")?;
        let log = self.dir.join("gateway.log");
        let mut cmd = self
            .bed
            .command(&self.bed.gateway_ns(), &self.halod.display().to_string());
        cmd.arg("run")
            .arg("--config")
            .arg(self.config_path())
            .arg("--reset")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?);
        self.spawn_in("gateway", cmd)?;
        let start = Instant::now();
        while !fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("gateway running")
        {
            if let Some((_, child)) = self.children.iter_mut().find(|(l, _)| l == "gateway")
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!(
                    "halod run exited ({status}); its log:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if start.elapsed() > DEADLINE {
                bail!("the gateway did not start; see {}", log.display());
            }
            thread::sleep(Duration::from_millis(50));
        }
        println!("gateway log: {}", log.display());
        Ok(())
    }

    fn start_node(&mut self, node: usize) -> Result<()> {
        let name = format!("n{node}");
        let ns = self.bed.node_ns(node);
        let ports = BASES
            .iter()
            .flat_map(|base| (0..ROUTES).map(move |offset| base + offset));
        let mut backend = self.bed.backend_command(node, &name, ports);
        backend.stdout(Stdio::piped());
        self.spawn_in(&format!("backend {name}"), backend)?;
        let (_, child) = self.children.last_mut().expect("just pushed");
        let mut ready = String::new();
        BufReader::new(child.stdout.take().context("backend stdout")?)
            .read_line(&mut ready)
            .context("waiting for the backend")?;
        if ready.trim() != "ready" {
            bail!("the backend of {name} did not start");
        }
        let log = self.dir.join(format!("agent-{name}.log"));
        let mut agent = self.bed.command(&ns, &self.halod.display().to_string());
        agent
            .arg("node")
            .arg("--gateway")
            .arg(format!("{}:{NODES_PORT}", self.bed.gateway_internal_addr()))
            .args(["--name", &name])
            .stdout(fs::File::create(&log)?)
            .stderr(Stdio::null());
        self.spawn_in(&format!("agent {name}"), agent)?;
        let start = Instant::now();
        let welcome = loop {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains(r#""type":"welcome""#)) {
                break line.to_string();
            }
            if start.elapsed() > DEADLINE {
                bail!("{name} was not welcomed; see {}", log.display());
            }
            thread::sleep(Duration::from_millis(20));
        };
        let role = if welcome.contains(r#""role":"spare""#) {
            "spare"
        } else {
            "active"
        };
        let routes = welcome.matches(r#""route":"#).count();
        println!(
            "{name} ({}) registered as {role} with {routes} routes",
            self.bed.node_addr(node)
        );
        Ok(())
    }

    /// Waits until `halod nodes` lists `count` nodes and every route is served.
    fn wait_served(&self, count: usize) -> Result<()> {
        let start = Instant::now();
        loop {
            let nodes = self.halod_output(&["nodes", "--json"])?;
            let routes = self.halod_output(&["routes", "--json"])?;
            if nodes.matches(r#""name":"#).count() == count && !routes.contains(r#""node":null"#) {
                return Ok(());
            }
            if start.elapsed() > DEADLINE {
                bail!("the gateway never served every route: {routes}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `halod ARGS --socket S` and returns its stdout.
    fn halod_output(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(&self.halod);
        cmd.args(args).arg("--socket").arg(self.socket());
        let output = cmd
            .output()
            .with_context(|| format!("running `{}`", describe(&cmd)))?;
        if !output.status.success() {
            bail!(
                "`{}` failed: {}",
                describe(&cmd),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The node that answers on `port` of the VIP, from client1.
    fn probe(&self, port: u16) -> Option<String> {
        self.bed.answering_node(port, Duration::from_millis(300))
    }

    /// Route -> answering node, for every route (first listener's port);
    /// checks that the second listener's port reaches the same node.
    fn answers(&self) -> Result<BTreeMap<u16, String>> {
        let mut answers = BTreeMap::new();
        for route in 1..=ROUTES {
            let first = self.probe(BASES[0] + route - 1);
            let second = self.probe(BASES[1] + route - 1);
            match (first, second) {
                (Some(a), Some(b)) if a == b => {
                    answers.insert(route, a);
                }
                (a, b) => bail!(
                    "route {route}: port {} answered {a:?}, port {} answered {b:?}",
                    BASES[0] + route - 1,
                    BASES[1] + route - 1
                ),
            }
        }
        Ok(answers)
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

    /// Stops the gateway, removes its pinned program and state (`halod teardown`), removes the
    /// test bed (which kills the processes in it) and reaps the processes.
    pub fn down(mut self) -> Result<()> {
        self.stop_gateway();
        let teardown = Command::new(&self.halod)
            .arg("teardown")
            .arg("--config")
            .arg(self.config_path())
            .stdout(Stdio::null())
            .status();
        let result = Testbed::down_prefix(self.bed.prefix());
        self.reap();
        let _ = fs::remove_dir_all(&self.dir);
        match teardown {
            Ok(status) if status.success() => result,
            Ok(status) => bail!("halod teardown failed ({status})"),
            Err(e) => Err(e).context("running halod teardown"),
        }
    }

    fn stop_gateway(&mut self) {
        if let Some((_, child)) = self.children.iter_mut().find(|(l, _)| l == "gateway") {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let start = Instant::now();
            while matches!(child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(10)
            {
                thread::sleep(Duration::from_millis(20));
            }
        }
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
            self.stop_gateway();
            let _ = Command::new(&self.halod)
                .arg("teardown")
                .arg("--config")
                .arg(self.config_path())
                .stdout(Stdio::null())
                .status();
            let _ = Testbed::down_prefix(self.bed.prefix());
            self.reap();
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
