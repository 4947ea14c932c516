//! End to end: the operator commands (`halod routes|nodes|status|stats|drain|
//! watch`) against `halod run` in the test bed, the metrics endpoint, the
//! control socket's permissions, and a gateway killed with SIGKILL and started
//! again. Needs root; run by `cargo xtask test`.
//!
//! Every test has its own test-bed prefix (`hd-op…-`), data-plane instance,
//! control socket and state file, and kills what it started.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use xtask::testbed;

mod support;
use support::gateway::{Gateway, NODES_PORT, config_head};
use support::{Process, follow};

const HALOD: &str = support::gateway::HALOD;
const ROUTES: u16 = 12;
const BASES: [u16; 2] = [8000, 9000];
const METRICS_PORT: u16 = 9464;
/// Generous: correctness deadlines, never performance checks.
const DEADLINE: Duration = Duration::from_secs(30);

fn expect_line(lines: &Receiver<String>, what: &str, matches: impl Fn(&str) -> bool) -> String {
    support::expect_line_within(lines, what, DEADLINE, matches)
}

support::gateway::bed!(
    /// The operator tests' gateway: 12 routes on two listener groups, a 15 s
    /// restart grace, metrics on the internal address.
    Bed
);

impl Bed {
    fn start(prefix: &str, nodes: usize, spares: u32) -> Bed {
        let mut bed = Bed(Gateway::prepare(prefix, nodes, |bed, instance, dir| {
            format!(
                "{head}\
                 nodes:\n  listen: {gw}:{NODES_PORT}\n  heartbeat_ms: 100\n  dead_after: 3\n  \
                 restart_grace_ms: 15000\n  spares: {spares}\n  drain_ms: 0\n\
                 control: {{socket: {dir}/halod.sock}}\n\
                 state_file: {dir}/state.json\n\
                 metrics: {{listen: {gw}:{METRICS_PORT}}}\n",
                head = config_head(bed, instance, ROUTES, &BASES),
                gw = bed.gateway_internal_addr(),
                dir = dir.display(),
            )
        }));
        bed.run_gateway();
        bed
    }

    /// Starts `halod run` and waits for "gateway running".
    fn run_gateway(&mut self) {
        self.0.run();
    }

