//! The manager and the connection tasks over an in-memory transport
//! (`tokio::io::duplex`), with a recorder in place of the data plane and
//! tokio's paused clock in place of real time.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::{self, ConnectionContext};
use super::manager::{Request, Snapshot};
use super::tables::{Recorder, Write};
use super::wiring::{Wiring, test_config};
use crate::protocol::{ErrorCode, GatewayMessage, LineReader, Role};

const ROUTES: u32 = 24;
const HEARTBEAT: Duration = Duration::from_millis(100);

struct Gateway {
    requests: mpsc::Sender<Request>,
    recorder: Recorder,
    /// What each connection task gets (tests change its token and policy).
    context: ConnectionContext,
    next_conn: u64,
}

/// A gateway whose moves do not drain (`nodes.drain_ms: 0`).
async fn gateway(spares: u32, grace_ms: u64, max_nodes: u32) -> Gateway {
    gateway_with(&format!(
        "spares: {spares}, reconnect_grace_ms: {grace_ms}, max_nodes: {max_nodes}, \
         dead_after: 3, drain_ms: 0"
    ))
    .await
}

/// A gateway whose moves drain for `DRAIN`, with nodes that may stay silent
/// for 100 s (the tests' nodes send no heartbeats while time jumps).
async fn draining_gateway(spares: u32) -> Gateway {
    gateway_with(&format!(
        "spares: {spares}, dead_after: 1000, drain_ms: {}",
        DRAIN.as_millis()
    ))
    .await
}

const DRAIN: Duration = Duration::from_secs(5);

async fn gateway_with(nodes: &str) -> Gateway {
    let config = test_config(&format!("heartbeat_ms: {}, {nodes}", HEARTBEAT.as_millis()));
    let recorder = Recorder::default();
    let wired = Wiring::new(&config, recorder.clone())
        .unwrap()
        .queue(64)
        .start(&TaskTracker::new(), &CancellationToken::new())
        .await;
    Gateway {
        requests: wired.requests,
        recorder,
        context: wired.connections,
        next_conn: 0,
    }
}

fn addr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 0, 10 + i)
}

/// The node end of an in-memory connection.
struct TestNode {
    name: String,
    reader: ReadHalf<DuplexStream>,
    writer: WriteHalf<DuplexStream>,
    lines: LineReader,
    /// Routes the node knows it serves, from its messages.
    routes: BTreeSet<u16>,
    role: Option<Role>,
}

impl Gateway {
    fn open(&mut self, i: u8) -> (ReadHalf<DuplexStream>, WriteHalf<DuplexStream>) {
        let (node, gateway) = tokio::io::duplex(64 * 1024);
        let (reader, writer) = tokio::io::split(gateway);
        self.next_conn += 1;
        let context = std::sync::Arc::new(self.context.clone());
        tokio::spawn(connection::serve(
            reader,
            writer,
            IpAddr::V4(addr(i)),
            self.next_conn,
            context,
        ));
        tokio::io::split(node)
    }

    /// Connects node `i` as `name` and sends `hello` (with `extra` fields).
    async fn connect(&mut self, i: u8, name: &str, extra: &str) -> TestNode {
        let (reader, writer) = self.open(i);
        let mut node = TestNode {
            name: name.to_string(),
            reader,
            writer,
            lines: LineReader::new(),
            routes: BTreeSet::new(),
            role: None,
        };
        node.send(&format!(
            r#"{{"type":"hello","version":1,"name":"{name}"{extra}}}"#
        ))
        .await;
        node
    }

    /// Connects and expects a welcome.
    async fn join(&mut self, i: u8, name: &str) -> TestNode {
        let mut node = self.connect(i, name, "").await;
        match node.recv().await {
            GatewayMessage::Welcome { heartbeat_ms, .. } => assert_eq!(heartbeat_ms, 100),
            other => panic!("{name}: expected welcome, got {other:?}"),
        }
        node
    }

    async fn snapshot(&self) -> Snapshot {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Snapshot { reply })
            .await
            .unwrap();
        answer.await.unwrap()
    }

    /// Checks the data-plane mirror against the routing state and each
    /// node's own view of its routes.
    async fn check(&self, nodes: &mut [&mut TestNode]) {
        let snapshot = self.snapshot().await;
        let mirror = self.recorder.mirror();
        let mut expected = BTreeMap::new();
        for status in &snapshot.nodes {
            for &route in &status.routes {
                expected.insert(route, status.addr);
            }
        }
        assert_eq!(mirror, expected, "data plane vs routing");
        if !snapshot.active.is_empty() {
            assert_eq!(mirror.len(), ROUTES as usize, "every route mapped");
        }
        for node in nodes.iter_mut() {
            node.drain().await;
            let status = snapshot
                .nodes
                .iter()
                .find(|status| status.name == node.name)
                .unwrap_or_else(|| panic!("{} not registered", node.name));
            let routes: BTreeSet<u16> = status.routes.iter().copied().collect();
            assert_eq!(node.routes, routes, "{}: its view of its routes", node.name);
        }
    }
}

