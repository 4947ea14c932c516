//! The node manager: the one task that owns the routing [`Cluster`] and the
//! node table. Connection tasks talk to it over an mpsc channel; it turns
//! registrations, goodbyes, lost connections and missed heartbeats into
//! routing events, pushes each plan's writes to the data plane and sends the
//! plan's messages to the nodes.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::drains::{Drains, Ended, Leaving, RouteDrain};
use super::metrics::Metrics;
use super::nodes::{Awaiting, Connection, NodeTable};
pub use super::nodes::{ConnId, Outbound};
pub use super::policy::Refusal;
use super::state::{Coalescer, Fingerprint, STATE_VERSION, SavedNode, SavedState};
use super::tables::{Flush, NodeTarget, TablePush, Write};
use crate::api::{Failover, Stamped, WatchEvent, unix_ms};
use crate::dataplane::heartbeats::{HeartbeatTable, coarse_now_ns, new_key};
use crate::protocol::{ErrorCode, GatewayMessage, HbUdp, HeartbeatKey, MovedRoute, RoutePorts};
use crate::routing::{self, Cluster, Event, Notification, Plan, Route, Slot, TableWrite};
use halod_common::listener::port_for_route;

/// Drains end on multiples of this (ms on the manager's clock), up to this
/// much after their window: the data plane has stopped honouring them by then.
const DRAIN_END_STEP: u64 = 100;

/// What a node that `halod drain` removed hears last.
fn drained_message() -> GatewayMessage {
    GatewayMessage::Error {
        code: ErrorCode::Drained,
        message: "drained by the operator (halod drain): this node has left the cluster"
            .to_string(),
    }
}

/// The most `hello`s the manager takes from its queue at once and carries
/// out together ([`Manager::hellos`]). A batch costs about one data-plane
/// write per route it moves (at most `routes`, whatever its size) and one
/// `moved` per node that loses routes (every node, at a few thousand), so
/// fewer, larger batches make a storm cheaper; bounded so that one batch
/// (about 20 us of routing per join) keeps the manager from its sweeps for
/// well under a heartbeat.
const HELLO_BATCH: usize = 4096;

/// How many times the manager lets the connection tasks run before it takes
/// a batch of `hello`s when its queue holds no more: the first hello of a
/// storm arrives a moment before the rest, and carried out alone it would
/// move every route once more. Costs a single join a few microseconds.
const HELLO_GATHER: usize = 16;

/// Why a node whose connection closed before its `hello` was answered is lost.
const HELLO_UNANSWERED: &str = "the connection closed before the answer to hello";

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
    /// How long a route that moves away from a live node keeps sending it
    /// the connections open at the move (`nodes.drain_ms`); zero: none.
    pub drain: Duration,
}

impl Settings {
    /// The `nodes:` keys of `config`.
    pub fn of(config: &crate::config::Config) -> Settings {
        Settings {
            heartbeat: Duration::from_millis(config.nodes.heartbeat_ms),
            dead_after: config.nodes.dead_after,
            reconnect_grace: Duration::from_millis(config.nodes.reconnect_grace_ms),
            max_nodes: config.nodes.max_nodes,
            base_ports: config.base_ports(),
            drain: Duration::from_millis(config.nodes.drain_ms),
        }
    }

    /// How long a node may stay silent before it fails.
    pub fn dead_window(&self) -> Duration {
        self.heartbeat * self.dead_after
    }

    /// The longest gap between two failure sweeps. A sweep also runs at the
    /// earliest node deadline when that comes sooner (`Manager::next_deadline`),
    /// so a silent node fails when its window ends, not up to a period later.
    pub fn sweep_period(&self) -> Duration {
        (self.heartbeat / 2).max(Duration::from_millis(5))
    }

    /// The ports of `route`, one per listener group.
    pub fn ports(&self, route: Route) -> Vec<u16> {
        self.base_ports
            .iter()
            .filter_map(|base| port_for_route(*base, route))
            .collect()
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Joins in one batch after which the next sweep gives freed memory back.
const TRIM_AFTER_JOINS: usize = 64;

/// Gives the memory the allocator keeps free back to the system. The
/// allocator keeps what a burst freed (per thread arena) for reuse, which a
/// daemon that holds thousands of nodes for months after one storm never
/// needs; the resident memory per node should be what the nodes use.
fn release_free_memory() {
    // SAFETY: glibc's malloc_trim only returns unused pages; no pointer is
    // invalidated.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The wall clock and the process's CPU time, read together.
struct Pulse {
    at: Instant,
    cpu: Duration,
}

impl Pulse {
    fn now() -> Pulse {
        Pulse {
            at: Instant::now(),
            cpu: process_cpu(),
        }
    }

    /// Wall time since this pulse that the daemon's threads did not spend
    /// on a CPU (0 when they were busy all along).
    fn not_running(&self) -> Duration {
        self.at
            .elapsed()
            .saturating_sub(process_cpu().saturating_sub(self.cpu))
    }
}

/// CPU time of all the daemon's threads (`CLOCK_PROCESS_CPUTIME_ID`).
fn process_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out-pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

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
    /// An operator drains `name` (`halod drain`): a leave, announced to the
    /// node, which is then told it was drained and disconnected.
    Drain {
        name: String,
        reply: oneshot::Sender<Result<Drained, String>>,
    },
}

/// What `halod status` shows of the manager's state.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub counts: crate::api::Counts,
    pub last_failover: Option<Failover>,
}

/// What a drain did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drained {
    pub node: String,
    /// Routes that moved to other nodes.
    pub moved: usize,
    /// The nodes that took them, ascending by name (empty: no node is left).
    pub to: Vec<String>,
    /// How long the node keeps the connections open at the move (0: none).
    pub drain_ms: u64,
}

