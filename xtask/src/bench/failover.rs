//! Failover: the time from a node's death to the first client packet delivered by the
//! node that takes over, for a crash (SIGKILL) and a silent stop (SIGSTOP), for halod
//! (a spare takes the failed node's slot) and for HAProxy with health checks at the same
//! interval (`check inter heartbeat_ms fall dead_after`, a backup server).
//!
//! halod: `halod run` with `spares: 1`; `halod node` agents on node1 and node2, one
//! active and one spare. A client thread sends a UDP datagram to VIP:8000 (route 1)
//! every ~100 µs; UDP receivers on both nodes note when they receive. A trial arms the
//! spare's receiver, signals the active node's agent, and measures signal -> first
//! datagram at the spare. Then the failed agent is killed and started again (it becomes
//! the spare) and the next trial fails the other node.
//!
//! HAProxy: `listen` on VIP:8100 with node1 and node2 (`backup`), TCP health checks that
//! expect the server's greeting (so a stopped server fails them, as a stopped agent misses
//! heartbeats). Each server is a `socat` process that answers every connection with
//! "ok nodeN". A client thread opens a connection every ~1 ms and reads the greeting; the
//! time is signal -> first greeting from node2 (an upper bound: it includes the answer's
//! way back, well under a millisecond here). node1's server is then restarted and the
//! trial repeats once HAProxy sends clients to node1 again.

use std::io::Read;
use std::net::{SocketAddrV4, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;

use super::halod::{GatewaySettings, start_agent, start_gateway};
use super::objects::Objects;
use super::process::Process;
use crate::testbed::{Testbed, VIP, netns_command, run_in_netns, spawn_in_netns};

const UDP_PORT: u16 = 8000;
const HAPROXY_PORT: u16 = 8100;
pub const HEARTBEAT_MS: u64 = 100;
pub const DEAD_AFTER: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// SIGKILL: the process is gone, the kernel closes its sockets.
    Crash,
    /// SIGSTOP: the process is frozen, its sockets stay open and silent.
    Stop,
}

impl Failure {
    fn signal(self) -> Signal {
        match self {
            Failure::Crash => Signal::SIGKILL,
            Failure::Stop => Signal::SIGSTOP,
        }
    }
}

/// Milliseconds per trial, sorted.
#[derive(Debug, Clone)]
pub struct Trials {
    pub ms: Vec<f64>,
}

impl Trials {
    pub fn percentile(&self, p: f64) -> f64 {
        // Nearest rank.
        let rank = ((p / 100.0) * self.ms.len() as f64).ceil() as usize;
        self.ms[rank.clamp(1, self.ms.len()) - 1]
    }
    pub fn max(&self) -> f64 {
        *self.ms.last().unwrap_or(&f64::NAN)
    }
}

#[derive(Debug, Clone)]
pub struct Failover {
    pub trials: usize,
    pub halod_crash: Result<Trials, String>,
    pub halod_stop: Result<Trials, String>,
    pub haproxy_crash: Result<Trials, String>,
    pub haproxy_stop: Result<Trials, String>,
}

pub fn run(bed: &Testbed, objects: &Objects, trials: usize) -> Result<Failover> {
    let text = |e: anyhow::Error| format!("{e:#}");
    let (halod_crash, halod_stop) = match halod(bed, objects, trials) {
        Ok((c, s)) => (Ok(c), Ok(s)),
        Err(e) => (Err(text(e)), Err("see the crash row".to_string())),
    };
    let haproxy_crash = haproxy(bed, trials, Failure::Crash).map_err(text);
    let haproxy_stop = haproxy(bed, trials, Failure::Stop).map_err(text);
    Ok(Failover {
        trials,
        halod_crash,
        halod_stop,
        haproxy_crash,
        haproxy_stop,
    })
}

/// Monotonic nanoseconds since `base`, as stored in the atomics.
fn since(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

/// A UDP receiver on a node: remembers when it first received after being armed.
struct Receiver {
    armed_at: Arc<AtomicU64>,
    first: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
}

impl Receiver {
    fn start(
        ns: &str,
        addr: SocketAddrV4,
        base: Instant,
        stop: Arc<AtomicBool>,
    ) -> Result<Receiver> {
        let socket = run_in_netns(ns, || UdpSocket::bind(addr))?
            .with_context(|| format!("binding UDP {addr} in {ns}"))?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let armed_at = Arc::new(AtomicU64::new(u64::MAX));
        let first = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let (a, f, r) = (armed_at.clone(), first.clone(), received.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if socket.recv(&mut buf).is_ok() {
                    let now = since(base);
                    r.fetch_add(1, Ordering::Relaxed);
                    if now >= a.load(Ordering::SeqCst) && f.load(Ordering::SeqCst) == 0 {
                        f.store(now, Ordering::SeqCst);
                    }
                }
            }
        });
        Ok(Receiver {
            armed_at,
            first,
            received,
        })
    }

    fn arm(&self, at: u64) {
        self.first.store(0, Ordering::SeqCst);
        self.armed_at.store(at, Ordering::SeqCst);
    }
}

