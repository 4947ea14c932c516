//! The node wire protocol (docs/protocol.md): TCP, one JSON object per line,
//! every line at most [`MAX_LINE`] bytes including its newline.
//!
//! Both ends use this module: the gateway (`control`) decodes [`NodeMessage`]s
//! and encodes [`GatewayMessage`]s, the node client (`node`) the reverse.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The newest protocol version this build speaks (`hello.version`); it
/// speaks every version from 1 up to this one. Version 2 adds UDP
/// heartbeats ([`HbUdp`]).
pub const VERSION: u32 = 2;
/// Longest line in either direction, in bytes, including the `\n`.
pub const MAX_LINE: usize = 4096;
/// Longest node name, in bytes.
pub const MAX_NAME: usize = 64;

/// A route id (`1..=N`).
pub type Route = u16;

/// What a node sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeMessage {
    /// First line of every connection.
    Hello(Hello),
    /// Every `heartbeat_ms`.
    Hb {},
    /// Graceful exit: the node leaves the cluster.
    Bye {},
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub name: String,
    /// Where the gateway sends the node's traffic; defaults to the
    /// connection's source address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// A node's role (`"active"` or `"spare"` on the wire): the routing rules' own.
pub use crate::routing::Role;

/// A route and its port in every listener group, in listener order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutePorts {
    pub route: Route,
    pub ports: Vec<u16>,
}

/// A route the node lost, and the node that serves it now (`null`: none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedRoute {
    pub route: Route,
    pub ports: Vec<u16>,
    pub to: Option<String>,
}

/// Why the gateway refuses a node; sent in `error` just before it closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    DuplicateName,
    BadToken,
    BadRequest,
    Full,
    /// An operator drained the node (`halod drain`): it has left the cluster
    /// and should stop instead of reconnecting.
    Drained,
    /// A code this build does not know (a newer gateway).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::DuplicateName => "duplicate_name",
            ErrorCode::BadToken => "bad_token",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Full => "full",
            ErrorCode::Drained => "drained",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// Where and how a version-2 node sends its UDP heartbeats (`welcome`'s
/// `hb_udp`): 16-byte datagrams ([`halod_common::heartbeat`]) to `port` of
/// the address its TCP connection reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HbUdp {
    pub port: u16,
    /// The node's id (its counter index).
    pub id: u32,
    /// The session's secret, new at every `welcome`: 16 hex digits.
    pub key: HeartbeatKey,
}

/// A heartbeat key: a non-zero u64, on the wire as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatKey(pub u64);

impl Serialize for HeartbeatKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{:016x}", self.0))
    }
}

impl<'de> Deserialize<'de> for HeartbeatKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        HeartbeatKey::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl HeartbeatKey {
    /// 16 hex digits, not all zero.
    pub fn parse(text: &str) -> Result<HeartbeatKey, String> {
        if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("heartbeat key {text:?} is not 16 hex digits"));
        }
        match u64::from_str_radix(text, 16) {
            Ok(0) | Err(_) => Err(format!("heartbeat key {text:?} is zero")),
            Ok(key) => Ok(HeartbeatKey(key)),
        }
    }
}

/// What the gateway sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GatewayMessage {
    /// Answer to `hello`: the node is registered. `hb_udp` only for a node
    /// that said version 2.
    Welcome {
        role: Role,
        heartbeat_ms: u64,
        routes: Vec<RoutePorts>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hb_udp: Option<HbUdp>,
    },
    /// Routes the node gained.
    Assigned { routes: Vec<RoutePorts> },
    /// Routes the node lost. With `drain_ms` (absent or 0: none), the node
    /// keeps the routes' connections that are open now for that long: it
    /// may serve them on, and should close them spread over the window.
    Moved {
        routes: Vec<MovedRoute>,
        #[serde(default, skip_serializing_if = "is_zero")]
        drain_ms: u64,
    },
    /// The drain window of these routes (lost in a `moved` with `drain_ms`)
    /// ended: their connections that are still open reach the new node now.
    DrainDone { routes: Vec<RoutePorts> },
    /// The node's role changed.
    Role { role: Role },
    /// The request was refused; the gateway closes the connection next.
    Error { code: ErrorCode, message: String },
}

