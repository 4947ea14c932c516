//! The operator's control socket (`control.socket`): a Unix socket, one JSON
//! request and one JSON reply per line. `halod routes|nodes|status|stats|
//! drain|watch` are its clients (`crate::operator`).
//!
//! Requests: `{"cmd":"routes"}`, `{"cmd":"nodes"}`, `{"cmd":"status"}`,
//! `{"cmd":"stats"}`, `{"cmd":"drain","node":"n1"}`, `{"cmd":"watch"}`. A
//! reply is the object the CLI prints with `--json`, or `{"error":"..."}`.
//! `watch` answers `{"watching":true}` and then streams one event per line
//! until the client closes. Several requests may share one connection.
//!
//! The socket is created mode 0600 (root only), or 0660 owned by
//! `control.group`; it is never a network port.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::manager::{Drained, Request, Snapshot, Summary};
use super::metrics::Metrics;
use super::tables::DataplaneView;
use crate::api::{
    ConfigSummary, DrainCounts, DrainReply, Draining, ErrorReply, InterfaceMode, ListenerSummary,
    NodeRow, NodeStats, NodesReply, OperatorRequest, RouteRow, RouteStats, RoutesReply, Stamped,
    StatsReply, StatusReply, WatchingReply, unix_ms,
};
use crate::config::Config;
use crate::protocol::{LineError, LineReader};
use crate::routing::{Role, Route, Slot};
use halod_common::listener::port_for_route;

/// What `status` reports about the daemon itself.
#[derive(Debug, Clone)]
pub struct DaemonInfo {
    pub instance: String,
    pub started: Instant,
    pub started_unix_ms: u64,
    pub config: ConfigSummary,
    pub restored_nodes: Option<usize>,
}

impl DaemonInfo {
    pub fn new(config: &Config, restored_nodes: Option<usize>) -> DaemonInfo {
        DaemonInfo {
            instance: config.instance.to_string(),
            started: Instant::now(),
            started_unix_ms: unix_ms(),
            config: ConfigSummary {
                vip: config.vip,
                external: config.interfaces.external.clone(),
                internal: config.interfaces.internal.clone(),
                routes: config.route_count(),
                listeners: config
                    .listeners
                    .iter()
                    .map(|l| ListenerSummary {
                        name: l.name.clone(),
                        base_port: l.base_port,
                    })
                    .collect(),
                nodes_listen: config.nodes.listen,
                heartbeat_ms: config.nodes.heartbeat_ms,
                dead_after: config.nodes.dead_after,
                spares: config.nodes.spares,
                max_active: config.max_active(),
                max_nodes: config.nodes.max_nodes,
                restart_grace_ms: config.nodes.restart_grace_ms,
                state_file: config.state_file(),
                control_socket: config.control.socket.clone(),
                metrics_listen: config.metrics.listen,
            },
            restored_nodes,
        }
    }

    fn ports(&self, route: Route) -> Vec<u16> {
        self.config
            .listeners
            .iter()
            .filter_map(|l| port_for_route(l.base_port, route))
            .collect()
    }
}

/// Everything the control socket and the metrics endpoint read from.
#[derive(Clone, Debug)]
pub struct Services<D> {
    pub requests: mpsc::Sender<Request>,
    /// The counts the manager published after its last turn.
    pub summary: watch::Receiver<Summary>,
    pub dataplane: D,
    pub events: broadcast::Sender<Stamped>,
    pub metrics: Metrics,
    pub info: Arc<DaemonInfo>,
}

