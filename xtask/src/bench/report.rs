//! docs/benchmarks.md: the generated sections, then the hand-written "## Routing core"
//! section carried over verbatim from the file as it was.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use super::failover::{self, Trials};
use super::forwarding::{Figure, Method};
use super::{Options, Plan, Results, Section, drain, heartbeats, scale};
use crate::command;

/// The machine the run happened on.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub rustc: String,
    pub load_at_start: String,
    pub date: String,
}

impl Machine {
    pub fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_else(|| "unknown CPU".into());
        let cores = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        let run = |program: &str, args: &[&str]| {
            command::run(Command::new(program).args(args))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into())
        };
        Machine {
            cpu,
            cores,
            kernel: run("uname", &["-sr"]),
            rustc: run("rustc", &["--version"]),
            load_at_start: std::fs::read_to_string("/proc/loadavg")
                .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_default(),
            date: run("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        }
    }
}

pub struct Context<'a> {
    pub command: &'a str,
    pub machine: &'a Machine,
    pub plan: &'a Plan,
    pub elapsed: Duration,
    pub chart: Option<String>,
    /// The file as it was, for the hand-written routing core section.
    pub previous: &'a str,
}

pub fn command_line(options: &Options) -> String {
    let mut line = "cargo xtask bench".to_string();
    if options.quick {
        line.push_str(" --quick");
    }
    if !options.only.is_empty() {
        let names: Vec<String> = options
            .only
            .iter()
            .map(|s| format!("{s:?}").to_lowercase())
            .collect();
        let _ = write!(line, " --only {}", names.join(","));
    }
    if let Some(path) = &options.output {
        let _ = write!(line, " --output {}", path.display());
    }
    line
}

/// A table cell: the figure, or `n/a` (the reason is listed once under the table).
fn fig(figure: &Figure, f: impl Fn(f64) -> String) -> String {
    match figure {
        Ok(v) => f(*v),
        Err(_) => "n/a".to_string(),
    }
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").replace('|', "/");
    match line.char_indices().nth(160) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line,
    }
}

fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// One target: met or not, with the figure.
pub struct Target {
    pub name: String,
    pub met: Option<bool>,
    pub figure: String,
    pub why: String,
}

