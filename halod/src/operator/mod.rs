//! The operator commands: `halod routes|nodes|status|stats|drain|watch`.
//!
//! Each connects to the daemon's control socket (`control.socket`, see
//! `crate::control::socket` for the requests and replies), sends one request
//! line, reads the reply and prints it as an aligned table (in the manner of
//! `ipvsadm -Ln`) or, with `--json`, as the daemon's JSON line. Errors are one
//! line on stderr and exit status 1.

mod table;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::api::{
    DrainReply, ErrorReply, NodesReply, OperatorRequest, RoutesReply, StateFileHealth, StatsReply,
    StatusReply, unix_ms,
};
use crate::config::DEFAULT_CONTROL_SOCKET;
use table::{Table, clock_time, duration, ms_ago};

/// How long to wait for the daemon by default (`--timeout`): it answers
/// within milliseconds unless it is stopped (SIGSTOP, a debugger), stuck or
/// swamped, and a script must not hang on it.
pub const DEFAULT_TIMEOUT: &str = "5";

/// Where the daemon is and how to print.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// The daemon's control socket (`control.socket` in its config).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
    pub socket: PathBuf,
    /// Print the daemon's JSON reply (one line) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Give up when the daemon has not answered within this many seconds
    /// (e.g. 5, 0.5, 300ms); exit status 1, saying what became of the request.
    #[arg(long, value_name = "SECONDS", default_value = DEFAULT_TIMEOUT, value_parser = parse_timeout)]
    pub timeout: Duration,
}

/// `--timeout`: seconds (`5`, `0.5`, `5s`) or milliseconds (`300ms`), more than 0.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let (number, scale) = match text.strip_suffix("ms") {
        Some(number) => (number, 0.001),
        None => (text.strip_suffix('s').unwrap_or(text), 1.0),
    };
    let seconds = number
        .trim()
        .parse::<f64>()
        .ok()
        .map(|n| n * scale)
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
        .ok_or_else(|| {
            format!("{text:?} is not a timeout: give seconds (5, 0.5) or milliseconds (300ms), more than 0 and at most a day")
        })?;
    Ok(Duration::from_secs_f64(seconds))
}

#[derive(clap::Args, Debug, Clone)]
pub struct DrainArgs {
    /// The node to drain (its `--name`).
    pub name: String,
    #[command(flatten)]
    pub target: Target,
}

/// Why a command failed: printed as `halod: MESSAGE`.
#[derive(Debug)]
struct Failure(String);