impl<D: DataplaneView> Services<D> {
    pub async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Snapshot { reply })
            .await
            .ok()
            .context("the node manager has stopped")?;
        answer.await.context("the node manager has stopped")
    }

    async fn drain(&self, name: String) -> anyhow::Result<Result<Drained, String>> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Drain { name, reply })
            .await
            .ok()
            .context("the node manager has stopped")?;
        answer.await.context("the node manager has stopped")
    }

    /// Answers one request (not `watch`) with the JSON line to send.
    pub async fn answer(&self, request: &OperatorRequest) -> String {
        let reply = match request {
            OperatorRequest::Routes => self.routes().await.map(|r| to_json(&r)),
            OperatorRequest::Nodes => self.nodes().await.map(|r| to_json(&r)),
            OperatorRequest::Status => self.status().await.map(|r| to_json(&r)),
            OperatorRequest::Stats => self.stats().await.map(|r| to_json(&r)),
            OperatorRequest::Drain { node } => match self.drain(node.clone()).await {
                Ok(Ok(drained)) => Ok(to_json(&DrainReply {
                    drained: drained.node,
                    moved: drained.moved,
                    to: drained.to,
                    drain_ms: drained.drain_ms,
                })),
                Ok(Err(message)) => Err(anyhow::anyhow!(message)),
                Err(err) => Err(err),
            },
            OperatorRequest::Watch => Ok(to_json(&WatchingReply { watching: true })),
        };
        reply.unwrap_or_else(|err| error_line(&format!("{err:#}")))
    }

    pub async fn routes(&self) -> anyhow::Result<RoutesReply> {
        let snapshot = self.snapshot().await?;
        let mut served: BTreeMap<Route, (&str, Slot, Ipv4Addr)> = BTreeMap::new();
        for node in &snapshot.nodes {
            if let Some(slot) = node.slot {
                for &route in &node.routes {
                    served.insert(route, (&node.name, slot, node.addr));
                }
            }
        }
        let draining: BTreeMap<Route, Draining> = snapshot
            .drains
            .iter()
            .map(|(drain, left_ms)| {
                (
                    drain.route,
                    Draining {
                        from: drain.node.clone(),
                        left_ms: *left_ms,
                    },
                )
            })
            .collect();
        // The estimates are extra: a data plane that cannot say leaves them out.
        let connections = match self.dataplane.stats().await {
            Ok(stats) => stats.connections,
            Err(error) => {
                tracing::debug!(error = %format!("{error:#}"), "routes without connection estimates");
                None
            }
        };
        let routes = (1..=Route::try_from(self.info.config.routes).unwrap_or(Route::MAX))
            .map(|route| {
                let owner = served.get(&route);
                RouteRow {
                    route,
                    ports: self.info.ports(route),
                    node: owner.map(|(name, _, _)| name.to_string()),
                    slot: owner.map(|(_, slot, _)| *slot),
                    addr: owner.map(|(_, _, addr)| *addr),
                    draining: draining.get(&route).cloned(),
                    connections: connections
                        .as_ref()
                        .and_then(|c| c.routes.get(usize::from(route) - 1).copied()),
                }
            })
            .collect();
        Ok(RoutesReply { routes })
    }

    pub async fn nodes(&self) -> anyhow::Result<NodesReply> {
        let snapshot = self.snapshot().await?;
        let order: Vec<&String> = snapshot.active.iter().chain(&snapshot.spares).collect();
        let nodes = order
            .into_iter()
            .filter_map(|name| snapshot.nodes.iter().find(|n| &n.name == name))
            .map(|node| NodeRow {
                name: node.name.clone(),
                role: node.role.unwrap_or(Role::Spare),
                slot: node.slot,
                routes: node.routes.len(),
                addr: node.addr,
                last_heartbeat_ms: node.last_heartbeat_ms,
                connected: node.connected,
                connected_since_unix_ms: node.connected_since_unix_ms,
                awaiting: node.awaiting.map(str::to_string),
            })
            .collect();
        Ok(NodesReply { nodes })
    }

    pub async fn status(&self) -> anyhow::Result<StatusReply> {
        // As of the manager's last turn: never waits for a busy manager.
        let summary = self.summary.borrow().clone();
        let dataplane = self
            .dataplane
            .modes()
            .await
            .into_iter()
            .map(|(interface, mode)| InterfaceMode {
                interface,
                mode: mode.name().to_string(),
            })
            .collect();
        Ok(StatusReply {
            version: env!("CARGO_PKG_VERSION").to_string(),
            instance: self.info.instance.clone(),
            started_unix_ms: self.info.started_unix_ms,
            uptime_ms: self.info.started.elapsed().as_millis() as u64,
            config: self.info.config.clone(),
            counts: summary.counts,
            dataplane,
            last_failover: summary.last_failover,
            restored_nodes: self.info.restored_nodes,
            state_file: Some(
                self.metrics
                    .state_file
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            ),
        })
    }

    pub async fn stats(&self) -> anyhow::Result<StatsReply> {
        let snapshot = self.snapshot().await?;
        let stats = self
            .dataplane
            .stats()
            .await
            .context("reading the data plane counters")?;
        let mut owner: BTreeMap<Route, &str> = BTreeMap::new();
        for node in &snapshot.nodes {
            for &route in &node.routes {
                owner.insert(route, &node.name);
            }
        }
        let routes = stats
            .routes
            .iter()
            .enumerate()
            .map(|(i, counter)| {
                let route = i as Route + 1;
                RouteStats {
                    route,
                    node: owner.get(&route).map(|n| n.to_string()),
                    packets: counter.packets,
                    bytes: counter.bytes,
                    connections: stats
                        .connections
                        .as_ref()
                        .and_then(|c| c.routes.get(i).copied()),
                }
            })
            .collect();
        let nodes = snapshot
            .nodes
            .iter()
            .map(|node| {
                let counter = stats
                    .nodes
                    .get(node.index as usize)
                    .copied()
                    .unwrap_or_default();
                NodeStats {
                    name: node.name.clone(),
                    packets: counter.packets,
                    bytes: counter.bytes,
                    connections: stats
                        .connections
                        .as_ref()
                        .map(|c| c.nodes.get(node.index as usize).copied().unwrap_or(0)),
                }
            })
            .collect();
        let reasons = stats
            .reasons
            .iter()
            .map(|(name, count)| (name.to_string(), *count))
            .collect();
        Ok(StatsReply {
            routes,
            nodes,
            reasons,
            drain: DrainCounts {
                routes: snapshot.drains.len(),
                to_old: stats.drain.to_old,
                new_flows: stats.drain.new_flows,
                full: stats.drain.full,
            },
            flush: stats.flush,
            connections_recorded: stats.connections.is_some(),
        })
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("replies serialize")
}