    /// Waits until the state file lists `node`. The file is written after
    /// the table changes (coalesced, then fsync, which can take a second
    /// while the disk flushes a build): a test that kills the daemon waits
    /// for it, as an operator's kill would usually come long after the join.
    fn wait_saved(&self, node: &str) {
        let state_path = self.dir.join("state.json");
        let needle = format!(r#""name": "{node}""#);
        let start = Instant::now();
        while !std::fs::read_to_string(&state_path).is_ok_and(|state| state.contains(&needle)) {
            assert!(
                start.elapsed() < DEADLINE,
                "the state file does not list {node} after {DEADLINE:?}"
            );
            thread::sleep(Duration::from_millis(10));
        }
        eprintln!("the state file lists {node} after {:?}", start.elapsed());
    }

    /// Waits until `halod nodes` lists `count` nodes, all connected (after a
    /// restart: every node came back).
    fn wait_connected(&self, count: usize) {
        let start = Instant::now();
        loop {
            let listed = self.json("nodes");
            let list = listed["nodes"].as_array().unwrap();
            if list.len() == count && list.iter().all(|n| n["connected"] == true) {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "nodes did not come back: {listed}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Backend plus agent in node `i`, registered.
    fn node(&self, i: usize, name: &str) -> Node {
        let backend = self.backend(i, name, all_ports());
        let (agent, lines, _) = self.registered_agent(i, name);
        Node {
            agent,
            lines,
            _backend: backend,
        }
    }

    /// Which node answers on `port` of the VIP.
    fn probe(&self, port: u16) -> Option<String> {
        self.bed.answering_node(port, Duration::from_millis(500))
    }

    /// Waits until every route answers with the node `halod routes` names.
    fn wait_routed(&self) -> BTreeMap<u16, String> {
        let start = Instant::now();
        loop {
            let routes = self.json("routes");
            let expected: BTreeMap<u16, String> = routes["routes"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|r| {
                    Some((r["route"].as_u64()? as u16, r["node"].as_str()?.to_string()))
                })
                .collect();
            let answers: BTreeMap<u16, String> = (1..=ROUTES)
                .filter_map(|route| Some((route, self.probe(BASES[0] + route - 1)?)))
                .collect();
            if expected.len() == usize::from(ROUTES) && answers == expected {
                return answers;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "routes answer {answers:?}, halod routes says {expected:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn metrics(&self) -> String {
        let target = SocketAddr::from((self.bed.gateway_internal_addr(), METRICS_PORT));
        testbed::run_in_netns(&self.bed.gateway_ns(), move || {
            let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(2)).unwrap();
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: halod\r\n\r\n")
                .unwrap();
            let mut text = String::new();
            stream.read_to_string(&mut text).unwrap();
            text
        })
        .unwrap()
    }
}

struct Node {
    agent: Process,
    lines: Receiver<String>,
    _backend: Process,
}

fn all_ports() -> Vec<u16> {
    BASES
        .iter()
        .flat_map(|base| (0..ROUTES).map(move |offset| base + offset))
        .collect()
}

#[test]
fn operator_commands_against_a_running_gateway() {
    let bed = Bed::start("hd-op1-", 3, 1);
    let _n1 = bed.node(1, "n1");
    let _n2 = bed.node(2, "n2"); // the spare
    let mut n3 = bed.node(3, "n3");
    let answers = bed.wait_routed();

    // routes: exact JSON shape.
    let routes = bed.halod(&["routes", "--json"]);
    let text = String::from_utf8(routes.stdout).unwrap();
    assert!(
        text.starts_with(
            r#"{"routes":[{"route":1,"ports":[8000,9000],"node":"n1","slot":1,"addr":"198.19.0.11","connections":"#
        ),
        "{text}"
    );
    let human = String::from_utf8(bed.halod(&["routes"]).stdout).unwrap();
    assert!(
        human.contains(
            "Route  Ports      Node  Slot  Address      Conns\n1      8000,9000  n1    1     198.19.0.11  "
        ),
        "{human}"
    );

    // nodes: slot order, then the spare.
    let nodes = bed.json("nodes");
    let list = nodes["nodes"].as_array().unwrap();
    let names: Vec<&str> = list.iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["n1", "n3", "n2"]);
    assert_eq!(list[0]["role"], "active");
    assert_eq!(list[0]["slot"], 1);
    assert_eq!(list[0]["routes"], 6);
    assert_eq!(list[0]["addr"], "198.19.0.11");
    assert!(list[0]["last_heartbeat_ms"].as_u64().unwrap() < 1000);
    assert_eq!(list[2]["role"], "spare");
    assert_eq!(list[2]["slot"], Value::Null);

    // status: the data plane's attach mode per interface.
    let status = bed.json("status");
    assert_eq!(status["counts"]["active"], 2);
    assert_eq!(status["counts"]["spares"], 1);
    let modes: Vec<&str> = status["dataplane"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mode"].as_str().unwrap())
        .collect();
    assert_eq!(modes, ["native", "native"], "{status}");
    assert!(
        String::from_utf8(bed.halod(&["status"]).stdout)
            .unwrap()
            .contains("Data plane:    ext0 native, int0 native")
    );

    // stats: the probes above were counted on their routes and nodes.
    let stats = bed.json("stats");
    let route1 = &stats["routes"][0];
    assert_eq!(route1["node"], "n1");
    assert!(route1["packets"].as_u64().unwrap() > 0, "{stats}");
    let n1 = stats["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "n1")
        .unwrap();
    assert!(n1["bytes"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["reasons"].as_object().unwrap().len() > 1, "{stats}");

    // metrics: Prometheus text with the same picture.
    let metrics = bed.metrics();
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    assert!(
        metrics.contains("halod_nodes{role=\"active\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("halod_route_packets_total{route=\"1\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("halod_plan_push_seconds_count"),
        "{metrics}"
    );

    // watch, then drain n3: a graceful leave the watcher sees; n3's agent
    // hears `moved`, then `drained`, and exits 0.
    let mut watch = Command::new(HALOD);
    watch
        .args(["watch", "--json", "--socket"])
        .arg(bed.socket())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut watcher = Process::spawn("watch", watch);
    let events = follow("watch", watcher.child.stdout.take().unwrap());
    thread::sleep(Duration::from_millis(300));
    let drain = bed.halod(&["drain", "n3"]);
    assert!(drain.status.success(), "{drain:?}");
    let said = String::from_utf8(drain.stdout).unwrap();
    assert!(
        said.starts_with("drained n3: it left the cluster; 6 routes moved"),
        "{said}"
    );
    let left = expect_line(&events, "node_left", |l| {
        l.contains(r#""event":"node_left""#)
    });
    assert!(left.contains(r#""node":"n3","by":"drain""#), "{left}");
    expect_line(&n3.lines, "moved", |l| l.starts_with(r#"{"type":"moved""#));
    expect_line(&n3.lines, "drained", |l| l.contains(r#""code":"drained""#));
    assert!(n3.agent.wait(DEADLINE).success(), "a drained agent exits 0");
    let after = bed.wait_routed();
    for (route, node) in &answers {
        if node == "n3" {
            assert_eq!(
                after[route], "n2",
                "route {route}: the spare takes n3's slot"
            );
        } else {
            assert_eq!(&after[route], node, "route {route} must not move");
        }
    }

    // Errors: one line, non-zero exit.
    let unknown = bed.halod(&["drain", "nosuch"]);
    assert_eq!(unknown.status.code(), Some(1));
    let line = String::from_utf8(unknown.stderr).unwrap();
    assert!(line.starts_with("halod: unknown node \"nosuch\""), "{line}");
    assert_eq!(line.lines().count(), 1, "{line}");
    let missing = Command::new(HALOD)
        .args(["routes", "--socket", "/nonexistent/halod.sock"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(missing.stderr).unwrap(),
        "halod: cannot reach the daemon at /nonexistent/halod.sock: No such file or directory \
         (is `halod run` running? use --socket)\n"
    );
    // teardown refuses while the daemon runs.
    let teardown = Command::new(HALOD)
        .args(["teardown", "--config"])
        .arg(&bed.config)
        .output()
        .unwrap();
    assert_eq!(teardown.status.code(), Some(1));
    let line = String::from_utf8(teardown.stderr).unwrap();
    assert!(line.contains("stop it first"), "{line}");
    // A user who is not root (nobody) is refused by the socket's mode.
    let denied = Command::new(HALOD)
        .args(["nodes", "--socket"])
        .arg(bed.socket())
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(denied.status.code(), Some(1));
    let line = String::from_utf8(denied.stderr).unwrap();
    assert!(line.contains("Permission denied"), "{line}");
    assert_eq!(line.lines().count(), 1, "{line}");
}

#[test]
fn a_gateway_killed_with_sigkill_comes_back_with_the_same_routes() {
    let mut bed = Bed::start("hd-op2-", 3, 0);
    let nodes: Vec<Node> = (1..=3).map(|i| bed.node(i, &format!("n{i}"))).collect();
    let before = bed.wait_routed();
    let routes_before = route_table(&bed);
    // What the joins told the agents so far is not what this test checks.
    for node in &nodes {
        let _ = node.lines.try_iter().count();
    }
    bed.wait_saved("n3");

    bed.gateway
        .as_ref()
        .unwrap()
        .signal(nix::sys::signal::Signal::SIGKILL);
    bed.gateway.as_mut().unwrap().wait(DEADLINE);
    bed.gateway = None;
    let state = std::fs::read_to_string(bed.dir.join("state.json")).unwrap();
    assert!(state.contains(r#""name": "n3""#), "{state}");

    bed.run_gateway();
    // Every node reconnects within restart_grace_ms and resumes.
    bed.wait_connected(3);
    assert_eq!(route_table(&bed), routes_before, "no route changed");
    assert_eq!(bed.wait_routed(), before);
    assert!(bed.logged("node reconnected after the daemon restart"));
    assert!(!bed.logged("node failed"), "no node failed");
    let status = bed.json("status");
    assert_eq!(status["restored_nodes"], 3);
    for node in &nodes {
        // No agent was told to move anything.
        let moved: Vec<String> = node
            .lines
            .try_iter()
            .filter(|l| l.contains(r#""type":"moved""#))
            .collect();
        assert!(moved.is_empty(), "{moved:?}");
    }
}

/// The hitless restart: established TCP connections through the VIP keep
/// flowing, without a reset, while the gateway is killed with SIGKILL and
/// started again; no route changes.
#[test]
fn established_connections_survive_a_sigkill_restart() {
    let mut bed = Bed::start("hd-op3-", 2, 0);
    let _nodes: Vec<Node> = (1..=2).map(|i| bed.node(i, &format!("n{i}"))).collect();
    let owners = bed.wait_routed();
    let routes_before = route_table(&bed);

    // One long-lived connection per route, opened in client1's namespace.
    let vip = bed.bed.vip();
    let connections: Vec<(u16, BufReader<TcpStream>)> =
        testbed::run_in_netns(&bed.bed.client_ns(1), move || {
            (1..=ROUTES)
                .map(|route| {
                    let target = SocketAddr::from((vip, BASES[0] + route - 1));
                    let stream = TcpStream::connect_timeout(&target, Duration::from_secs(2))
                        .unwrap_or_else(|e| panic!("route {route}: {e}"));
                    stream
                        .set_read_timeout(Some(Duration::from_secs(5)))
                        .unwrap();
                    (route, BufReader::new(stream))
                })
                .collect()
        })
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let exchanges = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let traffic = {
        let stop = stop.clone();
        let exchanges = exchanges.clone();
        let owners = owners.clone();
        thread::spawn(move || -> Result<(), String> {
            let mut connections = connections;
            for (route, reader) in &mut connections {
                let mut name = String::new();
                reader
                    .read_line(&mut name)
                    .map_err(|e| format!("route {route}: {e}"))?;
                if name.trim() != owners[route] {
                    return Err(format!("route {route} answered by {name:?}"));
                }
            }
            let mut round = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                round += 1;
                for (route, reader) in &mut connections {
                    let line = format!("route {route} round {round}\n");
                    reader
                        .get_mut()
                        .write_all(line.as_bytes())
                        .map_err(|e| format!("route {route}, round {round}: write: {e}"))?;
                    let mut echo = String::new();
                    match reader.read_line(&mut echo) {
                        Ok(0) => return Err(format!("route {route}, round {round}: closed")),
                        Ok(_) if echo == line => {}
                        Ok(_) => return Err(format!("route {route}: echo {echo:?} for {line:?}")),
                        Err(e) => return Err(format!("route {route}, round {round}: read: {e}")),
                    }
                    exchanges.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        })
    };
    let wait_exchanges = |more: u64| {
        let target = exchanges.load(std::sync::atomic::Ordering::Relaxed) + more;
        let start = Instant::now();
        while exchanges.load(std::sync::atomic::Ordering::Relaxed) < target {
            assert!(
                start.elapsed() < DEADLINE && !traffic.is_finished(),
                "traffic stopped"
            );
            thread::sleep(Duration::from_millis(10));
        }
    };
    wait_exchanges(5 * u64::from(ROUTES));
    bed.wait_saved("n2");
    // Every route holds (at least) its long-lived connection.
    let counted = |bed: &Bed| {
        let routes = bed.json("routes");
        routes["routes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|route| route["connections"].as_u64().is_some_and(|c| c >= 1))
            .then_some(())
            .ok_or(routes)
    };
    counted(&bed).unwrap_or_else(|routes| panic!("connection estimates: {routes}"));

    bed.gateway
        .as_ref()
        .unwrap()
        .signal(nix::sys::signal::Signal::SIGKILL);
    bed.gateway.as_mut().unwrap().wait(DEADLINE);
    bed.gateway = None;
    // No daemon: the program still forwards with the last table.
    wait_exchanges(5 * u64::from(ROUTES));

    bed.run_gateway();
    assert!(
        bed.logged("data plane adopted"),
        "the restart adopted the pinned program"
    );
    bed.wait_connected(2);
    wait_exchanges(5 * u64::from(ROUTES));
    // The adopted maps kept counting.
    counted(&bed).unwrap_or_else(|routes| panic!("estimates after the restart: {routes}"));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let result = traffic.join().unwrap();
    assert_eq!(result, Ok(()), "no connection was reset or stalled");
    assert_eq!(route_table(&bed), routes_before, "no route changed");
    assert!(!bed.logged("node failed"), "no node failed");
}

/// `examples/node.py` reconnects when the gateway restarts (with backoff and
/// jitter, like the agent): it resumes within `restart_grace_ms`, so no route
/// moves, and it keeps serving its routes throughout.
#[test]
fn the_python_example_node_comes_back_after_a_gateway_restart() {
    let mut bed = Bed::start("hd-op4-", 2, 0);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/node.py");
    let gateway = format!("{}:{NODES_PORT}", bed.bed.gateway_internal_addr());
    let mut command = bed.bed.command(&bed.bed.node_ns(1), "python3");
    command
        .arg(&script)
        .args(["--gateway", &gateway, "--name", "py1", "--serve"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut python = Process::spawn("node.py", command);
    let lines = follow("node.py", python.child.stdout.take().unwrap());
    expect_line(&lines, "welcome from node.py", |l| {
        l.contains(r#""type":"welcome""#)
    });
    let _n2 = bed.node(2, "n2");
    let before = bed.wait_routed();
    let routes_before = route_table(&bed);
    bed.wait_saved("n2");

    // A planned restart (SIGTERM keeps the data plane; the next start adopts it).
    let gateway_process = bed.gateway.as_mut().unwrap();
    gateway_process.signal(nix::sys::signal::Signal::SIGTERM);
    gateway_process.wait(DEADLINE);
    bed.gateway = None;
    thread::sleep(Duration::from_millis(500));
    assert!(
        python.child.try_wait().unwrap().is_none(),
        "node.py must not exit when the gateway goes away"
    );
    bed.run_gateway();
    expect_line(&lines, "a second welcome from node.py", |l| {
        l.contains(r#""type":"welcome""#)
    });
    bed.wait_connected(2);
    assert_eq!(route_table(&bed), routes_before, "no route changed");
    assert_eq!(bed.wait_routed(), before);
    assert!(!bed.logged("node failed"), "no node failed");

    python.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(python.wait(DEADLINE).success());
}

/// `halod routes --json` without the connection estimates, which change
/// with every connection: the table itself.
fn route_table(bed: &Bed) -> serde_json::Value {
    let mut routes = bed.json("routes");
    for route in routes["routes"].as_array_mut().unwrap() {
        route.as_object_mut().unwrap().remove("connections");
    }
    routes
}
