//! Keys and values of the XDP program's maps. Every type is `#[repr(C)]` with
//! explicit padding and a size check, because the kernel copies them byte for byte
//! between user space and the program.
//!
//! Addresses are kept as their four wire bytes (`[u8; 4]`, network order), so the
//! program compares and copies them without byte swapping.

use crate::listener::MAX_LISTENERS;

/// Map names as they appear in the object file and under the pin directory.
pub mod names {
    pub const CONFIG: &str = "CONFIG";
    pub const ROUTE_SLOT: &str = "ROUTE_SLOT";
    pub const SLOT_NODE: &str = "SLOT_NODE";
    pub const NODE_BY_ADDR: &str = "NODE_BY_ADDR";
    pub const ROUTE_COUNTERS: &str = "ROUTE_COUNTERS";
    pub const NODE_COUNTERS: &str = "NODE_COUNTERS";
    pub const REASON_COUNTERS: &str = "REASON_COUNTERS";
    /// The next-hop caches (nodes, clients). Not pinned: caches, which every loaded
    /// program starts empty (an adopting daemon's program too).
    pub const NEXT_HOP: &str = "NEXT_HOP";
    pub const CLIENT_NEXT_HOP: &str = "CLIENT_NEXT_HOP";
    pub const DIRECT_FLOWS: &str = "DIRECT_FLOWS";
    pub const DIRECT_NODES: &str = "DIRECT_NODES";
    pub const ROUTE_DRAIN: &str = "ROUTE_DRAIN";
    pub const DRAIN_FLOWS: &str = "DRAIN_FLOWS";
    pub const DRAIN_COUNTERS: &str = "DRAIN_COUNTERS";
    pub const RECENT_FLOWS: &str = "RECENT_FLOWS";
    pub const RECENT_NODES: &str = "RECENT_NODES";
    pub const ROUTE_CONNECTIONS: &str = "ROUTE_CONNECTIONS";
    /// Each node's heartbeat key and last UDP heartbeat. Not pinned: session
    /// state; the nodes of a restarted daemon reconnect and get new keys.
    pub const HEARTBEATS: &str = "HEARTBEATS";
    /// Every pinned map, in the order user space pins them.
    pub const ALL: [&str; 15] = [
        CONFIG,
        ROUTE_SLOT,
        SLOT_NODE,
        NODE_BY_ADDR,
        ROUTE_COUNTERS,
        NODE_COUNTERS,
        REASON_COUNTERS,
        DIRECT_FLOWS,
        DIRECT_NODES,
        ROUTE_DRAIN,
        DRAIN_FLOWS,
        DRAIN_COUNTERS,
        RECENT_FLOWS,
        RECENT_NODES,
        ROUTE_CONNECTIONS,
    ];
    /// Pinned maps that a daemon of an older build did not pin: a restart
    /// adopts that daemon's data plane all the same and creates them.
    pub const ADDED_LATER: [&str; 8] = [
        DIRECT_FLOWS,
        DIRECT_NODES,
        ROUTE_DRAIN,
        DRAIN_FLOWS,
        DRAIN_COUNTERS,
        RECENT_FLOWS,
        RECENT_NODES,
        ROUTE_CONNECTIONS,
    ];
}

/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "halod";

/// Upper bound on `routes` (shared/spec/routing.md: 1..=65535); sizes of the route
/// and slot tables are set to the configured count at load time.
pub const MAX_ROUTES: u32 = 65535;

/// `Config::flags`: user space has written a complete configuration. Until then
/// the program passes every packet.
pub const CONFIG_ENABLED: u32 = 1;
/// `Config::flags`: record TCP connections opened through the VIP in
/// `RECENT_FLOWS` (the dead-node flush is on), and count them per node
/// (`RECENT_NODES`) and per route (`ROUTE_CONNECTIONS`): the established-
/// connection estimates. Without it, nothing is recorded or counted.
pub const CONFIG_RECENT_FLOWS: u32 = 2;

