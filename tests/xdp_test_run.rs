//! BPF_PROG_TEST_RUN tests: crafted frames through the real XDP program, loaded
//! by the same code as the daemon (`Dataplane::load_unattached`), checking the
//! verdict and every output byte. Frames are built, and the output's checksums
//! recomputed, by etherparse, independent of the program's own arithmetic.
//! Most tests are tables of [`Case`]s: a frame, the interface it arrives on, and
//! the verdict, output frame and reason counter it must get; a failed check names
//! its case.
//!
//! Next hops: the program asks the kernel (`bpf_fib_lookup`) for them, and in a
//! test run the kernel answers from the namespace of the calling thread. So
//! every test runs on its own thread inside a fresh network namespace
//! (`unshare(CLONE_NEWNET)`, which only moves that thread) holding two veth
//! pairs with fixed MAC addresses, addresses, routes and permanent neighbour
//! entries: the real FIB path, with no test-only fallback in the program. The
//! namespace disappears with the thread, even if the test fails.
//!
//! Needs root (CAP_NET_ADMIN, CAP_BPF).

use std::{net::Ipv4Addr, process::Command, time::Duration};

use etherparse::{NetHeaders, PacketBuilder, PacketHeaders, TransportHeader};
use halod::dataplane::{Dataplane, DrainStats, NextHop, NodeTarget, Write};

mod support;
use support::bpf::*;

const NODE_B: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 11);

const NODE_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xb0, 0x0b];
/// A third node, for the drains: it joins into slot 4 with index 3.
const NODE_C: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 13);
const NODE_C_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xc0, 0x0c];

/// The namespace, the interfaces and the loaded program.
struct Bed {
    dataplane: Dataplane,
    ext: u32,
    int: u32,
}

/// Runs `test` in a fresh gateway namespace (`support::in_gateway_netns`) with the
/// program loaded; `shared` puts clients and nodes on one interface (XDP_TX).
fn in_netns(shared: bool, test: impl FnOnce(&mut Bed) + Send + 'static) {
    in_netns_with(
        shared,
        dataplane_config("xdp-test-run", "int0").drain_flows,
        test,
    );
}

/// [`in_netns`] with a `DRAIN_FLOWS` of `drain_flows` entries.
fn in_netns_with(shared: bool, drain_flows: u32, test: impl FnOnce(&mut Bed) + Send + 'static) {
    in_netns_configured(shared, drain_flows, 1024, test);
}

/// [`in_netns_with`] with a `RECENT_FLOWS` of `flush_flows` entries (0: no
/// recording).
fn in_netns_configured(
    shared: bool,
    drain_flows: u32,
    flush_flows: u32,
    test: impl FnOnce(&mut Bed) + Send + 'static,
) {
    const NEIGHBOURS: &[(Ipv4Addr, [u8; 6])] = &[
        (CLIENT, CLIENT_MAC),
        (NODE_A, NODE_A_MAC),
        (NODE_B, NODE_B_MAC),
        (NODE_C, NODE_C_MAC),
    ];
    in_gateway_netns(shared, NEIGHBOURS, move |interfaces| {
        let config = halod::dataplane::DataplaneConfig {
            drain_flows,
            flush_flows,
            ..dataplane_config("xdp-test-run", interfaces.int_name)
        };
        let dataplane = Dataplane::load_unattached(&config).unwrap_or_else(|e| panic!("{e}"));
        let mut bed = Bed {
            dataplane,
            ext: interfaces.ext,
            int: interfaces.int,
        };
        test(&mut bed);
    });
}

/// A MAC address; an IPv4 address and port.
type Mac = [u8; 6];
type End = (Ipv4Addr, u16);

/// Puts `addr`, with node index `index`, in `slot`.
fn slot(slot: u16, addr: Ipv4Addr, index: u32) -> Write {
    Write::Slot {
        slot,
        node: Some(NodeTarget { addr, index }),
    }
}

/// The interface a case's frame arrives on.
#[derive(Clone, Copy, Debug)]
enum Side {
    Ext,
    Int,
}
use Side::{Ext, Int};

