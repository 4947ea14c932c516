//! End to end: the dead-node flush. Two nodes with a backend each, idle client
//! connections through the VIP to every route; node 2's machine "dies" (its
//! link goes down, so no FIN or RST of its own ever reaches anyone, then its
//! agent and backend are killed). Every idle connection of node 2 must be
//! reset without the client sending anything, and node 1's must be untouched.
//! Needs root; run by `cargo xtask test`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

mod support;
use support::gateway::{Gateway, NODES_PORT, config_head};

const ROUTES: u16 = 8;
const BASES: [u16; 2] = [8000, 9000];
const CONNECTIONS: usize = 20;
/// Generous: a correctness deadline (docs/benchmarks.md has the timing).
const DEADLINE: Duration = Duration::from_secs(5);

support::gateway::bed!(
    /// The flush test's gateway: 8 routes on two listener groups, failure
    /// after 300 ms of silence, no drains, the flush on.
    Bed
);

fn ports() -> Vec<u16> {
    BASES
        .iter()
        .flat_map(|base| (0..ROUTES).map(move |offset| base + offset))
        .collect()
}

/// Reads the backend's name line byte by byte (nothing past it is consumed).
fn name_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read_exact(&mut byte).is_ok() && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

#[test]
fn idle_clients_of_a_dead_node_are_reset() {
    let mut gateway = Gateway::prepare("hd-fl-", 2, |bed, instance, dir| {
        format!(
            "{head}\
             nodes:\n  listen: {gw}:{NODES_PORT}\n  heartbeat_ms: 100\n  dead_after: 3\n  \
             reconnect_grace_ms: 0\n  drain_ms: 0\n  flush_pps: 10000\n  flush_flows: 4096\n\
             control: {{socket: {dir}/halod.sock}}\n\
             state_file: {dir}/state.json\n",
            head = config_head(bed, instance, ROUTES, &BASES),
            dir = dir.display(),
            gw = bed.gateway_internal_addr(),
        )
    });
    gateway.run();
    let bed = Bed(gateway);
    let _backend1 = bed.backend(1, "n1", ports());
    let mut backend2 = Some(bed.backend(2, "n2", ports()));
    let (_agent1, _lines1, _) = bed.registered_agent(1, "n1");
    let (agent2, _lines2, _) = bed.registered_agent(2, "n2");
    let mut agent2 = Some(agent2);
    // Both nodes serve routes once the second one's table is in.
    let start = Instant::now();
    let ports = ports();
    let connections: Vec<(u16, String, TcpStream)> = loop {
        let vip = bed.bed.vip();
        let opened = xtask::testbed::run_in_netns(&bed.bed.client_ns(1), || {
            (0..CONNECTIONS)
                .map(|i| {
                    let port = ports[i % ports.len()];
                    let mut stream = TcpStream::connect_timeout(
                        &SocketAddr::from((vip, port)),
                        Duration::from_secs(2),
                    )
                    .unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(2)))
                        .unwrap();
                    let name = name_line(&mut stream);
                    (port, name, stream)
                })
                .collect::<Vec<_>>()
        })
        .unwrap();
        let of = |node: &str| opened.iter().filter(|(_, n, _)| n == node).count();
        if of("n1") > 0 && of("n2") > 0 && of("n1") + of("n2") == CONNECTIONS {
            break opened;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the routes never reached both nodes: {:?}",
            opened
                .iter()
                .map(|(p, n, _)| (*p, n.clone()))
                .collect::<Vec<_>>()
        );
        thread::sleep(Duration::from_millis(100));
    };
    let on_n2 = connections.iter().filter(|(_, n, _)| n == "n2").count();
    eprintln!(
        "{} connections: {} to n2, {} to n1",
        connections.len(),
        on_n2,
        connections.len() - on_n2
    );

    // Every connection waits, idle, for what comes.
    let (events, outcomes) = mpsc::channel();
    let died = Instant::now() + Duration::from_millis(200);
    for (i, (port, name, stream)) in connections.iter().enumerate() {
        let mut stream = stream.try_clone().unwrap();
        stream
            .set_read_timeout(Some(DEADLINE + Duration::from_secs(1)))
            .unwrap();
        let (events, name, port) = (events.clone(), name.clone(), *port);
        thread::spawn(move || {
            let mut buf = [0u8; 64];
            let result = stream.read(&mut buf);
            let _ = events.send((i, port, name, result.map_err(|e| e.kind()), Instant::now()));
        });
    }
    drop(events);

    // The machine of node 2 dies: its link first, so nothing it sends escapes.
    thread::sleep(died.saturating_duration_since(Instant::now()));
    let down = Command::new("ip")
        .args(["-n", &bed.bed.node_ns(2), "link", "set", "eth0", "down"])
        .status()
        .unwrap();
    assert!(down.success());
    let died = Instant::now();
    drop(agent2.take());
    drop(backend2.take());

    let mut reset = Vec::new();
    let until = died + DEADLINE;
    while let Ok((i, port, name, result, at)) =
        outcomes.recv_timeout(until.saturating_duration_since(Instant::now()))
    {
        let after = at.saturating_duration_since(died);
        eprintln!("connection {i} (port {port}, {name}): {result:?} after {after:?}");
        assert_eq!(name, "n2", "a connection of n1 ended: {result:?}");
        assert_eq!(result, Err(ErrorKind::ConnectionReset), "connection {i}");
        reset.push(after);
        if reset.len() == on_n2 {
            break;
        }
    }
    reset.sort();
    eprintln!(
        "flush: {} of {on_n2} idle connections of n2 reset; after the link went down: \
         first {:?}, median {:?}, last {:?}",
        reset.len(),
        reset.first(),
        reset.get(reset.len() / 2),
        reset.last()
    );
    assert_eq!(
        reset.len(),
        on_n2,
        "not every idle connection of n2 was reset within {DEADLINE:?}; gateway log:\n{}",
        bed.log_text()
    );
    bed.wait_logged(&format!(
        "flushed {on_n2} connections of node n2 (0 not known: recent-flows map)"
    ));

    // n1's connections saw nothing (their reads timed out)...
    for (i, port, name, result, _) in outcomes.iter() {
        assert_eq!(name, "n1", "connection {i} (port {port}): {result:?}");
        assert!(
            matches!(result, Err(ErrorKind::WouldBlock | ErrorKind::TimedOut)),
            "connection {i} of n1 (port {port}): {result:?}"
        );
    }
    // ... and still echo.
    for (port, name, stream) in connections.iter().filter(|(_, n, _)| n == "n1") {
        let mut stream = stream.try_clone().unwrap();
        stream.write_all(b"ping\n").unwrap();
        let mut echo = [0u8; 5];
        stream
            .read_exact(&mut echo)
            .unwrap_or_else(|e| panic!("{name} on port {port}: {e}"));
        assert_eq!(&echo, b"ping\n");
    }
    let stats = bed.json("stats");
    assert_eq!(stats["flush"]["connections"], on_n2 as u64, "{stats}");
    assert_eq!(stats["flush"]["segments"], 2 * on_n2 as u64, "{stats}");
}