pub fn targets(results: &Results) -> Vec<Target> {
    let mut out = Vec::new();
    // 1. Packets per gateway core vs nftables.
    if let Some(Ok(f)) = &results.forwarding {
        let cpu = |m: Method| {
            f.results
                .iter()
                .find(|r| r.method == m)
                .and_then(|r| r.udp_cpu_ns.as_ref().ok().copied())
        };
        let (met, figure) = match (cpu(Method::Halod), cpu(Method::Nftables)) {
            (Some(h), Some(n)) => (
                Some(n / h >= 3.0),
                format!(
                    "{:.2}x ({} vs {} packets per gateway core-second; {:.0} vs {:.0} ns of \
                     gateway CPU per packet)",
                    n / h,
                    thousands(1e9 / h),
                    thousands(1e9 / n),
                    h,
                    n
                ),
            ),
            _ => (None, "not measured (see Forwarding)".into()),
        };
        out.push(Target {
            name: "halod forwards >= 3x the packets per gateway core of nftables DNAT".into(),
            met,
            figure,
            why: "Most of halod's remaining per-packet cost on veth is not the program: it is \
                  the veth driver's receive path (ptr_ring, xdp_buff set-up) and the \
                  XDP_REDIRECT transmit into the next veth, which the kernel path pays as well; \
                  on a physical NIC with native XDP the fixed part shrinks and the ratio grows."
                .into(),
        });
    }
    // 2. Program cost vs floor.
    if let Some(Ok(c)) = &results.cost {
        let routed = c.rows.iter().find(|r| r.label.starts_with("halod, routed"));
        let floor = c.rows.iter().find(|r| r.label.starts_with("floor"));
        let (met, figure) = match (routed, floor) {
            (Some(r), Some(f)) => (
                Some(r.ns <= 1.5 * f.ns),
                format!(
                    "{:.2}x ({:.1} ns routed vs {:.1} ns floor)",
                    r.ns / f.ns,
                    r.ns,
                    f.ns
                ),
            ),
            _ => (None, "not measured".into()),
        };
        out.push(Target {
            name: "halod costs at most 1.5x the parse-and-pass floor per packet".into(),
            met,
            figure,
            why: "A routed packet does work the floor does not. With the next-hop cache it no \
                  longer calls bpf_fib_lookup (the 'cache off' row shows that cost), but it \
                  still reads the clock for the cache's age (bpf_ktime_get_coarse_ns, about \
                  18 ns in this VM), rewrites the address with incremental checksums (about \
                  15 ns), parses up to the route (12-16 ns over the floor) and does two table \
                  lookups, the cache lookup, the MAC writes and bpf_redirect (about 10 ns); \
                  1.5x a floor of about 25 ns leaves 12 ns for all of it. What would close \
                  part of it: age the cache by a generation number that user space bumps \
                  every TTL instead of a clock read per packet. The rest is the forwarding \
                  work itself."
                .into(),
        });
    }
    // Planned moves reset no connection.
    if let Some(Ok(d)) = &results.drain {
        out.push(Target {
            name: "a join resets no connection (nodes.drain_ms)".into(),
            met: Some(d.with.reset == 0 && d.with.on_moved_routes > 0),
            figure: format!(
                "{} of {} connections on moved routes reset with the drain, {} of {} without",
                d.with.reset, d.with.on_moved_routes, d.without.reset, d.without.on_moved_routes
            ),
            why: "".into(),
        });
    }
    if let Some(Ok(d)) = &results.drain {
        let f = &d.flush;
        let last = f.reset_after.last().copied();
        out.push(Target {
            name: "a dead machine's idle clients learn within 1 s".into(),
            met: Some(
                f.reset_after.len() == f.idle
                    && f.idle > 0
                    && last.is_some_and(|t| t < std::time::Duration::from_secs(1))
                    && f.others_ended == 0,
            ),
            figure: format!(
                "{} of {} idle clients reset, the last {} after the link went down ({} without the flush)",
                f.reset_after.len(),
                f.idle,
                last.map_or("-".into(), |t| format!("{:.0} ms", t.as_secs_f64() * 1000.0)),
                d.no_flush.reset_after.len()
            ),
            why: "".into(),
        });
    }
    // 3, 4. Failover.
    if let Some(Ok(f)) = &results.failover {
        let crash = f.halod_crash.as_ref().ok().map(|t| t.percentile(99.0));
        out.push(Target {
            name: "crash failover p99 under 10 ms".into(),
            met: crash.map(|p| p < 10.0),
            figure: crash.map_or("not measured".into(), |p| format!("p99 {p:.2} ms")),
            why: "".into(),
        });
        let limit = (failover::DEAD_AFTER as u64 * failover::HEARTBEAT_MS) as f64 + 10.0;
        let stop = f.halod_stop.as_ref().ok().map(|t| t.percentile(99.0));
        out.push(Target {
            name: format!(
                "silent failure within dead_after x heartbeat_ms + 10 ms = {limit:.0} ms"
            ),
            met: stop.map(|p| p <= limit),
            figure: stop.map_or("not measured".into(), |p| format!("p99 {p:.1} ms")),
            why: "The daemon fails a silent node on a sweep that runs at the earliest node \
                  deadline (halod/src/control/manager.rs, `next_deadline`), so the figure is \
                  that deadline plus the time to wake the daemon and tell the nodes. On a \
                  loaded 2-core VM the wake-up can be late by more than 10 ms."
                .into(),
        });
    }
    out.extend(heartbeat_target(results));
    // 5. Scale.
    if let Some(Ok(s)) = &results.scale {
        let top = s
            .points
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .find(|p| p.nodes == 10_000);
        let (met, figure, why) = match top {
            Some(p) => {
                let storm = &p.join;
                let cold = storm.within_target == p.nodes
                    && storm.stalls == 0
                    && storm.status_failures == 0
                    && storm.status_max_ms <= 50.0;
                let warm = p
                    .reconnect
                    .as_ref()
                    .is_ok_and(|r| r.failed == 0 && r.route_messages == 0 && r.stalls == 0);
                let memory = p.settled_bytes_per_node() <= 4096.0;
                (
                    Some(cold && warm && memory),
                    format!(
                        "join storm: {} of {} welcomed within {} s (last {:.2} s), {} stalls, \
                         halod status <= {:.0} ms; reconnect storm: {}; {:.0} B per node \
                         ({:.0} B while the storm's drains were open)",
                        thousands(storm.within_target as f64),
                        thousands(p.nodes as f64),
                        scale::STORM_TARGET.as_secs(),
                        storm.seconds,
                        storm.stalls,
                        storm.status_max_ms,
                        match &p.reconnect {
                            Ok(r) => format!(
                                "last welcome {:.2} s, {} nodes failed, {} route messages",
                                r.seconds, r.failed, r.route_messages
                            ),
                            Err(e) => format!("failed: {}", first_line(e)),
                        },
                        p.settled_bytes_per_node(),
                        p.bytes_per_node(),
                    ),
                    {
                        let mut missed = Vec::new();
                        if storm.within_target < p.nodes {
                            missed.push(format!(
                                "{} of {} nodes were welcomed later than {} s after the \
                                 release (the last {:.2} s after it)",
                                thousands((p.nodes - storm.within_target) as f64),
                                thousands(p.nodes as f64),
                                scale::STORM_TARGET.as_secs(),
                                storm.seconds
                            ));
                        }
                        if storm.stalls > 0 {
                            missed.push(format!("{} stall warnings", storm.stalls));
                        }
                        if storm.status_max_ms > 50.0 || storm.status_failures > 0 {
                            missed.push(format!(
                                "`halod status` took up to {:.0} ms ({} unanswered)",
                                storm.status_max_ms, storm.status_failures
                            ));
                        }
                        if !warm {
                            missed.push("the reconnect storm failed or moved nodes".into());
                        }
                        if !memory {
                            missed.push(format!(
                                "{:.0} B of daemon memory per node once the storm's drains \
                                 ended",
                                p.settled_bytes_per_node()
                            ));
                        }
                        format!(
                            "Missed: {}. The hand-written section \"Control plane at 10,000 \
                             nodes: where a storm's time went\" below has the profile, what \
                             changed and what is left.",
                            missed.join("; ")
                        )
                    },
                )
            }
            None => (None, "not measured".into(), String::new()),
        };
        out.push(Target {
            name: "10,000 nodes: a join storm welcomed within 2 s (no stall, `halod status` \
                   <= 50 ms), a reconnect storm that fails and moves nothing, <= 4 KiB daemon \
                   memory per node"
                .into(),
            met,
            figure,
            why,
        });
    }
    out
}