/// What must come of a case's frame.
#[derive(Clone, Debug)]
enum Expect {
    /// XDP_PASS, untouched, counted under the reason.
    Pass(&'static str),
    /// XDP_PASS as this frame (the address already rewritten, TTL and MACs untouched,
    /// so the kernel forwards it itself), counted under the reason.
    Handoff(&'static str, Vec<u8>),
    /// XDP_REDIRECT to a node as this frame, counted as forwarded_in.
    In(Vec<u8>),
    /// XDP_REDIRECT to a client as this frame, counted as forwarded_out.
    Out(Vec<u8>),
    /// XDP_TX as this frame, counted under the reason.
    Tx(&'static str, Vec<u8>),
    /// XDP_REDIRECT to a node, counted as forwarded_in; the output is not checked.
    Redirected,
    /// XDP_DROP, counted as drop_malformed.
    Dropped,
}
use Expect::*;

impl Bed {
    /// Slot 1 = node A (index 0), slot 2 = node B (index 1), slot 3 = the
    /// unresolved node (index 2); routes 1-8 -> slot 1, 9-16 -> slot 2,
    /// 17-20 -> slot 3, 21-24 none.
    fn table(&mut self) {
        let mut writes = vec![
            slot(1, NODE_A, 0),
            slot(2, NODE_B, 1),
            slot(3, NODE_UNRESOLVED, 2),
        ];
        writes.extend((1..=20u16).map(|route| Write::Route {
            route,
            slot: Some(1 + (route - 1) / 8),
        }));
        self.apply(&writes);
    }

    fn apply(&mut self, writes: &[Write]) {
        self.dataplane
            .apply(writes)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    fn set_ttl(&mut self, ttl: Duration) {
        self.dataplane.set_next_hop_ttl(ttl).unwrap();
    }

    fn run(&self, frame: &[u8], ingress: u32) -> (u32, Vec<u8>) {
        self.dataplane
            .test_run(frame, ingress)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn reason(&self, name: &str) -> u64 {
        self.dataplane.stats().unwrap().reason(name)
    }

    /// Runs case `name`, `frame` arriving on `side`, and checks its verdict, output
    /// (and the output's checksums when the program rewrote it) and that its reason
    /// was counted once. Every message names the case.
    fn check(&self, name: &str, side: Side, frame: &[u8], expect: &Expect) {
        let (verdict, reason, out) = match expect {
            Pass(reason) => (XDP_PASS, *reason, Some(frame)),
            Handoff(reason, out) => (XDP_PASS, *reason, Some(&out[..])),
            In(out) => (XDP_REDIRECT, "forwarded_in", Some(&out[..])),
            Out(out) => (XDP_REDIRECT, "forwarded_out", Some(&out[..])),
            Tx(reason, out) => (XDP_TX, *reason, Some(&out[..])),
            Redirected => (XDP_REDIRECT, "forwarded_in", None),
            Dropped => (XDP_DROP, "drop_malformed", None),
        };
        let ingress = match side {
            Ext => self.ext,
            Int => self.int,
        };
        let before = self.reason(reason);
        let (got, output) = self.run(frame, ingress);
        assert_eq!(got, verdict, "{name}: verdict");
        if let Some(expected) = out {
            assert_eq!(output, expected, "{name}: output frame");
            if expected != frame {
                assert_checksums(&output, name);
            }
        }
        assert_eq!(self.reason(reason), before + 1, "{name}: counter {reason}");
    }

    /// [`Bed::check`]s each case, in order: (name, side, frame, expected).
    fn check_all<N: AsRef<str>>(
        &self,
        cases: impl IntoIterator<Item = (N, Side, Vec<u8>, Expect)>,
    ) {
        for (name, side, frame, expect) in cases {
            self.check(name.as_ref(), side, &frame, &expect);
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Segment {
    TcpSyn,
    TcpData,
    TcpFin,
    Udp,
}
use Segment::{TcpData, TcpFin, TcpSyn, Udp};

/// An Ethernet/IPv4 frame as etherparse builds it.
fn frame(macs: (Mac, Mac), src: End, dst: End, ttl: u8, seg: Segment, payload: &[u8]) -> Vec<u8> {
    let ip = PacketBuilder::ethernet2(macs.0, macs.1).ipv4(src.0.octets(), dst.0.octets(), ttl);
    let mut out = Vec::new();
    match seg {
        TcpSyn => ip
            .tcp(src.1, dst.1, 1000, 64240)
            .syn()
            .write(&mut out, payload),
        TcpData => ip
            .tcp(src.1, dst.1, 1001, 502)
            .ack(77)
            .psh()
            .write(&mut out, payload),
        TcpFin => ip
            .tcp(src.1, dst.1, 5000, 502)
            .ack(78)
            .fin()
            .write(&mut out, payload),
        Udp => ip.udp(src.1, dst.1).write(&mut out, payload),
    }
    .unwrap();
    out
}

/// A frame from client port 40000 to `dst`, arriving from the client's side.
fn from_client(dst: End, ttl: u8, seg: Segment, payload: &[u8]) -> Vec<u8> {
    frame(
        (CLIENT_MAC, EXT_MAC),
        (CLIENT, 40000),
        dst,
        ttl,
        seg,
        payload,
    )
}

/// A frame from `src` to client port 40000, leaving towards the client.
fn to_client(src: End, ttl: u8, seg: Segment, payload: &[u8]) -> Vec<u8> {
    frame(
        (EXT_MAC, CLIENT_MAC),
        src,
        (CLIENT, 40000),
        ttl,
        seg,
        payload,
    )
}

/// A frame from client port 40000 to `dst`, leaving on the internal side for `mac`.
fn to_node(mac: Mac, dst: End, ttl: u8, seg: Segment, payload: &[u8]) -> Vec<u8> {
    frame((INT_MAC, mac), (CLIENT, 40000), dst, ttl, seg, payload)
}

/// A frame from `src` (MAC `mac`) to client port 40000, arriving on the internal side.
fn from_node(mac: Mac, src: End, ttl: u8, seg: Segment, payload: &[u8]) -> Vec<u8> {
    frame((mac, INT_MAC), src, (CLIENT, 40000), ttl, seg, payload)
}

/// Recomputes every checksum of `frame` (the output of case `name`) with etherparse
/// and checks them; a zero UDP checksum means none.
fn assert_checksums(frame: &[u8], name: &str) {
    let headers = PacketHeaders::from_ethernet_slice(frame).expect("etherparse parses the output");
    let Some(NetHeaders::Ipv4(ip, _)) = &headers.net else {
        panic!("{name}: not IPv4")
    };
    let ip_checksum = ip.calc_header_checksum();
    assert_eq!(
        ip.header_checksum, ip_checksum,
        "{name}: IPv4 header checksum"
    );
    let payload = headers.payload.slice();
    match &headers.transport {
        Some(TransportHeader::Tcp(tcp)) => {
            let checksum = tcp.calc_checksum_ipv4(ip, payload).unwrap();
            assert_eq!(tcp.checksum, checksum, "{name}: TCP checksum");
        }
        Some(TransportHeader::Udp(udp)) if udp.checksum != 0 => {
            let checksum = udp.calc_checksum_ipv4(ip, payload).unwrap();
            assert_eq!(udp.checksum, checksum, "{name}: UDP checksum");
        }
        Some(TransportHeader::Udp(_)) => {}
        other => panic!("{name}: unexpected transport {other:?}"),
    }
}

/// Zeroes the UDP checksum of an Ethernet/IPv4 (no options)/UDP frame.
fn without_udp_checksum(mut frame: Vec<u8>) -> Vec<u8> {
    frame[14 + 20 + 6] = 0;
    frame[14 + 20 + 7] = 0;
    frame
}

#[test]
fn program_loads_and_passes_the_verifier() {
    // `load_unattached` runs BPF_PROG_LOAD: the verifier accepted the object of
    // this build profile (`cargo test` = dev, `cargo test --release` = release).
    in_netns(false, |bed| {
        let stats = bed.dataplane.stats().unwrap();
        assert_eq!(stats.routes.len(), ROUTES as usize);
        assert_eq!(stats.nodes.len(), 8);
        assert!(stats.reasons.iter().all(|(_, count)| *count == 0));
    });
}

#[test]
fn inbound_tcp_and_udp_are_rewritten_to_the_node() {
    in_netns(false, |bed| {
        bed.table();
        let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut cases = Vec::new();
        for (seg, payload) in [
            (TcpSyn, &[][..]),
            (TcpData, &payload[..]),
            (TcpFin, &[][..]),
        ] {
            // Route 3 in both listener groups -> slot 1 -> node A.
            for port in [8002, 9002] {
                let input = from_client((VIP, port), 64, seg, payload);
                let out = to_node(NODE_A_MAC, (NODE_A, port), 63, seg, payload);
                cases.push((format!("{seg:?} to VIP port {port}"), Ext, input, In(out)));
            }
        }
        // Route 10 -> slot 2 -> node B.
        let tcp = |macs, dst, ttl| frame(macs, (CLIENT, 40001), dst, ttl, TcpSyn, &[]);
        let input = tcp((CLIENT_MAC, EXT_MAC), (VIP, 8009), 5);
        let out = tcp((INT_MAC, NODE_B_MAC), (NODE_B, 8009), 4);
        cases.push((
            "SYN, TTL 5, client port 40001, route 10".into(),
            Ext,
            input,
            In(out),
        ));
        let udp = |macs, dst, ttl| frame(macs, (CLIENT, 5353), dst, ttl, Udp, b"hello, node");
        let input = udp((CLIENT_MAC, EXT_MAC), (VIP, 8000), 64);
        let out = udp((INT_MAC, NODE_A_MAC), (NODE_A, 8000), 63);
        cases.push(("UDP".into(), Ext, input.clone(), In(out.clone())));
        let (input, out) = (without_udp_checksum(input), without_udp_checksum(out));
        cases.push(("UDP without checksum".into(), Ext, input, In(out)));
        bed.check_all(cases);
        assert_eq!(bed.reason("forwarded_in"), 9);
    });
}

#[test]
fn return_traffic_leaves_from_the_vip() {
    in_netns(false, |bed| {
        bed.table();
        let payload = vec![0xabu8; 1400];
        let mut cases: Vec<_> = [TcpSyn, TcpData, TcpFin, Udp]
            .into_iter()
            .map(|seg| {
                let input = from_node(NODE_A_MAC, (NODE_A, 9002), 64, seg, &payload);
                let out = to_client((VIP, 9002), 63, seg, &payload);
                (format!("{seg:?} from node A"), Int, input, Out(out))
            })
            .collect();
        // UDP without checksum keeps none on the way back too.
        let udp = |macs, src, ttl| frame(macs, src, (CLIENT, 7), ttl, Udp, b"x");
        let input = without_udp_checksum(udp((NODE_B_MAC, INT_MAC), (NODE_B, 8015), 64));
        let out = without_udp_checksum(udp((EXT_MAC, CLIENT_MAC), (VIP, 8015), 63));
        cases.push((
            "UDP without checksum from node B".into(),
            Int,
            input,
            Out(out),
        ));
        bed.check_all(cases);
        assert_eq!(bed.reason("forwarded_out"), 5);
    });
}

#[test]
fn one_interface_for_both_sides_uses_xdp_tx() {
    in_netns(true, |bed| {
        bed.table();
        let syn = from_client((VIP, 8000), 64, TcpSyn, &[]);
        // Both sides are ext0: the source MAC towards the node is ext0's too.
        let (node, client) = ((NODE_A, 8000), (CLIENT, 40000));
        let to_node = frame((EXT_MAC, NODE_A_MAC), client, node, 63, TcpSyn, &[]);
        let answer = frame((NODE_A_MAC, EXT_MAC), node, client, 64, TcpData, b"answer");
        let to_client = to_client((VIP, 8000), 63, TcpData, b"answer");
        bed.check_all([
            ("SYN to the VIP", Ext, syn, Tx("forwarded_in", to_node)),
            (
                "node A's answer",
                Int,
                answer,
                Tx("forwarded_out", to_client),
            ),
        ]);
    });
}

#[test]
fn connections_to_a_node_s_own_address_keep_it_both_ways() {
    in_netns(false, |bed| {
        bed.table();
        // TCP from `a` port `p` to `b` port `q` (each an address and a MAC).
        let tcp = |a: (Ipv4Addr, Mac), p, b: (Ipv4Addr, Mac), q, seg| {
            frame((a.1, b.1), (a.0, p), (b.0, q), 64, seg, b"")
        };
        // What leaves from the VIP: port `p` to client port `q`.
        let vip = |p, q, seg| {
            Out(frame(
                (EXT_MAC, CLIENT_MAC),
                (VIP, p),
                (CLIENT, q),
                63,
                seg,
                b"",
            ))
        };
        let client = (CLIENT, CLIENT_MAC);
        let (node_a, to_a) = ((NODE_A, NODE_A_MAC), (NODE_A, EXT_MAC));
        let to_client = (CLIENT, INT_MAC);
        let syn_ack = tcp(node_a, 8002, to_client, 40000, TcpData);
        let udp = |macs, src, dst, payload| frame(macs, src, dst, 64, Udp, payload);
        let monitor = Ipv4Addr::new(198, 19, 0, 50);
        let to_monitor = tcp(node_a, 8002, (monitor, INT_MAC), 40000, TcpData);
        let direct = Pass("pass_direct");
        // A health check connects to node A's own address on route 3's port: its
        // SYN and the node's answers pass unchanged, both ways, and so do the
        // client's later segments. Another connection of the same client through
        // the VIP still goes back as the VIP, and so does a node's answer on a
        // route it no longer serves (a late FIN after a move).
        bed.check_all([
            (
                "health check SYN",
                Ext,
                tcp(client, 40000, to_a, 8002, TcpSyn),
                direct.clone(),
            ),
            ("node A's answer", Int, syn_ack.clone(), direct.clone()),
            (
                "node A's FIN",
                Int,
                tcp(node_a, 8002, to_client, 40000, TcpFin),
                direct.clone(),
            ),
            (
                "client data",
                Ext,
                tcp(client, 40000, to_a, 8002, TcpData),
                direct.clone(),
            ),
            (
                "node A's answer to client port 40001",
                Int,
                tcp(node_a, 8002, to_client, 40001, TcpData),
                vip(8002, 40001, TcpData),
            ),
            (
                "node A's late FIN on route 11",
                Int,
                tcp(node_a, 8010, to_client, 40002, TcpFin),
                vip(8010, 40002, TcpFin),
            ),
        ]);
        // UDP to node B's own address: the datagram and the answer pass.
        let query = udp((CLIENT_MAC, EXT_MAC), (CLIENT, 5353), (NODE_B, 9010), b"q");
        let answer = udp((NODE_B_MAC, INT_MAC), (NODE_B, 9010), (CLIENT, 5353), b"a");
        // A port of no route on a node's address is not ours.
        let port_22 = tcp(client, 40000, to_a, 22, TcpSyn);
        // The same client address and port used again through the VIP: the SYN
        // forgets the direct connection, the answers leave as the VIP.
        let syn = tcp(client, 40000, (VIP, EXT_MAC), 8002, TcpSyn);
        let to_node = to_node(NODE_A_MAC, (NODE_A, 8002), 63, TcpSyn, &[]);
        bed.check_all([
            ("UDP to node B", Ext, query, direct.clone()),
            ("node B's UDP answer", Int, answer, direct.clone()),
            (
                "port 22 of node A",
                Ext,
                port_22,
                Pass("pass_not_route_port"),
            ),
            ("SYN through the VIP", Ext, syn, In(to_node)),
            (
                "node A's answer after it",
                Int,
                syn_ack,
                vip(8002, 40000, TcpData),
            ),
        ]);
        // A client on the node side (a monitor behind the internal interface)
        // never came through the VIP: with and without a resolved neighbour.
        let monitor_mac = [0x02, 0, 0, 0, 0x50, 0x50];
        bed.check("to a monitor", Int, &to_monitor, &direct);
        set_neighbour(monitor, monitor_mac, "int0");
        bed.check("to a resolved monitor", Int, &to_monitor, &direct);
        assert_eq!(bed.reason("pass_direct"), 8);
    });
}

#[test]
fn everything_that_is_not_ours_passes_untouched() {
    in_netns(false, |bed| {
        bed.table();
        let to_vip = |port: u16, ttl: u8| from_client((VIP, port), ttl, TcpSyn, &[]);

        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&CLIENT_MAC);
        arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&CLIENT_MAC);
        arp.extend_from_slice(&CLIENT.octets());
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&VIP.octets());

        let mut ipv6 = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, EXT_MAC)
            .ipv6(
                [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                64,
            )
            .tcp(40000, 8000, 1, 1000)
            .syn()
            .write(&mut ipv6, &[])
            .unwrap();

        let mut icmp = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, EXT_MAC)
            .ipv4(CLIENT.octets(), VIP.octets(), 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut icmp, b"ping")
            .unwrap();

        // Another address on the external side (e.g. the gateway's own, where
        // node registrations arrive).
        let gateway = from_client((Ipv4Addr::new(198, 18, 0, 1), 8000), 64, TcpSyn, &[]);
        let stranger = (Ipv4Addr::new(198, 19, 0, 99), 8000);
        let stranger = from_node(NODE_A_MAC, stranger, 64, TcpData, b"x");
        // A node talking from a port that is not a route port (e.g. registration).
        let to_gateway = (Ipv4Addr::new(198, 19, 0, 1), 7000);
        let registration = frame(
            (NODE_A_MAC, INT_MAC),
            (NODE_A, 50000),
            to_gateway,
            64,
            TcpSyn,
            &[],
        );
        let mut cases = vec![
            (
                "ARP request for the VIP".to_string(),
                Ext,
                arp,
                Pass("pass_not_ipv4"),
            ),
            (
                "IPv6 TCP to a route port".into(),
                Ext,
                ipv6,
                Pass("pass_not_ipv4"),
            ),
            (
                "ICMP echo to the VIP".into(),
                Ext,
                icmp,
                Pass("pass_other_protocol"),
            ),
            (
                "TCP to the gateway".into(),
                Ext,
                gateway,
                Pass("pass_not_ours"),
            ),
            (
                "VIP traffic on the internal side".into(),
                Int,
                to_vip(8000, 64),
                Pass("pass_not_ours"),
            ),
            (
                "internal traffic from a stranger".into(),
                Int,
                stranger,
                Pass("pass_not_ours"),
            ),
            (
                "a node's registration".into(),
                Int,
                registration,
                Pass("pass_not_route_port"),
            ),
            // Routes 21-24 have no slot.
            (
                "route 21".into(),
                Ext,
                to_vip(8020, 64),
                Pass("pass_no_node"),
            ),
            (
                "route 24".into(),
                Ext,
                to_vip(9023, 64),
                Pass("pass_no_node"),
            ),
        ];
        // VIP ports outside the listener groups.
        for port in [7999, 8024, 8999, 9024, 22] {
            cases.push((
                format!("VIP port {port}"),
                Ext,
                to_vip(port, 64),
                Pass("pass_not_route_port"),
            ));
        }
        // TTL 1 and 0: handed to the kernel with the node's address, so that it
        // forwards it and answers "time exceeded" (for the VIP it would deliver
        // it locally instead).
        for ttl in [1, 0] {
            let to_node = from_client((NODE_A, 8000), ttl, TcpSyn, &[]);
            cases.push((
                format!("TTL {ttl} to the VIP"),
                Ext,
                to_vip(8000, ttl),
                Handoff("pass_ttl", to_node),
            ));
        }
        let back = from_node(NODE_A_MAC, (NODE_A, 8000), 1, TcpData, b"x");
        let from_vip = from_node(NODE_A_MAC, (VIP, 8000), 1, TcpData, b"x");
        cases.push((
            "TTL 1 from node A".into(),
            Int,
            back,
            Handoff("pass_ttl", from_vip),
        ));
        // Routes 17-20 reach a node whose neighbour entry does not exist yet: the
        // kernel forwards this one and resolves the neighbour on the way.
        let to_unresolved = from_client((NODE_UNRESOLVED, 8016), 64, TcpSyn, &[]);
        let no_neigh = Handoff("pass_no_neigh", to_unresolved);
        cases.push((
            "route 17, not a neighbour yet".into(),
            Ext,
            to_vip(8016, 64),
            no_neigh,
        ));
        // Fragments: first (MF set) and later (offset != 0). The IPv4 checksum is
        // left stale on purpose: a passed frame must come back byte-identical.
        let flags = |byte6: u8, byte7: u8| {
            let mut frame = to_vip(8000, 64);
            frame[14 + 6] = byte6;
            frame[14 + 7] = byte7;
            frame
        };
        for (byte6, byte7) in [(0x20, 0x00), (0x00, 0x10), (0x20, 0x10)] {
            let name = format!("fragment, flags and offset {byte6:#04x} {byte7:#04x}");
            cases.push((name, Ext, flags(byte6, byte7), Pass("pass_fragment")));
        }
        // The "don't fragment" flag alone is not a fragment.
        cases.push(("DF alone".into(), Ext, flags(0x40, 0), Redirected));
        bed.check_all(cases);

        let stats = bed.dataplane.stats().unwrap();
        assert_eq!(stats.reason("forwarded_in"), 1);
        assert_eq!(stats.reason("forwarded_out"), 0);
    });
}

#[test]
fn frames_truncated_at_every_header_pass() {
    in_netns(false, |bed| {
        bed.table();
        let tcp = from_client((VIP, 8000), 64, TcpData, b"0123456789");
        let udp = from_client((VIP, 8000), 64, Udp, b"0123456789");
        let mut cases = Vec::new();
        for (name, input, l4_len) in [("TCP", &tcp, 20u16), ("UDP", &udp, 8)] {
            // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header
            // (EINVAL), so cuts start after it.
            for cut in 14..input.len() {
                let name = format!("{name} cut to {cut} bytes");
                cases.push((name, Ext, input[..cut].to_vec(), Pass("pass_truncated")));
            }
            // Complete frames whose IPv4 total length ends inside the TCP or UDP
            // header (the rest is Ethernet padding).
            for total in 20..20 + l4_len {
                let mut short = input.clone();
                short[16..18].copy_from_slice(&total.to_be_bytes());
                let name = format!("{name} in an IPv4 total length of {total}");
                cases.push((name, Ext, short, Pass("pass_truncated")));
            }
        }
        // Ethernet padding after a complete packet is fine.
        let padded = |frame: Vec<u8>| [frame, vec![0; 8]].concat();
        let out = padded(to_node(NODE_A_MAC, (NODE_A, 8000), 63, Udp, b"0123456789"));
        cases.push((
            "UDP with Ethernet padding".into(),
            Ext,
            padded(udp),
            In(out),
        ));
        bed.check_all(cases);
    });
}

#[test]
fn malformed_ipv4_headers_to_the_vip_are_dropped() {
    in_netns(false, |bed| {
        bed.table();
        let broken = |name, bytes: &[(usize, u8)]| {
            let mut frame = from_client((VIP, 8000), 64, TcpSyn, &[]);
            for (offset, value) in bytes {
                frame[*offset] = *value;
            }
            (name, Ext, frame, Dropped)
        };
        bed.check_all([
            broken("IPv4 header length 16 bytes", &[(14, 0x44)]),
            broken("IP version 6", &[(14, 0x65)]),
            broken("IPv4 total length 0", &[(16, 0), (17, 0)]),
            broken("IPv4 total length 10", &[(17, 10)]),
        ]);
    });
}

#[test]
fn ip_options_are_skipped_to_find_the_ports() {
    in_netns(false, |bed| {
        bed.table();
        let mut ip = etherparse::Ipv4Header::new(
            20,
            64,
            etherparse::IpNumber::UDP,
            CLIENT.octets(),
            VIP.octets(),
        )
        .unwrap();
        ip.options = [1u8, 1, 1, 0][..].try_into().unwrap(); // NOP, NOP, NOP, EOL
        let build = |ip: etherparse::Ipv4Header, macs: (Mac, Mac)| {
            let mut out = Vec::new();
            PacketBuilder::ethernet2(macs.0, macs.1)
                .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
                .udp(1234, 9001)
                .write(&mut out, b"0123456789ab")
                .unwrap();
            out
        };
        let input = build(ip.clone(), (CLIENT_MAC, EXT_MAC));
        let mut expected_ip = ip;
        expected_ip.destination = NODE_A.octets();
        expected_ip.time_to_live = 63;
        let out = build(expected_ip, (INT_MAC, NODE_A_MAC));
        bed.check("UDP with IPv4 options", Ext, &input, &In(out));
    });
}

#[test]
fn counters_follow_routes_and_nodes() {
    in_netns(false, |bed| {
        bed.table();
        let syn = from_client((VIP, 8001), 64, TcpSyn, &[]);
        let answer = from_node(NODE_A_MAC, (NODE_A, 8001), 64, TcpData, &[0; 100]);
        bed.run(&syn, bed.ext);
        bed.run(&syn, bed.ext);
        bed.run(&answer, bed.int);
        let stats = bed.dataplane.stats().unwrap();
        let bytes = (2 * syn.len() + answer.len()) as u64;
        assert_eq!(stats.routes[1].packets, 3);
        assert_eq!(stats.routes[1].bytes, bytes);
        assert_eq!(stats.nodes[0].packets, 3);
        assert_eq!(stats.nodes[0].bytes, bytes);
        assert_eq!(stats.routes.iter().map(|c| c.packets).sum::<u64>(), 3);
    });
}

#[test]
fn a_spare_taking_over_is_one_slot_write() {
    in_netns(false, |bed| {
        bed.table();
        let spare = Ipv4Addr::new(198, 19, 0, 20);
        let spare_mac = [0x02, 0, 0, 0, 0x20, 0x20];
        set_neighbour(spare, spare_mac, "int0");
        bed.apply(&[slot(1, spare, 5)]);
        let (routes, slots) = bed.dataplane.table().unwrap();
        assert_eq!(routes[0], Some(1));
        let target = NodeTarget {
            addr: spare,
            index: 5,
        };
        assert_eq!(slots[0], Some(target));
        let syn = from_client((VIP, 8001), 64, TcpSyn, &[]);
        let to_spare = In(to_node(spare_mac, (spare, 8001), 63, TcpSyn, &[]));
        bed.check("SYN to route 2, now the spare's", Ext, &syn, &to_spare);
        assert_eq!(bed.dataplane.stats().unwrap().nodes[5].packets, 1);
        // The failed node's late FIN still leaves from the VIP.
        let fin = from_node(NODE_A_MAC, (NODE_A, 8001), 64, TcpFin, &[]);
        let from_vip = Out(to_client((VIP, 8001), 63, TcpFin, &[]));
        bed.check("the failed node's late FIN", Int, &fin, &from_vip);
        // A route write moves a route; emptying it passes its traffic to the kernel.
        let route_2 = |slot| Write::Route { route: 2, slot };
        bed.apply(&[route_2(Some(2))]);
        let (_, out) = bed.run(&syn, bed.ext);
        assert_eq!(&out[30..34], &NODE_B.octets());
        bed.apply(&[route_2(None)]);
        bed.check(
            "SYN to the emptied route 2",
            Ext,
            &syn,
            &Pass("pass_no_node"),
        );
    });
}

#[test]
fn start_attaches_natively_pins_and_cleans_up() {
    in_netns(false, |_bed| {
        let instance = format!("xdp-test-{}", std::process::id());
        let config = dataplane_config(&instance, "int0");
        let pins = std::path::Path::new("/sys/fs/bpf/halod").join(&instance);
        let dataplane = Dataplane::start(&config).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            dataplane.modes(),
            vec![
                ("ext0".to_owned(), halod::dataplane::AttachMode::Native),
                ("int0".to_owned(), halod::dataplane::AttachMode::Native)
            ]
        );
        assert!(pins.join("ROUTE_SLOT").exists() && pins.join("SLOT_NODE").exists());
        let link = Command::new("ip")
            .args(["-d", "link", "show", "ext0"])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&link.stdout).contains("xdp"),
            "ext0 shows no XDP program"
        );
        // A second instance with the same name is refused, naming the directory.
        let err = Dataplane::start(&config).unwrap_err().to_string();
        assert!(
            err.contains(&pins.display().to_string()) && err.contains("already exists"),
            "{err}"
        );
        drop(dataplane);
        assert!(!pins.exists(), "pins left behind");
        let link = Command::new("ip")
            .args(["-d", "link", "show", "ext0"])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&link.stdout).contains("prog/xdp"),
            "XDP still attached after drop"
        );
    });
}

