//! The node manager: the one task that owns the routing [`Cluster`] and the
//! node table. Connection tasks talk to it over an mpsc channel; it turns
//! registrations, goodbyes, lost connections and missed heartbeats into
//! routing events, pushes each plan's writes to the data plane and sends the
//! plan's messages to the nodes.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::tables::{NodeTarget, TablePush, Write};
use crate::protocol::{ErrorCode, GatewayMessage, MovedRoute, Role, RoutePorts};
use crate::routing::{self, Cluster, Event, Notification, Plan, Route, TableWrite};

/// Messages queued for one node before it counts as stuck and is failed.
pub const OUTBOUND_QUEUE: usize = 64;

/// Timing and limits the manager works with (from `nodes:` in the config).
#[derive(Debug, Clone)]
pub struct Settings {
    pub heartbeat: Duration,
    pub dead_after: u32,
    pub reconnect_grace: Duration,
    pub max_nodes: u32,
    /// Base port of each listener group, in listener order.
    pub base_ports: Vec<u16>,
}

impl Settings {
    /// How long a node may stay silent before it fails.
    pub fn dead_window(&self) -> Duration {
        self.heartbeat * self.dead_after
    }

    /// How often the failure sweep runs.
    pub fn sweep_period(&self) -> Duration {
        (self.heartbeat / 2).max(Duration::from_millis(5))
    }

    /// The ports of `route`, one per listener group.
    pub fn ports(&self, route: Route) -> Vec<u16> {
        self.base_ports
            .iter()
            .map(|base| base + route - 1)
            .collect()
    }
}

/// A message queued for a node's connection.
pub type Outbound = Box<GatewayMessage>;

/// Identifies one connection (a node name may reconnect on a new one).
pub type ConnId = u64;

/// What connection tasks ask of the manager.
#[derive(Debug)]
pub enum Request {
    /// A valid `hello` (token already checked): register or resume `name`.
    Hello {
        conn: ConnId,
        name: String,
        addr: Ipv4Addr,
        reply: oneshot::Sender<Result<Registered, Refusal>>,
    },
    /// The node said `bye`: it leaves.
    Bye { conn: ConnId, name: String },
    /// The connection of a registered node ended (`reason` for the log).
    Closed {
        conn: ConnId,
        name: String,
        reason: String,
    },
    /// A copy of the node table (for the control socket and tests).
    Snapshot { reply: oneshot::Sender<Snapshot> },
}

/// The registered nodes as the manager sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Active nodes in slot order.
    pub active: Vec<String>,
    /// Spares, oldest first.
    pub spares: Vec<String>,
    /// Every registered node.
    pub nodes: Vec<NodeStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub name: String,
    pub addr: Ipv4Addr,
    pub index: u32,
    pub connected: bool,
    /// Routes the node serves.
    pub routes: Vec<Route>,
}

/// A registered connection's side of the node entry.
#[derive(Debug)]
pub struct Registered {
    /// Messages for the node; `None` from `recv` means the gateway closes
    /// the connection (after the queued messages are written).
    pub outbound: mpsc::Receiver<Outbound>,
    /// Liveness: the connection task stores [`Clock::now_ms`] at every
    /// message from the node.
    pub last_seen: Arc<AtomicU64>,
}

/// Why a `hello` was refused: sent to the node as an `error` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

/// Milliseconds since the daemon started, shared with connection tasks.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            epoch: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}

struct Connection {
    id: ConnId,
    outbound: mpsc::Sender<Outbound>,
}

/// What the daemon keeps per node.
struct NodeEntry {
    addr: Ipv4Addr,
    /// Per-node counter slot in the data plane, `< max_nodes`.
    index: u32,
    connection: Option<Connection>,
    last_seen: Arc<AtomicU64>,
    /// When the connection was lost (ms), while within the reconnect grace.
    disconnected_at: Option<u64>,
}

/// Why a node is failed, for the log.
#[derive(Debug)]
enum Cause {
    Heartbeat(u64),
    Disconnected(String),
    GraceOver,
    QueueFull,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Heartbeat(ms) => write!(f, "no heartbeat for {ms} ms"),
            Cause::Disconnected(reason) => write!(f, "connection lost: {reason}"),
            Cause::GraceOver => f.write_str("connection not re-established within the grace time"),
            Cause::QueueFull => write!(
                f,
                "{OUTBOUND_QUEUE} messages queued and not read: the node is stuck"
            ),
        }
    }
}

