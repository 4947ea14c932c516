//! Forwarding through the gateway: halod (XDP) against nftables DNAT (kernel NAT with
//! conntrack), IPVS NAT mode, HAProxy in TCP mode and plain kernel routing (no NAT, a
//! reference), on the same test bed with the same generators.
//!
//! Layout of a run (2 cores):
//! - CPU 1: the gateway. With threaded NAPI, all receive work of `ext0` and `int0`, XDP
//!   or the kernel's forwarding path, runs in their NAPI kernel threads, pinned here;
//!   HAProxy is pinned here too. Gateway CPU time = those threads' (and HAProxy's) time.
//! - CPU 0: everything else: the generator, the sink, wrk/iperf3, the nodes' servers,
//!   and the NAPI threads of every other veth (bridges, clients, nodes).
//!
//! UDP, 64-byte frames (60 bytes + FCS): the live-frames generator injects frames from
//! client1 (its MAC and address) at the external switch's port facing the gateway (`gw`
//! in `{p}extsw`), i.e. straight into `ext0`, as a generator on the wire would. The sink
//! (`bench_sink`) sits on the node switch's port facing the gateway (`gw` in `{p}switch`)
//! and counts frames that left `int0` addressed to node1. The generator's ceiling is the
//! rate the same sink counts when attached to `ext0` itself (the gateway does no work).
//!
//! TCP: wrk (`Connection: close`, so one connection per request) against a small HTTP
//! server on node1 for connections per second, and iperf3 for throughput, from client1.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::halod::{GatewaySettings, start_agent, start_gateway};
use super::objects::Objects;
use super::process::Process;
use super::traffic::{
    Sink, cpu_ns, generate, mac_of, pin_pid, pin_thread, process_cpu_ns, thread_napi, udp_frame,
};
use crate::command;
use crate::testbed::{
    EXTERNAL_IF, HOST_IF, INTERNAL_IF, Testbed, UPLINK, VIP, netns_command, run_in_netns,
    spawn_in_netns,
};

pub const GATEWAY_CPU: usize = 1;
pub const OTHER_CPU: usize = 0;
const UDP_PORT: u16 = 8000;
const HTTP_PORT: u16 = 8001;
const IPERF_PORT: u16 = 8002;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Halod,
    Nftables,
    Ipvs,
    Haproxy,
    Routing,
}

impl Method {
    pub const ALL: [Method; 5] = [
        Method::Halod,
        Method::Nftables,
        Method::Ipvs,
        Method::Haproxy,
        Method::Routing,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Method::Halod => "halod (XDP)",
            Method::Nftables => "nftables DNAT",
            Method::Ipvs => "IPVS NAT",
            Method::Haproxy => "HAProxy (TCP mode)",
            Method::Routing => "kernel routing, no NAT (reference)",
        }
    }
}

/// A figure, or why there is none.
pub type Figure = Result<f64, String>;

#[derive(Debug, Clone)]
pub struct MethodResult {
    pub method: Method,
    /// Highest forwarded UDP rate (packets/s) and the rate offered meanwhile.
    pub udp_max: Figure,
    pub udp_offered: Figure,
    /// Gateway CPU nanoseconds per forwarded packet at the fixed rate.
    pub udp_cpu_ns: Figure,
    /// Packets forwarded / offered at the fixed rate.
    pub udp_fixed_delivery: Figure,
    pub tcp_cps: Figure,
    pub tcp_gbps: Figure,
}

#[derive(Debug, Clone)]
pub struct Forwarding {
    pub seconds: u64,
    pub fixed_rate: u64,
    pub ceiling: f64,
    pub results: Vec<MethodResult>,
    pub notes: Vec<String>,
}