/// Keeps the calling thread on one CPU (the first it may use): the next-hop cache
/// is per CPU, so a test that looks at what a later packet finds there must send
/// every packet from the same CPU.
fn stay_on_one_cpu() {
    use nix::{sched, unistd::Pid};
    let allowed = sched::sched_getaffinity(Pid::from_raw(0)).expect("sched_getaffinity");
    let cpu = (0..sched::CpuSet::count())
        .find(|cpu| allowed.is_set(*cpu).unwrap_or(false))
        .expect("no CPU in this thread's affinity mask");
    let mut one = sched::CpuSet::new();
    one.set(cpu).unwrap();
    sched::sched_setaffinity(Pid::from_raw(0), &one).expect("sched_setaffinity");
}

/// For the next-hop cache tests: [`in_netns`] on one CPU (see [`stay_on_one_cpu`]),
/// with the table and a next-hop TTL long enough that no part of a test can outlive
/// it on a slow machine.
fn in_netns_caching(test: impl FnOnce(&mut Bed) + Send + 'static) {
    in_netns(false, |bed| {
        stay_on_one_cpu();
        bed.table();
        bed.set_ttl(Duration::from_secs(600));
        test(bed);
    });
}

/// The next hops cached for node index `index`, on the CPUs that have one.
fn cached(bed: &Bed, index: u32) -> Vec<NextHop> {
    let hops = bed.dataplane.cached_next_hops(index);
    hops.unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .flatten()
        .collect()
}

