//! One node connection: reads `hello`, checks it, registers through the
//! manager, then relays heartbeats and `bye` in and queued messages out.
//!
//! Kept small on purpose (the daemon holds one per node): one task, a line
//! buffer that is empty between lines, and a bounded outbound queue.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::ReadHalf;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::manager::{Clock, ConnId, Outbound, Refusal, Registered, Request};
use super::metrics::Metrics;
use crate::config::Cidr;
use crate::protocol::{
    ErrorCode, GatewayMessage, Hello, LineError, LineReader, NodeMessage, valid_name,
};

/// How long a new connection may take to send `hello` (default of
/// `nodes.hello_timeout_ms`).
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections beyond `nodes.max_nodes` the gateway keeps open: nodes saying
/// `hello` and nodes reconnecting while their old connection is still open.
pub const EXTRA_CONNECTIONS: usize = 16;
/// How long writing one message to a node may take before the node counts
/// as stuck.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What every connection needs to know.
#[derive(Clone, Debug)]
pub struct ConnectionContext {
    pub requests: mpsc::Sender<Request>,
    pub token: Option<String>,
    pub clock: Clock,
    pub shutdown: CancellationToken,
    /// Heartbeat lateness is observed here, where heartbeats arrive.
    pub metrics: Metrics,
    pub policy: NodePolicy,
}

/// What the gateway accepts from nodes before they are registered.
#[derive(Clone, Debug)]
pub struct NodePolicy {
    /// `nodes.hello_timeout_ms`.
    pub hello_timeout: Duration,
    /// `nodes.allowed_cidrs`; empty: any unicast address.
    pub allowed: Vec<Cidr>,
    /// The VIP: never a node's address.
    pub vip: Option<Ipv4Addr>,
    /// The gateway's own addresses on the node side (`nodes.listen`, the
    /// internal interface's) with their prefix length: neither they nor the
    /// network and broadcast addresses of their subnets are a node.
    pub own: Vec<(Ipv4Addr, u8)>,
    /// Most node connections open at once (`max_nodes` + [`EXTRA_CONNECTIONS`]).
    pub max_connections: usize,
    /// Node connections open now (shared by every clone).
    pub open: Arc<AtomicUsize>,
    /// Log lines of refused connections, rate-limited (shared by every clone).
    pub refusal_log: Arc<RefusalLog>,
}

/// Refused node connections logged per [`REFUSAL_LOG_WINDOW`]; the rest
/// are counted and summed up in the next line logged. A flood of bad
/// connections (a misconfigured fleet, a scan) must not flood the log; the
/// metrics (`halod_node_refusals_total`) still count every one.
pub const REFUSAL_LOG_BURST: u32 = 20;
pub const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(10);

/// The rate limit of refusal log lines.
#[derive(Debug)]
pub struct RefusalLog {
    /// Start of the window, lines logged in it, lines left out since the last logged one.
    state: std::sync::Mutex<(std::time::Instant, u32, u64)>,
}

impl Default for RefusalLog {
    fn default() -> RefusalLog {
        RefusalLog {
            state: std::sync::Mutex::new((std::time::Instant::now(), 0, 0)),
        }
    }
}

impl RefusalLog {
    /// Whether a refusal at `now` may be logged: `Some(left out before it)`,
    /// or `None` when the window's lines are used up (it is counted).
    pub fn admit(&self, now: std::time::Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (start, logged, left_out) = &mut *state;
        if now.duration_since(*start) >= REFUSAL_LOG_WINDOW {
            *start = now;
            *logged = 0;
        }
        if *logged >= REFUSAL_LOG_BURST {
            *left_out += 1;
            return None;
        }
        *logged += 1;
        Some(std::mem::take(left_out))
    }
}