fn halod(bed: &Testbed, objects: &Objects, trials: usize) -> Result<(Trials, Trials)> {
    let settings = GatewaySettings {
        routes: 64,
        base_port: UDP_PORT,
        heartbeat_ms: HEARTBEAT_MS,
        dead_after: DEAD_AFTER,
        spares: 1,
        max_nodes: 16,
        drain_ms: None,
        flush_pps: None,
    };
    let _gateway = start_gateway(&objects.halod, bed, &settings)?;
    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let receivers = [
        Receiver::start(
            &bed.node_ns(1),
            SocketAddrV4::new(bed.node_addr(1), UDP_PORT),
            base,
            stop.clone(),
        )?,
        Receiver::start(
            &bed.node_ns(2),
            SocketAddrV4::new(bed.node_addr(2), UDP_PORT),
            base,
            stop.clone(),
        )?,
    ];
    let sender = {
        let stop = stop.clone();
        let socket = run_in_netns(&bed.client_ns(1), || UdpSocket::bind("0.0.0.0:0"))??;
        socket.connect(SocketAddrV4::new(VIP, UDP_PORT))?;
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = socket.send(b"probe");
                thread::sleep(Duration::from_micros(100));
            }
        })
    };
    let result = (|| -> Result<(Trials, Trials)> {
        let (first, role) = start_agent(&objects.halod, bed, 1, "node1", None)?;
        if role != "active" {
            bail!("node1 registered as {role}, expected active");
        }
        let (second, role) = start_agent(&objects.halod, bed, 2, "node2", None)?;
        if role != "spare" {
            bail!("node2 registered as {role}, expected spare");
        }
        let mut agents = [Some(first), Some(second)];
        let mut active = 0usize;
        let mut out = Vec::new();
        for failure in [Failure::Crash, Failure::Stop] {
            let mut ms = Vec::new();
            for trial in 0..trials {
                let spare = 1 - active;
                // Traffic must reach the active node before it fails.
                let seen = receivers[active].received.load(Ordering::SeqCst);
                let deadline = Instant::now() + Duration::from_secs(2);
                while receivers[active].received.load(Ordering::SeqCst) < seen + 10 {
                    if Instant::now() > deadline {
                        bail!(
                            "trial {trial}: the client's datagrams do not reach node{}",
                            active + 1
                        );
                    }
                    thread::sleep(Duration::from_millis(1));
                }
                let agent = agents[active].take().context("agent missing")?;
                let t0 = since(base);
                receivers[spare].arm(t0);
                agent.signal(failure.signal())?;
                let deadline = Instant::now() + Duration::from_secs(5);
                let first = loop {
                    let first = receivers[spare].first.load(Ordering::SeqCst);
                    if first != 0 {
                        break first;
                    }
                    if Instant::now() > deadline {
                        bail!(
                            "{failure:?} trial {trial}: node{} got no datagram within 5 s of node{}'s failure",
                            spare + 1,
                            active + 1
                        );
                    }
                    thread::sleep(Duration::from_micros(200));
                };
                ms.push((first - t0) as f64 / 1e6);
                // Bring the failed node back: it registers as the new spare.
                agent.kill();
                let name = format!("node{}", active + 1);
                let (agent, role) = start_again(objects, bed, active + 1, &name)?;
                if role != "spare" {
                    bail!("{name} came back as {role}, expected spare");
                }
                agents[active] = Some(agent);
                active = spare;
            }
            ms.sort_by(f64::total_cmp);
            println!(
                "bench:   halod {failure:?}: p50 {:.2} ms, max {:.2} ms",
                ms[ms.len() / 2],
                ms[ms.len() - 1]
            );
            out.push(Trials { ms });
        }
        let stop_trials = out.pop().context("no stop trials")?;
        let crash_trials = out.pop().context("no crash trials")?;
        Ok((crash_trials, stop_trials))
    })();
    stop.store(true, Ordering::SeqCst);
    let _ = sender.join();
    result
}

/// Starts an agent again; the gateway may still hold the old connection for a moment
/// (a frozen node is failed only after the dead window), so `duplicate_name` is retried.
fn start_again(
    objects: &Objects,
    bed: &Testbed,
    i: usize,
    name: &str,
) -> Result<(Process, String)> {
    let mut last = None;
    for _ in 0..5 {
        match start_agent(&objects.halod, bed, i, name, None) {
            Ok(ok) => return Ok(ok),
            Err(e) => last = Some(e),
        }
    }
    Err(last.context("no attempt")?)
}