/// The next hops cached for `client`, on the CPUs that have one.
fn cached_client(bed: &Bed, client: Ipv4Addr) -> Vec<NextHop> {
    let hops = bed.dataplane.cached_client_next_hops(client);
    hops.unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .flatten()
        .collect()
}

/// What both next-hop caches (nodes', clients') do. `frame`, arriving on the other
/// side, must leave for `hop` as `sent(hop's MAC)`; the lookup's answer is cached
/// (`cache` reads it) and used while the TTL lasts, even after the neighbour's MAC
/// has changed; its MTU is still checked (`big`, one byte over, is handed over and
/// caches nothing); after the TTL the kernel is asked again.
fn reused_until_the_ttl_runs_out(
    bed: &mut Bed,
    frame: &[u8],
    sent: impl Fn(Mac) -> Expect,
    big: (&[u8], Expect),
    hop: NextHop,
    cache: impl Fn(&Bed) -> Vec<NextHop>,
) {
    let (side, dev) = if hop.ifindex == bed.int {
        (Ext, "int0")
    } else {
        (Int, "ext0")
    };
    assert!(cache(bed).is_empty(), "nothing is cached before a packet");
    bed.check("the first frame", side, frame, &sent(hop.dmac));
    // What the lookup answered, with the route's MTU (the veth's 1500).
    assert_eq!(cache(bed), vec![hop]);

    let new_mac = [0x02, 0, 0, 0, hop.dmac[4], 0xee];
    set_neighbour(hop.addr, new_mac, dev);
    for _ in 0..3 {
        bed.check("cached MAC within the TTL", side, frame, &sent(hop.dmac));
    }
    bed.check("one byte over the cached MTU", side, big.0, &big.1);
    assert_eq!(cache(bed), vec![hop], "a hand-over caches nothing");

    // Once the TTL has run out the kernel is asked again, and its answer cached.
    bed.set_ttl(Duration::from_millis(1));
    // bpf_ktime_get_coarse_ns advances once per jiffy (1-10 ms).
    std::thread::sleep(Duration::from_millis(50));
    bed.check("new MAC after the TTL", side, frame, &sent(new_mac));
    let new_hop = NextHop {
        dmac: new_mac,
        ..hop
    };
    assert_eq!(cache(bed), vec![new_hop]);
}

