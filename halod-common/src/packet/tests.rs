//! Unit tests of the header checks, and the fuzz of the parse and rewrite logic:
//! mutated frames go through the same steps as the XDP program (the checks of
//! [`super`], then the incremental checksum updates of [`crate::checksum`]), and
//! etherparse, an independent parser, judges the result.
//!
//! Case count: `HALOD_FUZZ_CASES` (default 10,000; `cargo xtask fuzz` runs
//! 100,000 in release).

extern crate std;
use std::{vec, vec::Vec};

use etherparse::{
    InternetSlice, IpNumber, Ipv4Header, PacketBuilder, SlicedPacket, TransportSlice,
};
use proptest::{prelude::*, test_runner::Config};

use super::*;
use crate::checksum;

#[test]
fn ipv4_checks_follow_the_kernels_order() {
    let ok = |vihl, total, frags, protocol, frame| check_ipv4(vihl, total, frags, protocol, frame);
    assert_eq!(
        ok(0x45, 40, 0, IPPROTO_TCP, 54),
        Ok(Transport {
            header_len: 20,
            segment_len: 20
        })
    );
    assert_eq!(ok(0x44, 40, 0, IPPROTO_TCP, 54), Err(Reason::DropMalformed));
    assert_eq!(ok(0x65, 40, 0, IPPROTO_TCP, 54), Err(Reason::DropMalformed));
    assert_eq!(ok(0x46, 20, 0, IPPROTO_TCP, 54), Err(Reason::DropMalformed));
    assert_eq!(ok(0x45, 41, 0, IPPROTO_TCP, 54), Err(Reason::PassTruncated));
    assert_eq!(ok(0x45, 40, 0, 1, 54), Err(Reason::PassOtherProtocol));
    assert_eq!(
        ok(0x45, 40, IP_MF, IPPROTO_UDP, 54),
        Err(Reason::PassFragment)
    );
    assert_eq!(ok(0x45, 40, 1, IPPROTO_UDP, 54), Err(Reason::PassFragment));
    assert_eq!(
        ok(0x45, 40, 0x4000 | 0x8000, IPPROTO_UDP, 54),
        Ok(Transport {
            header_len: 20,
            segment_len: 20
        })
    );
    assert_eq!(ok(0x45, 39, 0, IPPROTO_TCP, 54), Err(Reason::PassTruncated));
    assert_eq!(ok(0x45, 27, 0, IPPROTO_UDP, 54), Err(Reason::PassTruncated));
    assert_eq!(
        ok(0x4f, 68, 0, IPPROTO_UDP, 82),
        Ok(Transport {
            header_len: 60,
            segment_len: 8
        })
    );
}

#[test]
fn transport_checks() {
    assert_eq!(check_tcp(0x50, 20), Ok(()));
    assert_eq!(check_tcp(0x4f, 60), Err(Reason::DropMalformed));
    assert_eq!(check_tcp(0xf0, 60), Ok(()));
    assert_eq!(check_tcp(0xf0, 59), Err(Reason::DropMalformed));
    assert_eq!(check_udp(8, 8), Ok(()));
    assert_eq!(check_udp(7, 8), Err(Reason::DropMalformed));
    assert_eq!(check_udp(9, 8), Err(Reason::DropMalformed));
    assert_eq!(check_udp(8, 100), Ok(()));
}

#[test]
fn martians_and_group_addresses() {
    for martian in [
        [0, 0, 0, 0],
        [0, 9, 9, 9],
        [127, 0, 0, 1],
        [224, 0, 0, 1],
        [239, 255, 255, 255],
        [255, 255, 255, 255],
    ] {
        assert!(martian_source(martian), "{martian:?}");
    }
    for fine in [
        [1, 0, 0, 0],
        [198, 18, 0, 1],
        [223, 255, 255, 255],
        [240, 0, 0, 1],
    ] {
        assert!(!martian_source(fine), "{fine:?}");
    }
    assert!(group_mac([0xff; 6]));
    assert!(group_mac([0x01, 0, 0x5e, 0, 0, 1]));
    assert!(group_mac([0x33, 0x33, 0, 0, 0, 1]));
    assert!(!group_mac([0x02, 0, 0, 0, 0, 1]));
}