/// The gateway's configuration, the single entry (index 0) of `CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The virtual IP clients connect to.
    pub vip: [u8; 4],
    /// Interface facing the clients.
    pub external_ifindex: u32,
    /// Interface facing the nodes (may equal `external_ifindex`).
    pub internal_ifindex: u32,
    /// Number of routes `N`.
    pub routes: u16,
    /// Number of valid entries in `listeners`.
    pub listener_count: u16,
    /// Base port of each listener group (host order).
    pub listeners: [u16; MAX_LISTENERS],
    /// `CONFIG_ENABLED` and future switches.
    pub flags: u32,
    /// How long a next hop found by `bpf_fib_lookup` is reused from `NEXT_HOP`,
    /// in milliseconds; 0 looks every packet up.
    pub next_hop_ttl_ms: u32,
    /// The UDP port of protocol version 2's heartbeats (wire order; all zero:
    /// the program leaves heartbeats to the kernel stack).
    pub heartbeat_port: [u8; 2],
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<Config>() == 44);

/// Value of `ROUTE_SLOT[route - 1]`: the slot serving the route (0 for none),
/// with [`ROUTE_DRAINING`] set while the route drains.
pub type RouteSlot = u32;

/// Bit of a `ROUTE_SLOT` value: the route moved while its old node was alive,
/// and `ROUTE_DRAIN[route - 1]` says where its established connections go.
/// Routes without it pay nothing for draining.
pub const ROUTE_DRAINING: u32 = 1 << 31;

/// `RouteDrain::flags`: the entry describes a drain in progress.
pub const DRAIN_ACTIVE: u32 = 1;
/// `RouteDrain::flags`: the route has a new node (`new_addr`, `new_index`).
pub const DRAIN_NEW_PRESENT: u32 = 2;

/// Value of `ROUTE_DRAIN[route - 1]`: a route that moved away from a node that
/// is still alive. Its TCP connections opened before the move keep reaching
/// the old node until they close or `until_ns` passes; a connection opened
/// since is recorded in `DRAIN_FLOWS` from its SYN with the node it reached
/// (the new node then), and keeps reaching that node, also when the route
/// moves again before the drain ends. The new node is here, not looked up
/// through the slot, so that one write of `ROUTE_SLOT` switches the route
/// whatever the order of the slot writes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteDrain {
    /// The old node's address and counter index.
    pub old_addr: [u8; 4],
    pub old_index: u32,
    /// The new node's address and counter index (with `DRAIN_NEW_PRESENT`).
    pub new_addr: [u8; 4],
    pub new_index: u32,
    /// `DRAIN_ACTIVE` | `DRAIN_NEW_PRESENT`, or 0.
    pub flags: u32,
    pub _pad: u32,
    /// When the drain ends, on the kernel's monotonic clock
    /// (`bpf_ktime_get_coarse_ns`, `CLOCK_MONOTONIC`): past it, the program
    /// sends everything through the route's slot even if user space never
    /// ended the drain (a daemon that is gone).
    pub until_ns: u64,
}
const _: () = assert!(size_of::<RouteDrain>() == 32);

/// Key of `DRAIN_FLOWS`: a TCP connection opened (SYN) to a draining route.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DrainFlow {
    pub client: [u8; 4],
    pub client_port: [u8; 2],
    /// The route, native order.
    pub route: u16,
}
const _: () = assert!(size_of::<DrainFlow>() == 8);

/// Value of `DRAIN_FLOWS`: the node the connection was opened to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowNode {
    pub addr: [u8; 4],
    pub index: u32,
}
const _: () = assert!(size_of::<FlowNode>() == 8);

/// Default of `nodes.drain_flows`: the size of `DRAIN_FLOWS`.
pub const DEFAULT_DRAIN_FLOWS: u32 = 262_144;