#[test]
fn a_node_s_next_hop_is_reused_until_the_ttl_runs_out() {
    in_netns_caching(|bed| {
        let syn = from_client((VIP, 8001), 64, TcpSyn, &[]);
        let to_node = |mac| In(to_node(mac, (NODE_A, 8001), 63, TcpSyn, &[]));
        let over = vec![7u8; 1500 - 40 + 1];
        let big = from_client((VIP, 8001), 64, TcpData, &over);
        let big_out = Handoff("pass_mtu", from_client((NODE_A, 8001), 64, TcpData, &over));
        let hop = NextHop {
            addr: NODE_A,
            ifindex: bed.int,
            dmac: NODE_A_MAC,
            smac: INT_MAC,
            mtu: 1500,
        };
        reused_until_the_ttl_runs_out(bed, &syn, to_node, (&big, big_out), hop, |bed| {
            cached(bed, 0)
        });

        // TTL 0: every packet is looked up, so a change shows at once.
        bed.set_ttl(Duration::ZERO);
        set_neighbour(NODE_A, NODE_A_MAC, "int0");
        bed.check(
            "TTL 0 looks up every packet",
            Ext,
            &syn,
            &to_node(NODE_A_MAC),
        );

        // A next hop that does not resolve is handed over and never cached, cache
        // or not.
        bed.set_ttl(Duration::from_secs(600));
        let unresolved = from_client((VIP, 8016), 64, TcpSyn, &[]);
        let to_unresolved = from_client((NODE_UNRESOLVED, 8016), 64, TcpSyn, &[]);
        let no_neigh = Handoff("pass_no_neigh", to_unresolved);
        for _ in 0..2 {
            bed.check("route 17, not a neighbour", Ext, &unresolved, &no_neigh);
        }
        assert!(cached(bed, 2).is_empty(), "NO_NEIGH is not cached");
        assert_eq!(bed.reason("forwarded_in"), 6);
    });
}

#[test]
fn a_client_s_next_hop_is_reused_until_the_ttl_runs_out() {
    in_netns_caching(|bed| {
        let answer = from_node(NODE_A_MAC, (NODE_A, 8001), 64, TcpData, b"answer");
        let to_client = |mac| {
            Out(frame(
                (EXT_MAC, mac),
                (VIP, 8001),
                (CLIENT, 40000),
                63,
                TcpData,
                b"answer",
            ))
        };
        // Over the cached MTU: handed to the kernel, already from the VIP.
        let over = vec![1u8; 1500 - 40 + 1];
        let big = from_node(NODE_A_MAC, (NODE_A, 8001), 64, TcpData, &over);
        let big_out = Handoff(
            "pass_mtu",
            from_node(NODE_A_MAC, (VIP, 8001), 64, TcpData, &over),
        );
        let hop = NextHop {
            addr: CLIENT,
            ifindex: bed.ext,
            dmac: CLIENT_MAC,
            smac: EXT_MAC,
            mtu: 1500,
        };
        reused_until_the_ttl_runs_out(bed, &answer, to_client, (&big, big_out), hop, |bed| {
            cached_client(bed, CLIENT)
        });
        assert_eq!(bed.reason("forwarded_out"), 5);
    });
}

#[test]
fn clients_sharing_a_cache_slot_never_get_each_other_s_next_hop() {
    in_netns_caching(|bed| {
        // Two client addresses with the same CLIENT_NEXT_HOP slot, reachable on ext0.
        run(&["ip", "route", "add", "198.18.0.0/20", "dev", "ext0"]);
        let addresses: Vec<Ipv4Addr> = (1..16u8)
            .flat_map(|third| (1..255u8).map(move |last| Ipv4Addr::new(198, 18, third, last)))
            .collect();
        let (first, second) = addresses
            .iter()
            .enumerate()
            .find_map(|(i, a)| {
                let slot = halod_common::maps::client_slot(a.octets());
                addresses[i + 1..]
                    .iter()
                    .find(|b| halod_common::maps::client_slot(b.octets()) == slot)
                    .map(|b| (*a, *b))
            })
            .expect("two addresses in 198.18.1.0-198.18.15.255 share a slot");
        let clients = [
            (first, [0x02, 0, 0, 0, 0xc1, 0x01]),
            (second, [0x02, 0, 0, 0, 0xc2, 0x02]),
        ];
        for (client, client_mac) in clients {
            set_neighbour(client, client_mac, "ext0");
        }
        for round in 0..3 {
            for (client, client_mac) in clients {
                let udp = |macs, src, ttl| frame(macs, src, (client, 40000), ttl, Udp, b"x");
                let answer = udp((NODE_A_MAC, INT_MAC), (NODE_A, 8001), 64);
                let out = Out(udp((EXT_MAC, client_mac), (VIP, 8001), 63));
                bed.check(
                    &format!("round {round}, client {client}"),
                    Int,
                    &answer,
                    &out,
                );
                // The slot now holds this client's entry, and not the other's.
                let cached = cached_client(bed, client);
                assert_eq!(cached.len(), 1);
                assert_eq!(cached[0].dmac, client_mac);
            }
        }
    });
}

#[test]
fn a_slot_rewritten_to_another_address_never_uses_the_old_next_hop() {
    in_netns_caching(|bed| {
        let spare = Ipv4Addr::new(198, 19, 0, 20);
        let spare_mac = [0x02, 0, 0, 0, 0x20, 0x20];
        set_neighbour(spare, spare_mac, "int0");
        let syn = from_client((VIP, 8001), 64, TcpSyn, &[]);
        let to_a = In(to_node(NODE_A_MAC, (NODE_A, 8001), 63, TcpSyn, &[]));
        bed.check("SYN to route 2, node A's", Ext, &syn, &to_a);
        assert_eq!(cached(bed, 0).len(), 1);
        assert_eq!(cached(bed, 0)[0].addr, NODE_A);

        // Slot 1 now holds another address under the same node index (0), well
        // within the TTL: the entry cached for node A must not be used.
        bed.apply(&[slot(1, spare, 0)]);
        let to_spare = In(to_node(spare_mac, (spare, 8001), 63, TcpSyn, &[]));
        bed.check("SYN to route 2, now the spare's", Ext, &syn, &to_spare);
        let now = cached(bed, 0);
        assert_eq!(now.len(), 1);
        assert_eq!((now[0].addr, now[0].dmac), (spare, spare_mac));

        // And back: node A again gets node A's MAC, not the spare's.
        bed.apply(&[slot(1, NODE_A, 0)]);
        bed.check("SYN to route 2, node A's again", Ext, &syn, &to_a);
    });
}

#[test]
fn an_adopting_program_gets_a_fresh_config_and_cache() {
    in_netns(false, |_bed| {
        let instance = format!("xdp-adopt-{}", std::process::id());
        let config = dataplane_config(&instance, "int0");
        let pins = std::path::Path::new("/sys/fs/bpf/halod").join(&instance);
        let ext = nix::net::if_::if_nametoindex("ext0").unwrap();
        let syn = from_client((VIP, 8001), 64, TcpSyn, &[]);
        let mut first = Dataplane::start(&config).unwrap_or_else(|e| panic!("{e}"));
        first
            .apply(&[
                slot(1, NODE_A, 0),
                Write::Route {
                    route: 2,
                    slot: Some(1),
                },
            ])
            .unwrap();
        let (verdict, _) = first.test_run(&syn, ext).unwrap();
        assert_eq!(verdict, XDP_REDIRECT);
        first.keep_on_drop();
        drop(first);
        assert!(pins.join("CONFIG").exists());
        assert!(
            !pins.join("NEXT_HOP").exists(),
            "the next-hop cache is not pinned"
        );

        let adopted = Dataplane::adopt(&config)
            .unwrap_or_else(|e| panic!("{e}"))
            .expect("the kept data plane is adopted");
        // The table was kept, the cache starts empty, and the new CONFIG is pinned
        // in place of the old one.
        assert_eq!(adopted.table().unwrap().0[1], Some(1));
        assert!(
            adopted
                .cached_next_hops(0)
                .unwrap()
                .iter()
                .all(Option::is_none)
        );
        assert!(pins.join("CONFIG").exists());
        let (verdict, out) = adopted.test_run(&syn, ext).unwrap();
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(&out[..6], &NODE_A_MAC);
        drop(adopted);
        assert!(!pins.exists(), "pins left behind");
    });
}

/// A node of the drain tests, as the data plane knows it.
#[derive(Clone, Copy, Debug)]
struct Node {
    addr: Ipv4Addr,
    mac: Mac,
    index: u32,
}

/// Node A (slot 1), node B (slot 2) of [`Bed::table`]; node C joins into slot 4.
const A: Node = Node {
    addr: NODE_A,
    mac: NODE_A_MAC,
    index: 0,
};
const B: Node = Node {
    addr: NODE_B,
    mac: NODE_B_MAC,
    index: 1,
};
const C: Node = Node {
    addr: NODE_C,
    mac: NODE_C_MAC,
    index: 3,
};

impl Node {
    fn target(self) -> NodeTarget {
        NodeTarget {
            addr: self.addr,
            index: self.index,
        }
    }
}

/// A drain window no test outlives.
const WINDOW: Duration = Duration::from_secs(600);

fn drain(route: u16, from: Node, window: Duration) -> Write {
    Write::Drain {
        route,
        from: from.target(),
        window,
    }
}

fn route(route: u16, slot: u16) -> Write {
    Write::Route {
        route,
        slot: Some(slot),
    }
}

/// Node C joins into slot 4 and takes `routes` from node A, which stays
/// alive: the manager's batch, its drains first.
fn c_joins(bed: &mut Bed, routes: &[u16], window: Duration) {
    let mut writes: Vec<Write> = routes.iter().map(|&r| drain(r, A, window)).collect();
    writes.push(slot(4, NODE_C, C.index));
    writes.extend(routes.iter().map(|&r| route(r, 4)));
    bed.apply(&writes);
}