/// Logs one refused connection through the rate limit of `policy`.
macro_rules! refusal {
    ($policy:expr, $($field:tt)*) => {
        if let Some(left_out) = $policy.refusal_log.admit(std::time::Instant::now()) {
            if left_out > 0 {
                tracing::warn!(left_out, "node connections refused meanwhile and not logged (rate limit; halod_node_refusals_total counts all)");
            }
            tracing::warn!($($field)*);
        }
    };
}
pub(crate) use refusal;

impl Default for NodePolicy {
    fn default() -> NodePolicy {
        NodePolicy {
            hello_timeout: HELLO_TIMEOUT,
            allowed: Vec::new(),
            vip: None,
            own: Vec::new(),
            max_connections: usize::MAX,
            open: Arc::default(),
            refusal_log: Arc::default(),
        }
    }
}

impl NodePolicy {
    /// Takes a connection slot, or `None` when `max_connections` are open. The
    /// slot is given back when the returned guard goes.
    pub fn admit(&self) -> Option<OpenConnection> {
        let open = self.open.fetch_add(1, Ordering::AcqRel);
        if open >= self.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(OpenConnection(self.open.clone()))
    }

    /// Checks a node's address against `nodes.allowed_cidrs`, the VIP and
    /// the gateway's own addresses and subnets. The state file's addresses
    /// go through the same check at start.
    pub fn check_address(&self, addr: Ipv4Addr) -> Result<(), Refusal> {
        let refuse = |message: String| {
            Err(Refusal {
                code: ErrorCode::BadRequest,
                message,
            })
        };
        if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() {
            return refuse(format!("{addr} cannot be a node address"));
        }
        if addr.is_loopback() || Some(addr) == self.vip {
            return refuse(format!(
                "{addr} cannot be a node address (loopback or the gateway's VIP)"
            ));
        }
        for &(own, prefix) in &self.own {
            let mask = crate::config::mask_of(prefix);
            let network = u32::from(own) & mask;
            let subnet = format!("{}/{prefix}", Ipv4Addr::from(network));
            let why = if addr == own {
                Some("the gateway's own address".to_string())
            } else if prefix <= 30 && u32::from(addr) == network {
                Some(format!("the network address of {subnet}"))
            } else if prefix <= 30 && u32::from(addr) == network | !mask {
                Some(format!("the broadcast address of {subnet}"))
            } else {
                None
            };
            if let Some(why) = why {
                return refuse(format!(
                    "{addr} cannot be a node address: it is {why}; give the node's own \
                     unicast address (hello.addr, `halod node --addr`)"
                ));
            }
        }
        if !self.allowed.is_empty() && !self.allowed.iter().any(|net| net.contains(addr)) {
            let allowed: Vec<String> = self.allowed.iter().map(Cidr::to_string).collect();
            return refuse(format!(
                "node address {addr} is outside nodes.allowed_cidrs ({}): give an address \
                 of the node network in hello.addr, or ask the operator to allow it",
                allowed.join(", ")
            ));
        }
        Ok(())
    }
}

/// The IPv4 addresses of `interface` with their prefix lengths (empty when
/// it has none or cannot be read): for [`NodePolicy::own`].
pub fn interface_addresses(interface: &str) -> Vec<(Ipv4Addr, u8)> {
    let Ok(addresses) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addresses
        .filter(|entry| entry.interface_name == interface)
        .filter_map(|entry| {
            let addr = entry.address?.as_sockaddr_in()?.ip();
            let mask = entry.netmask?.as_sockaddr_in()?.ip();
            Some((addr, u32::from(mask).leading_ones() as u8))
        })
        .collect()
}