/// A line that is not a valid message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("not a JSON object: {0}")]
    Json(String),
    #[error("no \"type\" field")]
    NoType,
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("bad {kind:?} message: {reason}")]
    Invalid { kind: String, reason: String },
    #[error("unsupported protocol version {0} (this build speaks 1 to {VERSION})")]
    Version(u32),
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn decode<'a, T: Deserialize<'a>>(line: &'a str, known: &[&str]) -> Result<T, DecodeError> {
    // serde reads a tagged enum from an array too (`["hb"]`): only objects are messages.
    if !line
        .trim_start_matches([' ', '\t', '\r', '\n'])
        .starts_with('{')
    {
        let head: serde_json::Value =
            serde_json::from_str(line).map_err(|e| DecodeError::Json(e.to_string()))?;
        return Err(DecodeError::Json(format!(
            "expected an object {{\"type\":...}}, got {}",
            json_kind(&head)
        )));
    }
    match serde_json::from_str::<T>(line) {
        Ok(message) => Ok(message),
        Err(err) => {
            let head: serde_json::Value =
                serde_json::from_str(line).map_err(|e| DecodeError::Json(e.to_string()))?;
            let serde_json::Value::Object(mut head) = head else {
                return Err(DecodeError::Json(format!(
                    "expected an object {{\"type\":...}}, got {}",
                    json_kind(&head)
                )));
            };
            match head.remove("type") {
                None | Some(serde_json::Value::Null) => Err(DecodeError::NoType),
                Some(serde_json::Value::String(kind)) if known.contains(&kind.as_str()) => {
                    Err(DecodeError::Invalid {
                        kind,
                        reason: err.to_string(),
                    })
                }
                Some(serde_json::Value::String(kind)) => Err(DecodeError::UnknownType(kind)),
                Some(other) => Err(DecodeError::UnknownType(other.to_string())),
            }
        }
    }
}

impl NodeMessage {
    /// Decodes one line (without its newline), checking the version of `hello`.
    pub fn decode(line: &str) -> Result<NodeMessage, DecodeError> {
        // Nearly every line is this one: 10 per second from every node.
        if line == r#"{"type":"hb"}"# {
            return Ok(NodeMessage::Hb {});
        }
        let message: NodeMessage = decode(line, &["hello", "hb", "bye"])?;
        if let NodeMessage::Hello(hello) = &message
            && !(1..=VERSION).contains(&hello.version)
        {
            return Err(DecodeError::Version(hello.version));
        }
        Ok(message)
    }

    /// The line to send, with its newline.
    pub fn encode(&self) -> String {
        let mut line = serde_json::to_string(self).expect("node messages always serialize");
        line.push('\n');
        line
    }
}

impl GatewayMessage {
    /// Decodes one line (without its newline).
    pub fn decode(line: &str) -> Result<GatewayMessage, DecodeError> {
        decode(
            line,
            &[
                "welcome",
                "assigned",
                "moved",
                "drain_done",
                "role",
                "error",
            ],
        )
    }

