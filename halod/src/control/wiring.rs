//! The daemon's tasks wired to each other, without the kernel or the network:
//! the node manager with its request queue and observers, what the control
//! socket and the metrics endpoint serve from ([`Services`]), and what every
//! node connection task shares ([`ConnectionContext`]). `halod run` builds it
//! with the real data plane ([`super::serve`]); the in-process tests build it
//! with [`super::tables::Recorder`] in its place, so that they run the same
//! wiring as the daemon.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::ConnectionContext;
use super::manager::{Clock, Manager, Observers, Request, Settings, Summary};
use super::metrics::Metrics;
use super::policy::NodePolicy;
use super::socket::{DaemonInfo, Services};
use super::state::{Fingerprint, SavedState};
use super::tables::{DataplaneView, TablePush};
use crate::api::Stamped;
use crate::config::Config;
use crate::dataplane::HeartbeatTable;
use crate::routing::{Cluster, ClusterConfig};

/// Requests queued for the manager before connection tasks wait.
pub const REQUEST_QUEUE: usize = 4096;
/// Events kept for `halod watch` clients that fall behind.
const EVENT_QUEUE: usize = 1024;

/// What the daemon is built from; [`Wiring::start`] starts it.
pub struct Wiring<T> {
    cluster: Cluster,
    settings: Settings,
    tables: T,
    info: DaemonInfo,
    policy: NodePolicy,
    token: Option<String>,
    clock: Clock,
    metrics: Metrics,
    queue: usize,
    /// The saved table to take over, and how long its nodes have to come back.
    restore: Option<(SavedState, Duration)>,
    /// The drains the adopted data plane kept: route, old node, time left.
    drains: Vec<(crate::routing::Route, super::tables::NodeTarget, Duration)>,
    /// Where each new table is published for the state file.
    publish: Option<(Fingerprint, watch::Sender<Option<SavedState>>)>,
    /// Protocol version 2's heartbeat stamps and port.
    udp_heartbeats: Option<(HeartbeatTable, u16)>,
}

/// A started daemon core.
pub struct Wired<T> {
    pub requests: mpsc::Sender<Request>,
    /// The node manager: it ends with an error when it cannot go on.
    pub manager: JoinHandle<anyhow::Result<()>>,
    /// For the control socket and the metrics endpoint.
    pub services: Services<T>,
    /// For the node connection tasks.
    pub connections: ConnectionContext,
}

impl<T: TablePush + DataplaneView + 'static> Wiring<T> {
    /// The daemon `config` describes, with an empty table, pushing its
    /// changes to `tables`. The node policy is `config`'s (see
    /// [`NodePolicy::of`]).
    pub fn new(config: &Config, tables: T) -> anyhow::Result<Wiring<T>> {
        let settings = Settings::of(config);
        let cluster = Cluster::new(ClusterConfig {
            routes: config.route_count(),
            spares: config.nodes.spares,
            max_active: config.nodes.max_active,
        })
        .map_err(|err| anyhow::anyhow!("config: routing: {err}"))?;
        Ok(Wiring {
            cluster,
            metrics: Metrics::new(settings.heartbeat),
            settings,
            tables,
            info: DaemonInfo::new(config, None),
            policy: NodePolicy::of(config),
            token: None,
            clock: Clock::new(),
            queue: REQUEST_QUEUE,
            restore: None,
            drains: Vec::new(),
            publish: None,
            udp_heartbeats: None,
        })
    }

    /// Takes over a saved table (`cluster` is the one `saved` describes): its
    /// nodes have `grace` to come back before they fail.
    pub fn restore(mut self, saved: SavedState, cluster: Cluster, grace: Duration) -> Self {
        self.info.restored_nodes = Some(saved.nodes().count());
        self.cluster = cluster;
        self.restore = Some((saved, grace));
        self
    }

    /// The drains an adopted data plane kept across the restart
    /// (`Dataplane::drains`): they go on and end on time.
    pub fn drains(
        mut self,
        drains: Vec<(crate::routing::Route, super::tables::NodeTarget, Duration)>,
    ) -> Self {
        self.drains = drains;
        self
    }

    /// Publishes every new table (for the state file) with `fingerprint`.
    pub fn publish(
        mut self,
        fingerprint: Fingerprint,
        states: watch::Sender<Option<SavedState>>,
    ) -> Self {
        self.publish = Some((fingerprint, states));
        self
    }

    /// Offers version-2 nodes UDP heartbeats to `port`, stamped in `table`.
    pub fn udp_heartbeats(mut self, table: HeartbeatTable, port: u16) -> Self {
        self.udp_heartbeats = Some((table, port));
        self
    }

    /// The token every `hello` must carry.
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Replaces the node policy `config` set.
    pub fn policy(mut self, policy: NodePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Requests queued for the manager before senders wait.
    pub fn queue(mut self, queue: usize) -> Self {
        self.queue = queue;
        self
    }

    /// Starts the manager on `tasks`; it stops on `shutdown`.
    pub async fn start(self, tasks: &TaskTracker, shutdown: &CancellationToken) -> Wired<T> {
        let (events, _) = broadcast::channel::<Stamped>(EVENT_QUEUE);
        let (summary, summaries) = watch::channel(Summary::default());
        let mut manager =
            Manager::new(self.cluster, self.settings, self.tables.clone(), self.clock).observe(
                Observers {
                    events: Some(events.clone()),
                    metrics: self.metrics.clone(),
                    state: self.publish,
                    summary: Some(summary.clone()),
                },
            );
        if let Some((table, port)) = self.udp_heartbeats {
            manager = manager.udp_heartbeats(table, port);
        }
        if let Some((saved, grace)) = &self.restore {
            manager.restore(saved, *grace).await;
        }
        manager.adopt_drains(&self.drains);
        summary.send_replace(manager.summary());
        let (requests, inbox) = mpsc::channel(self.queue);
        // Operators' requests get their own queue, which the manager serves
        // first: a storm of hellos does not hold `halod status` back.
        let (control, control_inbox) = mpsc::channel(CONTROL_QUEUE);
        let manager = tasks.spawn(manager.run(inbox, control_inbox, shutdown.clone()));
        Wired {
            services: Services {
                requests: control,
                summary: summaries,
                dataplane: self.tables,
                events,
                metrics: self.metrics.clone(),
                info: Arc::new(self.info),
            },
            connections: ConnectionContext {
                requests: requests.clone(),
                token: self.token,
                clock: self.clock,
                shutdown: shutdown.clone(),
                metrics: self.metrics,
                policy: self.policy,
            },
            requests,
            manager,
        }
    }
}

/// Operator requests (control socket, metrics) queued for the manager.
const CONTROL_QUEUE: usize = 64;

/// The config of the in-process tests' gateway: 24 routes, listeners on
/// 8000 and 9000, and `nodes` (flow-style YAML keys, e.g.
/// `"heartbeat_ms: 50, spares: 1"`) besides `listen`.
#[cfg(test)]
pub(crate) fn test_config(nodes: &str) -> Config {
    let text = format!(
        "interfaces: {{external: ext0, internal: int0}}\n\
         vip: 198.18.0.1\n\
         routes: 24\n\
         listeners: [{{name: browser, base_port: 8000}}, {{name: app, base_port: 9000}}]\n\
         nodes: {{listen: 198.19.0.1:7000, {nodes}}}\n"
    );
    Config::parse(&text).unwrap_or_else(|err| panic!("test config {text}: {err}"))
}
