//! End to end: protocol version 2's UDP heartbeats over the real test bed
//! (`halod run` with the XDP program attached in the gateway namespace,
//! nodes in their own namespaces). A version-2 node kept alive by UDP
//! heartbeats alone, failed after the dead window once they stop although
//! its connection stays open; a version-1 agent beside it; and a node whose
//! heartbeats carry a wrong key failed as if silent. Needs root; run by
//! `cargo xtask test`.

use std::process::Stdio;
use std::sync::mpsc::Receiver;
use std::thread;
use std::time::{Duration, Instant};

mod support;
use support::gateway::{Gateway, NODES_PORT, config_head};
use support::{Process, expect_line_within, follow};

const HEARTBEAT_MS: u64 = 100;
const DEAD_AFTER: u64 = 3;
const DEADLINE: Duration = Duration::from_secs(20);

/// A version-2 client written from docs/protocol.md alone: `hello` with
/// version 2, then UDP heartbeats (key XOR `argv[4]`) for `argv[5]` seconds,
/// never an `hb` line; then it stays connected, printing what the gateway
/// sends, until the gateway closes.
const CLIENT: &str = r#"
import json, socket, struct, sys, time
gateway, port, name, flip, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
tcp = socket.create_connection((gateway, port))
tcp.sendall((json.dumps({"type": "hello", "version": 2, "name": name}) + "\n").encode())
lines = tcp.makefile("r")
welcome = json.loads(lines.readline())
print("welcome " + json.dumps(welcome), flush=True)
hb = welcome["hb_udp"]
payload = b"HLHB" + struct.pack(">IQ", hb["id"], int(hb["key"], 16) ^ flip)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((tcp.getsockname()[0], 0))
end = time.monotonic() + seconds
while time.monotonic() < end:
    udp.sendto(payload, (gateway, hb["port"]))
    time.sleep(welcome["heartbeat_ms"] / 1000)
print("stopped", flush=True)
for line in lines:
    print("got " + line.strip(), flush=True)
print("closed", flush=True)
"#;

support::gateway::bed!(
    /// A gateway with three node namespaces, 100 ms heartbeats, dead after 3.
    Bed
);

impl Bed {
    fn start(prefix: &str) -> Bed {
        let mut gateway = Gateway::prepare(prefix, 3, |bed, instance, dir| {
            format!(
                "{head}\
                 nodes:\n  listen: {gw}:{NODES_PORT}\n  heartbeat_ms: {HEARTBEAT_MS}\n  \
                 dead_after: {DEAD_AFTER}\n  reconnect_grace_ms: 0\n  spares: 0\n  drain_ms: 0\n\
                 control: {{socket: {dir}/halod.sock}}\n\
                 state_file: {dir}/state.json\n",
                head = config_head(bed, instance, 12, &[8000]),
                dir = dir.display(),
                gw = bed.gateway_internal_addr(),
            )
        });
        gateway.run();
        Bed(gateway)
    }

    /// The Python client in node `i`'s namespace.
    fn client(&self, i: usize, name: &str, flip: u64, seconds: f64) -> (Process, Receiver<String>) {
        let mut command = self.bed.command(&self.bed.node_ns(i), "python3");
        command
            .args(["-c", CLIENT])
            .arg(self.bed.gateway_internal_addr().to_string())
            .arg(NODES_PORT.to_string())
            .arg(name)
            .arg(flip.to_string())
            .arg(seconds.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut process = Process::spawn(&format!("client {name}"), command);
        let lines = follow(
            format!("client {name}"),
            process.child.stdout.take().unwrap(),
        );
        (process, lines)
    }

    fn registered(&self) -> Vec<String> {
        let nodes = self.json("nodes");
        let mut names: Vec<String> = nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|node| node["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    }

    fn reason(&self, name: &str) -> u64 {
        self.json("stats")["reasons"][name].as_u64().unwrap_or(0)
    }

    fn failed(&self, name: &str) -> bool {
        self.log
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains("node failed") && line.contains(name))
    }

    /// Waits for `name`'s failure; how long it took.
    fn wait_failed(&self, name: &str) -> Duration {
        let start = Instant::now();
        while !self.failed(name) {
            assert!(
                start.elapsed() < DEADLINE,
                "{name} never failed; gateway log:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(5));
        }
        start.elapsed()
    }
}

#[test]
fn udp_heartbeats_keep_a_node_alive_and_their_end_fails_it() {
    let bed = Bed::start("hd-hb-e1-");
    // A version-1 agent: a welcome without hb_udp, heartbeats over TCP.
    let (_v1, _v1_lines, welcome) = {
        let (agent, lines) = bed.agent(1, "v1", &["--protocol-version", "1"]);
        let welcome = expect_line_within(&lines, "v1 welcome", DEADLINE, |line| {
            line.contains(r#""type":"welcome""#)
        });
        (agent, lines, welcome)
    };
    assert!(!welcome.contains("hb_udp"), "v1 welcome: {welcome}");
    // The reference agent speaks version 2 by default.
    let (_agent, _agent_lines, welcome) = bed.registered_agent(2, "agent2");
    assert!(
        welcome.contains(r#""hb_udp":{"port":7000,"#),
        "agent welcome: {welcome}"
    );

    let stamped_before = bed.reason("heartbeat");
    let (_client, lines) = bed.client(3, "udp0", 0, 3.0);
    let welcome = expect_line_within(&lines, "welcome", DEADLINE, |line| {
        line.starts_with("welcome ")
    });
    assert!(welcome.contains("hb_udp"), "{welcome}");
    // Ten dead windows on UDP heartbeats alone: still registered.
    thread::sleep(Duration::from_millis(HEARTBEAT_MS * DEAD_AFTER * 8));
    assert!(
        !bed.failed("udp0"),
        "failed while heartbeating:\n{}",
        bed.log_text()
    );
    assert_eq!(bed.registered(), ["agent2", "udp0", "v1"]);
    // The XDP program took them (not the daemon's socket).
    let stamped = bed.reason("heartbeat") - stamped_before;
    assert!(stamped >= 20, "{stamped} heartbeats stamped by the program");

    // The heartbeats stop; the connection stays open: failed after the dead window.
    expect_line_within(&lines, "stopped", DEADLINE, |line| line == "stopped");
    let took = bed.wait_failed("udp0");
    let window = Duration::from_millis(HEARTBEAT_MS * DEAD_AFTER);
    assert!(
        took >= window / 2 && took < window + Duration::from_millis(700),
        "udp0 failed {took:?} after its last heartbeat (window {window:?})"
    );
    expect_line_within(&lines, "closed", DEADLINE, |line| line == "closed");
    // The version-1 agent and the version-2 agent are fine.
    assert_eq!(bed.registered(), ["agent2", "v1"]);
    assert!(
        !bed.failed("v1") && !bed.failed("agent2"),
        "{}",
        bed.log_text()
    );
}

#[test]
fn heartbeats_with_a_wrong_key_do_not_keep_a_node_alive() {
    let bed = Bed::start("hd-hb-e2-");
    let refused_before = bed.reason("drop_heartbeat");
    // It sends heartbeats all along, with its key's last bit flipped.
    let (_client, lines) = bed.client(1, "forger", 1, 30.0);
    expect_line_within(&lines, "welcome", DEADLINE, |line| {
        line.starts_with("welcome ")
    });
    let took = bed.wait_failed("forger");
    assert!(
        took < Duration::from_millis(HEARTBEAT_MS * DEAD_AFTER + 1000),
        "failed only after {took:?}"
    );
    assert!(bed.reason("drop_heartbeat") > refused_before);
    assert!(bed.registered().is_empty());
}
