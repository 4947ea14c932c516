//! End-to-end tests of the test bed itself (needs root): real TCP from clients to nodes through
//! the gateway with plain kernel routing, and nothing left behind afterwards.
//!
//! Each test has its own prefix, so they run in parallel with each other and with other test
//! beds on the machine.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use xtask::testbed::{self, Testbed, TestbedOptions};

const PORT: u16 = 7100;

fn require_root() {
    if let Err(e) = xtask::setup::require_root(
        "the test bed tests build network namespaces (CAP_SYS_ADMIN/CAP_NET_ADMIN); \
         run them through `cargo xtask test` as root",
    ) {
        panic!("{e}");
    }
}

fn up(prefix: &str, nodes: usize, clients: usize) -> Testbed {
    Testbed::up(TestbedOptions {
        prefix: prefix.into(),
        nodes,
        clients,
    })
    .unwrap_or_else(|e| panic!("test bed {prefix} did not come up: {e:#}"))
}

fn host_links() -> BTreeSet<String> {
    let out = Command::new("ip").args(["-o", "link"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split(':').nth(1))
        .map(|name| name.trim().split('@').next().unwrap_or("").to_string())
        .collect()
}

#[test]
fn tcp_from_every_client_reaches_every_node_through_the_gateway() {
    require_root();
    let links_before = host_links();
    let bed = up("hd-tb-tcp-", 3, 2);
    let gateway = bed.gateway_ns();
    let forwarded_before = testbed::packet_counters(&gateway, "int0")
        .unwrap()
        .tx_packets;

    // A listener bound to the node's own address: that address exists only in its namespace.
    let mut servers = Vec::new();
    for node in 1..=bed.nodes() {
        let addr = SocketAddr::from((bed.node_addr(node), PORT));
        let listener = testbed::run_in_netns(&bed.node_ns(node), || TcpListener::bind(addr))
            .unwrap()
            .unwrap_or_else(|e| panic!("binding {addr} in node{node}: {e}"));
        let clients = bed.clients();
        servers.push(thread::spawn(move || {
            for _ in 0..clients {
                let (mut stream, peer) = listener.accept().expect("accepting a client");
                let mut line = String::new();
                BufReader::new(&stream).read_line(&mut line).unwrap();
                writeln!(stream, "node{node} got {:?} from {peer}", line.trim()).unwrap();
            }
        }));
    }

    for client in 1..=bed.clients() {
        for node in 1..=bed.nodes() {
            let target = SocketAddr::from((bed.node_addr(node), PORT));
            let mut stream = testbed::run_in_netns(&bed.client_ns(client), || {
                TcpStream::connect_timeout(&target, Duration::from_secs(5))
            })
            .unwrap()
            .unwrap_or_else(|e| panic!("client{client} connecting to {target}: {e}"));
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            writeln!(stream, "hello from client{client}").unwrap();
            stream.shutdown(Shutdown::Write).unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            // The node sees the client's own address: routed, not translated.
            let expected = format!(
                "node{node} got \"hello from client{client}\" from {}:",
                bed.client_addr(client)
            );
            assert!(
                answer.starts_with(&expected),
                "client{client} -> node{node}: expected {expected:?}..., got {answer:?}"
            );
        }
    }
    for server in servers {
        server.join().expect("a node's server panicked");
    }

    // The traffic crossed the gateway: the client-to-node half of each connection (SYN, data,
    // FIN at least) left through int0.
    let forwarded = testbed::packet_counters(&gateway, "int0")
        .unwrap()
        .tx_packets
        - forwarded_before;
    assert!(
        forwarded >= 6 * 3,
        "only {forwarded} packets left the gateway's int0 for 6 connections"
    );

    bed.down().unwrap();
    assert_eq!(
        Testbed::namespaces_with_prefix("hd-tb-tcp-").unwrap(),
        Vec::<String>::new()
    );
    let new_links: Vec<_> = host_links().difference(&links_before).cloned().collect();
    assert!(
        new_links.is_empty(),
        "links appeared in the host: {new_links:?}"
    );
}

#[test]
fn down_removes_namespaces_and_the_processes_inside_them() {
    require_root();
    let prefix = "hd-tb-down-";
    let bed = up(prefix, 2, 1);
    let mut sleeper = bed
        .command(&bed.node_ns(1), "sleep")
        .arg("600")
        .spawn()
        .unwrap();
    let mut listener = bed
        .command(&bed.node_ns(2), "socat")
        .args(["TCP-LISTEN:7101,reuseaddr,fork", "EXEC:echo node2"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // nsenter execs the program, so the pids are those of sleep and socat themselves.
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = Testbed::pids_with_prefix(prefix).unwrap();
        if seen.contains(&(sleeper.id() as i32)) && seen.contains(&(listener.id() as i32)) {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        seen.contains(&(sleeper.id() as i32)) && seen.contains(&(listener.id() as i32)),
        "processes started with Testbed::command are not in the namespaces: {seen:?}"
    );

    bed.down().unwrap();
    let sleeper_status = sleeper.wait().unwrap();
    let listener_status = listener.wait().unwrap();
    assert!(!sleeper_status.success(), "sleep was not stopped");
    assert!(!listener_status.success(), "socat was not stopped");
    assert_eq!(
        Testbed::namespaces_with_prefix(prefix).unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        Testbed::pids_with_prefix(prefix).unwrap(),
        Vec::<i32>::new()
    );
    // Idempotent.
    Testbed::down_prefix(prefix).unwrap();
}

#[test]
fn up_clears_leftovers_and_drop_tears_down() {
    require_root();
    let prefix = "hd-tb-left-";
    // What a crashed, half-built run might leave: a namespace the new bed will not have.
    let status = Command::new("ip")
        .args(["netns", "add", "hd-tb-left-node9"])
        .status()
        .unwrap();
    assert!(status.success(), "could not create a leftover namespace");
    {
        let bed = up(prefix, 1, 1);
        assert_eq!(
            Testbed::namespaces_with_prefix(prefix).unwrap(),
            bed.namespaces(),
            "the leftover node9 should be gone and every namespace of the bed present"
        );
    }
    assert_eq!(
        Testbed::namespaces_with_prefix(prefix).unwrap(),
        Vec::<String>::new()
    );
}

#[test]
fn commands_enter_only_the_network_namespace() {
    require_root();
    let bed = up("hd-tb-cmd-", 1, 1);
    let gateway = bed.gateway_ns();
    let out = bed
        .command(&gateway, "stat")
        .args([
            "-L",
            "-c",
            "%d:%i",
            "/proc/self/ns/net",
            "/proc/self/ns/mnt",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let ids: Vec<&str> = text.lines().collect();
    let id = |path: &str| {
        let meta = fs::metadata(path).unwrap();
        format!("{}:{}", meta.dev(), meta.ino())
    };
    assert_eq!(
        ids[0],
        id(&format!("/run/netns/{gateway}")),
        "not in the gateway's network namespace"
    );
    assert_eq!(
        ids[1],
        id("/proc/self/ns/mnt"),
        "the command got its own mount namespace, so it would not see the host's /sys/fs/bpf"
    );
    drop(bed);
}
