//! Program cost: `BPF_PROG_TEST_RUN` nanoseconds per packet for halod's XDP program (its
//! real object, as built by `halod/build.rs`) on a routed and on passed packets, against
//! `bench_floor`, a parse-and-pass program. Also the time to push table changes into the
//! maps: a spare takeover (the writes `Dataplane::apply` does for it) and a full table.
//!
//! The runs happen on a thread inside the test bed's gateway namespace: halod's program
//! asks the kernel for the next hop (`bpf_fib_lookup`), which a test run answers from the
//! calling thread's namespace, and the interface indexes in its config must be real.
//! The node's neighbour entry is made permanent first, so the routed packet takes the
//! whole forwarding path (lookup, rewrite, checksums, counters, `XDP_REDIRECT`). After the
//! first repetition the routed packet finds its next hop in the program's next-hop cache
//! (`NEXT_HOP`, the daemon's 500 ms TTL), as a node's traffic does; a second row measures it
//! with the cache off (TTL 0), `bpf_fib_lookup` for every packet, the path before the cache.
//! A node's reply to the client is measured the same two ways (`CLIENT_NEXT_HOP`).

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use aya::programs::{TestRun, TestRunOptions, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use halod_common::listener::MAX_LISTENERS;
use halod_common::maps::{self as common, CONFIG_ENABLED, NODE_PRESENT, NodeAddr, SlotNode, names};

use super::traffic::{mac_of, pin_thread, tcp_frame, udp_frame};
use crate::command;
use crate::testbed::{EXTERNAL_IF, HOST_IF, INTERNAL_IF, Testbed, VIP, run_in_netns};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
/// Routes in the loaded program: the largest table, for the full-table push.
const ROUTES: u16 = 65_535;
const BASE_PORT: u16 = 1;
const MAX_NODES: u32 = 16;
/// Runs of each measurement; the median is reported.
const RUNS: usize = 5;
/// An idle veth pair in the gateway namespace that keeps the programs attached.
const PARK_A: &str = "hdcost0";
const PARK_B: &str = "hdcost1";
/// Repetitions per `BPF_PROG_TEST_RUN` call: fewer than the 254 a TTL of 255 allows.
const REPS: u32 = 250;
/// The next-hop cache TTL the daemon sets (`halod::dataplane::NEXT_HOP_TTL`).
const NEXT_HOP_TTL_MS: u32 = 500;

/// Nanoseconds per packet of one program on one frame.
#[derive(Debug, Clone)]
pub struct Cost {
    pub label: &'static str,
    pub verdict: &'static str,
    pub ns: f64,
    pub runs: Vec<f64>,
}

#[derive(Debug, Clone)]
pub struct Costs {
    pub repeat: u32,
    pub rows: Vec<Cost>,
    /// One spare takeover: `NODE_BY_ADDR` insert of the spare, `SLOT_NODE` write, and the
    /// failed node's `NODE_BY_ADDR` removal; median over many.
    pub takeover: Duration,
    /// Every route of a 65,535-route table written to `ROUTE_SLOT`, plus the slots.
    pub full_table: Duration,
    pub full_table_nodes: u32,
}

pub fn run(bed: &Testbed, halod_xdp: &Path, bench_xdp: &Path, repeat: u32) -> Result<Costs> {
    let halod_object =
        fs::read(halod_xdp).with_context(|| format!("reading {}", halod_xdp.display()))?;
    let bench_object =
        fs::read(bench_xdp).with_context(|| format!("reading {}", bench_xdp.display()))?;
    let gateway = bed.gateway_ns();
    let node = bed.node_addr(1);
    let node_mac = mac_of(&bed.node_ns(1), HOST_IF)?;
    let client = bed.client_addr(1);
    let client_mac = mac_of(&bed.client_ns(1), HOST_IF)?;
    let ext_mac = mac_of(&gateway, EXTERNAL_IF)?;
    let int_mac = mac_of(&gateway, INTERNAL_IF)?;
    neighbour(&gateway, node, node_mac, INTERNAL_IF)?;
    neighbour(&gateway, client, client_mac, EXTERNAL_IF)?;

    // BPF_PROG_TEST_RUN does not restore the frame between repetitions, and a routed
    // frame leaves the program rewritten (for the next repetition it is "not ours"). So
    // the program's VIP is set to node1's address: the address rewrite is then the
    // identity and the same frame is routed again and again, doing every step (lookups,
    // FIB, rewrite and checksum arithmetic, counters, redirect). Each repetition also
    // decrements the TTL, so frames start at TTL 255 and a call runs REPS repetitions.
    let vip = node;
    let routed = ttl255(udp_frame(
        client_mac, ext_mac, client, vip, 40000, BASE_PORT, 60,
    ));
    // A node's reply from the route port to the client (the source rewrite to the VIP is
    // the identity too), arriving on the internal interface.
    let reply = ttl255(udp_frame(
        node_mac, int_mac, node, client, BASE_PORT, 40000, 60,
    ));
    // A bare ACK of an open TCP connection through the VIP: the packet that
    // meets a draining route's connection lookup.
    let routed_tcp = ttl255(tcp_frame(
        client_mac, ext_mac, client, vip, 40000, BASE_PORT, 0x10, 60,
    ));
    // To the VIP, but port 0, outside the listener group (ports 1..=65535): parsed to
    // the end, then passed.
    let not_route = ttl255(udp_frame(client_mac, ext_mac, client, vip, 40000, 0, 60));
    // Not for the VIP at all (the gateway's own traffic): the earliest pass.
    let not_ours = ttl255(udp_frame(client_mac, ext_mac, client, VIP, 40000, 80, 60));

    // Each test run of an XDP program that is attached nowhere adds it to the kernel's XDP
    // dispatcher and removes it again, with a synchronize_rcu() each time (milliseconds on
    // a busy machine). Attached to an idle veth, the programs stay in the dispatcher and
    // a test run costs what it measures.
    for args in [
        vec![
            "link", "add", PARK_A, "type", "veth", "peer", "name", PARK_B,
        ],
        vec!["link", "set", PARK_A, "up"],
        vec!["link", "set", PARK_B, "up"],
    ] {
        command::run(
            Command::new("ip")
                .args(["-n", gateway.as_str()])
                .args(&args),
        )?;
    }
    run_in_netns(&gateway, move || -> Result<Costs> {
        pin_thread(1)?;
        let ext = nix::net::if_::if_nametoindex(EXTERNAL_IF)?;
        let int = nix::net::if_::if_nametoindex(INTERNAL_IF)?;
        let mut halod = load_halod(&halod_object, ext, int, vip, node)?;
        let mut floor = Ebpf::load(&bench_object).context("loading bench-ebpf")?;
        let floor_program: &mut Xdp = floor
            .program_mut("bench_floor")
            .context("bench-ebpf has no bench_floor")?
            .try_into()?;
        floor_program.load().context("loading bench_floor")?;
        floor_program
            .attach(PARK_B, XdpMode::default())
            .context("attaching bench_floor to an idle veth")?;
        let parked: &mut Xdp = halod
            .program_mut(common::PROGRAM_NAME)
            .context("no halod program")?
            .try_into()?;
        parked
            .attach(PARK_A, XdpMode::default())
            .context("attaching halod's program to an idle veth")?;

        let rows = (|| -> Result<Vec<Cost>> {
            // Each phase measures its cases in the program's current state; the rows
            // are reported in the order of their numbers.
            let mut rows: Vec<(u8, Cost)> = Vec::new();
            let mut phase = |halod: &Ebpf, cases: &[Case]| -> Result<()> {
                for (order, label, frame, ifindex, expected) in cases {
                    let cost = measure(label, program(halod)?, frame, *ifindex, repeat, *expected)?;
                    rows.push((*order, cost));
                }
                Ok(())
            };
            phase(
                &halod,
                &[
                    (0, "halod, routed packet", &routed, ext, XDP_REDIRECT),
                    (5, "halod, node reply (node -> client)", &reply, int, XDP_REDIRECT),
                    (
                        2,
                        "halod, routed TCP packet (ACK), route not draining",
                        &routed_tcp,
                        ext,
                        XDP_REDIRECT,
                    ),
                    (7, "halod, passed packet (VIP, port 0: no route)", &not_route, ext, XDP_PASS),
                    (8, "halod, passed packet (not for the VIP)", &not_ours, ext, XDP_PASS),
                ],
            )?;
            // The same with the next-hop caches off: `bpf_fib_lookup` for every packet.
            set_next_hop_ttl(&mut halod, 0)?;
            phase(
                &halod,
                &[
                    (
                        1,
                        "halod, routed packet, next-hop cache off (bpf_fib_lookup every packet)",
                        &routed,
                        ext,
                        XDP_REDIRECT,
                    ),
                    (
                        6,
                        "halod, node reply, next-hop cache off (bpf_fib_lookup every packet)",
                        &reply,
                        int,
                        XDP_REDIRECT,
                    ),
                ],
            )?;
            set_next_hop_ttl(&mut halod, NEXT_HOP_TTL_MS)?;
            // The route drains (node1 is its old and its new node, so the rewrite stays
            // the identity): the ACK's connection is looked up, not found (older than the
            // move), and goes to the old node; a UDP packet goes to the new node.
            start_drain(&mut halod, node)?;
            phase(
                &halod,
                &[
                    (
                        3,
                        "halod, routed TCP packet (ACK), route draining: older than the move, to the old node",
                        &routed_tcp,
                        ext,
                        XDP_REDIRECT,
                    ),
                    (
                        4,
                        "halod, routed packet (UDP), route draining: to the new node",
                        &routed,
                        ext,
                        XDP_REDIRECT,
                    ),
                ],
            )?;
            end_drain(&mut halod)?;
            rows.push((
                9,
                measure(
                    "floor: parse-and-pass (bench_floor)",
                    floor_program,
                    &routed,
                    ext,
                    repeat,
                    XDP_PASS,
                )?,
            ));
            rows.sort_by_key(|(order, _)| *order);
            Ok(rows.into_iter().map(|(_, cost)| cost).collect())
        })()
        .map_err(|e| e.context(format!("halod's verdict counters: {}", reasons(&halod))))?;
        let (takeover, full_table) = push_times(&mut halod, node)?;
        Ok(Costs {
            repeat,
            rows,
            takeover,
            full_table,
            full_table_nodes: MAX_NODES,
        })
    })?
}

/// One measurement: its place in the report, label, frame, ingress interface and
/// expected verdict.
type Case<'a> = (u8, &'static str, &'a Vec<u8>, u32, u32);

/// halod's program in its loaded object.
fn program(ebpf: &Ebpf) -> Result<&Xdp> {
    Ok(ebpf
        .program(common::PROGRAM_NAME)
        .context("no halod program")?
        .try_into()?)
}

/// Rewrites the next-hop cache TTL in halod's CONFIG (0: `bpf_fib_lookup` every packet).
fn set_next_hop_ttl(ebpf: &mut Ebpf, millis: u32) -> Result<()> {
    let mut config = Array::<&mut MapData, common::Config>::try_from(
        ebpf.map_mut(names::CONFIG).context("CONFIG")?,
    )?;
    let mut value = config.get(&0, 0)?;
    value.next_hop_ttl_ms = millis;
    config.set(0, value, 0)?;
    Ok(())
}

/// halod's non-zero `REASON_COUNTERS`, named, for error messages.
fn reasons(ebpf: &Ebpf) -> String {
    let Some(map) = ebpf.map(names::REASON_COUNTERS) else {
        return "no REASON_COUNTERS map".into();
    };
    let Ok(counters) = aya::maps::PerCpuArray::<&MapData, u64>::try_from(map) else {
        return "REASON_COUNTERS unreadable".into();
    };
    common::Reason::ALL
        .iter()
        .filter_map(|reason| {
            let count: u64 = counters.get(&(*reason as u32), 0).ok()?.iter().sum();
            (count > 0).then(|| format!("{}={count}", reason.name()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A permanent neighbour entry, so `bpf_fib_lookup` finds the next hop at once.
pub fn neighbour(ns: &str, addr: Ipv4Addr, mac: [u8; 6], dev: &str) -> Result<()> {
    let mac = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    command::run(Command::new("ip").args([
        "-n",
        ns,
        "neigh",
        "replace",
        &addr.to_string(),
        "lladdr",
        &mac,
        "dev",
        dev,
        "nud",
        "permanent",
    ]))
    .map(drop)
}

/// Loads halod's object the way `Dataplane::load_unattached` does (map sizes from the
/// config, then the config entry), with every route in slot 1 and `node` in slot 1.
fn load_halod(object: &[u8], ext: u32, int: u32, vip: Ipv4Addr, node: Ipv4Addr) -> Result<Ebpf> {
    let routes = u32::from(ROUTES);
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(names::ROUTE_SLOT, routes)
        .map_max_entries(names::SLOT_NODE, routes)
        .map_max_entries(names::ROUTE_COUNTERS, routes)
        .map_max_entries(names::NODE_COUNTERS, MAX_NODES)
        .map_max_entries(names::NODE_BY_ADDR, MAX_NODES)
        .map_max_entries(names::NEXT_HOP, MAX_NODES)
        .map_max_entries(names::ROUTE_DRAIN, routes)
        .map_max_entries(names::DRAIN_FLOWS, 1024)
        .load(object)
        .context("loading halod's XDP object")?;
    let program: &mut Xdp = ebpf
        .program_mut(common::PROGRAM_NAME)
        .context("halod's object has no program `halod`")?
        .try_into()?;
    program
        .load()
        .context("loading halod's program (BPF_PROG_LOAD)")?;
    let mut listeners = [0u16; MAX_LISTENERS];
    listeners[0] = BASE_PORT;
    let config = common::Config {
        vip: vip.octets(),
        external_ifindex: ext,
        internal_ifindex: int,
        routes: ROUTES,
        listener_count: 1,
        listeners,
        flags: CONFIG_ENABLED,
        next_hop_ttl_ms: NEXT_HOP_TTL_MS,
        ..Default::default()
    };
    Array::<&mut MapData, common::Config>::try_from(
        ebpf.map_mut(names::CONFIG).context("CONFIG")?,
    )?
    .set(0, config, 0)?;
    BpfHashMap::<&mut MapData, NodeAddr, u32>::try_from(
        ebpf.map_mut(names::NODE_BY_ADDR).context("NODE_BY_ADDR")?,
    )?
    .insert(
        NodeAddr {
            addr: node.octets(),
        },
        0,
        0,
    )?;
    Array::<&mut MapData, SlotNode>::try_from(
        ebpf.map_mut(names::SLOT_NODE).context("SLOT_NODE")?,
    )?
    .set(
        0,
        SlotNode {
            addr: node.octets(),
            index: 0,
            flags: NODE_PRESENT,
        },
        0,
    )?;
    let mut route_slot: Array<&mut MapData, u32> =
        Array::try_from(ebpf.map_mut(names::ROUTE_SLOT).context("ROUTE_SLOT")?)?;
    for route in 0..routes {
        route_slot.set(route, 1, 0)?;
    }
    Ok(ebpf)
}

/// Route 1 (port `BASE_PORT`) drains from `node` to `node`, with no end in
/// sight: what `Dataplane::apply` writes for a `Write::Drain`.
fn start_drain(ebpf: &mut Ebpf, node: Ipv4Addr) -> Result<()> {
    Array::<&mut MapData, common::RouteDrain>::try_from(
        ebpf.map_mut(names::ROUTE_DRAIN).context("ROUTE_DRAIN")?,
    )?
    .set(
        0,
        common::RouteDrain {
            old_addr: node.octets(),
            old_index: 0,
            new_addr: node.octets(),
            new_index: 0,
            flags: common::DRAIN_ACTIVE | common::DRAIN_NEW_PRESENT,
            _pad: 0,
            until_ns: u64::MAX / 2,
        },
        0,
    )?;
    Array::<&mut MapData, u32>::try_from(ebpf.map_mut(names::ROUTE_SLOT).context("ROUTE_SLOT")?)?
        .set(0, 1 | common::ROUTE_DRAINING, 0)?;
    Ok(())
}

fn end_drain(ebpf: &mut Ebpf) -> Result<()> {
    Array::<&mut MapData, u32>::try_from(ebpf.map_mut(names::ROUTE_SLOT).context("ROUTE_SLOT")?)?
        .set(0, 1, 0)?;
    Ok(())
}

/// Average ns per packet over `repeat` repetitions, made of calls of [`REPS`]
/// repetitions each (the kernel reports each call's average in whole ns); median of
/// [`RUNS`] such averages.
fn measure(
    label: &'static str,
    program: &Xdp,
    frame: &[u8],
    ifindex: u32,
    repeat: u32,
    expected: u32,
) -> Result<Cost> {
    let mut ctx = Vec::with_capacity(24);
    for word in [0, frame.len() as u32, 0, ifindex, 0, 0] {
        ctx.extend_from_slice(&word.to_ne_bytes());
    }
    let calls = (repeat / REPS).max(1);
    let mut runs = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let mut total = 0.0;
        for _ in 0..calls {
            let mut out = vec![0u8; frame.len() + 256];
            let result = program
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    data_out: Some(&mut out),
                    ctx_in: Some(&ctx),
                    repeat: REPS,
                    ..TestRunOptions::new()
                })
                .with_context(|| format!("BPF_PROG_TEST_RUN of {label}"))?;
            if result.return_value != expected {
                bail!(
                    "{label}: the program answered {} instead of {} (is the node's neighbour \
                     entry in place and forwarding on?)",
                    verdict(result.return_value),
                    verdict(expected)
                );
            }
            total += result.duration.as_nanos() as f64;
        }
        runs.push(total / f64::from(calls));
    }
    let mut sorted = runs.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(Cost {
        label,
        verdict: verdict(expected),
        ns: sorted[sorted.len() / 2],
        runs,
    })
}

fn ttl255(mut frame: Vec<u8>) -> Vec<u8> {
    // TTL is byte 8 of the IPv4 header; fix the header checksum incrementally (RFC 1624).
    let old = u16::from_be_bytes([frame[22], frame[23]]);
    frame[22] = 255;
    let new = u16::from_be_bytes([frame[22], frame[23]]);
    let check = u16::from_be_bytes([frame[24], frame[25]]);
    let mut sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    frame
}

fn verdict(action: u32) -> &'static str {
    match action {
        0 => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        3 => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "unknown",
    }
}

/// Times the map writes of a spare takeover and of a full table.
fn push_times(ebpf: &mut Ebpf, node: Ipv4Addr) -> Result<(Duration, Duration)> {
    let spare = Ipv4Addr::new(198, 19, 0, 99);
    let mut takeovers = Vec::new();
    for i in 0..1000u32 {
        // Alternate between the node and the spare so every write changes something.
        let (old, new) = if i % 2 == 0 {
            (node, spare)
        } else {
            (spare, node)
        };
        let start = Instant::now();
        BpfHashMap::<&mut MapData, NodeAddr, u32>::try_from(
            ebpf.map_mut(names::NODE_BY_ADDR).context("NODE_BY_ADDR")?,
        )?
        .insert(NodeAddr { addr: new.octets() }, 1 - i % 2, 0)?;
        Array::<&mut MapData, SlotNode>::try_from(
            ebpf.map_mut(names::SLOT_NODE).context("SLOT_NODE")?,
        )?
        .set(
            0,
            SlotNode {
                addr: new.octets(),
                index: 1 - i % 2,
                flags: NODE_PRESENT,
            },
            0,
        )?;
        BpfHashMap::<&mut MapData, NodeAddr, u32>::try_from(
            ebpf.map_mut(names::NODE_BY_ADDR).context("NODE_BY_ADDR")?,
        )?
        .remove(&NodeAddr { addr: old.octets() })?;
        takeovers.push(start.elapsed());
    }
    takeovers.sort();
    let takeover = takeovers[takeovers.len() / 2];

    let mut fulls = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let mut slots: Array<&mut MapData, SlotNode> =
            Array::try_from(ebpf.map_mut(names::SLOT_NODE).context("SLOT_NODE")?)?;
        for slot in 0..MAX_NODES {
            slots.set(
                slot,
                SlotNode {
                    addr: node.octets(),
                    index: slot,
                    flags: NODE_PRESENT,
                },
                0,
            )?;
        }
        let mut route_slot: Array<&mut MapData, u32> =
            Array::try_from(ebpf.map_mut(names::ROUTE_SLOT).context("ROUTE_SLOT")?)?;
        for route in 0..u32::from(ROUTES) {
            route_slot.set(route, route % MAX_NODES + 1, 0)?;
        }
        fulls.push(start.elapsed());
    }
    fulls.sort();
    Ok((takeover, fulls[1]))
}