pub fn summary(results: &Results) -> String {
    let mut out = String::from("bench: targets\n");
    for t in targets(results) {
        let verdict = match t.met {
            Some(true) => "MET   ",
            Some(false) => "MISSED",
            None => "n/a   ",
        };
        let _ = writeln!(out, "  {verdict} {}: {}", t.name, t.figure);
    }
    out
}

pub fn render(ctx: &Context, results: &Results) -> String {
    let mut md = String::new();
    let m = ctx.machine;
    let _ = writeln!(md, "# halod benchmarks\n");
    let _ = writeln!(
        md,
        "Every figure here was produced by the command shown beside it, on the machine \
         described, with its baseline measured in the same run.\n"
    );
    let _ = writeln!(
        md,
        "Everything above \"Routing core\" was written by this command (do not edit by hand; \
         run it again); \"Routing core\" and the sections after it are written by hand:\n\n    {}\n",
        ctx.command
    );
    let _ = writeln!(
        md,
        "- Run: {} ({}), {}, {:.0} s in all.",
        if ctx.plan.quick { "quick" } else { "full" },
        if ctx.plan.quick {
            "`--quick`: shorter windows and fewer repetitions"
        } else {
            "full windows"
        },
        m.date,
        ctx.elapsed.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "- Machine: {} core(s), {}; {}; {}. Load average at the start: {} (the machine was \
         shared with other builds, so absolute figures are noisy; the comparisons were made \
         in the same run, minutes apart).",
        m.cores, m.cpu, m.kernel, m.rustc, m.load_at_start
    );
    let _ = writeln!(
        md,
        "- Test bed: network namespaces `hd-bench-*` built by xtask's test bed (client1 -> \
         bridge -> gateway `ext0` | `int0` -> bridge -> node1..2), veths with tx checksum \
         offload off and GRO on.\n"
    );
    if let Some(chart) = &ctx.chart {
        let _ = writeln!(md, "![UDP forwarding per method]({chart})\n");
    }

    // Targets.
    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(md, "| Target | Result | Figure |\n|---|---|---|");
    let list = targets(results);
    for t in &list {
        let verdict = match t.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "not measured",
        };
        let _ = writeln!(md, "| {} | {verdict} | {} |", t.name, t.figure);
    }
    let _ = writeln!(md);
    for t in list
        .iter()
        .filter(|t| t.met == Some(false) && !t.why.is_empty())
    {
        let _ = writeln!(md, "- *{}* missed: {}", t.name, t.why);
    }
    let _ = writeln!(md);

    forwarding_section(&mut md, ctx, results);
    cost_section(&mut md, ctx, results);
    failover_section(&mut md, ctx, results);
    scale_section(&mut md, ctx, results);
    drain_section(&mut md, ctx, results);
    heartbeats_section(&mut md, ctx, results);
    churn_section(&mut md, ctx, results);

    // The hand-written section, verbatim.
    let routing = routing_core(ctx.previous);
    let _ = write!(md, "{routing}");
    md
}

fn not_run(md: &mut String, section: Section, result: Option<Result<(), &String>>) -> bool {
    match result {
        None => {
            let _ = writeln!(
                md,
                "Not run in this invocation (`--only` left out {}).\n",
                format!("{section:?}").to_lowercase()
            );
            true
        }
        Some(Err(e)) => {
            let _ = writeln!(md, "**Failed**: \n\n```\n{e}\n```\n");
            true
        }
        Some(Ok(())) => false,
    }
}

