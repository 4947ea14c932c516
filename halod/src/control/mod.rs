//! The gateway daemon (`halod run`): joins the routing core to the data plane
//! and to the nodes.
//!
//! Tasks: one accept loop, one task per node connection ([`connection`]),
//! one node manager ([`manager`]) that owns the routing cluster and the node
//! table (`nodes`), and the data-plane actor that owns the BPF maps; beside
//! them the operator's control socket ([`socket`], speaking [`crate::api`]),
//! the metrics endpoint ([`exporter`]) and the state-file writer ([`state`]).
//! Shutdown goes through one cancellation token, set on SIGINT or SIGTERM. The
//! daemon holds its instance's lock ([`lock`]) for its whole life.
//!
//! The modules' imports form a tree, leaves first: [`policy`] (what nodes may
//! do before they register), [`metrics`] (counters), [`tables`] (the data-plane
//! interfaces), `nodes`, [`lock`]; then [`state`] (policy, metrics),
//! [`manager`] (nodes, policy, metrics, state, tables), [`connection`]
//! (manager, nodes, policy, metrics), [`socket`] (manager, metrics, tables),
//! [`exporter`] (socket, metrics, tables); [`wiring`] connects the manager
//! to its observers, the socket's services and the connection tasks (for
//! the daemon and for the in-process tests alike). This file builds the
//! gateway from the system (`Gateway::build`: lock, saved table, sockets,
//! data plane; every failure comes before a task runs) and runs it
//! (`Gateway::run`: tasks, supervision, shutdown).

mod check;
pub mod connection;
pub mod drains;
pub mod exporter;
pub mod heartbeats;
pub mod lock;
pub mod manager;
pub mod metrics;
mod nodes;
pub mod policy;
mod privileges;
pub mod socket;
pub mod state;
pub mod tables;
#[cfg(test)]
mod tests;
pub mod wiring;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use self::connection::ConnectionContext;
use self::state::{Fingerprint, SavedState};
use self::wiring::Wiring;
use crate::config::Config;
use crate::dataplane;
use crate::routing::Cluster;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Path of the gateway's YAML config (docs/operations.md, "Configuration reference").
    #[arg(long)]
    pub config: PathBuf,
    /// Start with an empty table: ignore (and then overwrite) the state file
    /// instead of taking its nodes and routes over. Needed after a change of
    /// `routes`, `listeners`, `vip` or `interfaces`.
    #[arg(long)]
    pub reset: bool,
    /// Check the config and this host as a start would (interfaces, VIP,
    /// privileges, bpffs, instance lock, state file, XDP programs already
    /// attached, control socket, ports), print one line per check, and exit:
    /// 0 when a start would go ahead, 1 when not. Attaches, binds and writes
    /// nothing.
    #[arg(long)]
    pub check: bool,
}

/// How long a runtime thread that ran out of work waits before it sleeps on
/// new events. Ten thousand nodes send a heartbeat every 10 us between them:
/// woken for each, the daemon spends most of its CPU switching in and out;
/// after this pause one wake-up serves the 50 that came meanwhile. The price
/// is at most this much added to handling any event (a node's crash, a
/// `bye`, an operator command), against failover targets in milliseconds.
const EVENT_GATHER: std::time::Duration = std::time::Duration::from_micros(500);

/// How long after a node connection is accepted, or an operator connects,
/// the runtime parks without gathering: a storm of hellos (a gateway restart,
/// a power event) arrives one connection at a time, and a pause before every
/// park would cost each of them [`EVENT_GATHER`] (a second per 2,000 nodes).
const URGENT: std::time::Duration = std::time::Duration::from_millis(200);

/// Until when (ns after [`epoch`]) the runtime parks without gathering.
static URGENT_UNTIL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

/// Something that must be answered at once is going on: the runtime stops
/// gathering events before parking for [`URGENT`].
pub(crate) fn urgent() {
    let until = (epoch().elapsed() + URGENT).as_nanos() as u64;
    URGENT_UNTIL.fetch_max(until, std::sync::atomic::Ordering::Relaxed);
}