fn error_line(message: &str) -> String {
    to_json(&ErrorReply {
        error: message.to_string(),
    })
}

/// Creates the socket at `path` with mode 0600, or 0660 and group `group`.
/// A stale socket (no daemon answers on it) is replaced; a live one is not,
/// and neither is anything that is not a socket (a file the operator put
/// there is theirs).
pub fn bind(path: &Path, group: Option<nix::unistd::Gid>) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    let context = |what: &str| format!("control.socket {}: {what}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| context("creating its directory"))?;
    }
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        let kind = metadata.file_type();
        if !kind.is_socket() {
            let what = if kind.is_dir() {
                "a directory"
            } else if kind.is_symlink() {
                "a symbolic link"
            } else if kind.is_file() {
                "a regular file"
            } else {
                "a special file"
            };
            anyhow::bail!(
                "{}",
                context(&format!(
                    "{what} is at this path, not a socket; halod removes only a stale socket of its own. \
                     Move it away, or set control.socket to another path"
                ))
            );
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "{}",
                context(
                    "another halod is serving this socket; stop it, or give this instance its own control.socket"
                )
            );
        }
        std::fs::remove_file(path).with_context(|| context("removing the stale socket"))?;
    }
    // The socket takes the umask's mode when it is made, and changing the
    // umask would change it for every thread of the daemon. So it is made in
    // a directory only root can enter, given its mode and group there, and
    // then renamed into place: nobody can connect before its mode is right.
    let private = path.with_file_name(format!(".halod-socket-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| context("making a private directory beside it"))?;
    let made = private.join("socket");
    let listener = (|| {
        let listener =
            std::os::unix::net::UnixListener::bind(&made).with_context(|| context("binding"))?;
        let mode = match group {
            Some(gid) => {
                nix::unistd::chown(&made, None, Some(gid))
                    .with_context(|| context("giving it to control.group"))?;
                0o660
            }
            None => 0o600,
        };
        std::fs::set_permissions(&made, std::fs::Permissions::from_mode(mode))
            .with_context(|| context(&format!("setting mode {mode:o}")))?;
        std::fs::rename(&made, path).with_context(|| context("moving it into place"))?;
        anyhow::Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    let listener = listener?;
    listener
        .set_nonblocking(true)
        .with_context(|| context("setting it non-blocking"))?;
    UnixListener::from_std(listener).with_context(|| context("registering with tokio"))
}

/// How often the daemon checks that its socket is still at its path.
pub const SOCKET_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Most operator connections served at once; more are told so and closed
/// (a script that opens connections in a loop must not exhaust the
/// daemon's files).
pub const MAX_OPERATOR_CONNECTIONS: usize = 64;

/// Which file a path names (device, inode); `None` when there is none.
fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|metadata| (metadata.dev(), metadata.ino()))
}

/// Serves operator connections until `shutdown`, then removes the socket
/// (only if it is still the one this daemon made). A socket removed from
/// under the running daemon (`rm`, a tmpfiles clean-up) is made again within
/// [`SOCKET_CHECK`]; something else put at its path is left alone and logged.
pub async fn serve<D: DataplaneView>(
    listener: UnixListener,
    path: PathBuf,
    group: Option<nix::unistd::Gid>,
    services: Services<D>,
    shutdown: CancellationToken,
) {
    let mut listener = listener;
    let mut ours = identity(&path);
    let mut check = tokio::time::interval(SOCKET_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Said once per change of what is at the path, not every second.
    let mut complained = false;
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_OPERATOR_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = check.tick() => {
                let now = identity(&path);
                if now.is_some() && now == ours {
                    complained = false;
                } else if now.is_none() {
                    match bind(&path, group) {
                        Ok(again) => {
                            listener = again;
                            ours = identity(&path);
                            complained = false;
                            warn!(path = %path.display(), "the control socket was removed while the daemon ran; made it again");
                        }
                        Err(err) if !complained => {
                            complained = true;
                            warn!("the control socket was removed and cannot be made again: {err:#}; operator commands cannot reach this daemon");
                        }
                        Err(_) => {}
                    }
                } else if !complained {
                    complained = true;
                    warn!(path = %path.display(), "something else replaced the control socket; operator commands cannot reach this daemon until it is removed (the daemon then makes its socket again)");
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                // An operator waits for the answer.
                super::urgent();
                let services = services.clone();
                let shutdown = shutdown.clone();
                let Ok(permit) = open.clone().try_acquire_owned() else {
                    debug!("operator connection refused: {MAX_OPERATOR_CONNECTIONS} open");
                    tokio::spawn(async move {
                        let mut stream = stream;
                        let message = format!(
                            "too many operator connections open ({MAX_OPERATOR_CONNECTIONS}); \
                             close some (e.g. `halod watch`) and try again"
                        );
                        let _ = tokio::time::timeout(
                            std::time::Duration::from_secs(1),
                            send(&mut stream, &error_line(&message)),
                        )
                        .await;
                    });
                    continue;
                };
                tokio::spawn(async move {
                    let _permit = permit;
                    let (reader, writer) = stream.into_split();
                    connection(reader, writer, services, shutdown).await;
                });
            }
            Err(err) => {
                warn!("accepting an operator connection failed: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    if ours.is_some() && identity(&path) == ours {
        let _ = std::fs::remove_file(&path);
    }
}

/// Serves one operator connection: requests and replies, line by line.
pub async fn connection<R, W, D>(
    mut reader: R,
    mut writer: W,
    services: Services<D>,
    shutdown: CancellationToken,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    D: DataplaneView,
{
    let mut lines = LineReader::new();
    loop {
        let line = tokio::select! {
            () = shutdown.cancelled() => return,
            line = lines.next_line(&mut reader) => line,
        };
        let line = match line {
            Ok(Some(line)) => line,
            Ok(None) => return,
            Err(LineError::Io(err)) => {
                debug!("operator connection: {err}");
                return;
            }
            Err(err) => {
                let _ = send(&mut writer, &error_line(&err.to_string())).await;
                return;
            }
        };
        let request: OperatorRequest = match serde_json::from_str(&line) {
            Ok(request) => request,
            Err(err) => {
                let message = format!(
                    "bad request {line:?}: {err}; expected e.g. {{\"cmd\":\"routes\"}} \
                     (cmd: routes, nodes, status, stats, drain, watch)"
                );
                if send(&mut writer, &error_line(&message)).await.is_err() {
                    return;
                }
                continue;
            }
        };
        if request == OperatorRequest::Watch {
            watch(&mut writer, &services, &shutdown).await;
            return;
        }
        let reply = services.answer(&request).await;
        if send(&mut writer, &reply).await.is_err() {
            return;
        }
    }
}

async fn watch<W: AsyncWrite + Unpin, D: DataplaneView>(
    writer: &mut W,
    services: &Services<D>,
    shutdown: &CancellationToken,
) {
    let mut events = services.events.subscribe();
    if send(writer, &to_json(&WatchingReply { watching: true }))
        .await
        .is_err()
    {
        return;
    }
    loop {
        let line = tokio::select! {
            () = shutdown.cancelled() => return,
            event = events.recv() => match event {
                Ok(event) => to_json(&event),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    format!(r#"{{"event":"lagged","missed":{missed}}}"#)
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if send(writer, &line).await.is_err() {
            return;
        }
    }
}

async fn send<W: AsyncWrite + Unpin>(writer: &mut W, line: &str) -> std::io::Result<()> {
    writer.write_all(line.as_bytes()).await?;
    writer.write_all(b"\n").await?;
    writer.flush().await
}
