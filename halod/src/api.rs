//! The operator API: the requests, replies and events of the control socket
//! (`control.socket`), one JSON object per line. The daemon
//! (`crate::control::socket`) serves them and the operator commands
//! (`crate::operator`) send and print them; both take the types from here, and
//! nothing here depends on how either side works.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::routing::{Role, Route, Slot};

/// One operator request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum OperatorRequest {
    Routes,
    Nodes,
    Status,
    Stats,
    Drain { node: String },
    Watch,
}

/// `{"error": "..."}`: the request failed; the text is for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutesReply {
    pub routes: Vec<RouteRow>,
}

/// One route; `node`, `slot` and `addr` are null for an unserved route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRow {
    pub route: Route,
    pub ports: Vec<u16>,
    pub node: Option<String>,
    pub slot: Option<Slot>,
    pub addr: Option<Ipv4Addr>,
    /// While the route drains: the node its connections older than the move
    /// still reach, and for how long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining: Option<Draining>,
    /// The route's established-connection estimate (see
    /// [`StatsReply::connections_recorded`]); absent while the data plane
    /// records no connections (`nodes.flush_pps` 0) or its counters could
    /// not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
}

/// A route's drain, as `halod routes` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Draining {
    pub from: String,
    pub left_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodesReply {
    pub nodes: Vec<NodeRow>,
}