/// The runtime's park hook: gathers events ([`EVENT_GATHER`]) unless
/// something urgent is going on.
fn gather() {
    let now = epoch().elapsed().as_nanos() as u64;
    if now >= URGENT_UNTIL.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(EVENT_GATHER);
    }
}

/// Allocations of 1 MiB and more (a storm's route-sized maps, plans and
/// batches) get their own mappings, returned to the system when freed. glibc
/// otherwise raises that threshold to the largest block freed so far, after
/// which such blocks come from the heap and leave it fragmented: the resident
/// memory per node after a storm stayed about 2 KB higher (5.9 KB against
/// 3.5 KB at 10,000 nodes). At 128 KiB the storm itself got slower (a
/// mapping for every route-sized table).
fn keep_large_allocations_apart() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt changes a tunable of the allocator; called before any
    // other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
    }
}

/// Connections the kernel may hold for the node listener before the daemon
/// accepts them. After a gateway restart or a power event thousands of nodes
/// connect at once; with the usual 1,024 the rest of a burst would have
/// their handshakes dropped and retried a second later. The kernel caps it at
/// `net.core.somaxconn` (4,096 by default; docs/operations.md).
const NODE_BACKLOG: u32 = 65_535;

/// The node listener (`nodes.listen`), with room for a burst of connections.
fn listen_for_nodes(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(NODE_BACKLOG)
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    keep_large_allocations_apart();
    // Every check before any change to the system.
    let config = Config::load(&args.config)?;
    if args.check {
        return Ok(check::run(&config, args.reset));
    }
    privileges::missing("halod run").map_err(anyhow::Error::msg)?;
    let token = config.check_system()?;
    if let Some(warning) = config.vip_warning() {
        warn!("{warning}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("halod")
        // Gather events before going to sleep on them (see `EVENT_GATHER`).
        .on_thread_park(gather)
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(serve(config, token, args.reset))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct TeardownArgs {
    /// The config of the stopped gateway (its `instance`, `state_file`).
    #[arg(long)]
    pub config: PathBuf,
    /// Keep the state file (only detach the program and remove the pins).
    #[arg(long)]
    pub keep_state: bool,
}

/// `halod teardown`: removes what a stopped gateway left behind: the XDP
/// program (it stays attached after `halod run` stops, for a restart without
/// loss), its pinned maps, and the state file. Refuses while a daemon answers
/// on the control socket.
pub fn teardown(args: TeardownArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config)?;
    privileges::missing("halod teardown").map_err(anyhow::Error::msg)?;
    // The daemon's lock, not its socket, says whether it runs: a socket
    // file can be removed from under a live daemon.
    let _lock = lock::InstanceLock::acquire(
        &config.instance,
        &format!("halod teardown (pid {})", std::process::id()),
    )
    .map_err(|err| match err {
        lock::LockError::Held { holder, .. } => anyhow::anyhow!(
            "a daemon is running for instance {:?}: {holder}; stop it first (systemctl stop halod), then tear down",
            config.instance
        ),
        other => anyhow::Error::new(other).context("taking the instance lock"),
    })?;
    if std::os::unix::net::UnixStream::connect(&config.control.socket).is_ok() {
        anyhow::bail!(
            "a daemon is running on {}: stop it first (systemctl stop halod), then tear down",
            config.control.socket.display()
        );
    }
    if dataplane::Dataplane::remove_pins(&config.instance)? {
        say(&format!(
            "detached the XDP program of instance {} and removed its pins",
            config.instance
        ));
    } else {
        say(&format!("nothing pinned for instance {}", config.instance));
    }
    let state = config.state_file();
    if !args.keep_state {
        match std::fs::remove_file(&state) {
            Ok(()) => say(&format!("removed {}", state.display())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(err).with_context(|| format!("removing {}", state.display()));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line of `teardown`'s report on stdout; a closed stdout is no error.
fn say(line: &str) {
    let _ = crate::console::stdout(&format!("{line}\n"));
}

/// Logs to stderr (`HALOD_LOG` filters, default `info`). A closed or full
/// stderr loses lines and never panics (`log_internal_errors(false)`: the
/// subscriber would otherwise report a failed write with `eprintln!`, which
/// panics on a closed stderr).
pub(crate) fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HALOD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // A closed stderr must not panic the task that logged (it once was
        // the signal task, and SIGTERM went unheard): see `console`.
        .with_writer(|| crate::console::Stderr)
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Runs the daemon until SIGINT or SIGTERM. With `reset`, the state file is
/// not read (and is overwritten with the new table).
pub async fn serve(config: Config, token: Option<String>, reset: bool) -> anyhow::Result<()> {
    Gateway::build(config, token, reset).await?.run().await
}

/// A daemon that holds everything it needs from the system (the instance
/// lock, its sockets, the data plane, the saved table) and has started no
/// task yet.
struct Gateway {
    config: Config,
    token: Option<String>,
    holder: String,
    instance_lock: lock::InstanceLock,
    shutdown: CancellationToken,
    saved: Option<(SavedState, Cluster)>,
    listener: TcpListener,
    control: tokio::net::UnixListener,
    group: Option<nix::unistd::Gid>,
    metrics_listener: Option<TcpListener>,
    tables: dataplane::DataplaneHandle,
    /// Protocol version 2's heartbeat stamps, and the socket for the
    /// heartbeats the XDP program does not take.
    heartbeats: dataplane::HeartbeatTable,
    heartbeat_socket: tokio::net::UdpSocket,
    /// The drains an adopted data plane kept.
    drains: Vec<(
        crate::routing::Route,
        dataplane::NodeTarget,
        std::time::Duration,
    )>,
}

impl Gateway {
    /// Takes the instance lock, reads the saved table, binds the sockets and
    /// starts (or adopts) the data plane: every way this can fail, it fails
    /// before a task runs.
    async fn build(config: Config, token: Option<String>, reset: bool) -> anyhow::Result<Gateway> {
        // Before anything of the instance is read or touched: a second daemon
        // would take the first one's pins for left-overs and remove them.
        let holder = format!(
            "halod pid {}, control socket {}",
            std::process::id(),
            config.control.socket.display()
        );
        let instance_lock = lock::InstanceLock::acquire(&config.instance, &holder)?;
        let shutdown = CancellationToken::new();
        spawn_signal_handler(shutdown.clone())?;

        // The saved table, checked against the config before anything is bound.
        let state_path = config.state_file();
        let saved = if reset {
            info!(path = %state_path.display(), "--reset: starting with an empty table");
            None
        } else {
            SavedState::load(&state_path)?
        };
        let saved = match saved {
            Some(saved) => {
                saved.check_addresses(&policy::NodePolicy::of(&config), &state_path)?;
                let cluster = saved.cluster(&config, &state_path)?;
                Some((saved, cluster))
            }
            None => None,
        };
        let group = config.control_group()?;

        // Bind first: a busy port fails before the data plane is touched.
        let listener = listen_for_nodes(config.nodes.listen).with_context(|| {
            format!(
                "nodes.listen: cannot listen on {} (is the address on this host, the port free?)",
                config.nodes.listen
            )
        })?;
        // UDP heartbeats go to the same address and port number as `hello`.
        let heartbeat_socket = tokio::net::UdpSocket::bind(config.nodes.listen)
            .await
            .with_context(|| {
                format!(
                    "nodes.listen: cannot receive UDP heartbeats on {} (is the UDP port free?)",
                    config.nodes.listen
                )
            })?;
        let control = socket::bind(&config.control.socket, group)?;
        let metrics_listener = match config.metrics.listen {
            Some(listen) => Some(exporter::bind(listen).await?),
            None => None,
        };
        let (tables, drains, heartbeats) = start_dataplane(&config, saved.is_some())?;
        Ok(Gateway {
            config,
            token,
            holder,
            instance_lock,
            shutdown,
            saved,
            listener,
            control,
            group,
            metrics_listener,
            tables,
            heartbeats,
            heartbeat_socket,
            drains,
        })
    }

    /// Starts every task and serves until SIGINT or SIGTERM, or until a task
    /// the daemon cannot go on without ends ([`supervise`]); then stops them
    /// all, writes the last table and leaves the data plane forwarding.
    async fn run(self) -> anyhow::Result<()> {
        let Gateway {
            config,
            token,
            holder,
            instance_lock,
            shutdown,
            saved,
            listener,
            control,
            group,
            metrics_listener,
            tables,
            heartbeats,
            heartbeat_socket,
            drains,
        } = self;
        let state_path = config.state_file();
        let (states, saved_states) = watch::channel(None);
        let mut wiring = Wiring::new(&config, tables.clone())?
            .token(token)
            .publish(Fingerprint::of(&config), states)
            .drains(drains)
            .udp_heartbeats(heartbeats.clone(), config.nodes.listen.port());
        if let Some((saved, cluster)) = saved {
            let grace = std::time::Duration::from_millis(config.nodes.restart_grace_ms);
            wiring = wiring.restore(saved, cluster, grace);
        }
        // Every task the daemon starts but the state writer, so that it waits
        // for all of them on the way out; the writer outlives them and writes
        // the last table.
        let tasks = TaskTracker::new();
        let wired = wiring.start(&tasks, &shutdown).await;
        let writer_stop = CancellationToken::new();
        let writer = tokio::spawn(state::run_writer(
            state_path.clone(),
            saved_states,
            wired.services.metrics.clone(),
            state::RETRY_START,
            writer_stop.clone(),
        ));
        tasks.spawn(socket::serve(
            control,
            config.control.socket.clone(),
            group,
            wired.services.clone(),
            shutdown.clone(),
        ));
        if let Some(listener) = metrics_listener {
            tasks.spawn(exporter::serve(
                listener,
                wired.services.clone(),
                shutdown.clone(),
            ));
        }
        info!(
            instance = %config.instance,
            vip = %config.vip,
            routes = config.routes.get(),
            listeners = ?config.base_ports(),
            nodes = %config.nodes.listen,
            control = %config.control.socket.display(),
            state_file = %state_path.display(),
            metrics = ?config.metrics.listen,
            "gateway running"
        );
        let lock_task = tasks.spawn(keep_lock(
            instance_lock,
            config.instance.to_string(),
            holder,
            shutdown.clone(),
        ));
        tasks.spawn(heartbeats::serve(
            heartbeat_socket,
            heartbeats,
            shutdown.clone(),
        ));
        tasks.spawn(accept_loop(listener, wired.connections));
        let outcome = supervise(&shutdown, wired.manager, tables.stopped()).await;
        // Whatever ended it, every task stops now.
        shutdown.cancel();
        tasks.close();
        if tokio::time::timeout(STOP_TIMEOUT, tasks.wait())
            .await
            .is_err()
        {
            warn!(
                timeout_ms = STOP_TIMEOUT.as_millis() as u64,
                "tasks did not stop in time; exiting anyway"
            );
        }
        writer_stop.cancel();
        let _ = writer.await;
        // Leave the program attached and pinned: it forwards with the last table
        // until the next daemon adopts it (`halod teardown` removes it).
        tables.shutdown_keeping().await;
        // Released last: the next daemon may adopt the pins from here on.
        drop(lock_task.await);
        match &outcome {
            Ok(()) => info!("gateway stopped"),
            Err(err) => error!("gateway stopped: {err:#}"),
        }
        outcome
    }
}

/// The data plane `config` describes: with a saved table, the one the
/// previous daemon left forwarding is adopted (forwarding never stops);
/// otherwise whatever it left pinned is removed and a new one started.
/// With it, its heartbeat stamps (a new map either way: the keys of the
/// previous daemon's nodes die with it).
/// The instance lock is held, so whatever is pinned for the instance is a
/// previous daemon's.
#[allow(clippy::type_complexity)]
fn start_dataplane(
    config: &Config,
    adopt: bool,
) -> anyhow::Result<(
    dataplane::DataplaneHandle,
    Vec<(
        crate::routing::Route,
        dataplane::NodeTarget,
        std::time::Duration,
    )>,
    dataplane::HeartbeatTable,
)> {
    let dataplane_config = dataplane::DataplaneConfig {
        instance: config.instance.clone(),
        external: config.interfaces.external.clone(),
        internal: config.interfaces.internal.clone(),
        vip: config.vip,
        routes: config.routes,
        listeners: config.base_ports(),
        max_nodes: config.nodes.max_nodes,
        drain_flows: config.nodes.drain_flows,
        // Nothing is recorded while the flush is off.
        flush_flows: if config.nodes.flush_pps > 0 {
            config.nodes.flush_flows
        } else {
            0
        },
    };
    let adopted = if adopt {
        dataplane::Dataplane::adopt(&dataplane_config)
            .context("adopting the data plane the previous daemon left running")?
    } else {
        None
    };
    let mut dataplane = match adopted {
        Some(dataplane) => {
            info!("data plane adopted: the XDP program kept forwarding across the restart");
            dataplane
        }
        None => {
            if dataplane::Dataplane::remove_pins(&config.instance)
                .context("removing the previous daemon's pins")?
            {
                warn!(instance = %config.instance, "removed the XDP program and maps a previous daemon left pinned");
            }
            dataplane::Dataplane::start(&dataplane_config).with_context(|| {
                format!(
                    "starting the data plane on {} / {}",
                    config.interfaces.external, config.interfaces.internal
                )
            })?
        }
    };
    // From here on no way out of the daemon detaches the program: an error,
    // like a SIGKILL, leaves it forwarding with the last table for the next
    // daemon to adopt (`halod teardown` removes it).
    dataplane.keep_on_drop();
    dataplane
        .set_next_hop_ttl(std::time::Duration::from_millis(
            config.next_hop_ttl_ms.into(),
        ))
        .context("writing next_hop_ttl_ms into the data plane")?;
    if config.nodes.flush_pps > 0 {
        match dataplane.start_flusher(config.nodes.flush_pps) {
            Ok(()) => info!(
                pps = config.nodes.flush_pps,
                flows = config.nodes.flush_flows,
                "dead-node flush on"
            ),
            Err(error) => warn!(
                "dead-node flush off: {error}; clients of a failed node learn it only when they next send"
            ),
        }
    }
    dataplane
        .set_heartbeat_port(config.nodes.listen.port())
        .context("writing the UDP heartbeat port into the data plane")?;
    let heartbeats = dataplane
        .heartbeats()
        .context("mapping the heartbeat stamps")?;
    let drains = dataplane.drains();
    Ok((dataplane::spawn(dataplane), drains, heartbeats))
}

/// How long the tasks have to stop once the daemon stops.
const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits for the daemon's end: SIGTERM or SIGINT (the `shutdown` token), or
/// the end of a task it cannot serve without, the node manager or the
/// data-plane actor. Such an end is an error, so the daemon exits non-zero
/// (and systemd starts it again) instead of serving a control socket with
/// nothing behind it.
async fn supervise(
    shutdown: &CancellationToken,
    manager: tokio::task::JoinHandle<anyhow::Result<()>>,
    dataplane_stopped: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut manager = manager;
    let ended = tokio::select! {
        // Asked to stop: whatever else is ready, this stop is the clean one.
        biased;
        () = shutdown.cancelled() => None,
        ended = &mut manager => Some(ended),
        () = dataplane_stopped => {
            return Err(anyhow::anyhow!(
                "the data-plane task stopped unexpectedly (panicked?): the daemon can no longer change the table"
            ));
        }
    };
    match ended {
        // A clean stop: the manager publishes its last table first.
        None => match manager.await {
            Ok(result) => result.context("node manager"),
            Err(join) => Err(anyhow::anyhow!("the node manager task failed: {join}")),
        },
        // The manager stops on its own only when asked to (SIGTERM came just now).
        Some(Ok(Ok(()))) if shutdown.is_cancelled() => Ok(()),
        Some(Ok(Ok(()))) => Err(anyhow::anyhow!("the node manager stopped unexpectedly")),
        Some(Ok(Err(err))) => Err(err.context("node manager")),
        Some(Err(join)) if join.is_panic() => Err(anyhow::anyhow!(
            "the node manager panicked: {}",
            panic_message(join.into_panic())
        )),
        Some(Err(join)) => Err(anyhow::anyhow!("the node manager task failed: {join}")),
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

/// Accepts node connections until the daemon stops; one task per connection.
pub(crate) async fn accept_loop(listener: TcpListener, context: ConnectionContext) {
    // One copy shared by every connection task (each holds a pointer, not a copy).
    let context = Arc::new(context);
    // Every connection task, so that this loop ends only after them.
    let connections = TaskTracker::new();
    accept_connections(&listener, &context, &connections).await;
    connections.close();
    connections.wait().await;
}

async fn accept_connections(
    listener: &TcpListener,
    context: &Arc<ConnectionContext>,
    connections: &TaskTracker,
) {
    let mut next_conn: u64 = 0;
    loop {
        let accepted = tokio::select! {
            () = context.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                next_conn += 1;
                let conn = next_conn;
                let _ = stream.set_nodelay(true);
                urgent();
                let context = context.clone();
                let Some(open) = context.policy.admit() else {
                    policy::refusal!(context.policy, %peer, "node connection refused: too many connections");
                    context.metrics.node_refused("too_many_connections");
                    connections.spawn(connection::refuse_connection(
                        stream,
                        context.policy.max_connections,
                    ));
                    continue;
                };
                connections.spawn(async move {
                    let _open = open;
                    let mut stream = stream;
                    let (reader, writer) = stream.split();
                    let reader = connection::DelayedAcks::new(reader);
                    connection::serve(reader, writer, peer.ip(), conn, context).await;
                });
            }
            Err(err) => {
                // EMFILE and friends: back off instead of spinning.
                warn!("accepting a node connection failed: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Holds the instance lock until `shutdown` and returns it. A lock file
/// removed meanwhile (`rm`, a clean-up of /run) would let a second daemon in:
/// it is made and taken again, checked as often as the control socket.
async fn keep_lock(
    mut held: lock::InstanceLock,
    instance: String,
    holder: String,
    shutdown: CancellationToken,
) -> lock::InstanceLock {
    let mut check = tokio::time::interval(socket::SOCKET_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut complained = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return held,
            _ = check.tick() => {}
        }
        if held.still_in_place() {
            continue;
        }
        match lock::InstanceLock::acquire(&instance, &holder) {
            Ok(again) => {
                warn!(path = %again.path().display(), "the instance lock file was removed while the daemon ran; made and took it again");
                held = again;
                complained = false;
            }
            Err(err) if !complained => {
                complained = true;
                tracing::error!(
                    "the instance lock file was removed and cannot be taken again: {err}"
                );
            }
            Err(_) => {}
        }
    }
}

/// SIGINT and SIGTERM stop the daemon. SIGHUP, which many daemons take as
/// "reload", is logged and ignored: halod's config shapes the table and the
/// data plane, and a change is applied by a restart (which keeps
/// forwarding, docs/operations.md). Its default action would kill the
/// daemon without a word.
fn spawn_signal_handler(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = interrupt.recv() => {
                    info!("SIGINT: shutting down");
                    break;
                }
                _ = terminate.recv() => {
                    info!("SIGTERM: shutting down");
                    break;
                }
                _ = hangup.recv() => warn!(
                    "SIGHUP ignored: halod does not reload its config; to apply a change, \
                     restart it (systemctl restart halod): forwarding goes on across a restart"
                ),
            }
        }
        shutdown.cancel();
    });
    Ok(())
}
