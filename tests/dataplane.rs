//! End to end through the test bed (needs root): a table written through
//! `halod::dataplane` sends real TCP and UDP from a client to VIP:port to the
//! node the table names, the answers come back from the VIP, a few MiB arrive
//! byte-exact, and rewriting a slot sends new connections to the new node.
//!
//! The data plane attaches inside the gateway namespace: `Dataplane::start` runs
//! on a thread that entered it (setns of the network namespace only, so the pins
//! land in the host's /sys/fs/bpf). Servers run on threads inside the node
//! namespaces; the client's sockets are made inside the client namespace.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, Shutdown, TcpListener, TcpStream, UdpSocket},
    thread,
    time::Duration,
};

use halod::dataplane::{AttachMode, Dataplane, DataplaneConfig, NodeTarget, Write as TableWrite};
use xtask::testbed::{self, Testbed, TestbedOptions};

const ROUTES: u16 = 4;
const GROUPS: [u16; 2] = [8000, 9000];
const TIMEOUT: Duration = Duration::from_secs(10);

/// Every route port on `addr`: answers each TCP connection with
/// "<name> <client address>\n" and then echoes everything back; answers each UDP
/// datagram with "<name> <payload>".
fn serve(bed: &Testbed, node: usize) {
    let ns = bed.node_ns(node);
    let addr = bed.node_addr(node);
    let name = format!("node{node}");
    for base in GROUPS {
        for port in base..base + ROUTES {
            let listener = testbed::run_in_netns(&ns, move || TcpListener::bind((addr, port)))
                .unwrap()
                .unwrap_or_else(|e| panic!("binding {addr}:{port}: {e}"));
            let name_tcp = name.clone();
            thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let name = name_tcp.clone();
                    thread::spawn(move || echo(stream, &name));
                }
            });
            let socket = testbed::run_in_netns(&ns, move || UdpSocket::bind((addr, port)))
                .unwrap()
                .unwrap_or_else(|e| panic!("binding UDP {addr}:{port}: {e}"));
            let name_udp = name.clone();
            thread::spawn(move || {
                let mut buffer = [0u8; 2048];
                while let Ok((len, peer)) = socket.recv_from(&mut buffer) {
                    let mut answer = format!("{name_udp} ").into_bytes();
                    answer.extend_from_slice(&buffer[..len]);
                    let _ = socket.send_to(&answer, peer);
                }
            });
        }
    }
}

fn echo(mut stream: TcpStream, name: &str) {
    let peer = stream.peer_addr().unwrap();
    if stream
        .write_all(format!("{name} {peer}\n").as_bytes())
        .is_err()
    {
        return;
    }
    let mut buffer = vec![0u8; 65536];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}

/// Connects from client 1 to VIP:port and returns the greeting line and the stream.
fn connect(bed: &Testbed, dataplane: &Dataplane, port: u16) -> (String, TcpStream) {
    let vip = bed.vip();
    let stream = testbed::run_in_netns(&bed.client_ns(1), move || {
        TcpStream::connect_timeout(&(vip, port).into(), TIMEOUT)
    })
    .unwrap()
    .unwrap_or_else(|e| {
        panic!(
            "connecting to {vip}:{port}: {e}; data plane counters: {:?}",
            dataplane.stats().map(|s| s.reasons)
        )
    });
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert_eq!(stream.peer_addr().unwrap(), (vip, port).into());
    let mut line = String::new();
    BufReader::new(stream.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("reading the greeting from {vip}:{port}: {e}"));
    (line, stream)
}

fn greeting_node(line: &str) -> &str {
    line.split_whitespace().next().unwrap_or("")
}

