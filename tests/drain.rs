//! End to end: planned moves drain. `halod run` with the real XDP data plane,
//! `halod node` agents and echo backends in the node namespaces, and 120
//! long-lived TCP connections from a client through the VIP, spread over
//! every route, each echoing a message every 100 ms. A join, an operator
//! drain, a leave (`bye`) and a failure without spare move routes; no
//! connection may be reset by a move away from a live node, every new
//! connection of a draining route reaches its new node, and after
//! `nodes.drain_ms` the old node's connections that are still open reach the
//! new node, which resets them (what their clients see). Needs root; run by
//! `cargo xtask test`.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use xtask::echo::EchoClients;

mod support;
use support::Process;
use support::gateway::{Gateway, NODES_PORT, config_head};

const ROUTES: u16 = 8;
const BASE: u16 = 8000;
const DRAIN_MS: u64 = 5000;
const PER_ROUTE: usize = 15;
/// Generous: correctness deadlines, never performance checks.
const DEADLINE: Duration = Duration::from_secs(20);

support::gateway::bed!(
    /// A gateway with 8 routes and a 5 s drain, and four nodes with backends.
    Bed
);

impl Bed {
    fn start(prefix: &str) -> Bed {
        let mut gateway = Gateway::prepare(prefix, 4, |bed, instance, dir| {
            format!(
                "{head}\
                 nodes:\n  listen: {gw}:{NODES_PORT}\n  heartbeat_ms: 100\n  dead_after: 3\n  \
                 reconnect_grace_ms: 0\n  drain_ms: {DRAIN_MS}\n\
                 control: {{socket: {dir}/halod.sock}}\n\
                 state_file: {dir}/state.json\n",
                head = config_head(bed, instance, ROUTES, &[BASE]),
                dir = dir.display(),
                gw = bed.gateway_internal_addr(),
            )
        });
        gateway.run();
        Bed(gateway)
    }