pub fn run(bed: &Testbed, objects: &Objects, seconds: u64, fixed_rate: u64) -> Result<Forwarding> {
    let duration = Duration::from_secs(seconds);
    let gateway = bed.gateway_ns();
    let node = bed.node_addr(1);
    let client = bed.client_addr(1);
    let mut notes = Vec::new();

    super::halod::clear_pins()?;
    // Next hops resolved once for every method.
    super::cost::neighbour(
        &gateway,
        node,
        mac_of(&bed.node_ns(1), HOST_IF)?,
        INTERNAL_IF,
    )?;
    super::cost::neighbour(
        &gateway,
        client,
        mac_of(&bed.client_ns(1), HOST_IF)?,
        EXTERNAL_IF,
    )?;

    // Threaded NAPI everywhere; the gateway's on CPU 1, the rest on CPU 0.
    let mut gateway_threads = Vec::new();
    for dev in [EXTERNAL_IF, INTERNAL_IF] {
        for pid in thread_napi(&gateway, dev)? {
            pin_pid(pid, GATEWAY_CPU)?;
            // Real-time priority, so other work on this shared machine does not make the
            // gateway's receive rings overflow (the kernel still keeps 5% for others).
            command::run(Command::new("chrt").args(["-f", "-p", "50", &pid.to_string()]))?;
            gateway_threads.push(pid);
        }
    }
    let mut others = vec![
        (bed.external_switch_ns(), UPLINK.to_string()),
        (bed.switch_ns(), UPLINK.to_string()),
        (bed.client_ns(1), HOST_IF.to_string()),
        (bed.external_switch_ns(), "client1".to_string()),
    ];
    for i in 1..=bed.nodes() {
        others.push((bed.node_ns(i), HOST_IF.to_string()));
        others.push((bed.switch_ns(), format!("node{i}")));
    }
    for (ns, dev) in &others {
        for pid in thread_napi(ns, dev)? {
            pin_pid(pid, OTHER_CPU)?;
        }
    }

    let client_mac = mac_of(&bed.client_ns(1), HOST_IF)?;
    let ext_mac = mac_of(&gateway, EXTERNAL_IF)?;
    let to_vip = udp_frame(client_mac, ext_mac, client, VIP, 40000, UDP_PORT, 60);
    let to_node = udp_frame(client_mac, ext_mac, client, node, 40000, UDP_PORT, 60);
    let inject = (bed.external_switch_ns(), UPLINK);

    // The generator's ceiling: the sink on ext0 itself.
    let ceiling = {
        let sink = Sink::attach(&objects.bench_xdp, &gateway, EXTERNAL_IF, VIP)?;
        let before = sink.count()?;
        let sent = generate(
            &objects.bench_xdp,
            &inject.0,
            inject.1,
            &to_vip,
            duration,
            None,
            OTHER_CPU,
        )?;
        thread::sleep(Duration::from_millis(100));
        let received = sink.count()? - before;
        println!(
            "bench: generator ceiling: offered {:.0} pps, received at ext0 {:.0} pps",
            sent.rate(),
            received as f64 / sent.elapsed.as_secs_f64()
        );
        received as f64 / sent.elapsed.as_secs_f64()
    };

    // Servers on node1 for the TCP tests.
    let http = HttpServer::start(&bed.node_ns(1), SocketAddrV4::new(node, HTTP_PORT))?;
    let mut iperf_server = Process::start(
        "iperf3 -s",
        netns_command(&bed.node_ns(1), "taskset").args([
            "-c",
            &OTHER_CPU.to_string(),
            "iperf3",
            "--forceflush",
            "-s",
            "-p",
            &IPERF_PORT.to_string(),
        ]),
    )?;
    iperf_server.wait_for("Server listening", Duration::from_secs(5))?;

    let mut results = Vec::new();
    for method in Method::ALL {
        println!("bench: forwarding through {}", method.name());
        let result = measure_method(
            bed,
            objects,
            method,
            &gateway_threads,
            (&to_vip, &to_node),
            &inject,
            duration,
            fixed_rate,
        );
        match result {
            Ok(r) => results.push(r),
            Err(e) => {
                let why = format!("{e:#}");
                notes.push(format!("{}: {why}", method.name()));
                results.push(MethodResult {
                    method,
                    udp_max: Err(why.clone()),
                    udp_offered: Err(why.clone()),
                    udp_cpu_ns: Err(why.clone()),
                    udp_fixed_delivery: Err(why.clone()),
                    tcp_cps: Err(why.clone()),
                    tcp_gbps: Err(why),
                });
            }
        }
    }
    http.stop();
    drop(iperf_server);
    Ok(Forwarding {
        seconds,
        fixed_rate,
        ceiling,
        results,
        notes,
    })
}

/// What a method needs running while it is measured; undone when dropped.
enum Active {
    // Fields drop in order: the agent leaves before the gateway stops.
    Halod {
        _agent: Process,
        _gateway: super::halod::Gateway,
    },
    Nftables {
        gateway_ns: String,
    },
    Haproxy {
        process: Process,
    },
    Nothing,
}

