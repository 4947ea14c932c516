use core::mem::size_of;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
    tcp::TcpHdr,
    udp::UdpHdr,
};

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// The destination address (wire bytes) whose frames `bench_sink` counts and drops,
/// entry 0. Written by xtask before attaching; read by the sink for every frame.
#[map]
static SINK_ADDR: Array<[u8; 4]> = Array::with_max_entries(1, 0);

/// Frames counted by `bench_sink` (entry 0) and frames it passed (entry 1).
/// Written by the sink; read by xtask.
#[map]
static SINK_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// Length of the generator's frames (a 64-byte frame on the wire, without its FCS).
pub const TX_LEN: usize = 60;

/// The frame `bench_tx` sends (the first `TX_LEN` bytes of entry 0). Written by xtask
/// before generating; read by the generator for every frame.
#[map]
static TX_FRAME: Array<[u8; 64]> = Array::with_max_entries(1, 0);

/// The generator: with live frames, `XDP_TX` sends the frame out of the ingress interface.
/// The frame is written afresh every time: live frames recycle their pages without
/// resetting them, and out of a veth the receiver rewrites the same page in place (XDP
/// or the kernel's NAT), so without this the generator would send what the gateway left.
#[xdp]
pub fn bench_tx(ctx: XdpContext) -> u32 {
    let Some(template) = TX_FRAME.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let Some(frame) = ptr_at::<[u8; TX_LEN]>(&ctx, 0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: `ptr_at` checked the bounds; the template is a map value of 64 bytes.
    unsafe { *frame = *(template.as_ptr() as *const [u8; TX_LEN]) };
    xdp_action::XDP_TX
}

#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    let verdict = match ptr_at::<Ipv4Hdr>(&ctx, EthHdr::LEN) {
        Some(ip) if is_ipv4(&ctx) => {
            let wanted = SINK_ADDR.get(0).copied().unwrap_or([0; 4]);
            // SAFETY: `ptr_at` checked the bounds.
            if unsafe { (*ip).dst_addr } == wanted {
                xdp_action::XDP_DROP
            } else {
                xdp_action::XDP_PASS
            }
        }
        _ => xdp_action::XDP_PASS,
    };
    let index = if verdict == xdp_action::XDP_DROP {
        0
    } else {
        1
    };
    if let Some(counter) = SINK_COUNT.get_ptr_mut(index) {
        // SAFETY: per-CPU value, no other writer on this CPU while we run.
        unsafe { *counter += 1 };
    }
    verdict
}

/// Parse-and-pass: the work every XDP load balancer does before its own.
#[xdp]
pub fn bench_floor(ctx: XdpContext) -> u32 {
    // Port 0 is never valid; the comparison keeps the port reads in the program.
    if floor_destination_port(&ctx) == 0 {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// The TCP/UDP destination port (with the source port read too), or `NOT_PARSED`.
#[inline(always)]
fn floor_destination_port(ctx: &XdpContext) -> u32 {
    const NOT_PARSED: u32 = 1 << 16;
    if !is_ipv4(ctx) {
        return NOT_PARSED;
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN) else {
        return NOT_PARSED;
    };
    // SAFETY: `ptr_at` checked the bounds.
    let (vihl, proto) = unsafe { ((*ip).vihl, (*ip).proto) };
    let header_len = ((vihl & 0x0f) as usize) * 4;
    if header_len < Ipv4Hdr::LEN {
        return NOT_PARSED;
    }
    let l4 = EthHdr::LEN + header_len;
    // TCP and UDP both start with source port, destination port.
    let ports = match proto {
        IPPROTO_TCP => ptr_at::<TcpHdr>(ctx, l4).map(|tcp| tcp as *const [u8; 4]),
        IPPROTO_UDP => ptr_at::<UdpHdr>(ctx, l4).map(|udp| udp as *const [u8; 4]),
        _ => None,
    };
    match ports {
        Some(ports) => {
            // SAFETY: `ptr_at` checked the bounds of the whole header.
            let ports = unsafe { *ports };
            let source = u16::from_be_bytes([ports[0], ports[1]]);
            let destination = u16::from_be_bytes([ports[2], ports[3]]);
            u32::from(destination) | (u32::from(source == 0) << 17)
        }
        None => NOT_PARSED,
    }
}

#[inline(always)]
fn is_ipv4(ctx: &XdpContext) -> bool {
    match ptr_at::<EthHdr>(ctx, 0) {
        Some(eth) => {
            // SAFETY: `ptr_at` checked the bounds.
            let ether_type = unsafe { (*eth).ether_type };
            ether_type == EtherType::Ipv4 as u16
        }
        None => false,
    }
}

/// A pointer to a `T` at `offset` bytes into the frame, or `None` when the frame ends
/// before the whole `T` (the bounds check the verifier requires).
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}
