//! A corpus of edge and malformed frames through the real XDP program
//! (BPF_PROG_TEST_RUN), each with its expected verdict, reason counter and output
//! bytes: truncation at every byte, IHL and version values, total lengths, IP
//! options, every fragment kind, TCP data offsets and UDP lengths, 802.1Q and QinQ,
//! IPv6 with extension headers, ARP and other EtherTypes, broadcast and multicast,
//! martian sources, minimum and maximum sizes, bad checksums, port and TTL edges,
//! in both directions.
//!
//! The invariants every case checks: the program answers (never an error), the
//! verdict and the reason counter (exactly one reason counted per frame) are the
//! expected ones, a passed or dropped frame comes out byte for byte unchanged, and
//! a forwarded or handed-over frame is exactly the frame etherparse rebuilds with
//! the rewritten addresses (its checksums recomputed by etherparse, not by
//! halod-common), or, for an input whose checksum was already wrong, the same
//! frame whose checksums are exactly as wrong as before (RFC 1624 updates keep an
//! error for the receiver to see).
//!
//! Next hops come from the kernel (`bpf_fib_lookup`), so the corpus runs on its
//! own thread in a fresh network namespace, set up like `xdp_test_run.rs`.
//! Needs root.

use std::{io::Write as _, net::Ipv4Addr};

use etherparse::{
    IpHeaders, IpNumber, Ipv4Header, LinkHeader, NetHeaders, PacketBuilder, PacketHeaders,
    TransportHeader,
};
use halod::dataplane::{Dataplane, NodeTarget, Write};

mod support;
use support::bpf::*;

/// Route 3 in the first group: slot 1, node A.
const ROUTE_PORT: u16 = 8002;

/// Largest frame BPF_PROG_TEST_RUN takes into a linear buffer for a program
/// without `xdp.frags`: a 4 KiB page minus XDP headroom (256) and skb_shared_info (320).
const MAX_TEST_RUN_FRAME: usize = 3520;

/// Which interface a frame arrives on.
#[derive(Clone, Copy, Debug)]
enum Side {
    External,
    Internal,
    /// `lo`: an interface the program is not configured for.
    Other,
}