/// What the manager reports to, besides the nodes and the data plane: the
/// `halod watch` stream, the metrics and the state-file writer. All optional.
#[derive(Debug, Default)]
pub struct Observers {
    pub events: Option<broadcast::Sender<Stamped>>,
    pub metrics: Metrics,
    /// The config fingerprint to save with the table, and where to publish it.
    pub state: Option<(Fingerprint, watch::Sender<Option<SavedState>>)>,
    /// Where the counts `halod status` shows are published, after every
    /// turn of the manager: read without waiting for the manager, which a
    /// storm of hellos keeps busy.
    pub summary: Option<watch::Sender<Summary>>,
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
    /// The last failure of an active node.
    pub last_failover: Option<Failover>,
    /// Routes that drain, with the time left (ms), by route.
    pub drains: Vec<(RouteDrain, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub name: String,
    pub addr: Ipv4Addr,
    pub index: u32,
    pub connected: bool,
    /// Routes the node serves.
    pub routes: Vec<Route>,
    pub role: Option<routing::Role>,
    pub slot: Option<Slot>,
    /// Milliseconds since the last message from the node (while connected).
    pub last_heartbeat_ms: Option<u64>,
    /// When the current connection was made (Unix ms; while connected).
    pub connected_since_unix_ms: Option<u64>,
    /// Waiting for the node to reconnect: `reconnect` (its connection closed)
    /// or `restart` (known from the state file after a daemon restart).
    pub awaiting: Option<&'static str>,
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

/// A checked `hello`, and what its connection task waits for.
struct Greeting {
    name: String,
    addr: Ipv4Addr,
    /// The node's entry waits for it (reconnect grace, daemon restart).
    resumes: bool,
    connection: Connection,
    receiver: mpsc::Receiver<Outbound>,
    reply: oneshot::Sender<Result<Registered, Refusal>>,
}

/// A new node of a batch of hellos, registered, waiting for its answer.
struct Joining {
    name: String,
    addr: Ipv4Addr,
    receiver: mpsc::Receiver<Outbound>,
    reply: oneshot::Sender<Result<Registered, Refusal>>,
    last_seen: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Why a node is failed, for the log.
#[derive(Debug)]
enum Cause {
    Heartbeat(u64),
    Disconnected(String),
    GraceOver,
    RestartGraceOver,
    QueueFull,
}

impl Cause {
    /// The metrics label.
    fn label(&self) -> &'static str {
        match self {
            Cause::Heartbeat(_) => "heartbeat",
            Cause::Disconnected(_) => "disconnected",
            Cause::GraceOver => "reconnect_grace",
            Cause::RestartGraceOver => "restart_grace",
            Cause::QueueFull => "queue_full",
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Heartbeat(ms) => write!(f, "no heartbeat for {ms} ms"),
            Cause::Disconnected(reason) => write!(f, "connection lost: {reason}"),
            Cause::GraceOver => f.write_str("connection not re-established within the grace time"),
            Cause::RestartGraceOver => f.write_str(
                "did not reconnect within nodes.restart_grace_ms after the daemon restarted",
            ),
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
    nodes: NodeTable,
    settings: Settings,
    tables: T,
    clock: Clock,
    /// No node fails for silence before this time (ms): set at start and
    /// when the daemon notices it was stalled.
    silence_floor: u64,
    /// Nodes whose outbound queue overflowed while a plan was carried out.
    overflowed: Vec<String>,
    observers: Observers,
    last_failover: Option<Failover>,
    /// Set when the data plane refused a change twice: `run` stops.
    fatal: Option<String>,
    /// When the table goes to the state-file writer next.
    publishing: Coalescer,
    /// Routes that moved away from live nodes and still reach them for the
    /// connections open at the move.
    drains: Drains,
    /// A large batch of work (a storm of hellos, the end of its drains) freed
    /// memory: the next sweep gives it back to the system.
    trim: bool,
    /// Protocol version 2's UDP heartbeats, when the daemon takes them.
    udp_heartbeats: Option<UdpHeartbeats>,
}

/// Where UDP heartbeats are stamped, and the port nodes send them to.
struct UdpHeartbeats {
    table: HeartbeatTable,
    port: u16,
    /// Per counter index, the stamp the last sweep took: only a newer one is
    /// a new heartbeat.
    taken: Vec<u64>,
}

impl<T: TablePush> Manager<T> {
    pub fn new(cluster: Cluster, settings: Settings, tables: T, clock: Clock) -> Manager<T> {
        Manager {
            cluster,
            nodes: NodeTable::default(),
            settings,
            tables,
            silence_floor: clock.now_ms(),
            clock,
            overflowed: Vec::new(),
            observers: Observers::default(),
            last_failover: None,
            fatal: None,
            publishing: Coalescer::default(),
            drains: Drains::default(),
            trim: false,
            udp_heartbeats: None,
        }
    }

    /// Offers UDP heartbeats to `port` in every `welcome` (the connection
    /// of a version-1 node leaves the offer out) and takes each node's last
    /// heartbeat from `table` too, at the failure sweeps.
    pub fn udp_heartbeats(mut self, table: HeartbeatTable, port: u16) -> Manager<T> {
        let taken = vec![0; table.len()];
        self.udp_heartbeats = Some(UdpHeartbeats { table, port, taken });
        self
    }

    /// Reports events, metrics and states to `observers`.
    pub fn observe(mut self, observers: Observers) -> Manager<T> {
        self.observers = observers;
        // Published on the first sweep (or by `restore`), not before: a
        // restored cluster has no node entries yet.
        self.publishing.changed();
        self
    }

    /// Takes over the nodes of a saved state (the cluster was built from it
    /// with [`SavedState::cluster`]): each may reconnect within `grace` and
    /// resumes without route changes; after it, the missing ones fail. The
    /// whole table is written to the data plane, so it matches the state
    /// whatever the maps held.
    pub async fn restore(&mut self, saved: &SavedState, grace: Duration) {
        let until = self.clock.now_ms() + grace.as_millis() as u64;
        for node in saved.nodes() {
            self.nodes.restore(&node.name, node.addr, node.index, until);
        }
        let mut writes = Vec::new();
        for (i, name) in self.cluster.active().iter().enumerate() {
            let Some(entry) = self.nodes.get(name) else {
                continue;
            };
            writes.push(Write::Slot {
                slot: i as Slot + 1,
                node: Some(NodeTarget {
                    addr: entry.addr(),
                    index: entry.index(),
                }),
            });
        }
        for route in 1..=self.cluster.routes() {
            writes.push(Write::Route {
                route,
                slot: self.cluster.slot_of_route(route),
            });
        }
        self.push(writes, "the restored table").await;
        info!(
            active = saved.active.len(),
            spares = saved.spares.len(),
            grace_ms = grace.as_millis() as u64,
            "table restored from the state file; waiting for its nodes to reconnect"
        );
        self.publishing.changed();
        self.publish_state();
    }

    /// The drains the data plane kept across a restart (its pinned maps hold
    /// them, and end each on time by themselves): route, old node, time left.
    /// They end here when they would have, their old nodes (by address, among
    /// the restored ones) are told `drain_done`, and a node that had left keeps
    /// its counter index until then. Call after [`Manager::restore`].
    pub fn adopt_drains(&mut self, drains: &[(Route, NodeTarget, Duration)]) {
        let (now_ms, now_unix_ms) = (self.clock.now_ms(), unix_ms());
        for (route, from, left) in drains {
            let left_ms = left.as_millis() as u64;
            // A node that left before the restart is known by its address only.
            let name = self
                .nodes
                .owner_of(from.addr)
                .map_or_else(|| from.addr.to_string(), str::to_string);
            self.drains.start(
                *route,
                &name,
                *from,
                now_ms + left_ms,
                now_unix_ms + left_ms,
            );
            if !self.nodes.contains(&name) {
                self.nodes.reserve(from.index);
                self.drains.leave(
                    &name,
                    Leaving {
                        connection: None,
                        index: from.index,
                        by_operator: false,
                    },
                );
            }
        }
        if !drains.is_empty() {
            info!(
                routes = drains.len(),
                "drains the data plane kept across the restart go on"
            );
        }
    }

    fn emit(&self, event: WatchEvent) {
        if let Some(events) = &self.observers.events {
            // No subscriber is not an error.
            let _ = events.send(Stamped {
                time_unix_ms: unix_ms(),
                event,
            });
        }
    }

    /// Publishes the table for the state-file writer if it changed.
    fn publish_state(&mut self) {
        if !self.publishing.ready(Instant::now()) {
            return;
        }
        let Some((fingerprint, states)) = &self.observers.state else {
            return;
        };
        // A restored cluster before `restore` has entered its nodes: saving
        // now would save an empty table over the real one.
        let registered = self.cluster.active().len() + self.cluster.spares().len();
        if registered > self.nodes.len() {
            self.publishing.changed();
            return;
        }
        let saved = |name: &str| {
            self.nodes.get(name).map(|entry| SavedNode {
                name: name.to_string(),
                addr: entry.addr(),
                index: entry.index(),
            })
        };
        let state = SavedState {
            version: STATE_VERSION,
            fingerprint: fingerprint.clone(),
            active: self
                .cluster
                .active()
                .iter()
                .filter_map(|name| saved(name))
                .collect(),
            spares: self
                .cluster
                .spares()
                .into_iter()
                .filter_map(saved)
                .collect(),
        };
        states.send_if_modified(|current| {
            if current.as_ref() == Some(&state) {
                false
            } else {
                *current = Some(state);
                true
            }
        });
    }

    /// Serves requests and sweeps for dead nodes until `shutdown`.
    /// Serves requests and sweeps for dead nodes until `shutdown`. An error:
    /// the data plane refused a table change twice ([`Manager::push`]); the
    /// daemon then stops, keeping the data plane attached.
    /// `requests` come from node connections, `control` from operators
    /// (served first, so that a storm of hellos does not hold them back).
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut control: mpsc::Receiver<Request>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let period = self.settings.sweep_period();
        let mut next_sweep = Instant::now() + period;
        // The clocks when the manager last began a turn or ended a sweep.
        let mut pulse = Pulse::now();
        loop {
            if let Some(reason) = self.fatal.take() {
                self.publishing.now();
                self.publish_state();
                return Err(anyhow::anyhow!(reason));
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(request) = control.recv() => {
                    pulse = Pulse::now();
                    self.handle(request).await;
                }
                request = requests.recv() => match request {
                    Some(request @ Request::Hello { .. }) => {
                        pulse = Pulse::now();
                        // The hellos queued behind it join with it (a storm).
                        let mut hellos = vec![request];
                        let mut other = None;
                        let mut waited = false;
                        while hellos.len() < HELLO_BATCH {
                            match requests.try_recv() {
                                Ok(request @ Request::Hello { .. }) => hellos.push(request),
                                Ok(request) => {
                                    other = Some(request);
                                    break;
                                }
                                // The first of a storm: its hellos are being read.
                                Err(_) if !waited => {
                                    waited = true;
                                    for _ in 0..HELLO_GATHER {
                                        tokio::task::yield_now().await;
                                    }
                                }
                                Err(_) => break,
                            }
                        }
                        self.hellos(hellos).await;
                        self.fail_overflowed().await;
                        self.publish_state();
                        if let Some(request) = other {
                            self.handle(request).await;
                        }
                    }
                    Some(request) => {
                        pulse = Pulse::now();
                        self.handle(request).await;
                    }
                    None => break,
                },
                () = tokio::time::sleep_until(next_sweep) => {
                    let now = Instant::now();
                    // Woken this much after it was due: the manager was busy
                    // (a storm of hellos), or the daemon did not run (stopped,
                    // a paused VM, starved). Only the second keeps heartbeats
                    // from being read: it is the time since the last pulse
                    // that the process did not spend on a CPU.
                    let late = now.saturating_duration_since(next_sweep);
                    if late > self.settings.heartbeat {
                        if pulse.not_running() > self.settings.heartbeat {
                            self.stalled(late);
                        } else {
                            // Busy, not stalled: heartbeats that came meanwhile
                            // may still wait to be read, so no node fails for
                            // that time either; nothing to warn about.
                            debug!(late_ms = late.as_millis() as u64, "the manager was busy past a sweep");
                            self.silence_floor = self.clock.now_ms();
                        }
                    }
                    self.sweep().await;
                    pulse = Pulse::now();
                    let due = self.next_deadline().unwrap_or(period);
                    next_sweep = now + due.clamp(Duration::from_millis(1), period);
                }
                () = sleep_until_some(self.publishing.due()) => self.publish_state(),
            }
            self.publish_summary();
        }
        // The last table goes to the state writer, which outlives the manager.
        self.publishing.now();
        self.publish_state();
        info!(nodes = self.nodes.len(), "node manager stopped");
        Ok(())
    }

    /// Writes `writes` (`what`, for the log) into the data plane. A refused
    /// write is tried once more; refused again, the table the daemon keeps
    /// and the kernel's may differ, which must never go unnoticed: the manager
    /// stops ([`Manager::run`] returns the error), so the daemon exits
    /// non-zero, keeping the data plane attached, and the daemon that
    /// systemd starts again writes its whole table from the state file.
    async fn push(&mut self, writes: Vec<Write>, what: &str) {
        if self.fatal.is_some() {
            return;
        }
        let Err(first) = self.tables.push(writes.clone()).await else {
            return;
        };
        warn!("the data plane refused {what}: {first:#}; trying once more");
        if let Err(again) = self.tables.push(writes).await {
            error!("the data plane refused {what} again: {again:#}; stopping the daemon");
            self.fatal = Some(format!(
                "the data plane refused {what} twice ({again:#}): its table and the daemon's may \
                 differ, so the daemon stops (the data plane keeps forwarding); a restart \
                 writes the whole table again"
            ));
        }
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
            request @ Request::Hello { .. } => self.hellos(vec![request]).await,
            Request::Bye { conn, name } => {
                if self.is_current(&name, conn) {
                    info!(node = %name, "node said bye: it leaves");
                    self.emit(WatchEvent::NodeLeft {
                        node: name.clone(),
                        by: "bye".into(),
                    });
                    self.remove(Event::Leave(name)).await;
                }
            }
            Request::Snapshot { reply } => {
                let _ = reply.send(self.snapshot());
            }
            Request::Drain { name, reply } => {
                let _ = reply.send(self.drain(name).await);
            }
            Request::Closed { conn, name, reason } => {
                if self.is_current(&name, conn) {
                    self.connection_lost(name, reason).await;
                } else if let Some(leaving) = self.drains.leaving_connection(&name, conn) {
                    // A node that left closed its connection; its drain goes on.
                    leaving.connection = None;
                }
            }
        }
        self.fail_overflowed().await;
        self.publish_state();
    }

    /// A registered node's connection is gone: the node fails, or, with
    /// `nodes.reconnect_grace_ms`, waits that long for it to come back.
    async fn connection_lost(&mut self, name: String, reason: String) {
        if self.settings.reconnect_grace.is_zero() {
            self.fail(name, Cause::Disconnected(reason)).await;
        } else if let Some(entry) = self.nodes.get_mut(&name) {
            let grace_ms = self.settings.reconnect_grace.as_millis() as u64;
            info!(node = %name, %reason, grace_ms,
                "connection lost; waiting for the node to reconnect");
            entry.connection = None;
            entry.connected_since_unix_ms = None;
            let until = self.clock.now_ms() + grace_ms;
            self.nodes.set_awaiting(
                &name,
                Some(Awaiting {
                    until,
                    restart: false,
                }),
            );
            self.emit(WatchEvent::NodeDisconnected {
                node: name,
                reason,
                grace_ms,
            });
        }
    }

    /// `halod drain NAME`: the node leaves (it hears `moved` first), then it
    /// is told `drained` and its connection closes.
    async fn drain(&mut self, name: String) -> Result<Drained, String> {
        if !self.nodes.contains(&name) {
            return Err(format!(
                "unknown node {name:?}: no node of that name is registered (see `halod nodes`)"
            ));
        }
        info!(node = %name, "drained by the operator: it leaves");
        self.emit(WatchEvent::NodeLeft {
            node: name.clone(),
            by: "drain".into(),
        });
        let plan = match self.cluster.apply(Event::Leave(name.clone())) {
            Ok(plan) => plan,
            Err(err) => return Err(err.to_string()),
        };
        let moved = plan.moves.len();
        let to: std::collections::BTreeSet<String> =
            plan.moves.iter().filter_map(|m| m.to.clone()).collect();
        self.carry_out(plan, &[]).await;
        // Told `drained` now, or when its drain ends.
        if !self.drains.drains_from(&name) {
            self.send(&name, drained_message());
        }
        let draining = self.leave_or_forget(&name, true);
        Ok(Drained {
            node: name,
            moved,
            to: to.into_iter().collect(),
            drain_ms: if draining {
                self.settings.drain.as_millis() as u64
            } else {
                0
            },
        })
    }

    fn is_current(&self, name: &str, conn: ConnId) -> bool {
        self.nodes
            .get(name)
            .and_then(|entry| entry.connection.as_ref())
            .is_some_and(|connection| connection.id == conn)
    }

    /// `hello`s, in the order they came: each is checked, then resumes (the
    /// node's entry waits for it) or joins. The joins are applied by the
    /// routing rules one by one and carried out together
    /// ([`Cluster::join_all`]): a burst of thousands of hellos costs one
    /// data-plane write per route it changes and one `moved` per node that
    /// loses routes, not one of each per join.
    async fn hellos(&mut self, hellos: Vec<Request>) {
        let mut joining: Vec<Joining> = Vec::new();
        for request in hellos {
            let Request::Hello {
                conn,
                name,
                addr,
                reply,
            } = request
            else {
                continue;
            };
            if let Err(refusal) = self.check_hello(&name, addr) {
                let _ = reply.send(Err(refusal));
                continue;
            }
            let (outbound, receiver) = mpsc::channel(OUTBOUND_QUEUE);
            let greeting = Greeting {
                resumes: self.nodes.contains(&name),
                name,
                addr,
                connection: Connection { id: conn, outbound },
                receiver,
                reply,
            };
            if greeting.resumes {
                self.resume(greeting).await;
                continue;
            }
            // Registered now, so the next hello sees its name and address.
            let now = self.clock.now_ms();
            let last_seen = self
                .nodes
                .join(
                    &greeting.name,
                    greeting.addr,
                    greeting.connection,
                    now,
                    unix_ms(),
                )
                .last_seen
                .clone();
            joining.push(Joining {
                name: greeting.name,
                addr: greeting.addr,
                receiver: greeting.receiver,
                reply: greeting.reply,
                last_seen,
            });
        }
        if joining.is_empty() {
            return;
        }
        let names: Vec<String> = joining.iter().map(|j| j.name.clone()).collect();
        let plan = match self.cluster.join_all(names.clone()) {
            Ok(Some(plan)) => plan,
            Ok(None) => return,
            Err(err) => {
                // Cannot happen: the node table and the cluster agree on names.
                error!("routing refused {} joins: {err}", joining.len());
                for joiner in joining {
                    self.forget(&joiner.name);
                    let _ = joiner.reply.send(Err(Refusal {
                        code: ErrorCode::BadRequest,
                        message: err.to_string(),
                    }));
                }
                return;
            }
        };
        let mut unanswered = Vec::new();
        for joiner in joining {
            let Joining {
                name,
                addr,
                receiver,
                reply,
                last_seen,
            } = joiner;
            let delivered = reply
                .send(Ok(Registered {
                    outbound: receiver,
                    last_seen,
                }))
                .is_ok();
            let role = self.cluster.role(&name);
            let slot = self.cluster.slot_of(&name);
            let routes = slot.map_or(0, |slot| self.cluster.routes_of_slot(slot).len());
            info!(node = %name, %addr, ?role, ?slot, routes, "node joined");
            if let Some(role) = role {
                self.emit(WatchEvent::NodeJoined {
                    node: name.clone(),
                    addr,
                    role,
                    slot,
                    routes,
                });
            }
            if !delivered {
                unanswered.push(name);
            }
        }
        self.carry_out(plan, &names).await;
        // A batch of many joins allocated and freed plans and messages by the
        // megabyte.
        self.trim |= names.len() >= TRIM_AFTER_JOINS;
        for name in unanswered {
            // As in `resume`: nobody else will report this connection's end.
            self.connection_lost(name, HELLO_UNANSWERED.to_string())
                .await;
        }
    }

    /// Why a `hello` cannot be taken, if it cannot (O(1): indexes).
    fn check_hello(&self, name: &str, addr: Ipv4Addr) -> Result<(), Refusal> {
        // The data plane tells nodes apart by address: one node per address.
        if let Some(other) = self.nodes.owner_of(addr)
            && other != name
        {
            return Err(Refusal {
                code: ErrorCode::BadRequest,
                message: format!(
                    "address {addr} is already registered by node {other:?}; every node needs its own address (hello.addr)"
                ),
            });
        }
        match self.nodes.get(name) {
            Some(entry) if entry.connection.is_some() => Err(Refusal {
                code: ErrorCode::DuplicateName,
                message: format!(
                    "a node named {name:?} is already connected; give every node its own --name"
                ),
            }),
            Some(_) => Ok(()),
            None if self.nodes.len() >= self.settings.max_nodes as usize => Err(Refusal {
                code: ErrorCode::Full,
                message: format!(
                    "the gateway already has {} nodes (nodes.max_nodes); try again later",
                    self.nodes.len()
                ),
            }),
            None => Ok(()),
        }
    }

    /// A node back within its reconnect grace (or after a daemon restart):
    /// it resumes with the full state, and no route changes.
    async fn resume(&mut self, greeting: Greeting) {
        let (name, addr) = (greeting.name, greeting.addr);
        let now = self.clock.now_ms();
        let moved_addr = self.nodes.set_addr(&name, addr);
        let Some(entry) = self.nodes.get_mut(&name) else {
            return;
        };
        let after_restart = entry.awaiting.is_some_and(|awaiting| awaiting.restart);
        entry.connection = Some(greeting.connection);
        entry.connected_since_unix_ms = Some(unix_ms());
        entry.last_seen.store(now, Ordering::Relaxed);
        let last_seen = entry.last_seen.clone();
        let index = entry.index();
        self.nodes.set_awaiting(&name, None);
        self.publish_summary();
        let delivered = greeting
            .reply
            .send(Ok(Registered {
                outbound: greeting.receiver,
                last_seen,
            }))
            .is_ok();
        if after_restart {
            info!(node = %name, %addr, "node reconnected after the daemon restart; its routes are unchanged");
        } else {
            info!(node = %name, %addr, "node reconnected within the grace time");
        }
        self.emit(WatchEvent::NodeReconnected {
            node: name.clone(),
            addr,
        });
        if moved_addr {
            self.publishing.changed();
            if let Some(slot) = self.cluster.slot_of(&name) {
                // One slot write sends the node's routes to its new address.
                let write = Write::Slot {
                    slot,
                    node: Some(NodeTarget { addr, index }),
                };
                self.push(vec![write], &format!("{name}'s new address"))
                    .await;
            }
        }
        self.send_welcome(&name);
        if !delivered {
            // The connection task went away while the manager answered: it
            // will never report the connection's end, so the manager does.
            self.connection_lost(name, HELLO_UNANSWERED.to_string())
                .await;
        }
    }

    /// A registered node leaves (`bye`): its routes move, draining.
    async fn remove(&mut self, event: Event) {
        let name = event.node().to_string();
        match self.cluster.apply(event) {
            Ok(plan) => {
                self.carry_out(plan, &[]).await;
            }
            Err(err) => error!(node = %name, "routing refused the removal: {err}"),
        }
        self.leave_or_forget(&name, false);
    }

    /// A node that left: while routes drain from it, it keeps its counter
    /// index and its connection (for `drain_done`) out of the node table;
    /// otherwise it is forgotten. `true` when it drains.
    fn leave_or_forget(&mut self, name: &str, by_operator: bool) -> bool {
        if !self.drains.drains_from(name) {
            self.forget(name);
            return false;
        }
        if let Some(entry) = self.nodes.retire(name) {
            self.stop_udp_heartbeats(entry.index());
            self.drains.leave(
                name,
                Leaving {
                    index: entry.index(),
                    connection: entry.connection,
                    by_operator,
                },
            );
        }
        self.publishing.changed();
        true
    }

    async fn fail(&mut self, name: String, cause: Cause) {
        if !self.nodes.contains(&name) {
            return;
        }
        warn!(node = %name, %cause, "node failed");
        self.observers.metrics.node_failed(cause.label());
        self.emit(WatchEvent::NodeFailed {
            node: name.clone(),
            cause: cause.to_string(),
        });
        let slot = self.cluster.slot_of(&name);
        let replacement = slot.and_then(|_| self.cluster.spares().first().map(|s| s.to_string()));
        let started = std::time::Instant::now();
        let moved = match self.cluster.apply(Event::Fail(name.clone())) {
            Ok(plan) => {
                let moved = plan.moves.len();
                let flush = self.flush_of(&name, &plan);
                self.carry_out(plan, &[]).await;
                if let Some(flush) = flush {
                    self.tables.flush(flush);
                }
                moved
            }
            Err(err) => {
                error!(node = %name, "routing refused the failure: {err}");
                0
            }
        };
        self.forget(&name);
        if slot.is_some() {
            let failover = Failover {
                node: name,
                cause: cause.to_string(),
                time_unix_ms: unix_ms(),
                replacement,
                moved,
                plan_us: started.elapsed().as_micros() as u64,
            };
            self.observers.metrics.failovers.inc();
            self.emit(WatchEvent::Failover(failover.clone()));
            self.last_failover = Some(failover);
        }
    }

    /// What the dead-node flush is to tell about a failed node: the routes it
    /// loses in `plan`, and those that still drained from it (it had left,
    /// or lost them while alive). `None` when it served none.
    fn flush_of(&self, name: &str, plan: &Plan) -> Option<Flush> {
        let index = self.nodes.get(name)?.index();
        let mut routes: Vec<Route> = plan
            .moves
            .iter()
            .filter(|m| m.from.as_deref() == Some(name))
            .map(|m| m.route)
            .collect();
        routes.extend(self.drains.routes_from(name));
        routes.sort_unstable();
        routes.dedup();
        (!routes.is_empty()).then(|| Flush {
            node: name.to_string(),
            index,
            routes,
        })
    }

    /// Drops a node's entry: closes its connection (after what is queued) and
    /// recycles its counter index.
    fn forget(&mut self, name: &str) {
        if let Some(entry) = self.nodes.remove(name) {
            self.stop_udp_heartbeats(entry.index());
        }
        self.publishing.changed();
    }

    /// No UDP heartbeat counts for counter index `index` any more.
    fn stop_udp_heartbeats(&self, index: u32) {
        if let Some(udp) = &self.udp_heartbeats {
            udp.table.disarm(index);
        }
    }

    /// A new UDP heartbeat session for `name` (a new key, heard from now),
    /// for its `welcome`; `None` without UDP heartbeats.
    fn start_udp_heartbeats(&self, name: &str) -> Option<HbUdp> {
        let udp = self.udp_heartbeats.as_ref()?;
        let entry = self.nodes.get(name)?;
        let key = match new_key() {
            Ok(key) => key,
            Err(error) => {
                warn!(node = %name, %error, "no random heartbeat key; the node heartbeats over TCP");
                return None;
            }
        };
        udp.table
            .arm(entry.index(), key, entry.addr(), coarse_now_ns())
            .then_some(HbUdp {
                port: udp.port,
                id: entry.index(),
                key: HeartbeatKey(key),
            })
    }

    /// Carries out a plan: `moved` to the nodes that lose routes, then the
    /// data-plane writes, then `role`/`assigned` (or `welcome` to a joining
    /// node).
    /// `joined`: the nodes whose joins the plan carries out; they hear
    /// `welcome` (with all their routes) instead of `role` and `assigned`.
    async fn carry_out(&mut self, plan: Plan, joined: &[String]) {
        let cause = match joined {
            [_, _, ..] => format!("{} joins (the last {})", joined.len(), plan.event),
            _ => plan.event.to_string(),
        };
        let welcomed: std::collections::HashSet<&str> = joined.iter().map(String::as_str).collect();
        let (drain_writes, draining) = self.drains_of(&plan);
        let drain_ms = self.settings.drain.as_millis() as u64;
        for notification in &plan.notifications {
            if let Notification::Moved { node, routes } = notification {
                let message = GatewayMessage::Moved {
                    drain_ms: if draining.contains(node) { drain_ms } else { 0 },
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
        let mut writes = drain_writes;
        writes.extend(self.translate(&plan.writes));
        if !writes.is_empty() {
            let count = writes.len();
            let started = std::time::Instant::now();
            self.push(writes, &format!("{count} writes of {cause}"))
                .await;
            self.observers
                .metrics
                .plan_push
                .observe(started.elapsed().as_secs_f64());
        }
        self.publishing.changed();
        // Before the nodes hear of it: a node told it joined finds itself
        // counted.
        self.publish_summary();
        for notification in &plan.notifications {
            match notification {
                Notification::Moved { .. } => {}
                Notification::Role { node, .. } | Notification::Assigned { node, .. }
                    if welcomed.contains(node.as_str()) => {}
                Notification::Role { node, role } => {
                    let role = *role;
                    self.send(node, GatewayMessage::Role { role });
                }
                Notification::Assigned { node, routes } => {
                    let routes = self.route_ports(routes);
                    self.send(node, GatewayMessage::Assigned { routes });
                }
            }
        }
        for name in joined {
            self.send_welcome(name);
        }
        if !plan.moves.is_empty() {
            info!(event = %cause, moved = plan.moves.len(), active = self.cluster.active().len(),
                spares = self.cluster.spares().len(), "routes moved");
            self.emit(WatchEvent::RoutesMoved {
                cause,
                moved: plan.moves.len(),
                active: self.cluster.active().len(),
                spares: self.cluster.spares().len(),
            });
        }
    }

    /// The drains a plan starts ([`Plan::drains`]: every route that moves
    /// away from a node that stays alive) and ends (a failed node's: its
    /// connections are gone). Returns the writes to put before the plan's
    /// and the nodes that drain.
    fn drains_of(&mut self, plan: &Plan) -> (Vec<Write>, std::collections::HashSet<String>) {
        let mut writes = Vec::new();
        let mut draining = std::collections::HashSet::new();
        let failed = match &plan.event {
            Event::Fail(name) => Some(name.as_str()),
            _ => None,
        };
        if let Some(failed) = failed {
            let (gone, left) = self.drains.end_node(failed);
            writes.extend(gone.iter().map(|&route| Write::DrainEnd { route }));
            // Its connection is gone with it: nothing to tell.
            if let Some(leaving) = left {
                self.nodes.release(leaving.index);
            }
        }
        if self.settings.drain.is_zero() {
            return (writes, draining);
        }
        let window = self.settings.drain;
        // Ends rounded up to the next DRAIN_END_STEP: the drains of a burst of
        // joins end together, in a few batches, not one wake-up each.
        let until_ms =
            (self.clock.now_ms() + window.as_millis() as u64).next_multiple_of(DRAIN_END_STEP);
        let until_unix_ms = unix_ms() + window.as_millis() as u64;
        for (route, from) in &plan.drains {
            let Some(entry) = self.nodes.get(from) else {
                continue;
            };
            let target = NodeTarget {
                addr: entry.addr(),
                index: entry.index(),
            };
            let old = self
                .drains
                .start(*route, from, target, until_ms, until_unix_ms);
            writes.push(Write::Drain {
                route: *route,
                from: old,
                window,
            });
            draining.insert(from.clone());
        }
        (writes, draining)
    }

    /// Tells nodes that their drains ended (`drain_done`), and lets go of
    /// nodes that left once nothing drains from them (`drained` first for a
    /// node `halod drain` removed).
    fn finish_drains(&mut self, ended: Vec<Ended>) {
        for ended in ended {
            let done = GatewayMessage::DrainDone {
                routes: self.route_ports(&ended.routes),
            };
            match ended.left {
                Some(leaving) => {
                    if let Some(connection) = &leaving.connection {
                        if !ended.routes.is_empty() {
                            let _ = connection.outbound.try_send(Box::new(done));
                        }
                        if leaving.by_operator {
                            let _ = connection.outbound.try_send(Box::new(drained_message()));
                        }
                    }
                    // Dropping the connection's queue closes it after what is queued.
                    self.nodes.release(leaving.index);
                    info!(node = %ended.node, "drain over: the node that left is let go");
                    self.publishing.changed();
                }
                None if !ended.routes.is_empty() => self.send(&ended.node, done),
                None => {}
            }
            if !ended.routes.is_empty() {
                self.emit(WatchEvent::DrainEnded {
                    node: ended.node,
                    routes: ended.routes.len(),
                });
            }
        }
    }

    /// Ends the drains that are due.
    async fn end_drains(&mut self) {
        let (ended, routes) = self.drains.take_due(self.clock.now_ms());
        if ended.is_empty() && routes.is_empty() {
            return;
        }
        if !routes.is_empty() {
            let count = routes.len();
            self.trim |= count >= 1024;
            let writes = routes
                .into_iter()
                .map(|route| Write::DrainEnd { route })
                .collect();
            self.push(writes, &format!("the end of {count} drains"))
                .await;
        }
        self.finish_drains(ended);
        self.publishing.changed();
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
            role,
            heartbeat_ms: self.settings.heartbeat.as_millis() as u64,
            routes,
            hb_udp: self.start_udp_heartbeats(name),
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
                            addr: entry.addr(),
                            index: entry.index(),
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
        if std::mem::take(&mut self.trim) {
            release_free_memory();
        }
        let now = self.clock.now_ms();
        let dead = self.settings.dead_window().as_millis() as u64;
        let mut failed: Vec<(String, Cause)> = Vec::new();
        self.take_udp_heartbeats(now);
        for (name, entry) in self.nodes.iter() {
            match entry.awaiting {
                Some(awaiting) => {
                    if now >= awaiting.until {
                        let cause = if awaiting.restart {
                            Cause::RestartGraceOver
                        } else {
                            Cause::GraceOver
                        };
                        failed.push((name.clone(), cause));
                    }
                }
                None => {
                    let last = entry.last_seen_ms().max(self.silence_floor);
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
        self.end_drains().await;
        self.fail_overflowed().await;
        self.publish_state();
    }

    /// Brings every connected node's last sign of life up to its last UDP
    /// heartbeat: the stamps are read here, at the sweeps, never per
    /// heartbeat. A stamp is on the kernel's coarse monotonic clock; a new
    /// one's age now is its age on the manager's clock (`now_ms`).
    fn take_udp_heartbeats(&mut self, now_ms: u64) {
        let Some(udp) = &mut self.udp_heartbeats else {
            return;
        };
        let now_ns = coarse_now_ns();
        for entry in self.nodes.values() {
            if entry.awaiting.is_some() {
                continue;
            }
            let index = entry.index() as usize;
            let (Some(stamp), Some(taken)) =
                (udp.table.last_ns(entry.index()), udp.taken.get_mut(index))
            else {
                continue;
            };
            if stamp > *taken {
                *taken = stamp;
                let age_ms = now_ns.saturating_sub(stamp) / 1_000_000;
                entry
                    .last_seen
                    .fetch_max(now_ms.saturating_sub(age_ms), Ordering::Relaxed);
            }
        }
    }

    /// Time until the earliest moment a node could fail (its dead window or
    /// its grace time ends), if any node is registered.
    fn next_deadline(&self) -> Option<Duration> {
        let now = self.clock.now_ms();
        let dead = self.settings.dead_window().as_millis() as u64;
        self.nodes
            .values()
            .map(|entry| match entry.awaiting {
                Some(awaiting) => awaiting.until,
                // `sweep` fails a node once its silence exceeds the window.
                None => entry.last_seen_ms().max(self.silence_floor) + dead + 1,
            })
            .chain(self.drains.next_end())
            .min()
            .map(|at| Duration::from_millis(at.saturating_sub(now)))
    }

    /// Publishes [`Manager::summary`] for `halod status`.
    fn publish_summary(&self) {
        if let Some(summary) = &self.observers.summary {
            summary.send_replace(self.summary());
        }
    }

    /// The counts of the node table and the last failover.
    pub fn summary(&self) -> Summary {
        let active = self.cluster.active().len();
        Summary {
            counts: crate::api::Counts {
                nodes: self.nodes.len(),
                active,
                spares: self.cluster.spare_count(),
                awaiting: self.nodes.awaiting(),
                routes_served: if active > 0 {
                    usize::from(self.cluster.routes())
                } else {
                    0
                },
            },
            last_failover: self.last_failover.clone(),
        }
    }

    /// The node table, sorted by name.
    pub fn snapshot(&self) -> Snapshot {
        let now = self.clock.now_ms();
        let mut nodes: Vec<NodeStatus> = self
            .nodes
            .iter()
            .map(|(name, entry)| NodeStatus {
                name: name.clone(),
                addr: entry.addr(),
                index: entry.index(),
                connected: entry.connection.is_some(),
                routes: self.cluster.routes_of(name),
                role: self.cluster.role(name),
                slot: self.cluster.slot_of(name),
                last_heartbeat_ms: entry
                    .connection
                    .as_ref()
                    .map(|_| now.saturating_sub(entry.last_seen_ms())),
                connected_since_unix_ms: entry.connected_since_unix_ms,
                awaiting: entry
                    .awaiting
                    .map(|a| if a.restart { "restart" } else { "reconnect" }),
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
            last_failover: self.last_failover.clone(),
            drains: self.drains.list(self.clock.now_ms()),
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
