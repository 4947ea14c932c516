//! End to end: storms of hellos. 2,000 simulated nodes (their own names and
//! addresses, protocol version 1 as docs/protocol.md describes it) connect
//! from a node namespace through the test bed and all say `hello` at once;
//! every one must be welcomed, with its routes, and the daemon must not log a
//! stall or fail anyone. Then the daemon is killed (SIGKILL) and started
//! again: every node reconnects at once, and within `restart_grace_ms` none
//! fails, none hears `moved` or `assigned`, and the table is the one before.
//! Behaviour only; how fast is in `cargo xtask bench` (section `scale`).
//! Needs root; run by `cargo xtask test`.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

mod support;
use support::gateway::{Gateway, NODES_PORT, config_head};

const NODES: usize = 2_000;
const ROUTES: u16 = 4_096;
/// Ten times the default: a stall is the daemon not running for longer than a heartbeat,
/// and a test on a loaded 2-core machine must not be that sensitive.
const HEARTBEAT_MS: u64 = 1_000;
/// Generous: a correctness deadline, not a performance figure.
const DEADLINE: Duration = Duration::from_secs(60);
/// The daemon's warning when its manager did not run for a heartbeat.
const STALL: &str = "was not running (stalled or paused)";

fn sim_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 16 + (i / 250) as u8, 1 + (i % 250) as u8)
}

/// What the simulated nodes report to the test.
#[derive(Default)]
struct Counts {
    /// Connections open in the current round.
    connected: AtomicUsize,
    /// `welcome`s received in the current round.
    welcomed: AtomicUsize,
    /// Routes the welcomes of the current round gave, in all.
    routes: AtomicUsize,
    /// `moved` and `assigned` received since the last reset.
    route_messages: AtomicU64,
    /// Connections the gateway ended.
    closed: AtomicUsize,
}

/// One simulated node: for each round, connect, wait for the go, `hello`,
/// `welcome`, then a heartbeat every 100 ms until the gateway closes.
async fn node(
    i: usize,
    address: String,
    counts: Arc<Counts>,
    mut go: watch::Receiver<u64>,
) -> Result<()> {
    for round in 1..=2u64 {
        // Round 2 connects once the test says the new gateway runs (a node that
        // raced the dying daemon's listener would only be reset).
        if go.wait_for(|&r| r >= 2 * round - 2).await.is_err() || *go.borrow() == u64::MAX {
            return Ok(());
        }
        let started = Instant::now();
        let mut stream = loop {
            match TcpStream::connect(&address).await {
                Ok(stream) => break stream,
                Err(e) if started.elapsed() < DEADLINE => {
                    if *go.borrow() == u64::MAX {
                        return Ok(());
                    }
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e).with_context(|| format!("s{i} connecting to {address}")),
            }
        };
        counts.connected.fetch_add(1, Ordering::SeqCst);
        if go.wait_for(|&r| r >= 2 * round - 1).await.is_err() || *go.borrow() == u64::MAX {
            return Ok(());
        }
        let hello = format!(
            "{{\"type\":\"hello\",\"version\":1,\"name\":\"s{i}\",\"addr\":\"{}\"}}\n",
            sim_addr(i)
        );
        stream.write_all(hello.as_bytes()).await?;
        let (reader, mut writer) = stream.into_split();
        let mut lines = BufReader::new(reader).lines();
        let welcome = lines
            .next_line()
            .await?
            .with_context(|| format!("s{i}: the gateway closed before welcome"))?;
        let message: Value = serde_json::from_str(&welcome)?;
        if message["type"] != "welcome" {
            bail!("s{i}: expected welcome, got {welcome}");
        }
        let routes = message["routes"].as_array().map_or(0, Vec::len);
        counts.routes.fetch_add(routes, Ordering::SeqCst);
        counts.welcomed.fetch_add(1, Ordering::SeqCst);
        let mut ticks = tokio::time::interval(Duration::from_millis(HEARTBEAT_MS));
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    if writer.write_all(b"{\"type\":\"hb\"}\n").await.is_err() {
                        break;
                    }
                }
                line = lines.next_line() => match line {
                    Ok(Some(line)) => {
                        if line.contains("\"moved\"") || line.contains("\"assigned\"") {
                            counts.route_messages.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    _ => break,
                },
            }
        }
        counts.closed.fetch_add(1, Ordering::SeqCst);
        if *go.borrow() == u64::MAX {
            return Ok(());
        }
        // The gateway was killed: the next round connects again.
    }
    Ok(())
}