/// What must come out.
#[derive(Clone, Debug)]
enum Expect {
    /// XDP_PASS with the frame unchanged, counted under the reason.
    Pass(&'static str),
    /// XDP_DROP (`drop_malformed`), frame unchanged.
    Drop,
    /// XDP_REDIRECT with exactly these bytes, counted under the reason.
    Forward(&'static str, Vec<u8>),
    /// XDP_REDIRECT; the input's checksums were wrong: the output equals these
    /// bytes except in the checksum fields, and every checksum is exactly as wrong
    /// as in the input.
    ForwardBadChecksum(&'static str, Vec<u8>),
    /// XDP_PASS with the address already rewritten (the kernel forwards it).
    Handoff(&'static str, Vec<u8>),
    /// BPF_PROG_TEST_RUN refuses the frame before the program runs (EINVAL):
    /// shorter than an Ethernet header.
    Refused,
}

struct Case {
    category: &'static str,
    name: String,
    side: Side,
    frame: Vec<u8>,
    expect: Expect,
}

// ---------------------------------------------------------------------------
// Frame building (etherparse).

#[derive(Clone)]
struct Spec {
    macs: ([u8; 6], [u8; 6]),
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    ttl: u8,
    udp: bool,
    ip_options: Vec<u8>,
    tcp_options: Vec<u8>,
    payload: Vec<u8>,
}

impl Spec {
    fn inbound(udp: bool) -> Spec {
        Spec {
            macs: (CLIENT_MAC, EXT_MAC),
            src: (CLIENT, 40000),
            dst: (VIP, ROUTE_PORT),
            ttl: 64,
            udp,
            ip_options: Vec::new(),
            tcp_options: Vec::new(),
            payload: b"0123456789".to_vec(),
        }
    }

    fn outbound(udp: bool) -> Spec {
        Spec {
            macs: (NODE_A_MAC, INT_MAC),
            src: (NODE_A, ROUTE_PORT),
            dst: (CLIENT, 40000),
            ..Spec::inbound(udp)
        }
    }

    fn build(&self) -> Vec<u8> {
        let protocol = if self.udp {
            IpNumber::UDP
        } else {
            IpNumber::TCP
        };
        let mut ip = Ipv4Header::new(
            0,
            self.ttl,
            protocol,
            self.src.0.octets(),
            self.dst.0.octets(),
        )
        .unwrap();
        ip.options = self.ip_options[..].try_into().unwrap();
        ip.dont_fragment = true;
        ip.identification = 0x4242;
        let step = PacketBuilder::ethernet2(self.macs.0, self.macs.1)
            .ip(IpHeaders::Ipv4(ip, Default::default()));
        let mut out = Vec::new();
        if self.udp {
            step.udp(self.src.1, self.dst.1)
                .write(&mut out, &self.payload)
                .unwrap();
        } else {
            step.tcp(self.src.1, self.dst.1, 1000, 64240)
                .ack(77)
                .psh()
                .options_raw(&self.tcp_options)
                .unwrap()
                .write(&mut out, &self.payload)
                .unwrap();
        }
        out
    }
}

/// What the gateway does to a frame it forwards, done by etherparse: parse,
/// change MACs, the address and (unless handed over) the TTL, recompute every
/// checksum, write back; bytes past the parsed packet (Ethernet padding) stay.
fn rebuild(
    input: &[u8],
    macs: ([u8; 6], [u8; 6]),
    source: Option<Ipv4Addr>,
    destination: Option<Ipv4Addr>,
    decrement_ttl: bool,
) -> Vec<u8> {
    let headers = PacketHeaders::from_ethernet_slice(input)
        .unwrap_or_else(|e| panic!("etherparse cannot parse a frame the corpus forwards: {e}"));
    let Some(LinkHeader::Ethernet2(mut ethernet)) = headers.link.clone() else {
        panic!("no Ethernet II header")
    };
    let Some(NetHeaders::Ipv4(mut ip, _)) = headers.net.clone() else {
        panic!("not IPv4")
    };
    ethernet.source = macs.0;
    ethernet.destination = macs.1;
    if let Some(source) = source {
        ip.source = source.octets();
    }
    if let Some(destination) = destination {
        ip.destination = destination.octets();
    }
    if decrement_ttl {
        ip.time_to_live -= 1;
    }
    ip.header_checksum = ip.calc_header_checksum();
    let payload = headers.payload.slice();
    let mut out = Vec::new();
    ethernet.write(&mut out).unwrap();
    ip.write(&mut out).unwrap();
    match headers.transport.clone() {
        Some(TransportHeader::Tcp(mut tcp)) => {
            tcp.checksum = tcp.calc_checksum_ipv4(&ip, payload).unwrap();
            tcp.write(&mut out).unwrap();
        }
        Some(TransportHeader::Udp(mut udp)) => {
            if udp.checksum != 0 {
                udp.checksum = udp.calc_checksum_ipv4(&ip, payload).unwrap();
            }
            udp.write(&mut out).unwrap();
        }
        other => panic!("unexpected transport {other:?}"),
    }
    out.extend_from_slice(payload);
    let consumed = payload.as_ptr() as usize - input.as_ptr() as usize + payload.len();
    out.extend_from_slice(&input[consumed..]);
    out
}

/// The forward of a client frame to node A.
fn to_node(input: &[u8]) -> Vec<u8> {
    rebuild(input, (INT_MAC, NODE_A_MAC), None, Some(NODE_A), true)
}

/// The forward of node A's frame to the client, from the VIP.
fn to_client(input: &[u8]) -> Vec<u8> {
    rebuild(input, (EXT_MAC, CLIENT_MAC), Some(VIP), None, true)
}

/// Ones' complement sum of big-endian 16-bit words (odd length padded), folded.
/// Written here, not taken from halod-common, to stay independent of the program.
fn ones_sum(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    for chunk in data.chunks(2) {
        sum += u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]) as u64;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The sums over the IPv4 header and over the TCP/UDP pseudo-header and segment,
/// checksum fields included: 0xffff each for a correct packet. An incremental
/// update keeps them as they were.
fn residuals(frame: &[u8]) -> (u16, u16) {
    let ihl = ((frame[14] & 0x0f) as usize) * 4;
    let total = u16::from_be_bytes([frame[16], frame[17]]) as usize;
    let ip = ones_sum(&frame[14..14 + ihl]);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&frame[26..34]);
    pseudo.extend_from_slice(&[0, frame[23]]);
    let segment = &frame[14 + ihl..14 + total];
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(segment);
    (ip, ones_sum(&pseudo))
}

/// Byte ranges of the IPv4 and TCP/UDP checksum fields.
fn checksum_fields(frame: &[u8]) -> [std::ops::Range<usize>; 2] {
    let l4 = 14 + ((frame[14] & 0x0f) as usize) * 4;
    let at = if frame[23] == 6 { l4 + 16 } else { l4 + 6 };
    [24..26, at..at + 2]
}

fn set_u16(frame: &mut [u8], at: usize, value: u16) {
    frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// Recomputes the IPv4 header checksum after a test edits the header (etherparse).
fn fix_ip_checksum(frame: &mut [u8]) {
    let ihl = ((frame[14] & 0x0f) as usize) * 4;
    let (header, _) = Ipv4Header::from_slice(&frame[14..14 + ihl]).unwrap();
    set_u16(frame, 24, header.calc_header_checksum());
}

fn with_vlan_tags(frame: &[u8], tags: &[(u16, u16)]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    for (tpid, tci) in tags {
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&tci.to_be_bytes());
    }
    out.extend_from_slice(&frame[12..]);
    out
}

fn ethernet(dst: [u8; 6], src: [u8; 6], ether_type: u16, body: &[u8]) -> Vec<u8> {
    let mut out = dst.to_vec();
    out.extend_from_slice(&src);
    out.extend_from_slice(&ether_type.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// An IPv6 frame to a route port, with the given extension headers (each a
/// protocol number and its bytes, next-header field filled in here).
fn ipv6_frame(extensions: &[(u8, Vec<u8>)], upper: u8) -> Vec<u8> {
    let mut chain = Vec::new();
    for (i, (_, bytes)) in extensions.iter().enumerate() {
        let next = extensions
            .get(i + 1)
            .map_or(upper, |(protocol, _)| *protocol);
        let mut bytes = bytes.clone();
        bytes[0] = next;
        chain.extend_from_slice(&bytes);
    }
    let upper_bytes: Vec<u8> = match upper {
        6 => {
            let mut tcp = vec![0x9c, 0x40, 0x1f, 0x42, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02];
            tcp.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
            tcp
        }
        17 => vec![0x9c, 0x40, 0x1f, 0x42, 0, 12, 0, 0, 1, 2, 3, 4],
        _ => vec![135, 0, 0, 0, 0, 0, 0, 0],
    };
    chain.extend_from_slice(&upper_bytes);
    let first = extensions.first().map_or(upper, |(protocol, _)| *protocol);
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(chain.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[first, 64]);
    ip.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    ip.extend_from_slice(&[
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x64,
    ]);
    ip.extend_from_slice(&chain);
    ethernet(EXT_MAC, CLIENT_MAC, 0x86dd, &ip)
}

// ---------------------------------------------------------------------------
// The corpus.

struct Corpus(Vec<Case>);

impl Corpus {
    fn add(
        &mut self,
        category: &'static str,
        name: String,
        side: Side,
        frame: Vec<u8>,
        expect: Expect,
    ) {
        self.0.push(Case {
            category,
            name,
            side,
            frame,
            expect,
        });
    }
}

fn corpus() -> Vec<Case> {
    let mut c = Corpus(Vec::new());
    use Expect::*;
    use Side::*;

    // Baselines in both directions: what every mutation below starts from.
    for udp in [false, true] {
        let kind = if udp { "udp" } else { "tcp" };
        let input = Spec::inbound(udp).build();
        c.add(
            "baseline",
            format!("{kind} inbound"),
            External,
            input.clone(),
            Forward("forwarded_in", to_node(&input)),
        );
        let input = Spec::outbound(udp).build();
        c.add(
            "baseline",
            format!("{kind} return"),
            Internal,
            input.clone(),
            Forward("forwarded_out", to_client(&input)),
        );
    }

    // Truncated at every byte: shorter than Ethernet is refused by the kernel before
    // the program runs; every other cut ends inside a header or before the IPv4
    // total length, and is passed untouched.
    let mut with_options = Spec::inbound(false);
    with_options.ip_options = vec![1, 1, 1, 0, 7, 7, 4, 0, 0, 0, 0, 0];
    with_options.tcp_options = vec![2, 4, 0x05, 0xb4];
    for (name, side, whole) in [
        ("tcp inbound", External, Spec::inbound(false).build()),
        ("udp inbound", External, Spec::inbound(true).build()),
        (
            "tcp with IP and TCP options",
            External,
            with_options.build(),
        ),
        ("tcp return", Internal, Spec::outbound(false).build()),
        ("udp return", Internal, Spec::outbound(true).build()),
    ] {
        for cut in 0..whole.len() {
            let expect = if cut < 14 {
                Refused
            } else {
                Pass("pass_truncated")
            };
            if cut < 14 && name != "tcp inbound" {
                continue; // once is enough: the kernel refuses before looking at the frame
            }
            c.add(
                "truncated",
                format!("{name} cut at byte {cut}"),
                side,
                whole[..cut].to_vec(),
                expect,
            );
        }
    }

    // IHL: below 5 is malformed; 5..15 with real options (NOP, EOL, record route,
    // timestamp, router alert, security, loose source route) forward with the
    // options unchanged; a larger IHL than the header there is eats into the
    // transport header (truncated) or past the total length (malformed).
    let option_fill = |len: usize, kind: u8| -> Vec<u8> {
        let mut options = match kind {
            0 => vec![],
            1 => vec![7, 7, 4, 0, 0, 0, 0], // record route, one empty slot
            2 => vec![68, 8, 5, 0, 0, 0, 0, 0], // timestamp
            3 => vec![148, 4, 0, 0],        // router alert
            4 => vec![130, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0], // security
            _ => vec![131, 7, 4, 198, 19, 0, 99], // loose source route
        };
        if options.len() > len {
            options.clear(); // the option does not fit: NOPs only
        }
        while options.len() < len {
            options.push(1);
        }
        if kind == 0
            && let Some(last) = options.last_mut()
        {
            *last = 0; // end of options list
        }
        options
    };
    for udp in [false, true] {
        let kind = if udp { "udp" } else { "tcp" };
        for ihl in 0u8..5 {
            let mut input = Spec::inbound(udp).build();
            input[14] = 0x40 | ihl;
            c.add("ihl", format!("{kind} IHL {ihl}"), External, input, Drop);
        }
        for ihl in 5u8..=15 {
            let len = (ihl as usize - 5) * 4;
            let mut spec = Spec::inbound(udp);
            spec.ip_options = option_fill(len, ihl % 6);
            let input = spec.build();
            c.add(
                "ip options",
                format!("{kind} IHL {ihl} options {:?}", spec.ip_options),
                External,
                input.clone(),
                Forward("forwarded_in", to_node(&input)),
            );
            let mut spec = Spec::outbound(udp);
            spec.ip_options = option_fill(len, (ihl + 3) % 6);
            let input = spec.build();
            c.add(
                "ip options",
                format!("{kind} return IHL {ihl}"),
                Internal,
                input.clone(),
                Forward("forwarded_out", to_client(&input)),
            );
        }
    }
    // IHL claims options that are not there (TCP, total length 50): the transport
    // header is then read further in. IHL 6 reads the sequence number as ports (no
    // route port), IHL 7 a payload byte as data offset (3: malformed), from IHL 8
    // the total length leaves no room for a TCP header, from 13 not even for the
    // IPv4 header.
    for ihl in 6u8..=15 {
        let mut input = Spec::inbound(false).build();
        input[14] = 0x40 | ihl;
        let expect = match ihl {
            6 => Pass("pass_not_route_port"),
            7 => Drop,
            8..=12 => Pass("pass_truncated"),
            _ => Drop,
        };
        c.add(
            "ihl",
            format!("IHL {ihl} without options"),
            External,
            input,
            expect,
        );
    }
    // Version nibble other than 4 in an IPv4 EtherType.
    for version in (0u8..16).filter(|v| *v != 4) {
        let mut input = Spec::inbound(false).build();
        input[14] = (version << 4) | 5;
        c.add(
            "version",
            format!("version {version}"),
            External,
            input,
            Drop,
        );
    }
    let mut input = Spec::outbound(true).build();
    input[14] = 0x65;
    c.add(
        "version",
        "version 6 from a node".to_owned(),
        Internal,
        input,
        Drop,
    );

    // Total length against the frame (TCP: 20 + 20 + 10 bytes, UDP: 20 + 8 + 10).
    for udp in [false, true] {
        let kind = if udp { "udp" } else { "tcp" };
        let whole = Spec::inbound(udp).build();
        let actual = whole.len() - 14;
        let transport = if udp { 8 } else { 20 };
        for total in [0usize, 1, 19] {
            let mut input = whole.clone();
            set_u16(&mut input, 16, total as u16);
            c.add(
                "total length",
                format!("{kind} total length {total}"),
                External,
                input,
                Drop,
            );
        }
        for total in [20, 21, 20 + transport - 1] {
            let mut input = whole.clone();
            set_u16(&mut input, 16, total as u16);
            fix_ip_checksum(&mut input);
            c.add(
                "total length",
                format!("{kind} total length {total}: no room for the header"),
                External,
                input,
                Pass("pass_truncated"),
            );
        }
        for total in [actual + 1, actual + 100, 65535] {
            let mut input = whole.clone();
            set_u16(&mut input, 16, total as u16);
            fix_ip_checksum(&mut input);
            c.add(
                "total length",
                format!("{kind} total length {total} > frame"),
                External,
                input,
                Pass("pass_truncated"),
            );
        }
        // Ethernet padding after the packet stays, untouched.
        for padding in [1usize, 6, 46] {
            let mut input = whole.clone();
            input.extend((0..padding).map(|i| 0xa0 ^ i as u8));
            c.add(
                "total length",
                format!("{kind} with {padding} bytes of padding"),
                External,
                input.clone(),
                Forward("forwarded_in", to_node(&input)),
            );
        }
    }
    // Total length shorter than the data: the receiver checks the checksum over
    // the shorter segment, which is then wrong; it must stay exactly as wrong.
    for (udp, total) in [(false, 45u16), (false, 40), (true, 37)] {
        let mut input = Spec::inbound(udp).build();
        set_u16(&mut input, 16, total);
        fix_ip_checksum(&mut input);
        if udp {
            set_u16(&mut input, 14 + 20 + 4, total - 20);
        }
        let expected = to_node(&input);
        c.add(
            "total length",
            format!("udp={udp} total length {total} < data"),
            External,
            input,
            ForwardBadChecksum("forwarded_in", expected),
        );
    }

    // Protocols other than TCP and UDP, to the VIP and from a node.
    for protocol in [0u8, 1, 2, 4, 41, 47, 50, 51, 132, 136, 253, 255] {
        let mut input = Spec::inbound(false).build();
        input[23] = protocol;
        fix_ip_checksum(&mut input);
        c.add(
            "protocol",
            format!("protocol {protocol}"),
            External,
            input,
            Pass("pass_other_protocol"),
        );
    }
    let mut input = Spec::outbound(false).build();
    input[23] = 1;
    fix_ip_checksum(&mut input);
    c.add(
        "protocol",
        "ICMP from a node".to_owned(),
        Internal,
        input,
        Pass("pass_other_protocol"),
    );

    // Fragments: first, middle, last, offset 1 and the largest offset, MF with DF;
    // a first fragment too short for the transport header. Don't-fragment alone and
    // the reserved flag are not fragments.
    for udp in [false, true] {
        let kind = if udp { "udp" } else { "tcp" };
        for (side, spec) in [
            (External, Spec::inbound(udp)),
            (Internal, Spec::outbound(udp)),
        ] {
            for (what, flags) in [
                ("first fragment", 0x2000u16),
                ("middle fragment", 0x2000 | 185),
                ("last fragment", 185),
                ("offset 1", 1),
                ("largest offset", 0x1fff),
                ("MF and DF", 0x6000),
                ("last fragment with DF and reserved bit", 0xc000 | 7),
            ] {
                let mut input = spec.build();
                set_u16(&mut input, 20, flags);
                fix_ip_checksum(&mut input);
                c.add(
                    "fragment",
                    format!("{kind} {side:?} {what}"),
                    side,
                    input,
                    Pass("pass_fragment"),
                );
            }
            for (what, flags) in [
                ("DF only", 0x4000u16),
                ("reserved bit", 0x8000),
                ("no flags", 0),
            ] {
                let mut input = spec.build();
                set_u16(&mut input, 20, flags);
                fix_ip_checksum(&mut input);
                let mut expected = match side {
                    External => to_node(&input),
                    _ => to_client(&input),
                };
                // etherparse has no field for the reserved flag: put it back.
                expected[20] |= input[20] & 0x80;
                fix_ip_checksum(&mut expected);
                let reason = match side {
                    External => "forwarded_in",
                    _ => "forwarded_out",
                };
                c.add(
                    "fragment",
                    format!("{kind} {side:?} {what} (not a fragment)"),
                    side,
                    input,
                    Forward(reason, expected),
                );
            }
        }
        // A first fragment carrying only 4 bytes of the transport header.
        let mut input = Spec::inbound(udp).build();
        input.truncate(14 + 24);
        set_u16(&mut input, 16, 24);
        set_u16(&mut input, 20, 0x2000);
        fix_ip_checksum(&mut input);
        c.add(
            "fragment",
            format!("{kind} tiny first fragment"),
            External,
            input,
            Pass("pass_fragment"),
        );
    }

    // TCP data offset 0..15 over a 40-byte segment (20-byte header, 20 bytes of
    // data that a larger offset reads as options).
    for data_offset in 0u8..16 {
        for (side, spec) in [
            (External, Spec::inbound(false)),
            (Internal, Spec::outbound(false)),
        ] {
            let mut spec = spec;
            spec.payload = vec![1; 20];
            let mut input = spec.build();
            input[14 + 20 + 12] = data_offset << 4;
            // The checksum covers the data offset: recompute it (etherparse) for the
            // offsets it can parse, so the expected frame has a valid checksum.
            let expect = if data_offset < 5 || data_offset as usize * 4 > 40 {
                Drop
            } else {
                let tcp = etherparse::TcpHeader::from_slice(&input[34..]).unwrap().0;
                let ip = Ipv4Header::from_slice(&input[14..]).unwrap().0;
                let data = &input[34 + data_offset as usize * 4..];
                let check = tcp.calc_checksum_ipv4(&ip, data).unwrap();
                set_u16(&mut input, 34 + 16, check);
                match side {
                    External => Forward("forwarded_in", to_node(&input)),
                    _ => Forward("forwarded_out", to_client(&input)),
                }
            };
            c.add(
                "tcp data offset",
                format!("{side:?} data offset {data_offset}"),
                side,
                input,
                expect,
            );
        }
    }
    // Real TCP options: MSS, window scale, SACK permitted, timestamps, up to 40 bytes.
    for (name, options) in [
        ("mss", vec![2, 4, 5, 0xb4]),
        (
            "mss wscale sack",
            vec![2, 4, 5, 0xb4, 1, 3, 3, 7, 4, 2, 1, 1],
        ),
        ("timestamps", vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]),
        ("40 bytes of options", {
            let mut o = vec![1; 39];
            o.push(0);
            o
        }),
    ] {
        let mut spec = Spec::inbound(false);
        spec.tcp_options = options;
        let input = spec.build();
        c.add(
            "tcp options",
            name.to_owned(),
            External,
            input.clone(),
            Forward("forwarded_in", to_node(&input)),
        );
    }

    // UDP length field against an 18-byte segment (8 + 10).
    for length in [0u16, 1, 7, 8, 9, 17, 18, 19, 100, 65535] {
        let mut input = Spec::inbound(true).build();
        set_u16(&mut input, 34 + 4, length);
        set_u16(&mut input, 34 + 6, 0); // no checksum: the length change needs no fix
        let expect = if !(8..=18).contains(&length) {
            Drop
        } else {
            Forward("forwarded_in", to_node(&input))
        };
        c.add(
            "udp length",
            format!("udp length {length}"),
            External,
            input,
            expect,
        );
    }

    // 802.1Q and QinQ tags around a frame that would otherwise be forwarded: the
    // program handles untagged Ethernet only, the kernel the rest.
    for (name, tags) in [
        ("802.1Q VID 0 (priority tag)", vec![(0x8100u16, 0x0000u16)]),
        ("802.1Q VID 1", vec![(0x8100, 0x0001)]),
        ("802.1Q VID 100 PCP 5", vec![(0x8100, 0xa064)]),
        ("802.1Q VID 4095", vec![(0x8100, 0x0fff)]),
        (
            "QinQ 802.1ad + 802.1Q",
            vec![(0x88a8, 0x0010), (0x8100, 0x0020)],
        ),
        (
            "QinQ 0x9100 + 802.1Q",
            vec![(0x9100, 0x0010), (0x8100, 0x0020)],
        ),
        ("double 802.1Q", vec![(0x8100, 0x0010), (0x8100, 0x0020)]),
        ("triple tag", vec![(0x88a8, 1), (0x8100, 2), (0x8100, 3)]),
    ] {
        let input = with_vlan_tags(&Spec::inbound(false).build(), &tags);
        c.add(
            "vlan",
            name.to_owned(),
            External,
            input,
            Pass("pass_not_ipv4"),
        );
        let input = with_vlan_tags(&Spec::outbound(true).build(), &tags);
        c.add(
            "vlan",
            format!("{name} from a node"),
            Internal,
            input,
            Pass("pass_not_ipv4"),
        );
    }
    // A VLAN tag with nothing behind it.
    let input = with_vlan_tags(&Spec::inbound(false).build()[..14], &[(0x8100, 5)]);
    c.add(
        "vlan",
        "802.1Q tag, no payload".to_owned(),
        External,
        input,
        Pass("pass_not_ipv4"),
    );

    // IPv6, with and without extension headers.
    let hop_by_hop = (0u8, vec![0, 0, 1, 4, 0, 0, 0, 0]);
    let routing = (
        43u8,
        vec![
            0, 2, 0, 0, 0, 0, 0, 0, 0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
        ],
    );
    let fragment = (44u8, vec![0, 0, 0, 1, 0, 0, 0, 9]);
    let destination = (60u8, vec![0, 0, 1, 4, 0, 0, 0, 0]);
    for (name, extensions, upper) in [
        ("tcp", vec![], 6u8),
        ("udp", vec![], 17),
        ("icmpv6 neighbour solicitation", vec![], 58),
        ("hop-by-hop, tcp", vec![hop_by_hop.clone()], 6),
        ("routing, tcp", vec![routing.clone()], 6),
        ("fragment, udp", vec![fragment.clone()], 17),
        ("destination options, tcp", vec![destination.clone()], 6),
        (
            "hop-by-hop, routing, fragment, destination options, tcp",
            vec![hop_by_hop, routing, fragment, destination],
            6,
        ),
    ] {
        let input = ipv6_frame(&extensions, upper);
        c.add(
            "ipv6",
            name.to_owned(),
            External,
            input,
            Pass("pass_not_ipv4"),
        );
    }
    let input = ipv6_frame(&[], 6)[..30].to_vec();
    c.add(
        "ipv6",
        "truncated IPv6 header".to_owned(),
        External,
        input,
        Pass("pass_not_ipv4"),
    );

    // ARP and other EtherTypes, and 802.3 length frames.
    let arp = |op: u16, sender: Ipv4Addr, target: Ipv4Addr| {
        let mut body = vec![0, 1, 0x08, 0, 6, 4];
        body.extend_from_slice(&op.to_be_bytes());
        body.extend_from_slice(&CLIENT_MAC);
        body.extend_from_slice(&sender.octets());
        body.extend_from_slice(&[0; 6]);
        body.extend_from_slice(&target.octets());
        body
    };
    for (name, dst, ether_type, body) in [
        (
            "ARP request for the VIP",
            [0xff; 6],
            0x0806u16,
            arp(1, CLIENT, VIP),
        ),
        ("ARP reply", EXT_MAC, 0x0806, arp(2, CLIENT, VIP)),
        (
            "gratuitous ARP claiming the VIP",
            [0xff; 6],
            0x0806,
            arp(1, VIP, VIP),
        ),
        ("RARP", [0xff; 6], 0x8035, arp(3, CLIENT, VIP)),
        (
            "LLDP",
            [0x01, 0x80, 0xc2, 0, 0, 0x0e],
            0x88cc,
            vec![2, 7, 4, 0, 0, 0, 0, 0, 1],
        ),
        (
            "802.3 length + LLC (STP)",
            [0x01, 0x80, 0xc2, 0, 0, 0],
            0x0026,
            vec![0x42, 0x42, 3, 0, 0, 0, 0],
        ),
        (
            "PPPoE discovery",
            [0xff; 6],
            0x8863,
            vec![0x11, 0x09, 0, 0, 0, 0],
        ),
        (
            "PPPoE session with IPv4 inside",
            EXT_MAC,
            0x8864,
            Spec::inbound(false).build()[14..].to_vec(),
        ),
        (
            "MPLS with IPv4 inside",
            EXT_MAC,
            0x8847,
            Spec::inbound(false).build()[10..].to_vec(),
        ),
        (
            "EAPOL",
            [0x01, 0x80, 0xc2, 0, 0, 3],
            0x888e,
            vec![1, 1, 0, 0],
        ),
        (
            "byte-swapped IPv4 EtherType",
            EXT_MAC,
            0x0008,
            Spec::inbound(false).build()[14..].to_vec(),
        ),
        ("EtherType 0xffff", EXT_MAC, 0xffff, vec![0; 46]),
    ] {
        let input = ethernet(dst, CLIENT_MAC, ether_type, &body);
        c.add(
            "ethertype",
            name.to_owned(),
            External,
            input,
            Pass("pass_not_ipv4"),
        );
    }

    // Broadcast and multicast: group MAC addresses with unicast IP to the VIP, and
    // broadcast or multicast IP destinations.
    for (name, dst) in [
        ("broadcast MAC", [0xff; 6]),
        ("IPv4 multicast MAC", [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01]),
        ("IPv6 multicast MAC", [0x33, 0x33, 0, 0, 0, 1]),
        ("other group MAC", [0x03, 0, 0, 0, 0, 0]),
    ] {
        for udp in [false, true] {
            let mut spec = Spec::inbound(udp);
            spec.macs.1 = dst;
            c.add(
                "broadcast",
                format!("{name} udp={udp}"),
                External,
                spec.build(),
                Pass("pass_not_ours"),
            );
            let mut spec = Spec::outbound(udp);
            spec.macs.1 = dst;
            c.add(
                "broadcast",
                format!("{name} from a node udp={udp}"),
                Internal,
                spec.build(),
                Pass("pass_not_ours"),
            );
        }
    }
    for destination in [
        Ipv4Addr::BROADCAST,
        Ipv4Addr::new(198, 18, 0, 255),
        Ipv4Addr::new(224, 0, 0, 1),
        Ipv4Addr::new(239, 1, 2, 3),
    ] {
        let mut spec = Spec::inbound(true);
        spec.dst.0 = destination;
        c.add(
            "broadcast",
            format!("udp to {destination}"),
            External,
            spec.build(),
            Pass("pass_not_ours"),
        );
    }
    // A node answering to a broadcast or multicast address, or to the gateway
    // itself, from a route port: nothing to forward to, the kernel decides.
    for destination in [
        Ipv4Addr::BROADCAST,
        Ipv4Addr::new(198, 19, 0, 255),
        Ipv4Addr::new(224, 0, 0, 251),
        Ipv4Addr::new(198, 19, 0, 1),
        VIP,
        Ipv4Addr::new(127, 0, 0, 1),
        Ipv4Addr::UNSPECIFIED,
    ] {
        let mut spec = Spec::outbound(true);
        spec.dst.0 = destination;
        c.add(
            "broadcast",
            format!("node to {destination}"),
            Internal,
            spec.build(),
            Pass("pass_fib_failed"),
        );
    }

    // Martian and spoofed sources to the VIP.
    for source in [
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::new(0, 1, 2, 3),
        Ipv4Addr::new(127, 0, 0, 1),
        Ipv4Addr::new(127, 255, 255, 254),
        Ipv4Addr::new(224, 0, 0, 5),
        Ipv4Addr::new(239, 255, 255, 250),
        Ipv4Addr::BROADCAST,
        VIP,
    ] {
        for udp in [false, true] {
            let mut spec = Spec::inbound(udp);
            spec.src.0 = source;
            c.add(
                "martian source",
                format!("from {source} udp={udp}"),
                External,
                spec.build(),
                Pass("pass_not_ours"),
            );
        }
    }

    // Not ours: other addresses, interfaces, directions and ports.
    let mut spec = Spec::inbound(false);
    spec.dst.0 = Ipv4Addr::new(198, 18, 0, 1);
    c.add(
        "not ours",
        "gateway's own address".to_owned(),
        External,
        spec.build(),
        Pass("pass_not_ours"),
    );
    c.add(
        "not ours",
        "VIP on the internal side".to_owned(),
        Internal,
        Spec::inbound(false).build(),
        Pass("pass_not_ours"),
    );
    c.add(
        "not ours",
        "VIP on another interface".to_owned(),
        Other,
        Spec::inbound(false).build(),
        Pass("pass_not_ours"),
    );
    c.add(
        "not ours",
        "node frame on the external side".to_owned(),
        External,
        Spec::outbound(false).build(),
        Pass("pass_not_ours"),
    );
    c.add(
        "not ours",
        "node frame on another interface".to_owned(),
        Other,
        Spec::outbound(false).build(),
        Pass("pass_not_ours"),
    );
    let mut spec = Spec::outbound(false);
    spec.src.0 = Ipv4Addr::new(198, 19, 0, 99);
    c.add(
        "not ours",
        "stranger on the internal side".to_owned(),
        Internal,
        spec.build(),
        Pass("pass_not_ours"),
    );
    for port in [0u16, 1, 7999, 8024, 8999, 9024, 65535] {
        let mut spec = Spec::inbound(false);
        spec.dst.1 = port;
        c.add(
            "ports",
            format!("VIP port {port}"),
            External,
            spec.build(),
            Pass("pass_not_route_port"),
        );
        let mut spec = Spec::outbound(true);
        spec.src.1 = port;
        c.add(
            "ports",
            format!("node source port {port}"),
            Internal,
            spec.build(),
            Pass("pass_not_route_port"),
        );
    }
    for port in [8000u16, 8007, 9000, 9007] {
        let mut spec = Spec::inbound(false);
        spec.dst.1 = port;
        let input = spec.build();
        c.add(
            "ports",
            format!("route port {port}"),
            External,
            input.clone(),
            Forward("forwarded_in", to_node(&input)),
        );
    }
    for port in [8020u16, 8023, 9020, 9023] {
        let mut spec = Spec::inbound(true);
        spec.dst.1 = port;
        c.add(
            "ports",
            format!("route port {port} without a node"),
            External,
            spec.build(),
            Pass("pass_no_node"),
        );
    }
    // Client source ports do not matter.
    for port in [0u16, 1, 8000, 65535] {
        let mut spec = Spec::inbound(false);
        spec.src.1 = port;
        let input = spec.build();
        c.add(
            "ports",
            format!("client source port {port}"),
            External,
            input.clone(),
            Forward("forwarded_in", to_node(&input)),
        );
    }

    // TTL: 0 and 1 are handed to the kernel rewritten (it answers time exceeded).
    for ttl in [0u8, 1, 2, 255] {
        for (side, spec) in [
            (External, Spec::inbound(false)),
            (Internal, Spec::outbound(true)),
        ] {
            let mut spec = spec;
            spec.ttl = ttl;
            let input = spec.build();
            let expect = match (ttl, side) {
                (0 | 1, External) => Handoff(
                    "pass_ttl",
                    rebuild(&input, input_macs(&input), None, Some(NODE_A), false),
                ),
                (0 | 1, _) => Handoff(
                    "pass_ttl",
                    rebuild(&input, input_macs(&input), Some(VIP), None, false),
                ),
                (_, External) => Forward("forwarded_in", to_node(&input)),
                _ => Forward("forwarded_out", to_client(&input)),
            };
            c.add("ttl", format!("{side:?} TTL {ttl}"), side, input, expect);
        }
    }
    // A node without a neighbour entry: handed over rewritten.
    let mut spec = Spec::inbound(false);
    spec.dst.1 = 8016; // route 17 -> slot 3
    let input = spec.build();
    let expected = rebuild(
        &input,
        input_macs(&input),
        None,
        Some(NODE_UNRESOLVED),
        false,
    );
    c.add(
        "size",
        "node without neighbour entry".to_owned(),
        External,
        input,
        Handoff("pass_no_neigh", expected),
    );

    // Sizes: the Ethernet minimum, exactly the MTU, one byte over (handed to the
    // kernel to fragment or refuse), and the largest frame the test run takes.
    for (name, payload, udp) in [
        ("minimum TCP frame", 0usize, false),
        ("UDP, empty payload", 0, true),
        ("TCP at the MTU", 1460, false),
        ("UDP at the MTU", 1472, true),
    ] {
        let mut spec = Spec::inbound(udp);
        spec.payload = (0..payload).map(|i| i as u8).collect();
        let mut input = spec.build();
        if input.len() < 60 {
            input.resize(60, 0);
        }
        c.add(
            "size",
            name.to_owned(),
            External,
            input.clone(),
            Forward("forwarded_in", to_node(&input)),
        );
        let mut spec = Spec::outbound(udp);
        spec.payload = (0..payload).map(|i| i as u8).collect();
        let input = spec.build();
        c.add(
            "size",
            format!("{name}, return"),
            Internal,
            input.clone(),
            Forward("forwarded_out", to_client(&input)),
        );
    }
    for (name, size) in [
        ("one byte over the MTU", 1515usize),
        ("largest test-run frame", MAX_TEST_RUN_FRAME),
    ] {
        for udp in [false, true] {
            let mut spec = Spec::inbound(udp);
            let headers = if udp { 14 + 20 + 8 } else { 14 + 20 + 20 };
            spec.payload = vec![0x5a; size - headers];
            let input = spec.build();
            let expected = rebuild(&input, input_macs(&input), None, Some(NODE_A), false);
            c.add(
                "size",
                format!("{name} udp={udp}"),
                External,
                input,
                Handoff("pass_mtu", expected),
            );
        }
    }

    // Bad checksums: forwarded (a router does not check transport checksums, and
    // the node's kernel drops them), the error kept exactly.
    for (name, at, udp) in [
        ("IPv4 header checksum", 24usize, false),
        ("IPv4 header checksum, udp", 24, true),
        ("TCP checksum", 34 + 16, false),
        ("UDP checksum", 34 + 6, true),
    ] {
        for delta in [1u16, 0x0100, 0x7fff, 0xfffe] {
            for (side, spec) in [
                (External, Spec::inbound(udp)),
                (Internal, Spec::outbound(udp)),
            ] {
                let good = spec.build();
                let mut input = good.clone();
                let value = u16::from_be_bytes([input[at], input[at + 1]]).wrapping_add(delta);
                if value == 0 || value == 0xffff {
                    continue;
                }
                set_u16(&mut input, at, value);
                let (reason, expected) = match side {
                    External => ("forwarded_in", to_node(&good)),
                    _ => ("forwarded_out", to_client(&good)),
                };
                c.add(
                    "bad checksum",
                    format!("{name} {side:?} off by {delta:#x}"),
                    side,
                    input,
                    ForwardBadChecksum(reason, expected),
                );
            }
        }
    }
    // UDP without a checksum keeps none.
    for (side, spec) in [
        (External, Spec::inbound(true)),
        (Internal, Spec::outbound(true)),
    ] {
        let mut input = spec.build();
        set_u16(&mut input, 34 + 6, 0);
        let expected = match side {
            External => Forward("forwarded_in", to_node(&input)),
            _ => Forward("forwarded_out", to_client(&input)),
        };
        c.add(
            "bad checksum",
            format!("UDP without checksum {side:?}"),
            side,
            input,
            expected,
        );
    }
    c.0
}

fn input_macs(input: &[u8]) -> ([u8; 6], [u8; 6]) {
    (
        input[6..12].try_into().unwrap(),
        input[0..6].try_into().unwrap(),
    )
}

// ---------------------------------------------------------------------------
// Running it.

struct Bed {
    dataplane: Dataplane,
    ext: u32,
    int: u32,
    lo: u32,
}

impl Bed {
    fn reasons(&self) -> Vec<(String, u64)> {
        self.dataplane
            .stats()
            .unwrap()
            .reasons
            .into_iter()
            .map(|(name, count)| (name.to_owned(), count))
            .collect()
    }
}

/// The corpus's gateway namespace (`support::in_gateway_netns`) with the VIP
/// local, as the operations guide asks, and the program loaded with its table.
fn in_corpus_netns(test: impl FnOnce(&Bed) + Send + 'static) {
    const NEIGHBOURS: &[(Ipv4Addr, [u8; 6])] = &[(CLIENT, CLIENT_MAC), (NODE_A, NODE_A_MAC)];
    in_gateway_netns(false, NEIGHBOURS, move |interfaces| {
        run(&["ip", "addr", "add", &format!("{VIP}/32"), "dev", "ext0"]);
        test(&load_corpus_table(interfaces));
    });
}

fn load_corpus_table(interfaces: Interfaces) -> Bed {
    let config = dataplane_config("xdp-corpus", "int0");
    let mut dataplane = Dataplane::load_unattached(&config).unwrap_or_else(|e| panic!("{e}"));
    // Slot 1 = node A, slot 3 = a node without a neighbour entry; routes 1-8 ->
    // slot 1, 17-20 -> slot 3, 21-24 none.
    let mut writes = vec![
        Write::Slot {
            slot: 1,
            node: Some(NodeTarget {
                addr: NODE_A,
                index: 0,
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
    for route in (1..=8u16).chain(17..=20) {
        writes.push(Write::Route {
            route,
            slot: Some(if route <= 8 { 1 } else { 3 }),
        });
    }
    dataplane.apply(&writes).unwrap_or_else(|e| panic!("{e}"));
    Bed {
        dataplane,
        ext: interfaces.ext,
        int: interfaces.int,
        lo: nix::net::if_::if_nametoindex("lo").unwrap(),
    }
}

/// Runs one case; returns what went wrong, if anything.
fn check(bed: &Bed, case: &Case) -> Result<(), String> {
    let ingress = match case.side {
        Side::External => bed.ext,
        Side::Internal => bed.int,
        Side::Other => bed.lo,
    };
    let before = bed.reasons();
    let result = bed.dataplane.test_run(&case.frame, ingress);
    if let Expect::Refused = case.expect {
        return match result {
            Err(_) => Ok(()),
            Ok((verdict, _)) => Err(format!(
                "expected the kernel to refuse it, the program answered {verdict}"
            )),
        };
    }
    let (verdict, out) = result.map_err(|e| format!("the test run failed: {e}"))?;
    let (want_verdict, reason) = match &case.expect {
        Expect::Pass(reason) | Expect::Handoff(reason, _) => (XDP_PASS, *reason),
        Expect::Drop => (XDP_DROP, "drop_malformed"),
        Expect::Forward(reason, _) | Expect::ForwardBadChecksum(reason, _) => {
            (XDP_REDIRECT, *reason)
        }
        Expect::Refused => unreachable!(),
    };
    let after = bed.reasons();
    let changed: Vec<String> = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b.1 != a.1)
        .map(|(b, a)| format!("{} +{}", a.0, a.1 - b.1))
        .collect();
    if verdict != want_verdict || changed != [format!("{reason} +1")] {
        return Err(format!(
            "verdict {verdict} counted {changed:?}, expected verdict {want_verdict} counted [{reason} +1]"
        ));
    }
    match &case.expect {
        Expect::Pass(_) | Expect::Drop => {
            if out != case.frame {
                return Err(format!(
                    "a frame that is not forwarded was changed: {}",
                    diff(&case.frame, &out)
                ));
            }
        }
        Expect::Forward(_, expected) | Expect::Handoff(_, expected) => {
            if &out != expected {
                return Err(format!(
                    "output differs from the expected frame: {}",
                    diff(expected, &out)
                ));
            }
        }
        Expect::ForwardBadChecksum(_, expected) => {
            let mut masked_out = out.clone();
            let mut masked_expected = expected.clone();
            for range in checksum_fields(expected) {
                masked_out[range.clone()].fill(0);
                masked_expected[range].fill(0);
            }
            if masked_out != masked_expected {
                return Err(format!(
                    "output differs outside the checksums: {}",
                    diff(&masked_expected, &masked_out)
                ));
            }
            if residuals(&out) != residuals(&case.frame) {
                return Err(format!(
                    "checksum errors not kept: input residuals {:x?}, output {:x?}",
                    residuals(&case.frame),
                    residuals(&out)
                ));
            }
        }
        Expect::Refused => unreachable!(),
    }
    Ok(())
}

fn diff(expected: &[u8], actual: &[u8]) -> String {
    if expected.len() != actual.len() {
        return format!("length {} instead of {}", actual.len(), expected.len());
    }
    let bytes: Vec<String> = expected
        .iter()
        .zip(actual)
        .enumerate()
        .filter(|(_, (e, a))| e != a)
        .take(8)
        .map(|(i, (e, a))| format!("byte {i}: {a:#04x} instead of {e:#04x}"))
        .collect();
    bytes.join(", ")
}

#[test]
fn every_frame_of_the_corpus_gets_its_expected_verdict_and_bytes() {
    let cases = corpus();
    in_corpus_netns(move |bed| {
        let mut failures = Vec::new();
        let mut per_category: Vec<(&str, usize)> = Vec::new();
        for case in &cases {
            match per_category
                .iter_mut()
                .find(|(name, _)| *name == case.category)
            {
                Some((_, count)) => *count += 1,
                None => per_category.push((case.category, 1)),
            }
            if let Err(problem) = check(bed, case) {
                failures.push(format!("[{}] {}: {problem}", case.category, case.name));
            }
        }
        let refused = cases
            .iter()
            .filter(|c| matches!(c.expect, Expect::Refused))
            .count();
        // Straight to stderr, past libtest's capture, so every run shows the count.
        let categories: Vec<String> = per_category
            .iter()
            .map(|(category, count)| format!("{category} {count}"))
            .collect();
        let _ = writeln!(
            std::io::stderr(),
            "xdp corpus: {} frames ({} through the program, {} refused by BPF_PROG_TEST_RUN), \
             {} failed; {}",
            cases.len(),
            cases.len() - refused,
            refused,
            failures.len(),
            categories.join(", ")
        );
        assert!(
            cases.len() - refused >= 200,
            "the corpus must hold at least 200 frames"
        );
        assert!(
            failures.is_empty(),
            "{} of {} frames failed:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
    });
}

/// Frames larger than the test run's linear buffer: the kernel either refuses
/// them or hands the program only the linear part; either way nothing may come
/// out changed or forwarded.
#[test]
fn frames_larger_than_a_page_are_never_forwarded() {
    in_corpus_netns(|bed| {
        for size in [MAX_TEST_RUN_FRAME + 1, 4096, 9014, 65535] {
            let mut spec = Spec::inbound(true);
            spec.payload = vec![0x5a; size.min(65535 - 28 + 14) - 42];
            let mut input = spec.build();
            input.resize(size, 0);
            match bed.dataplane.test_run(&input, bed.ext) {
                Err(_) => {}
                Ok((verdict, out)) => {
                    assert_ne!(verdict, XDP_REDIRECT, "a {size}-byte frame was forwarded");
                    if verdict == XDP_PASS {
                        assert_eq!(
                            &out[..],
                            &input[..out.len()],
                            "a {size}-byte frame was changed"
                        );
                    }
                }
            }
        }
    });
}
