use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    bindings::{
        BPF_F_MMAPABLE, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, xdp_action,
    },
    helpers::generated::{bpf_fib_lookup, bpf_ktime_get_coarse_ns, bpf_redirect},
    macros::{map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use halod_common::{
    checksum,
    heartbeat::{self, PAYLOAD_LEN},
    listener::route_for_port,
    maps::{
        CLIENT_NEXT_HOP_SLOTS, CONFIG_ENABLED, CONFIG_RECENT_FLOWS, Config, Counter,
        DIRECT_FLOW_SLOTS, DRAIN_ACTIVE, DRAIN_NEW_PRESENT, DirectFlow, DrainFlow, FlowNode,
        HeartbeatSlot, NODE_PRESENT, NextHop, NodeAddr, NodeIndex, ROUTE_DRAINING, Reason,
        RecentFlow, RecentNode, RouteDrain, RouteSlot, SlotNode, client_slot, drain_counter,
    },
    packet::{self, IPPROTO_TCP, IPPROTO_UDP},
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

/// Per route (`route - 1`): the drain in progress, read only for routes whose
/// `ROUTE_SLOT` value has `ROUTE_DRAINING`. Written by user space.
#[map]
static ROUTE_DRAIN: Array<RouteDrain> = Array::with_max_entries(1, 0);

/// TCP connections opened to a draining route (from their SYN), with the node
/// they reached; every other connection of the route belongs to the old node.
/// Bounded (`nodes.drain_flows`): when full, a new connection goes to the old
/// node, which it then keeps. Written by the program; user space removes the
/// entries of ended drains.
#[map]
static DRAIN_FLOWS: HashMap<DrainFlow, FlowNode> = HashMap::with_max_entries(1, 0);

/// Packets and connections of draining routes (`drain_counter`). Written by
/// the program; read by user space (stats).
#[map]
static DRAIN_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drain_counter::COUNT, 0);

/// TCP connections clients opened through the VIP (from their SYN), with the
/// node the SYN went to, so that user space can tell the clients of a node
/// that died (the dead-node flush). Bounded (`nodes.flush_flows`), least
/// recently used first out; an entry goes at the client's FIN or RST.
/// Written by the program only while `CONFIG_RECENT_FLOWS` is set; read (and
/// pruned) by user space when a node fails.
#[map]
static RECENT_FLOWS: LruHashMap<RecentFlow, RecentNode> = LruHashMap::with_max_entries(1, 0);

/// Per node index: connections `RECENT_FLOWS` gained (SYN) minus those it lost
/// to a FIN or RST (wrapping per CPU; user space sums). What the map lost to
/// its LRU is not subtracted: at a failure, this minus the node's entries is
/// what the map forgot. Written by the program; read and reset by user space.
#[map]
static RECENT_NODES: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per route (`route - 1`): connections `RECENT_FLOWS` gained (SYN) minus
/// those it lost to the client's FIN or RST, as `RECENT_NODES` per node
/// (wrapping per CPU; user space sums): the route's established-connection
/// estimate. Only SYN, FIN and RST packets touch it. Written by the program;
/// read by user space (stats). Its second half (`routes + route - 1`) is
/// user space's: the connections of the route the dead-node flush told.
#[map]
static ROUTE_CONNECTIONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per node index: the node's heartbeat key, address and last UDP heartbeat
/// (protocol version 2). Written by user space when it welcomes or forgets a
/// node; `last_ns` written by the program for every heartbeat that matches.
/// Memory-mappable, so the daemon reads the stamps by plain loads at its
/// failure sweeps. Not pinned.
#[map]
static HEARTBEATS: Array<HeartbeatSlot> = Array::with_max_entries(1, BPF_F_MMAPABLE);

const AF_INET: u8 = 2;
const BPF_NOEXIST: u64 = 1;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const NS_PER_MS: u64 = 1_000_000;

#[xdp]
pub fn halod(ctx: XdpContext) -> u32 {
    match try_halod(&ctx) {
        Ok(action) => action,
        Err(reason) => verdict(reason),
    }
}

/// Counts `reason` and gives a packet that is not forwarded its action: a
/// malformed one is dropped, every other one passed to the kernel stack.
#[inline(always)]
fn verdict(reason: Reason) -> u32 {
    count(reason);
    if matches!(
        reason,
        Reason::DropMalformed | Reason::Heartbeat | Reason::DropHeartbeat
    ) {
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

/// An IPv4 frame: where its headers are, and a copy of the IPv4 header.
struct Frame {
    eth: *mut EthHdr,
    ip: *mut Ipv4Hdr,
    header: Ipv4Hdr,
    ingress: u32,
}

/// Which way a packet of ours goes.
#[derive(Clone, Copy)]
enum Direction {
    /// A client's packet for the VIP, on the external interface.
    Inbound,
    /// A node's packet (its counter index), on the internal interface.
    Return(NodeIndex),
    /// A client's packet for a node's own address (its counter index), on the
    /// external interface: a health check or a monitor, not the VIP.
    Direct(NodeIndex),
}

/// The checked TCP or UDP header of a packet of ours.
struct Segment {
    l4: L4,
    source_port: [u8; 2],
    destination_port: [u8; 2],
    /// A connection's first packet: a TCP SYN without ACK, or any UDP datagram.
    opening: bool,
    /// A TCP FIN or RST.
    closing: bool,
    total_len: u16,
    frame_len: usize,
}

/// The address that changes, and the one the next hop is looked up for.
struct Target {
    node_index: NodeIndex,
    /// A client's packet to a node (the destination changes), or a node's
    /// answer (the source changes).
    inbound: bool,
    old_addr: [u8; 4],
    new_addr: [u8; 4],
    fib_source: [u8; 4],
    fib_destination: [u8; 4],
}

/// Where the rewritten packet leaves.
struct Hop {
    dmac: [u8; 6],
    smac: [u8; 6],
    egress: u32,
}

/// parse -> classify -> transport -> route -> look up -> next hop -> forward.
/// `Err` is the reason the packet is not forwarded ([`verdict`]).
fn try_halod(ctx: &XdpContext) -> Result<u32, Reason> {
    let config = configuration()?;
    let frame = parse(ctx)?;
    let direction = match classify(config, &frame) {
        Ok(direction) => direction,
        // A spare's heartbeat comes this way (only nodes in a slot are in
        // `NODE_BY_ADDR`): it is for the gateway itself, not routed.
        Err(Reason::PassNotOurs) => return Err(not_ours(ctx, config, &frame)),
        Err(reason) => return Err(reason),
    };
    let segment = transport(ctx, &frame)?;
    let route = match route_of(config, direction, &segment) {
        Ok(route) => route,
        // An active node's heartbeat is a packet from a node, as its answers
        // to clients are, but from a port that is no route port: the routed
        // path pays nothing for heartbeats. (One sent from a port that is a
        // route port goes on as an answer, to the gateway's own address, and
        // the kernel hands it to the daemon's heartbeat socket.)
        Err(reason) => {
            return Err(match direction {
                Direction::Return(_) => heartbeat(ctx, config, &frame, &segment).unwrap_or(reason),
                _ => reason,
            });
        }
    };
    let target = match direction {
        Direction::Direct(index) => return Err(note_direct(index, &frame, &segment)),
        Direction::Inbound => {
            let target = to_node(route, &frame, &segment)?;
            if config.flags & CONFIG_RECENT_FLOWS != 0 {
                note_recent(&frame, &segment, route, target.node_index);
            }
            target
        }
        Direction::Return(index) => to_client(config, index, &frame, &segment)?,
    };
    let hop = next_hop(ctx, config, &frame, &segment, &target)?;
    Ok(forward(&frame, &segment, &target, route, &hop))
}

/// A packet that is not for the VIP nor from a node in a slot: a heartbeat
/// (stamped or refused, and dropped), else the kernel's.
#[inline(always)]
fn not_ours(ctx: &XdpContext, config: &Config, frame: &Frame) -> Reason {
    if frame.header.proto != IPPROTO_UDP {
        return Reason::PassNotOurs;
    }
    match transport(ctx, frame) {
        Ok(segment) => heartbeat(ctx, config, frame, &segment).unwrap_or(Reason::PassNotOurs),
        Err(_) => Reason::PassNotOurs,
    }
}

/// A UDP datagram to the heartbeat port whose payload is a heartbeat
/// (`HLHB`, id, key: docs/protocol.md): its node's `HEARTBEATS` entry is
/// stamped when the key and the source address are the node's (`Heartbeat`),
/// else nothing is (`DropHeartbeat`); dropped either way. `None`: not a
/// heartbeat, the packet goes its way.
#[inline(always)]
fn heartbeat(
    ctx: &XdpContext,
    config: &Config,
    frame: &Frame,
    segment: &Segment,
) -> Option<Reason> {
    let L4::Udp(udp) = segment.l4 else {
        return None;
    };
    if config.heartbeat_port == [0, 0] || segment.destination_port != config.heartbeat_port {
        return None;
    }
    // SAFETY: `transport` checked the bounds of the UDP header.
    let length = u16::from_be_bytes(unsafe { (*udp).len });
    if usize::from(length) != UdpHdr::LEN + PAYLOAD_LEN {
        return None;
    }
    let payload = udp as usize + UdpHdr::LEN;
    if payload + PAYLOAD_LEN > ctx.data_end() {
        return None;
    }
    // SAFETY: bounds checked just above; copied out at once.
    let beat = heartbeat::parse_exact(unsafe { &*(payload as *const [u8; PAYLOAD_LEN]) })?;
    let Some(slot) = HEARTBEATS.get_ptr_mut(beat.id) else {
        return Some(Reason::DropHeartbeat);
    };
    // SAFETY: a value of a shared array; the fields are read and written
    // whole (user space writes them with atomic stores).
    unsafe {
        if beat.key == 0 || (*slot).key != beat.key || (*slot).addr != frame.header.src_addr {
            return Some(Reason::DropHeartbeat);
        }
        (*slot).last_ns = bpf_ktime_get_coarse_ns();
    }
    Some(Reason::Heartbeat)
}

/// The configuration user space wrote; until then every packet is the kernel's.
#[inline(always)]
fn configuration() -> Result<&'static Config, Reason> {
    match CONFIG.get(0) {
        Some(config) if config.flags & CONFIG_ENABLED != 0 => Ok(config),
        _ => Err(Reason::PassNotConfigured),
    }
}

/// The Ethernet and IPv4 headers of a unicast IPv4 frame.
#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<Frame, Reason> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Reason::PassTruncated)?;
    // SAFETY: `ptr_at` checked the bounds; the header is copied, not borrowed.
    let ethernet = unsafe { *eth };
    if ethernet.ether_type != EtherType::Ipv4 as u16 {
        return Err(Reason::PassNotIpv4);
    }
    let ip = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN).ok_or(Reason::PassTruncated)?;
    // Broadcast and multicast frames are the kernel's (a router forwards none).
    if packet::group_mac(ethernet.dst_addr) {
        return Err(Reason::PassNotOurs);
    }
    Ok(Frame {
        eth,
        ip,
        // SAFETY: `ptr_at` checked the bounds; the header is copied, not borrowed.
        header: unsafe { *ip },
        ingress: ctx.ingress_ifindex() as u32,
    })
}

