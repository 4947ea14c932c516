//! BPF_PROG_TEST_RUN tests: crafted frames through the real XDP program, loaded
//! by the same code as the daemon (`Dataplane::load_unattached`), checking the
//! verdict and every output byte. Frames are built, and the output's checksums
//! recomputed, by etherparse, independent of the program's own arithmetic.
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

use std::{net::Ipv4Addr, process::Command};

use etherparse::{NetHeaders, PacketBuilder, PacketHeaders, TransportHeader};
use halod::dataplane::{Dataplane, NodeTarget, Write};

mod support;
use support::bpf::*;

const NODE_B: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 11);

const NODE_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xb0, 0x0b];

/// The namespace, the interfaces and the loaded program.
struct Bed {
    dataplane: Dataplane,
    ext: u32,
    int: u32,
}

/// Runs `test` in a fresh gateway namespace (`support::in_gateway_netns`) with the
/// program loaded; `shared` puts clients and nodes on one interface (XDP_TX).
fn in_netns(shared: bool, test: impl FnOnce(&mut Bed) + Send + 'static) {
    const NEIGHBOURS: &[(Ipv4Addr, [u8; 6])] = &[
        (CLIENT, CLIENT_MAC),
        (NODE_A, NODE_A_MAC),
        (NODE_B, NODE_B_MAC),
    ];
    in_gateway_netns(shared, NEIGHBOURS, move |interfaces| {
        let config = dataplane_config("xdp-test-run", interfaces.int_name);
        let dataplane = Dataplane::load_unattached(&config).unwrap_or_else(|e| panic!("{e}"));
        let mut bed = Bed {
            dataplane,
            ext: interfaces.ext,
            int: interfaces.int,
        };
        test(&mut bed);
    });
}

