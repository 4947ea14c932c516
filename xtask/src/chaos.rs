//! `cargo xtask chaos --seed S [--minutes M | --events N]`: in a test bed, under
//! continuous client traffic, a seeded random sequence of node joins, crashes
//! (agent and backend killed), stops and resumes (SIGSTOP/SIGCONT of the agent),
//! graceful leaves (SIGTERM: `bye`), and daemon crashes (SIGKILL) with restarts.
//!
//! After every event, within the detection bound, it checks:
//! - every route maps to a live node (`halod routes --json`), the node set is
//!   the live set (`halod nodes --json`), and the state file names the same nodes;
//! - the data plane agrees: a new connection to each route port of the VIP is
//!   answered by the node the daemon's table names;
//! - no long-lived client connection to a node was cut while that node stayed
//!   alive and kept the route (each connection pings every 50 ms);
//!
//! and at the end that nothing leaked: no namespace, process or pin left, and
//! the daemon's memory did not keep growing.
//!
//! It prints the counts of events, checks and violations, and a libtest-style
//! `test result:` line so that `cargo xtask test` counts its checks. halod is
//! driven as a binary (`target/debug/halod`); xtask does not link it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::testbed::{self, Testbed, TestbedOptions};
use crate::workspace;

const PREFIX: &str = "hd-chaos-";
const INSTANCE: &str = "chaos";
const NODES: usize = 4;
const ROUTES: u16 = 8;
const BASE: u16 = 8000;
const NODES_PORT: u16 = 7000;
const HEARTBEAT_MS: u64 = 100;
const DEAD_AFTER: u64 = 3;
/// How long a check may wait for the system to settle after an event: the
/// detection bound (dead window plus a sweep) and generous room for a
/// restart on two shared cores.
const SETTLE: Duration = Duration::from_secs(8);

/// What to run.
pub struct Options {
    pub seed: u64,
    pub minutes: Option<f64>,
    pub events: Option<u64>,
}

/// Counts printed at the end.
#[derive(Debug, Default)]
pub struct Report {
    pub events: BTreeMap<&'static str, u64>,
    pub checks: u64,
    pub violations: Vec<String>,
    /// Client connections cut, and how many of those were to a node that failed,
    /// left or lost the route (expected: the client reconnects).
    pub cuts: u64,
    pub expected_cuts: u64,
}

/// A tiny deterministic generator (xorshift64*): the same seed gives the same run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeState {
    Down,
    Running,
    Stopped,
}

struct Node {
    name: String,
    state: NodeState,
    agent: Option<Child>,
    backend: Option<Child>,
}

/// One long-lived client connection per route.
#[derive(Clone, Debug)]
struct Cut {
    route: u16,
    node: String,
    /// When the connection was opened.
    since: Instant,
}

struct Chaos {
    bed: Testbed,
    halod: PathBuf,
    dir: PathBuf,
    gateway: Option<Child>,
    nodes: Vec<Node>,
    report: Report,
    /// Route -> node after the last check, and since when.
    table: BTreeMap<u16, (Option<String>, Instant)>,
    /// When each node last went down or was stopped.
    last_trouble: BTreeMap<String, Instant>,
    cuts: Arc<Mutex<Vec<Cut>>>,
    stop_traffic: Arc<AtomicBool>,
    memory: Vec<u64>,
}