/// Which way the packet goes, if it is ours: for the VIP from a client, from
/// a node, or for a node's own address. At most one hash lookup.
#[inline(always)]
fn classify(config: &Config, frame: &Frame) -> Result<Direction, Reason> {
    let header = &frame.header;
    let external = frame.ingress == config.external_ifindex;
    if external && header.dst_addr == config.vip {
        // From an address a router would forward from.
        if packet::martian_source(header.src_addr) || header.src_addr == config.vip {
            return Err(Reason::PassNotOurs);
        }
        return Ok(Direction::Inbound);
    }
    if external {
        // SAFETY: the value is a plain u32 copied out at once.
        if let Some(index) = unsafe {
            NODE_BY_ADDR.get(NodeAddr {
                addr: header.dst_addr,
            })
        } {
            return Ok(Direction::Direct(*index));
        }
    }
    if frame.ingress != config.internal_ifindex {
        return Err(Reason::PassNotOurs);
    }
    // SAFETY: the value is a plain u32 copied out at once.
    match unsafe {
        NODE_BY_ADDR.get(NodeAddr {
            addr: header.src_addr,
        })
    } {
        Some(index) => Ok(Direction::Return(*index)),
        None => Err(Reason::PassNotOurs),
    }
}

/// The TCP or UDP header, checked the way the receiving kernel would.
#[inline(always)]
fn transport(ctx: &XdpContext, frame: &Frame) -> Result<Segment, Reason> {
    let header = &frame.header;
    let total_len = u16::from_be_bytes(header.tot_len);
    let frame_len = ctx.data_end() - ctx.data();
    let transport = packet::check_ipv4(
        header.vihl,
        total_len,
        u16::from_be_bytes(header.frags),
        header.proto,
        frame_len,
    )?;
    let l4_offset = EthHdr::LEN + transport.header_len;
    if header.proto == IPPROTO_TCP {
        let tcp = ptr_at::<TcpHdr>(ctx, l4_offset).ok_or(Reason::PassTruncated)?;
        // SAFETY: `ptr_at` checked the bounds. Byte 12 of the TCP header holds the
        // data offset in its high nibble, byte 13 the flags.
        let (source_port, destination_port, data_offset, flags) = unsafe {
            (
                (*tcp).source,
                (*tcp).dest,
                *(tcp as *const u8).add(12),
                *(tcp as *const u8).add(13),
            )
        };
        packet::check_tcp(data_offset, transport.segment_len)?;
        Ok(Segment {
            l4: L4::Tcp(tcp),
            source_port,
            destination_port,
            opening: flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
            closing: flags & (TCP_FIN | TCP_RST) != 0,
            total_len,
            frame_len,
        })
    } else {
        let udp = ptr_at::<UdpHdr>(ctx, l4_offset).ok_or(Reason::PassTruncated)?;
        // SAFETY: `ptr_at` checked the bounds.
        let (source_port, destination_port, length) =
            unsafe { ((*udp).src, (*udp).dst, (*udp).len) };
        packet::check_udp(u16::from_be_bytes(length), transport.segment_len)?;
        Ok(Segment {
            l4: L4::Udp(udp),
            source_port,
            destination_port,
            opening: true,
            closing: false,
            total_len,
            frame_len,
        })
    }
}