impl Bed {
    /// Slot 1 = node A (index 0), slot 2 = node B (index 1), slot 3 = the
    /// unresolved node (index 2); routes 1-8 -> slot 1, 9-16 -> slot 2,
    /// 17-20 -> slot 3, 21-24 none.
    fn table(&mut self) {
        let mut writes = vec![
            Write::Slot {
                slot: 1,
                node: Some(NodeTarget {
                    addr: NODE_A,
                    index: 0,
                }),
            },
            Write::Slot {
                slot: 2,
                node: Some(NodeTarget {
                    addr: NODE_B,
                    index: 1,
                }),
            },
            Write::Slot {
                slot: 3,
                node: Some(NodeTarget {
                    addr: NODE_UNRESOLVED,
                    index: 2,
                }),
            },
        ];
        for route in 1..=20u16 {
            let slot = match route {
                1..=8 => 1,
                9..=16 => 2,
                _ => 3,
            };
            writes.push(Write::Route {
                route,
                slot: Some(slot),
            });
        }
        self.dataplane
            .apply(&writes)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    fn run(&self, frame: &[u8], ingress: u32) -> (u32, Vec<u8>) {
        self.dataplane
            .test_run(frame, ingress)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn reason(&self, name: &str) -> u64 {
        self.dataplane.stats().unwrap().reason(name)
    }

    /// Runs `frame` and checks it was passed untouched, counted under `reason`.
    fn assert_pass(&self, frame: &[u8], ingress: u32, reason: &str) {
        let before = self.reason(reason);
        let (verdict, out) = self.run(frame, ingress);
        assert_eq!(verdict, XDP_PASS, "verdict for a {reason} frame");
        assert_eq!(out, frame, "a passed frame ({reason}) must be untouched");
        assert_eq!(self.reason(reason), before + 1, "counter {reason}");
    }

    /// Runs `frame` and checks it was handed to the kernel as `expected` (the
    /// address already rewritten, TTL and MACs untouched, so the kernel forwards
    /// it itself), counted under `reason`.
    fn assert_handoff(&self, frame: &[u8], ingress: u32, reason: &str, expected: &[u8]) {
        let before = self.reason(reason);
        let (verdict, out) = self.run(frame, ingress);
        assert_eq!(verdict, XDP_PASS, "verdict for a {reason} frame");
        assert_eq!(out, expected, "frame handed to the kernel ({reason})");
        assert_checksums(&out, true);
        assert_eq!(self.reason(reason), before + 1, "counter {reason}");
    }
}

#[derive(Clone, Copy)]
enum Segment {
    TcpSyn,
    TcpData,
    TcpFin,
    Udp,
}

/// An Ethernet/IPv4 frame as etherparse builds it.
fn frame(
    macs: ([u8; 6], [u8; 6]),
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    ttl: u8,
    segment: Segment,
    payload: &[u8],
) -> Vec<u8> {
    let ip = PacketBuilder::ethernet2(macs.0, macs.1).ipv4(src.0.octets(), dst.0.octets(), ttl);
    let mut out = Vec::new();
    match segment {
        Segment::TcpSyn => ip
            .tcp(src.1, dst.1, 1000, 64240)
            .syn()
            .write(&mut out, payload),
        Segment::TcpData => ip
            .tcp(src.1, dst.1, 1001, 502)
            .ack(77)
            .psh()
            .write(&mut out, payload),
        Segment::TcpFin => ip
            .tcp(src.1, dst.1, 5000, 502)
            .ack(78)
            .fin()
            .write(&mut out, payload),
        Segment::Udp => ip.udp(src.1, dst.1).write(&mut out, payload),
    }
    .unwrap();
    out
}

/// A frame from client port 40000 to `dst`, arriving from the client's side.
fn from_client(dst: (Ipv4Addr, u16), ttl: u8, segment: Segment, payload: &[u8]) -> Vec<u8> {
    frame(
        (CLIENT_MAC, EXT_MAC),
        (CLIENT, 40000),
        dst,
        ttl,
        segment,
        payload,
    )
}

/// A frame from `src` to client port 40000, leaving towards the client.
fn to_client(src: (Ipv4Addr, u16), ttl: u8, segment: Segment, payload: &[u8]) -> Vec<u8> {
    frame(
        (EXT_MAC, CLIENT_MAC),
        src,
        (CLIENT, 40000),
        ttl,
        segment,
        payload,
    )
}

/// Recomputes every checksum of `frame` with etherparse and checks them.
fn assert_checksums(frame: &[u8], udp_checksum_expected: bool) {
    let headers = PacketHeaders::from_ethernet_slice(frame).expect("etherparse parses the output");
    let Some(NetHeaders::Ipv4(ip, _)) = &headers.net else {
        panic!("not IPv4")
    };
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "IPv4 header checksum"
    );
    let payload = headers.payload.slice();
    match &headers.transport {
        Some(TransportHeader::Tcp(tcp)) => {
            assert_eq!(
                tcp.checksum,
                tcp.calc_checksum_ipv4(ip, payload).unwrap(),
                "TCP checksum"
            );
        }
        Some(TransportHeader::Udp(udp)) => {
            if udp_checksum_expected {
                assert_eq!(
                    udp.checksum,
                    udp.calc_checksum_ipv4(ip, payload).unwrap(),
                    "UDP checksum"
                );
            } else {
                assert_eq!(udp.checksum, 0, "a zero UDP checksum stays zero");
            }
        }
        other => panic!("unexpected transport {other:?}"),
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
fn inbound_tcp_syn_data_and_fin_are_rewritten_to_the_node() {
    in_netns(false, |bed| {
        bed.table();
        let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        for (segment, payload) in [
            (Segment::TcpSyn, &[][..]),
            (Segment::TcpData, &payload[..]),
            (Segment::TcpFin, &[][..]),
        ] {
            // Route 3 in both listener groups -> slot 1 -> node A.
            for port in [8002, 9002] {
                let input = from_client((VIP, port), 64, segment, payload);
                let (verdict, out) = bed.run(&input, bed.ext);
                assert_eq!(verdict, XDP_REDIRECT);
                let expected = frame(
                    (INT_MAC, NODE_A_MAC),
                    (CLIENT, 40000),
                    (NODE_A, port),
                    63,
                    segment,
                    payload,
                );
                assert_eq!(out, expected, "port {port}");
                assert_checksums(&out, true);
            }
        }
        // Route 10 -> slot 2 -> node B.
        let input = frame(
            (CLIENT_MAC, EXT_MAC),
            (CLIENT, 40001),
            (VIP, 8009),
            5,
            Segment::TcpSyn,
            &[],
        );
        let (verdict, out) = bed.run(&input, bed.ext);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(
            out,
            frame(
                (INT_MAC, NODE_B_MAC),
                (CLIENT, 40001),
                (NODE_B, 8009),
                4,
                Segment::TcpSyn,
                &[]
            )
        );
        assert_eq!(bed.reason("forwarded_in"), 7);
    });
}

#[test]
fn inbound_udp_with_and_without_checksum() {
    in_netns(false, |bed| {
        bed.table();
        let payload = b"hello, node";
        let input = frame(
            (CLIENT_MAC, EXT_MAC),
            (CLIENT, 5353),
            (VIP, 8000),
            64,
            Segment::Udp,
            payload,
        );
        let (verdict, out) = bed.run(&input, bed.ext);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(
            out,
            frame(
                (INT_MAC, NODE_A_MAC),
                (CLIENT, 5353),
                (NODE_A, 8000),
                63,
                Segment::Udp,
                payload
            )
        );
        assert_checksums(&out, true);

        let input = without_udp_checksum(input);
        let (verdict, out) = bed.run(&input, bed.ext);
        assert_eq!(verdict, XDP_REDIRECT);
        let expected = without_udp_checksum(frame(
            (INT_MAC, NODE_A_MAC),
            (CLIENT, 5353),
            (NODE_A, 8000),
            63,
            Segment::Udp,
            payload,
        ));
        assert_eq!(out, expected);
        assert_checksums(&out, false);
    });
}

#[test]
fn return_traffic_leaves_from_the_vip() {
    in_netns(false, |bed| {
        bed.table();
        let payload = vec![0xabu8; 1400];
        for segment in [
            Segment::TcpSyn,
            Segment::TcpData,
            Segment::TcpFin,
            Segment::Udp,
        ] {
            let input = frame(
                (NODE_A_MAC, INT_MAC),
                (NODE_A, 9002),
                (CLIENT, 40000),
                64,
                segment,
                &payload,
            );
            let (verdict, out) = bed.run(&input, bed.int);
            assert_eq!(verdict, XDP_REDIRECT);
            assert_eq!(out, to_client((VIP, 9002), 63, segment, &payload));
            assert_checksums(&out, true);
        }
        // UDP without checksum keeps none on the way back too.
        let input = without_udp_checksum(frame(
            (NODE_B_MAC, INT_MAC),
            (NODE_B, 8015),
            (CLIENT, 7),
            64,
            Segment::Udp,
            b"x",
        ));
        let (verdict, out) = bed.run(&input, bed.int);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(
            out,
            without_udp_checksum(frame(
                (EXT_MAC, CLIENT_MAC),
                (VIP, 8015),
                (CLIENT, 7),
                63,
                Segment::Udp,
                b"x"
            ))
        );
        assert_eq!(bed.reason("forwarded_out"), 5);
    });
}

#[test]
fn connections_to_a_node_s_own_address_keep_it_both_ways() {
    in_netns(false, |bed| {
        bed.table();
        let tcp = |from: (Ipv4Addr, [u8; 6]),
                   src_port: u16,
                   to: (Ipv4Addr, [u8; 6]),
                   dst_port: u16,
                   segment| {
            frame(
                (from.1, to.1),
                (from.0, src_port),
                (to.0, dst_port),
                64,
                segment,
                b"",
            )
        };
        let answer_as_vip = |bed: &Bed, input: &[u8], client_port: u16, segment| {
            let (verdict, out) = bed.run(input, bed.int);
            assert_eq!(verdict, XDP_REDIRECT);
            assert_eq!(
                out,
                frame(
                    (EXT_MAC, CLIENT_MAC),
                    (VIP, 8002),
                    (CLIENT, client_port),
                    63,
                    segment,
                    b""
                )
            );
        };
        let client = (CLIENT, CLIENT_MAC);
        let node_a = (NODE_A, NODE_A_MAC);
        // A health check connects to node A's own address on route 3's port:
        // its SYN and the node's answers pass unchanged, both ways.
        bed.assert_pass(
            &tcp(client, 40000, (NODE_A, EXT_MAC), 8002, Segment::TcpSyn),
            bed.ext,
            "pass_direct",
        );
        let syn_ack = tcp(node_a, 8002, (CLIENT, INT_MAC), 40000, Segment::TcpData);
        bed.assert_pass(&syn_ack, bed.int, "pass_direct");
        bed.assert_pass(
            &tcp(node_a, 8002, (CLIENT, INT_MAC), 40000, Segment::TcpFin),
            bed.int,
            "pass_direct",
        );
        // The client's later segments are the kernel's too.
        bed.assert_pass(
            &tcp(client, 40000, (NODE_A, EXT_MAC), 8002, Segment::TcpData),
            bed.ext,
            "pass_direct",
        );
        // Another connection of the same client through the VIP still goes back as the VIP.
        answer_as_vip(
            bed,
            &tcp(node_a, 8002, (CLIENT, INT_MAC), 40001, Segment::TcpData),
            40001,
            Segment::TcpData,
        );
        // ...and so does a node's answer on a route it no longer serves (a
        // late FIN after a move reaches the client as the VIP's).
        let (verdict, out) = bed.run(
            &tcp(node_a, 8010, (CLIENT, INT_MAC), 40002, Segment::TcpFin),
            bed.int,
        );
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(&out[26..30], &VIP.octets());
        // UDP to node B's own address: the datagram and the answer pass.
        let datagram = frame(
            (CLIENT_MAC, EXT_MAC),
            (CLIENT, 5353),
            (NODE_B, 9010),
            64,
            Segment::Udp,
            b"q",
        );
        bed.assert_pass(&datagram, bed.ext, "pass_direct");
        let answer = frame(
            (NODE_B_MAC, INT_MAC),
            (NODE_B, 9010),
            (CLIENT, 5353),
            64,
            Segment::Udp,
            b"a",
        );
        bed.assert_pass(&answer, bed.int, "pass_direct");
        // A port of no route on a node's address is not ours.
        bed.assert_pass(
            &tcp(client, 40000, (NODE_A, EXT_MAC), 22, Segment::TcpSyn),
            bed.ext,
            "pass_not_route_port",
        );
        // The same client address and port used again through the VIP: the
        // SYN forgets the direct connection, the answers leave as the VIP.
        let (verdict, _) = bed.run(
            &tcp(client, 40000, (VIP, EXT_MAC), 8002, Segment::TcpSyn),
            bed.ext,
        );
        assert_eq!(verdict, XDP_REDIRECT);
        answer_as_vip(bed, &syn_ack, 40000, Segment::TcpData);
        // A client on the node side (a monitor behind the internal interface)
        // never came through the VIP: with and without a resolved neighbour.
        let monitor = Ipv4Addr::new(198, 19, 0, 50);
        bed.assert_pass(
            &tcp(node_a, 8002, (monitor, INT_MAC), 40000, Segment::TcpData),
            bed.int,
            "pass_direct",
        );
        set_neighbour(monitor, [0x02, 0, 0, 0, 0x50, 0x50], "int0");
        bed.assert_pass(
            &tcp(node_a, 8002, (monitor, INT_MAC), 40000, Segment::TcpData),
            bed.int,
            "pass_direct",
        );
        assert_eq!(bed.reason("pass_direct"), 8);
    });
}

#[test]
fn one_interface_for_both_sides_uses_xdp_tx() {
    in_netns(true, |bed| {
        bed.table();
        let input = from_client((VIP, 8000), 64, Segment::TcpSyn, &[]);
        let (verdict, out) = bed.run(&input, bed.ext);
        assert_eq!(verdict, XDP_TX);
        assert_eq!(
            out,
            frame(
                (EXT_MAC, NODE_A_MAC),
                (CLIENT, 40000),
                (NODE_A, 8000),
                63,
                Segment::TcpSyn,
                &[]
            )
        );
        let input = frame(
            (NODE_A_MAC, EXT_MAC),
            (NODE_A, 8000),
            (CLIENT, 40000),
            64,
            Segment::TcpData,
            b"answer",
        );
        let (verdict, out) = bed.run(&input, bed.int);
        assert_eq!(verdict, XDP_TX);
        assert_eq!(out, to_client((VIP, 8000), 63, Segment::TcpData, b"answer"));
    });
}

#[test]
fn everything_that_is_not_ours_passes_untouched() {
    in_netns(false, |bed| {
        bed.table();
        let to_vip = |port: u16, ttl: u8| from_client((VIP, port), ttl, Segment::TcpSyn, &[]);

        // ARP request for the VIP.
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&CLIENT_MAC);
        arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&CLIENT_MAC);
        arp.extend_from_slice(&CLIENT.octets());
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&VIP.octets());
        bed.assert_pass(&arp, bed.ext, "pass_not_ipv4");

        // IPv6 TCP to a route port.
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
        bed.assert_pass(&ipv6, bed.ext, "pass_not_ipv4");

        // ICMP echo to the VIP.
        let mut icmp = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, EXT_MAC)
            .ipv4(CLIENT.octets(), VIP.octets(), 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut icmp, b"ping")
            .unwrap();
        bed.assert_pass(&icmp, bed.ext, "pass_other_protocol");

        // Another address on the external side (e.g. the gateway's own, where
        // node registrations arrive).
        let other = from_client(
            (Ipv4Addr::new(198, 18, 0, 1), 8000),
            64,
            Segment::TcpSyn,
            &[],
        );
        bed.assert_pass(&other, bed.ext, "pass_not_ours");
        // VIP traffic arriving on the internal side.
        bed.assert_pass(&to_vip(8000, 64), bed.int, "pass_not_ours");
        // Internal traffic from an address that is not a node's.
        let stranger = frame(
            (NODE_A_MAC, INT_MAC),
            (Ipv4Addr::new(198, 19, 0, 99), 8000),
            (CLIENT, 40000),
            64,
            Segment::TcpData,
            b"x",
        );
        bed.assert_pass(&stranger, bed.int, "pass_not_ours");

        // VIP ports outside the listener groups.
        for port in [7999, 8024, 8999, 9024, 22] {
            bed.assert_pass(&to_vip(port, 64), bed.ext, "pass_not_route_port");
        }
        // A node talking from a port that is not a route port (e.g. registration).
        let registration = frame(
            (NODE_A_MAC, INT_MAC),
            (NODE_A, 50000),
            (Ipv4Addr::new(198, 19, 0, 1), 7000),
            64,
            Segment::TcpSyn,
            &[],
        );
        bed.assert_pass(&registration, bed.int, "pass_not_route_port");

        // Routes 21-24 have no slot.
        bed.assert_pass(&to_vip(8020, 64), bed.ext, "pass_no_node");
        bed.assert_pass(&to_vip(9023, 64), bed.ext, "pass_no_node");

        // TTL 1 and 0: handed to the kernel with the node's address, so that it
        // forwards it and answers "time exceeded" (for the VIP it would deliver
        // it locally instead).
        for ttl in [1, 0] {
            let to_node = from_client((NODE_A, 8000), ttl, Segment::TcpSyn, &[]);
            bed.assert_handoff(&to_vip(8000, ttl), bed.ext, "pass_ttl", &to_node);
        }
        let back = frame(
            (NODE_A_MAC, INT_MAC),
            (NODE_A, 8000),
            (CLIENT, 40000),
            1,
            Segment::TcpData,
            b"x",
        );
        let from_vip = frame(
            (NODE_A_MAC, INT_MAC),
            (VIP, 8000),
            (CLIENT, 40000),
            1,
            Segment::TcpData,
            b"x",
        );
        bed.assert_handoff(&back, bed.int, "pass_ttl", &from_vip);

        // Routes 17-20 reach a node whose neighbour entry does not exist yet: the
        // kernel forwards this one and resolves the neighbour on the way.
        let to_unresolved = from_client((NODE_UNRESOLVED, 8016), 64, Segment::TcpSyn, &[]);
        bed.assert_handoff(&to_vip(8016, 64), bed.ext, "pass_no_neigh", &to_unresolved);

        // Fragments: first (MF set) and later (offset != 0). The IPv4 checksum is
        // left stale on purpose: a passed frame must come back byte-identical.
        for (byte6, byte7) in [(0x20, 0x00), (0x00, 0x10), (0x20, 0x10)] {
            let mut fragment = to_vip(8000, 64);
            fragment[14 + 6] = byte6;
            fragment[14 + 7] = byte7;
            bed.assert_pass(&fragment, bed.ext, "pass_fragment");
        }
        // The "don't fragment" flag alone is not a fragment.
        let mut df = to_vip(8000, 64);
        df[14 + 6] = 0x40;
        let (verdict, _) = bed.run(&df, bed.ext);
        assert_eq!(verdict, XDP_REDIRECT);

        let stats = bed.dataplane.stats().unwrap();
        assert_eq!(stats.reason("forwarded_in"), 1);
        assert_eq!(stats.reason("forwarded_out"), 0);
    });
}