/// The case of a client's `seg` from `port` to VIP port `vip_port`, which
/// must leave for `node`.
fn via(
    name: &str,
    port: u16,
    vip_port: u16,
    seg: Segment,
    node: Node,
) -> (String, Side, Vec<u8>, Expect) {
    let payload: &[u8] = match seg {
        TcpData | Udp => b"data",
        TcpSyn | TcpFin => b"",
    };
    let client = (CLIENT, port);
    let input = frame(
        (CLIENT_MAC, EXT_MAC),
        client,
        (VIP, vip_port),
        64,
        seg,
        payload,
    );
    let out = frame(
        (INT_MAC, node.mac),
        client,
        (node.addr, vip_port),
        63,
        seg,
        payload,
    );
    let name = format!("{name} (port {port} to {vip_port}, for {})", node.addr);
    (name, Ext, input, In(out))
}

/// The case of `node`'s answer from route port `vip_port` to client port
/// `port`, which must leave from the VIP.
fn answer(name: &str, node: Node, vip_port: u16, port: u16) -> (String, Side, Vec<u8>, Expect) {
    let client = (CLIENT, port);
    let input = frame(
        (node.mac, INT_MAC),
        (node.addr, vip_port),
        client,
        64,
        TcpData,
        b"answer",
    );
    let out = frame(
        (EXT_MAC, CLIENT_MAC),
        (VIP, vip_port),
        client,
        63,
        TcpData,
        b"answer",
    );
    (
        format!("{name} ({} port {vip_port})", node.addr),
        Int,
        input,
        Out(out),
    )
}

impl Bed {
    fn drain_stats(&self) -> DrainStats {
        self.dataplane.stats().unwrap().drain
    }

    fn node_packets(&self, node: Node) -> u64 {
        self.dataplane.stats().unwrap().nodes[node.index as usize].packets
    }

    /// The recorded connections: (route, client port, node).
    fn drain_flows(&self) -> Vec<(u16, u16, Ipv4Addr)> {
        let flows = self
            .dataplane
            .drain_flows()
            .unwrap_or_else(|e| panic!("{e}"));
        flows
            .into_iter()
            .map(|(route, client, node)| {
                assert_eq!(*client.ip(), CLIENT);
                (route, client.port(), node.addr)
            })
            .collect()
    }

    /// The drains in progress: (route, old node).
    fn drains(&self) -> Vec<(u16, Ipv4Addr)> {
        let drains = self.dataplane.drains();
        drains.iter().map(|(r, from, _)| (*r, from.addr)).collect()
    }
}

fn drain_stats(to_old: u64, new_flows: u64, full: u64) -> DrainStats {
    DrainStats {
        to_old,
        new_flows,
        full,
    }
}

#[test]
fn a_moved_route_s_open_connections_drain_to_the_old_node() {
    in_netns(false, |bed| {
        bed.table();
        c_joins(bed, &[2], WINDOW);
        // ROUTE_SLOT holds the slot with the DRAINING bit: read back without it.
        let (routes, slots) = bed.dataplane.table().unwrap();
        assert_eq!(routes[1], Some(4), "route 2, draining");
        assert_eq!((routes[0], routes[2]), (Some(1), Some(1)));
        assert_eq!(slots[3], Some(C.target()));
        assert_eq!(bed.drains(), vec![(2, NODE_A)]);
        // Client port 40000 had a connection open at the move; 40001 opens
        // one since. The flow key is the route: route 2's port in the other
        // listener group (9001) is the same route.
        bed.check_all([
            via("an older connection's data", 40000, 8001, TcpData, A),
            via("a new connection's SYN", 40001, 8001, TcpSyn, C),
            via("its ACK", 40001, 8001, TcpData, C),
            via("the older connection again", 40000, 8001, TcpData, A),
            via("the other listener group", 40000, 9001, TcpData, A),
            via("the older connection's FIN", 40000, 8001, TcpFin, A),
            via("the new connection's FIN", 40001, 8001, TcpFin, C),
            via("UDP", 5353, 8001, Udp, C),
            via("UDP in the other group", 5353, 9001, Udp, C),
        ]);
        assert_eq!(bed.drain_stats(), drain_stats(4, 1, 0));
        assert_eq!(bed.drain_flows(), vec![(2, 40001, NODE_C)]);
        assert_eq!((bed.node_packets(A), bed.node_packets(C)), (4, 5));
        // Routes that do not drain, on the old node's slot and another:
        // untouched, and nothing counted for drains.
        bed.check_all([
            via("route 3's data", 40000, 8002, TcpData, A),
            via("route 3's SYN", 40001, 8002, TcpSyn, A),
            via("route 10's data", 40000, 8009, TcpData, B),
            via("route 10's SYN", 40002, 9009, TcpSyn, B),
        ]);
        assert_eq!(bed.drain_stats(), drain_stats(4, 1, 0));
        assert_eq!(bed.drain_flows(), vec![(2, 40001, NODE_C)]);
        // Both nodes' answers leave from the VIP.
        bed.check_all([
            answer("the old node's answer", A, 8001, 40000),
            answer("the new node's answer", C, 8001, 40001),
        ]);
        let stats = bed.dataplane.stats().unwrap();
        assert_eq!(stats.nodes[0].packets, 4 + 2 + 1);
        assert_eq!(stats.nodes[1].packets, 2);
        assert_eq!(stats.nodes[3].packets, 5 + 1);
        assert_eq!(stats.routes[1].packets, 9 + 2);
    });
}

#[test]
fn a_drain_past_its_window_follows_the_slot() {
    in_netns(false, |bed| {
        bed.table();
        // Route 2 with no window at all, route 3 with 1 ms.
        bed.apply(&[
            drain(2, A, Duration::ZERO),
            drain(3, A, Duration::from_millis(1)),
            slot(4, NODE_C, C.index),
            route(2, 4),
            route(3, 4),
        ]);
        // bpf_ktime_get_coarse_ns advances once per jiffy (1-10 ms).
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(bed.drains(), vec![], "no drain in progress");
        let (routes, _) = bed.dataplane.table().unwrap();
        assert_eq!((routes[1], routes[2]), (Some(4), Some(4)));
        bed.check_all([
            via("an older connection's data", 40000, 8001, TcpData, C),
            via("a SYN", 40001, 8001, TcpSyn, C),
            via("UDP", 5353, 8001, Udp, C),
            via("an older connection's data", 40000, 8002, TcpData, C),
            via("a SYN", 40001, 8002, TcpSyn, C),
            via("its ACK", 40001, 8002, TcpData, C),
        ]);
        assert_eq!(bed.drain_stats(), drain_stats(0, 0, 0));
        assert_eq!(bed.drain_flows(), vec![]);
        assert_eq!((bed.node_packets(A), bed.node_packets(C)), (0, 6));
    });
}

#[test]
fn a_drain_s_end_sends_everything_through_the_slot_and_forgets_its_flows() {
    in_netns(false, |bed| {
        bed.table();
        c_joins(bed, &[2, 3], WINDOW);
        bed.check_all([
            via("a SYN to route 2", 40001, 8001, TcpSyn, C),
            via("a SYN to route 3", 40001, 8002, TcpSyn, C),
            via("route 2's older connection", 40000, 8001, TcpData, A),
        ]);
        let both = vec![(2, 40001, NODE_C), (3, 40001, NODE_C)];
        assert_eq!(bed.drain_flows(), both);
        bed.apply(&[Write::DrainEnd { route: 2 }]);
        assert_eq!(bed.drains(), vec![(3, NODE_A)]);
        assert_eq!(bed.drain_flows(), vec![(3, 40001, NODE_C)]);
        let (routes, _) = bed.dataplane.table().unwrap();
        assert_eq!((routes[1], routes[2]), (Some(4), Some(4)));
        bed.check_all([
            via("route 2's older connection", 40000, 8001, TcpData, C),
            via("route 2's new connection", 40001, 8001, TcpData, C),
            via("a SYN to route 2", 40002, 8001, TcpSyn, C),
            via("route 3's older connection", 40000, 8002, TcpData, A),
            via("route 3's new connection", 40001, 8002, TcpData, C),
        ]);
        assert_eq!(bed.drain_stats(), drain_stats(2, 2, 0));
        assert_eq!(bed.drain_flows(), vec![(3, 40001, NODE_C)]);
        // The last one ends: nothing is recorded any more.
        bed.apply(&[Write::DrainEnd { route: 3 }]);
        assert_eq!(bed.drain_flows(), vec![]);
        bed.check_all([via("route 3's older connection", 40000, 8002, TcpData, C)]);
        assert_eq!(bed.drain_stats(), drain_stats(2, 2, 0));
    });
}

#[test]
fn a_route_that_moves_again_while_it_drains_keeps_its_old_node_and_its_flows() {
    in_netns(false, |bed| {
        bed.table();
        c_joins(bed, &[2], WINDOW);
        bed.check_all([via("a SYN while on node C", 40001, 8001, TcpSyn, C)]);
        let (_, _, left) = bed.dataplane.drains()[0];
        // Route 2 moves on from node C to node B (slot 2): the manager names
        // the node the route left first.
        bed.apply(&[drain(2, A, WINDOW), route(2, 2)]);
        assert_eq!(bed.drains(), vec![(2, NODE_A)]);
        let (_, _, now_left) = bed.dataplane.drains()[0];
        assert!(now_left >= left - Duration::from_secs(1), "{now_left:?}");
        let (routes, _) = bed.dataplane.table().unwrap();
        assert_eq!(routes[1], Some(2));
        bed.check_all([
            via(
                "the connection older than both moves",
                40000,
                8001,
                TcpData,
                A,
            ),
            via("the connection opened on node C", 40001, 8001, TcpData, C),
            via("a SYN while on node B", 40002, 8001, TcpSyn, B),
            via("its ACK", 40002, 8001, TcpData, B),
            via("UDP", 5353, 8001, Udp, B),
        ]);
        assert_eq!(
            bed.drain_flows(),
            vec![(2, 40001, NODE_C), (2, 40002, NODE_B)]
        );
        assert_eq!(bed.drain_stats(), drain_stats(1, 2, 0));
        let counts = [A, B, C].map(|node| bed.node_packets(node));
        assert_eq!(counts, [1, 3, 2]);
    });
}