/// The route of the packet's route-side port: the destination port of a
/// client's packet, the source port of a node's.
#[inline(always)]
fn route_of(config: &Config, direction: Direction, segment: &Segment) -> Result<u16, Reason> {
    let port = match direction {
        Direction::Return(_) => segment.source_port,
        Direction::Inbound | Direction::Direct(_) => segment.destination_port,
    };
    route_for_port(
        u16::from_be_bytes(port),
        &config.listeners,
        config.listener_count,
        config.routes,
    )
    .ok_or(Reason::PassNotRoutePort)
}

/// The `DIRECT_FLOWS` key of a connection between a client and a node's own
/// address, each given as (address, port).
#[inline(always)]
fn direct_flow(protocol: u8, client: ([u8; 4], [u8; 2]), node: ([u8; 4], [u8; 2])) -> DirectFlow {
    DirectFlow {
        client: client.0,
        node: node.0,
        client_port: client.1,
        node_port: node.1,
        protocol,
        _pad: [0; 3],
    }
}

/// Whether `DIRECT_FLOWS` has ever held a connection to node `index`.
#[inline(always)]
fn direct_seen(index: NodeIndex) -> bool {
    DIRECT_NODES.get(index).is_some_and(|seen| *seen != 0)
}

/// A client's packet for a node's own address: its connection is remembered
/// from its first packet, so that the node's answers keep the node's address.
/// The kernel forwards it as it is.
#[inline(always)]
fn note_direct(index: NodeIndex, frame: &Frame, segment: &Segment) -> Reason {
    if segment.opening {
        let header = &frame.header;
        let key = direct_flow(
            header.proto,
            (header.src_addr, segment.source_port),
            (header.dst_addr, segment.destination_port),
        );
        // An LRU map makes room by itself; a failed insert only means the
        // answers leave as the VIP, as they would without this map.
        let _ = DIRECT_FLOWS.insert(key, 0, 0);
        if let Some(seen) = DIRECT_NODES.get_ptr_mut(index) {
            // SAFETY: a u32 in a shared array; written only while 0, so the
            // cache line is not dirtied for every connection.
            unsafe {
                if *seen == 0 {
                    *seen = 1;
                }
            }
        }
    }
    Reason::PassDirect
}