/// Runs one operator command; returns the exit status.
pub fn run(request: OperatorRequest, target: Target) -> anyhow::Result<ExitCode> {
    match execute(&request, &target) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(Failure(message)) => {
            crate::stderr_line!("halod: {message}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn execute(request: &OperatorRequest, target: &Target) -> Result<(), Failure> {
    let mut connection = Connection::open_within(&target.socket, target.timeout)?;
    connection.send(request)?;
    let line = connection.reply().map_err(|failure| match failure {
        Failure(message) if connection.timed_out => Failure(format!(
            "{message}; {}",
            match request {
                OperatorRequest::Drain { node } => format!(
                    "the drain of {node} was sent and may still be carried out when the daemon resumes: \
                     check with `halod nodes` before you drain again"
                ),
                _ => "the request changes nothing; try again when the daemon answers".to_string(),
            }
        )),
        other => other,
    })?;
    if let Ok(error) = serde_json::from_str::<ErrorReply>(&line) {
        if target.json {
            print_out(&format!("{line}\n"));
        }
        return Err(Failure(error.error));
    }
    if *request == OperatorRequest::Watch {
        return watch(connection, target);
    }
    if target.json {
        print_out(&format!("{line}\n"));
        return Ok(());
    }
    let text = match request {
        OperatorRequest::Routes => render_routes(&parse(&line)?),
        OperatorRequest::Nodes => render_nodes(&parse(&line)?, unix_ms()),
        OperatorRequest::Status => render_status(&parse(&line)?),
        OperatorRequest::Stats => render_stats(&parse(&line)?),
        OperatorRequest::Drain { .. } => {
            let reply: DrainReply = parse(&line)?;
            drained_text(&reply)
        }
        OperatorRequest::Watch => unreachable!("handled above"),
    };
    print_out(&text);
    Ok(())
}

/// Asks the daemon at `socket` for `stats` (for `halod simulate
/// --connections live`); the error is a sentence for people.
pub fn ask_stats(socket: &Path) -> Result<StatsReply, String> {
    let timeout = parse_timeout(DEFAULT_TIMEOUT).expect("the default timeout parses");
    let ask = || -> Result<StatsReply, Failure> {
        let mut connection = Connection::open_within(socket, timeout)?;
        connection.send(&OperatorRequest::Stats)?;
        let line = connection.reply()?;
        if let Ok(error) = serde_json::from_str::<ErrorReply>(&line) {
            return Err(Failure(error.error));
        }
        parse(&line)
    };
    ask().map_err(|Failure(message)| message)
}

/// Prints a reply. A closed stdout (`halod routes | head -3`) ends the
/// output quietly: the reader has what it wanted.
fn print_out(text: &str) {
    let _ = crate::console::stdout(text);
}

fn parse<T: DeserializeOwned>(line: &str) -> Result<T, Failure> {
    serde_json::from_str(line).map_err(|err| {
        Failure(format!(
            "the daemon's reply is not what this halod expects ({err}); is it the same version? the reply: {line}"
        ))
    })
}

struct Connection {
    path: PathBuf,
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    /// How long to wait for the daemon.
    timeout: Duration,
    /// The last read gave up after `timeout`.
    timed_out: bool,
}

impl Connection {
    #[cfg(test)]
    fn open(path: &Path) -> Result<Connection, Failure> {
        Connection::open_within(path, Duration::from_secs(30))
    }

    /// Connects, waiting at most `timeout`: a stopped daemon's full listen
    /// queue would block `connect` itself.
    fn open_within(path: &Path, timeout: Duration) -> Result<Connection, Failure> {
        let stream = connect(path, timeout).map_err(|err| {
            let reason = err
                .raw_os_error()
                .map(|code| nix::errno::Errno::from_raw(code).desc().to_string())
                .unwrap_or_else(|| err.to_string());
            let hint = match err.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    "the socket is root's (mode 0600) or control.group's: run as root or as a member of that group"
                }
                std::io::ErrorKind::TimedOut => {
                    "the daemon accepts no connections: it is stopped (SIGSTOP), stuck or swamped; nothing was sent"
                }
                _ => "is `halod run` running? use --socket",
            };
            Failure(format!(
                "cannot reach the daemon at {}: {reason} ({hint})",
                path.display()
            ))
        })?;
        let reader = stream
            .try_clone()
            .map(BufReader::new)
            .map_err(|err| Failure(format!("control socket {}: {err}", path.display())))?;
        Ok(Connection {
            path: path.to_path_buf(),
            stream,
            reader,
            timeout,
            timed_out: false,
        })
    }

    fn send(&mut self, request: &OperatorRequest) -> Result<(), Failure> {
        let mut line = serde_json::to_string(request).expect("requests serialize");
        line.push('\n');
        self.stream
            .write_all(line.as_bytes())
            .map_err(|err| self.lost(err))
    }

    /// The next line from the daemon, without its newline.
    fn reply(&mut self) -> Result<String, Failure> {
        self.stream
            .set_read_timeout(Some(self.timeout))
            .map_err(|err| self.lost(err))?;
        self.line()
    }

    fn line(&mut self) -> Result<String, Failure> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err(Failure(format!(
                "the daemon at {} closed the connection without answering",
                self.path.display()
            ))),
            Ok(_) => Ok(line.trim_end().to_string()),
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                self.timed_out = true;
                Err(Failure(format!(
                    "no reply from the daemon at {} within {:?} (--timeout): it is stopped (SIGSTOP), stuck or swamped",
                    self.path.display(),
                    self.timeout
                )))
            }
            Err(err) => Err(self.lost(err)),
        }
    }

    fn lost(&self, err: std::io::Error) -> Failure {
        Failure(format!(
            "control socket {}: {err} (the daemon stopped or is stuck)",
            self.path.display()
        ))
    }
}