#[test]
fn a_drain_s_new_node_replaced_in_its_slot_gets_the_new_connections() {
    in_netns(false, |bed| {
        bed.table();
        c_joins(bed, &[2], WINDOW);
        bed.check_all([via("a SYN to node C", 40001, 8001, TcpSyn, C)]);
        // Node C fails and a spare takes its slot: the drain follows.
        let spare = Node {
            addr: Ipv4Addr::new(198, 19, 0, 20),
            mac: [0x02, 0, 0, 0, 0x20, 0x20],
            index: 5,
        };
        set_neighbour(spare.addr, spare.mac, "int0");
        bed.apply(&[slot(4, spare.addr, spare.index)]);
        bed.check_all([
            via("a SYN", 40002, 8001, TcpSyn, spare),
            via("its ACK", 40002, 8001, TcpData, spare),
            via("UDP", 5353, 8001, Udp, spare),
            via("the connection opened to node C", 40001, 8001, TcpData, C),
            via("an older connection", 40000, 8001, TcpData, A),
        ]);
        assert_eq!(bed.drain_stats(), drain_stats(1, 2, 0));
        // The route loses its node: new connections have nowhere to go,
        // older ones still reach the old node.
        bed.apply(&[Write::Route {
            route: 2,
            slot: None,
        }]);
        let syn = from_client((VIP, 8001), 64, TcpSyn, &[]);
        let udp = from_client((VIP, 8001), 64, Udp, b"x");
        bed.check_all([
            (
                "a SYN to the emptied route".into(),
                Ext,
                syn,
                Pass("pass_no_node"),
            ),
            (
                "UDP to the emptied route".into(),
                Ext,
                udp,
                Pass("pass_no_node"),
            ),
            via("an older connection", 40000, 8001, TcpData, A),
            via("the connection opened to node C", 40001, 8001, TcpData, C),
        ]);
        assert_eq!(bed.drain_stats(), drain_stats(2, 2, 0));
    });
}

#[test]
fn a_full_drain_flow_table_leaves_new_connections_with_the_old_node() {
    in_netns_with(false, 4, |bed| {
        bed.table();
        c_joins(bed, &[2, 3], WINDOW);
        bed.check_all([
            via("route 3's SYN", 41000, 8002, TcpSyn, C),
            via("route 3's SYN", 41001, 8002, TcpSyn, C),
            via("route 2's SYN", 41002, 8001, TcpSyn, C),
            via("route 2's SYN", 41003, 8001, TcpSyn, C),
        ]);
        assert_eq!(bed.drain_flows().len(), 4);
        assert_eq!(bed.drain_stats(), drain_stats(0, 4, 0));
        // No room: the connection is the old node's, from its SYN on.
        bed.check_all([
            via("a SYN with no room", 41004, 8001, TcpSyn, A),
            via("its ACK", 41004, 8001, TcpData, A),
            via("a recorded connection", 41002, 8001, TcpData, C),
            via("a recorded connection's SYN again", 41003, 8001, TcpSyn, C),
            via("an older connection", 40000, 8001, TcpData, A),
        ]);
        let stats = bed.drain_stats();
        assert_eq!((stats.full, stats.to_old), (1, 3), "{stats:?}");
        assert!(
            !bed.drain_flows().iter().any(|(_, port, _)| *port == 41004),
            "{:?}",
            bed.drain_flows()
        );
        // Route 3's drain ends: its room goes to route 2's new connections.
        bed.apply(&[Write::DrainEnd { route: 3 }]);
        assert_eq!(bed.drain_flows().len(), 2);
        bed.check_all([
            via("a SYN after the room was freed", 41005, 8001, TcpSyn, C),
            via("its ACK", 41005, 8001, TcpData, C),
            via("the connection that found no room", 41004, 8001, TcpData, A),
        ]);
        assert_eq!(bed.drain_stats().full, 1);
    });
}

#[test]
fn a_node_that_left_keeps_its_connections_and_its_answers_leave_from_the_vip() {
    in_netns(false, |bed| {
        bed.table();
        // Node B leaves (`bye`): its routes 9-16 drain from it to node A, its
        // slot is emptied.
        let mut writes: Vec<Write> = (9..=16).map(|r| drain(r, B, WINDOW)).collect();
        writes.extend((9..=16).map(|r| route(r, 1)));
        writes.push(Write::Slot {
            slot: 2,
            node: None,
        });
        bed.apply(&writes);
        let (routes, slots) = bed.dataplane.table().unwrap();
        assert_eq!(routes[9], Some(1));
        assert_eq!(slots[1], None);
        bed.check_all([
            via("an older connection", 40000, 8009, TcpData, B),
            answer("the node that left answers", B, 8009, 40000),
            via("a SYN", 40001, 8009, TcpSyn, A),
            answer("the new node answers", A, 8009, 40001),
            via("the older connection's FIN", 40000, 9009, TcpFin, B),
        ]);
        assert_eq!(bed.drain_stats(), drain_stats(2, 1, 0));
        assert_eq!((bed.node_packets(A), bed.node_packets(B)), (2, 3));
        // Once the drains end, the node's late answers still leave from the VIP.
        let ends: Vec<Write> = (9..=16).map(|route| Write::DrainEnd { route }).collect();
        bed.apply(&ends);
        bed.check_all([
            via(
                "the older connection after the end",
                40000,
                8009,
                TcpData,
                A,
            ),
            answer("the node that left, late", B, 8009, 40000),
        ]);
    });
}

#[test]
fn a_batch_that_ends_a_route_s_drain_and_starts_another_keeps_the_new_one() {
    in_netns(false, |bed| {
        bed.table();
        c_joins(bed, &[2], WINDOW);
        bed.check_all([via("a SYN to node C", 40001, 8001, TcpSyn, C)]);
        // Node A fails (its drains end) and the same plan moves route 2 on
        // from node C, alive, to node B: a new drain, from node C.
        bed.apply(&[
            Write::DrainEnd { route: 2 },
            drain(2, C, WINDOW),
            route(2, 2),
        ]);
        assert_eq!(bed.drains(), vec![(2, NODE_C)]);
        bed.check_all([
            via("an older connection", 40000, 8001, TcpData, C),
            via("the connection opened to node C", 40001, 8001, TcpData, C),
            via("a SYN", 40002, 8001, TcpSyn, B),
            via("its ACK", 40002, 8001, TcpData, B),
        ]);
    });
}

/// The dead-node flush's record: a SYN through the VIP is recorded in
/// `RECENT_FLOWS` with the node it went to and the VIP port it used; data and
/// UDP are not; the client's FIN removes it.
#[test]
fn syns_through_the_vip_are_recorded_for_the_flush() {
    in_netns(false, |bed| {
        bed.table();
        let flows = |bed: &Bed| {
            let mut flows: Vec<(Ipv4Addr, u16, u16, u32)> = bed
                .dataplane
                .recent_flows()
                .unwrap()
                .into_iter()
                .map(|(flow, index)| {
                    (
                        Ipv4Addr::from(flow.client),
                        u16::from_be_bytes(flow.client_port),
                        u16::from_be_bytes(flow.vip_port),
                        index,
                    )
                })
                .collect();
            flows.sort();
            flows
        };
        assert!(flows(bed).is_empty());
        // Data of a connection opened before, and UDP: nothing recorded.
        bed.check(
            "data",
            Ext,
            &from_client((VIP, 8001), 64, TcpData, b"x"),
            &Redirected,
        );
        bed.check(
            "udp",
            Ext,
            &from_client((VIP, 8002), 64, Udp, b"x"),
            &Redirected,
        );
        assert!(flows(bed).is_empty(), "only SYNs are recorded");
        // A SYN to route 2 (slot 1, node A, index 0) on the second listener
        // group's port, and one to route 10 (node B, index 1).
        bed.check(
            "syn A",
            Ext,
            &from_client((VIP, 9001), 64, TcpSyn, b""),
            &Redirected,
        );
        bed.check(
            "syn B",
            Ext,
            &from_client((VIP, 8009), 64, TcpSyn, b""),
            &Redirected,
        );
        assert_eq!(
            flows(bed),
            vec![(CLIENT, 40000, 8009, 1), (CLIENT, 40000, 9001, 0)]
        );
        // A SYN to a route without a node: passed, not recorded.
        bed.check(
            "syn no node",
            Ext,
            &from_client((VIP, 8022), 64, TcpSyn, b""),
            &Pass("pass_no_node"),
        );
        assert_eq!(flows(bed).len(), 2);
        // The client's FIN ends the record of its connection only.
        bed.check(
            "fin",
            Ext,
            &from_client((VIP, 9001), 64, TcpFin, b""),
            &Redirected,
        );
        assert_eq!(flows(bed), vec![(CLIENT, 40000, 8009, 1)]);
    });
}