/// A client's packet for the VIP: to the node in the route's slot (two O(1)
/// lookups: route -> slot, slot -> node), or, while the route drains, to its
/// old node for a connection opened before the move.
#[inline(always)]
fn to_node(route: u16, frame: &Frame, segment: &Segment) -> Result<Target, Reason> {
    let value = *ROUTE_SLOT.get(route as u32 - 1).ok_or(Reason::PassNoNode)?;
    let drained = if value & ROUTE_DRAINING != 0 {
        drained_to(route, frame, segment)
    } else {
        None
    };
    let (addr, index) = match drained {
        Some(node) => node?,
        None => {
            let slot = value & !ROUTE_DRAINING;
            if slot == 0 {
                return Err(Reason::PassNoNode);
            }
            let node = SLOT_NODE.get(slot - 1).ok_or(Reason::PassNoNode)?;
            if node.flags & NODE_PRESENT == 0 {
                return Err(Reason::PassNoNode);
            }
            (node.addr, node.index)
        }
    };
    let header = &frame.header;
    // A client that opens a connection through the VIP from an address and
    // port it once used for a direct connection to this node must get its
    // answers as the VIP: the old entry goes.
    if segment.opening && direct_seen(index) {
        let key = direct_flow(
            header.proto,
            (header.src_addr, segment.source_port),
            (addr, segment.destination_port),
        );
        let _ = DIRECT_FLOWS.remove(key);
    }
    Ok(Target {
        node_index: index,
        inbound: true,
        old_addr: header.dst_addr,
        new_addr: addr,
        fib_source: header.src_addr,
        fib_destination: addr,
    })
}