/// What happened to packets of draining routes: indexes of `DRAIN_COUNTERS`.
pub mod drain_counter {
    /// Packets of connections older than the move, sent to the old node.
    pub const TO_OLD: u32 = 0;
    /// Connections opened during a drain, recorded for the new node.
    pub const NEW_FLOWS: u32 = 1;
    /// Connections opened during a drain that `DRAIN_FLOWS` had no room for:
    /// sent to the old node (consistently), counted here.
    pub const FULL: u32 = 2;
    pub const COUNT: u32 = 3;
}

/// Key of `RECENT_FLOWS`: a TCP connection a client opened through the VIP
/// (recorded from its SYN), as wire bytes. The VIP port names the route and
/// is the port a flush segment comes from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RecentFlow {
    pub client: [u8; 4],
    pub client_port: [u8; 2],
    pub vip_port: [u8; 2],
}
const _: () = assert!(size_of::<RecentFlow>() == 8);

/// Entries of `ROUTE_CONNECTIONS` per route: `[route - 1]` is what the
/// program counts (SYNs recorded minus client FINs and RSTs, per CPU), and
/// `[routes + route - 1]` what user space counts (connections of the route
/// that the dead-node flush told and took from `RECENT_FLOWS`), written by
/// user space only so that neither side's writes can overwrite the other's.
pub const ROUTE_CONNECTION_HALVES: u32 = 2;

/// Value of `RECENT_FLOWS`: the counter index of the node the SYN went to.
pub type RecentNode = u32;

/// Default of `nodes.flush_flows`: the size of `RECENT_FLOWS`.
pub const DEFAULT_FLUSH_FLOWS: u32 = 262_144;

/// `SlotNode::flags`: the slot has a node.
pub const NODE_PRESENT: u32 = 1;

/// Value of `SLOT_NODE[slot - 1]`: the node in the slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotNode {
    /// The node's address.
    pub addr: [u8; 4],
    /// The node's counter index in `NODE_COUNTERS`.
    pub index: u32,
    /// `NODE_PRESENT`, or 0 for an empty slot.
    pub flags: u32,
}
const _: () = assert!(size_of::<SlotNode>() == 12);

/// Value of `HEARTBEATS[node index]`: the node's session key and its last
/// UDP heartbeat. User space writes `key`, `addr` and `last_ns` when it
/// welcomes the node and zeroes the entry when it forgets the node; the
/// program (or the daemon's fallback socket) writes `last_ns` for every
/// heartbeat whose key and source address match.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatSlot {
    /// The session key of the node's `welcome`; 0 (no node) never matches.
    pub key: u64,
    /// The last heartbeat, on the kernel's monotonic clock
    /// (`bpf_ktime_get_coarse_ns`, `CLOCK_MONOTONIC_COARSE`).
    pub last_ns: u64,
    /// The node's address (wire bytes): a heartbeat must come from it.
    pub addr: [u8; 4],
    pub _pad: u32,
}
const _: () = assert!(size_of::<HeartbeatSlot>() == 24);

/// Key of `NODE_BY_ADDR`: a node address as its wire bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeAddr {
    pub addr: [u8; 4],
}
const _: () = assert!(size_of::<NodeAddr>() == 4);

/// Value of `NODE_BY_ADDR`: the node's counter index.
pub type NodeIndex = u32;

/// Value of `NEXT_HOP[node index]` and `CLIENT_NEXT_HOP[client_slot(client)]` (per
/// CPU): the next hop `bpf_fib_lookup` found for a node (client packets) or a client
/// (node replies), reused for packets to the same address while the entry is younger
/// than `Config::next_hop_ttl_ms`. Only successful lookups are stored; all-zero
/// (`ifindex` 0) is "nothing cached".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// The address (node or client) the next hop was looked up for.
    pub addr: [u8; 4],
    /// Egress interface.
    pub ifindex: u32,
    /// Next hop's MAC (destination of the frame).
    pub dmac: [u8; 6],
    /// Egress interface's MAC (source of the frame).
    pub smac: [u8; 6],
    /// The route's MTU (`mtu_result` of the lookup): longer packets are handed to
    /// the kernel (`PassMtu`), as the lookup itself would.
    pub mtu: u16,
    pub _pad: [u8; 2],
    /// When it was looked up (`bpf_ktime_get_coarse_ns`).
    pub resolved_ns: u64,
}
const _: () = assert!(size_of::<NextHop>() == 32);