    /// Which node serves each route now (`halod routes`), index `route - 1`.
    fn owners(&self) -> Vec<Option<String>> {
        self.json("routes")["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|route| route["node"].as_str().map(str::to_string))
            .collect()
    }

    /// Waits until `halod routes` shows `expected` (node per route).
    fn wait_owners(&self, expected: &[&str]) {
        let start = Instant::now();
        loop {
            let owners = self.owners();
            if owners
                .iter()
                .zip(expected)
                .all(|(owner, want)| owner.as_deref() == Some(*want))
            {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "routes did not become {expected:?}: {owners:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn draining(&self) -> usize {
        self.json("routes")["routes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|route| !route["draining"].is_null())
            .count()
    }
}

const TICK: Duration = Duration::from_millis(100);

/// Route of a VIP port.
fn route(port: u16) -> u16 {
    port - BASE + 1
}

fn port(route: u16) -> u16 {
    BASE + route - 1
}

/// Echoes every 100 ms for `time`.
fn run_for(clients: &mut EchoClients, time: Duration) {
    clients.run_for(time, TICK);
}

/// The connections that ended: (route, node, why).
fn ended_conns(clients: &EchoClients) -> Vec<(u16, String, String)> {
    clients
        .ended()
        .map(|c| {
            (
                route(c.port),
                c.node.clone(),
                c.ended.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// The node names `halod routes` should show, for 8 routes over `active`
/// (T(k) of shared/spec/routing.md).
fn table(slots: &[&'static str]) -> Vec<&'static str> {
    let cluster = halod::routing::Cluster::new(halod::routing::ClusterConfig {
        routes: u32::from(ROUTES),
        spares: 0,
        max_active: None,
    })
    .unwrap();
    let mut cluster = cluster;
    for (i, _) in slots.iter().enumerate() {
        cluster
            .apply(halod::routing::Event::Join(format!("s{i}")))
            .unwrap();
    }
    (1..=ROUTES)
        .map(|route| {
            let slot = cluster.slot_of_route(route).unwrap();
            slots[usize::from(slot) - 1]
        })
        .collect()
}

#[test]
fn planned_moves_reset_no_connection_and_new_ones_reach_the_new_node() {
    let mut bed = Bed::start("hd-dr-");
    let _backends: Vec<Process> = (1..=4)
        .map(|i| bed.backend(i, &format!("n{i}"), (0..ROUTES).map(|r| BASE + r)))
        .collect();
    let (n1, _, _) = bed.registered_agent(1, "n1");
    let mut clients = EchoClients::new(&bed.bed, 1);
    clients.open((1..=ROUTES).map(port), PER_ROUTE).unwrap();
    assert_eq!(clients.conns.len(), 120);
    assert!(clients.conns.iter().all(|c| c.node == "n1"));
    run_for(&mut clients, Duration::from_millis(500));
    assert_eq!(
        ended_conns(&clients),
        Vec::<(u16, String, String)>::new(),
        "before any move"
    );

    // 1. A join: n2 takes half of the routes; n1 keeps their connections.
    let (mut n2, _, _) = bed.registered_agent(2, "n2");
    let after_join = table(&["n1", "n2"]);
    bed.wait_owners(&after_join);
    assert!(bed.draining() > 0, "the moved routes drain");
    run_for(&mut clients, Duration::from_millis(1000));
    assert_eq!(
        ended_conns(&clients),
        Vec::<(u16, String, String)>::new(),
        "the join reset connections"
    );
    let moved: Vec<u16> = (1..=ROUTES)
        .filter(|r| after_join[usize::from(*r) - 1] == "n2")
        .collect();
    let fresh = clients.open(moved.iter().copied().map(port), 2).unwrap();
    for &i in &fresh {
        assert_eq!(
            clients.conns[i].node,
            "n2",
            "a new connection of draining route {} reached {}",
            route(clients.conns[i].port),
            clients.conns[i].node
        );
    }
    run_for(&mut clients, Duration::from_millis(500));
    assert_eq!(
        ended_conns(&clients),
        Vec::<(u16, String, String)>::new(),
        "during the join's drain"
    );
    // The daemon is killed mid-drain and started again: the pinned data plane
    // drains on without it, and the new daemon adopts it with its drains.
    std::thread::sleep(Duration::from_millis(200)); // the state file has the drains
    let gateway = bed.gateway.as_mut().unwrap();
    gateway.signal(Signal::SIGKILL);
    gateway.wait(DEADLINE);
    bed.gateway = None;
    run_for(&mut clients, Duration::from_millis(300));
    bed.run();
    assert!(bed.logged("data plane adopted"));
    assert!(bed.draining() > 0, "the restarted daemon knows the drains");
    run_for(&mut clients, Duration::from_millis(300));
    assert_eq!(
        ended_conns(&clients),
        Vec::<(u16, String, String)>::new(),
        "across the restart mid-drain"
    );
    // The window ends: n1's connections of the moved routes reach n2, which
    // resets them; nothing else ends.
    run_for(&mut clients, Duration::from_millis(DRAIN_MS + 500));
    let handed_over = ended_conns(&clients);
    assert!(
        !handed_over.is_empty(),
        "the old node's connections are handed over"
    );
    for (route, node, why) in &handed_over {
        assert!(
            moved.contains(route) && node == "n1",
            "route {route} on {node} ended: {why}"
        );
        assert!(why.contains("ConnectionReset"), "{why}");
    }
    assert_eq!(handed_over.len(), moved.len() * PER_ROUTE);
    assert_eq!(bed.draining(), 0);
    // The clients reconnect (to n2).
    clients
        .open(moved.iter().copied().map(port), PER_ROUTE)
        .unwrap();

    // 2. The operator drains n2: its routes go back to n1, draining.
    let baseline = ended_conns(&clients).len();
    let output = bed.halod(&["drain", "n2"]);
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("stay on it for 5.0s"), "{text}");
    bed.wait_owners(&table(&["n1"]));
    run_for(&mut clients, Duration::from_millis(1000));
    assert_eq!(
        ended_conns(&clients).len(),
        baseline,
        "halod drain reset connections: {:?}",
        &ended_conns(&clients)[baseline..]
    );
    let fresh = clients.open(moved.iter().copied().map(port), 1).unwrap();
    assert!(fresh.iter().all(|&i| clients.conns[i].node == "n1"));
    // n2's agent hears drained when the window ends, and exits 0 (a
    // planned departure).
    let started = Instant::now();
    assert!(
        n2.wait(Duration::from_millis(DRAIN_MS) + DEADLINE)
            .success()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(DRAIN_MS / 2),
        "the drained agent left before its window ended"
    );
    run_for(&mut clients, Duration::from_millis(500));
    assert_eq!(bed.draining(), 0);

    // 3. A leave: n3 joins, then says bye (SIGTERM to its agent).
    let (mut n3, _, _) = bed.registered_agent(3, "n3");
    bed.wait_owners(&table(&["n1", "n3"]));
    run_for(&mut clients, Duration::from_millis(DRAIN_MS + 500));
    // Connections the join handed over: reopen what ended.
    let reopen: Vec<u16> = clients.ended().map(|c| c.port).collect();
    clients.forget_ended();
    clients.open(reopen, 1).unwrap();
    let on_n3: Vec<u16> = clients
        .conns
        .iter()
        .filter(|c| c.node == "n3")
        .map(|c| c.port)
        .collect();
    assert!(!on_n3.is_empty());
    n3.signal(Signal::SIGTERM);
    bed.wait_owners(&table(&["n1"]));
    run_for(&mut clients, Duration::from_millis(1000));
    assert_eq!(
        ended_conns(&clients),
        Vec::<(u16, String, String)>::new(),
        "bye reset connections"
    );
    let fresh = clients.open(on_n3.iter().copied(), 1).unwrap();
    assert!(fresh.iter().all(|&i| clients.conns[i].node == "n1"));
    assert!(
        n3.wait(Duration::from_millis(DRAIN_MS) + DEADLINE)
            .success(),
        "the agent exits 0 after its drain"
    );
    run_for(&mut clients, Duration::from_millis(500));
    clients.forget_ended();

    // 4. A failure without spare: n1, n2', n4 active; n1's agent is killed
    // (its machine stays up). n4 (the last slot) takes slot 1; its own routes
    // go back where they came from, draining from n4: none of n4's
    // connections is reset, only n1's (their node failed).
    let (_n2b, _, _) = bed.registered_agent(2, "n2b");
    let (_n4, _, _) = bed.registered_agent(4, "n4");
    let three = table(&["n1", "n2b", "n4"]);
    bed.wait_owners(&three);
    run_for(&mut clients, Duration::from_millis(DRAIN_MS + 500));
    clients.forget_ended();
    clients.open((1..=ROUTES).map(port), 2).unwrap();
    let open_before = clients.open_count();
    drop(n1);
    let after_failure = table(&["n4", "n2b"]);
    bed.wait_owners(&after_failure);
    run_for(&mut clients, Duration::from_millis(1000));
    for (route, node, why) in ended_conns(&clients) {
        assert_eq!(
            node, "n1",
            "route {route}: a connection on {node} ended at the failure of n1: {why}"
        );
    }
    let n4_moved = clients
        .conns
        .iter()
        .filter(|c| c.node == "n4" && after_failure[usize::from(route(c.port)) - 1] != "n4")
        .count();
    assert!(n4_moved > 0, "the failure moved some of n4's routes");
    assert!(
        clients.open_count() < open_before,
        "n1's connections are gone"
    );
}
