//! The header checks the XDP program makes before it rewrites a packet, as pure
//! functions over header fields, so the host can fuzz exactly the decisions the
//! kernel program takes (`halod-ebpf` calls these; `tests` below drive them with
//! mutated frames against etherparse).
//!
//! Rule: a packet addressed to the gateway (the VIP, or from a node) is only
//! forwarded when its IPv4 and TCP/UDP headers are ones the receiving kernel would
//! accept too; anything else is passed to the gateway's kernel unchanged, which
//! answers or drops it as a router does, or dropped when no kernel would take it.

use crate::maps::Reason;

pub const ETH_HEADER_LEN: usize = 14;
pub const IPV4_HEADER_LEN: usize = 20;
pub const TCP_HEADER_LEN: usize = 20;
pub const UDP_HEADER_LEN: usize = 8;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// IPv4 "more fragments" flag and fragment offset mask of the flags/offset word.
pub const IP_MF: u16 = 0x2000;
pub const IP_OFFSET: u16 = 0x1fff;

/// Where the transport header of an accepted IPv4 packet lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transport {
    /// IPv4 header length in bytes (IHL × 4), so the transport header starts at
    /// `ETH_HEADER_LEN + header_len`.
    pub header_len: usize,
    /// Bytes of the IPv4 payload (total length minus header length): the
    /// transport header and its data, without Ethernet padding.
    pub segment_len: usize,
}

/// Checks the IPv4 header of a packet addressed to the gateway, from its fields
/// as they are on the wire (`vihl` = version and IHL byte; `total_len`, `frags` in
/// host order) and the length of the whole Ethernet frame. The order of the
/// checks is the order of RFC 791 / the kernel's `ip_rcv_core`.
///
/// - version not 4, IHL below 5, or total length shorter than the header:
///   `DropMalformed` (every IPv4 receiver drops it);
/// - frame shorter than the total length says: `PassTruncated`;
/// - neither TCP nor UDP: `PassOtherProtocol`;
/// - a fragment (MF set or an offset): `PassFragment` (only the first carries ports);
/// - total length too short for the TCP or UDP header: `PassTruncated`.
#[inline(always)]
pub fn check_ipv4(
    vihl: u8,
    total_len: u16,
    frags: u16,
    protocol: u8,
    frame_len: usize,
) -> Result<Transport, Reason> {
    let header_len = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || header_len < IPV4_HEADER_LEN {
        return Err(Reason::DropMalformed);
    }
    let total_len = total_len as usize;
    if total_len < header_len {
        return Err(Reason::DropMalformed);
    }
    if frame_len < ETH_HEADER_LEN + total_len {
        return Err(Reason::PassTruncated);
    }
    let transport_header_len = match protocol {
        IPPROTO_TCP => TCP_HEADER_LEN,
        IPPROTO_UDP => UDP_HEADER_LEN,
        _ => return Err(Reason::PassOtherProtocol),
    };
    if frags & (IP_MF | IP_OFFSET) != 0 {
        return Err(Reason::PassFragment);
    }
    let segment_len = total_len - header_len;
    if segment_len < transport_header_len {
        return Err(Reason::PassTruncated);
    }
    Ok(Transport {
        header_len,
        segment_len,
    })
}

/// Checks a TCP header's data offset byte (data offset in the high nibble) against
/// the segment length: below 5 words, or past the segment, no TCP accepts it
/// (RFC 9293 3.1; the kernel's `tcp_v4_rcv` drops it).
#[inline(always)]
pub fn check_tcp(data_offset_byte: u8, segment_len: usize) -> Result<(), Reason> {
    let header_len = ((data_offset_byte >> 4) as usize) * 4;
    if header_len < TCP_HEADER_LEN || header_len > segment_len {
        return Err(Reason::DropMalformed);
    }
    Ok(())
}

/// Checks a UDP length field (host order) against the segment length: below the
/// header, or past the segment, no UDP accepts it (RFC 768; the kernel's
/// `__udp4_lib_rcv` drops it as a short packet). Shorter than the segment is
/// legal (the receiver trims the rest).
#[inline(always)]
pub fn check_udp(length: u16, segment_len: usize) -> Result<(), Reason> {
    let length = length as usize;
    if length < UDP_HEADER_LEN || length > segment_len {
        return Err(Reason::DropMalformed);
    }
    Ok(())
}

/// A source address no router forwards from (the kernel's martian sources):
/// 0.0.0.0/8, 127.0.0.0/8, multicast 224.0.0.0/4 and the limited broadcast
/// 255.255.255.255. Client packets from one are passed to the kernel, which drops them.
#[inline(always)]
pub fn martian_source(addr: [u8; 4]) -> bool {
    addr[0] == 0 || addr[0] == 127 || (addr[0] & 0xf0) == 0xe0 || addr == [255; 4]
}

/// An Ethernet group address (broadcast or multicast: the I/G bit, the lowest bit
/// of the first byte). A router does not forward unicast IP that arrived in a
/// group frame (the kernel's `ip_forward` takes only PACKET_HOST), nor do we.
#[inline(always)]
pub fn group_mac(mac: [u8; 6]) -> bool {
    mac[0] & 1 == 1
}

#[cfg(test)]
mod tests;