/// What the XDP program decides for a frame addressed to the gateway, replayed on
/// the host with the shared functions in the program's order.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    NotIpv4,
    Refused(Reason),
    Accepted {
        transport: Transport,
        tcp: bool,
        ports: (u16, u16),
    },
}

fn word(frame: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

fn decide(frame: &[u8]) -> Decision {
    if frame.len() < ETH_HEADER_LEN {
        return Decision::Refused(Reason::PassTruncated);
    }
    if word(frame, 12) != 0x0800 {
        return Decision::NotIpv4;
    }
    if frame.len() < ETH_HEADER_LEN + IPV4_HEADER_LEN {
        return Decision::Refused(Reason::PassTruncated);
    }
    let ip = &frame[ETH_HEADER_LEN..];
    let transport = match check_ipv4(ip[0], word(ip, 2), word(ip, 6), ip[9], frame.len()) {
        Ok(transport) => transport,
        Err(reason) => return Decision::Refused(reason),
    };
    let l4 = ETH_HEADER_LEN + transport.header_len;
    let tcp = ip[9] == IPPROTO_TCP;
    // The program's `ptr_at` would fail here; the checks above must make that
    // impossible, so the fuzz treats it as a bug, not as a verdict.
    let header = if tcp { TCP_HEADER_LEN } else { UDP_HEADER_LEN };
    assert!(
        l4 + header <= frame.len(),
        "accepted IPv4 header leaves no room for the transport header: {frame:02x?}"
    );
    let checked = if tcp {
        check_tcp(frame[l4 + 12], transport.segment_len)
    } else {
        check_udp(word(frame, l4 + 4), transport.segment_len)
    };
    if let Err(reason) = checked {
        return Decision::Refused(reason);
    }
    Decision::Accepted {
        transport,
        tcp,
        ports: (word(frame, l4), word(frame, l4 + 2)),
    }
}

/// The rewrite the program makes on the forward path: one address to `new`, the
/// TTL decremented (unless it hands the packet over at TTL 0 or 1), checksums
/// updated incrementally.
fn rewrite(frame: &mut [u8], transport: Transport, tcp: bool, destination: bool, new: [u8; 4]) {
    let ip = ETH_HEADER_LEN;
    let field = if destination { ip + 16 } else { ip + 12 };
    let old: [u8; 4] = frame[field..field + 4].try_into().unwrap();
    let ttl = frame[ip + 8];
    let mut check = word(frame, ip + 10);
    if ttl > 1 {
        check = checksum::decrement_ttl(check, ttl, frame[ip + 9]);
        frame[ip + 8] = ttl - 1;
    }
    check = checksum::replace_addr(check, old, new);
    frame[ip + 10..ip + 12].copy_from_slice(&check.to_be_bytes());
    frame[field..field + 4].copy_from_slice(&new);
    let l4 = ip + transport.header_len;
    let at = if tcp { l4 + 16 } else { l4 + 6 };
    let old_check = word(frame, at);
    let updated = if tcp {
        checksum::tcp_addr(old_check, old, new)
    } else {
        checksum::udp_addr(old_check, old, new)
    };
    frame[at..at + 2].copy_from_slice(&updated.to_be_bytes());
}

/// Ones' complement sum of big-endian words, folded (odd length padded).
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

/// Sums over the IPv4 header and over pseudo-header plus segment, checksum
/// fields included: 0xffff each when the checksums are right.
fn residuals(frame: &[u8], transport: Transport) -> (u16, u16) {
    let ip = &frame[ETH_HEADER_LEN..];
    let header = ones_sum(&ip[..transport.header_len]);
    let segment = &ip[transport.header_len..transport.header_len + transport.segment_len];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, ip[9]]);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(segment);
    (header, ones_sum(&pseudo))
}