/// Entries of `CLIENT_NEXT_HOP`, the per-CPU next-hop cache of return traffic
/// (a power of two): 128 KiB per CPU.
pub const CLIENT_NEXT_HOP_SLOTS: u32 = 4096;
const _: () = assert!(CLIENT_NEXT_HOP_SLOTS.is_power_of_two());

/// The `CLIENT_NEXT_HOP` entry a client address is cached in (Fibonacci hashing of
/// the address; a client whose slot holds another address is looked up afresh).
#[inline(always)]
pub const fn client_slot(addr: [u8; 4]) -> u32 {
    u32::from_ne_bytes(addr).wrapping_mul(0x9e37_79b1)
        >> (32 - CLIENT_NEXT_HOP_SLOTS.trailing_zeros())
}

/// Packet and byte counts (per CPU in the maps; user space sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<Counter>() == 16);

/// How many connections to nodes' own addresses (`DIRECT_FLOWS`) the program
/// remembers at once; past that the least recently opened are forgotten.
pub const DIRECT_FLOW_SLOTS: u32 = 16384;

/// Key of `DIRECT_FLOWS`: a connection that a client on the external side
/// opened to a node's own address (not the VIP), as wire bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DirectFlow {
    pub client: [u8; 4],
    pub node: [u8; 4],
    pub client_port: [u8; 2],
    pub node_port: [u8; 2],
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<DirectFlow>() == 16);

/// Why the program gave a packet its verdict; the index into `REASON_COUNTERS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Client -> node, rewritten and redirected.
    ForwardedIn = 0,
    /// Node -> client, rewritten and redirected.
    ForwardedOut,
    /// Passed: user space has not configured the program yet.
    PassNotConfigured,
    /// Passed: not IPv4 (ARP, IPv6, VLAN...).
    PassNotIpv4,
    /// Passed: IPv4 not for us (other address, interface or direction), in a
    /// broadcast or multicast frame, or from a martian source to the VIP.
    PassNotOurs,
    /// Passed: for the VIP (or from a node) but neither TCP nor UDP (ICMP...).
    PassOtherProtocol,
    /// Passed: TCP/UDP for the VIP or from a node, but not a route port.
    PassNotRoutePort,
    /// Passed: the route has no slot, or its slot no node.
    PassNoNode,
    /// Passed: TTL 1 or less, so the kernel sends time exceeded.
    PassTtl,
    /// Passed: an IP fragment (ports are only in the first one).
    PassFragment,
    /// Passed: the frame ends inside a header.
    PassTruncated,
    /// Passed: the next hop's neighbour entry is not resolved; the kernel resolves it.
    PassNoNeigh,
    /// Passed: the packet is larger than the egress MTU; the kernel fragments or
    /// answers "fragmentation needed".
    PassMtu,
    /// Passed: `bpf_fib_lookup` found no usable route (unreachable, forwarding off...).
    PassFibFailed,
    /// Dropped: headers the receiving kernel would reject too (IPv4 version not 4,
    /// IHL < 5, total length below the header; TCP data offset below 5 or past the
    /// segment; UDP length below 8 or past the segment).
    DropMalformed,
    /// Passed unchanged: a packet of a connection to a node's own address on
    /// a route port (a health check, a monitor), not through the VIP: the
    /// client's packets, and the node's answers, which keep the node's address.
    /// Last, so the indexes of a pinned counter map from an older build keep
    /// their meaning.
    PassDirect,
    /// Dropped: a node's UDP heartbeat (protocol version 2), its key and
    /// source address matched and its time was stamped in `HEARTBEATS`.
    Heartbeat,
    /// Dropped: a UDP heartbeat with an unknown id, a wrong key, or from an
    /// address that is not its node's: nothing was stamped.
    DropHeartbeat,
}

