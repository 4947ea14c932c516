//! One gateway in a test bed, for the end-to-end tests: the network namespaces, a
//! private directory with the config, `halod run` in the gateway namespace with its log
//! kept, the operator commands against its socket, backends and agents in the node
//! namespaces. Dropping it stops the gateway (SIGCONT, then SIGTERM), runs
//! `halod teardown` and removes the directory, even when the test failed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use xtask::testbed::{Testbed, TestbedOptions};

use super::{Process, expect_line_within, follow, keep_log};

pub const HALOD: &str = env!("CARGO_BIN_EXE_halod");
/// Where node agents reach the gateway (`nodes.listen` port).
pub const NODES_PORT: u16 = 7000;
/// Generous: correctness deadlines, never performance checks.
const DEADLINE: Duration = Duration::from_secs(30);

/// The gateway's side of an end-to-end test.
pub struct Gateway {
    pub bed: Testbed,
    /// Private to this test: config, socket, state file, token.
    pub dir: PathBuf,
    pub config: PathBuf,
    /// The prefix without its dash, dashes as underscores: a valid instance name.
    pub instance: String,
    pub prefix: String,
    /// `halod run`, while it runs.
    pub gateway: Option<Process>,
    /// Every line the gateway logged (all of its runs).
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// A test bed with `nodes` node namespaces and one client, and the config that
    /// `config` writes (given the bed, the instance name and the directory). The
    /// gateway is not started.
    pub fn prepare(
        prefix: &str,
        nodes: usize,
        config: impl FnOnce(&Testbed, &str, &Path) -> String,
    ) -> Gateway {
        super::require_root(
            "the end-to-end tests build network namespaces and load XDP programs; \
             run them through `cargo xtask test` as root",
        );
        let bed = Testbed::up(TestbedOptions {
            prefix: prefix.into(),
            nodes,
            clients: 1,
        })
        .unwrap_or_else(|e| panic!("test bed {prefix} did not come up: {e:#}"));
        let dir = std::env::temp_dir().join(format!("halod-{prefix}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let instance = prefix.trim_end_matches('-').replace('-', "_");
        let path = dir.join("halod.yaml");
        std::fs::write(&path, config(&bed, &instance, &dir)).unwrap();
        Gateway {
            bed,
            dir,
            config: path,
            instance,
            prefix: prefix.into(),
            gateway: None,
            log: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// `halod run --config CONFIG` in the gateway's namespace, stderr piped.
    pub fn command(&self, config: &Path) -> Command {
        let mut command = self.bed.command(&self.bed.gateway_ns(), HALOD);
        command
            .args(["run", "--config"])
            .arg(config)
            .env("HALOD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    /// Starts `halod run` and waits for "gateway running"; panics with its log when
    /// it does not start.
    pub fn run(&mut self) {
        let mut gateway = Process::spawn("gateway", self.command(&self.config));
        let started = keep_log(
            format!("{}gateway", self.prefix),
            gateway.child.stderr.take().unwrap(),
            self.log.clone(),
            "gateway running",
        );
        if started.recv_timeout(DEADLINE).is_err() {
            let status = gateway.child.try_wait().unwrap();
            panic!(
                "the gateway did not start (exit: {status:?}); its log:\n{}",
                self.log_text()
            );
        }
        self.gateway = Some(gateway);
    }

    /// Where node agents connect: the gateway's internal address, `NODES_PORT`.
    pub fn address(&self) -> String {
        format!("{}:{NODES_PORT}", self.bed.gateway_internal_addr())
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("halod.sock")
    }

    /// `halod ARGS --socket S` on the host (the socket is a file: no namespace needed).
    pub fn halod(&self, args: &[&str]) -> Output {
        Command::new(HALOD)
            .args(args)
            .arg("--socket")
            .arg(self.socket())
            .output()
            .unwrap()
    }

    /// `halod COMMAND --json`, parsed; panics on failure.
    pub fn json(&self, command: &str) -> Value {
        let output = self.halod(&[command, "--json"]);
        assert!(
            output.status.success(),
            "halod {command}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// A backend in node `i`'s namespace answering `name\n` on `ports` of the node's
    /// own address; returns once it is listening.
    pub fn backend(&self, i: usize, name: &str, ports: impl IntoIterator<Item = u16>) -> Process {
        let mut command = self.bed.backend_command(i, name, ports);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut process = Process::spawn(&format!("backend {name}"), command);
        let lines = follow(
            format!("backend {name}"),
            process.child.stdout.take().unwrap(),
        );
        expect_line_within(&lines, "backend ready", DEADLINE, |line| line == "ready");
        process
    }

    /// `halod node` (with `extra` arguments) in node `i`'s namespace; returns it with
    /// its stdout lines.
    pub fn agent(&self, i: usize, name: &str, extra: &[&str]) -> (Process, Receiver<String>) {
        let mut command = self.bed.command(&self.bed.node_ns(i), HALOD);
        command
            .args(["node", "--gateway", &self.address(), "--name", name])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut process = Process::spawn(&format!("agent {name}"), command);
        let lines = follow(
            format!("agent {name}"),
            process.child.stdout.take().unwrap(),
        );
        (process, lines)
    }

    /// An agent that has registered (its `welcome` line came), with its lines.
    pub fn registered_agent(&self, i: usize, name: &str) -> (Process, Receiver<String>, String) {
        let (agent, lines) = self.agent(i, name, &[]);
        let welcome = expect_line_within(&lines, "welcome", DEADLINE, |line| {
            line.contains(r#""type":"welcome""#)
        });
        (agent, lines, welcome)
    }

    pub fn logged(&self, needle: &str) -> bool {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|line| line.contains(needle))
    }

    /// Waits until the gateway has logged `needle`.
    pub fn wait_logged(&self, needle: &str) {
        let start = Instant::now();
        while !self.logged(needle) {
            assert!(
                start.elapsed() < DEADLINE,
                "the gateway did not log {needle:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }
}

/// The first lines of a test gateway's config: `instance`, the test bed's
/// interfaces and VIP, `routes`, and a listener group per base port (`browser`,
/// then `app`). The caller adds `nodes:`, `control:` and the rest.
pub fn config_head(bed: &Testbed, instance: &str, routes: u16, bases: &[u16]) -> String {
    let mut head = format!(
        "instance: {instance}\n\
         interfaces: {{external: ext0, internal: int0}}\n\
         vip: {vip}\n\
         routes: {routes}\n\
         listeners:\n",
        vip = bed.vip(),
    );
    for (base, name) in bases.iter().zip(["browser", "app", "admin", "extra"]) {
        head.push_str(&format!("  - {{name: {name}, base_port: {base}}}\n"));
    }
    head
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(gateway) = &mut self.gateway {
            // A test may leave it stopped.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(gateway.child.id() as i32),
                Signal::SIGCONT,
            );
            gateway.signal(Signal::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = gateway.child.try_wait() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        // The guard kills it if it did not stop.
        self.gateway = None;
        // The stopped gateway left its program attached: remove everything.
        let teardown = Command::new(HALOD)
            .args(["teardown", "--config"])
            .arg(&self.config)
            .output();
        if let Ok(output) = teardown
            && !output.status.success()
        {
            eprintln!("teardown: {}", String::from_utf8_lossy(&output.stderr));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Declares a test file's own gateway bed: a newtype over [`Gateway`] that reads as
/// one (`Deref`, `DerefMut`), to which the file adds its own helpers. (Not every test
/// file that includes `support` has a gateway.)
#[allow(unused_macros)]
macro_rules! bed {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        struct $name(support::gateway::Gateway);

        impl std::ops::Deref for $name {
            type Target = support::gateway::Gateway;
            fn deref(&self) -> &support::gateway::Gateway {
                &self.0
            }
        }

        impl std::ops::DerefMut for $name {
            fn deref_mut(&mut self) -> &mut support::gateway::Gateway {
                &mut self.0
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use bed;