/// An open node connection, counted in [`NodePolicy::open`] until dropped.
#[derive(Debug)]
pub struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The read side of a node connection, acknowledging what it reads the
/// delayed way.
///
/// A node's lines are small pushed segments, and Linux acknowledges those at
/// once when they are read, from the reading thread, unless the socket is in
/// "interactive" (pingpong) mode. The gateway never answers a heartbeat, so
/// that is one ACK sent from the daemon's thread per heartbeat: at 10,000
/// nodes, 100,000 a second, most of the daemon's CPU. Switching quick ACKs off
/// (`TCP_QUICKACK` 0) before reading leaves the ACK to the kernel's delayed-ACK
/// timer (at most 40 ms later, on the CPU that received the segment), or to
/// the gateway's next message, which carries it. The kernel leaves pingpong
/// mode when that timer fires, so it is set again before the first read after
/// every wake-up.
pub struct DelayedAcks<'a> {
    inner: ReadHalf<'a>,
    /// The last read found nothing: the next one follows a wake-up.
    rearm: bool,
}

impl<'a> DelayedAcks<'a> {
    pub fn new(inner: ReadHalf<'a>) -> DelayedAcks<'a> {
        DelayedAcks { inner, rearm: true }
    }
}

impl AsyncRead for DelayedAcks<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.rearm {
            // Only an optimisation: a failure costs one early ACK.
            let _ = SockRef::from(self.inner.as_ref()).set_tcp_quickack(false);
        }
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.rearm = polled.is_pending();
        polled
    }
}

/// The `node_refusals` label of a refusal.
fn refusal_label(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BadToken => "bad_token",
        ErrorCode::DuplicateName => "duplicate_name",
        ErrorCode::Full => "full",
        _ => "bad_request",
    }
}

fn line_error_label(error: &LineError) -> &'static str {
    match error {
        LineError::TooLong => "line_too_long",
        _ => "bad_request",
    }
}