impl TestNode {
    async fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
    }

    async fn next(&mut self) -> Option<String> {
        tokio::time::timeout(
            Duration::from_secs(30),
            self.lines.next_line(&mut self.reader),
        )
        .await
        .unwrap_or_else(|_| panic!("{}: nothing received", self.name))
        .unwrap_or_else(|err| panic!("{}: {err}", self.name))
    }

    /// The next message, applied to the node's view.
    async fn recv(&mut self) -> GatewayMessage {
        let line = self
            .next()
            .await
            .unwrap_or_else(|| panic!("{}: connection closed", self.name));
        let message = GatewayMessage::decode(&line).unwrap();
        match &message {
            GatewayMessage::Welcome { role, routes, .. } => {
                self.role = Some(*role);
                self.routes = routes.iter().map(|r| r.route).collect();
            }
            GatewayMessage::Assigned { routes } => {
                for route in routes {
                    assert_eq!(
                        route.ports,
                        vec![8000 + route.route - 1, 9000 + route.route - 1]
                    );
                    assert!(self.routes.insert(route.route), "assigned twice");
                }
            }
            GatewayMessage::Moved { routes, .. } => {
                for route in routes {
                    assert!(
                        self.routes.remove(&route.route),
                        "moved a route it did not have"
                    );
                }
            }
            GatewayMessage::Role { role } => self.role = Some(*role),
            GatewayMessage::DrainDone { .. } | GatewayMessage::Error { .. } => {}
        }
        message
    }

    /// Applies every message already sent.
    async fn drain(&mut self) {
        // Let the gateway's tasks run to completion first.
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        loop {
            tokio::select! {
                biased;
                line = self.lines.next_line(&mut self.reader) => {
                    let line = line.unwrap().unwrap_or_else(|| panic!("{}: closed", self.name));
                    let message = GatewayMessage::decode(&line).unwrap();
                    self.apply_line(message);
                }
                () = tokio::task::yield_now() => return,
            }
        }
    }

    fn apply_line(&mut self, message: GatewayMessage) {
        match message {
            GatewayMessage::Assigned { routes } => {
                self.routes.extend(routes.iter().map(|r| r.route));
            }
            GatewayMessage::Moved { routes, .. } => {
                for route in routes {
                    self.routes.remove(&route.route);
                }
            }
            GatewayMessage::Role { role } => self.role = Some(role),
            other => panic!("{}: unexpected {other:?}", self.name),
        }
    }

    /// Reads until the gateway closes; returns what came before.
    async fn until_closed(&mut self) -> Vec<GatewayMessage> {
        let mut messages = Vec::new();
        while let Some(line) = self.next().await {
            messages.push(GatewayMessage::decode(&line).unwrap());
        }
        messages
    }

    fn heartbeat(mut writer: WriteHalf<DuplexStream>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                if writer.write_all(b"{\"type\":\"hb\"}\n").await.is_err() {
                    return;
                }
                tokio::time::sleep(HEARTBEAT).await;
            }
        })
    }
}

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn three_nodes_register_and_every_route_reaches_its_node() {
    let mut gateway = gateway(0, 0, 100).await;
    let mut n1 = gateway.join(1, "n1").await;
    assert_eq!(n1.role, Some(Role::Active));
    assert_eq!(n1.routes.len(), 24);
    let mut n2 = gateway.join(2, "n2").await;
    assert_eq!(n2.routes, (13..=24).collect());
    let mut n3 = gateway.join(3, "n3").await;
    gateway.check(&mut [&mut n1, &mut n2, &mut n3]).await;
    // T(3) from routing.md.
    assert_eq!(n1.routes, (1..=8).collect());
    assert_eq!(n2.routes, (13..=20).collect());
    assert_eq!(n3.routes, (9..=12).chain(21..=24).collect());
    let snapshot = gateway.snapshot().await;
    assert_eq!(snapshot.active, vec!["n1", "n2", "n3"]);
    let indexes: BTreeSet<u32> = snapshot.nodes.iter().map(|n| n.index).collect();
    assert_eq!(indexes, BTreeSet::from([0, 1, 2]));
}