#[test]
fn frames_truncated_at_every_header_pass() {
    in_netns(false, |bed| {
        bed.table();
        let tcp = from_client((VIP, 8000), 64, Segment::TcpData, b"0123456789");
        let udp = from_client((VIP, 8000), 64, Segment::Udp, b"0123456789");
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header
        // (EINVAL), so cuts start after it.
        for input in [&tcp, &udp] {
            for cut in 14..input.len() {
                bed.assert_pass(&input[..cut], bed.ext, "pass_truncated");
            }
        }
        // Complete frames whose IPv4 total length ends inside the TCP or UDP
        // header (the rest is Ethernet padding).
        for (input, l4_len) in [(&tcp, 20usize), (&udp, 8)] {
            for short in 0..l4_len {
                let mut padded = input.clone();
                let total = (20 + short) as u16;
                padded[16..18].copy_from_slice(&total.to_be_bytes());
                bed.assert_pass(&padded, bed.ext, "pass_truncated");
            }
        }
        // Ethernet padding after a complete packet is fine.
        let mut padded = udp.clone();
        padded.extend_from_slice(&[0; 8]);
        let (verdict, out) = bed.run(&padded, bed.ext);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(out.len(), padded.len());
    });
}

#[test]
fn malformed_ipv4_headers_to_the_vip_are_dropped() {
    in_netns(false, |bed| {
        bed.table();
        let good = from_client((VIP, 8000), 64, Segment::TcpSyn, &[]);
        for (offset, value) in [(14, 0x44u8), (14, 0x65), (16, 0), (17, 10)] {
            let mut bad = good.clone();
            bad[offset] = value;
            if offset == 16 {
                bad[17] = 0;
            }
            let before = bed.reason("drop_malformed");
            let (verdict, _) = bed.run(&bad, bed.ext);
            assert_eq!(verdict, XDP_DROP, "byte {offset} = {value:#x}");
            assert_eq!(bed.reason("drop_malformed"), before + 1);
        }
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
        let build = |ip: etherparse::Ipv4Header, macs: ([u8; 6], [u8; 6])| {
            let mut out = Vec::new();
            PacketBuilder::ethernet2(macs.0, macs.1)
                .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
                .udp(1234, 9001)
                .write(&mut out, b"0123456789ab")
                .unwrap();
            out
        };
        let input = build(ip.clone(), (CLIENT_MAC, EXT_MAC));
        let (verdict, out) = bed.run(&input, bed.ext);
        assert_eq!(verdict, XDP_REDIRECT);
        let mut expected_ip = ip;
        expected_ip.destination = NODE_A.octets();
        expected_ip.time_to_live = 63;
        assert_eq!(out, build(expected_ip, (INT_MAC, NODE_A_MAC)));
        assert_checksums(&out, true);
    });
}