fn forwarding_section(md: &mut String, ctx: &Context, results: &Results) {
    let _ = writeln!(md, "## Forwarding through the gateway\n");
    let state = results.forwarding.as_ref().map(|r| r.as_ref().map(drop));
    if not_run(md, Section::Forwarding, state) {
        return;
    }
    let Some(Ok(f)) = &results.forwarding else {
        return;
    };
    let _ = writeln!(
        md,
        "Command: `{}` (section `forwarding`, {} s per measurement). Code: \
         `xtask/src/bench/forwarding.rs`.\n",
        ctx.command, f.seconds
    );
    let _ = writeln!(
        md,
        "How: one test bed, one method at a time. CPU 1 is the gateway: threaded NAPI \
         (`/sys/class/net/DEV/threaded`) puts all receive processing of `ext0` and `int0` \
         (XDP, or the kernel's forwarding, conntrack and NAT) into their NAPI kernel threads, \
         pinned to CPU 1 at real-time priority (`chrt -f 50`, so other builds on this shared \
         machine do not overflow the receive rings), with HAProxy. Everything else (generator, sink, wrk, iperf3, the \
         node's servers, the other veths' NAPI threads) is pinned to CPU 0. **Gateway CPU \
         time** = on-CPU time of those threads (`/proc/PID/schedstat`) plus HAProxy's \
         (`/proc/PID/stat`), divided by the packets the sink counted.\n"
    );
    let _ = writeln!(
        md,
        "UDP: 64-byte frames (60 bytes + FCS, 18 bytes of payload), one flow client1:40000 -> \
         VIP:8000, made by a live-frames generator (`bench_tx` returning XDP_TX, run by \
         `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`) that injects frames into \
         `ext0` from the external switch's port (as a generator on the wire would). The sink \
         (`bench_sink`, XDP, counts and drops) sits on the node switch's port facing `int0` \
         and counts frames addressed to node1. **Generator ceiling** (the sink on `ext0` \
         itself, no gateway work): **{} packets/s**. Fixed offered rate for the CPU figure: \
         {} packets/s.\n",
        thousands(f.ceiling),
        thousands(f.fixed_rate as f64)
    );
    let _ = writeln!(
        md,
        "| Method | UDP: highest forwarded rate (pps) | offered meanwhile (pps) | UDP: gateway \
         CPU per packet at {} pps | = packets per gateway core-second | delivered at that \
         rate | TCP: connections/s (wrk) | TCP: throughput (iperf3, 1 stream) |",
        thousands(f.fixed_rate as f64)
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for r in &f.results {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.method.name(),
            fig(&r.udp_max, thousands),
            fig(&r.udp_offered, thousands),
            fig(&r.udp_cpu_ns, |v| format!("{v:.0} ns")),
            fig(&r.udp_cpu_ns, |v| thousands(1e9 / v)),
            fig(&r.udp_fixed_delivery, |v| format!("{:.1}%", 100.0 * v)),
            fig(&r.tcp_cps, thousands),
            fig(&r.tcp_gbps, |v| format!("{v:.2} Gbit/s")),
        );
    }
    let _ = writeln!(
        md,
        "\nReading the table: the highest forwarded rate is bounded by this machine (the \
         generator, the sink and the bridges share CPU 0), so the fair comparison is the \
         gateway CPU per packet: its inverse is what one gateway core forwards. TCP: wrk \
         (`-t1 -c16`, `Connection: close`, so every request is a new connection through the \
         gateway) against a minimal HTTP server on node1, and one iperf3 stream client1 -> \
         node1; both pinned to CPU 0. HAProxy: one thread, `mode tcp`, pinned to CPU 1; UDP \
         does not apply to it. nftables: `dnat to node1` in a `prerouting` nat chain; replies \
         are un-NATed by conntrack (nodes route back through the gateway). The kernel routing \
         row sends to node1's address directly (no NAT): the cost of the plain forwarding \
         path, for reference.\n"
    );
    for note in &f.notes {
        let _ = writeln!(md, "- {}", first_line(note));
    }
    // Why each `n/a` cell is empty, once per method and reason.
    for r in &f.results {
        let mut reasons: Vec<String> = [
            &r.udp_max,
            &r.udp_offered,
            &r.udp_cpu_ns,
            &r.udp_fixed_delivery,
            &r.tcp_cps,
            &r.tcp_gbps,
        ]
        .into_iter()
        .filter_map(|figure| figure.as_ref().err().cloned())
        .collect();
        reasons.dedup();
        for reason in reasons {
            // A method that failed as a whole has its reason in the notes already.
            if !f.notes.iter().any(|note| note.contains(&reason)) {
                let _ = writeln!(md, "- {} n/a: {}", r.method.name(), first_line(&reason));
            }
        }
    }
    let _ = writeln!(md);
}

fn drain_section(md: &mut String, ctx: &Context, results: &Results) {
    let _ = writeln!(md, "## Planned moves: connections a join resets\n");
    let state = results.drain.as_ref().map(|r| r.as_ref().map(drop));
    if not_run(md, Section::Drain, state) {
        return;
    }
    let Some(Ok(d)) = &results.drain else { return };
    let _ = writeln!(
        md,
        "Command: `{}` (section `drain`). Code: `xtask/src/bench/drain.rs`. `halod run` with \
         16 routes, echo backends on node1 and node2, `halod node` on node1; client1 holds {} \
         connections per route through the VIP, each echoing every 100 ms; node2 joins and \
         takes half of the routes; the connections are watched for 1 s. Without the drain \
         (`nodes.drain_ms: 0`, halod before it) the moved routes' packets reach node2 at once, \
         which resets their connections; with it they stay on node1 for the window.\n",
        ctx.command,
        drain::PER_ROUTE
    );
    let _ = writeln!(
        md,
        "| nodes.drain_ms | connections | on moved routes | reset by the join |\n|---|---|---|---|"
    );
    for join in [&d.without, &d.with] {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            join.drain_ms, join.connections, join.on_moved_routes, join.reset
        );
    }
    let _ = writeln!(
        md,
        "\n### A machine dies under idle clients\n\nSame set-up with node1 and node2 serving \
         (`drain_ms: 0`), {} connections per route, all idle (nothing sent). node2's link \
         goes down (no FIN or RST of its own escapes), then its agent and backend are killed; \
         the clients are watched for {} s without sending. With the dead-node flush the \
         gateway, once it has failed node2 (`dead_after` × `heartbeat_ms` = 300 ms of \
         silence), sends each of node2's clients an out-of-window ACK from the VIP; the \
         client's answer reaches node1, whose reset ends the connection. Without it an idle \
         client waits for its next send or its TCP keepalive (Chromium: 45 s).\n",
        drain::PER_ROUTE,
        drain::WATCH.as_secs()
    );
    let _ = writeln!(
        md,
        "| nodes.flush_pps | idle on the dead node | reset within {} s | first | median | last | others ended |\n|---|---|---|---|---|---|---|",
        drain::WATCH.as_secs()
    );
    for death in [&d.flush, &d.no_flush] {
        let at = |i: usize| {
            death.reset_after.get(i).map_or("-".into(), |t| {
                format!("{:.0} ms", t.as_secs_f64() * 1000.0)
            })
        };
        let n = death.reset_after.len();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            death.flush_pps,
            death.idle,
            n,
            at(0),
            at(n / 2),
            at(n.saturating_sub(1)),
            death.others_ended
        );
    }
    let _ = writeln!(md);
}