/// One registered node: active ones in slot order, then the spare queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRow {
    pub name: String,
    pub role: Role,
    pub slot: Option<Slot>,
    /// Number of routes it serves.
    pub routes: usize,
    pub addr: Ipv4Addr,
    /// Milliseconds since its last message; null while disconnected.
    pub last_heartbeat_ms: Option<u64>,
    pub connected: bool,
    /// When its connection was made (Unix ms); null while disconnected.
    pub connected_since_unix_ms: Option<u64>,
    /// `reconnect` or `restart` while the gateway waits for it to come back.
    pub awaiting: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub version: String,
    pub instance: String,
    pub started_unix_ms: u64,
    pub uptime_ms: u64,
    pub config: ConfigSummary,
    pub counts: Counts,
    /// How the XDP program is attached, per interface.
    pub dataplane: Vec<InterfaceMode>,
    pub last_failover: Option<Failover>,
    /// Nodes taken over from the state file at start (null: fresh start).
    pub restored_nodes: Option<usize>,
    /// How the state file's writes go (absent from daemons before 0.1.1).
    #[serde(default)]
    pub state_file: Option<StateFileHealth>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigSummary {
    pub vip: Ipv4Addr,
    pub external: String,
    pub internal: String,
    pub routes: u32,
    pub listeners: Vec<ListenerSummary>,
    pub nodes_listen: SocketAddr,
    pub heartbeat_ms: u64,
    pub dead_after: u32,
    pub spares: u32,
    pub max_active: u32,
    pub max_nodes: u32,
    pub restart_grace_ms: u64,
    pub state_file: PathBuf,
    pub control_socket: PathBuf,
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerSummary {
    pub name: String,
    pub base_port: u16,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub nodes: usize,
    pub active: usize,
    pub spares: usize,
    /// Nodes the gateway waits for (lost connection, or after a restart).
    pub awaiting: usize,
    /// Routes that reach a node.
    pub routes_served: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceMode {
    pub interface: String,
    /// `native` (driver) or `generic` (skb, slower).
    pub mode: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReply {
    pub routes: Vec<RouteStats>,
    pub nodes: Vec<NodeStats>,
    /// Packets per verdict of the XDP program (forwarded, passed, dropped).
    pub reasons: BTreeMap<String, u64>,
    /// Draining routes and what their packets did.
    #[serde(default)]
    pub drain: DrainCounts,
    /// What the dead-node flush did since the daemon started.
    #[serde(default)]
    pub flush: crate::dataplane::FlushStats,
    /// Whether the data plane records connections (`nodes.flush_pps` above
    /// 0), so that routes and nodes carry `connections`: established TCP
    /// connections through the VIP, estimated as those whose SYN the XDP
    /// program saw since recording started, minus those whose client sent a
    /// FIN or RST through the gateway and those the dead-node flush told.
    /// A connection that ended otherwise (the node reset it, the client
    /// vanished) stays counted; one opened before recording started (before
    /// the data plane was created; an adopting restart keeps counting) is
    /// not. False from daemons before the estimates.
    #[serde(default)]
    pub connections_recorded: bool,
}

/// `halod stats`' drain part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainCounts {
    /// Routes that drain now.
    pub routes: usize,
    /// Packets of connections older than a move, sent to the old node.
    pub to_old: u64,
    /// Connections opened to draining routes (they reach the new node).
    pub new_flows: u64,
    /// Connections opened to draining routes that `nodes.drain_flows` had no
    /// room for (they stayed with the old node).
    pub full: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteStats {
    pub route: Route,
    pub node: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    /// Established-connection estimate ([`StatsReply::connections_recorded`]);
    /// null when not recorded.
    #[serde(default)]
    pub connections: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStats {
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
    /// Established-connection estimate ([`StatsReply::connections_recorded`]);
    /// null when not recorded. A node's count starts again when it fails
    /// (its connections are flushed).
    #[serde(default)]
    pub connections: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainReply {
    pub drained: String,
    /// Routes that moved to other nodes.
    pub moved: usize,
    /// The nodes that took them, ascending by name (empty: no node is left).
    #[serde(default)]
    pub to: Vec<String>,
    /// How long the node keeps the connections open at the move (0: none);
    /// it is told `drained` when this ends.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub drain_ms: u64,
}

/// `watch`'s first line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchingReply {
    pub watching: bool,
}

/// Something the daemon did, for `halod watch` (one JSON line each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WatchEvent {
    NodeJoined {
        node: String,
        addr: Ipv4Addr,
        role: Role,
        slot: Option<Slot>,
        routes: usize,
    },
    /// The node's connection closed; it may reconnect within `grace_ms`.
    NodeDisconnected {
        node: String,
        reason: String,
        grace_ms: u64,
    },
    NodeReconnected {
        node: String,
        addr: Ipv4Addr,
    },
    NodeFailed {
        node: String,
        cause: String,
    },
    /// `by` is `bye` (the node asked) or `drain` (an operator asked).
    NodeLeft {
        node: String,
        by: String,
    },
    /// The drain window of `routes` routes that moved away from `node`
    /// ended: their connections still open reach the new nodes now.
    DrainEnded {
        node: String,
        routes: usize,
    },
    /// A failed active node's routes went elsewhere. Written without the
    /// failover's own `time_unix_ms`: the event's stamp is that moment, and a
    /// JSON object must not name a field twice.
    #[serde(serialize_with = "failover_fields")]
    Failover(Failover),
    RoutesMoved {
        cause: String,
        moved: usize,
        active: usize,
        spares: usize,
    },
}

/// One event with its time, as `halod watch` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamped {
    pub time_unix_ms: u64,
    #[serde(flatten)]
    pub event: WatchEvent,
}

/// A [`Failover`]'s fields but its time, for [`WatchEvent::Failover`].
fn failover_fields<S: serde::Serializer>(
    failover: &Failover,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Fields<'a> {
        node: &'a str,
        cause: &'a str,
        replacement: &'a Option<String>,
        moved: usize,
        plan_us: u64,
    }
    Fields {
        node: &failover.node,
        cause: &failover.cause,
        replacement: &failover.replacement,
        moved: failover.moved,
        plan_us: failover.plan_us,
    }
    .serialize(serializer)
}

/// The last failure of an active node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failover {
    pub node: String,
    pub cause: String,
    /// Absent from a `halod watch` event, which carries it as its stamp.
    #[serde(default)]
    pub time_unix_ms: u64,
    /// The spare that took the slot, if one waited.
    pub replacement: Option<String>,
    /// Routes that changed node.
    pub moved: usize,
    /// Time to carry the plan out (messages and data-plane writes), in microseconds.
    pub plan_us: u64,
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How the state file's writes go, for `halod status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateFileHealth {
    /// When the last write landed (Unix ms); null: none since the start.
    pub written_unix_ms: Option<u64>,
    /// Whether the file holds the table as it is now (false while a write
    /// is pending or failing).
    pub up_to_date: bool,
    /// Writes that failed since the start (each is retried).
    pub write_failures: u64,
    /// The last failure, while writes fail; null once one landed.
    pub last_error: Option<String>,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}
