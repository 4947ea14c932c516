//! The node agent (`halod node`) and its client library ([`Client`]).
//!
//! The agent registers with the gateway, heartbeats, prints every message it
//! receives as one JSON line on stdout, runs `--exec CMD` on every change,
//! and reconnects with backoff when the gateway goes away. SIGTERM or SIGINT
//! make it say `bye` (the node leaves) and exit 0.

mod client;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use self::client::{BYE_TIMEOUT, Client, ClientError, ClientOptions, Received};
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
    /// Shell command run (`sh -c CMD`) on every change, with HALOD_EVENT,
    /// HALOD_ROUTES, HALOD_PORTS, HALOD_ROLE and HALOD_NODE set.
    #[arg(long)]
    pub exec: Option<String>,
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
    let options = ClientOptions {
        gateway: args.gateway.clone(),
        name: args.name.clone(),
        addr: args.addr,
        token,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(agent(options, args.exec))
}

/// What `--exec` is told about one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `welcome`, `assigned`, `moved` or `role`.
    pub event: &'static str,
    pub role: Role,
    pub routes: Vec<u16>,
    pub ports: Vec<u16>,
}

impl Change {
    fn of(client: &Client, message: &GatewayMessage) -> Option<Change> {
        let event = match message {
            GatewayMessage::Welcome { .. } => "welcome",
            GatewayMessage::Assigned { .. } => "assigned",
            GatewayMessage::Moved { .. } => "moved",
            GatewayMessage::Role { .. } => "role",
            GatewayMessage::Error { .. } => return None,
        };
        Some(Change {
            event,
            role: client.role(),
            routes: client.routes(),
            ports: client.ports(),
        })
    }

    /// The environment `--exec` gets.
    pub fn environment(&self, node: &str) -> Vec<(&'static str, String)> {
        let join = |items: &[u16]| {
            items
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        vec![
            ("HALOD_EVENT", self.event.to_string()),
            ("HALOD_ROLE", self.role.as_str().to_string()),
            ("HALOD_ROUTES", join(&self.routes)),
            ("HALOD_PORTS", join(&self.ports)),
            ("HALOD_NODE", node.to_string()),
        ]
    }
}

async fn agent(options: ClientOptions, exec: Option<String>) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut terminate =
            signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            shutdown.cancel();
        });
    }
    let changes = exec.map(|command| spawn_exec(command, options.name.clone()));
    let mut stdout = tokio::io::stdout();
    let mut backoff = BACKOFF_START;
    loop {
        let connected = tokio::select! {
            () = shutdown.cancelled() => return Ok(ExitCode::SUCCESS),
            connected = Client::connect(&options) => connected,
        };
        match connected {
            Ok((mut client, welcome)) => {
                backoff = BACKOFF_START;
                eprintln!(
                    "halod node {}: registered with {} as {}",
                    options.name,
                    options.gateway,
                    client.role().as_str()
                );
                print_line(&mut stdout, &welcome.line).await;
                notify(&changes, &client, &welcome.message);
                loop {
                    let received = tokio::select! {
                        () = shutdown.cancelled() => {
                            let goodbye = client.bye().await;
                            if let Ok(messages) = &goodbye {
                                for message in messages {
                                    print_line(&mut stdout, &message.line).await;
                                }
                            }
                            eprintln!("halod node {}: left the cluster", options.name);
                            return Ok(ExitCode::SUCCESS);
                        }
                        received = client.recv() => received,
                    };
                    match received {
                        Ok(received) => {
                            print_line(&mut stdout, &received.line).await;
                            notify(&changes, &client, &received.message);
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
                            eprintln!(
                                "halod node {}: drained by the operator ({message}); exiting",
                                options.name
                            );
                            return Ok(ExitCode::SUCCESS);
                        }
                        Err(err) => {
                            if let ClientError::Refused { line, .. } = &err {
                                print_line(&mut stdout, line).await;
                            }
                            eprintln!("halod node {}: {err}; reconnecting", options.name);
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
                        eprintln!(
                            "halod node {}: refused ({code}: {message}); retrying",
                            options.name
                        );
                    }
                    _ => {
                        eprintln!(
                            "halod node {}: refused by the gateway: {code}: {message}",
                            options.name
                        );
                        return Ok(ExitCode::from(EXIT_REFUSED));
                    }
                }
            }
            Err(err) => {
                eprintln!("halod node {}: {err}; retrying", options.name);
            }
        }
        let delay = jitter(backoff);
        backoff = (backoff * 2).min(BACKOFF_MAX);
        tokio::select! {
            () = shutdown.cancelled() => return Ok(ExitCode::SUCCESS),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

async fn print_line(stdout: &mut tokio::io::Stdout, line: &str) {
    let mut out = String::with_capacity(line.len() + 1);
    out.push_str(line);
    out.push('\n');
    let _ = stdout.write_all(out.as_bytes()).await;
    let _ = stdout.flush().await;
}

fn notify(
    changes: &Option<mpsc::UnboundedSender<Change>>,
    client: &Client,
    message: &GatewayMessage,
) {
    if let (Some(changes), Some(change)) = (changes, Change::of(client, message)) {
        let _ = changes.send(change);
    }
}

/// Runs the `--exec` command once per change, in order, one at a time.
fn spawn_exec(command: String, node: String) -> mpsc::UnboundedSender<Change> {
    let (changes, mut queue) = mpsc::unbounded_channel::<Change>();
    tokio::spawn(async move {
        while let Some(change) = queue.recv().await {
            let status = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(&command)
                .envs(change.environment(&node))
                .stdin(std::process::Stdio::null())
                .status()
                .await;
            match status {
                Ok(status) if status.success() => {}
                Ok(status) => eprintln!(
                    "halod node {node}: --exec for {} exited with {status}",
                    change.event
                ),
                Err(err) => eprintln!("halod node {node}: cannot run --exec: {err}"),
            }
        }
    });
    changes
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
