//! End to end: `halod run` with the real XDP data plane in the test bed's
//! gateway namespace, `halod node` agents (and `examples/node.py`) in the node
//! namespaces, backend servers there that answer every route port with their
//! node's name, and a client that connects to the VIP. Needs root; run by
//! `cargo xtask test`.
//!
//! Every test has its own test-bed prefix and data-plane instance, and kills
//! every process it started (guards), so the tests run in parallel.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc::Receiver;
use std::thread;
use std::time::{Duration, Instant};

use halod::routing::{Cluster, ClusterConfig, Event};

mod support;
use support::gateway::{Gateway, NODES_PORT, config_head};
use support::{Process, follow};

const ROUTES: u16 = 12;
const BASES: [u16; 2] = [8000, 9000];
/// Generous: correctness deadlines, never performance checks.
const DEADLINE: Duration = Duration::from_secs(20);

fn expect_line(lines: &Receiver<String>, what: &str, matches: impl Fn(&str) -> bool) -> String {
    support::expect_line_within(lines, what, DEADLINE, matches)
}

struct Options {
    spares: u32,
    token: Option<&'static str>,
}

support::gateway::bed!(
    /// The control tests' gateway: 12 routes on two listener groups, no reconnect
    /// grace, no drain (tests/drain.rs has the drains).
    Bed
);

impl Bed {
    /// A test bed with `nodes` node namespaces and a running gateway.
    fn start(prefix: &str, nodes: usize, options: Options) -> Bed {
        let mut gateway = Gateway::prepare(prefix, nodes, |bed, instance, dir| {
            let token_line = match options.token {
                Some(token) => {
                    let path = dir.join("token");
                    std::fs::write(&path, format!("{token}\n")).unwrap();
                    format!("  token_file: {}\n", path.display())
                }
                None => String::new(),
            };
            format!(
                "{head}\
                 nodes:\n  listen: {gw}:{NODES_PORT}\n  heartbeat_ms: 100\n  dead_after: 3\n  \
                 reconnect_grace_ms: 0\n  spares: {spares}\n  drain_ms: 0\n{token_line}\
                 control: {{socket: {dir}/halod.sock}}\n\
                 state_file: {dir}/state.json\n",
                head = config_head(bed, instance, ROUTES, &BASES),
                dir = dir.display(),
                gw = bed.gateway_internal_addr(),
                spares = options.spares,
            )
        });
        gateway.run();
        Bed(gateway)
    }

    fn gateway_address(&self) -> String {
        self.address()
    }

    /// A backend in node `i`'s namespace answering `name\n` on every route
    /// port, bound to the node's own address.
    fn backend(&self, i: usize, name: &str) -> Process {
        self.0.backend(i, name, all_ports())
    }

    /// An agent plus its backend, registered (welcome received).
    fn node(&self, i: usize, name: &str) -> Node {
        let backend = self.backend(i, name);
        let (agent, lines, welcome) = self.registered_agent(i, name);
        Node {
            agent,
            lines,
            welcome,
            _backend: backend,
        }
    }

    /// Which node answers on `port` of the VIP (`None`: no answer).
    fn probe(&self, port: u16) -> Option<String> {
        self.bed.answering_node(port, Duration::from_millis(500))
    }

    /// Node answering each route (its first listener's port). When another
    /// listener's port of the same route answers differently (a node is still
    /// binding or closing its ports), the entry says so, so it never equals an
    /// expected table and `wait_for` keeps waiting (and reports it at the deadline).
    fn answers(&self) -> BTreeMap<u16, Option<String>> {
        (1..=ROUTES)
            .map(|route| {
                let first = self.probe(BASES[0] + route - 1);
                for base in &BASES[1..] {
                    let other = self.probe(base + route - 1);
                    if other != first {
                        let mismatch = format!(
                            "port {} answers {first:?} but port {} answers {other:?}",
                            BASES[0] + route - 1,
                            base + route - 1
                        );
                        return (route, Some(mismatch));
                    }
                }
                (route, first)
            })
            .collect()
    }

