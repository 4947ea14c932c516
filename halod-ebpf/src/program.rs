use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup as FibParams, xdp_action,
    },
    helpers::generated::{bpf_fib_lookup, bpf_ktime_get_coarse_ns, bpf_redirect},
    macros::{map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use halod_common::{
    checksum,
    listener::route_for_port,
    maps::{
        CLIENT_NEXT_HOP_SLOTS, CONFIG_ENABLED, Config, Counter, DIRECT_FLOW_SLOTS, DirectFlow,
        NODE_PRESENT, NextHop, NodeAddr, NodeIndex, Reason, RouteSlot, SlotNode, client_slot,
    },
    packet::{self, IPPROTO_TCP},
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
    tcp::TcpHdr,
    udp::UdpHdr,
};

// Map sizes here are placeholders: user space sets the real ones at load time
// from the configuration (`EbpfLoader::set_max_entries`).

/// The gateway configuration (VIP, interfaces, listener groups), one entry.
/// Written by user space at start; read by the program for every packet.
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Route -> slot: `ROUTE_SLOT[route - 1]` is the slot serving the route, 0 for none.
/// Written by user space (dataplane actor); read by the program on the inbound path.
#[map]
static ROUTE_SLOT: Array<RouteSlot> = Array::with_max_entries(1, 0);

/// Slot -> node: `SLOT_NODE[slot - 1]` is the node in the slot. A spare taking over
/// is one write here. Written by user space; read by the program on the inbound path.
#[map]
static SLOT_NODE: Array<SlotNode> = Array::with_max_entries(1, 0);

/// Node address -> node counter index, for every node in a slot. Written by user
/// space; read by the program to recognise return traffic.
#[map]
static NODE_BY_ADDR: HashMap<NodeAddr, NodeIndex> = HashMap::with_max_entries(1, 0);

/// Per-route packets and bytes forwarded (both directions), index `route - 1`.
/// Written by the program; read by user space (stats).
#[map]
static ROUTE_COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(1, 0);

/// Per-node packets and bytes forwarded (both directions), by node index.
/// Written by the program; read by user space (stats).
#[map]
static NODE_COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(1, 0);

/// Packets per verdict reason (`Reason` as index). Written by the program; read by
/// user space (stats).
#[map]
static REASON_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

/// Next hop per node index (same index space as `NODE_COUNTERS`), per CPU: what
/// `bpf_fib_lookup` last answered for the node, so that the node's packets skip the
/// lookup while the entry is younger than `Config::next_hop_ttl_ms`. Written and
/// read by the program only; user space sizes it.
#[map]
static NEXT_HOP: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(1, 0);

/// Next hop of node replies per client, per CPU, the same way: a direct-mapped cache
/// (`client_slot(client)`), where a client whose slot holds another client's entry
/// is looked up afresh and takes the slot over. Written and read by the program only.
#[map]
static CLIENT_NEXT_HOP: PerCpuArray<NextHop> =
    PerCpuArray::with_max_entries(CLIENT_NEXT_HOP_SLOTS, 0);

/// Connections that clients on the external side opened to a node's own
/// address on a route port (health checks, monitors), recorded from their first
/// packet (TCP SYN, or any UDP datagram), so that the node's answers keep its
/// address instead of being sent back as the VIP. Written and read by the
/// program; least recently used entries go first.
#[map]
static DIRECT_FLOWS: LruHashMap<DirectFlow, u32> =
    LruHashMap::with_max_entries(DIRECT_FLOW_SLOTS, 0);

/// Per node index: non-zero once `DIRECT_FLOWS` has held a connection to the
/// node, so that the replies of the other nodes skip that lookup. Written by the
/// program; user space sizes it.
#[map]
static DIRECT_NODES: Array<u32> = Array::with_max_entries(1, 0);

const AF_INET: u8 = 2;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const NS_PER_MS: u64 = 1_000_000;

#[xdp]
pub fn halod(ctx: XdpContext) -> u32 {
    // Every `Err` is "no configuration" (the single config entry is missing, which
    // only happens before user space writes it): let the kernel have the packet.
    try_halod(&ctx).unwrap_or_else(|()| pass(Reason::PassNotConfigured))
}

/// Counts `reason` and passes the packet to the kernel stack.
#[inline(always)]
fn pass(reason: Reason) -> u32 {
    count(reason);
    xdp_action::XDP_PASS
}

/// Counts `reason` and drops the packet if it is malformed, else passes it.
#[inline(always)]
fn refuse(reason: Reason) -> u32 {
    count(reason);
    if matches!(reason, Reason::DropMalformed) {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

#[inline(always)]
fn count(reason: Reason) {
    if let Some(counter) = REASON_COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU value, no other writer on this CPU while we run.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
fn add(counters: &PerCpuArray<Counter>, index: u32, bytes: u64) {
    if let Some(counter) = counters.get_ptr_mut(index) {
        // SAFETY: per-CPU value, no other writer on this CPU while we run.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}

/// A pointer to a `T` at `offset` bytes into the frame, or `None` when the frame
/// ends before the whole `T` (the bounds check the verifier requires).
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Where the L4 checksum lives and how it must be updated.
#[derive(Clone, Copy)]
enum L4 {
    Tcp(*mut TcpHdr),
    Udp(*mut UdpHdr),
}

fn try_halod(ctx: &XdpContext) -> Result<u32, ()> {
    let config = CONFIG.get(0).ok_or(())?;
    if config.flags & CONFIG_ENABLED == 0 {
        return Err(());
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Ok(pass(Reason::PassTruncated));
    };
    // SAFETY: `ptr_at` checked the bounds; the header is copied, not borrowed.
    let ethernet = unsafe { *eth };
    if ethernet.ether_type != EtherType::Ipv4 as u16 {
        return Ok(pass(Reason::PassNotIpv4));
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN) else {
        return Ok(pass(Reason::PassTruncated));
    };
    // SAFETY: `ptr_at` checked the bounds; the header is copied, not borrowed.
    let header = unsafe { *ip };
    let ingress = ctx.ingress_ifindex() as u32;
    // Broadcast and multicast frames are the kernel's (a router forwards none).
    if packet::group_mac(ethernet.dst_addr) {
        return Ok(pass(Reason::PassNotOurs));
    }

    // Inbound: a client packet for the VIP on the external interface, from an
    // address a router would forward from.
    let inbound = ingress == config.external_ifindex && header.dst_addr == config.vip;
    if inbound && (packet::martian_source(header.src_addr) || header.src_addr == config.vip) {
        return Ok(pass(Reason::PassNotOurs));
    }
    // Return: a packet from a node on the internal interface (one hash lookup).
    let mut return_node: Option<NodeIndex> = None;
    // Direct: a client packet for a node's own address on the external side.
    let mut direct_node: Option<NodeIndex> = None;
    if !inbound && ingress == config.external_ifindex {
        // SAFETY: the value is a plain u32 copied out at once.
        if let Some(index) = unsafe {
            NODE_BY_ADDR.get(NodeAddr {
                addr: header.dst_addr,
            })
        } {
            direct_node = Some(*index);
        }
    }
    if !inbound && direct_node.is_none() {
        if ingress != config.internal_ifindex {
            return Ok(pass(Reason::PassNotOurs));
        }
        // SAFETY: the value is a plain u32 copied out at once.
        match unsafe {
            NODE_BY_ADDR.get(NodeAddr {
                addr: header.src_addr,
            })
        } {
            Some(index) => return_node = Some(*index),
            None => return Ok(pass(Reason::PassNotOurs)),
        }
    }

    // From here the packet is addressed to us; check it the way the kernel would.
    let total_len = u16::from_be_bytes(header.tot_len);
    let frame_len = ctx.data_end() - ctx.data();
    let transport = match packet::check_ipv4(
        header.vihl,
        total_len,
        u16::from_be_bytes(header.frags),
        header.proto,
        frame_len,
    ) {
        Ok(transport) => transport,
        Err(reason) => return Ok(refuse(reason)),
    };
    let l4_offset = EthHdr::LEN + transport.header_len;
    // A connection's first packet: a TCP SYN without ACK, or any UDP datagram.
    let mut opening = true;
    let (l4, source_port, destination_port) = if header.proto == IPPROTO_TCP {
        let Some(tcp) = ptr_at::<TcpHdr>(ctx, l4_offset) else {
            return Ok(pass(Reason::PassTruncated));
        };
        // SAFETY: `ptr_at` checked the bounds. Byte 12 of the TCP header holds the
        // data offset in its high nibble, byte 13 the flags.
        let (source, dest, data_offset, flags) = unsafe {
            (
                (*tcp).source,
                (*tcp).dest,
                *(tcp as *const u8).add(12),
                *(tcp as *const u8).add(13),
            )
        };
        if let Err(reason) = packet::check_tcp(data_offset, transport.segment_len) {
            return Ok(refuse(reason));
        }
        opening = flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        (L4::Tcp(tcp), source, dest)
    } else {
        let Some(udp) = ptr_at::<UdpHdr>(ctx, l4_offset) else {
            return Ok(pass(Reason::PassTruncated));
        };
        // SAFETY: `ptr_at` checked the bounds.
        let (source, dest, length) = unsafe { ((*udp).src, (*udp).dst, (*udp).len) };
        if let Err(reason) = packet::check_udp(u16::from_be_bytes(length), transport.segment_len) {
            return Ok(refuse(reason));
        }
        (L4::Udp(udp), source, dest)
    };
    let route_port = if return_node.is_none() {
        u16::from_be_bytes(destination_port)
    } else {
        u16::from_be_bytes(source_port)
    };
    let Some(route) = route_for_port(
        route_port,
        &config.listeners,
        config.listener_count,
        config.routes,
    ) else {
        return Ok(pass(Reason::PassNotRoutePort));
    };
    // The client and the node of a connection to a node's own address, as a
    // `DIRECT_FLOWS` key (the node's answers swap the two ends).
    let flow = |client: ([u8; 4], [u8; 2]), node: ([u8; 4], [u8; 2])| DirectFlow {
        client: client.0,
        node: node.0,
        client_port: client.1,
        node_port: node.1,
        protocol: header.proto,
        _pad: [0; 3],
    };
    if let Some(index) = direct_node {
        if opening {
            let key = flow(
                (header.src_addr, source_port),
                (header.dst_addr, destination_port),
            );
            // An LRU map makes room by itself; a failed insert only means the
            // answers leave as the VIP, as they would without this map.
            let _ = DIRECT_FLOWS.insert(key, 0, 0);
            if let Some(seen) = DIRECT_NODES.get_ptr_mut(index) {
                // SAFETY: a u32 in a shared array; written only while 0, so
                // the cache line is not dirtied for every connection.
                unsafe {
                    if *seen == 0 {
                        *seen = 1;
                    }
                }
            }
        }
        return Ok(pass(Reason::PassDirect));
    }
    // The address that changes, and the one the next hop is looked up for.
    let (node_index, old_addr, new_addr, fib_source, fib_destination) = match return_node {
        None => {
            // Two O(1) lookups: route -> slot, slot -> node.
            let slot = *ROUTE_SLOT.get(route as u32 - 1).ok_or(())?;
            if slot == 0 {
                return Ok(pass(Reason::PassNoNode));
            }
            let Some(node) = SLOT_NODE.get(slot - 1) else {
                return Ok(pass(Reason::PassNoNode));
            };
            if node.flags & NODE_PRESENT == 0 {
                return Ok(pass(Reason::PassNoNode));
            }
            // A client that opens a connection through the VIP from an address
            // and port it once used for a direct connection to this node must
            // get its answers as the VIP: the old entry goes.
            if opening && direct_seen(node.index) {
                let key = flow(
                    (header.src_addr, source_port),
                    (node.addr, destination_port),
                );
                let _ = DIRECT_FLOWS.remove(key);
            }
            (
                node.index,
                header.dst_addr,
                node.addr,
                header.src_addr,
                node.addr,
            )
        }
        Some(index) => {
            // An answer on a connection the client opened to the node's own
            // address keeps that address. Nodes that never had such a
            // connection skip the lookup.
            let key = flow(
                (header.dst_addr, destination_port),
                (header.src_addr, source_port),
            );
            if direct_seen(index) && DIRECT_FLOWS.get_ptr(key).is_some() {
                return Ok(pass(Reason::PassDirect));
            }
            (
                index,
                header.src_addr,
                config.vip,
                config.vip,
                header.dst_addr,
            )
        }
    };

    let inbound_rewrite = return_node.is_none();
    // Cases the kernel must finish (time exceeded, neighbour resolution,
    // fragmentation): it only does so for packets it forwards, so it gets the
    // packet with the address already rewritten, and forwards it itself
    // (decrementing the TTL).
    let hand_over = |reason: Reason| {
        rewrite_addresses(
            ip,
            l4,
            inbound_rewrite,
            u16::from_be_bytes(header.check),
            old_addr,
            new_addr,
        );
        pass(reason)
    };
    if header.ttl <= 1 {
        return Ok(hand_over(Reason::PassTtl));
    }

    // The next hop: from the cache (the node's entry for client packets, the
    // client's slot for node replies) when the entry was looked up for this
    // destination less than the TTL ago; else from the kernel, and a successful
    // answer is cached.
    let entry = if inbound_rewrite {
        NEXT_HOP.get_ptr_mut(node_index)
    } else {
        CLIENT_NEXT_HOP.get_ptr_mut(client_slot(fib_destination))
    };
    let cache = entry.map(|entry| {
        // SAFETY: helper without arguments.
        (entry, unsafe { bpf_ktime_get_coarse_ns() })
    });
    let hit = cache.and_then(|(entry, now)| {
        // SAFETY: per-CPU value, no other writer on this CPU while we run; copied out.
        let hop = unsafe { *entry };
        let ttl = u64::from(config.next_hop_ttl_ms) * NS_PER_MS;
        let fresh = now.wrapping_sub(hop.resolved_ns) < ttl;
        (hop.ifindex != 0 && hop.addr == fib_destination && fresh).then_some(hop)
    });
    let (dmac, smac, egress) = match hit {
        Some(hop) => {
            // The check the lookup would make against the route's MTU.
            if total_len > hop.mtu {
                return Ok(hand_over(Reason::PassMtu));
            }
            (hop.dmac, hop.smac, hop.ifindex)
        }
        None => {
            let fib = match fib_lookup(
                ctx,
                &header,
                total_len,
                (source_port, destination_port),
                (fib_source, fib_destination),
            ) {
                Ok(fib) => fib,
                // The next hop is not resolved yet (the kernel still named the
                // egress interface), or the packet needs fragmenting.
                Err((reason @ (Reason::PassNoNeigh | Reason::PassMtu), egress)) => {
                    if !inbound_rewrite
                        && reason == Reason::PassNoNeigh
                        && node_side(config, egress)
                    {
                        return Ok(pass(Reason::PassDirect));
                    }
                    return Ok(hand_over(reason));
                }
                Err((reason, _)) => return Ok(pass(reason)),
            };
            if let Some((entry, now)) = cache {
                // SAFETY: as above; written whole, on this CPU only.
                unsafe {
                    *entry = NextHop {
                        addr: fib_destination,
                        ifindex: fib.ifindex,
                        dmac: fib.dmac,
                        smac: fib.smac,
                        // On success the kernel leaves the route's MTU here (it
                        // checked `tot_len` against it).
                        mtu: fib.__bindgen_anon_1.mtu_result,
                        _pad: [0; 2],
                        resolved_ns: now,
                    }
                };
            }
            (fib.dmac, fib.smac, fib.ifindex)
        }
    };

    // A client on the node side (reached through the internal interface) did
    // not come through the VIP, which is served on the external side only: its
    // answer keeps the node's address.
    if !inbound_rewrite && node_side(config, egress) {
        return Ok(pass(Reason::PassDirect));
    }

    // Forward: next-hop MACs, TTL, address. SAFETY: pointers from `ptr_at`.
    unsafe {
        (*eth).dst_addr = dmac;
        (*eth).src_addr = smac;
        (*ip).ttl = header.ttl - 1;
    }
    // The header checksum is written once, with both updates (TTL, then address).
    let check = checksum::decrement_ttl(u16::from_be_bytes(header.check), header.ttl, header.proto);
    rewrite_addresses(ip, l4, inbound_rewrite, check, old_addr, new_addr);

    let bytes = frame_len as u64;
    add(&ROUTE_COUNTERS, route as u32 - 1, bytes);
    add(&NODE_COUNTERS, node_index, bytes);
    count(if inbound_rewrite {
        Reason::ForwardedIn
    } else {
        Reason::ForwardedOut
    });
    if egress == ingress {
        return Ok(xdp_action::XDP_TX);
    }
    // SAFETY: plain helper call; it only records the target for after we return.
    Ok(unsafe { bpf_redirect(egress, 0) } as u32)
}

/// Whether `egress` leads to the nodes' side only (not where the VIP's clients are).
#[inline(always)]
fn node_side(config: &Config, egress: u32) -> bool {
    egress == config.internal_ifindex && egress != config.external_ifindex
}

/// Whether `DIRECT_FLOWS` has ever held a connection to node `index`.
#[inline(always)]
fn direct_seen(index: NodeIndex) -> bool {
    DIRECT_NODES.get(index).is_some_and(|seen| *seen != 0)
}

/// Asks the kernel for the next hop of the packet (`bpf_fib_lookup`, which also
/// checks `total_len` against the route's MTU). `Err` is the reason to give the
/// packet when the lookup did not succeed, with the egress interface the kernel
/// named (meaningful for `PassNoNeigh` only).
#[inline(always)]
fn fib_lookup(
    ctx: &XdpContext,
    header: &Ipv4Hdr,
    total_len: u16,
    ports: ([u8; 2], [u8; 2]),
    addresses: ([u8; 4], [u8; 4]),
) -> Result<FibParams, (Reason, u32)> {
    // SAFETY: all-zero is a valid `bpf_fib_lookup` (plain integers and unions of them).
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = header.proto;
    fib.sport = u16::from_ne_bytes(ports.0);
    fib.dport = u16::from_ne_bytes(ports.1);
    fib.__bindgen_anon_1.tot_len = total_len;
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.__bindgen_anon_2.tos = header.tos;
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(addresses.0);
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(addresses.1);
    // SAFETY: `fib` is a live stack value of the size passed.
    let answer = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut c_void,
            &mut fib,
            size_of::<FibParams>() as i32,
            0,
        )
    };
    match answer as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => Ok(fib),
        BPF_FIB_LKUP_RET_NO_NEIGH => Err((Reason::PassNoNeigh, fib.ifindex)),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Err((Reason::PassMtu, 0)),
        _ => Err((Reason::PassFibFailed, 0)),
    }
}

/// Rewrites the destination (inbound) or source (return) address from `old` to
/// `new`, updating the IPv4 and TCP/UDP checksums incrementally (RFC 1624).
/// `check` is the IPv4 header checksum as it is in the frame now.
#[inline(always)]
fn rewrite_addresses(
    ip: *mut Ipv4Hdr,
    l4: L4,
    destination: bool,
    check: u16,
    old: [u8; 4],
    new: [u8; 4],
) {
    // SAFETY (all blocks): every pointer came from `ptr_at`.
    unsafe {
        (*ip).check = checksum::replace_addr(check, old, new).to_be_bytes();
        if destination {
            (*ip).dst_addr = new;
        } else {
            (*ip).src_addr = new;
        }
    }
    match l4 {
        L4::Tcp(tcp) => unsafe {
            (*tcp).check =
                checksum::tcp_addr(u16::from_be_bytes((*tcp).check), old, new).to_be_bytes();
        },
        L4::Udp(udp) => unsafe {
            (*udp).check =
                checksum::udp_addr(u16::from_be_bytes((*udp).check), old, new).to_be_bytes();
        },
    }
}