impl Drop for Active {
    fn drop(&mut self) {
        if let Active::Nftables { gateway_ns } = self {
            let _ = command::run(
                netns_command(gateway_ns, "nft").args(["delete", "table", "ip", "hd_bench"]),
            );
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn measure_method(
    bed: &Testbed,
    objects: &Objects,
    method: Method,
    gateway_threads: &[i32],
    (to_vip, to_node): (&[u8], &[u8]),
    inject: &(String, &str),
    duration: Duration,
    fixed_rate: u64,
) -> Result<MethodResult> {
    let node = bed.node_addr(1);
    let active = activate(bed, objects, method)?;
    let haproxy_pid = match &active {
        Active::Haproxy { process } => Some(process.pid()),
        _ => None,
    };
    let gateway_cpu = || -> Result<u64> {
        let mut ns = cpu_ns(gateway_threads)?;
        if let Some(pid) = haproxy_pid {
            ns += process_cpu_ns(pid)?;
        }
        Ok(ns)
    };
    let not_udp = || Err("not applicable: HAProxy proxies TCP only".to_string());
    let (udp_max, udp_offered, udp_cpu_ns, udp_fixed_delivery) = if method == Method::Haproxy {
        (not_udp(), not_udp(), not_udp(), not_udp())
    } else {
        let frame = if method == Method::Routing {
            to_node
        } else {
            to_vip
        };
        let sink = Sink::attach(&objects.bench_xdp, &bed.switch_ns(), UPLINK, node)?;
        // Warm up: neighbour, conntrack and route caches, then the two measurements.
        let warm_before = sink.count()?;
        generate(
            &objects.bench_xdp,
            &inject.0,
            inject.1,
            frame,
            Duration::from_millis(300),
            Some(10_000),
            OTHER_CPU,
        )?;
        thread::sleep(Duration::from_millis(100));
        if sink.count()? == warm_before {
            bail!(
                "no UDP packet reached node1 through {} during the warm-up",
                method.name()
            );
        }
        let before = sink.count()?;
        let sent = generate(
            &objects.bench_xdp,
            &inject.0,
            inject.1,
            frame,
            duration,
            None,
            OTHER_CPU,
        )?;
        thread::sleep(Duration::from_millis(100));
        let max = (sink.count()? - before) as f64 / sent.elapsed.as_secs_f64();

        let before = sink.count()?;
        let cpu_before = gateway_cpu()?;
        let fixed = generate(
            &objects.bench_xdp,
            &inject.0,
            inject.1,
            frame,
            duration,
            Some(fixed_rate),
            OTHER_CPU,
        )?;
        thread::sleep(Duration::from_millis(100));
        let cpu = gateway_cpu()? - cpu_before;
        let delivered = sink.count()? - before;
        drop(sink);
        if method == Method::Halod {
            println!("bench:   halod verdicts: {}", halod_reasons());
        }
        println!("bench:   XDP programs: {}", attached_programs(bed));
        println!(
            "bench:   UDP max {:.0} pps (offered {:.0}); at {} pps: {:.0} ns gateway CPU per packet, {:.1}% delivered",
            max,
            sent.rate(),
            fixed_rate,
            cpu as f64 / delivered.max(1) as f64,
            100.0 * delivered as f64 / fixed.frames as f64
        );
        (
            Ok(max),
            Ok(sent.rate()),
            if delivered == 0 {
                Err("nothing delivered".into())
            } else {
                Ok(cpu as f64 / delivered as f64)
            },
            Ok(delivered as f64 / fixed.frames as f64),
        )
    };
    let target = if method == Method::Routing { node } else { VIP };
    let tcp_cps = wrk(bed, target, duration).map_err(|e| format!("{e:#}"));
    let tcp_gbps = iperf(bed, target, duration).map_err(|e| format!("{e:#}"));
    println!(
        "bench:   TCP {} connections/s, {} Gbit/s",
        show(&tcp_cps),
        show(&tcp_gbps)
    );
    drop(active);
    // A gateway that had to be killed leaves its pinned XDP links (and so its program)
    // in place, by design: remove them so the next method runs on a clean gateway.
    super::halod::clear_pins()?;
    Ok(MethodResult {
        method,
        udp_max,
        udp_offered,
        udp_cpu_ns,
        udp_fixed_delivery,
        tcp_cps,
        tcp_gbps,
    })
}

/// halod's non-zero verdict counters, read from its pinned `REASON_COUNTERS` map.
fn halod_reasons() -> String {
    use halod_common::maps::{Reason, names};
    let path = format!(
        "/sys/fs/bpf/halod/{}/{}",
        super::halod::INSTANCE,
        names::REASON_COUNTERS
    );
    let map = match aya::maps::MapData::from_pin(&path) {
        Ok(map) => aya::maps::Map::PerCpuArray(map),
        Err(e) => return format!("cannot open {path}: {e}"),
    };
    let Ok(counters) = aya::maps::PerCpuArray::<_, u64>::try_from(&map) else {
        return format!("{path} is not a per-CPU array");
    };
    Reason::ALL
        .iter()
        .filter_map(|reason| {
            let count: u64 = counters.get(&(*reason as u32), 0).ok()?.iter().sum();
            (count > 0).then(|| format!("{}={count}", reason.name()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Which XDP programs are attached where (for the log).
fn attached_programs(bed: &Testbed) -> String {
    let mut out = Vec::new();
    for (ns, dev) in [
        (bed.gateway_ns(), EXTERNAL_IF),
        (bed.gateway_ns(), INTERNAL_IF),
        (bed.switch_ns(), UPLINK),
    ] {
        let text = command::run(Command::new("ip").args(["-n", &ns, "link", "show", dev]))
            .unwrap_or_default();
        let name = text
            .split("name ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or("none");
        out.push(format!("{dev}@{ns}={name}"));
    }
    out.join(" ")
}

fn show(figure: &Figure) -> String {
    match figure {
        Ok(v) => format!("{v:.2}"),
        Err(e) => format!("n/a ({e})"),
    }
}

fn activate(bed: &Testbed, objects: &Objects, method: Method) -> Result<Active> {
    let gateway = bed.gateway_ns();
    let node = bed.node_addr(1);
    match method {
        Method::Halod => {
            // A generous dead window: flat-out traffic starves the agent's heartbeats on
            // this 2-core machine, and this benchmark measures the data plane.
            let settings = GatewaySettings {
                routes: 64,
                base_port: UDP_PORT,
                heartbeat_ms: 1000,
                dead_after: 60,
                spares: 0,
                max_nodes: 16,
                drain_ms: None,
                flush_pps: None,
            };
            let gw = start_gateway(&objects.halod, bed, &settings)?;
            let (agent, _) = start_agent(&objects.halod, bed, 1, "node1", None)?;
            Ok(Active::Halod {
                _agent: agent,
                _gateway: gw,
            })
        }
        Method::Nftables => {
            let rules = format!(
                "table ip hd_bench {{\n  chain prerouting {{\n    type nat hook prerouting \
                 priority dstnat; policy accept;\n    ip daddr {VIP} udp dport {UDP_PORT} dnat \
                 to {node}\n    ip daddr {VIP} tcp dport {{ {HTTP_PORT}, {IPERF_PORT} }} dnat to \
                 {node}\n  }}\n}}\n"
            );
            let path = std::env::temp_dir().join(format!("{}nft.conf", bed.prefix()));
            std::fs::write(&path, rules)?;
            command::run(netns_command(&gateway, "nft").arg("-f").arg(&path))?;
            Ok(Active::Nftables {
                gateway_ns: gateway,
            })
        }
        Method::Ipvs => {
            let probe = command::output_any_status(netns_command(&gateway, "ipvsadm").arg("-Ln"))?;
            if !probe.status.success() {
                bail!(
                    "not available on this machine: `ipvsadm -Ln` says {:?} (the kernel has \
                     no IPVS: CONFIG_IP_VS is not set and it has no loadable modules)",
                    command::tail(&probe, 2).replace('\n', " ")
                );
            }
            bail!("IPVS present but the IPVS run is not implemented")
        }
        Method::Haproxy => {
            let config = format!(
                "global\n  nbthread 1\n  maxconn 8000\ndefaults\n  mode tcp\n  timeout connect \
                 2s\n  timeout client 30s\n  timeout server 30s\nlisten http\n  bind \
                 {VIP}:{HTTP_PORT}\n  server node1 {node}:{HTTP_PORT}\nlisten iperf\n  bind \
                 {VIP}:{IPERF_PORT}\n  server node1 {node}:{IPERF_PORT}\n"
            );
            let path = std::env::temp_dir().join(format!("{}haproxy.cfg", bed.prefix()));
            std::fs::write(&path, config)?;
            let mut cmd = netns_command(&gateway, "taskset");
            cmd.args(["-c", &GATEWAY_CPU.to_string(), "haproxy", "-db", "-f"])
                .arg(&path);
            let mut process = Process::start("haproxy", &mut cmd)?;
            if let Err(e) = wait_listening(&bed.client_ns(1), SocketAddrV4::new(VIP, HTTP_PORT)) {
                bail!("{e:#}; haproxy said: {:?}", process.drain());
            }
            Ok(Active::Haproxy { process })
        }
        Method::Routing => Ok(Active::Nothing),
    }
}

fn wait_listening(ns: &str, addr: SocketAddrV4) -> Result<()> {
    for _ in 0..100 {
        let ok = run_in_netns(ns, || {
            TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).is_ok()
        })?;
        if ok {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {addr} after 5 s")
}

/// Connections per second: wrk with `Connection: close` (one request per connection).
fn wrk(bed: &Testbed, target: Ipv4Addr, duration: Duration) -> Result<f64> {
    let url = format!("http://{target}:{HTTP_PORT}/");
    let out = command::run(netns_command(&bed.client_ns(1), "taskset").args([
        "-c",
        &OTHER_CPU.to_string(),
        "wrk",
        "-t1",
        "-c16",
        &format!("-d{}s", duration.as_secs()),
        "-H",
        "Connection: close",
        &url,
    ]))?;
    let rate = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{out}"))?;
    if let Some(errors) = out.lines().find(|l| l.contains("Socket errors")) {
        println!("bench:   wrk: {}", errors.trim());
    }
    Ok(rate)
}

/// Throughput in Gbit/s: one iperf3 TCP stream client1 -> node1.
fn iperf(bed: &Testbed, target: Ipv4Addr, duration: Duration) -> Result<f64> {
    let out = command::run(netns_command(&bed.client_ns(1), "taskset").args([
        "-c",
        &OTHER_CPU.to_string(),
        "iperf3",
        "-c",
        &target.to_string(),
        "-p",
        &IPERF_PORT.to_string(),
        "-t",
        &duration.as_secs().to_string(),
        "-J",
    ]))?;
    let json: serde_json::Value =
        serde_json::from_str(&out).context("iperf3 -J printed something that is not JSON")?;
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bps| bps / 1e9)
        .with_context(|| {
            format!(
                "no end.sum_received.bits_per_second in iperf3's output: {}",
                json["error"]
            )
        })
}

/// A minimal HTTP/1.1 server: reads a request, answers 200 with a 2-byte body, closes.
struct HttpServer {
    stop: Arc<AtomicBool>,
    addr: SocketAddrV4,
    ns: String,
    workers: Vec<thread::JoinHandle<Result<()>>>,
}

impl HttpServer {
    fn start(ns: &str, addr: SocketAddrV4) -> Result<HttpServer> {
        let listener = run_in_netns(ns, || TcpListener::bind(addr))?
            .with_context(|| format!("binding {addr} in {ns}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for _ in 0..2 {
            let listener = listener.try_clone()?;
            let stop = stop.clone();
            workers.push(spawn_in_netns(ns, move || {
                let _ = pin_thread(OTHER_CPU);
                serve(&listener, &stop);
            })?);
        }
        Ok(HttpServer {
            stop,
            addr,
            ns: ns.to_string(),
            workers,
        })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for _ in 0..self.workers.len() {
            let _ = run_in_netns(&self.ns, || TcpStream::connect(self.addr));
        }
        for worker in self.workers {
            let _ = worker.join();
        }
    }
}

fn serve(listener: &TcpListener, stop: &AtomicBool) {
    const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        let Ok((mut stream, _)) = listener.accept() else {
            continue;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut have = 0;
        while have < buf.len() {
            match stream.read(&mut buf[have..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    have += n;
                    if buf[..have].windows(4).any(|w| w == b"\r\n\r\n") {
                        let _ = stream.write_all(RESPONSE);
                        break;
                    }
                }
            }
        }
    }
}