/// The connection estimates: a SYN through the VIP counts for its route and
/// its node, the client's FIN takes it off again; data, a retransmitted SYN
/// and a second FIN change nothing.
#[test]
fn syns_and_client_fins_make_the_connection_estimates() {
    in_netns(false, |bed| {
        bed.table();
        // (route 2, route 10, node A (index 0), node B (index 1)).
        let estimates = |bed: &Bed| {
            let connections = bed
                .dataplane
                .stats()
                .unwrap()
                .connections
                .expect("recording is on");
            assert_eq!(connections.routes.len(), usize::from(ROUTES));
            (
                connections.routes[1],
                connections.routes[9],
                connections.nodes[0],
                connections.nodes[1],
            )
        };
        assert_eq!(estimates(bed), (0, 0, 0, 0));
        let data = from_client((VIP, 9001), 64, TcpData, b"x");
        bed.check("data", Ext, &data, &Redirected);
        assert_eq!(estimates(bed), (0, 0, 0, 0), "data opens nothing");
        // Route 2 (node A) on the second listener group's port, twice (a
        // retransmission), then route 10 (node B).
        let syn = from_client((VIP, 9001), 64, TcpSyn, b"");
        bed.check("syn A", Ext, &syn, &Redirected);
        assert_eq!(estimates(bed), (1, 0, 1, 0));
        bed.check("syn A again", Ext, &syn, &Redirected);
        assert_eq!(estimates(bed), (1, 0, 1, 0), "a retransmitted SYN");
        bed.check(
            "syn B",
            Ext,
            &from_client((VIP, 8009), 64, TcpSyn, b""),
            &Redirected,
        );
        assert_eq!(estimates(bed), (1, 1, 1, 1));
        bed.check("data again", Ext, &data, &Redirected);
        assert_eq!(estimates(bed), (1, 1, 1, 1));
        // The client's FIN of route 2's connection ends it, once.
        let fin = from_client((VIP, 9001), 64, TcpFin, b"");
        bed.check("fin", Ext, &fin, &Redirected);
        assert_eq!(estimates(bed), (0, 1, 0, 1));
        bed.check("fin again", Ext, &fin, &Redirected);
        assert_eq!(estimates(bed), (0, 1, 0, 1), "no connection to end");
    });
}

/// Without the dead-node flush nothing is recorded: the stats say there are
/// no estimates rather than zeros.
#[test]
fn without_recording_there_are_no_connection_estimates() {
    in_netns_configured(false, 1024, 0, |bed| {
        bed.table();
        bed.check(
            "syn",
            Ext,
            &from_client((VIP, 9001), 64, TcpSyn, b""),
            &Redirected,
        );
        assert_eq!(bed.dataplane.stats().unwrap().connections, None);
    });
}

/// The gateway's own address on the node side, where heartbeats go.
const GATEWAY_INT: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
const HEARTBEAT_PORT: u16 = 7000;

/// A UDP datagram from `src` (MAC `mac`) to the gateway's `port`.
fn to_gateway(mac: Mac, src: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    frame(
        (mac, INT_MAC),
        (src, 45000),
        (GATEWAY_INT, port),
        64,
        Udp,
        payload,
    )
}

/// A heartbeat payload as docs/protocol.md spells it, built here byte by
/// byte, not by the code under test.
fn heartbeat(id: u32, key: u64) -> Vec<u8> {
    let mut payload = b"HLHB".to_vec();
    payload.extend_from_slice(&id.to_be_bytes());
    payload.extend_from_slice(&key.to_be_bytes());
    payload
}

#[test]
fn udp_heartbeats_are_stamped_and_dropped_and_nothing_else_is() {
    in_netns(false, |bed| {
        bed.table();
        bed.dataplane.set_heartbeat_port(HEARTBEAT_PORT).unwrap();
        let stamps = bed.dataplane.heartbeats().unwrap();
        assert_eq!(stamps.len(), 8);
        // Node A (index 0) is active; node C (index 3) a spare, in no slot.
        const KEY_A: u64 = 0x1122_3344_5566_7788;
        const KEY_C: u64 = 0x0102_0304_0506_0708;
        assert!(stamps.arm(0, KEY_A, NODE_A, 1));
        assert!(stamps.arm(3, KEY_C, NODE_C, 1));
        assert!(stamps.arm(1, 0x99, NODE_B, 1));

        // Stamped and dropped.
        for (name, mac, src, id, key) in [
            ("an active node's heartbeat", NODE_A_MAC, NODE_A, 0, KEY_A),
            ("a spare's heartbeat", NODE_C_MAC, NODE_C, 3, KEY_C),
        ] {
            let before = bed.reason("heartbeat");
            let (verdict, _) = bed.run(
                &to_gateway(mac, src, HEARTBEAT_PORT, &heartbeat(id, key)),
                bed.int,
            );
            assert_eq!(verdict, XDP_DROP, "{name}: verdict");
            assert_eq!(bed.reason("heartbeat"), before + 1, "{name}: counter");
            let stamp = stamps.last_ns(id).unwrap();
            let now = halod::dataplane::heartbeats::coarse_now_ns();
            assert!(
                stamp > 1 && stamp <= now,
                "{name}: stamp {stamp}, now {now}"
            );
        }

        // Refused: counted, dropped, nothing stamped.
        let stamp_a = stamps.last_ns(0).unwrap();
        let stamp_b = stamps.last_ns(1).unwrap();
        for (name, mac, src, payload) in [
            ("a wrong key", NODE_A_MAC, NODE_A, heartbeat(0, KEY_A ^ 1)),
            ("key 0", NODE_A_MAC, NODE_A, heartbeat(0, 0)),
            (
                "node B's id from node A",
                NODE_A_MAC,
                NODE_A,
                heartbeat(1, 0x99),
            ),
            (
                "an id past the table",
                NODE_A_MAC,
                NODE_A,
                heartbeat(8, KEY_A),
            ),
            ("an id with no node", NODE_A_MAC, NODE_A, heartbeat(5, 0)),
            (
                "node A's key from another address",
                NODE_C_MAC,
                Ipv4Addr::new(198, 19, 0, 77),
                heartbeat(0, KEY_A),
            ),
        ] {
            let before = bed.reason("drop_heartbeat");
            let (verdict, _) = bed.run(&to_gateway(mac, src, HEARTBEAT_PORT, &payload), bed.int);
            assert_eq!(verdict, XDP_DROP, "{name}: verdict");
            assert_eq!(bed.reason("drop_heartbeat"), before + 1, "{name}: counter");
        }
        assert_eq!(
            stamps.last_ns(0),
            Some(stamp_a),
            "node A stamped by a refused heartbeat"
        );
        assert_eq!(
            stamps.last_ns(1),
            Some(stamp_b),
            "node B stamped by a refused heartbeat"
        );

        // Not heartbeats: the kernel's, untouched.
        let good = heartbeat(3, KEY_C);
        let mut other_magic = good.clone();
        other_magic[0] = b'X';
        let mut longer = good.clone();
        longer.push(0);
        let cases = vec![
            (
                "a short payload",
                to_gateway(NODE_C_MAC, NODE_C, HEARTBEAT_PORT, &good[..15]),
            ),
            (
                "a longer payload",
                to_gateway(NODE_C_MAC, NODE_C, HEARTBEAT_PORT, &longer),
            ),
            (
                "another magic",
                to_gateway(NODE_C_MAC, NODE_C, HEARTBEAT_PORT, &other_magic),
            ),
            (
                "another port",
                to_gateway(NODE_C_MAC, NODE_C, HEARTBEAT_PORT + 1, &good),
            ),
        ];
        let stamp_c = stamps.last_ns(3).unwrap();
        bed.check_all(
            cases
                .into_iter()
                .map(|(name, frame)| (name, Int, frame, Pass("pass_not_ours"))),
        );
        assert_eq!(
            stamps.last_ns(3),
            Some(stamp_c),
            "node C stamped by a non-heartbeat"
        );
        // An active node's datagram to the port that is no heartbeat is not
        // taken for one either.
        bed.check(
            "an active node's other datagram to the heartbeat port",
            Int,
            &to_gateway(NODE_A_MAC, NODE_A, HEARTBEAT_PORT, b"hello"),
            &Pass("pass_not_route_port"),
        );
        // A node's answer to a client whose port is the heartbeat port is
        // routed as ever, even with a heartbeat's payload.
        let out = frame(
            (EXT_MAC, CLIENT_MAC),
            (VIP, 8002),
            (CLIENT, HEARTBEAT_PORT),
            63,
            Udp,
            &heartbeat(0, 1),
        );
        bed.check(
            "a node's answer to a client on the heartbeat port",
            Int,
            &frame(
                (NODE_A_MAC, INT_MAC),
                (NODE_A, 8002),
                (CLIENT, HEARTBEAT_PORT),
                64,
                Udp,
                &heartbeat(0, 1),
            ),
            &Out(out),
        );

        // With the port off (0), heartbeats are the kernel's.
        bed.dataplane.set_heartbeat_port(0).unwrap();
        bed.check(
            "a heartbeat while the port is off",
            Int,
            &to_gateway(NODE_C_MAC, NODE_C, HEARTBEAT_PORT, &good),
            &Pass("pass_not_ours"),
        );
    });
}