/// `UnixStream::connect` with a deadline. A Unix socket's connect blocks
/// while the listener's queue is full (a stopped daemon stops accepting);
/// non-blocking, it fails with EAGAIN instead, and is tried again.
fn connect(path: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let deadline = std::time::Instant::now() + timeout;
    let address = SockAddr::unix(path)?;
    loop {
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        match socket.connect(&address) {
            Ok(()) => {
                socket.set_nonblocking(false)?;
                return Ok(UnixStream::from(std::os::fd::OwnedFd::from(socket)));
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() >= deadline {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connection timed out",
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(err) => return Err(err),
        }
    }
}

/// Prints events until the daemon goes away (or the user interrupts).
fn watch(mut connection: Connection, target: &Target) -> Result<(), Failure> {
    connection
        .stream
        .set_read_timeout(None)
        .map_err(|err| connection.lost(err))?;
    if !target.json {
        crate::stderr_line!(
            "watching the daemon at {} (Ctrl-C to stop)",
            connection.path.display()
        );
    }
    let stdout = std::io::stdout();
    loop {
        let line = match connection.line() {
            Ok(line) => line,
            Err(_) => {
                return Err(Failure(format!(
                    "the daemon at {} stopped; watch ended",
                    connection.path.display()
                )));
            }
        };
        let text = if target.json {
            line
        } else {
            render_event(&line)
        };
        let mut out = stdout.lock();
        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
            // stdout closed (e.g. `| head`): done.
            return Ok(());
        }
    }
}

fn render_routes(reply: &RoutesReply) -> String {
    let served = reply.routes.iter().filter(|r| r.node.is_some()).count();
    let draining = reply.routes.iter().filter(|r| r.draining.is_some()).count();
    let counted = reply.routes.iter().any(|r| r.connections.is_some());
    let mut columns = vec!["Route", "Ports", "Node", "Slot", "Address", "Conns"];
    if draining > 0 {
        columns.push("Draining");
    }
    let mut table = Table::new(&columns);
    for route in &reply.routes {
        let ports: Vec<String> = route.ports.iter().map(u16::to_string).collect();
        let mut row = vec![
            route.route.to_string(),
            ports.join(","),
            route.node.clone().unwrap_or_else(|| "-".into()),
            route.slot.map_or("-".into(), |s| s.to_string()),
            route.addr.map_or("-".into(), |a| a.to_string()),
            route.connections.map_or("-".into(), |c| c.to_string()),
        ];
        if draining > 0 {
            row.push(route.draining.as_ref().map_or("-".into(), |d| {
                format!("from {}, {} left", d.from, duration(d.left_ms))
            }));
        }
        table.row(row);
    }
    let draining = if draining > 0 {
        format!(", {draining} draining")
    } else {
        String::new()
    };
    let note = if counted { CONNS_NOTE } else { CONNS_OFF };
    format!(
        "{} routes, {served} served{draining}\n{}{note}\n",
        reply.routes.len(),
        table.render()
    )
}

/// Under a table with connection estimates: what they are.
const CONNS_NOTE: &str = "Conns: established connections, estimated from the SYNs and client \
                          FINs/RSTs the gateway saw (docs/operations.md)";
/// Under a table without them: why.
const CONNS_OFF: &str = "Conns: not recorded (nodes.flush_pps is 0: the data plane records no \
                         connections)";

fn render_nodes(reply: &NodesReply, now_unix_ms: u64) -> String {
    let active = reply
        .nodes
        .iter()
        .filter(|n| n.role == crate::routing::Role::Active)
        .count();
    let mut table = Table::new(&[
        "Name",
        "Role",
        "Slot",
        "Routes",
        "Address",
        "LastHeartbeat",
        "ConnectedSince",
    ]);
    for node in &reply.nodes {
        let connected = match (&node.connected_since_unix_ms, &node.awaiting) {
            (Some(since), _) => format!(
                "{} ({} ago)",
                clock_time(*since),
                duration(now_unix_ms.saturating_sub(*since))
            ),
            (None, Some(awaiting)) => format!("- (awaiting {awaiting})"),
            (None, None) => "-".into(),
        };
        table.row(vec![
            node.name.clone(),
            node.role.to_string(),
            node.slot.map_or("-".into(), |s| s.to_string()),
            node.routes.to_string(),
            node.addr.to_string(),
            node.last_heartbeat_ms.map_or("-".into(), ms_ago),
            connected,
        ]);
    }
    format!(
        "{} nodes: {active} active, {} spare\n{}",
        reply.nodes.len(),
        reply.nodes.len() - active,
        table.render()
    )
}

/// The state file's health in words: how old the saved table is, and
/// whether writes fail.
fn state_saved(health: &StateFileHealth, now_unix_ms: u64) -> String {
    let written = match health.written_unix_ms {
        Some(at) => format!("last written {}", ms_ago(now_unix_ms.saturating_sub(at))),
        None => "not written since the start".to_string(),
    };
    let current = if health.up_to_date {
        "holds the current table"
    } else {
        "BEHIND the current table (a restart now would bring back the older one)"
    };
    let mut text = format!("{written}, {current}");
    if health.write_failures > 0 {
        text.push_str(&format!("; {} failed writes", health.write_failures));
    }
    if let Some(error) = &health.last_error {
        text.push_str(&format!(", failing now: {error} (retrying)"));
    }
    text
}

fn render_status(status: &StatusReply) -> String {
    let config = &status.config;
    let listeners: Vec<String> = config
        .listeners
        .iter()
        .map(|l| format!("{} {}", l.name, l.base_port))
        .collect();
    let modes: Vec<String> = status
        .dataplane
        .iter()
        .map(|m| format!("{} {}", m.interface, m.mode))
        .collect();
    let mut text = format!(
        "halod {} instance {}, up {} (since {})\n",
        status.version,
        status.instance,
        duration(status.uptime_ms),
        clock_time(status.started_unix_ms)
    );
    let mut line = |label: &str, value: String| {
        text.push_str(&format!("{label:<15}{value}\n"));
    };
    line(
        "VIP:",
        format!(
            "{} on {} (nodes on {})",
            config.vip, config.external, config.internal
        ),
    );
    line(
        "Routes:",
        format!(
            "{} per listener group: {}",
            config.routes,
            listeners.join(", ")
        ),
    );
    line(
        "Nodes:",
        format!(
            "{} registered: {} active, {} spare, {} awaiting reconnect; {} of {} routes served",
            status.counts.nodes,
            status.counts.active,
            status.counts.spares,
            status.counts.awaiting,
            status.counts.routes_served,
            config.routes
        ),
    );
    line(
        "Node protocol:",
        format!(
            "{}, heartbeat {} ms, dead after {}, spares {}, max_active {}, max_nodes {}",
            config.nodes_listen,
            config.heartbeat_ms,
            config.dead_after,
            config.spares,
            config.max_active,
            config.max_nodes
        ),
    );
    line(
        "Data plane:",
        if modes.is_empty() {
            "not running".into()
        } else {
            modes.join(", ")
        },
    );
    line(
        "Last failover:",
        match &status.last_failover {
            None => "none".into(),
            Some(f) => format!(
                "{} at {} ({}): {} routes moved{}, plan carried out in {:.1} ms",
                f.node,
                clock_time(f.time_unix_ms),
                f.cause,
                f.moved,
                f.replacement
                    .as_ref()
                    .map_or(String::new(), |r| format!(" to spare {r}")),
                f.plan_us as f64 / 1000.0
            ),
        },
    );
    line(
        "State file:",
        format!(
            "{}{}",
            config.state_file.display(),
            status.restored_nodes.map_or(String::new(), |n| format!(
                " (restored {n} nodes at start, restart grace {} ms)",
                config.restart_grace_ms
            ))
        ),
    );
    if let Some(health) = &status.state_file {
        line("State saved:", state_saved(health, unix_ms()));
    }
    line(
        "Control:",
        format!(
            "{}, metrics {}",
            config.control_socket.display(),
            config
                .metrics_listen
                .map_or("off".into(), |m| format!("http://{m}/metrics"))
        ),
    );
    text
}

fn render_stats(stats: &StatsReply) -> String {
    let conns = |c: Option<u64>| c.map_or("-".into(), |c| c.to_string());
    let mut routes = Table::new(&["Route", "Node", "Packets", "Bytes", "Conns"]);
    for route in &stats.routes {
        routes.row(vec![
            route.route.to_string(),
            route.node.clone().unwrap_or_else(|| "-".into()),
            route.packets.to_string(),
            route.bytes.to_string(),
            conns(route.connections),
        ]);
    }
    let mut nodes = Table::new(&["Node", "Packets", "Bytes", "Conns"]);
    for node in &stats.nodes {
        nodes.row(vec![
            node.name.clone(),
            node.packets.to_string(),
            node.bytes.to_string(),
            conns(node.connections),
        ]);
    }
    let mut reasons = Table::new(&["Verdict", "Packets"]);
    for (reason, count) in &stats.reasons {
        reasons.row(vec![reason.clone(), count.to_string()]);
    }
    let (drain, flush) = (&stats.drain, &stats.flush);
    format!(
        "{}\n{}\n{}\ndraining routes {}: {} packets to their old nodes, {} new connections to \
         their new nodes, {} kept on the old nodes (nodes.drain_flows full)\n\
         dead-node flush: {} connections told ({} segments, {} refused), {} not known \
         (recent-flows map)\n{}\n",
        routes.render(),
        nodes.render(),
        reasons.render(),
        drain.routes,
        drain.to_old,
        drain.new_flows,
        drain.full,
        flush.connections,
        flush.segments,
        flush.errors,
        flush.unknown,
        if stats.connections_recorded {
            CONNS_NOTE
        } else {
            CONNS_OFF
        },
    )
}

/// What `halod drain` prints: how many routes moved, and where.
fn drained_text(reply: &DrainReply) -> String {
    let routes = if reply.moved == 1 { "route" } else { "routes" };
    let whereto = match reply.to.as_slice() {
        [] if reply.moved == 0 => String::new(),
        [] => " and no node is left to serve them".to_string(),
        [one] => format!(" to {one}"),
        many => format!(" to {} nodes ({})", many.len(), many.join(", ")),
    };
    let drain = if reply.drain_ms > 0 {
        format!(
            "; its connections open now stay on it for {} (nodes.drain_ms), then it is disconnected",
            duration(reply.drain_ms)
        )
    } else {
        String::new()
    };
    format!(
        "drained {}: it left the cluster; {} {routes} moved{whereto}{drain}\n",
        reply.drained, reply.moved
    )
}

/// `HH:MM:SS.mmmZ event key=value ...` from one event line.
fn render_event(line: &str) -> String {
    let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_str(line) else {
        return line.to_string();
    };
    let time = fields
        .remove("time_unix_ms")
        .and_then(|t| t.as_u64())
        .map_or("-".into(), table::clock_time_ms);
    let event = fields
        .remove("event")
        .and_then(|e| e.as_str().map(str::to_string))
        .unwrap_or_else(|| "event".into());
    let rest: Vec<String> = fields
        .iter()
        .map(|(key, value)| match value {
            serde_json::Value::String(s) if !s.contains(' ') => format!("{key}={s}"),
            other => format!("{key}={other}"),
        })
        .collect();
    format!("{time} {event} {}", rest.join(" "))
        .trim_end()
        .to_string()
}

#[cfg(test)]
mod tests;