/// Serves one node connection until it closes, the manager drops it, or the
/// daemon shuts down.
///
/// The daemon keeps one of these futures per node, so the rare steps (hello,
/// writing a message, closing) are boxed: their state takes heap memory only
/// while they run, not in every node's task for its whole life.
pub async fn serve<R, W>(
    mut reader: R,
    mut writer: W,
    peer: IpAddr,
    conn: ConnId,
    context: Arc<ConnectionContext>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut lines = LineReader::new();
    let registered = Box::pin(register(
        &mut reader,
        &mut writer,
        &mut lines,
        peer,
        conn,
        &context,
    ))
    .await;
    let Some((name, registered)) = registered else {
        return;
    };
    let Registered {
        mut outbound,
        last_seen,
    } = registered;

    // Registered: from here on, the manager hears how the connection ends.
    let mut said_bye = false;
    // Made once: a fresh `cancelled()` per line would join and leave the
    // token's waiter list at every heartbeat.
    let shutdown = context.shutdown.cancelled();
    tokio::pin!(shutdown);
    let reason = loop {
        tokio::select! {
            () = &mut shutdown => return,
            message = outbound.recv() => match message {
                Some(message) => {
                    if let Err(reason) = Box::pin(write(&mut writer, &message)).await {
                        context.metrics.node_refused("slow_reader");
                        break reason;
                    }
                }
                // The manager closed the connection (failed, left, replaced).
                None => {
                    let _ = Box::pin(writer.shutdown()).await;
                    return;
                }
            },
            line = lines.next_line(&mut reader) => match line {
                Ok(Some(line)) => match NodeMessage::decode(&line) {
                    Ok(NodeMessage::Hb {}) => {
                        let now = context.clock.now_ms();
                        let previous = last_seen.swap(now, Ordering::Relaxed);
                        context.metrics.heartbeat_gap(now.saturating_sub(previous));
                    }
                    Ok(NodeMessage::Bye {}) => {
                        last_seen.store(context.clock.now_ms(), Ordering::Relaxed);
                        if !said_bye {
                            said_bye = true;
                            let bye = Request::Bye { conn, name: name.clone() };
                            if Box::pin(context.requests.send(bye)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(NodeMessage::Hello(_)) => {
                        context.metrics.node_refused("bad_request");
                        let message = "hello sent twice on one connection".to_string();
                        Box::pin(refuse(&mut writer, ErrorCode::BadRequest, message.clone())).await;
                        break message;
                    }
                    Err(err) => {
                        warn!(node = %name, "bad message from a node: {err}");
                        context.metrics.node_refused("bad_request");
                        let message = err.to_string();
                        Box::pin(refuse(&mut writer, ErrorCode::BadRequest, message.clone())).await;
                        break message;
                    }
                },
                Ok(None) => break "closed by the node".to_string(),
                Err(LineError::Io(err)) => break err.to_string(),
                Err(err) => {
                    warn!(node = %name, "bad line from a node: {err}");
                    context.metrics.node_refused(line_error_label(&err));
                    let message = err.to_string();
                    Box::pin(refuse(&mut writer, ErrorCode::BadRequest, message.clone())).await;
                    break message;
                }
            },
        }
    };
    let closed = Request::Closed { conn, name, reason };
    let _ = Box::pin(context.requests.send(closed)).await;
}

/// Reads and checks `hello` and registers the node with the manager; `None`
/// when the connection ends or is refused (the node was told why).
async fn register<R, W>(
    reader: &mut R,
    writer: &mut W,
    lines: &mut LineReader,
    peer: IpAddr,
    conn: ConnId,
    context: &ConnectionContext,
) -> Option<(String, Registered)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let hello = tokio::select! {
        () = context.shutdown.cancelled() => return None,
        first = tokio::time::timeout(context.policy.hello_timeout, lines.next_line(reader)) => match first {
            Err(_) => {
                let message = format!(
                    "no hello within {} ms (nodes.hello_timeout_ms)",
                    context.policy.hello_timeout.as_millis()
                );
                refusal!(context.policy, %peer, "node connection refused: {message}");
                context.metrics.node_refused("hello_timeout");
                refuse(writer, ErrorCode::BadRequest, message).await;
                return None;
            }
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => return None,
            Ok(Err(err)) => {
                refusal!(context.policy, %peer, "node connection refused: {err}");
                context.metrics.node_refused(line_error_label(&err));
                refuse(writer, ErrorCode::BadRequest, err.to_string()).await;
                return None;
            }
        }
    };
    let checked = match check_hello(&hello, peer, context.token.as_deref()) {
        Err(refusal) => Err((refusal_label(refusal.code), refusal)),
        Ok((name, addr)) => match context.policy.check_address(addr) {
            Ok(()) => Ok((name, addr)),
            Err(refusal) => Err(("address_not_allowed", refusal)),
        },
    };
    let (name, addr) = match checked {
        Ok(hello) => hello,
        Err((label, refusal)) => {
            refusal!(context.policy, %peer, code = %refusal.code, message = %refusal.message, "hello refused");
            context.metrics.node_refused(label);
            refuse(writer, refusal.code, refusal.message).await;
            return None;
        }
    };
    let (reply, answer) = oneshot::channel();
    let request = Request::Hello {
        conn,
        name: name.clone(),
        addr,
        reply,
    };
    context.requests.send(request).await.ok()?;
    match answer.await {
        Ok(Ok(registered)) => Some((name, registered)),
        Ok(Err(refusal)) => {
            refusal!(context.policy, %peer, node = %name, code = %refusal.code, message = %refusal.message, "hello refused");
            context.metrics.node_refused(refusal_label(refusal.code));
            refuse(writer, refusal.code, refusal.message).await;
            None
        }
        Err(_) => None,
    }
}

/// Checks a `hello` line: valid message, name, token and address.
pub fn check_hello(
    line: &str,
    peer: IpAddr,
    token: Option<&str>,
) -> Result<(String, Ipv4Addr), Refusal> {
    let bad = |message: String| Refusal {
        code: ErrorCode::BadRequest,
        message,
    };
    let hello: Hello = match NodeMessage::decode(line) {
        Ok(NodeMessage::Hello(hello)) => hello,
        Ok(_) => return Err(bad("the first message must be hello".to_string())),
        Err(err) => return Err(bad(err.to_string())),
    };
    if !valid_name(&hello.name) {
        return Err(bad(format!(
            "invalid node name {:?}: use 1 to 64 of A-Z a-z 0-9 . _ -",
            hello.name
        )));
    }
    if let Some(expected) = token {
        let given = hello.token.as_deref().unwrap_or("");
        if !same_token(given.as_bytes(), expected.as_bytes()) {
            let message = if hello.token.is_none() {
                "this gateway needs a token: pass --token-file"
            } else {
                "wrong token"
            };
            return Err(Refusal {
                code: ErrorCode::BadToken,
                message: message.to_string(),
            });
        }
    }
    let addr = match hello.addr {
        Some(addr) => addr,
        None => match peer {
            IpAddr::V4(addr) => addr,
            IpAddr::V6(addr) => match addr.to_ipv4_mapped() {
                Some(addr) => addr,
                None => {
                    return Err(bad(format!(
                        "connected from IPv6 address {addr}: give the node's IPv4 address in hello.addr"
                    )));
                }
            },
        },
    };
    if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() {
        return Err(bad(format!("{addr} cannot be a node address")));
    }
    Ok((hello.name, addr))
}

/// Compares tokens in time that does not depend on where they differ.
fn same_token(given: &[u8], expected: &[u8]) -> bool {
    let mut difference = u8::from(given.len() != expected.len());
    for (i, &byte) in expected.iter().enumerate() {
        difference |= byte ^ given.get(i).copied().unwrap_or(!byte);
    }
    std::hint::black_box(difference) == 0
}

async fn write<W: AsyncWrite + Unpin>(writer: &mut W, message: &Outbound) -> Result<(), String> {
    for line in message.encode() {
        match tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(line.as_bytes())).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(format!("write failed: {err}")),
            Err(_) => {
                return Err(format!(
                    "the node did not read for {} s",
                    WRITE_TIMEOUT.as_secs()
                ));
            }
        }
    }
    Ok(())
}