/// A valid Ethernet/IPv4/TCP-or-UDP frame from random fields.
fn base_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        any::<([u8; 4], [u8; 4], u16, u16, u8)>(),
        prop::sample::select(vec![0usize, 4, 8, 12, 40]),
        prop::sample::select(vec![0usize, 4, 12, 40]),
        prop::collection::vec(any::<u8>(), 0..64),
        0usize..8,
    )
        .prop_map(
            |(udp, (src, dst, sport, dport, ttl), ip_options, tcp_options, payload, padding)| {
                let mut ip = Ipv4Header::new(
                    0,
                    ttl,
                    if udp { IpNumber::UDP } else { IpNumber::TCP },
                    src,
                    dst,
                )
                .unwrap();
                let mut options = vec![1u8; ip_options];
                if let Some(last) = options.last_mut() {
                    *last = 0;
                }
                ip.options = options[..].try_into().unwrap();
                let step = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                    .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()));
                let mut out = Vec::new();
                if udp {
                    step.udp(sport, dport).write(&mut out, &payload).unwrap();
                } else {
                    step.tcp(sport, dport, 1, 1000)
                        .options_raw(&vec![1u8; tcp_options])
                        .unwrap()
                        .write(&mut out, &payload)
                        .unwrap();
                }
                out.resize(out.len() + padding, 0);
                out
            },
        )
}

/// Byte positions worth mutating most: the headers.
fn mutated_frame() -> impl Strategy<Value = Vec<u8>> {
    let edits = prop::collection::vec((0usize..100, any::<u8>(), any::<bool>()), 0..6);
    prop_oneof![
        8 => (base_frame(), edits, prop::option::of(0usize..140)).prop_map(|(mut frame, edits, cut)| {
            for (at, value, replace_nibble) in edits {
                if at < frame.len() {
                    frame[at] = if replace_nibble { (frame[at] & 0xf0) | (value & 0x0f) } else { value };
                }
            }
            if let Some(cut) = cut {
                frame.truncate(cut);
            }
            frame
        }),
        1 => prop::collection::vec(any::<u8>(), 0..120).prop_map(|mut frame| {
            if frame.len() >= 14 {
                frame[12] = 0x08;
                frame[13] = 0x00;
            }
            frame
        }),
    ]
}

