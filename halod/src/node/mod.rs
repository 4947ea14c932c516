//! The node agent (`halod node`) and its client library ([`Client`]).
//!
//! The agent registers with the gateway, heartbeats, prints every message it
//! receives as one JSON line on stdout, runs `--exec CMD` on every change
//! (and again on SIGUSR1), keeps `--state-file` up to date, and reconnects
//! with backoff when the gateway goes away. SIGTERM or SIGINT make it say
//! `bye` (the node leaves), run the hook for the last `moved`, and exit 0 as
//! soon as the gateway has closed the connection (with a drain, when the
//! window ended: after `drain_done`).

mod client;
mod hook;
mod state;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{info, warn};

pub use self::client::{BYE_TIMEOUT, Client, ClientError, ClientOptions, Received, drain_of};
pub use self::hook::Hook;
pub use self::state::{Change, Draining, NodeState, StatePublisher};
use crate::protocol::{ErrorCode, GatewayMessage, Role};

/// First reconnect delay; doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_START: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Exit code when the gateway refuses the node for good (bad token, bad request).
pub const EXIT_REFUSED: u8 = 2;

#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// Gateway address (its `nodes.listen`), IP:PORT.
    #[arg(long, value_parser = crate::protocol::parse_gateway)]
    pub gateway: String,
    /// This node's unique name: 1 to 64 of A-Z a-z 0-9 . _ -
    #[arg(long)]
    pub name: String,
    /// Address the gateway sends this node's traffic to [default: the address
    /// this node connects from].
    #[arg(long)]
    pub addr: Option<Ipv4Addr>,
    /// File holding the gateway's token (its `nodes.token_file`).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Shell command run (`sh -c CMD`) on every change and on SIGUSR1, with
    /// HALOD_EVENT, HALOD_NODE, HALOD_ROLE, the full HALOD_ROUTES and
    /// HALOD_PORTS, and the change in HALOD_GAINED_ROUTES, HALOD_GAINED_PORTS,
    /// HALOD_LOST_ROUTES, HALOD_LOST_PORTS, HALOD_DRAIN_MS (how long the lost
    /// routes' open connections stay), and, for `drain_done`,
    /// HALOD_DRAINED_ROUTES, HALOD_DRAINED_PORTS.
    #[arg(long)]
    pub exec: Option<String>,
    /// JSON file kept up to date with the node's role, routes and ports, and
    /// the routes draining (replaced atomically on every change, removed on
    /// exit).
    #[arg(long)]
    pub state_file: Option<PathBuf>,
    /// Protocol version to speak: 2 sends heartbeats as UDP datagrams (when
    /// the gateway offers them), 1 as TCP lines. A gateway that speaks only
    /// version 1 is answered with version 1 either way.
    #[arg(long, default_value_t = crate::protocol::VERSION,
        value_parser = clap::value_parser!(u32).range(1..=crate::protocol::VERSION as i64))]
    pub protocol_version: u32,
}

pub fn run(args: NodeArgs) -> anyhow::Result<ExitCode> {
    if !crate::protocol::valid_name(&args.name) {
        anyhow::bail!("--name {:?}: use 1 to 64 of A-Z a-z 0-9 . _ -", args.name);
    }
    let token = match &args.token_file {
        Some(path) => Some(
            crate::config::read_token(path)
                .map_err(|reason| anyhow::anyhow!("--token-file: {reason}"))?,
        ),
        None => None,
    };
    if let Some(path) = &args.state_file {
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => std::path::Path::new("."),
        };
        if !parent.is_dir() {
            anyhow::bail!(
                "--state-file {}: the directory {} does not exist; create it or pick another path",
                path.display(),
                parent.display()
            );
        }
    }
    crate::control::init_logging();
    let options = ClientOptions {
        gateway: args.gateway.clone(),
        name: args.name.clone(),
        addr: args.addr,
        token,
        version: args.protocol_version,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let code = runtime.block_on(async {
        let mut signals = Signals::install()?;
        let hook = args
            .exec
            .map(|command| Hook::spawn(command, args.name.clone()));
        let publisher = args.state_file.map(StatePublisher::new);
        let mut agent = Agent {
            options,
            hook,
            publisher,
            known: None,
            draining: Draining::default(),
            hurry: false,
        };
        let code = agent.run(&mut signals).await;
        agent.finish(&mut signals).await;
        anyhow::Ok(code)
    })?;
    // Nothing is left to wait for: the hook ran for every change.
    runtime.shutdown_background();
    Ok(code)
}

