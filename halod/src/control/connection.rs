//! One node connection: reads `hello`, checks it, registers through the
//! manager, then relays heartbeats and `bye` in and queued messages out.
//!
//! Kept small on purpose (the daemon holds one per node): one task, a line
//! buffer that is empty between lines, and a bounded outbound queue.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::ReadHalf;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::manager::{Clock, Registered, Request};
use super::metrics::Metrics;
use super::nodes::{ConnId, Outbound};
use super::policy::{NodePolicy, Refusal, refusal};
use crate::protocol::{
    ErrorCode, GatewayMessage, Hello, LineError, LineReader, NodeMessage, valid_name,
};

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
    let Some((name, version, registered)) = registered else {
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
                Some(mut message) => {
                    if version < 2 {
                        without_udp_heartbeats(&mut message);
                    }
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

/// What a version-1 node is told: the manager's `welcome` offers UDP
/// heartbeats to every node, and only version 2 knows them.
fn without_udp_heartbeats(message: &mut Outbound) {
    if let GatewayMessage::Welcome { hb_udp, .. } = message.as_mut() {
        *hb_udp = None;
    }
}

/// Reads and checks `hello` and registers the node with the manager; `None`
/// when the connection ends or is refused (the node was told why). With the
/// name, the protocol version the node said.
async fn register<R, W>(
    reader: &mut R,
    writer: &mut W,
    lines: &mut LineReader,
    peer: IpAddr,
    conn: ConnId,
    context: &ConnectionContext,
) -> Option<(String, u32, Registered)>
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
        Ok((name, addr, version)) => match context.policy.check_address(addr) {
            Ok(()) => Ok((name, addr, version)),
            Err(refusal) => Err(("address_not_allowed", refusal)),
        },
    };
    let (name, addr, version) = match checked {
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
        Ok(Ok(registered)) => Some((name, version, registered)),
        Ok(Err(refusal)) => {
            refusal!(context.policy, %peer, node = %name, code = %refusal.code, message = %refusal.message, "hello refused");
            context.metrics.node_refused(refusal_label(refusal.code));
            refuse(writer, refusal.code, refusal.message).await;
            None
        }
        Err(_) => None,
    }
}

/// Checks a `hello` line: valid message, version, name, token and address.
/// Returns the name, the address and the protocol version.
pub fn check_hello(
    line: &str,
    peer: IpAddr,
    token: Option<&str>,
) -> Result<(String, Ipv4Addr, u32), Refusal> {
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
    Ok((hello.name, addr, hello.version))
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
            Ok(("n1".to_string(), Ipv4Addr::new(198, 19, 0, 11), 1))
        );
        assert_eq!(
            check_hello(r#"{"type":"hello","version":2,"name":"n1"}"#, PEER, None),
            Ok(("n1".to_string(), Ipv4Addr::new(198, 19, 0, 11), 2))
        );
        assert_eq!(
            check_hello(
                r#"{"type":"hello","version":1,"name":"n1","addr":"198.19.0.99"}"#,
                PEER,
                None
            ),
            Ok(("n1".to_string(), Ipv4Addr::new(198, 19, 0, 99), 1))
        );
        let code = |line: &str, token| check_hello(line, PEER, token).map_err(|r| r.code);
        assert_eq!(code(r#"{"type":"hb"}"#, None), Err(ErrorCode::BadRequest));
        assert_eq!(
            code(r#"{"type":"hello","version":3,"name":"n1"}"#, None),
            Err(ErrorCode::BadRequest)
        );
        assert_eq!(
            code(r#"{"type":"hello","version":0,"name":"n1"}"#, None),
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
            Ok(("n1".to_string(), Ipv4Addr::new(198, 19, 0, 11), 1))
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
    fn token_comparison() {
        assert!(same_token(b"secret", b"secret"));
        assert!(!same_token(b"secreT", b"secret"));
        assert!(!same_token(b"secret1", b"secret"));
        assert!(!same_token(b"secre", b"secret"));
        assert!(!same_token(b"", b"secret"));
    }
}