#[test]
fn counters_follow_routes_and_nodes() {
    in_netns(false, |bed| {
        bed.table();
        let syn = from_client((VIP, 8001), 64, Segment::TcpSyn, &[]);
        let answer = frame(
            (NODE_A_MAC, INT_MAC),
            (NODE_A, 8001),
            (CLIENT, 40000),
            64,
            Segment::TcpData,
            &[0; 100],
        );
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
        bed.dataplane
            .apply(&[Write::Slot {
                slot: 1,
                node: Some(NodeTarget {
                    addr: spare,
                    index: 5,
                }),
            }])
            .unwrap();
        let (routes, slots) = bed.dataplane.table().unwrap();
        assert_eq!(routes[0], Some(1));
        assert_eq!(
            slots[0],
            Some(NodeTarget {
                addr: spare,
                index: 5
            })
        );
        let syn = from_client((VIP, 8001), 64, Segment::TcpSyn, &[]);
        let (verdict, out) = bed.run(&syn, bed.ext);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(
            out,
            frame(
                (INT_MAC, spare_mac),
                (CLIENT, 40000),
                (spare, 8001),
                63,
                Segment::TcpSyn,
                &[]
            )
        );
        assert_eq!(bed.dataplane.stats().unwrap().nodes[5].packets, 1);
        // The failed node's late FIN still leaves from the VIP.
        let fin = frame(
            (NODE_A_MAC, INT_MAC),
            (NODE_A, 8001),
            (CLIENT, 40000),
            64,
            Segment::TcpFin,
            &[],
        );
        let (verdict, out) = bed.run(&fin, bed.int);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(out, to_client((VIP, 8001), 63, Segment::TcpFin, &[]));
        // A route write moves a route; emptying it passes its traffic to the kernel.
        bed.dataplane
            .apply(&[Write::Route {
                route: 2,
                slot: Some(2),
            }])
            .unwrap();
        let (_, out) = bed.run(&syn, bed.ext);
        assert_eq!(&out[30..34], &NODE_B.octets());
        bed.dataplane
            .apply(&[Write::Route {
                route: 2,
                slot: None,
            }])
            .unwrap();
        bed.assert_pass(&syn, bed.ext, "pass_no_node");
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

/// The next hops cached for node index `index`, on the CPUs that have one.
fn cached(bed: &Bed, index: u32) -> Vec<halod::dataplane::NextHop> {
    bed.dataplane
        .cached_next_hops(index)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .flatten()
        .collect()
}

#[test]
fn a_node_s_next_hop_is_reused_until_the_ttl_runs_out() {
    in_netns(false, |bed| {
        stay_on_one_cpu();
        bed.table();
        // Long enough that the first part cannot outlive it on a slow machine.
        bed.dataplane
            .set_next_hop_ttl(std::time::Duration::from_secs(600))
            .unwrap();
        let syn = from_client((VIP, 8001), 64, Segment::TcpSyn, &[]);
        let to_node = |node_mac: [u8; 6]| {
            frame(
                (INT_MAC, node_mac),
                (CLIENT, 40000),
                (NODE_A, 8001),
                63,
                Segment::TcpSyn,
                &[],
            )
        };
        assert!(
            cached(bed, 0).is_empty(),
            "nothing is cached before a packet"
        );
        let (verdict, out) = bed.run(&syn, bed.ext);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(out, to_node(NODE_A_MAC));
        // What the lookup answered, with the route's MTU (the veth's 1500).
        let expected = halod::dataplane::NextHop {
            addr: NODE_A,
            ifindex: bed.int,
            dmac: NODE_A_MAC,
            smac: INT_MAC,
            mtu: 1500,
        };
        assert_eq!(cached(bed, 0), vec![expected]);

        // The node's MAC changes: within the TTL the cached one is still used.
        let new_mac = [0x02, 0, 0, 0, 0xa0, 0xee];
        let neigh = |lladdr: [u8; 6]| set_neighbour(NODE_A, lladdr, "int0");
        neigh(new_mac);
        for _ in 0..3 {
            let (verdict, out) = bed.run(&syn, bed.ext);
            assert_eq!(verdict, XDP_REDIRECT);
            assert_eq!(out, to_node(NODE_A_MAC), "cached MAC within the TTL");
        }
        // The cached MTU is still checked: one byte over goes to the kernel.
        let big = from_client((VIP, 8001), 64, Segment::TcpData, &vec![7u8; 1500 - 40 + 1]);
        let big_to_node = from_client(
            (NODE_A, 8001),
            64,
            Segment::TcpData,
            &vec![7u8; 1500 - 40 + 1],
        );
        bed.assert_handoff(&big, bed.ext, "pass_mtu", &big_to_node);
        assert_eq!(cached(bed, 0), vec![expected], "a hand-over caches nothing");

        // Once the TTL has run out the kernel is asked again, and its answer cached.
        bed.dataplane
            .set_next_hop_ttl(std::time::Duration::from_millis(1))
            .unwrap();
        // bpf_ktime_get_coarse_ns advances once per jiffy (1-10 ms).
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (verdict, out) = bed.run(&syn, bed.ext);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(out, to_node(new_mac), "new MAC after the TTL");
        assert_eq!(
            cached(bed, 0),
            vec![halod::dataplane::NextHop {
                dmac: new_mac,
                ..expected
            }]
        );

        // TTL 0: every packet is looked up, so a change shows at once.
        bed.dataplane
            .set_next_hop_ttl(std::time::Duration::ZERO)
            .unwrap();
        neigh(NODE_A_MAC);
        let (_, out) = bed.run(&syn, bed.ext);
        assert_eq!(out, to_node(NODE_A_MAC), "TTL 0 looks up every packet");

        // A next hop that does not resolve is handed over and never cached, cache
        // or not.
        bed.dataplane
            .set_next_hop_ttl(std::time::Duration::from_secs(600))
            .unwrap();
        let to_unresolved = from_client((NODE_UNRESOLVED, 8016), 64, Segment::TcpSyn, &[]);
        let unresolved = from_client((VIP, 8016), 64, Segment::TcpSyn, &[]);
        for _ in 0..2 {
            bed.assert_handoff(&unresolved, bed.ext, "pass_no_neigh", &to_unresolved);
        }
        assert!(cached(bed, 2).is_empty(), "NO_NEIGH is not cached");
        assert_eq!(bed.reason("forwarded_in"), 6);
    });
}

#[test]
fn a_client_s_next_hop_is_reused_until_the_ttl_runs_out() {
    in_netns(false, |bed| {
        stay_on_one_cpu();
        bed.table();
        bed.dataplane
            .set_next_hop_ttl(std::time::Duration::from_secs(600))
            .unwrap();
        let answer = frame(
            (NODE_A_MAC, INT_MAC),
            (NODE_A, 8001),
            (CLIENT, 40000),
            64,
            Segment::TcpData,
            b"answer",
        );
        let to_client = |client_mac: [u8; 6]| {
            frame(
                (EXT_MAC, client_mac),
                (VIP, 8001),
                (CLIENT, 40000),
                63,
                Segment::TcpData,
                b"answer",
            )
        };
        let client_cache = |bed: &Bed| -> Vec<halod::dataplane::NextHop> {
            bed.dataplane
                .cached_client_next_hops(CLIENT)
                .unwrap()
                .into_iter()
                .flatten()
                .collect()
        };
        assert!(client_cache(bed).is_empty());
        let (verdict, out) = bed.run(&answer, bed.int);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(out, to_client(CLIENT_MAC));
        let expected = halod::dataplane::NextHop {
            addr: CLIENT,
            ifindex: bed.ext,
            dmac: CLIENT_MAC,
            smac: EXT_MAC,
            mtu: 1500,
        };
        assert_eq!(client_cache(bed), vec![expected]);

        let new_mac = [0x02, 0, 0, 0, 0xc0, 0xee];
        set_neighbour(CLIENT, new_mac, "ext0");
        let (_, out) = bed.run(&answer, bed.int);
        assert_eq!(out, to_client(CLIENT_MAC), "cached MAC within the TTL");
        // Over the cached MTU: handed to the kernel, already from the VIP.
        let payload = vec![1u8; 1500 - 40 + 1];
        let big = frame(
            (NODE_A_MAC, INT_MAC),
            (NODE_A, 8001),
            (CLIENT, 40000),
            64,
            Segment::TcpData,
            &payload,
        );
        let big_from_vip = frame(
            (NODE_A_MAC, INT_MAC),
            (VIP, 8001),
            (CLIENT, 40000),
            64,
            Segment::TcpData,
            &payload,
        );
        bed.assert_handoff(&big, bed.int, "pass_mtu", &big_from_vip);

        bed.dataplane
            .set_next_hop_ttl(std::time::Duration::from_millis(1))
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (_, out) = bed.run(&answer, bed.int);
        assert_eq!(out, to_client(new_mac), "new MAC after the TTL");
        assert_eq!(
            client_cache(bed),
            vec![halod::dataplane::NextHop {
                dmac: new_mac,
                ..expected
            }]
        );
        assert_eq!(bed.reason("forwarded_out"), 3);
    });
}

#[test]
fn clients_sharing_a_cache_slot_never_get_each_other_s_next_hop() {
    in_netns(false, |bed| {
        stay_on_one_cpu();
        bed.table();
        bed.dataplane
            .set_next_hop_ttl(std::time::Duration::from_secs(600))
            .unwrap();
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
                let answer = frame(
                    (NODE_A_MAC, INT_MAC),
                    (NODE_A, 8001),
                    (client, 40000),
                    64,
                    Segment::Udp,
                    b"x",
                );
                let (verdict, out) = bed.run(&answer, bed.int);
                assert_eq!(verdict, XDP_REDIRECT);
                assert_eq!(
                    out,
                    frame(
                        (EXT_MAC, client_mac),
                        (VIP, 8001),
                        (client, 40000),
                        63,
                        Segment::Udp,
                        b"x"
                    ),
                    "round {round}, client {client}"
                );
                // The slot now holds this client's entry, and not the other's.
                let cached: Vec<_> = bed
                    .dataplane
                    .cached_client_next_hops(client)
                    .unwrap()
                    .into_iter()
                    .flatten()
                    .collect();
                assert_eq!(cached.len(), 1);
                assert_eq!(cached[0].dmac, client_mac);
            }
        }
    });
}

#[test]
fn a_slot_rewritten_to_another_address_never_uses_the_old_next_hop() {
    in_netns(false, |bed| {
        stay_on_one_cpu();
        bed.table();
        bed.dataplane
            .set_next_hop_ttl(std::time::Duration::from_secs(600))
            .unwrap();
        let spare = Ipv4Addr::new(198, 19, 0, 20);
        let spare_mac = [0x02, 0, 0, 0, 0x20, 0x20];
        set_neighbour(spare, spare_mac, "int0");
        let syn = from_client((VIP, 8001), 64, Segment::TcpSyn, &[]);
        let (_, out) = bed.run(&syn, bed.ext);
        assert_eq!(&out[..6], &NODE_A_MAC);
        assert_eq!(cached(bed, 0).len(), 1);
        assert_eq!(cached(bed, 0)[0].addr, NODE_A);

        // Slot 1 now holds another address under the same node index (0), well
        // within the TTL: the entry cached for node A must not be used.
        bed.dataplane
            .apply(&[Write::Slot {
                slot: 1,
                node: Some(NodeTarget {
                    addr: spare,
                    index: 0,
                }),
            }])
            .unwrap();
        let (verdict, out) = bed.run(&syn, bed.ext);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(
            out,
            frame(
                (INT_MAC, spare_mac),
                (CLIENT, 40000),
                (spare, 8001),
                63,
                Segment::TcpSyn,
                &[]
            )
        );
        let now = cached(bed, 0);
        assert_eq!(now.len(), 1);
        assert_eq!((now[0].addr, now[0].dmac), (spare, spare_mac));

        // And back: node A again gets node A's MAC, not the spare's.
        bed.dataplane
            .apply(&[Write::Slot {
                slot: 1,
                node: Some(NodeTarget {
                    addr: NODE_A,
                    index: 0,
                }),
            }])
            .unwrap();
        let (_, out) = bed.run(&syn, bed.ext);
        assert_eq!(&out[..6], &NODE_A_MAC);
        assert_eq!(&out[30..34], &NODE_A.octets());
    });
}

#[test]
fn an_adopting_program_gets_a_fresh_config_and_cache() {
    in_netns(false, |_bed| {
        let instance = format!("xdp-adopt-{}", std::process::id());
        let config = dataplane_config(&instance, "int0");
        let pins = std::path::Path::new("/sys/fs/bpf/halod").join(&instance);
        let ext = nix::net::if_::if_nametoindex("ext0").unwrap();
        let syn = from_client((VIP, 8001), 64, Segment::TcpSyn, &[]);
        let mut first = Dataplane::start(&config).unwrap_or_else(|e| panic!("{e}"));
        first
            .apply(&[
                Write::Slot {
                    slot: 1,
                    node: Some(NodeTarget {
                        addr: NODE_A,
                        index: 0,
                    }),
                },
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