    /// The lines to send, each with its newline and at most [`MAX_LINE`]
    /// bytes. A route list that does not fit one line is split: `assigned`
    /// and `moved` into several of the same type, `welcome` into a `welcome`
    /// followed by `assigned` messages with the rest of the routes.
    pub fn encode(&self) -> Vec<String> {
        // Each list is split so that its line, framing included (measured
        // by encoding the message without entries), fits in MAX_LINE.
        match self {
            GatewayMessage::Welcome {
                role,
                heartbeat_ms,
                routes,
                hb_udp,
            } => {
                // The exact framing: `heartbeat_ms` can be up to 20 digits long.
                let frame = line(&GatewayMessage::Welcome {
                    role: *role,
                    heartbeat_ms: *heartbeat_ms,
                    routes: Vec::new(),
                    hb_udp: *hb_udp,
                })
                .len();
                let assigned = line(&GatewayMessage::Assigned { routes: Vec::new() }).len();
                let (first, rest) = split_fitting(routes, frame, assigned);
                let mut lines = vec![line(&GatewayMessage::Welcome {
                    role: *role,
                    heartbeat_ms: *heartbeat_ms,
                    routes: first,
                    hb_udp: *hb_udp,
                })];
                lines.extend(
                    rest.into_iter()
                        .map(|routes| line(&GatewayMessage::Assigned { routes })),
                );
                lines
            }
            GatewayMessage::Assigned { routes } if !routes.is_empty() => {
                let frame = line(&GatewayMessage::Assigned { routes: Vec::new() }).len();
                let (first, rest) = split_fitting(routes, frame, frame);
                std::iter::once(first)
                    .chain(rest)
                    .map(|routes| line(&GatewayMessage::Assigned { routes }))
                    .collect()
            }
            GatewayMessage::Moved { routes, drain_ms } if !routes.is_empty() => {
                // The exact framing: `drain_ms` adds up to 33 bytes.
                let frame = line(&GatewayMessage::Moved {
                    routes: Vec::new(),
                    drain_ms: *drain_ms,
                })
                .len();
                let (first, rest) = split_fitting(routes, frame, frame);
                std::iter::once(first)
                    .chain(rest)
                    .map(|routes| {
                        line(&GatewayMessage::Moved {
                            routes,
                            drain_ms: *drain_ms,
                        })
                    })
                    .collect()
            }
            GatewayMessage::DrainDone { routes } if !routes.is_empty() => {
                let frame = line(&GatewayMessage::DrainDone { routes: Vec::new() }).len();
                let (first, rest) = split_fitting(routes, frame, frame);
                std::iter::once(first)
                    .chain(rest)
                    .map(|routes| line(&GatewayMessage::DrainDone { routes }))
                    .collect()
            }
            GatewayMessage::Error { code, message } => {
                // Keep the line within bounds whatever the message says, also
                // when JSON escaping makes it longer (a control character takes 6
                // bytes).
                let mut message = message.clone();
                let mut limit = 1024;
                loop {
                    if message.len() > limit {
                        let mut end = limit;
                        while !message.is_char_boundary(end) {
                            end -= 1;
                        }
                        message.truncate(end);
                    }
                    let error = GatewayMessage::Error {
                        code: *code,
                        message: message.clone(),
                    };
                    let encoded = serde_json::to_string(&error).expect("errors always serialize");
                    if encoded.len() < MAX_LINE {
                        return vec![line(&error)];
                    }
                    limit = message.len() / 2;
                }
            }
            other => vec![line(other)],
        }
    }
}

fn line(message: &GatewayMessage) -> String {
    let mut line = serde_json::to_string(message).expect("gateway messages always serialize");
    line.push('\n');
    debug_assert!(line.len() <= MAX_LINE, "line too long: {}", line.len());
    line
}

/// Splits `items` into a first list that fits a line with `first_frame` bytes
/// of framing and further lists that fit lines with `frame` bytes of framing.
fn split_fitting<T: Serialize + Clone>(
    items: &[T],
    first_frame: usize,
    frame: usize,
) -> (Vec<T>, Vec<Vec<T>>) {
    let mut chunks: Vec<Vec<T>> = vec![Vec::new()];
    let mut used = first_frame;
    for item in items {
        // +1 for the separating comma.
        let size = serde_json::to_string(item)
            .expect("route entries always serialize")
            .len()
            + 1;
        let current = chunks.last_mut().expect("never empty");
        if used + size > MAX_LINE && !current.is_empty() {
            chunks.push(vec![item.clone()]);
            used = frame + size;
        } else {
            current.push(item.clone());
            used += size;
        }
    }
    let mut chunks = chunks.into_iter();
    let first = chunks.next().unwrap_or_default();
    (first, chunks.collect())
}