pub fn run(options: &Options) -> Result<Report> {
    crate::setup::require_root("the chaos run builds network namespaces and loads XDP programs")?;
    // Up to date after `cargo xtask test`'s build phase; built here for a run on its own.
    let status = workspace::cargo()
        .args(["build", "-q", "-p", "halod", "--bin", "halod"])
        .status()
        .context("running cargo build -p halod")?;
    if !status.success() {
        bail!("`cargo build -p halod` failed ({status})");
    }
    let halod = workspace::halod_binary("debug");
    let bed = Testbed::up(TestbedOptions {
        prefix: PREFIX.into(),
        nodes: NODES,
        clients: 1,
    })
    .context("bringing up the chaos test bed")?;
    let dir = std::env::temp_dir().join(format!("halod-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut chaos = Chaos {
        bed,
        halod,
        dir,
        gateway: None,
        nodes: (1..=NODES)
            .map(|i| Node {
                name: format!("n{i}"),
                state: NodeState::Down,
                agent: None,
                backend: None,
            })
            .collect(),
        report: Report::default(),
        table: BTreeMap::new(),
        last_trouble: BTreeMap::new(),
        cuts: Arc::default(),
        stop_traffic: Arc::default(),
        memory: Vec::new(),
    };
    let result = chaos.drive(options);
    chaos.finish();
    result?;
    Ok(chaos.report)
}

impl Chaos {
    fn drive(&mut self, options: &Options) -> Result<()> {
        self.write_config()?;
        self.start_gateway()?;
        for i in 0..2 {
            self.join(i)?;
        }
        self.check("start");
        self.start_traffic();
        let mut rng = Rng(options.seed.max(1));
        let started = Instant::now();
        let mut count = 0u64;
        loop {
            if let Some(events) = options.events
                && count >= events
            {
                break;
            }
            if let Some(minutes) = options.minutes
                && started.elapsed().as_secs_f64() >= minutes * 60.0
            {
                break;
            }
            count += 1;
            let (event, node) = self.pick(&mut rng);
            if event == "daemon_crash" {
                println!("chaos: event {count}: daemon crash and restart");
            } else {
                println!("chaos: event {count}: {event} {}", self.nodes[node].name);
            }
            self.apply((event, node))?;
            self.check(event);
            self.sample_memory();
        }
        Ok(())
    }

    /// Picks an event that makes sense in the current state, and its node.
    fn pick(&self, rng: &mut Rng) -> (&'static str, usize) {
        loop {
            let event = ["join", "crash", "stop", "resume", "leave", "daemon_crash"][rng.below(6)];
            let with = |state| -> Vec<usize> {
                (0..self.nodes.len())
                    .filter(|&i| self.nodes[i].state == state)
                    .collect()
            };
            let running = with(NodeState::Running);
            let candidates = match event {
                "join" => with(NodeState::Down),
                // Keep one node running so the routes always have a home.
                "crash" | "leave" | "stop" if running.len() > 1 => running,
                "crash" | "leave" | "stop" => Vec::new(),
                "resume" => with(NodeState::Stopped),
                _ => vec![0],
            };
            if !candidates.is_empty() {
                return (event, candidates[rng.below(candidates.len())]);
            }
        }
    }

    fn apply(&mut self, (event, i): (&'static str, usize)) -> Result<()> {
        *self.report.events.entry(event).or_default() += 1;
        let name = self.nodes[i].name.clone();
        match event {
            "join" => self.join(i)?,
            "crash" => {
                self.last_trouble.insert(name, Instant::now());
                let node = &mut self.nodes[i];
                for child in [node.agent.take(), node.backend.take()]
                    .into_iter()
                    .flatten()
                {
                    kill(child);
                }
                node.state = NodeState::Down;
            }
            "stop" => {
                self.last_trouble.insert(name, Instant::now());
                signal(
                    self.nodes[i].agent.as_ref(),
                    nix::sys::signal::Signal::SIGSTOP,
                );
                self.nodes[i].state = NodeState::Stopped;
            }
            "resume" => {
                signal(
                    self.nodes[i].agent.as_ref(),
                    nix::sys::signal::Signal::SIGCONT,
                );
                self.nodes[i].state = NodeState::Running;
            }
            "leave" => {
                self.last_trouble.insert(name, Instant::now());
                let node = &mut self.nodes[i];
                signal(node.agent.as_ref(), nix::sys::signal::Signal::SIGTERM);
                if let Some(mut agent) = node.agent.take() {
                    wait_exit(&mut agent, Duration::from_secs(10));
                }
                if let Some(backend) = node.backend.take() {
                    kill(backend);
                }
                node.state = NodeState::Down;
            }
            _ => {
                if let Some(gateway) = self.gateway.take() {
                    kill(gateway);
                }
                self.start_gateway()?;
            }
        }
        Ok(())
    }

    fn write_config(&self) -> Result<()> {
        let config = format!(
            "instance: {INSTANCE}\n\
             interfaces: {{external: ext0, internal: int0}}\n\
             vip: {vip}\n\
             routes: {ROUTES}\n\
             listeners:\n  - {{name: browser, base_port: {BASE}}}\n\
             nodes:\n  listen: {gw}:{NODES_PORT}\n  heartbeat_ms: {HEARTBEAT_MS}\n  \
             dead_after: {DEAD_AFTER}\n  spares: 1\n  restart_grace_ms: 3000\n\
             control: {{socket: {dir}/halod.sock}}\n\
             state_file: {dir}/state.json\n",
            vip = self.bed.vip(),
            gw = self.bed.gateway_internal_addr(),
            dir = self.dir.display(),
        );
        std::fs::write(self.dir.join("halod.yaml"), config)?;
        Ok(())
    }

    fn start_gateway(&mut self) -> Result<()> {
        let mut command = self
            .bed
            .command(&self.bed.gateway_ns(), &self.halod.to_string_lossy());
        command
            .args(["run", "--config"])
            .arg(self.dir.join("halod.yaml"))
            .env("HALOD_LOG", "warn,halod::control=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().context("starting halod run")?;
        let stderr = child.stderr.take().context("gateway stderr")?;
        let (ready, started) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut ready = Some(ready);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if line.contains("WARN") || line.contains("ERROR") {
                    eprintln!("[gateway] {line}");
                }
                if line.contains("gateway running")
                    && let Some(ready) = ready.take()
                {
                    let _ = ready.send(());
                }
            }
        });
        self.gateway = Some(child);
        started
            .recv_timeout(Duration::from_secs(30))
            .context("the gateway did not start within 30 s")?;
        Ok(())
    }

    fn join(&mut self, i: usize) -> Result<()> {
        let name = self.nodes[i].name.clone();
        let ns = self.bed.node_ns(i + 1);
        if self.nodes[i].backend.is_none() {
            let mut command = self
                .bed
                .backend_command(i + 1, &name, (0..ROUTES).map(|r| BASE + r));
            command
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            let mut backend = command.spawn().context("starting a backend")?;
            let mut line = String::new();
            BufReader::new(backend.stdout.take().context("backend stdout")?)
                .read_line(&mut line)?;
            if line.trim() != "ready" {
                bail!("backend {name} did not start");
            }
            self.nodes[i].backend = Some(backend);
        }
        let mut command = self.bed.command(&ns, &self.halod.to_string_lossy());
        command
            .args(["node", "--gateway"])
            .arg(format!("{}:{NODES_PORT}", self.bed.gateway_internal_addr()))
            .args(["--name", &name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.nodes[i].agent = Some(command.spawn().context("starting a node agent")?);
        self.nodes[i].state = NodeState::Running;
        Ok(())
    }

    /// Long-lived connections from the client, one per route, pinging.
    fn start_traffic(&self) {
        let client = self.bed.client_ns(1);
        let vip = self.bed.vip();
        let cuts = self.cuts.clone();
        let stop = self.stop_traffic.clone();
        thread::spawn(move || {
            let _ = testbed::run_in_netns(&client, move || {
                let mut connections: BTreeMap<u16, (TcpStream, String, Instant)> = BTreeMap::new();
                while !stop.load(Ordering::Relaxed) {
                    for route in 1..=ROUTES {
                        if let std::collections::btree_map::Entry::Vacant(entry) =
                            connections.entry(route)
                            && let Some((stream, node)) =
                                open(SocketAddr::from((vip, BASE + route - 1)))
                        {
                            entry.insert((stream, node, Instant::now()));
                        }
                        let Some((stream, node, since)) = connections.get_mut(&route) else {
                            continue;
                        };
                        let alive = stream.write_all(b"ping\n").is_ok() && {
                            let mut answer = [0u8; 5];
                            stream.read_exact(&mut answer).is_ok()
                        };
                        if !alive {
                            cuts.lock().unwrap().push(Cut {
                                route,
                                node: node.clone(),
                                since: *since,
                            });
                            connections.remove(&route);
                        }
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            });
        });
    }

    /// The routes table as the daemon says, or why it could not be read.
    fn routes(&self) -> Result<BTreeMap<u16, Option<String>>> {
        let reply = self.halod_json("routes")?;
        let mut table = BTreeMap::new();
        for row in reply["routes"]
            .as_array()
            .context("no routes in the reply")?
        {
            let route = row["route"].as_u64().context("route id")? as u16;
            table.insert(route, row["node"].as_str().map(str::to_string));
        }
        Ok(table)
    }

    fn halod_json(&self, command: &str) -> Result<serde_json::Value> {
        let output = Command::new(&self.halod)
            .args([command, "--json", "--socket"])
            .arg(self.dir.join("halod.sock"))
            .output()?;
        if !output.status.success() {
            bail!(
                "halod {command}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    /// Which node answers a new connection to each route port.
    fn data_plane(&self) -> BTreeMap<u16, Option<String>> {
        let vip = self.bed.vip();
        testbed::run_in_netns(&self.bed.client_ns(1), move || {
            (1..=ROUTES)
                .map(|route| {
                    let node =
                        open(SocketAddr::from((vip, BASE + route - 1))).map(|(_, name)| name);
                    (route, node)
                })
                .collect()
        })
        .unwrap_or_default()
    }

    /// One consistency check after an event; waits up to SETTLE for it to hold.
    fn check(&mut self, after: &str) {
        let live: BTreeSet<String> = self
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Running)
            .map(|n| n.name.clone())
            .collect();
        let deadline = Instant::now() + SETTLE;
        let mut problems;
        loop {
            problems = Vec::new();
            match (self.routes(), self.halod_json("nodes")) {
                (Ok(routes), Ok(nodes)) => {
                    let registered: BTreeSet<String> = nodes["nodes"]
                        .as_array()
                        .map(|rows| {
                            rows.iter()
                                .filter_map(|r| r["name"].as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default();
                    if registered != live {
                        problems.push(format!("registered nodes {registered:?}, live {live:?}"));
                    }
                    for (route, node) in &routes {
                        if !node.as_ref().is_some_and(|n| live.contains(n)) {
                            problems
                                .push(format!("route {route} maps to {node:?}, not a live node"));
                        }
                    }
                    match std::fs::read_to_string(self.dir.join("state.json")) {
                        Ok(state) => {
                            // The saved nodes (active, then spares); a node that left
                            // may still be named by a drain in progress, which is no
                            // registration.
                            let state: serde_json::Value =
                                serde_json::from_str(&state).unwrap_or_default();
                            let saved: Vec<&str> = ["active", "spares"]
                                .iter()
                                .filter_map(|key| state[*key].as_array())
                                .flatten()
                                .filter_map(|node| node["name"].as_str())
                                .collect();
                            for name in &registered {
                                if !saved.contains(&name.as_str()) {
                                    problems.push(format!("state file lacks {name}"));
                                }
                            }
                            for node in &self.nodes {
                                if !registered.contains(&node.name)
                                    && saved.contains(&node.name.as_str())
                                {
                                    problems.push(format!("state file still has {}", node.name));
                                }
                            }
                        }
                        Err(e) => problems.push(format!("state file: {e}")),
                    }
                    let answers = self.data_plane();
                    for (route, node) in &routes {
                        if answers.get(route) != Some(node) {
                            problems.push(format!(
                                "route {route}: the daemon says {node:?}, the VIP answers {:?}",
                                answers.get(route)
                            ));
                        }
                    }
                    if problems.is_empty() {
                        let now = Instant::now();
                        for (route, node) in routes {
                            let unchanged =
                                self.table.get(&route).is_some_and(|(old, _)| *old == node);
                            if !unchanged {
                                self.table.insert(route, (node, now));
                            }
                        }
                    }
                }
                (Err(e), _) | (_, Err(e)) => problems.push(format!("control socket: {e:#}")),
            }
            if problems.is_empty() || Instant::now() >= deadline {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        self.report.checks += 1;
        for problem in problems {
            self.violation(format!("after {after}: {problem}"));
        }
        // Connections cut although their node stayed alive and kept the route.
        let cuts: Vec<Cut> = std::mem::take(&mut *self.cuts.lock().unwrap());
        self.report.checks += 1;
        for cut in cuts {
            // The node failed, stopped or left while the connection was open.
            let troubled = self
                .last_trouble
                .get(&cut.node)
                .is_some_and(|t| *t >= cut.since);
            // The route went to another node (and maybe back) meanwhile.
            let moved = self.table.get(&cut.route).is_none_or(|(node, changed)| {
                node.as_deref() != Some(&cut.node) || *changed >= cut.since
            });
            let alive = live.contains(&cut.node);
            self.report.cuts += 1;
            println!(
                "chaos: connection of route {} to {} cut ({})",
                cut.route,
                cut.node,
                if !alive {
                    "the node is down"
                } else if troubled {
                    "the node failed meanwhile"
                } else if moved {
                    "the route moved"
                } else {
                    "the node stayed"
                }
            );
            if !alive || troubled || moved {
                self.report.expected_cuts += 1;
            } else {
                self.violation(format!(
                    "after {after}: a client connection of route {} to {} was cut although {} stayed alive and kept the route",
                    cut.route, cut.node, cut.node
                ));
            }
        }
    }

    fn violation(&mut self, text: String) {
        println!("chaos: VIOLATION {text}");
        self.report.violations.push(text);
    }

    fn sample_memory(&mut self) {
        let Some(gateway) = &self.gateway else { return };
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", gateway.id()))
            && let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        {
            self.memory.push(kb);
        }
    }

    /// Stops everything and checks that nothing leaked.
    fn finish(&mut self) {
        self.stop_traffic.store(true, Ordering::Relaxed);
        for node in &mut self.nodes {
            signal(node.agent.as_ref(), nix::sys::signal::Signal::SIGCONT);
            for child in [node.agent.take(), node.backend.take()]
                .into_iter()
                .flatten()
            {
                kill(child);
            }
        }
        if let Some(gateway) = self.gateway.take() {
            signal(Some(&gateway), nix::sys::signal::Signal::SIGTERM);
            let mut gateway = gateway;
            wait_exit(&mut gateway, Duration::from_secs(10));
        }
        let _ = Command::new(&self.halod)
            .args(["teardown", "--config"])
            .arg(self.dir.join("halod.yaml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        thread::sleep(Duration::from_millis(300));
        if let Err(e) = Testbed::down_prefix(PREFIX) {
            self.violation(format!("removing the test bed: {e:#}"));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        self.report.checks += 1;
        let pins = PathBuf::from("/sys/fs/bpf/halod").join(INSTANCE);
        if pins.exists() {
            self.violation(format!("pins left behind in {}", pins.display()));
        }
        let namespaces = std::fs::read_dir("/run/netns")
            .map(|dir| {
                dir.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().starts_with(PREFIX))
                    .count()
            })
            .unwrap_or(0);
        if namespaces > 0 {
            self.violation(format!(
                "{namespaces} namespaces named {PREFIX}* left behind"
            ));
        }
        // Memory: the second half of the run may not sit far above the first.
        if self.memory.len() >= 4 {
            let half = self.memory.len() / 2;
            let first = *self.memory[..half].iter().max().unwrap_or(&0);
            let last = *self.memory[half..].iter().max().unwrap_or(&0);
            println!("chaos: gateway RSS {first} kB (first half) -> {last} kB (second half)");
            if last > first * 2 + 20_000 {
                self.violation(format!("gateway memory grew from {first} kB to {last} kB"));
            }
        }
    }
}

/// Connects and reads the node's name line.
fn open(target: SocketAddr) -> Option<(TcpStream, String)> {
    let stream = TcpStream::connect_timeout(&target, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut name = Vec::new();
    let mut byte = [0u8; 1];
    let mut reader = &stream;
    while reader.read(&mut byte).ok()? == 1 && byte[0] != b'\n' {
        name.push(byte[0]);
    }
    let name = String::from_utf8(name).ok().filter(|n| !n.is_empty())?;
    Some((stream, name))
}

fn signal(child: Option<&Child>, signal: nix::sys::signal::Signal) {
    if let Some(child) = child {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal);
    }
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn wait_exit(child: &mut Child, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Report {
    pub fn print(&self) {
        let events: u64 = self.events.values().sum();
        let detail: Vec<String> = self
            .events
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!(
            "chaos: {events} events ({}), {} checks, {} violations; {} client connections cut, \
             {} of them to a node that failed, left or lost the route",
            detail.join(", "),
            self.checks,
            self.violations.len(),
            self.cuts,
            self.expected_cuts
        );
        // For `cargo xtask test`: every check is a test.
        let failed = self.violations.len() as u64;
        println!(
            "test result: {}. {} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out",
            if failed == 0 { "ok" } else { "FAILED" },
            self.checks.saturating_sub(failed),
        );
    }
}
