//! End to end: hostile and broken nodes against `halod run` in the test bed,
//! from real sockets in a node namespace. Each case must get an `error` line
//! that says what was wrong, be disconnected, be counted in
//! `halod_node_refusals_total`, and leave a well-behaved node (a real
//! `halod node` agent) registered and untouched. Needs root; run by
//! `cargo xtask test`. Its test-bed prefix (`hd-sec-hostile-`) is its own, and the
//! shared gateway bed (`support::gateway`) stops and tears down what it started.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use xtask::testbed;

mod support;
use support::gateway::{Gateway, NODES_PORT, config_head};

const METRICS_PORT: u16 = 9101;
const MAX_NODES: usize = 3;
/// `nodes.max_nodes` + the gateway's allowance for nodes saying hello.
const MAX_CONNECTIONS: usize = MAX_NODES + 16;
const TOKEN: &str = "hostile-test-token";
const DEADLINE: Duration = Duration::from_secs(20);

support::gateway::bed!(
    /// The hostile-node test's gateway: 8 routes on one listener group, nodes with a
    /// token from 198.19.0.0/24 only, and metrics.
    Bed
);

impl Bed {
    /// The test bed (prefix `prefix`, 2 nodes), the config and the token, and
    /// `halod run` started.
    fn start(prefix: &str) -> Bed {
        let mut bed = Bed(Gateway::prepare(prefix, 2, |bed, instance, dir| {
            format!(
                "{head}\
                 nodes:\n  listen: {gw}:{NODES_PORT}\n  heartbeat_ms: 100\n  dead_after: 5\n  \
                 max_nodes: {MAX_NODES}\n  hello_timeout_ms: 500\n  \
                 allowed_cidrs: [198.19.0.0/24]\n  token_file: {dir}/token\n\
                 control: {{socket: {dir}/halod.sock}}\n\
                 state_file: {dir}/state.json\n\
                 metrics: {{listen: {gw}:{METRICS_PORT}}}\n",
                head = config_head(bed, instance, 8, &[8000]),
                gw = bed.gateway_internal_addr(),
                dir = dir.display(),
            )
        }));
        std::fs::write(bed.dir.join("token"), format!("{TOKEN}\n")).unwrap();
        bed.run();
        bed
    }
}

fn expect_line(lines: &Receiver<String>, what: &str, matches: impl Fn(&str) -> bool) -> String {
    support::expect_line_within(lines, what, DEADLINE, matches)
}

/// What a connection got: the lines the gateway sent, and whether it closed.
#[derive(Debug)]
struct Answer {
    lines: Vec<String>,
    closed: bool,
}