/// Records a TCP connection opened through the VIP in `RECENT_FLOWS` with
/// the node its SYN goes to, and forgets it at the client's FIN or RST,
/// counting it for the node and the route meanwhile. Every other packet
/// costs nothing here. The key holds the VIP port, so an entry found for a
/// packet of `route` is a connection of `route`.
#[inline(always)]
fn note_recent(frame: &Frame, segment: &Segment, route: u16, index: NodeIndex) {
    if !matches!(segment.l4, L4::Tcp(_)) || !(segment.opening || segment.closing) {
        return;
    }
    let key = RecentFlow {
        client: frame.header.src_addr,
        client_port: segment.source_port,
        vip_port: segment.destination_port,
    };
    let known = RECENT_FLOWS.get_ptr_mut(key);
    if segment.opening {
        match known {
            // A retransmitted SYN, or a port used again: the node it goes to now.
            Some(value) => {
                // SAFETY: a u32 in the map's value, copied out and written whole.
                let old = unsafe { *value };
                if old != index {
                    unsafe { *value = index };
                    count_recent(old, false);
                    count_recent(index, true);
                }
            }
            None => {
                // An LRU map makes room by itself (forgetting the oldest).
                if RECENT_FLOWS.insert(key, index, BPF_NOEXIST).is_ok() {
                    count_recent(index, true);
                    count_route(route, true);
                }
            }
        }
    } else if let Some(value) = known {
        // SAFETY: as above.
        let old = unsafe { *value };
        if RECENT_FLOWS.remove(key).is_ok() {
            count_recent(old, false);
            count_route(route, false);
        }
    }
}

#[inline(always)]
fn count_route(route: u16, gained: bool) {
    step(&ROUTE_CONNECTIONS, route as u32 - 1, gained);
}

#[inline(always)]
fn count_recent(index: NodeIndex, gained: bool) {
    step(&RECENT_NODES, index, gained);
}

