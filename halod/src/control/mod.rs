//! The gateway daemon (`halod run`): joins the routing core to the data plane
//! and to the nodes.
//!
//! Tasks: one accept loop, one task per node connection ([`connection`]),
//! one node manager ([`manager`]) that owns the routing cluster and the node
//! table, and the data-plane actor that owns the BPF maps. Shutdown goes
//! through one cancellation token, set on SIGINT or SIGTERM.

pub mod connection;
pub mod manager;
pub mod tables;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::connection::ConnectionContext;
use self::manager::{Clock, Manager, Settings};
use crate::config::Config;
use crate::dataplane;
use crate::routing::{Cluster, ClusterConfig};

/// Requests queued for the manager before connection tasks wait.
const REQUEST_QUEUE: usize = 1024;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Path of the gateway's YAML config (docs/operations.md, "Configuration reference").
    #[arg(long)]
    pub config: PathBuf,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    // Every check before any change to the system.
    let config = Config::load(&args.config)?;
    let token = config.check_system()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("halod")
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(serve(config, token))?;
    Ok(ExitCode::SUCCESS)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HALOD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn serve(config: Config, token: Option<String>) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;

    // Bind first: a busy port fails before the data plane is touched.
    let listener = TcpListener::bind(config.nodes.listen)
        .await
        .with_context(|| {
            format!(
                "nodes.listen: cannot listen on {} (is the address on this host, the port free?)",
                config.nodes.listen
            )
        })?;

    let cluster = Cluster::new(ClusterConfig {
        routes: config.routes,
        spares: config.nodes.spares,
        max_active: config.nodes.max_active,
    })
    .context("config: routing")?;

    let dataplane_config = dataplane::DataplaneConfig {
        instance: config.instance.clone(),
        external: config.interfaces.external.clone(),
        internal: config.interfaces.internal.clone(),
        vip: config.vip,
        routes: config.routes as u16,
        listeners: config.base_ports(),
        max_nodes: config.nodes.max_nodes,
    };
    let dataplane = dataplane::Dataplane::start(&dataplane_config).with_context(|| {
        format!(
            "starting the data plane on {} / {}",
            config.interfaces.external, config.interfaces.internal
        )
    })?;
    let tables = dataplane::spawn(dataplane);

    let settings = Settings {
        heartbeat: std::time::Duration::from_millis(config.nodes.heartbeat_ms),
        dead_after: config.nodes.dead_after,
        reconnect_grace: std::time::Duration::from_millis(config.nodes.reconnect_grace_ms),
        max_nodes: config.nodes.max_nodes,
        base_ports: config.base_ports(),
    };
    let clock = Clock::new();
    let (requests, inbox) = mpsc::channel(REQUEST_QUEUE);
    let manager = Manager::new(cluster, settings, tables.clone(), clock);
    let manager = tokio::spawn(manager.run(inbox, shutdown.clone()));

    info!(
        instance = %config.instance,
        vip = %config.vip,
        routes = config.routes,
        listeners = ?config.base_ports(),
        nodes = %config.nodes.listen,
        "gateway running"
    );
    let context = ConnectionContext {
        requests,
        token,
        clock,
        shutdown: shutdown.clone(),
    };
    accept_loop(listener, context).await;
    manager.await.context("node manager task")?;
    // Detach the program and remove the pins before the process exits.
    tables.shutdown().await;
    info!("gateway stopped");
    Ok(())
}

pub(crate) async fn accept_loop(listener: TcpListener, context: ConnectionContext) {
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
                let context = context.clone();
                tokio::spawn(async move {
                    let mut stream = stream;
                    let (reader, writer) = stream.split();
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

fn spawn_signal_handler(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => info!("SIGINT: shutting down"),
            _ = terminate.recv() => info!("SIGTERM: shutting down"),
        }
        shutdown.cancel();
    });
    Ok(())
}