/// The node manager. Run it with [`Manager::run`].
pub struct Manager<T> {
    cluster: Cluster,
    nodes: HashMap<String, NodeEntry>,
    free_indexes: Vec<u32>,
    next_index: u32,
    settings: Settings,
    tables: T,
    clock: Clock,
    /// No node fails for silence before this time (ms): set at start and
    /// when the daemon notices it was stalled.
    silence_floor: u64,
    /// Nodes whose outbound queue overflowed while a plan was carried out.
    overflowed: Vec<String>,
}

impl<T: TablePush> Manager<T> {
    pub fn new(cluster: Cluster, settings: Settings, tables: T, clock: Clock) -> Manager<T> {
        Manager {
            cluster,
            nodes: HashMap::new(),
            free_indexes: Vec::new(),
            next_index: 0,
            settings,
            tables,
            silence_floor: clock.now_ms(),
            clock,
            overflowed: Vec::new(),
        }
    }

    /// Serves requests and sweeps for dead nodes until `shutdown`.
    pub async fn run(mut self, mut requests: mpsc::Receiver<Request>, shutdown: CancellationToken) {
        let period = self.settings.sweep_period();
        let mut sweep = tokio::time::interval(period);
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_sweep = Instant::now();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                request = requests.recv() => match request {
                    Some(request) => self.handle(request).await,
                    None => break,
                },
                _ = sweep.tick() => {
                    let now = Instant::now();
                    let late = now.saturating_duration_since(last_sweep).saturating_sub(period);
                    last_sweep = now;
                    if late > self.settings.heartbeat {
                        self.stalled(late);
                    }
                    self.sweep().await;
                }
            }
        }
        info!(nodes = self.nodes.len(), "node manager stopped");
    }

    /// The daemon did not run for `late`: heartbeats it could not read must
    /// not fail nodes, so every node gets a full dead window from now.
    fn stalled(&mut self, late: Duration) {
        warn!(
            late_ms = late.as_millis() as u64,
            nodes = self.nodes.len(),
            "the daemon was not running (stalled or paused); every node gets a full dead window from now"
        );
        self.silence_floor = self.clock.now_ms();
    }

    pub async fn handle(&mut self, request: Request) {
        match request {
            Request::Hello {
                conn,
                name,
                addr,
                reply,
            } => self.hello(conn, name, addr, reply).await,
            Request::Bye { conn, name } => {
                if self.is_current(&name, conn) {
                    info!(node = %name, "node said bye: it leaves");
                    self.remove(Event::Leave(name)).await;
                }
            }
            Request::Snapshot { reply } => {
                let _ = reply.send(self.snapshot());
            }
            Request::Closed { conn, name, reason } => {
                if !self.is_current(&name, conn) {
                    return;
                }
                if self.settings.reconnect_grace.is_zero() {
                    self.fail(name, Cause::Disconnected(reason)).await;
                } else if let Some(entry) = self.nodes.get_mut(&name) {
                    info!(node = %name, %reason, grace_ms = self.settings.reconnect_grace.as_millis() as u64,
                        "connection lost; waiting for the node to reconnect");
                    entry.connection = None;
                    entry.disconnected_at = Some(self.clock.now_ms());
                }
            }
        }
        self.fail_overflowed().await;
    }

    fn is_current(&self, name: &str, conn: ConnId) -> bool {
        self.nodes
            .get(name)
            .and_then(|entry| entry.connection.as_ref())
            .is_some_and(|connection| connection.id == conn)
    }

    async fn hello(
        &mut self,
        conn: ConnId,
        name: String,
        addr: Ipv4Addr,
        reply: oneshot::Sender<Result<Registered, Refusal>>,
    ) {
        let (outbound, receiver) = mpsc::channel(OUTBOUND_QUEUE);
        let now = self.clock.now_ms();
        // The data plane tells nodes apart by address: one node per address.
        if let Some((other, _)) = self
            .nodes
            .iter()
            .find(|(other, entry)| entry.addr == addr && **other != name)
        {
            let _ = reply.send(Err(Refusal {
                code: ErrorCode::BadRequest,
                message: format!(
                    "address {addr} is already registered by node {other:?}; every node needs its own address (hello.addr)"
                ),
            }));
            return;
        }
        if let Some(entry) = self.nodes.get_mut(&name) {
            if entry.connection.is_some() {
                let _ = reply.send(Err(Refusal {
                    code: ErrorCode::DuplicateName,
                    message: format!(
                        "a node named {name:?} is already connected; give every node its own --name"
                    ),
                }));
                return;
            }
            // Back within the reconnect grace: resume, with the full state.
            entry.connection = Some(Connection { id: conn, outbound });
            entry.disconnected_at = None;
            entry.last_seen.store(now, Ordering::Relaxed);
            let last_seen = entry.last_seen.clone();
            let moved_addr = entry.addr != addr;
            entry.addr = addr;
            let index = entry.index;
            let _ = reply.send(Ok(Registered {
                outbound: receiver,
                last_seen,
            }));
            info!(node = %name, %addr, "node reconnected within the grace time");
            if moved_addr && let Some(slot) = self.cluster.slot_of(&name) {
                // One slot write sends the node's routes to its new address.
                let write = Write::Slot {
                    slot,
                    node: Some(NodeTarget { addr, index }),
                };
                if let Err(err) = self.tables.push(vec![write]).await {
                    error!(node = %name, "data plane refused the new address: {err:#}");
                }
            }
            self.send_welcome(&name);
            return;
        }
        if self.nodes.len() >= self.settings.max_nodes as usize {
            let _ = reply.send(Err(Refusal {
                code: ErrorCode::Full,
                message: format!(
                    "the gateway already has {} nodes (nodes.max_nodes); try again later",
                    self.nodes.len()
                ),
            }));
            return;
        }
        let index = self.free_indexes.pop().unwrap_or_else(|| {
            self.next_index += 1;
            self.next_index - 1
        });
        let last_seen = Arc::new(AtomicU64::new(now));
        self.nodes.insert(
            name.clone(),
            NodeEntry {
                addr,
                index,
                connection: Some(Connection { id: conn, outbound }),
                last_seen: last_seen.clone(),
                disconnected_at: None,
            },
        );
        let plan = match self.cluster.apply(Event::Join(name.clone())) {
            Ok(plan) => plan,
            Err(err) => {
                // Cannot happen: the node table and the cluster agree on names.
                error!(node = %name, "routing refused the join: {err}");
                self.forget(&name);
                let _ = reply.send(Err(Refusal {
                    code: ErrorCode::BadRequest,
                    message: err.to_string(),
                }));
                return;
            }
        };
        if reply
            .send(Ok(Registered {
                outbound: receiver,
                last_seen,
            }))
            .is_err()
        {
            debug!(node = %name, "connection went away during hello");
        }
        info!(node = %name, %addr, role = ?self.cluster.role(&name), slot = ?self.cluster.slot_of(&name),
            routes = self.cluster.routes_of(&name).len(), "node joined");
        self.carry_out(plan).await;
    }

    /// Fails or removes a registered node (event `Fail` or `Leave`).
    async fn remove(&mut self, event: Event) {
        let name = event.node().to_string();
        match self.cluster.apply(event) {
            Ok(plan) => {
                self.carry_out(plan).await;
            }
            Err(err) => error!(node = %name, "routing refused the removal: {err}"),
        }
        self.forget(&name);
    }

    async fn fail(&mut self, name: String, cause: Cause) {
        if !self.nodes.contains_key(&name) {
            return;
        }
        warn!(node = %name, %cause, "node failed");
        self.remove(Event::Fail(name)).await;
    }

    /// Drops a node's entry: closes its connection (after what is queued) and
    /// recycles its counter index.
    fn forget(&mut self, name: &str) {
        if let Some(entry) = self.nodes.remove(name) {
            self.free_indexes.push(entry.index);
        }
    }

    /// Carries out a plan: `moved` to the nodes that lose routes, then the
    /// data-plane writes, then `role`/`assigned` (or `welcome` to a joining
    /// node).
    async fn carry_out(&mut self, plan: Plan) {
        let joined = match &plan.event {
            Event::Join(name) => Some(name.clone()),
            _ => None,
        };
        for notification in &plan.notifications {
            if let Notification::Moved { node, routes } = notification {
                let message = GatewayMessage::Moved {
                    routes: routes
                        .iter()
                        .map(|(route, to)| MovedRoute {
                            route: *route,
                            ports: self.settings.ports(*route),
                            to: to.clone(),
                        })
                        .collect(),
                };
                self.send(node, message);
            }
        }
        let writes = self.translate(&plan.writes);
        if !writes.is_empty() {
            let count = writes.len();
            if let Err(err) = self.tables.push(writes).await {
                error!(event = %plan.event, "data plane refused {count} writes: {err:#}");
            }
        }
        for notification in &plan.notifications {
            match notification {
                Notification::Moved { .. } => {}
                Notification::Role { node, .. } | Notification::Assigned { node, .. }
                    if joined.as_deref() == Some(node.as_str()) => {}
                Notification::Role { node, role } => {
                    let role = protocol_role(*role);
                    self.send(node, GatewayMessage::Role { role });
                }
                Notification::Assigned { node, routes } => {
                    let routes = self.route_ports(routes);
                    self.send(node, GatewayMessage::Assigned { routes });
                }
            }
        }
        if let Some(name) = joined {
            self.send_welcome(&name);
        }
        if !plan.moves.is_empty() {
            info!(event = %plan.event, moved = plan.moves.len(), active = self.cluster.active().len(),
                spares = self.cluster.spares().len(), "routes moved");
        }
    }

    fn route_ports(&self, routes: &[Route]) -> Vec<RoutePorts> {
        routes
            .iter()
            .map(|&route| RoutePorts {
                route,
                ports: self.settings.ports(route),
            })
            .collect()
    }

    fn send_welcome(&mut self, name: &str) {
        let Some(role) = self.cluster.role(name) else {
            return;
        };
        let routes = self.route_ports(&self.cluster.routes_of(name));
        let message = GatewayMessage::Welcome {
            role: protocol_role(role),
            heartbeat_ms: self.settings.heartbeat.as_millis() as u64,
            routes,
        };
        self.send(name, message);
    }

    /// Queues a message for a node without waiting: a node that does not
    /// read its messages is failed (after the current plan).
    fn send(&mut self, name: &str, message: GatewayMessage) {
        let Some(connection) = self
            .nodes
            .get(name)
            .and_then(|entry| entry.connection.as_ref())
        else {
            return;
        };
        match connection.outbound.try_send(Box::new(message)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.overflowed.push(name.to_string()),
            // The connection task is gone; its `Closed` is on the way.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    async fn fail_overflowed(&mut self) {
        while let Some(name) = self.overflowed.pop() {
            if let Some(entry) = self.nodes.get_mut(&name) {
                // Drop the queue: the connection closes.
                entry.connection = None;
            }
            self.fail(name, Cause::QueueFull).await;
        }
    }

    /// Node names to data-plane targets. A slot write names a registered node.
    fn translate(&self, writes: &[TableWrite]) -> Vec<Write> {
        writes
            .iter()
            .filter_map(|write| match write {
                TableWrite::Route { route, slot } => Some(Write::Route {
                    route: *route,
                    slot: *slot,
                }),
                TableWrite::Slot { slot, node: None } => Some(Write::Slot {
                    slot: *slot,
                    node: None,
                }),
                TableWrite::Slot {
                    slot,
                    node: Some(name),
                } => match self.nodes.get(name) {
                    Some(entry) => Some(Write::Slot {
                        slot: *slot,
                        node: Some(NodeTarget {
                            addr: entry.addr,
                            index: entry.index,
                        }),
                    }),
                    None => {
                        error!(node = %name, slot, "plan names a node the manager does not know");
                        None
                    }
                },
            })
            .collect()
    }

    /// Fails every node that has been silent for the dead window, or
    /// disconnected for longer than the grace time.
    pub async fn sweep(&mut self) {
        let now = self.clock.now_ms();
        let dead = self.settings.dead_window().as_millis() as u64;
        let grace = self.settings.reconnect_grace.as_millis() as u64;
        let mut failed: Vec<(String, Cause)> = Vec::new();
        for (name, entry) in &self.nodes {
            match entry.disconnected_at {
                Some(since) => {
                    if now.saturating_sub(since) >= grace {
                        failed.push((name.clone(), Cause::GraceOver));
                    }
                }
                None => {
                    let last = entry
                        .last_seen
                        .load(Ordering::Relaxed)
                        .max(self.silence_floor);
                    let silent = now.saturating_sub(last);
                    if silent > dead {
                        failed.push((name.clone(), Cause::Heartbeat(silent)));
                    }
                }
            }
        }
        // Deterministic order (HashMap order is not).
        failed.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, cause) in failed {
            self.fail(name, cause).await;
        }
        self.fail_overflowed().await;
    }

    /// The node table, sorted by name.
    pub fn snapshot(&self) -> Snapshot {
        let mut nodes: Vec<NodeStatus> = self
            .nodes
            .iter()
            .map(|(name, entry)| NodeStatus {
                name: name.clone(),
                addr: entry.addr,
                index: entry.index,
                connected: entry.connection.is_some(),
                routes: self.cluster.routes_of(name),
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Snapshot {
            active: self.cluster.active().to_vec(),
            spares: self
                .cluster
                .spares()
                .into_iter()
                .map(str::to_string)
                .collect(),
            nodes,
        }
    }

    /// Read-only view for tests and the control socket.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Number of registered nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }
}

fn protocol_role(role: routing::Role) -> Role {
    match role {
        routing::Role::Active => Role::Active,
        routing::Role::Spare => Role::Spare,
    }
}