/// SIGTERM and SIGINT (leave), SIGUSR1 (run the hook again).
struct Signals {
    interrupt: Signal,
    terminate: Signal,
    resync: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            resync: signal(SignalKind::user_defined1())
                .context("installing the SIGUSR1 handler")?,
        })
    }

    /// The next signal; cancel-safe.
    async fn next(&mut self) -> Wanted {
        tokio::select! {
            _ = self.interrupt.recv() => Wanted::Leave,
            _ = self.terminate.recv() => Wanted::Leave,
            _ = self.resync.recv() => Wanted::Resync,
        }
    }
}

enum Wanted {
    Leave,
    Resync,
}

/// The agent: its options, what it knows of its node, and where it tells it.
struct Agent {
    options: ClientOptions,
    hook: Option<Hook>,
    publisher: Option<StatePublisher>,
    /// The node's state as the gateway last described it; `None` before the
    /// first `welcome`. Kept while the agent reconnects.
    known: Option<NodeState>,
    /// Routes lost with a drain whose `drain_done` has not come yet.
    draining: Draining,
    /// A second SIGTERM or SIGINT came: exit without waiting for `--exec`.
    hurry: bool,
}

impl Agent {
    async fn run(&mut self, signals: &mut Signals) -> ExitCode {
        let name = self.options.name.clone();
        let mut stdout = tokio::io::stdout();
        let mut backoff = BACKOFF_START;
        loop {
            let options = self.options.clone();
            let Some(connected) = self
                .unless_asked_to_leave(signals, Client::connect(&options))
                .await
            else {
                return ExitCode::SUCCESS;
            };
            match connected {
                Ok((mut client, welcome)) => {
                    backoff = BACKOFF_START;
                    match client.role() {
                        Role::Active => info!(
                            node = %name,
                            gateway = %self.options.gateway,
                            routes = client.route_ports().len(),
                            "registered as active"
                        ),
                        Role::Spare => info!(
                            node = %name,
                            gateway = %self.options.gateway,
                            "registered as spare: it serves no route until an active node fails \
                             (the gateway keeps nodes.spares nodes waiting, and the first node \
                             to join is always active, so with spares: 1 the second node to \
                             join is the spare)"
                        ),
                    }
                    print_line(&mut stdout, &welcome.line).await;
                    self.apply(&client, &welcome.message);
                    loop {
                        let received = tokio::select! {
                            wanted = signals.next() => match wanted {
                                Wanted::Resync => {
                                    self.resync();
                                    continue;
                                }
                                Wanted::Leave => {
                                    self.leave(client, &mut stdout, signals).await;
                                    return ExitCode::SUCCESS;
                                }
                            },
                            received = client.recv() => received,
                        };
                        match received {
                            Ok(received) => {
                                print_line(&mut stdout, &received.line).await;
                                self.apply(&client, &received.message);
                            }
                            Err(ClientError::Refused {
                                code: ErrorCode::Drained,
                                message,
                                line,
                                ..
                            }) => {
                                // A planned departure: exit 0 so a supervisor
                                // (systemd Restart=on-failure) leaves it stopped.
                                print_line(&mut stdout, &line).await;
                                info!(node = %name, "the gateway says: {message}; exiting");
                                return ExitCode::SUCCESS;
                            }
                            Err(err) => {
                                if let ClientError::Refused { line, .. } = &err {
                                    print_line(&mut stdout, line).await;
                                }
                                warn!(node = %name, "{err}; reconnecting");
                                self.publish(false);
                                break;
                            }
                        }
                    }
                }
                Err(ClientError::Refused {
                    code,
                    message,
                    line,
                    ..
                }) => {
                    print_line(&mut stdout, &line).await;
                    match code {
                        // Transient: the old connection may not have timed out yet,
                        // or another node may leave.
                        ErrorCode::DuplicateName | ErrorCode::Full => {
                            warn!(node = %name, "refused ({code}: {message}); retrying");
                        }
                        _ => {
                            warn!(node = %name, "refused by the gateway: {code}: {message}");
                            return ExitCode::from(EXIT_REFUSED);
                        }
                    }
                }
                Err(err) => warn!(node = %name, "{err}; retrying"),
            }
            let delay = jitter(backoff);
            backoff = (backoff * 2).min(BACKOFF_MAX);
            let sleep = tokio::time::sleep(delay);
            if self.unless_asked_to_leave(signals, sleep).await.is_none() {
                return ExitCode::SUCCESS;
            }
        }
    }