/// Answers a connection over the limit with `full` and closes it, without
/// waiting on a peer that does not read.
pub async fn refuse_connection(mut stream: tokio::net::TcpStream, limit: usize) {
    let message = format!(
        "the gateway already has {limit} node connections open (nodes.max_nodes and those \
         saying hello); try again later"
    );
    let error = Box::new(GatewayMessage::Error {
        code: ErrorCode::Full,
        message,
    });
    let _ = tokio::time::timeout(Duration::from_secs(1), write(&mut stream, &error)).await;
    let _ = stream.shutdown().await;
}

/// Sends an `error` line and closes the connection.
async fn refuse<W: AsyncWrite + Unpin>(writer: &mut W, code: ErrorCode, message: String) {
    let error = Box::new(GatewayMessage::Error { code, message });
    let _ = write(writer, &error).await;
    let _ = writer.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 19, 0, 11));

    #[test]
    fn hello_checks() {
        assert_eq!(
            check_hello(r#"{"type":"hello","version":1,"name":"n1"}"#, PEER, None),
            Ok(("n1".to_string(), Ipv4Addr::new(198, 19, 0, 11)))
        );
        assert_eq!(
            check_hello(
                r#"{"type":"hello","version":1,"name":"n1","addr":"198.19.0.99"}"#,
                PEER,
                None
            ),
            Ok(("n1".to_string(), Ipv4Addr::new(198, 19, 0, 99)))
        );
        let code = |line: &str, token| check_hello(line, PEER, token).map_err(|r| r.code);
        assert_eq!(code(r#"{"type":"hb"}"#, None), Err(ErrorCode::BadRequest));
        assert_eq!(
            code(r#"{"type":"hello","version":2,"name":"n1"}"#, None),
            Err(ErrorCode::BadRequest)
        );
        assert_eq!(
            code(r#"{"type":"hello","version":1,"name":"a b"}"#, None),
            Err(ErrorCode::BadRequest)
        );
        assert_eq!(
            code(
                r#"{"type":"hello","version":1,"name":"n1","addr":"0.0.0.0"}"#,
                None
            ),
            Err(ErrorCode::BadRequest)
        );
        assert_eq!(
            code(r#"{"type":"hello","version":1,"name":"n1"}"#, Some("s")),
            Err(ErrorCode::BadToken)
        );
        assert_eq!(
            code(
                r#"{"type":"hello","version":1,"name":"n1","token":"x"}"#,
                Some("s")
            ),
            Err(ErrorCode::BadToken)
        );
        assert_eq!(
            code(
                r#"{"type":"hello","version":1,"name":"n1","token":"s"}"#,
                Some("s")
            ),
            Ok(("n1".to_string(), Ipv4Addr::new(198, 19, 0, 11)))
        );
        let v6: IpAddr = "::ffff:198.19.0.12".parse().unwrap();
        assert_eq!(
            check_hello(r#"{"type":"hello","version":1,"name":"n1"}"#, v6, None)
                .unwrap()
                .1,
            Ipv4Addr::new(198, 19, 0, 12)
        );
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert!(check_hello(r#"{"type":"hello","version":1,"name":"n1"}"#, v6, None).is_err());
    }

    #[test]
    fn the_gateways_own_addresses_and_subnet_ends_are_refused() {
        let policy = NodePolicy {
            vip: Some(Ipv4Addr::new(198, 18, 0, 1)),
            own: vec![
                (Ipv4Addr::new(198, 19, 0, 1), 24),
                (Ipv4Addr::new(198, 19, 7, 5), 32),
            ],
            allowed: vec!["198.19.0.0/16".parse().unwrap()],
            ..NodePolicy::default()
        };
        for (addr, says) in [
            ("198.19.0.255", "the broadcast address of 198.19.0.0/24"),
            ("198.19.0.0", "the network address of 198.19.0.0/24"),
            ("198.19.0.1", "the gateway's own address"),
            ("198.19.7.5", "the gateway's own address"),
            ("198.18.0.1", "the gateway's VIP"),
            ("127.0.0.1", "loopback"),
            ("255.255.255.255", "cannot be a node address"),
            ("224.0.0.1", "cannot be a node address"),
            ("10.0.0.1", "outside nodes.allowed_cidrs"),
        ] {
            let refusal = policy.check_address(addr.parse().unwrap()).unwrap_err();
            assert_eq!(refusal.code, ErrorCode::BadRequest);
            assert!(
                refusal.message.contains(says),
                "{addr}: {}",
                refusal.message
            );
        }
        for addr in ["198.19.0.11", "198.19.0.254", "198.19.7.4", "198.19.7.6"] {
            assert!(
                policy.check_address(addr.parse().unwrap()).is_ok(),
                "{addr}"
            );
        }
        let loopback = interface_addresses("lo");
        assert!(loopback.contains(&(Ipv4Addr::LOCALHOST, 8)), "{loopback:?}");
    }

    #[test]
    fn refusal_lines_are_rate_limited() {
        let log = RefusalLog::default();
        let start = std::time::Instant::now();
        for _ in 0..REFUSAL_LOG_BURST {
            assert_eq!(log.admit(start), Some(0));
        }
        for _ in 0..5 {
            assert_eq!(log.admit(start + Duration::from_secs(1)), None);
        }
        // A new window: the first line says how many were left out.
        let later = start + REFUSAL_LOG_WINDOW;
        assert_eq!(log.admit(later), Some(5));
        assert_eq!(log.admit(later), Some(0));
    }

    #[test]
    fn token_comparison() {
        assert!(same_token(b"secret", b"secret"));
        assert!(!same_token(b"secreT", b"secret"));
        assert!(!same_token(b"secret1", b"secret"));
        assert!(!same_token(b"secre", b"secret"));
        assert!(!same_token(b"", b"secret"));
    }
}