fn cost_section(md: &mut String, ctx: &Context, results: &Results) {
    let _ = writeln!(md, "## Program cost (BPF_PROG_TEST_RUN)\n");
    let state = results.cost.as_ref().map(|r| r.as_ref().map(drop));
    if not_run(md, Section::Cost, state) {
        return;
    }
    let Some(Ok(c)) = &results.cost else { return };
    let _ = writeln!(
        md,
        "Command: `{}` (section `cost`). Code: `xtask/src/bench/cost.rs`. halod's real XDP \
         object (built by `halod/build.rs`, release) loaded with aya, maps filled the way \
         `Dataplane::apply` does (65,535 routes from port 1, every route in slot 1, node1 in \
         slot 1); `bench_floor` parses Ethernet, IPv4 and the UDP/TCP ports with bounds \
         checks and passes. 60-byte UDP frames with TTL 255, {} repetitions per figure in \
         calls of 250 (the kernel's per-call average, in whole ns, averaged; median of 5 \
         such figures), on a thread inside the gateway namespace pinned to CPU 1 (so \
         `bpf_fib_lookup` sees the real routes and a permanent neighbour entry for node1). \
         `BPF_PROG_TEST_RUN` does not restore the frame between repetitions, so for the \
         routed packet the program's VIP is node1's address: the rewrite is the identity and \
         every repetition is routed again with every step (two lookups, the next-hop \
         cache, or `bpf_fib_lookup` in the cache-off rows, checksum arithmetic, MAC and TTL rewrite, counters, `XDP_REDIRECT`); the TTL \
         decrement is why calls stop at 250.\n",
        ctx.command,
        thousands(f64::from(c.repeat))
    );
    let floor = c
        .rows
        .iter()
        .find(|r| r.label.starts_with("floor"))
        .map(|r| r.ns);
    let _ = writeln!(
        md,
        "| Program and packet | Verdict | ns per packet | x floor | 5 runs (ns) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for r in &c.rows {
        let runs: Vec<String> = r.runs.iter().map(|v| format!("{v:.0}")).collect();
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {} | {} |",
            r.label,
            r.verdict,
            r.ns,
            floor.map_or("".into(), |f| format!("{:.2}", r.ns / f)),
            runs.join(", ")
        );
    }
    let _ = writeln!(
        md,
        "\nThe kernel reports whole nanoseconds per repetition, so small differences are \
         within its rounding.\n\nTable pushes, measured in the same run with the same map \
         writes `Dataplane::apply` makes (one `BPF_MAP_UPDATE_ELEM`/`DELETE_ELEM` syscall \
         each):\n\n| Push | Time |\n|---|---|\n| spare takeover (insert the spare in \
         `NODE_BY_ADDR`, write its `SLOT_NODE` entry, remove the failed node's address), \
         median of 1,000 | {:.1} µs |\n| full table: {} slots + 65,535 `ROUTE_SLOT` entries, \
         median of 3 | {:.1} ms |\n",
        c.takeover.as_secs_f64() * 1e6,
        c.full_table_nodes,
        c.full_table.as_secs_f64() * 1e3
    );
}

fn trials_row(md: &mut String, name: &str, failure: &str, trials: &Result<Trials, String>) {
    match trials {
        Ok(t) => {
            let _ = writeln!(
                md,
                "| {name} | {failure} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
                t.ms.len(),
                t.ms.first().copied().unwrap_or(f64::NAN),
                t.percentile(50.0),
                t.percentile(99.0),
                t.max()
            );
        }
        Err(e) => {
            let _ = writeln!(
                md,
                "| {name} | {failure} | n/a: {} | | | | |",
                first_line(e)
            );
        }
    }
}