impl Reason {
    /// Every reason, in index order.
    pub const ALL: [Reason; 18] = [
        Reason::ForwardedIn,
        Reason::ForwardedOut,
        Reason::PassNotConfigured,
        Reason::PassNotIpv4,
        Reason::PassNotOurs,
        Reason::PassOtherProtocol,
        Reason::PassNotRoutePort,
        Reason::PassNoNode,
        Reason::PassTtl,
        Reason::PassFragment,
        Reason::PassTruncated,
        Reason::PassNoNeigh,
        Reason::PassMtu,
        Reason::PassFibFailed,
        Reason::DropMalformed,
        Reason::PassDirect,
        Reason::Heartbeat,
        Reason::DropHeartbeat,
    ];
    /// Number of reasons: the size of `REASON_COUNTERS`.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Stable name, used in stats output and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::ForwardedIn => "forwarded_in",
            Reason::ForwardedOut => "forwarded_out",
            Reason::PassNotConfigured => "pass_not_configured",
            Reason::PassNotIpv4 => "pass_not_ipv4",
            Reason::PassNotOurs => "pass_not_ours",
            Reason::PassOtherProtocol => "pass_other_protocol",
            Reason::PassNotRoutePort => "pass_not_route_port",
            Reason::PassNoNode => "pass_no_node",
            Reason::PassTtl => "pass_ttl",
            Reason::PassFragment => "pass_fragment",
            Reason::PassTruncated => "pass_truncated",
            Reason::PassNoNeigh => "pass_no_neigh",
            Reason::PassMtu => "pass_mtu",
            Reason::PassFibFailed => "pass_fib_failed",
            Reason::DropMalformed => "drop_malformed",
            Reason::PassDirect => "pass_direct",
            Reason::Heartbeat => "heartbeat",
            Reason::DropHeartbeat => "drop_heartbeat",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` data with explicit padding: every bit pattern is a
    // valid value and there are no implicit padding bytes.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::SlotNode {}
    unsafe impl aya::Pod for super::NodeAddr {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::NextHop {}
    unsafe impl aya::Pod for super::DirectFlow {}
    unsafe impl aya::Pod for super::RouteDrain {}
    unsafe impl aya::Pod for super::DrainFlow {}
    unsafe impl aya::Pod for super::FlowNode {}
    unsafe impl aya::Pod for super::RecentFlow {}
    unsafe impl aya::Pod for super::HeartbeatSlot {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_slots_are_in_range_and_spread() {
        let mut seen = [false; CLIENT_NEXT_HOP_SLOTS as usize];
        for last in 0..=255u8 {
            for third in 0..16u8 {
                let slot = client_slot([198, 18, third, last]);
                assert!(slot < CLIENT_NEXT_HOP_SLOTS);
                seen[slot as usize] = true;
            }
        }
        // 4096 neighbouring addresses fill most of the 4096 slots.
        assert!(seen.iter().filter(|s| **s).count() > 2000);
    }

    #[test]
    fn every_reason_is_documented_for_operators() {
        let operations = include_str!("../../docs/operations.md");
        for reason in Reason::ALL {
            let quoted = operations.match_indices(reason.name()).any(|(at, name)| {
                operations[..at].ends_with('`') && operations[at + name.len()..].starts_with('`')
            });
            assert!(
                quoted,
                "docs/operations.md does not explain the counter {}",
                reason.name()
            );
        }
    }

    #[test]
    fn reasons_are_in_index_order() {
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{}", reason.name());
        }
    }
}