impl Answer {
    /// The only line must be an `error` with `code` whose message contains `says`.
    fn refused(&self, code: &str, says: &str) {
        assert!(self.closed, "the gateway did not disconnect: {self:?}");
        let [line] = &self.lines[..] else {
            panic!("expected one error line, got {self:?}")
        };
        let error: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(error["type"], "error", "{line}");
        assert_eq!(error["code"], code, "{line}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(says), "{line} does not say {says:?}");
    }
}

/// Sends `bytes` on `stream` and reads until the gateway closes or `wait` passes.
fn exchange(mut stream: TcpStream, bytes: &[u8], wait: Duration) -> Answer {
    stream.write_all(bytes).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 8192];
    let closed = loop {
        match stream.read(&mut buffer) {
            Ok(0) => break true,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    let lines = String::from_utf8_lossy(&received)
        .lines()
        .map(str::to_string)
        .collect();
    Answer { lines, closed }
}

fn hello(name: &str, extra: &str) -> Vec<u8> {
    format!("{{\"type\":\"hello\",\"version\":1,\"name\":\"{name}\"{extra}}}\n").into_bytes()
}

#[test]
fn hostile_nodes_are_refused_disconnected_counted_and_harm_no_one() {
    let bed = Bed::start("hd-sec-hostile-");
    let gw = bed.bed.gateway_internal_addr();

    // The well-behaved node.
    let token_file = bed.dir.join("token");
    let (mut agent, agent_lines) =
        bed.agent(1, "n1", &["--token-file", token_file.to_str().unwrap()]);
    expect_line(&agent_lines, "welcome", |l| {
        l.contains(r#""type":"welcome""#)
    });

    let target = SocketAddr::from((gw, NODES_PORT));
    let token = format!(",\"token\":\"{TOKEN}\"");
    let answers = testbed::run_in_netns(&bed.bed.node_ns(2), move || {
        let connect = || TcpStream::connect_timeout(&target, DEADLINE).unwrap();
        let quick = Duration::from_secs(5);
        let mut answers = Vec::new();
        answers.push(("not JSON", exchange(connect(), b"\x00\x01garbage\n", quick)));
        answers.push((
            "a JSON array",
            exchange(connect(), b"[\"hello\",1,\"x\"]\n", quick),
        ));
        answers.push((
            "a line over 4 KiB",
            exchange(connect(), &[b'x'; 5000], quick),
        ));
        answers.push(("no hello", exchange(connect(), b"", quick)));
        answers.push((
            "wrong token",
            exchange(connect(), &hello("n2", ",\"token\":\"guess\""), quick),
        ));
        answers.push(("no token", exchange(connect(), &hello("n2", ""), quick)));
        answers.push((
            "address outside allowed_cidrs",
            exchange(
                connect(),
                &hello("n2", &format!("{token},\"addr\":\"203.0.113.9\"")),
                quick,
            ),
        ));
        answers.push((
            "duplicate name",
            exchange(connect(), &hello("n1", &token), quick),
        ));
        // A flood: hold connections open without hello until the gateway refuses more.
        let held: Vec<TcpStream> = (0..MAX_CONNECTIONS + 4).map(|_| connect()).collect();
        let extra = exchange(connect(), b"", quick);
        drop(held);
        answers.push(("connection flood", extra));
        answers
    })
    .unwrap();
    let expected = [
        ("not JSON", "bad_request", "JSON"),
        ("a JSON array", "bad_request", "expected an object"),
        ("a line over 4 KiB", "bad_request", "4096"),
        ("no hello", "bad_request", "no hello within 500 ms"),
        ("wrong token", "bad_token", "wrong token"),
        ("no token", "bad_token", "token"),
        (
            "address outside allowed_cidrs",
            "bad_request",
            "outside nodes.allowed_cidrs",
        ),
        ("duplicate name", "duplicate_name", "n1"),
        ("connection flood", "full", "node connections open"),
    ];
    for ((case, answer), (name, code, says)) in answers.iter().zip(expected) {
        assert_eq!(*case, name);
        eprintln!("{case}: {answer:?}");
        answer.refused(code, says);
    }

    // Counted, by cause.
    let metrics = testbed::run_in_netns(&bed.bed.node_ns(2), move || {
        let mut stream = TcpStream::connect((gw, METRICS_PORT)).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: halod\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    })
    .unwrap();
    for (cause, at_least) in [
        ("bad_request", 2),
        ("line_too_long", 1),
        ("hello_timeout", 1),
        ("bad_token", 2),
        ("address_not_allowed", 1),
        ("duplicate_name", 1),
        ("too_many_connections", 1),
    ] {
        let needle = format!("halod_node_refusals_total{{cause=\"{cause}\"}} ");
        let count: u64 = metrics
            .lines()
            .find_map(|line| line.strip_prefix(&needle))
            .unwrap_or_else(|| panic!("no {needle} in the metrics:\n{metrics}"))
            .trim()
            .parse()
            .unwrap();
        assert!(count >= at_least, "{cause}: {count} < {at_least}");
    }

    // The well-behaved node never noticed: still registered, nothing moved, and
    // its agent is still running.
    let nodes = bed.halod(&["nodes", "--json"]);
    let nodes = String::from_utf8_lossy(&nodes.stdout);
    assert!(nodes.contains("\"n1\""), "n1 is gone: {nodes}");
    assert!(
        !nodes.contains("\"n2\""),
        "a refused node registered: {nodes}"
    );
    while let Ok(line) = agent_lines.try_recv() {
        assert!(!line.contains("\"moved\""), "n1 lost routes: {line}");
    }
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent exited"
    );
    drop(agent);
    drop(bed);
}