fn haproxy_config(bed: &Testbed) -> String {
    format!(
        "global\n  nbthread 1\ndefaults\n  mode tcp\n  timeout connect 1s\n  timeout client 5s\n  \
         timeout server 5s\n  timeout check {HEARTBEAT_MS}ms\nlisten failover\n  bind {VIP}:{HAPROXY_PORT}\n  \
         option tcp-check\n  tcp-check connect\n  tcp-check expect string ok\n  \
         server node1 {n1}:{HAPROXY_PORT} check inter {HEARTBEAT_MS}ms fall {DEAD_AFTER} rise 1\n  \
         server node2 {n2}:{HAPROXY_PORT} check inter {HEARTBEAT_MS}ms fall {DEAD_AFTER} rise 1 backup\n",
        n1 = bed.node_addr(1),
        n2 = bed.node_addr(2),
    )
}

/// A node's server: answers every connection with "ok nodeN".
fn node_server(bed: &Testbed, i: usize) -> Result<Process> {
    let mut cmd = netns_command(&bed.node_ns(i), "socat");
    cmd.arg(format!(
        "TCP-LISTEN:{HAPROXY_PORT},bind={},fork,reuseaddr",
        bed.node_addr(i)
    ))
    .arg(format!("SYSTEM:echo ok node{i}"));
    Process::start(&format!("socat on node{i}"), &mut cmd)
}

fn haproxy(bed: &Testbed, trials: usize, failure: Failure) -> Result<Trials> {
    let path = std::env::temp_dir().join(format!("{}failover-haproxy.cfg", bed.prefix()));
    std::fs::write(&path, haproxy_config(bed))?;
    let mut node1 = Some(node_server(bed, 1)?);
    let _node2 = node_server(bed, 2)?;
    let mut cmd = netns_command(&bed.gateway_ns(), "haproxy");
    cmd.args(["-db", "-f"]).arg(&path);
    let _haproxy = Process::start("haproxy", &mut cmd)?;

    // The client: a connection every ~1 ms; notes the last node that answered and the
    // first time node2 answered after being armed.
    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let armed_at = Arc::new(AtomicU64::new(u64::MAX));
    let first_node2 = Arc::new(AtomicU64::new(0));
    let last_node = Arc::new(AtomicU64::new(0));
    let client = {
        let (stop, armed_at, first_node2, last_node) = (
            stop.clone(),
            armed_at.clone(),
            first_node2.clone(),
            last_node.clone(),
        );
        let addr = SocketAddrV4::new(VIP, HAPROXY_PORT);
        spawn_in_netns(&bed.client_ns(1), move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut stream) =
                    TcpStream::connect_timeout(&addr.into(), Duration::from_millis(50))
                {
                    let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
                    let mut buf = [0u8; 32];
                    let mut have = 0;
                    while have < buf.len() {
                        match stream.read(&mut buf[have..]) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => have += n,
                        }
                        if buf[..have].contains(&b'\n') {
                            break;
                        }
                    }
                    let now = since(base);
                    let text = String::from_utf8_lossy(&buf[..have]);
                    if text.starts_with("ok node2") {
                        last_node.store(2, Ordering::SeqCst);
                        if now >= armed_at.load(Ordering::SeqCst)
                            && first_node2.load(Ordering::SeqCst) == 0
                        {
                            first_node2.store(now, Ordering::SeqCst);
                        }
                    } else if text.starts_with("ok node1") {
                        last_node.store(1, Ordering::SeqCst);
                    }
                }
                thread::sleep(Duration::from_millis(1));
            }
        })?
    };
    let result = (|| -> Result<Trials> {
        let mut ms = Vec::new();
        for trial in 0..trials {
            // HAProxy must be sending clients to node1 again (node1 healthy).
            last_node.store(0, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(5);
            while last_node.load(Ordering::SeqCst) != 1 {
                if Instant::now() > deadline {
                    bail!("trial {trial}: HAProxy does not send clients to node1");
                }
                thread::sleep(Duration::from_millis(2));
            }
            let server = node1.take().context("node1's server missing")?;
            let t0 = since(base);
            first_node2.store(0, Ordering::SeqCst);
            armed_at.store(t0, Ordering::SeqCst);
            server.signal(failure.signal())?;
            let deadline = Instant::now() + Duration::from_secs(5);
            let first = loop {
                let first = first_node2.load(Ordering::SeqCst);
                if first != 0 {
                    break first;
                }
                if Instant::now() > deadline {
                    bail!("{failure:?} trial {trial}: no client reached node2 within 5 s");
                }
                thread::sleep(Duration::from_micros(200));
            };
            ms.push((first - t0) as f64 / 1e6);
            armed_at.store(u64::MAX, Ordering::SeqCst);
            server.kill();
            node1 = Some(node_server(bed, 1)?);
        }
        ms.sort_by(f64::total_cmp);
        println!(
            "bench:   HAProxy {failure:?}: p50 {:.2} ms, max {:.2} ms",
            ms[ms.len() / 2],
            ms[ms.len() - 1]
        );
        Ok(Trials { ms })
    })();
    stop.store(true, Ordering::SeqCst);
    let _ = client.join();
    result
}