/// Whether `name` is a valid node name: 1 to [`MAX_NAME`] bytes of
/// `A-Z a-z 0-9 . _ -`.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `halod node --gateway`: `HOST:PORT` (an IPv4 address or a host name, or
/// `[IPv6]`, and a port 1..=65535), checked before the first connection so
/// that a missing port is a usage error (exit 2) and not an endless retry.
pub fn parse_gateway(text: &str) -> Result<String, String> {
    let usage = |what: &str| {
        format!(
            "{text:?} {what}: give the gateway's nodes.listen as HOST:PORT, e.g. 198.19.0.1:7000"
        )
    };
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(usage("has no port"));
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && !host.contains(':')
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        }
    };
    if !host_ok {
        return Err(usage(&format!(
            "has no valid host before the port ({host:?})"
        )));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(text.to_string()),
        _ => Err(usage(&format!("has no valid port ({port:?}, 1..=65535)"))),
    }
}

/// Why no line could be read.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("line is not UTF-8")]
    NotUtf8,
    #[error("connection closed in the middle of a line")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads `\n`-terminated lines of at most [`MAX_LINE`] bytes. Its buffer
/// starts empty and holds only the unread part of the stream, so an idle
/// connection costs next to nothing (the daemon keeps one per node).
#[derive(Debug, Default)]
pub struct LineReader {
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already searched for a newline.
    scanned: usize,
}

impl LineReader {
    pub fn new() -> LineReader {
        LineReader::default()
    }