#[test]
fn tcp_and_udp_reach_the_node_the_table_names() {
    xtask::setup::require_root(
        "the data plane test builds network namespaces and loads XDP programs",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let bed = Testbed::up(TestbedOptions {
        prefix: "hd-dp-".into(),
        nodes: 2,
        clients: 1,
    })
    .unwrap_or_else(|e| panic!("test bed did not come up: {e:#}"));
    let instance = format!("e2e-{}", std::process::id());
    let config = DataplaneConfig {
        instance: halod::dataplane::InstanceName::new(instance.clone()).unwrap(),
        external: testbed::EXTERNAL_IF.into(),
        internal: testbed::INTERNAL_IF.into(),
        vip: bed.vip(),
        routes: std::num::NonZeroU16::new(ROUTES).unwrap(),
        listeners: GROUPS.to_vec(),
        max_nodes: 4,
        drain_flows: 1024,
        flush_flows: 1024,
    };
    let mut dataplane = testbed::run_in_netns(&bed.gateway_ns(), || Dataplane::start(&config))
        .unwrap()
        .unwrap_or_else(|e| panic!("starting the data plane: {e}"));
    assert_eq!(
        dataplane.modes(),
        vec![
            ("ext0".to_owned(), AttachMode::Native),
            ("int0".to_owned(), AttachMode::Native)
        ]
    );
    let node = |i: usize| {
        Some(NodeTarget {
            addr: bed.node_addr(i),
            index: i as u32 - 1,
        })
    };
    // Routes 1-2 -> slot 1 (node1), 3-4 -> slot 2 (node2).
    dataplane
        .apply(&[
            TableWrite::Slot {
                slot: 1,
                node: node(1),
            },
            TableWrite::Slot {
                slot: 2,
                node: node(2),
            },
            TableWrite::Route {
                route: 1,
                slot: Some(1),
            },
            TableWrite::Route {
                route: 2,
                slot: Some(1),
            },
            TableWrite::Route {
                route: 3,
                slot: Some(2),
            },
            TableWrite::Route {
                route: 4,
                slot: Some(2),
            },
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    serve(&bed, 1);
    serve(&bed, 2);
    let client = bed.client_addr(1);

    // Each route port of each group reaches the node its slot names; the node
    // sees the client's own address.
    for (port, expected) in [
        (8000, "node1"),
        (8001, "node1"),
        (8002, "node2"),
        (8003, "node2"),
        (9000, "node1"),
        (9003, "node2"),
    ] {
        let (line, _stream) = connect(&bed, &dataplane, port);
        assert_eq!(
            greeting_node(&line),
            expected,
            "VIP:{port} answered {line:?}"
        );
        assert!(
            line.contains(&client.to_string()),
            "node saw {line:?}, not the client address {client}"
        );
    }

    // A few MiB through one connection, echoed back byte-exact.
    let (line, stream) = connect(&bed, &dataplane, 8001);
    assert_eq!(greeting_node(&line), "node1");
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut writer = stream.try_clone().unwrap();
    let sent = data.clone();
    let sender = thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut echoed = Vec::with_capacity(data.len());
    let mut reader = stream;
    reader
        .read_to_end(&mut echoed)
        .unwrap_or_else(|e| panic!("reading the echo after {} bytes: {e}", echoed.len()));
    sender.join().unwrap();
    assert_eq!(echoed.len(), data.len(), "echoed length");
    assert!(echoed == data, "echoed bytes differ from the bytes sent");

    // UDP to a route port, answered from the VIP.
    let vip = bed.vip();
    let socket = testbed::run_in_netns(&bed.client_ns(1), || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
    })
    .unwrap()
    .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut answered = None;
    // UDP has no retransmission: retry a few times in case the first datagram
    // went through neighbour resolution.
    for _ in 0..5 {
        socket.send_to(b"hello", (vip, 9002)).unwrap();
        let mut buffer = [0u8; 256];
        if let Ok((len, from)) = socket.recv_from(&mut buffer) {
            answered = Some((String::from_utf8_lossy(&buffer[..len]).into_owned(), from));
            break;
        }
    }
    let (answer, from) = answered.expect("no UDP answer from VIP:9002");
    assert_eq!(answer, "node2 hello");
    assert_eq!(
        from,
        (vip, 9002).into(),
        "the UDP answer must come from the VIP"
    );

    // Node2 takes over slot 1 (as a spare would): one slot write, and new
    // connections to routes 1-2 reach it.
    dataplane
        .apply(&[TableWrite::Slot {
            slot: 1,
            node: node(2),
        }])
        .unwrap_or_else(|e| panic!("{e}"));
    let (line, _stream) = connect(&bed, &dataplane, 8000);
    assert_eq!(
        greeting_node(&line),
        "node2",
        "after the slot write VIP:8000 answered {line:?}"
    );

    let stats = dataplane.stats().unwrap();
    assert!(stats.reason("forwarded_in") > 1000, "{:?}", stats.reasons);
    assert!(stats.reason("forwarded_out") > 1000, "{:?}", stats.reasons);
    assert!(
        stats.routes[1].bytes > 4 << 20,
        "route 2 carried the 4 MiB: {:?}",
        stats.routes
    );
    assert!(
        stats.nodes[0].packets > 0 && stats.nodes[1].packets > 0,
        "{:?}",
        stats.nodes
    );
    eprintln!("data plane counters: {:?}", stats.reasons);

    let pins = dataplane.pin_dir().unwrap().to_path_buf();
    assert!(pins.join("ROUTE_SLOT").exists());
    drop(dataplane);
    assert!(!pins.exists(), "pins left behind at {}", pins.display());
    drop(bed);
}