#[tokio::test(start_paused = true)]
async fn a_closed_connection_fails_the_node_at_once() {
    let mut gateway = gateway(0, 0, 100).await;
    let mut n1 = gateway.join(1, "n1").await;
    let mut n2 = gateway.join(2, "n2").await;
    let n3 = gateway.join(3, "n3").await;
    gateway.check(&mut [&mut n1, &mut n2]).await;
    let start = Instant::now();
    drop(n3);
    // n3 (slot 3, the last) goes: its routes return to slots 1 and 2.
    n1.drain().await;
    n2.drain().await;
    settle().await;
    gateway.check(&mut [&mut n1, &mut n2]).await;
    assert_eq!(n1.routes, (1..=12).collect());
    assert_eq!(n2.routes, (13..=24).collect());
    assert!(
        start.elapsed() < HEARTBEAT,
        "acted on at once: {:?}",
        start.elapsed()
    );
    assert_eq!(gateway.snapshot().await.nodes.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failed_node_is_flushed_with_its_routes_and_a_leaving_one_is_not() {
    let mut gateway = gateway(0, 0, 100).await;
    let mut n1 = gateway.join(1, "n1").await;
    let mut n2 = gateway.join(2, "n2").await;
    let n3 = gateway.join(3, "n3").await;
    gateway.check(&mut [&mut n1, &mut n2]).await;
    let snapshot = gateway.snapshot().await;
    let status = snapshot
        .nodes
        .iter()
        .find(|node| node.name == "n3")
        .unwrap();
    let (index, routes) = (status.index, status.routes.clone());
    assert!(!routes.is_empty());
    drop(n3);
    n1.drain().await;
    n2.drain().await;
    settle().await;
    let flushes = gateway.recorder.flushes();
    assert_eq!(flushes.len(), 1, "{flushes:?}");
    assert_eq!(flushes[0].node, "n3");
    assert_eq!(flushes[0].index, index);
    assert_eq!(flushes[0].routes, routes);
    // A node that says bye is not flushed: its connections drain or close.
    n2.send(r#"{"type":"bye"}"#).await;
    n2.until_closed().await;
    settle().await;
    assert_eq!(gateway.recorder.flushes().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_silent_node_fails_after_the_dead_window() {
    let mut gateway = gateway(0, 0, 100).await;
    let mut n1 = gateway.join(1, "n1").await;
    let mut n2 = gateway.join(2, "n2").await;
    let n3 = gateway.join(3, "n3").await;
    // n1 and n2 heartbeat from their own tasks; n3 goes silent.
    let TestNode {
        reader: r1,
        writer: w1,
        ..
    } = std::mem::replace(&mut n1, gateway.placeholder());
    let TestNode {
        reader: r2,
        writer: w2,
        ..
    } = std::mem::replace(&mut n2, gateway.placeholder());
    let beats = [TestNode::heartbeat(w1), TestNode::heartbeat(w2)];
    let mut n3 = n3;
    let start = Instant::now();
    let messages = n3.until_closed().await;
    let silent = start.elapsed();
    eprintln!("n3 failed after {silent:?} of silence (dead window 300 ms)");
    assert!(silent >= Duration::from_millis(300), "{silent:?}");
    assert!(silent <= Duration::from_millis(400), "{silent:?}");
    // It was told what it lost before the connection closed.
    assert!(matches!(&messages[..], [GatewayMessage::Moved { routes, .. }] if routes.len() == 8));
    let snapshot = gateway.snapshot().await;
    assert_eq!(snapshot.active, vec!["n1", "n2"]);
    for beat in beats {
        beat.abort();
    }
    drop((r1, r2));
}

impl Gateway {
    /// A node value that is not connected (for `mem::replace`).
    fn placeholder(&mut self) -> TestNode {
        let (node, _) = tokio::io::duplex(16);
        let (reader, writer) = tokio::io::split(node);
        TestNode {
            name: "placeholder".into(),
            reader,
            writer,
            lines: LineReader::new(),
            routes: BTreeSet::new(),
            role: None,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_stalled_daemon_gives_every_node_a_new_dead_window() {
    let mut gateway = gateway(0, 0, 100).await;
    let _n1 = gateway.join(1, "n1").await;
    let _n2 = gateway.join(2, "n2").await;
    // Both silent for 250 ms: within the 300 ms window.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(gateway.snapshot().await.nodes.len(), 2);
    // The daemon does not run for 5 s (time jumps past every deadline).
    tokio::time::advance(Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(
        gateway.snapshot().await.nodes.len(),
        2,
        "a stall of the daemon must not fail nodes"
    );
    // Still silent: they fail one dead window later.
    let stall_end = Instant::now();
    while !gateway.snapshot().await.nodes.is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let window = stall_end.elapsed();
    eprintln!("silent nodes failed {window:?} after the stall");
    assert!(window >= Duration::from_millis(290), "{window:?}");
    assert!(window <= Duration::from_millis(450), "{window:?}");
}

#[tokio::test(start_paused = true)]
async fn a_spare_takes_the_failed_slot_with_one_slot_write() {
    let mut gateway = gateway(1, 0, 100).await;
    let mut n1 = gateway.join(1, "n1").await;
    let mut n2 = gateway.join(2, "n2").await;
    assert_eq!(n2.role, Some(Role::Spare));
    assert!(n2.routes.is_empty());
    let mut n3 = gateway.join(3, "n3").await;
    assert_eq!(n3.role, Some(Role::Active));
    gateway.check(&mut [&mut n1, &mut n2, &mut n3]).await;
    let n1_routes = n1.routes.clone();
    let n3_routes = n3.routes.clone();
    let before = gateway.recorder.batches().len();
    drop(n1);
    assert_eq!(n2.recv().await, GatewayMessage::Role { role: Role::Active });
    assert!(matches!(n2.recv().await, GatewayMessage::Assigned { .. }));
    settle().await;
    gateway.check(&mut [&mut n2, &mut n3]).await;
    assert_eq!(n2.routes, n1_routes);
    assert_eq!(n3.routes, n3_routes, "no other route moves");
    let batches = gateway.recorder.batches();
    assert_eq!(batches.len(), before + 1);
    let last = &batches[before];
    assert!(
        matches!(&last[..], [Write::Slot { slot: 1, node: Some(node) }] if node.addr == addr(2)),
        "one slot write: {last:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn bye_announces_then_leaves() {
    let mut gateway = gateway(0, 0, 100).await;
    let mut n1 = gateway.join(1, "n1").await;
    let mut n2 = gateway.join(2, "n2").await;
    gateway.check(&mut [&mut n1, &mut n2]).await;
    let before = gateway.recorder.batches().len();
    n2.send(r#"{"type":"bye"}"#).await;
    let messages = n2.until_closed().await;
    match &messages[..] {
        [GatewayMessage::Moved { routes, .. }] => {
            assert_eq!(routes.len(), 12);
            assert!(routes.iter().all(|r| r.to.as_deref() == Some("n1")));
            assert_eq!(routes[0].ports, vec![8012, 9012]);
        }
        other => panic!("expected one moved, got {other:?}"),
    }
    settle().await;
    gateway.check(&mut [&mut n1]).await;
    assert_eq!(n1.routes.len(), 24);
    assert_eq!(gateway.recorder.batches().len(), before + 1);
    // The last node leaving: its routes go nowhere.
    n1.send(r#"{"type":"bye"}"#).await;
    match &n1.until_closed().await[..] {
        [GatewayMessage::Moved { routes, .. }] => {
            assert_eq!(routes.len(), 24);
            assert!(routes.iter().all(|r| r.to.is_none()));
        }
        other => panic!("expected one moved, got {other:?}"),
    }
    settle().await;
    assert!(gateway.recorder.mirror().is_empty());
}

async fn refused(node: &mut TestNode) -> (ErrorCode, String) {
    let messages = node.until_closed().await;
    match &messages[..] {
        [GatewayMessage::Error { code, message }] => (*code, message.clone()),
        other => panic!("expected one error, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn refusals_carry_an_error_line() {
    let mut gateway = gateway(0, 0, 2).await;
    gateway.context.token = Some("s3cret".into());
    let mut wrong = gateway.connect(1, "n1", r#","token":"guess""#).await;
    assert_eq!(refused(&mut wrong).await.0, ErrorCode::BadToken);
    let mut missing = gateway.connect(1, "n1", "").await;
    assert_eq!(refused(&mut missing).await.0, ErrorCode::BadToken);

    let mut n1 = gateway.connect(1, "n1", r#","token":"s3cret""#).await;
    assert!(matches!(n1.recv().await, GatewayMessage::Welcome { .. }));
    let mut twin = gateway.connect(2, "n1", r#","token":"s3cret""#).await;
    let (code, message) = refused(&mut twin).await;
    assert_eq!(code, ErrorCode::DuplicateName);
    assert!(message.contains("n1"), "{message}");
    let mut same_addr = gateway.connect(1, "n9", r#","token":"s3cret""#).await;
    let (code, message) = refused(&mut same_addr).await;
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("198.19.0.11"), "{message}");

    let mut n2 = gateway.connect(2, "n2", r#","token":"s3cret""#).await;
    assert!(matches!(n2.recv().await, GatewayMessage::Welcome { .. }));
    let mut n3 = gateway.connect(3, "n3", r#","token":"s3cret""#).await;
    assert_eq!(refused(&mut n3).await.0, ErrorCode::Full);

    for (line, reason) in [
        (r#"{"type":"hb"}"#, "first message must be hello"),
        (r#"{"type":"hello","version":9,"name":"x"}"#, "version 9"),
        (r#"{"type":"launch"}"#, "unknown message type"),
        ("not json", "JSON"),
    ] {
        let (reader, writer) = gateway.open(4);
        let mut node = TestNode {
            name: "raw".into(),
            reader,
            writer,
            lines: LineReader::new(),
            routes: BTreeSet::new(),
            role: None,
        };
        node.send(line).await;
        let (code, message) = refused(&mut node).await;
        assert_eq!(code, ErrorCode::BadRequest, "{line}");
        assert!(message.contains(reason), "{line}: {message}");
    }
    // A registered node sending garbage is refused and failed.
    n2.send(r#"{"type":"dance"}"#).await;
    assert_eq!(refused(&mut n2).await.0, ErrorCode::BadRequest);
    settle().await;
    assert_eq!(gateway.snapshot().await.active, vec!["n1"]);
    // The first node is untouched throughout.
    n1.drain().await;
    assert_eq!(n1.routes.len(), 24);
}

#[tokio::test(start_paused = true)]
async fn a_line_over_4_kib_is_refused() {
    let mut gateway = gateway(0, 0, 10).await;
    let mut n1 = gateway.join(1, "n1").await;
    let long = format!(r#"{{"type":"hb","pad":"{}"}}"#, "x".repeat(5000));
    n1.send(&long).await;
    let (code, message) = refused(&mut n1).await;
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("4096"), "{message}");
    settle().await;
    assert!(gateway.snapshot().await.nodes.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_reconnect_within_the_grace_time_resumes_the_node() {
    let mut gateway = gateway(0, 500, 10).await;
    let mut n1 = gateway.join(1, "n1").await;
    let n2 = gateway.join(2, "n2").await;
    gateway.check(&mut [&mut n1]).await;
    let before = gateway.recorder.batches().len();
    drop(n2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let snapshot = gateway.snapshot().await;
    assert_eq!(snapshot.active, vec!["n1", "n2"]);
    assert!(!snapshot.nodes[1].connected);
    let mut n2 = gateway.connect(2, "n2", "").await;
    match n2.recv().await {
        GatewayMessage::Welcome { role, routes, .. } => {
            assert_eq!(role, Role::Active);
            assert_eq!(routes.len(), 12);
        }
        other => panic!("expected welcome, got {other:?}"),
    }
    assert_eq!(gateway.recorder.batches().len(), before, "no table change");
    // Heartbeat so only the grace rule is at play below.
    let TestNode { reader, writer, .. } = n2;
    let beat = TestNode::heartbeat(writer);
    for _ in 0..20 {
        n1.send(r#"{"type":"hb"}"#).await;
        tokio::time::sleep(HEARTBEAT).await;
    }
    assert_eq!(gateway.snapshot().await.active, vec!["n1", "n2"]);
    beat.abort();
    drop(reader);
    // Gone for good: failed when the grace time is over.
    let lost = Instant::now();
    while gateway.snapshot().await.active.len() > 1 {
        n1.send(r#"{"type":"hb"}"#).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let waited = lost.elapsed();
    eprintln!("failed {waited:?} after the connection was lost (grace 500 ms)");
    assert!(waited >= Duration::from_millis(500), "{waited:?}");
    gateway.check(&mut [&mut n1]).await;
}

fn refusals(gateway: &Gateway, cause: &'static str) -> u64 {
    gateway
        .context
        .metrics
        .node_refusals
        .get_or_create(&super::metrics::CauseLabel { cause })
        .get()
}

/// A raw connection from node address `i` that says `line` (if any).
async fn raw(gateway: &mut Gateway, i: u8, line: Option<&str>) -> TestNode {
    let (reader, writer) = gateway.open(i);
    let mut node = TestNode {
        name: "raw".into(),
        reader,
        writer,
        lines: LineReader::new(),
        routes: BTreeSet::new(),
        role: None,
    };
    if let Some(line) = line {
        node.send(line).await;
    }
    node
}

#[tokio::test(start_paused = true)]
async fn hostile_nodes_are_refused_counted_and_leave_others_alone() {
    let mut gateway = gateway(0, 0, 10).await;
    gateway.context.policy.hello_timeout = Duration::from_millis(500);
    gateway.context.policy.allowed = vec!["198.19.0.0/24".parse().unwrap()];
    gateway.context.policy.vip = Some(Ipv4Addr::new(198, 18, 0, 1));
    let mut n1 = gateway.join(1, "n1").await;

    // Addresses outside nodes.allowed_cidrs, the VIP, loopback.
    for (addr, reason) in [
        ("203.0.113.5", "outside nodes.allowed_cidrs (198.19.0.0/24)"),
        ("198.18.0.1", "cannot be a node address"),
        ("127.0.0.1", "cannot be a node address"),
    ] {
        let mut node = gateway
            .connect(2, "n2", &format!(r#","addr":"{addr}""#))
            .await;

        let (code, message) = refused(&mut node).await;
        assert_eq!(code, ErrorCode::BadRequest, "{addr}");
        assert!(message.contains(reason), "{addr}: {message}");
    }
    assert_eq!(refusals(&gateway, "address_not_allowed"), 3);

    // Not JSON, a JSON array, a line over 4 KiB, before hello.
    for line in ["\u{1}\u{2}garbage", r#"["hello",1,"x"]"#] {
        let mut node = raw(&mut gateway, 4, Some(line)).await;
        assert_eq!(refused(&mut node).await.0, ErrorCode::BadRequest, "{line}");
    }
    assert_eq!(refusals(&gateway, "bad_request"), 2);
    let long = "x".repeat(5000);
    let mut node = raw(&mut gateway, 4, Some(&long)).await;
    let (_, message) = refused(&mut node).await;
    assert!(message.contains("4096"), "{message}");
    assert_eq!(refusals(&gateway, "line_too_long"), 1);

    // Wrong token and duplicate name.
    gateway.context.token = Some("s3cret".into());
    let mut guess = gateway.connect(5, "n5", r#","token":"guess""#).await;
    assert_eq!(refused(&mut guess).await.0, ErrorCode::BadToken);
    assert_eq!(refusals(&gateway, "bad_token"), 1);
    let mut twin = gateway.connect(6, "n1", r#","token":"s3cret""#).await;
    assert_eq!(refused(&mut twin).await.0, ErrorCode::DuplicateName);
    assert_eq!(refusals(&gateway, "duplicate_name"), 1);

    // None of it touched n1.
    settle().await;
    assert_eq!(gateway.snapshot().await.active, vec!["n1"]);
    n1.drain().await;
    assert_eq!(n1.routes.len(), ROUTES as usize);
    gateway.check(&mut [&mut n1]).await;

    // A hello that never comes (on a gateway of its own: the wait lets time
    // pass, and n1 above sends no heartbeats).
    let mut gateway = self::gateway(0, 0, 10).await;
    gateway.context.policy.hello_timeout = Duration::from_millis(500);
    let mut silent = raw(&mut gateway, 3, None).await;
    let (code, message) = refused(&mut silent).await;
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("no hello within 500 ms"), "{message}");
    assert_eq!(refusals(&gateway, "hello_timeout"), 1);
}

#[test]
fn connections_past_the_limit_are_not_admitted() {
    let policy = super::policy::NodePolicy {
        max_connections: 2,
        ..Default::default()
    };
    let first = policy.admit().expect("first");
    let _second = policy.admit().expect("second");
    assert!(policy.admit().is_none(), "a third connection was admitted");
    drop(first);
    assert!(policy.admit().is_some(), "a freed slot is not reused");
}

/// A `hello` whose connection task went away before the manager answered: the
/// node must not stay registered (nothing else would report its connection's
/// end), and with a reconnect grace it waits for its reconnect instead.
#[tokio::test(start_paused = true)]
async fn a_node_whose_hello_cannot_be_answered_does_not_stay_registered() {
    for grace_ms in [0, 5_000] {
        let mut gateway = gateway(0, grace_ms, 100).await;
        let mut n1 = gateway.join(1, "n1").await;
        let (reply, answer) = oneshot::channel();
        drop(answer);
        gateway
            .requests
            .send(Request::Hello {
                conn: 999,
                name: "n2".into(),
                addr: addr(2),
                reply,
            })
            .await
            .unwrap();
        let snapshot = gateway.snapshot().await;
        let n2 = snapshot.nodes.iter().find(|node| node.name == "n2");
        if grace_ms == 0 {
            assert!(n2.is_none(), "n2 must be failed at once: {snapshot:?}");
            assert_eq!(snapshot.active, ["n1"]);
        } else {
            let n2 = n2.expect("n2 waits for its reconnect");
            assert!(!n2.connected);
            assert_eq!(n2.awaiting, Some("reconnect"));
        }
        gateway.check(&mut [&mut n1]).await;
        gateway.context.shutdown.cancel();
    }
}

/// A table change the data plane refuses twice stops the manager with an
/// error that says so, so the daemon cannot go on with a table the kernel
/// does not hold.
#[tokio::test(start_paused = true)]
async fn a_change_the_data_plane_refuses_twice_stops_the_manager() {
    let refusing = Recorder::refusing();
    let wired = Wiring::new(&test_config("max_nodes: 10"), refusing.clone())
        .unwrap()
        .start(&TaskTracker::new(), &CancellationToken::new())
        .await;
    let (requests, manager) = (wired.requests, wired.manager);
    let (reply, _answer) = oneshot::channel();
    requests
        .send(Request::Hello {
            conn: 1,
            name: "n1".into(),
            addr: addr(1),
            reply,
        })
        .await
        .unwrap();
    let error = manager.await.unwrap().expect_err("the manager must stop");
    let text = format!("{error:#}");
    assert!(
        text.contains("refused 25 writes of join:n1 twice"),
        "{text}"
    );
    assert!(text.contains("EPERM (test)"), "{text}");
    assert_eq!(refusing.tries(), 2, "one retry, no more");
}

#[tokio::test]
async fn the_daemon_stops_with_an_error_when_a_task_it_needs_ends() {
    use super::supervise;
    let pending = std::future::pending::<()>;
    // The manager fails.
    let shutdown = CancellationToken::new();
    let manager = tokio::spawn(async { Err(anyhow::anyhow!("refused twice")) });
    let error = supervise(&shutdown, manager, pending()).await.unwrap_err();
    assert!(format!("{error:#}").contains("refused twice"), "{error:#}");
    // The manager panics.
    let manager = tokio::spawn(async { panic!("boom") });
    let error = supervise(&shutdown, manager, pending()).await.unwrap_err();
    assert!(format!("{error:#}").contains("panicked: boom"), "{error:#}");
    // The manager ends without being asked to.
    let manager = tokio::spawn(async { Ok(()) });
    let error = supervise(&shutdown, manager, pending()).await.unwrap_err();
    assert!(
        format!("{error:#}").contains("stopped unexpectedly"),
        "{error:#}"
    );
    // The data-plane task ends.
    let manager = tokio::spawn(async { std::future::pending::<anyhow::Result<()>>().await });
    let error = supervise(&shutdown, manager, async {}).await.unwrap_err();
    assert!(
        format!("{error:#}").contains("data-plane task stopped"),
        "{error:#}"
    );
    // SIGTERM: the manager stops when told, and that is no error.
    let stop = shutdown.clone();
    let manager = tokio::spawn(async move {
        stop.cancelled().await;
        Ok(())
    });
    shutdown.cancel();
    supervise(&shutdown, manager, pending()).await.unwrap();
}

/// SIGTERM and the manager's end can be seen at once (it stops as soon as it
/// is told): that is a clean stop, never "stopped unexpectedly".
#[tokio::test]
async fn a_manager_that_stopped_because_it_was_told_is_a_clean_stop() {
    for _ in 0..50 {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let manager = tokio::spawn(async { Ok(()) });
        tokio::task::yield_now().await;
        super::supervise(&shutdown, manager, std::future::pending())
            .await
            .unwrap();
    }
}

/// The writes of `batch` that start drains: route -> old node's address.
fn drain_starts(writes: &[Write]) -> BTreeMap<u16, Ipv4Addr> {
    writes
        .iter()
        .filter_map(|write| match write {
            Write::Drain {
                route,
                from,
                window,
            } => {
                assert_eq!(*window, DRAIN);
                Some((*route, from.addr))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn routes_that_leave_a_live_node_drain_from_it_until_the_window_ends() {
    let mut gateway = draining_gateway(0).await;
    let mut n1 = gateway.join(1, "n1").await;
    let before = gateway.recorder.writes().len();
    let mut n2 = gateway.join(2, "n2").await;
    match n1.recv().await {
        GatewayMessage::Moved { routes, drain_ms } => {
            assert_eq!(drain_ms, 5000, "the node is told how long it keeps them");
            assert_eq!(routes.len(), 12);
        }
        other => panic!("expected moved, got {other:?}"),
    }
    // The drains come first in the join's batch: the old node's connections
    // never reach the new node, not for a moment.
    let writes = gateway.recorder.writes()[before..].to_vec();
    assert!(
        writes[..12]
            .iter()
            .all(|w| matches!(w, Write::Drain { .. })),
        "{writes:?}"
    );
    let moved: BTreeMap<u16, Ipv4Addr> = (13..=24).map(|r| (r, addr(1))).collect();
    assert_eq!(drain_starts(&writes), moved);
    assert_eq!(gateway.recorder.drains(), moved);
    let snapshot = gateway.snapshot().await;
    assert_eq!(snapshot.drains.len(), 12);
    assert!(
        snapshot
            .drains
            .iter()
            .all(|(drain, left)| drain.node == "n1" && *left == 5000)
    );
    gateway.check(&mut [&mut n1, &mut n2]).await;

    // The window ends: the data plane forgets the drains, n1 hears it.
    tokio::time::sleep(DRAIN).await;
    settle().await;
    match n1.recv().await {
        GatewayMessage::DrainDone { routes } => {
            let routes: Vec<u16> = routes.iter().map(|r| r.route).collect();
            assert_eq!(routes, (13..=24).collect::<Vec<_>>());
        }
        other => panic!("expected drain_done, got {other:?}"),
    }
    assert!(gateway.recorder.drains().is_empty());
    assert!(gateway.snapshot().await.drains.is_empty());
    gateway.check(&mut [&mut n1, &mut n2]).await;
}

#[tokio::test(start_paused = true)]
async fn a_node_that_says_bye_keeps_its_index_and_connection_until_its_drain_ends() {
    let mut gateway = draining_gateway(0).await;
    let mut n1 = gateway.join(1, "n1").await;
    let mut n2 = gateway.join(2, "n2").await;
    gateway.check(&mut [&mut n1, &mut n2]).await;
    n2.send(r#"{"type":"bye"}"#).await;
    match n2.recv().await {
        GatewayMessage::Moved { routes, drain_ms } => {
            assert_eq!((routes.len(), drain_ms), (12, 5000));
        }
        other => panic!("expected moved, got {other:?}"),
    }
    settle().await;
    assert_eq!(gateway.recorder.drains().len(), 12);
    // n2 is out of the table, but its counter index is still taken.
    let n3 = gateway.join(3, "n3").await;
    let snapshot = gateway.snapshot().await;
    let index = |name: &str| {
        snapshot
            .nodes
            .iter()
            .find(|n| n.name == name)
            .map(|n| n.index)
    };
    assert_eq!(index("n2"), None);
    assert_eq!(index("n3"), Some(2), "n2's index 1 is kept while it drains");
    drop(n3);
    // When the window ends: drain_done, then the connection closes.
    tokio::time::sleep(DRAIN).await;
    let rest = n2.until_closed().await;
    match &rest[..] {
        [GatewayMessage::DrainDone { routes }] => assert_eq!(routes.len(), 12),
        other => panic!("expected drain_done then the end, got {other:?}"),
    }
    assert!(gateway.recorder.drains().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_operator_drain_says_drained_when_the_window_ends() {
    let mut gateway = draining_gateway(0).await;
    let _n1 = gateway.join(1, "n1").await;
    let mut n2 = gateway.join(2, "n2").await;
    let (reply, answer) = oneshot::channel();
    gateway
        .requests
        .send(Request::Drain {
            name: "n2".into(),
            reply,
        })
        .await
        .unwrap();
    let drained = answer.await.unwrap().unwrap();
    assert_eq!((drained.moved, drained.drain_ms), (12, 5000));
    assert!(matches!(
        n2.recv().await,
        GatewayMessage::Moved { drain_ms: 5000, .. }
    ));
    let started = Instant::now();
    let rest = n2.until_closed().await;
    assert!(started.elapsed() >= DRAIN, "not before the window ends");
    match &rest[..] {
        [
            GatewayMessage::DrainDone { .. },
            GatewayMessage::Error {
                code: ErrorCode::Drained,
                ..
            },
        ] => {}
        other => panic!("expected drain_done then drained, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_node_drains_nothing_and_its_own_drains_end_at_once() {
    let mut gateway = draining_gateway(0).await;
    let mut n1 = gateway.join(1, "n1").await;
    let mut n2 = gateway.join(2, "n2").await;
    let mut n3 = gateway.join(3, "n3").await;
    gateway.check(&mut [&mut n1, &mut n2, &mut n3]).await;
    // n2's join drained 13..=24 from n1; n3's 9..=12 from n1 and 21..=24
    // from n2. Routes 21..=24 keep n1 as their old node in the data plane:
    // their connections older than both moves are n1's.
    let from_n1: BTreeMap<u16, Ipv4Addr> = (9..=24).map(|r| (r, addr(1))).collect();
    assert_eq!(gateway.recorder.drains(), from_n1);
    let before = gateway.recorder.writes().len();
    // n1 fails, no spare: n3 (last) takes slot 1; slot 3's routes go back
    // where they came from: 21..=24 to n2, from n3, which drains them.
    drop(n1);
    settle().await;
    let writes = gateway.recorder.writes()[before..].to_vec();
    let ended: Vec<u16> = writes
        .iter()
        .filter_map(|w| match w {
            Write::DrainEnd { route } => Some(*route),
            _ => None,
        })
        .collect();
    assert_eq!(ended, (9..=20).collect::<Vec<_>>(), "only n1 drained them");
    let still: BTreeMap<u16, Ipv4Addr> = (21..=24).map(|r| (r, addr(1))).collect();
    assert_eq!(gateway.recorder.drains(), still, "n2 and now n3 drain them");
    match n3.recv().await {
        GatewayMessage::Moved { routes, drain_ms } => {
            assert_eq!(drain_ms, 5000);
            let routes: Vec<u16> = routes.iter().map(|r| r.route).collect();
            assert_eq!(routes, [21, 22, 23, 24]);
        }
        other => panic!("expected moved, got {other:?}"),
    }
    n2.drain().await;
    // n2's window ends, then n3's: the drains are over.
    tokio::time::sleep(DRAIN).await;
    settle().await;
    assert!(gateway.recorder.drains().is_empty());
    assert!(gateway.snapshot().await.drains.is_empty());
}

/// A burst of hellos (a gateway restart, a power event): every node is
/// welcomed with its routes, the data plane ends up with the routing
/// table, and the joins queued together are carried out together: the
/// nodes that were there hear one `moved` per batch, not one per join, and
/// the data plane gets one batch of writes per batch of joins.
#[tokio::test(start_paused = true)]
async fn a_burst_of_hellos_joins_together_and_every_node_knows_its_routes() {
    const BURST: u8 = 20;
    let mut gateway = gateway(1, 0, 100).await;
    let mut n0 = gateway.join(0, "n0").await;
    let mut first = gateway.join(1, "n1").await;
    let batches_before = gateway.recorder.batches().len();
    // Every hello is written before the gateway answers any.
    let mut burst = Vec::new();
    for i in 0..BURST {
        burst.push(gateway.connect(10 + i, &format!("b{i}"), "").await);
    }
    for node in &mut burst {
        match node.recv().await {
            GatewayMessage::Welcome { .. } => {}
            other => panic!("{}: expected welcome, got {other:?}", node.name),
        }
    }
    let mut moved = 0;
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    loop {
        tokio::select! {
            biased;
            line = n0.lines.next_line(&mut n0.reader) => {
                let message = GatewayMessage::decode(&line.unwrap().unwrap()).unwrap();
                assert!(matches!(message, GatewayMessage::Moved { .. }), "{message:?}");
                moved += 1;
                n0.apply_line(message);
            }
            () = tokio::task::yield_now() => break,
        }
    }
    let batches = gateway.recorder.batches().len() - batches_before;
    assert!(
        moved < usize::from(BURST) && batches < usize::from(BURST),
        "{BURST} joins: n0 heard {moved} moved, the data plane got {batches} batches"
    );
    let mut nodes: Vec<&mut TestNode> = vec![&mut first];
    nodes.extend(burst.iter_mut());
    gateway.check(&mut nodes).await;
    eprintln!("{BURST} joins: n0 heard {moved} moved, the data plane got {batches} batches");
    // n0's view, read above, is right too.
    let snapshot = gateway.snapshot().await;
    let status = snapshot.nodes.iter().find(|n| n.name == "n0").unwrap();
    assert_eq!(n0.routes, status.routes.iter().copied().collect());
    assert_eq!(
        snapshot.active.len() + snapshot.spares.len(),
        2 + usize::from(BURST)
    );
    assert_eq!(snapshot.spares.len(), 1);
}

/// A gateway that offers UDP heartbeats (protocol version 2) on port 7000,
/// stamped in a table in memory, which the test stamps as the XDP program or
/// the heartbeat socket would.
async fn gateway_with_udp_heartbeats() -> (Gateway, crate::dataplane::HeartbeatTable) {
    let config = test_config(&format!(
        "heartbeat_ms: {}, dead_after: 3, drain_ms: 0",
        HEARTBEAT.as_millis()
    ));
    let recorder = Recorder::default();
    let table = crate::dataplane::HeartbeatTable::in_memory(config.nodes.max_nodes);
    let wired = Wiring::new(&config, recorder.clone())
        .unwrap()
        .queue(64)
        .udp_heartbeats(table.clone(), 7000)
        .start(&TaskTracker::new(), &CancellationToken::new())
        .await;
    let gateway = Gateway {
        requests: wired.requests,
        recorder,
        context: wired.connections,
        next_conn: 0,
    };
    (gateway, table)
}

/// Sends UDP heartbeats for `node` (as `stamps` says) every heartbeat
/// interval for `duration`, sending nothing over its connection.
async fn udp_heartbeats_for(
    table: &crate::dataplane::HeartbeatTable,
    beat: halod_common::heartbeat::Heartbeat,
    from: Ipv4Addr,
    duration: Duration,
) -> usize {
    let mut stamped = 0;
    let end = Instant::now() + duration;
    while Instant::now() < end {
        tokio::time::sleep(HEARTBEAT).await;
        // The stamps are on the kernel's coarse clock, which the paused
        // tokio clock does not move: let it tick (4 ms at most) so that each
        // heartbeat is a new stamp.
        std::thread::sleep(Duration::from_millis(5));
        if table.accept(beat, from, crate::dataplane::heartbeats::coarse_now_ns()) {
            stamped += 1;
        }
    }
    stamped
}

#[tokio::test(start_paused = true)]
async fn version_2_nodes_heartbeat_over_udp_and_fail_when_those_stop() {
    let (mut gateway, table) = gateway_with_udp_heartbeats().await;
    let offer = |message: GatewayMessage| match message {
        GatewayMessage::Welcome { hb_udp, .. } => hb_udp,
        other => panic!("expected welcome, got {other:?}"),
    };
    // A version-1 node hears nothing of UDP heartbeats: its welcome is as
    // before; it heartbeats over TCP.
    let mut n1 = gateway.connect(1, "n1", "").await;
    assert_eq!(offer(n1.recv().await), None);
    let beats = TestNode::heartbeat(n1.writer);
    // A version-2 node is offered them: its id is its counter index, its
    // key random and new at every welcome.
    let (reader, writer) = gateway.open(2);
    let mut n2 = TestNode {
        name: "n3".to_string(),
        reader,
        writer,
        lines: LineReader::new(),
        routes: BTreeSet::new(),
        role: None,
    };
    n2.send(r#"{"type":"hello","version":2,"name":"n3"}"#).await;
    let hb_udp = offer(n2.recv().await).expect("a version-2 node's welcome has hb_udp");
    let snapshot = gateway.snapshot().await;
    let index = snapshot
        .nodes
        .iter()
        .find(|n| n.name == "n3")
        .unwrap()
        .index;
    assert_eq!((hb_udp.port, hb_udp.id), (7000, index));
    assert_ne!(hb_udp.key.0, 0);
    let beat = halod_common::heartbeat::Heartbeat {
        id: hb_udp.id,
        key: hb_udp.key.0,
    };
    // UDP heartbeats alone keep n3 alive for many dead windows.
    let stamped = udp_heartbeats_for(&table, beat, addr(2), Duration::from_secs(2)).await;
    assert!(stamped >= 15, "{stamped} heartbeats stamped");
    let names = |snapshot: Snapshot| -> Vec<String> {
        snapshot.nodes.into_iter().map(|n| n.name).collect()
    };
    assert_eq!(names(gateway.snapshot().await), ["n1", "n3"]);
    // Heartbeats with another key, or from another address, do not count.
    let forged = halod_common::heartbeat::Heartbeat {
        key: beat.key ^ 1,
        ..beat
    };
    assert_eq!(
        udp_heartbeats_for(&table, forged, addr(2), Duration::from_millis(200)).await,
        0
    );
    assert_eq!(
        udp_heartbeats_for(&table, beat, addr(9), Duration::from_millis(200)).await,
        0
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    settle().await;
    assert_eq!(
        names(gateway.snapshot().await),
        ["n1"],
        "n3 silent for a dead window"
    );
    // A forgotten node's key matches no more.
    assert_eq!(table.last_ns(index), None);
    assert!(!table.accept(beat, addr(2), crate::dataplane::heartbeats::coarse_now_ns()));
    beats.abort();
}