    /// The next non-empty line without its line ending, or `None` at a clean
    /// end of stream. Cancel-safe: bytes read stay buffered.
    pub async fn next_line<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> Result<Option<String>, LineError> {
        loop {
            if let Some(line) = self.take_line()? {
                if line.is_empty() {
                    continue;
                }
                return Ok(Some(line));
            }
            if self.buf.len() >= MAX_LINE {
                return Err(LineError::TooLong);
            }
            // Small reads: a heartbeat is 14 bytes, and every node keeps its
            // buffer between lines (longer lines grow it as a Vec grows).
            self.buf.reserve(64.min(MAX_LINE - self.buf.len()));
            let read = reader.read_buf(&mut self.buf).await?;
            if read == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(LineError::Truncated)
                };
            }
        }
    }

    fn take_line(&mut self) -> Result<Option<String>, LineError> {
        let Some(at) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') else {
            self.scanned = self.buf.len();
            return Ok(None);
        };
        let end = self.scanned + at;
        if end + 1 > MAX_LINE {
            return Err(LineError::TooLong);
        }
        let mut line: Vec<u8> = self.buf.drain(..=end).collect();
        self.scanned = 0;
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if self.buf.is_empty() && self.buf.capacity() > 512 {
            self.buf = Vec::new();
        }
        String::from_utf8(line)
            .map(Some)
            .map_err(|_| LineError::NotUtf8)
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_addresses_need_a_host_and_a_port() {
        for good in [
            "198.19.0.1:7000",
            "gw.example:7000",
            "[fd00::1]:7000",
            "localhost:1",
        ] {
            assert_eq!(parse_gateway(good).as_deref(), Ok(good));
        }
        for (bad, says) in [
            ("198.19.0.1", "has no port"),
            ("198.19.0.1:", "has no valid port"),
            ("198.19.0.1:0", "has no valid port"),
            ("198.19.0.1:70000", "has no valid port"),
            (":7000", "has no valid host"),
            ("fd00::1:7000", "has no valid host"),
            ("gw example:7000", "has no valid host"),
        ] {
            let message = parse_gateway(bad).unwrap_err();
            assert!(
                message.contains(says) && message.contains("HOST:PORT"),
                "{bad}: {message}"
            );
        }
    }

    #[test]
    fn hello_decodes_with_and_without_options() {
        let full = NodeMessage::decode(
            r#"{"type":"hello","version":1,"name":"n1","addr":"198.19.0.11","token":"t"}"#,
        )
        .unwrap();
        assert_eq!(
            full,
            NodeMessage::Hello(Hello {
                version: 1,
                name: "n1".into(),
                addr: Some(Ipv4Addr::new(198, 19, 0, 11)),
                token: Some("t".into()),
            })
        );
        let bare = NodeMessage::decode(r#"{"type":"hello","version":1,"name":"n1"}"#).unwrap();
        assert_eq!(
            bare,
            NodeMessage::Hello(Hello {
                version: 1,
                name: "n1".into(),
                addr: None,
                token: None,
            })
        );
        assert_eq!(
            bare.encode(),
            "{\"type\":\"hello\",\"version\":1,\"name\":\"n1\"}\n"
        );
    }

    #[test]
    fn heartbeat_and_bye_round_trip_and_ignore_unknown_fields() {
        assert_eq!(NodeMessage::Hb {}.encode(), "{\"type\":\"hb\"}\n");
        assert_eq!(NodeMessage::Bye {}.encode(), "{\"type\":\"bye\"}\n");
        assert_eq!(
            NodeMessage::decode(r#"{"type":"hb","seq":7,"load":{"x":1}}"#).unwrap(),
            NodeMessage::Hb {}
        );
        assert_eq!(
            NodeMessage::decode(r#"{"extra":true,"type":"bye"}"#).unwrap(),
            NodeMessage::Bye {}
        );
        assert!(matches!(
            NodeMessage::decode(r#"{"type":"hello","version":1,"name":"n","future":[1]}"#),
            Ok(NodeMessage::Hello(_))
        ));
    }

    #[test]
    fn bad_node_lines_say_why() {
        for version in [0, 3, 4_000_000_000] {
            let line = format!(r#"{{"type":"hello","version":{version},"name":"n1"}}"#);
            assert_eq!(
                NodeMessage::decode(&line),
                Err(DecodeError::Version(version))
            );
        }
        for version in [1, 2] {
            let line = format!(r#"{{"type":"hello","version":{version},"name":"n1"}}"#);
            assert!(
                matches!(NodeMessage::decode(&line), Ok(NodeMessage::Hello(hello)) if hello.version == version)
            );
        }
        assert_eq!(
            NodeMessage::decode(r#"{"type":"ping"}"#),
            Err(DecodeError::UnknownType("ping".into()))
        );
        assert_eq!(
            NodeMessage::decode(r#"{"type":7}"#),
            Err(DecodeError::UnknownType("7".into()))
        );
        assert_eq!(
            NodeMessage::decode(r#"{"name":"n1"}"#),
            Err(DecodeError::NoType)
        );
        assert!(matches!(
            NodeMessage::decode("hello"),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            NodeMessage::decode("[1,2]"),
            Err(DecodeError::Json(_))
        ));
        let missing = NodeMessage::decode(r#"{"type":"hello","name":"n1"}"#).unwrap_err();
        assert!(missing.to_string().contains("version"), "{missing}");
        let bad_addr =
            NodeMessage::decode(r#"{"type":"hello","version":1,"name":"n1","addr":"x"}"#)
                .unwrap_err();
        assert!(
            matches!(bad_addr, DecodeError::Invalid { .. }),
            "{bad_addr}"
        );
    }

    #[test]
    fn gateway_messages_have_the_documented_shape() {
        let welcome = GatewayMessage::Welcome {
            role: Role::Active,
            heartbeat_ms: 100,
            routes: vec![RoutePorts {
                route: 3,
                ports: vec![8002, 9002],
            }],
            hb_udp: None,
        };
        assert_eq!(
            welcome.encode(),
            vec![
                "{\"type\":\"welcome\",\"role\":\"active\",\"heartbeat_ms\":100,\"routes\":[{\"route\":3,\"ports\":[8002,9002]}]}\n"
            ]
        );
        // A version-2 node's welcome: `hb_udp` after the routes, the key as 16
        // hex digits (leading zeros kept).
        let welcome = GatewayMessage::Welcome {
            role: Role::Spare,
            heartbeat_ms: 100,
            routes: vec![],
            hb_udp: Some(HbUdp {
                port: 7000,
                id: 5,
                key: HeartbeatKey(0x00ab_cdef_0123_4567),
            }),
        };
        let line = "{\"type\":\"welcome\",\"role\":\"spare\",\"heartbeat_ms\":100,\"routes\":[],\"hb_udp\":{\"port\":7000,\"id\":5,\"key\":\"00abcdef01234567\"}}\n";
        assert_eq!(welcome.encode(), vec![line]);
        assert_eq!(GatewayMessage::decode(line.trim_end()).unwrap(), welcome);
        for bad in [
            "0000000000000000",
            "abc",
            "00abcdef0123456g",
            "00abcdef012345678",
        ] {
            let line = line.replace("00abcdef01234567", bad);
            assert!(
                matches!(
                    GatewayMessage::decode(line.trim_end()),
                    Err(DecodeError::Invalid { .. })
                ),
                "key {bad:?} accepted"
            );
        }
        let moved = GatewayMessage::Moved {
            routes: vec![
                MovedRoute {
                    route: 3,
                    ports: vec![8002, 9002],
                    to: Some("n4".into()),
                },
                MovedRoute {
                    route: 4,
                    ports: vec![8003, 9003],
                    to: None,
                },
            ],
            drain_ms: 0,
        };
        assert_eq!(
            moved.encode(),
            vec![
                "{\"type\":\"moved\",\"routes\":[{\"route\":3,\"ports\":[8002,9002],\"to\":\"n4\"},{\"route\":4,\"ports\":[8003,9003],\"to\":null}]}\n"
            ]
        );
        assert_eq!(
            GatewayMessage::Role { role: Role::Spare }.encode(),
            vec!["{\"type\":\"role\",\"role\":\"spare\"}\n"]
        );
        assert_eq!(
            GatewayMessage::Error {
                code: ErrorCode::DuplicateName,
                message: "x".into()
            }
            .encode(),
            vec!["{\"type\":\"error\",\"code\":\"duplicate_name\",\"message\":\"x\"}\n"]
        );
        for message in [welcome, moved] {
            let lines = message.encode();
            assert_eq!(
                GatewayMessage::decode(lines[0].trim_end()).unwrap(),
                message
            );
        }
        assert_eq!(
            GatewayMessage::decode(r#"{"type":"error","code":"too_hot","message":"m"}"#).unwrap(),
            GatewayMessage::Error {
                code: ErrorCode::Unknown,
                message: "m".into()
            }
        );
        assert_eq!(
            GatewayMessage::decode(r#"{"type":"surprise"}"#),
            Err(DecodeError::UnknownType("surprise".into()))
        );
    }

    fn ports(route: Route) -> Vec<u16> {
        (0..16).map(|i| 1000 * i + route).collect()
    }

    #[test]
    fn long_route_lists_are_split_into_lines_that_fit() {
        let routes: Vec<RoutePorts> = (1..=3000)
            .map(|route| RoutePorts {
                route,
                ports: ports(route),
            })
            .collect();
        let lines = GatewayMessage::Welcome {
            role: Role::Active,
            heartbeat_ms: 60_000,
            routes: routes.clone(),
            hb_udp: None,
        }
        .encode();
        assert!(lines.len() > 10);
        let mut seen = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            assert!(line.len() <= MAX_LINE, "line {i} has {} bytes", line.len());
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
            match GatewayMessage::decode(line.trim_end()).unwrap() {
                GatewayMessage::Welcome { routes, .. } if i == 0 => seen.extend(routes),
                GatewayMessage::Assigned { routes } if i > 0 => seen.extend(routes),
                other => panic!("line {i}: unexpected {other:?}"),
            }
        }
        assert_eq!(seen, routes);

        let moved: Vec<MovedRoute> = (1..=3000)
            .map(|route| MovedRoute {
                route,
                ports: ports(route),
                to: Some("n".repeat(MAX_NAME)),
            })
            .collect();
        let lines = GatewayMessage::Moved {
            routes: moved.clone(),
            drain_ms: 30_000,
        }
        .encode();
        let mut seen = Vec::new();
        for line in &lines {
            assert!(line.len() <= MAX_LINE);
            let GatewayMessage::Moved { routes, drain_ms } =
                GatewayMessage::decode(line.trim_end()).unwrap()
            else {
                panic!("not moved: {line}")
            };
            assert_eq!(drain_ms, 30_000, "every line keeps the drain");
            seen.extend(routes);
        }
        assert_eq!(seen, moved);

        // Every way a list can fill a line up to its last byte: each kind of
        // list message, entries of every size a name gives, the longest
        // framing (`drain_ms` of 20 digits).
        for length in 1..=MAX_NAME {
            let moved: Vec<MovedRoute> = (1..=400)
                .map(|route| MovedRoute {
                    route,
                    ports: ports(route),
                    to: Some("n".repeat(length)),
                })
                .collect();
            let plain: Vec<RoutePorts> = (1..=400)
                .map(|route| RoutePorts {
                    route: route + length as u16,
                    ports: ports(route),
                })
                .collect();
            for message in [
                GatewayMessage::Moved {
                    routes: moved,
                    drain_ms: u64::MAX,
                },
                GatewayMessage::Assigned {
                    routes: plain.clone(),
                },
                GatewayMessage::DrainDone {
                    routes: plain.clone(),
                },
                GatewayMessage::Welcome {
                    role: Role::Active,
                    heartbeat_ms: u64::MAX,
                    routes: plain,
                    hb_udp: Some(HbUdp {
                        port: u16::MAX,
                        id: u32::MAX,
                        key: HeartbeatKey(u64::MAX),
                    }),
                },
            ] {
                for line in message.encode() {
                    assert!(
                        line.len() <= MAX_LINE,
                        "{} bytes with names of {length}",
                        line.len()
                    );
                }
            }
        }

        // An empty welcome is still one line.
        assert_eq!(
            GatewayMessage::Welcome {
                role: Role::Spare,
                heartbeat_ms: 100,
                routes: vec![],
                hb_udp: None,
            }
            .encode()
            .len(),
            1
        );
    }

    #[test]
    fn names() {
        assert!(valid_name("n1"));
        assert!(valid_name("node-7.rack_2"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name("ü"));
        assert!(!valid_name(&"n".repeat(MAX_NAME + 1)));
    }

    async fn read_all(input: &[u8]) -> Vec<Result<Option<String>, String>> {
        let mut reader = LineReader::new();
        let mut stream = input;
        let mut out = Vec::new();
        loop {
            let next = reader
                .next_line(&mut stream)
                .await
                .map_err(|e| e.to_string());
            let stop = !matches!(next, Ok(Some(_)));
            out.push(next);
            if stop {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn line_reader_splits_lines_and_caps_length() {
        assert_eq!(
            read_all(b"{\"type\":\"hb\"}\n\r\n{\"type\":\"bye\"}\r\n").await,
            vec![
                Ok(Some("{\"type\":\"hb\"}".to_string())),
                Ok(Some("{\"type\":\"bye\"}".to_string())),
                Ok(None)
            ]
        );
        assert_eq!(
            read_all(b"abc").await,
            vec![Err("connection closed in the middle of a line".to_string())]
        );
        let mut exact = vec![b'x'; MAX_LINE - 1];
        exact.push(b'\n');
        assert_eq!(
            read_all(&exact).await,
            vec![Ok(Some("x".repeat(MAX_LINE - 1))), Ok(None)]
        );
        let mut long = vec![b'x'; MAX_LINE];
        long.push(b'\n');
        assert_eq!(
            read_all(&long).await,
            vec![Err(format!("line longer than {MAX_LINE} bytes"))]
        );
        let endless = vec![b'x'; 100_000];
        assert_eq!(
            read_all(&endless).await,
            vec![Err(format!("line longer than {MAX_LINE} bytes"))]
        );
        assert_eq!(
            read_all(b"\xff\xfe\n").await,
            vec![Err("line is not UTF-8".to_string())]
        );
    }

    #[tokio::test]
    async fn line_reader_handles_bytes_arriving_one_at_a_time() {
        let (mut client, mut server) = tokio::io::duplex(1);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            client.write_all(b"{\"type\":\"hb\"}\nxy\n").await.unwrap();
        });
        let mut reader = LineReader::new();
        assert_eq!(
            reader.next_line(&mut server).await.unwrap().as_deref(),
            Some("{\"type\":\"hb\"}")
        );
        assert_eq!(
            reader.next_line(&mut server).await.unwrap().as_deref(),
            Some("xy")
        );
        writer.await.unwrap();
        assert_eq!(reader.next_line(&mut server).await.unwrap(), None);
    }
}