fn failover_section(md: &mut String, ctx: &Context, results: &Results) {
    let _ = writeln!(md, "## Failover\n");
    let state = results.failover.as_ref().map(|r| r.as_ref().map(drop));
    if not_run(md, Section::Failover, state) {
        return;
    }
    let Some(Ok(f)) = &results.failover else {
        return;
    };
    let _ = writeln!(
        md,
        "Command: `{}` (section `failover`). Code: `xtask/src/bench/failover.rs`. \
         `heartbeat_ms: {}`, `dead_after: {}`, `reconnect_grace_ms: 0`, `spares: 1`; \
         HAProxy 2.6 with `check inter {}ms fall {} rise 1`, `timeout check {}ms`, a \
         `tcp-check expect string ok` health check and node2 as `backup`.\n",
        ctx.command,
        failover::HEARTBEAT_MS,
        failover::DEAD_AFTER,
        failover::HEARTBEAT_MS,
        failover::DEAD_AFTER,
        failover::HEARTBEAT_MS
    );
    let _ = writeln!(
        md,
        "Time from the signal to the node to the first client packet delivered by the node \
         that took over, in ms. halod: the signal goes to the active node's `halod node` \
         agent; a client sends a UDP datagram to VIP:8000 every ~100 µs and receivers on both \
         nodes note arrival times (same clock). HAProxy: the signal goes to node1's server \
         (socat); a client opens a connection through HAProxy every ~1 ms and notes the first \
         greeting from node2. p99 is the nearest rank (with 20 trials, the largest).\n"
    );
    let _ = writeln!(
        md,
        "| Balancer | Failure | Trials | min | p50 | p99 | max |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    trials_row(md, "halod", "crash (SIGKILL)", &f.halod_crash);
    trials_row(md, "halod", "silent stop (SIGSTOP)", &f.halod_stop);
    trials_row(md, "HAProxy", "crash (SIGKILL)", &f.haproxy_crash);
    trials_row(md, "HAProxy", "silent stop (SIGSTOP)", &f.haproxy_stop);
    let _ = writeln!(
        md,
        "\nA crashed agent's connection is closed by its kernel, and halod fails the node at \
         once (`reconnect_grace_ms: 0`); a frozen one keeps its connection open and is failed \
         when it has been silent for `dead_after x heartbeat_ms`, found by a sweep at \
         the earliest node deadline. HAProxy needs `fall` failed checks in both cases. The time to \
         push a takeover into the maps is in \"Program cost\" above.\n"
    );
}

fn scale_section(md: &mut String, ctx: &Context, results: &Results) {
    let _ = writeln!(md, "## Control plane scale\n");
    let state = results.scale.as_ref().map(|r| r.as_ref().map(drop));
    if not_run(md, Section::Scale, state) {
        return;
    }
    let Some(Ok(s)) = &results.scale else { return };
    let _ = writeln!(
        md,
        "Command: `{}` (section `scale`). Code: `xtask/src/bench/scale.rs`. One `halod run` \
         (`routes: 65535`, `heartbeat_ms: {}`, `dead_after: {}`, `spares: 0`, \
         `restart_grace_ms: {}`) on both CPUs; simulated nodes (one TCP connection each, \
         node protocol version 1: `hello`, then `hb` every 100 ms) from a tokio load generator \
         in node 1's namespace on both CPUs at nice 10, so the daemon always runs first.\n\n\
         **Join storm**: every node connects and says `hello` at once; timed from the release \
         to each `welcome`. `halod status` (the command, process start included) runs every \
         100 ms meanwhile; stalls are the daemon's own warning that its manager did not run \
         for longer than a heartbeat. **Reconnect storm**: the daemon is killed (SIGKILL) and \
         started again; once it listens, every node reconnects at once; nodes failed are the \
         daemon's `node failed` warnings, route messages the `moved`/`assigned` the nodes got \
         (the nodes silenced for the detection figure are not among them).\n",
        ctx.command,
        scale::HEARTBEAT_MS,
        scale::DEAD_AFTER,
        scale::RESTART_GRACE_MS,
    );
    let _ = writeln!(
        md,
        "| Nodes | join storm: last welcome (s) | within {} s | slowest `halod status` (ms) | \
         stalls | reconnect storm: last welcome (s) | within {} s | nodes failed | route \
         messages | slowest `halod status` (ms) | stalls |",
        scale::STORM_TARGET.as_secs(),
        scale::STORM_TARGET.as_secs(),
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    for p in &s.points {
        match p {
            Ok(p) => {
                let j = &p.join;
                let reconnect = match &p.reconnect {
                    Ok(r) => format!(
                        "{:.2} | {} | {} | {} | {:.0} | {}",
                        r.seconds,
                        thousands(r.within_target as f64),
                        r.failed,
                        r.route_messages,
                        r.status_max_ms,
                        r.stalls
                    ),
                    Err(e) => format!("n/a: {} | | | | |", first_line(e)),
                };
                let _ = writeln!(
                    md,
                    "| {} | {:.2} | {} | {:.0} ({} calls{}) | {} | {} |",
                    thousands(p.nodes as f64),
                    j.seconds,
                    thousands(j.within_target as f64),
                    j.status_max_ms,
                    j.status_calls,
                    if j.status_failures > 0 {
                        format!(", {} unanswered", j.status_failures)
                    } else {
                        String::new()
                    },
                    j.stalls,
                    reconnect
                );
            }
            Err(e) => {
                let _ = writeln!(md, "| n/a: {} | | | | | | | | | | |", first_line(e));
            }
        }
    }
    let _ = writeln!(
        md,
        "\nSteady state after the join storm. Memory: VmRSS minus VmRSS of the idle daemon \
         (the BPF maps are kernel memory, not in RSS), per node, read twice: a few seconds \
         after the storm, while the drains of the routes it moved are open (`drain_ms` 30 s), \
         and once they ended. CPU: utime + stime over {} \
         s of steady heartbeats; the generator cannot offer the full rate beside the daemon on \
         2 cores, so the rate it reached is in the table. Detection: a node stops its \
         heartbeats (keeping its connection) and we time its last heartbeat -> the gateway \
         closing its connection (after it told the nodes that take its routes); 3 victims per \
         load, nominal `dead_after x heartbeat_ms` = {} ms.\n",
        s.window_seconds,
        scale::HEARTBEAT_MS * u64::from(scale::DEAD_AFTER)
    );
    let _ = writeln!(
        md,
        "| Nodes | RSS idle | RSS loaded | RSS per node, drains open | RSS per node, drains \
         ended | daemon CPU (% of one core) | heartbeats/s offered | failure detection (ms) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for p in s.points.iter().flatten() {
        let det: Vec<String> = p.detection_ms.iter().map(|v| format!("{v:.0}")).collect();
        let _ = writeln!(
            md,
            "| {} | {:.1} MiB | {:.1} MiB | {} B | {} B | {:.1}% | {} | {} |",
            thousands(p.nodes as f64),
            p.rss_idle as f64 / 1048576.0,
            p.rss_loaded as f64 / 1048576.0,
            thousands(p.bytes_per_node()),
            thousands(p.settled_bytes_per_node()),
            p.cpu_percent,
            thousands(p.heartbeats_per_second),
            det.join(", ")
        );
    }
    let _ = writeln!(md);
}

fn churn_section(md: &mut String, ctx: &Context, results: &Results) {
    let _ = writeln!(md, "## Route churn\n");
    let state = results.churn.as_ref().map(|r| r.as_ref().map(drop));
    if not_run(md, Section::Churn, state) {
        return;
    }
    let Some(Ok(rows)) = &results.churn else {
        return;
    };
    let _ = writeln!(
        md,
        "Command: `{}` (section `churn`). Code: `xtask/src/bench/churn.rs`. Routes moved by \
         one event with `routes: 65535`: halod from its routing core (`halod simulate --json`), \
         the theoretical minimum (a join must give the new node floor(N/(k+1)) routes to keep \
         the table balanced; a failure must move the failed node's routes), and Maglev \
         (Eisenbud et al., NSDI 2016: lookup table M = 65,537, per-backend offset/skip \
         permutations from two hashes of the node name, round-robin population) computed \
         in xtask for the same nodes; route r uses Maglev entry r-1. \"Fail, middle\" fails \
         node k/2 with no spare (halod moves the last node into its slot).\n",
        ctx.command
    );
    let _ = writeln!(
        md,
        "| Nodes k | Join (k -> k+1): halod / minimum / Maglev | Fail last: halod / minimum / \
         Maglev | Fail middle: halod / minimum / Maglev | Fail with a spare: halod |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for c in rows {
        let _ = writeln!(
            md,
            "| {} | {} / {} / {} | {} / {} / {} | {} / {} / {} | {} |",
            thousands(c.nodes as f64),
            thousands(c.join.halod as f64),
            thousands(c.join.minimum as f64),
            thousands(c.join.maglev as f64),
            thousands(c.fail_last.halod as f64),
            thousands(c.fail_last.minimum as f64),
            thousands(c.fail_last.maglev as f64),
            thousands(c.fail_middle.halod as f64),
            thousands(c.fail_middle.minimum as f64),
            thousands(c.fail_middle.maglev as f64),
            thousands(c.halod_fail_with_spare as f64),
        );
    }
    let _ = writeln!(
        md,
        "\nhalod's joins and failures of the last slot, and any failure with a spare, move \
         exactly the minimum; a failure in the middle without a spare also moves the last \
         slot's routes (the last node takes the failed slot), up to twice the minimum. \
         Maglev moves somewhat more than the minimum on every change, because repopulating \
         the table shifts some entries between surviving backends.\n"
    );
}

/// The "## Routing core" section of the previous file, up to the next "## " heading.
fn routing_core(previous: &str) -> String {
    let Some(start) = previous.find("## Routing core") else {
        return "## Routing core\n\nSee `cargo bench -p halod --bench routing`; this section is \
                written by hand and was missing from the previous file.\n"
            .into();
    };
    // It and every section after it are written by hand.
    previous[start..].to_string()
}

/// Issue 15's heartbeat target: under 20% of one core at 100,000 heartbeats a second,
/// the daemon's CPU and the XDP program's run time together.
fn heartbeat_target(results: &Results) -> Option<Target> {
    let Some(Ok(h)) = &results.heartbeats else {
        return None;
    };
    let rows: Vec<&heartbeats::Row> = h.rows.iter().filter_map(|r| r.as_ref().ok()).collect();
    let best = rows
        .iter()
        .filter(|r| r.load.version == 2 && (90_000.0..=120_000.0).contains(&r.offered_per_second))
        .max_by(|a, b| a.total_percent().total_cmp(&b.total_percent()));
    Some(match best {
        Some(r) => Target {
            name: "heartbeats: < 20% of one core at 100,000 heartbeats/s (protocol version 2, \
                   daemon + XDP)"
                .into(),
            met: Some(r.total_percent() < 20.0),
            figure: format!(
                "{:.1}% ({:.1}% daemon + {:.1}% XDP) at {} heartbeats/s from {} nodes",
                r.total_percent(),
                r.daemon_percent,
                r.xdp_percent,
                thousands(r.offered_per_second),
                thousands(r.load.nodes as f64)
            ),
            why: "the heaviest version-2 row is over the target: see \"Heartbeats\"".into(),
        },
        None => Target {
            name: "heartbeats: < 20% of one core at 100,000 heartbeats/s (protocol version 2, \
                   daemon + XDP)"
                .into(),
            met: None,
            figure: "no version-2 row offered 90,000 to 120,000 heartbeats/s".into(),
            why: String::new(),
        },
    })
}

fn heartbeats_section(md: &mut String, ctx: &Context, results: &Results) {
    let _ = writeln!(md, "## Heartbeats\n");
    let state = results.heartbeats.as_ref().map(|r| r.as_ref().map(drop));
    if not_run(md, Section::Heartbeats, state) {
        return;
    }
    let Some(Ok(h)) = &results.heartbeats else {
        return;
    };
    let _ = writeln!(
        md,
        "Command: `{}` (section `heartbeats`). Code: `xtask/src/bench/heartbeats.rs`, whose \
         doc comment has the method. Protocol version 1 (TCP `hb` lines) and version 2 (UDP \
         datagrams the XDP program stamps and drops) against one `halod run` each, pinned to \
         CPU 1, `dead_after: {}` (version 1: {}, its daemon is saturated); CPU over {} s of steady heartbeats: the daemon's utime + \
         stime and the XDP program's run time (BPF run-time statistics), each as a share of \
         one core. The kernel's cost of carrying the datagrams to the program (the \
         generator's raw socket, veths, bridge) is on the generator's CPU and not counted, \
         nor the TCP receive of version-1 heartbeats over loopback. \"Offered\" is what the \
         generator, sharing the 2 cores, sent of the nominal rate (nodes x 1000 / \
         heartbeat). Detection: a node's heartbeats stop (its connection stays open), timed \
         from its last heartbeat to the gateway closing its connection, 3 times. At most \
         {} nodes: every node holds a TCP connection to the daemon, and a process here may \
         not open more than 20,000 files (hard limit, no CAP_SYS_RESOURCE), so 100,000 \
         nodes x 1/s or 50,000 x 10/s cannot be registered on this VM.\n",
        ctx.command,
        heartbeats::DEAD_AFTER,
        heartbeats::DEAD_AFTER_V1,
        h.window_seconds,
        thousands(heartbeats::MOST_NODES as f64),
    );
    let _ = writeln!(
        md,
        "| Protocol | nodes | heartbeat | heartbeats/s offered | daemon CPU | XDP program \
         (runs/s) | daemon + XDP (% of one core) | join time (s) | failure detection (ms; \
         window) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for row in &h.rows {
        match row {
            Ok(r) => {
                let det: Vec<String> = r.detection_ms.iter().map(|v| format!("{v:.0}")).collect();
                let _ = writeln!(
                    md,
                    "| v{} ({}) | {} | {} ms | {} of {} | {:.1}% | {:.2}% ({}) | **{:.1}%** | \
                     {:.1} | {}; {} |",
                    r.load.version,
                    if r.load.version == 1 { "TCP" } else { "UDP" },
                    thousands(r.load.nodes as f64),
                    r.load.heartbeat_ms,
                    thousands(r.offered_per_second),
                    thousands(r.load.nodes as f64 * 1000.0 / r.load.heartbeat_ms as f64),
                    r.daemon_percent,
                    r.xdp_percent,
                    thousands(r.xdp_runs_per_second),
                    r.total_percent(),
                    r.join_seconds,
                    det.join(", "),
                    r.load.heartbeat_ms * u64::from(r.load.dead_after()),
                );
            }
            Err(e) => {
                let _ = writeln!(md, "| n/a: {} | | | | | | | | |", first_line(e));
            }
        }
    }
    let _ = writeln!(md);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routing_core_section_is_kept_verbatim() {
        let before = "# x\n\n## Forwarding\nold\n## Routing core\nhand\n| a |\n\n## Later\nz\n";
        assert_eq!(
            routing_core(before),
            "## Routing core\nhand\n| a |\n\n## Later\nz\n",
            "the hand-written sections after it too"
        );
        let last = "# x\n## Routing core\nhand\n";
        assert_eq!(routing_core(last), "## Routing core\nhand\n");
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }
}