/// One up (`gained`) or down, wrapping: a CPU can see a connection end that
/// another CPU saw open.
#[inline(always)]
fn step(counters: &PerCpuArray<u64>, index: u32, gained: bool) {
    if let Some(counter) = counters.get_ptr_mut(index) {
        // SAFETY: per-CPU value, no other writer on this CPU while we run.
        unsafe {
            *counter = if gained {
                (*counter).wrapping_add(1)
            } else {
                (*counter).wrapping_sub(1)
            }
        };
    }
}

/// The node (address, counter index) of a packet of a draining route, or
/// `None` when the route does not drain (any more): the route's slot says.
/// A TCP connection opened since the move (its SYN recorded) goes to the
/// node it was opened to, any other to the old node. UDP has no connection
/// and goes to the new node.
#[inline(always)]
fn drained_to(
    route: u16,
    frame: &Frame,
    segment: &Segment,
) -> Option<Result<([u8; 4], NodeIndex), Reason>> {
    let drain = ROUTE_DRAIN.get(route as u32 - 1)?;
    if drain.flags & DRAIN_ACTIVE == 0 {
        return None;
    }
    // SAFETY: helper without arguments.
    if unsafe { bpf_ktime_get_coarse_ns() } >= drain.until_ns {
        return None;
    }
    let new = (drain.flags & DRAIN_NEW_PRESENT != 0).then_some(FlowNode {
        addr: drain.new_addr,
        index: drain.new_index,
    });
    if frame.header.proto != IPPROTO_TCP {
        return Some(
            new.map(|node| (node.addr, node.index))
                .ok_or(Reason::PassNoNode),
        );
    }
    let key = DrainFlow {
        client: frame.header.src_addr,
        client_port: segment.source_port,
        route,
    };
    if segment.opening {
        let Some(new) = new else {
            return Some(Err(Reason::PassNoNode));
        };
        if DRAIN_FLOWS.insert(key, new, 0).is_ok() {
            count_drain(drain_counter::NEW_FLOWS);
            return Some(Ok((new.addr, new.index)));
        }
        // No room: the connection is the old node's, from its first packet on.
        count_drain(drain_counter::FULL);
    } else if let Some(node) = DRAIN_FLOWS.get_ptr(key) {
        // SAFETY: copied out at once.
        let node = unsafe { *node };
        return Some(Ok((node.addr, node.index)));
    }
    count_drain(drain_counter::TO_OLD);
    Some(Ok((drain.old_addr, drain.old_index)))
}

#[inline(always)]
fn count_drain(index: u32) {
    if let Some(counter) = DRAIN_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU value, no other writer on this CPU while we run.
        unsafe { *counter += 1 };
    }
}

/// A node's answer: back to the client as the VIP, unless it answers a
/// connection the client opened to the node's own address. Nodes that never
/// had such a connection skip that lookup.
#[inline(always)]
fn to_client(
    config: &Config,
    index: NodeIndex,
    frame: &Frame,
    segment: &Segment,
) -> Result<Target, Reason> {
    let header = &frame.header;
    if direct_seen(index) {
        let key = direct_flow(
            header.proto,
            (header.dst_addr, segment.destination_port),
            (header.src_addr, segment.source_port),
        );
        if DIRECT_FLOWS.get_ptr(key).is_some() {
            return Err(Reason::PassDirect);
        }
    }
    Ok(Target {
        node_index: index,
        inbound: false,
        old_addr: header.src_addr,
        new_addr: config.vip,
        fib_source: config.vip,
        fib_destination: header.dst_addr,
    })
}

/// Whether `egress` leads to the nodes' side only (not where the VIP's clients are).
#[inline(always)]
fn node_side(config: &Config, egress: u32) -> bool {
    egress == config.internal_ifindex && egress != config.external_ifindex
}

/// Rewrites the address and gives the packet to the kernel to finish (time
/// exceeded, neighbour resolution, fragmentation): it does so only for packets
/// it forwards itself, decrementing the TTL.
#[inline(always)]
fn hand_over(frame: &Frame, segment: &Segment, target: &Target, reason: Reason) -> Reason {
    rewrite_addresses(
        frame.ip,
        segment.l4,
        target.inbound,
        u16::from_be_bytes(frame.header.check),
        target.old_addr,
        target.new_addr,
    );
    reason
}