    /// Waits until the VIP answers as `expected` says; returns how long it took.
    fn wait_for(&self, expected: &BTreeMap<u16, Option<String>>, what: &str) -> Duration {
        let start = Instant::now();
        loop {
            let answers = self.answers();
            if &answers == expected {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{what}: after {DEADLINE:?} the routes answer\n{answers:?}\nexpected\n{expected:?}\ngateway log:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the route answers as `expected` says, probing only it.
    fn wait_for_route(&self, route: u16, expected: &str) -> Duration {
        let start = Instant::now();
        while self.probe(BASES[0] + route - 1).as_deref() != Some(expected) {
            assert!(
                start.elapsed() < DEADLINE,
                "route {route} never reached {expected}"
            );
            thread::sleep(Duration::from_millis(5));
        }
        start.elapsed()
    }

    fn gateway_logged(&self, needle: &str) -> bool {
        self.logged(needle)
    }
}

struct Node {
    agent: Process,
    lines: Receiver<String>,
    welcome: String,
    _backend: Process,
}

fn all_ports() -> Vec<u16> {
    BASES
        .iter()
        .flat_map(|base| (0..ROUTES).map(move |offset| base + offset))
        .collect()
}

/// What the routing rules say after `events`: route -> node.
fn expected(spares: u32, events: &[Event]) -> BTreeMap<u16, Option<String>> {
    let mut cluster = Cluster::new(ClusterConfig {
        routes: ROUTES.into(),
        spares,
        max_active: None,
    })
    .unwrap();
    for event in events {
        cluster.apply(event.clone()).unwrap();
    }
    (1..=ROUTES)
        .map(|route| (route, cluster.node_of_route(route).map(str::to_string)))
        .collect()
}

fn join(name: &str) -> Event {
    Event::Join(name.into())
}
fn fail(name: &str) -> Event {
    Event::Fail(name.into())
}
fn leave(name: &str) -> Event {
    Event::Leave(name.into())
}

#[test]
fn nodes_register_fail_and_leave() {
    let bed = Bed::start(
        "hd-c1-",
        3,
        Options {
            spares: 0,
            token: None,
        },
    );
    let mut events = vec![];
    let mut nodes = BTreeMap::new();
    for (i, name) in [(1, "n1"), (2, "n2"), (3, "n3")] {
        nodes.insert(name, bed.node(i, name));
        events.push(join(name));
        // Wait for each join's switch before the next node joins.
        bed.wait_for(&expected(0, &events), &format!("{name} joined"));
    }
    let n1 = &nodes["n1"];
    assert!(n1.welcome.starts_with(r#"{"type":"welcome","role":"active","heartbeat_ms":100,"routes":[{"route":1,"ports":[8000,9000]}"#), "{}", n1.welcome);

    // kill -9 of n2's agent: its connection closes, its routes move at once.
    let before = expected(0, &events);
    let lost: Vec<u16> = before
        .iter()
        .filter(|(_, node)| node.as_deref() == Some("n2"))
        .map(|(route, _)| *route)
        .collect();
    events.push(fail("n2"));
    let after = expected(0, &events);
    let killed = Instant::now();
    nodes["n2"].agent.signal(nix::sys::signal::Signal::SIGKILL);
    let first = lost[0];
    bed.wait_for_route(first, after[&first].as_deref().unwrap());
    eprintln!(
        "kill -9 of agent n2: route {first} answered by its new owner {:?} after the kill (probing every 5 ms)",
        killed.elapsed()
    );
    bed.wait_for(&after, "after kill -9 of n2");
    assert!(
        bed.gateway_logged("node failed"),
        "the gateway logs the failure"
    );
    // n1 was told about what it gained or lost, as JSON lines.
    let n1_lines: Vec<String> = nodes["n1"].lines.try_iter().collect();
    assert!(
        n1_lines
            .iter()
            .any(|l| l.starts_with(r#"{"type":"assigned""#) || l.starts_with(r#"{"type":"moved""#)),
        "n1 printed {n1_lines:?}"
    );

    // SIGSTOP of n3's agent: no more heartbeats; failed after the dead window.
    let stopped = Instant::now();
    nodes["n3"].agent.signal(nix::sys::signal::Signal::SIGSTOP);
    events.push(fail("n3"));
    let after = expected(0, &events);
    bed.wait_for(&after, "after SIGSTOP of n3");
    let took = stopped.elapsed();
    eprintln!(
        "SIGSTOP of agent n3: every route answered by n1 {took:?} after the stop (dead window 300 ms)"
    );
    // The window runs from the node's last heartbeat, which came up to one
    // interval (100 ms) before the stop: so never earlier than 300 - 100 ms.
    assert!(
        took >= Duration::from_millis(200),
        "failed before the dead window was over: {took:?}"
    );
    // Left stopped: a resumed agent would register again. The guard kills it.

    // `bye` is a leave: n4 joins, then leaves on SIGTERM.
    nodes.remove("n2");
    let mut n4 = bed.node(2, "n4");
    events.push(join("n4"));
    bed.wait_for(&expected(0, &events), "n4 joined");
    n4.agent.signal(nix::sys::signal::Signal::SIGTERM);
    let status = n4.agent.wait(DEADLINE);
    assert!(status.success(), "agent n4 exits 0 after bye: {status}");
    let moved = expect_line(&n4.lines, "moved after bye", |l| {
        l.starts_with(r#"{"type":"moved""#)
    });
    assert!(moved.contains(r#""to":"n1""#), "{moved}");
    events.push(leave("n4"));
    bed.wait_for(&expected(0, &events), "after n4 said bye");
    assert!(bed.gateway_logged("node said bye"));
}

#[test]
fn a_spare_takes_the_failed_slot_and_nothing_else_moves() {
    let bed = Bed::start(
        "hd-c2-",
        3,
        Options {
            spares: 1,
            token: None,
        },
    );
    let mut events = vec![];
    let mut nodes = BTreeMap::new();
    for (i, name) in [(1, "n1"), (2, "n2"), (3, "n3")] {
        nodes.insert(name, bed.node(i, name));
        events.push(join(name));
        bed.wait_for(&expected(1, &events), &format!("{name} joined"));
    }
    assert!(
        nodes["n2"].welcome.contains(r#""role":"spare""#),
        "{}",
        nodes["n2"].welcome
    );
    let before = bed.answers();
    events.push(fail("n1"));
    let after = expected(1, &events);
    let killed = Instant::now();
    nodes["n1"].agent.signal(nix::sys::signal::Signal::SIGKILL);
    bed.wait_for(&after, "after kill -9 of n1");
    eprintln!(
        "kill -9 of active n1 with a spare: every route answered correctly after {:?}",
        killed.elapsed()
    );
    for route in 1..=ROUTES {
        let was = before[&route].as_deref();
        let now = after[&route].as_deref();
        if was == Some("n1") {
            assert_eq!(now, Some("n2"), "route {route}: the spare takes n1's slot");
        } else {
            assert_eq!(now, was, "route {route} must not move");
        }
    }
    let role = expect_line(&nodes["n2"].lines, "role message", |l| {
        l.starts_with(r#"{"type":"role""#)
    });
    assert_eq!(role, r#"{"type":"role","role":"active"}"#);
}

#[test]
fn python_example_node_tokens_and_duplicate_names() {
    let bed = Bed::start(
        "hd-c3-",
        3,
        Options {
            spares: 0,
            token: Some("s3cret"),
        },
    );
    let token_path = bed.dir.join("token");
    let token = token_path.to_str().unwrap();

    // examples/node.py, standard library only, registers and serves its routes.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/node.py");
    let mut command = bed.bed.command(&bed.bed.node_ns(1), "python3");
    command
        .arg(&script)
        .args([
            "--gateway",
            &bed.gateway_address(),
            "--name",
            "py1",
            "--token-file",
            token,
            "--serve",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut python = Process::spawn("node.py", command);
    let lines = follow("node.py", python.child.stdout.take().unwrap());
    let welcome = expect_line(&lines, "welcome from node.py", |l| {
        l.contains(r#""type":"welcome""#)
    });
    assert!(welcome.contains(r#""role":"active""#), "{welcome}");
    bed.wait_for(&expected(0, &[join("py1")]), "node.py routed to");
    // Heartbeats keep it alive past several dead windows.
    thread::sleep(Duration::from_secs(1));
    bed.wait_for(&expected(0, &[join("py1")]), "node.py still routed to");

    // A wrong token: refused with the error line, exit 2.
    let bad = bed.dir.join("bad-token");
    std::fs::write(&bad, "guess\n").unwrap();
    let (mut wrong, wrong_lines) = bed.agent(2, "n2", &["--token-file", bad.to_str().unwrap()]);
    let error = expect_line(&wrong_lines, "bad_token error", |l| {
        l.contains(r#""type":"error""#)
    });
    assert_eq!(
        error,
        r#"{"type":"error","code":"bad_token","message":"wrong token"}"#
    );
    assert_eq!(wrong.wait(DEADLINE).code(), Some(2));

    // A duplicate name: refused with the error line (the agent retries).
    let (_twin, twin_lines) = bed.agent(2, "py1", &["--token-file", token]);
    let error = expect_line(&twin_lines, "duplicate_name error", |l| {
        l.contains(r#""type":"error""#)
    });
    assert!(
        error.starts_with(r#"{"type":"error","code":"duplicate_name","#),
        "{error}"
    );

    // node.py leaves on SIGTERM: bye, then the gateway's moved, then exit 0.
    python.signal(nix::sys::signal::Signal::SIGTERM);
    let moved = expect_line(&lines, "moved after bye", |l| {
        l.starts_with(r#"{"type":"moved""#)
    });
    assert!(moved.contains(r#""to":null"#), "{moved}");
    assert!(python.wait(DEADLINE).success());
}

/// Every `--exec` run's environment, one line per run, as the hook wrote it.
fn hook_runs(path: &Path) -> Vec<BTreeMap<String, String>> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            line.split(' ')
                .filter_map(|pair| pair.split_once('='))
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect()
        })
        .collect()
}

/// Waits until the hook has run `count` times; returns every run.
fn wait_hook_runs(path: &Path, count: usize) -> Vec<BTreeMap<String, String>> {
    let start = Instant::now();
    loop {
        let runs = hook_runs(path);
        if runs.len() >= count {
            return runs;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the hook ran {} times, expected {count}: {runs:?}",
            runs.len()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn routes_of(expected: &BTreeMap<u16, Option<String>>, node: &str) -> String {
    expected
        .iter()
        .filter(|(_, owner)| owner.as_deref() == Some(node))
        .map(|(route, _)| route.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn the_agent_tells_its_server_every_change_keeps_a_state_file_and_leaves_at_once() {
    let bed = Bed::start(
        "hd-c4-",
        2,
        Options {
            spares: 0,
            token: None,
        },
    );
    let hook_log = bed.dir.join("hook.log");
    let state_file = bed.dir.join("n1.state.json");
    let hook = format!(
        "echo EVENT=$HALOD_EVENT ROLE=$HALOD_ROLE ROUTES=$HALOD_ROUTES PORTS=$HALOD_PORTS \
         GAINED=$HALOD_GAINED_ROUTES LOST=$HALOD_LOST_ROUTES LOST_PORTS=$HALOD_LOST_PORTS >> {}",
        hook_log.display()
    );
    let _backend = bed.backend(1, "n1");
    let (mut n1, n1_lines) = bed.agent(
        1,
        "n1",
        &[
            "--exec",
            &hook,
            "--state-file",
            state_file.to_str().unwrap(),
        ],
    );
    expect_line(&n1_lines, "welcome", |l| l.contains(r#""type":"welcome""#));
    let mut events = vec![join("n1")];
    let runs = wait_hook_runs(&hook_log, 1);
    assert_eq!(runs[0]["EVENT"], "welcome");
    assert_eq!(runs[0]["ROUTES"], routes_of(&expected(0, &events), "n1"));
    assert_eq!(runs[0]["GAINED"], runs[0]["ROUTES"]);

    // n2 joins: n1 hears `moved`; the hook gets the full set and what was lost.
    let _n2 = bed.node(2, "n2");
    expect_line(&n1_lines, "moved", |l| l.starts_with(r#"{"type":"moved""#));
    let before = expected(0, &events);
    events.push(join("n2"));
    let after = expected(0, &events);
    let runs = wait_hook_runs(&hook_log, 2);
    assert_eq!(runs[1]["EVENT"], "moved");
    assert_eq!(runs[1]["ROUTES"], routes_of(&after, "n1"));
    assert_eq!(runs[1]["LOST"], routes_of(&after, "n2"));
    assert_eq!(runs[1]["GAINED"], "");
    assert_ne!(routes_of(&before, "n1"), routes_of(&after, "n1"));

    // The state file holds the full set after every change.
    let start = Instant::now();
    let state = loop {
        let text = std::fs::read_to_string(&state_file).unwrap_or_default();
        let state: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let routes: Vec<String> = state["routes"]
            .as_array()
            .map(|routes| routes.iter().map(|r| r["route"].to_string()).collect())
            .unwrap_or_default();
        if routes.join(",") == routes_of(&after, "n1") {
            break state;
        }
        assert!(start.elapsed() < DEADLINE, "state file: {text}");
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(state["node"], "n1");
    assert_eq!(state["role"], "active");
    assert_eq!(state["connected"], true);
    assert_eq!(state["routes"][0]["ports"], serde_json::json!([8000, 9000]));

    // SIGUSR1 (a push server restarted beside the agent): the hook runs again
    // with the full state and an empty change.
    n1.signal(nix::sys::signal::Signal::SIGUSR1);
    let runs = wait_hook_runs(&hook_log, 3);
    assert_eq!(runs[2]["EVENT"], "resync");
    assert_eq!(runs[2]["ROUTES"], routes_of(&after, "n1"));
    assert_eq!(
        (runs[2]["GAINED"].as_str(), runs[2]["LOST"].as_str()),
        ("", "")
    );

    // SIGTERM: bye; the last `moved` runs the hook before the agent exits, and
    // the agent exits as soon as the gateway closed the connection.
    let asked = Instant::now();
    n1.signal(nix::sys::signal::Signal::SIGTERM);
    let status = n1.wait(DEADLINE);
    let took = asked.elapsed();
    eprintln!("agent n1 exited {took:?} after SIGTERM (bye, last moved, hook run)");
    assert!(status.success(), "{status}");
    let runs = hook_runs(&hook_log);
    assert_eq!(
        runs.len(),
        4,
        "the hook ran for the last moved before exit: {runs:?}"
    );
    assert_eq!(runs[3]["EVENT"], "moved");
    assert_eq!(runs[3]["ROUTES"], "");
    assert_eq!(runs[3]["LOST"], routes_of(&after, "n1"));
    assert!(!runs[3]["LOST_PORTS"].is_empty());
    assert!(
        !state_file.exists(),
        "the state file is removed when the agent exits"
    );
    // No timeout of the agent's is part of a leave: it waited for nothing but
    // the gateway and its hook (a correctness bound, not a benchmark).
    assert!(took < Duration::from_secs(2), "exit took {took:?}");
    events.push(leave("n1"));
    bed.wait_for(&expected(0, &events), "after n1 left");
}

#[test]
fn a_node_s_own_address_answers_on_its_route_ports() {
    let bed = Bed::start(
        "hd-c5-",
        2,
        Options {
            spares: 0,
            token: None,
        },
    );
    let _n1 = bed.node(1, "n1");
    let _n2 = bed.node(2, "n2");
    let events = [join("n1"), join("n2")];
    let table = expected(0, &events);
    bed.wait_for(&table, "both joined");
    let quick = Duration::from_secs(2);
    for route in [1, ROUTES] {
        for base in BASES {
            let port = base + route - 1;
            // Through the VIP: the owner answers.
            let owner = table[&route].clone();
            assert_eq!(bed.probe(port), owner, "VIP port {port}");
            // A health check or monitor on the client side, to each node's own
            // address on the same port: that node answers, whether it serves
            // the route or not.
            for (i, name) in [(1, "n1"), (2, "n2")] {
                let target = std::net::SocketAddr::from((bed.bed.node_addr(i), port));
                assert_eq!(
                    bed.bed.answer_at(target, quick).as_deref(),
                    Some(name),
                    "{name}'s own address {target} (route {route}, served by {owner:?})"
                );
            }
            // From the gateway itself (the node side).
            let target = std::net::SocketAddr::from((bed.bed.node_addr(1), port));
            let answer = xtask::testbed::run_in_netns(&bed.bed.gateway_ns(), move || {
                let stream = std::net::TcpStream::connect_timeout(&target, quick).ok()?;
                stream.set_read_timeout(Some(quick)).ok()?;
                let mut line = String::new();
                std::io::BufRead::read_line(&mut std::io::BufReader::new(stream), &mut line)
                    .ok()?;
                Some(line.trim().to_string())
            })
            .unwrap();
            assert_eq!(
                answer.as_deref(),
                Some("n1"),
                "from the gateway to {target}"
            );
        }
    }
    // VIP connections still work after the direct ones, from the same client.
    bed.wait_for(&table, "the VIP after direct connections");
}