/// Waits until `count` reaches `want`, or fails naming `what`.
fn wait_count(count: &AtomicUsize, want: usize, what: &str, gateway: &Gateway) {
    let start = Instant::now();
    while count.load(Ordering::SeqCst) < want {
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: {} of {want} after {DEADLINE:?}; the gateway logged:\n{}",
            count.load(Ordering::SeqCst),
            tail(&gateway.log_text())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The daemon logged no stall and failed no node.
fn no_stall_and_no_failure(gateway: &Gateway) {
    let log = gateway.log_text();
    assert!(!log.contains(STALL), "the daemon stalled:\n{}", tail(&log));
    assert!(
        !log.contains("node failed"),
        "a node failed:\n{}",
        tail(&log)
    );
}

/// The table as `halod routes --json` gives it, without the counters.
fn table(gateway: &Gateway) -> Vec<(u64, String)> {
    let routes = gateway.json("routes");
    let mut table: Vec<(u64, String)> = routes["routes"]
        .as_array()
        .expect("routes: a list")
        .iter()
        .map(|r| {
            (
                r["route"].as_u64().unwrap(),
                r["node"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    table.sort();
    table
}

#[test]
fn a_storm_of_hellos_is_welcomed_and_a_restart_moves_nothing() {
    let mut gateway = Gateway::prepare("hd-st-", 1, |bed, instance, dir| {
        format!(
            "{head}\
             nodes:\n  listen: {gw}:{NODES_PORT}\n  heartbeat_ms: {HEARTBEAT_MS}\n  \
             dead_after: 3\n  reconnect_grace_ms: 0\n  restart_grace_ms: 30000\n  \
             max_nodes: {max}\n\
             control: {{socket: {dir}/halod.sock}}\n\
             state_file: {dir}/state.json\n",
            head = config_head(bed, instance, ROUTES, &[10_000]),
            dir = dir.display(),
            gw = bed.gateway_internal_addr(),
            max = NODES + 10,
        )
    });
    gateway.run();
    let counts = Arc::new(Counts::default());
    let (go, rounds) = watch::channel(0u64);
    let address = gateway.address();
    let generator = {
        let counts = counts.clone();
        let ns = gateway.bed.node_ns(1);
        xtask::testbed::spawn_in_netns(&ns, move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .on_thread_start(|| {
                    // Below the daemon, as a remote machine's load would be.
                    // SAFETY: plain syscall on the calling thread.
                    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
                })
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let tasks: Vec<_> = (0..NODES)
                    .map(|i| tokio::spawn(node(i, address.clone(), counts.clone(), rounds.clone())))
                    .collect();
                let mut failures = Vec::new();
                for task in tasks {
                    match task.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => failures.push(format!("{e:#}")),
                        Err(e) => failures.push(format!("{e}")),
                    }
                }
                match failures.first() {
                    None => Ok(()),
                    Some(first) => bail!(
                        "{} simulated nodes failed; the first: {first}",
                        failures.len()
                    ),
                }
            })
        })
        .expect("the load generator starts")
    };
    // Round 1, a cold start: every node connected, then all hellos at once.
    wait_count(&counts.connected, NODES, "connected", &gateway);
    go.send_replace(1);
    wait_count(&counts.welcomed, NODES, "welcomed", &gateway);
    // Every route was given to exactly one node, in the welcomes or after.
    let status = gateway.json("status");
    assert_eq!(status["counts"]["nodes"], NODES, "{status}");
    assert_eq!(
        status["counts"]["routes_served"],
        u64::from(ROUTES),
        "{status}"
    );
    let before = table(&gateway);
    assert_eq!(before.len(), usize::from(ROUTES));
    assert!(
        before.iter().all(|(_, node)| !node.is_empty()),
        "a route without a node"
    );
    no_stall_and_no_failure(&gateway);

    // Round 2: the daemon dies; every node reconnects at once.
    counts.connected.store(0, Ordering::SeqCst);
    counts.welcomed.store(0, Ordering::SeqCst);
    counts.route_messages.store(0, Ordering::SeqCst);
    gateway
        .gateway
        .as_ref()
        .expect("the gateway runs")
        .signal(Signal::SIGKILL);
    wait_count(
        &counts.closed,
        NODES,
        "connections ended by the kill",
        &gateway,
    );
    if let Some(mut killed) = gateway.gateway.take() {
        killed.wait(Duration::from_secs(10));
    }
    gateway.run();
    go.send_replace(2);
    wait_count(&counts.connected, NODES, "reconnected", &gateway);
    go.send_replace(3);
    wait_count(&counts.welcomed, NODES, "welcomed again", &gateway);
    let status = gateway.json("status");
    assert_eq!(status["counts"]["nodes"], NODES, "{status}");
    assert_eq!(status["counts"]["awaiting"], 0, "{status}");
    assert_eq!(table(&gateway), before, "the restart moved routes");
    assert_eq!(
        counts.route_messages.load(Ordering::SeqCst),
        0,
        "moved/assigned after the restart"
    );
    no_stall_and_no_failure(&gateway);

    go.send_replace(u64::MAX);
    drop(gateway);
    generator
        .join()
        .expect("the load generator thread")
        .expect("the load generator's namespace")
        .expect("every simulated node");
}