/// The next hop: from the cache (the node's entry for client packets, the
/// client's slot for node answers) when the entry was looked up for this
/// destination less than the TTL ago; else from the kernel, and a successful
/// answer is cached. A node's answer to a client on the node side keeps its
/// address: the VIP is served on the external side only.
#[inline(always)]
fn next_hop(
    ctx: &XdpContext,
    config: &Config,
    frame: &Frame,
    segment: &Segment,
    target: &Target,
) -> Result<Hop, Reason> {
    let header = &frame.header;
    if header.ttl <= 1 {
        return Err(hand_over(frame, segment, target, Reason::PassTtl));
    }
    let entry = if target.inbound {
        NEXT_HOP.get_ptr_mut(target.node_index)
    } else {
        CLIENT_NEXT_HOP.get_ptr_mut(client_slot(target.fib_destination))
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
        (hop.ifindex != 0 && hop.addr == target.fib_destination && fresh).then_some(hop)
    });
    let hop = match hit {
        Some(hop) => {
            // The check the lookup would make against the route's MTU.
            if segment.total_len > hop.mtu {
                return Err(hand_over(frame, segment, target, Reason::PassMtu));
            }
            Hop {
                dmac: hop.dmac,
                smac: hop.smac,
                egress: hop.ifindex,
            }
        }
        None => {
            let fib = match fib_lookup(
                ctx,
                header,
                segment.total_len,
                (segment.source_port, segment.destination_port),
                (target.fib_source, target.fib_destination),
            ) {
                Ok(fib) => fib,
                // The next hop is not resolved yet (the kernel still named the
                // egress interface), or the packet needs fragmenting.
                Err((reason @ (Reason::PassNoNeigh | Reason::PassMtu), egress)) => {
                    if !target.inbound && reason == Reason::PassNoNeigh && node_side(config, egress)
                    {
                        return Err(Reason::PassDirect);
                    }
                    return Err(hand_over(frame, segment, target, reason));
                }
                Err((reason, _)) => return Err(reason),
            };
            if let Some((entry, now)) = cache {
                // SAFETY: as above; written whole, on this CPU only.
                unsafe {
                    *entry = NextHop {
                        addr: target.fib_destination,
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
            Hop {
                dmac: fib.dmac,
                smac: fib.smac,
                egress: fib.ifindex,
            }
        }
    };
    if !target.inbound && node_side(config, hop.egress) {
        return Err(Reason::PassDirect);
    }
    Ok(hop)
}

/// Rewrites MACs, TTL and the address (checksums updated), counts the packet
/// and sends it out of the egress interface.
#[inline(always)]
fn forward(frame: &Frame, segment: &Segment, target: &Target, route: u16, hop: &Hop) -> u32 {
    let header = &frame.header;
    // SAFETY: pointers from `ptr_at`.
    unsafe {
        (*frame.eth).dst_addr = hop.dmac;
        (*frame.eth).src_addr = hop.smac;
        (*frame.ip).ttl = header.ttl - 1;
    }
    // The header checksum is written once, with both updates (TTL, then address).
    let check = checksum::decrement_ttl(u16::from_be_bytes(header.check), header.ttl, header.proto);
    rewrite_addresses(
        frame.ip,
        segment.l4,
        target.inbound,
        check,
        target.old_addr,
        target.new_addr,
    );

    let bytes = segment.frame_len as u64;
    add(&ROUTE_COUNTERS, route as u32 - 1, bytes);
    add(&NODE_COUNTERS, target.node_index, bytes);
    count(if target.inbound {
        Reason::ForwardedIn
    } else {
        Reason::ForwardedOut
    });
    if hop.egress == frame.ingress {
        return xdp_action::XDP_TX;
    }
    // SAFETY: plain helper call; it only records the target for after we return.
    unsafe { bpf_redirect(hop.egress, 0) as u32 }
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