fn fuzz_cases() -> u32 {
    std::env::var("HALOD_FUZZ_CASES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(10_000)
}

proptest! {
    #![proptest_config(Config { cases: fuzz_cases(), failure_persistence: None, ..Config::default() })]

    /// Every accepted frame is a well-formed, unfragmented IPv4 TCP/UDP packet
    /// to etherparse with the same ports, and every such packet is accepted; a
    /// dropped one is one etherparse refuses too; passed fragments and other
    /// protocols are what etherparse calls them. The rewrite keeps right
    /// checksums right and wrong ones exactly as wrong.
    #[test]
    fn fuzz_parse_and_rewrite(
        frame in mutated_frame(),
        new in any::<[u8; 4]>(),
        destination in any::<bool>(),
    ) {
        let decision = decide(&frame);
        let parsed = SlicedPacket::from_ethernet(&frame);
        let clean = match &parsed {
            Ok(SlicedPacket { net: Some(InternetSlice::Ipv4(ip)), transport: Some(t @ (TransportSlice::Tcp(_) | TransportSlice::Udp(_))), .. })
                if !ip.is_payload_fragmented() && word(&frame, 12) == 0x0800 =>
            {
                let (ports, jumbogram) = match t {
                    TransportSlice::Tcp(tcp) => ((tcp.source_port(), tcp.destination_port()), false),
                    // etherparse takes UDP length 0 as a jumbogram (RFC 2675), which
                    // exists in IPv6 only; IPv4 receivers drop it as a short packet.
                    TransportSlice::Udp(udp) => ((udp.source_port(), udp.destination_port()), udp.length() == 0),
                    _ => unreachable!(),
                };
                (!jumbogram).then(|| (ip.header().ihl() as usize * 4, ip.payload().payload.len(), ports))
            }
            _ => None,
        };
        match (&decision, &clean) {
            (Decision::Accepted { transport, ports, .. }, Some((header_len, segment_len, their_ports))) => {
                prop_assert_eq!(transport.header_len, *header_len);
                prop_assert_eq!(transport.segment_len, *segment_len);
                prop_assert_eq!(ports, their_ports);
            }
            (Decision::Accepted { .. }, None) => {
                prop_assert!(false, "accepted a frame etherparse refuses ({:?}): {:02x?}", parsed.err(), frame);
            }
            (other, Some(_)) => {
                prop_assert!(false, "refused ({:?}) a packet etherparse finds clean: {:02x?}", other, frame);
            }
            (Decision::Refused(Reason::DropMalformed), None) => {
                let udp_length_zero = matches!(&parsed, Ok(SlicedPacket { transport: Some(TransportSlice::Udp(udp)), .. }) if udp.length() == 0);
                prop_assert!(parsed.is_err() || udp_length_zero, "dropped a frame etherparse parses: {:02x?}", frame);
            }
            (Decision::Refused(Reason::PassFragment), None) => {
                if let Ok(SlicedPacket { net: Some(InternetSlice::Ipv4(ip)), .. }) = &parsed {
                    prop_assert!(ip.is_payload_fragmented());
                }
            }
            (Decision::Refused(Reason::PassOtherProtocol), None) => {
                if let Ok(SlicedPacket { net: Some(InternetSlice::Ipv4(ip)), .. }) = &parsed {
                    let protocol = ip.header().protocol();
                    prop_assert!(protocol != IpNumber::TCP && protocol != IpNumber::UDP);
                }
            }
            (_, None) => {}
        }

        if let Decision::Accepted { transport, tcp, .. } = decision {
            let before = residuals(&frame, transport);
            let mut out = frame.clone();
            rewrite(&mut out, transport, tcp, destination, new);
            let after = residuals(&out, transport);
            let ip = ETH_HEADER_LEN;
            let udp_without_checksum = !tcp && word(&frame, ip + transport.header_len + 6) == 0;
            // A right checksum (sum 0xffff) stays right; the error of a wrong one is
            // kept. (Ones' complement has two zeros: an update may turn a sum of 0
            // into 0xffff.) The sums are computed here, not by etherparse, which
            // drops the reserved bits of the IPv4 flags and the TCP header.
            prop_assert!(after.0 == before.0 || (before.0 == 0 && after.0 == 0xffff), "IPv4 residual {:#x} -> {:#x}", before.0, after.0);
            let udp_length = word(&frame, ip + transport.header_len + 4) as usize;
            if udp_without_checksum {
                prop_assert_eq!(word(&out, ip + transport.header_len + 6), 0);
            } else if tcp || udp_length == transport.segment_len {
                prop_assert!(after.1 == before.1 || (before.1 == 0 && after.1 == 0xffff), "transport residual {:#x} -> {:#x}", before.1, after.1);
            }
            if before.0 == 0xffff {
                // And etherparse agrees on the IPv4 header when it can represent it.
                let (header, _) = Ipv4Header::from_slice(&out[ip..]).unwrap();
                if out[ip + 6] & 0x80 == 0 {
                    prop_assert_eq!(header.header_checksum, header.calc_header_checksum());
                }
            }
            // Nothing but the TTL, the address and the checksums changed.
            let l4 = ip + transport.header_len;
            let check_at = if tcp { l4 + 16 } else { l4 + 6 };
            for (i, (a, b)) in frame.iter().zip(&out).enumerate() {
                let allowed = i == ip + 8 || (ip + 10..ip + 12).contains(&i)
                    || (if destination { ip + 16..ip + 20 } else { ip + 12..ip + 16 }).contains(&i)
                    || (check_at..check_at + 2).contains(&i);
                prop_assert!(allowed || a == b, "byte {} changed", i);
            }
        }
    }
}