    /// `work`'s output, or `None` when SIGTERM or SIGINT came first (nothing to
    /// say `bye` on: the agent is not registered). SIGUSR1 meanwhile runs the hook.
    async fn unless_asked_to_leave<T>(
        &mut self,
        signals: &mut Signals,
        work: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                wanted = signals.next() => match wanted {
                    Wanted::Leave => return None,
                    Wanted::Resync => self.resync(),
                },
                done = &mut work => return Some(done),
            }
        }
    }

    /// Says `bye`, prints and applies what the gateway sends until it closes
    /// the connection (its `moved`; with a drain, `drain_done` when the window
    /// ends), at most [`BYE_TIMEOUT`] or the drain window plus [`BYE_TIMEOUT`].
    /// Another SIGTERM or SIGINT ends the wait at once.
    async fn leave(
        &mut self,
        mut client: Client,
        stdout: &mut tokio::io::Stdout,
        signals: &mut Signals,
    ) {
        let name = self.options.name.clone();
        if let Err(err) = client.send_bye().await {
            warn!(node = %name, "saying bye: {err}");
            return;
        }
        let mut deadline = tokio::time::Instant::now() + BYE_TIMEOUT;
        let mut draining = false;
        loop {
            let received = tokio::select! {
                wanted = signals.next() => match wanted {
                    Wanted::Resync => {
                        self.resync();
                        continue;
                    }
                    Wanted::Leave => {
                        warn!(node = %name, "asked again to stop: exiting now, before the gateway closed the connection");
                        self.hurry = true;
                        return;
                    }
                },
                received = tokio::time::timeout_at(deadline, client.recv()) => received,
            };
            match received {
                Ok(Ok(received)) => {
                    print_line(stdout, &received.line).await;
                    if let Some(drain) = drain_of(&received.message) {
                        deadline = deadline.max(tokio::time::Instant::now() + drain + BYE_TIMEOUT);
                        if !draining {
                            draining = true;
                            info!(
                                node = %name,
                                drain_ms = drain.as_millis() as u64,
                                "draining for {} ms: the connections open on the moved routes \
                                 stay until the gateway ends the window (SIGTERM again: exit now)",
                                drain.as_millis()
                            );
                        }
                    }
                    self.apply(&client, &received.message);
                }
                Ok(Err(ClientError::Closed)) => break,
                Ok(Err(err)) => {
                    if let ClientError::Refused { line, .. } = &err {
                        print_line(stdout, line).await;
                    }
                    warn!(node = %name, "after bye: {err}");
                    break;
                }
                Err(_) => {
                    warn!(node = %name, "the gateway did not close the connection in time after bye; leaving anyway");
                    break;
                }
            }
        }
        info!(node = %name, "left the cluster");
    }

    /// A message applied to the known state: the hook runs, the state file is
    /// rewritten.
    fn apply(&mut self, client: &Client, message: &GatewayMessage) {
        let Some(event) = event_name(message) else {
            return;
        };
        let after = NodeState::of(client);
        let now = crate::api::unix_ms();
        let mut change = Change::between(event, self.known.as_ref(), &after);
        match message {
            GatewayMessage::Moved { routes, drain_ms } if *drain_ms > 0 => {
                self.draining.start(routes, *drain_ms, now);
                change.drain_ms = *drain_ms;
            }
            GatewayMessage::DrainDone { routes } => {
                change.drained = self.draining.done(routes, &after.routes);
            }
            _ => {}
        }
        self.draining.retain_valid(&after.routes, now);
        self.changed(change);
    }

    fn changed(&mut self, change: Change) {
        self.known = Some(change.state.clone());
        self.publish(true);
        if let Some(hook) = &self.hook {
            hook.run(change);
        }
    }

    /// SIGUSR1: the hook runs again with the full state (a push server that
    /// restarted learns its routes), and the state file is rewritten.
    fn resync(&mut self) {
        let Some(known) = self.known.clone() else {
            info!(node = %self.options.name, "SIGUSR1: not registered yet, nothing to tell");
            return;
        };
        info!(node = %self.options.name, routes = known.routes.len(), "SIGUSR1: running the hook with the full state");
        if let Some(publisher) = &self.publisher
            && let Err(err) = publisher.write(
                &self.options.name,
                &self.options.gateway,
                true,
                &known,
                &self.draining,
            )
        {
            warn!(node = %self.options.name, "writing --state-file {}: {err}", publisher.path().display());
        }
        if let Some(hook) = &self.hook {
            hook.run(Change::between("resync", Some(&known), &known));
        }
    }

    fn publish(&self, connected: bool) {
        if let (Some(publisher), Some(known)) = (&self.publisher, &self.known)
            && let Err(err) = publisher.write(
                &self.options.name,
                &self.options.gateway,
                connected,
                known,
                &self.draining,
            )
        {
            warn!(
                node = %self.options.name,
                "writing --state-file {}: {err}",
                publisher.path().display()
            );
        }
    }

    /// Before exit: the hook has run for every change (unless a second
    /// SIGTERM or SIGINT says not to wait), the state file is gone.
    async fn finish(self, signals: &mut Signals) {
        if let Some(hook) = self.hook
            && !self.hurry
        {
            let finished = hook.finish();
            tokio::pin!(finished);
            loop {
                tokio::select! {
                    () = &mut finished => break,
                    wanted = signals.next() => if let Wanted::Leave = wanted {
                        warn!(node = %self.options.name, "asked again to stop: exiting before --exec finished");
                        break;
                    },
                }
            }
        }
        if let Some(publisher) = &self.publisher
            && let Err(err) = publisher.remove()
        {
            warn!(node = %self.options.name, "removing --state-file {}: {err}", publisher.path().display());
        }
    }
}

/// The `HALOD_EVENT` of a message that changes the node's state.
fn event_name(message: &GatewayMessage) -> Option<&'static str> {
    match message {
        GatewayMessage::Welcome { .. } => Some("welcome"),
        GatewayMessage::Assigned { .. } => Some("assigned"),
        GatewayMessage::Moved { .. } => Some("moved"),
        GatewayMessage::Role { .. } => Some("role"),
        GatewayMessage::DrainDone { .. } => Some("drain_done"),
        GatewayMessage::Error { .. } => None,
    }
}

async fn print_line(stdout: &mut tokio::io::Stdout, line: &str) {
    let mut out = String::with_capacity(line.len() + 1);
    out.push_str(line);
    out.push('\n');
    let _ = stdout.write_all(out.as_bytes()).await;
    let _ = stdout.flush().await;
}

/// `delay` plus up to half of it, so nodes that lost the gateway together do
/// not all come back in the same millisecond.
fn jitter(delay: Duration) -> Duration {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().wrapping_mul(2_654_435_761);
    let half = delay.as_millis() as u32 / 2;
    delay + Duration::from_millis(u64::from(seed % (half + 1)))
}

#[cfg(test)]
mod tests;
