//! Fuzz of the wire decoder: arbitrary lines, arbitrary JSON and arbitrary byte
//! streams cut into arbitrary reads never panic, every refusal says what was
//! wrong, valid messages round-trip, and no line longer than [`MAX_LINE`] gets
//! through.
//!
//! Case count: `HALOD_FUZZ_CASES` (default 10,000; `cargo xtask fuzz` runs
//! 100,000 in release).

use std::{
    net::Ipv4Addr,
    pin::Pin,
    task::{Context, Poll},
};

use proptest::{prelude::*, test_runner::Config};
use tokio::io::{AsyncRead, ReadBuf};

use super::*;

fn fuzz_cases() -> u32 {
    std::env::var("HALOD_FUZZ_CASES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(10_000)
}

/// JSON values biased towards what a node might send: objects with a `type`.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u32>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number)),
        ".{0,20}".prop_map(serde_json::Value::from),
        prop::sample::select(vec![
            "hello",
            "hb",
            "bye",
            "welcome",
            "HELLO",
            "",
            "1",
            "198.19.0.11",
            "n1"
        ])
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "type", "version", "name", "addr", "token", "x", "routes"
                    ]),
                    inner
                ),
                0..6
            )
            .prop_map(|fields| serde_json::Value::Object(
                fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
            )),
        ]
    })
}

fn valid_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,64}"
}

fn node_message() -> impl Strategy<Value = NodeMessage> {
    prop_oneof![
        Just(NodeMessage::Hb {}),
        Just(NodeMessage::Bye {}),
        (
            valid_name(),
            prop::option::of(any::<u32>().prop_map(Ipv4Addr::from)),
            prop::option::of(".{0,40}")
        )
            .prop_map(|(name, addr, token)| NodeMessage::Hello(Hello {
                version: VERSION,
                name,
                addr,
                token
            })),
    ]
}

fn route_ports() -> impl Strategy<Value = Vec<RoutePorts>> {
    prop::collection::vec(
        (1u16.., prop::collection::vec(any::<u16>(), 1..=8))
            .prop_map(|(route, ports)| RoutePorts { route, ports }),
        0..400,
    )
}

fn gateway_message() -> impl Strategy<Value = GatewayMessage> {
    let role = prop_oneof![Just(Role::Active), Just(Role::Spare)];
    prop_oneof![
        (
            role.clone(),
            any::<u64>(),
            route_ports(),
            prop::option::of((any::<u16>(), any::<u32>(), 1u64..))
        )
            .prop_map(|(role, heartbeat_ms, routes, hb_udp)| {
                GatewayMessage::Welcome {
                    role,
                    heartbeat_ms,
                    routes,
                    hb_udp: hb_udp.map(|(port, id, key)| HbUdp {
                        port,
                        id,
                        key: HeartbeatKey(key),
                    }),
                }
            }),
        route_ports()
            .prop_filter("non-empty", |r| !r.is_empty())
            .prop_map(|routes| GatewayMessage::Assigned { routes }),
        prop::collection::vec(
            (
                1u16..,
                prop::collection::vec(any::<u16>(), 1..=8),
                prop::option::of(valid_name())
            )
                .prop_map(|(route, ports, to)| MovedRoute { route, ports, to }),
            1..300
        )
        .prop_map(|routes| GatewayMessage::Moved {
            routes,
            drain_ms: 0
        }),
        role.prop_map(|role| GatewayMessage::Role { role }),
        (
            prop_oneof![
                Just(ErrorCode::BadRequest),
                Just(ErrorCode::BadToken),
                Just(ErrorCode::Full),
                Just(ErrorCode::DuplicateName)
            ],
            ".{0,2000}"
        )
            .prop_map(|(code, message)| GatewayMessage::Error { code, message }),
    ]
}

/// A reader that hands out the stream in the given read sizes.
struct Chunked {
    data: Vec<u8>,
    at: usize,
    sizes: Vec<usize>,
    read: usize,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let size = self.sizes[self.read % self.sizes.len()];
        self.read += 1;
        let end = (self.at + size)
            .min(self.data.len())
            .min(self.at + buf.remaining());
        let at = self.at;
        buf.put_slice(&self.data[at..end]);
        self.at = end;
        Poll::Ready(Ok(()))
    }
}

/// What `LineReader` must produce for `data`: the model, written from
/// docs/protocol.md ("Transport and framing").
fn expected_lines(data: &[u8]) -> (Vec<String>, Option<&'static str>) {
    let mut lines = Vec::new();
    let mut rest = data;
    loop {
        match rest.iter().position(|&b| b == b'\n') {
            None if rest.is_empty() => return (lines, None),
            None if rest.len() >= MAX_LINE => return (lines, Some("too long")),
            None => return (lines, Some("truncated")),
            Some(at) if at + 1 > MAX_LINE => return (lines, Some("too long")),
            Some(at) => {
                let mut line = &rest[..at];
                if line.last() == Some(&b'\r') {
                    line = &line[..line.len() - 1];
                }
                match std::str::from_utf8(line) {
                    Err(_) => return (lines, Some("not utf-8")),
                    Ok("") => {}
                    Ok(text) => lines.push(text.to_owned()),
                }
                rest = &rest[at + 1..];
            }
        }
    }
}

fn stream() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => node_message().prop_map(|m| m.encode().into_bytes()),
        2 => prop::collection::vec(any::<u8>(), 0..40),
        1 => Just(b"\r\n".to_vec()),
        1 => Just(b"\n".to_vec()),
        1 => (4000usize..4200).prop_map(|n| {
            let mut line = vec![b'x'; n];
            line.push(b'\n');
            line
        }),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(Config { cases: fuzz_cases(), failure_persistence: None, ..Config::default() })]

    #[test]
    fn fuzz_arbitrary_lines_never_panic_and_errors_say_what_is_wrong(line in ".{0,200}") {
        if let Err(error) = NodeMessage::decode(&line) {
            prop_assert!(!error.to_string().is_empty());
        }
        let _ = GatewayMessage::decode(&line);
    }

    #[test]
    fn fuzz_arbitrary_json_is_decoded_or_refused_with_a_reason(value in json_value()) {
        let line = value.to_string();
        match NodeMessage::decode(&line) {
            Ok(message) => {
                prop_assert!(value.is_object(), "{line} decoded as {message:?}");
                if let NodeMessage::Hello(hello) = message {
                    prop_assert!((1..=VERSION).contains(&hello.version));
                }
            }
            Err(DecodeError::Json(reason)) => prop_assert!(!value.is_object(), "{line}: {reason}"),
            Err(DecodeError::NoType) => prop_assert!(value.get("type").is_none() || value["type"].is_null()),
            Err(DecodeError::UnknownType(kind)) => {
                prop_assert!(value.is_object(), "{line}: unknown type {kind:?} of a non-object");
                prop_assert!(!kind.is_empty() || value["type"] == "");
            }
            Err(DecodeError::Invalid { kind, reason }) => {
                prop_assert!(["hello", "hb", "bye"].contains(&kind.as_str()));
                prop_assert!(!reason.is_empty());
            }
            Err(DecodeError::Version(version)) => prop_assert!(!(1..=VERSION).contains(&version)),
        }
    }

    #[test]
    fn fuzz_node_messages_round_trip(message in node_message()) {
        let line = message.encode();
        prop_assert!(line.ends_with('\n'));
        prop_assert_eq!(line.matches('\n').count(), 1, "one line: {}", line);
        prop_assert_eq!(NodeMessage::decode(line.trim_end()).unwrap(), message);
    }

}

proptest! {
    // Each case serializes hundreds of routes: a tenth of the cases.
    #![proptest_config(Config { cases: fuzz_cases() / 10, failure_persistence: None, ..Config::default() })]

    #[test]
    fn fuzz_gateway_messages_round_trip_within_the_line_limit(message in gateway_message()) {
        let lines = message.encode();
        let mut decoded = Vec::new();
        for line in &lines {
            prop_assert!(line.len() <= MAX_LINE, "{} bytes", line.len());
            prop_assert_eq!(line.matches('\n').count(), 1);
            decoded.push(GatewayMessage::decode(line.trim_end()).unwrap());
        }
        match (&message, decoded.as_slice()) {
            (GatewayMessage::Welcome { routes, role, heartbeat_ms, hb_udp }, [GatewayMessage::Welcome { role: r, heartbeat_ms: h, routes: first, hb_udp: u }, rest @ ..]) => {
                prop_assert_eq!((role, heartbeat_ms, hb_udp), (r, h, u));
                let mut all = first.clone();
                for part in rest {
                    let GatewayMessage::Assigned { routes } = part else { panic!("{part:?}") };
                    all.extend(routes.iter().cloned());
                }
                prop_assert_eq!(&all, routes);
            }
            (GatewayMessage::Assigned { routes }, parts) => {
                let all: Vec<RoutePorts> = parts.iter().flat_map(|p| match p {
                    GatewayMessage::Assigned { routes } => routes.clone(),
                    other => panic!("{other:?}"),
                }).collect();
                prop_assert_eq!(&all, routes);
            }
            (GatewayMessage::Moved { routes, .. }, parts) => {
                let all: Vec<MovedRoute> = parts.iter().flat_map(|p| match p {
                    GatewayMessage::Moved { routes, .. } => routes.clone(),
                    other => panic!("{other:?}"),
                }).collect();
                prop_assert_eq!(&all, routes);
            }
            (GatewayMessage::Error { code, message }, [GatewayMessage::Error { code: c, message: m }]) => {
                prop_assert_eq!(code, c);
                prop_assert!(message.starts_with(m.as_str()));
            }
            (message, [decoded]) => prop_assert_eq!(message, decoded),
            (message, parts) => prop_assert!(false, "{message:?} became {parts:?}"),
        }
    }

}

proptest! {
    #![proptest_config(Config { cases: fuzz_cases(), failure_persistence: None, ..Config::default() })]

    #[test]
    fn fuzz_line_reader_frames_any_stream_like_the_spec(
        data in stream(),
        sizes in prop::collection::vec(1usize..600, 1..6),
    ) {
        let (want_lines, want_error) = expected_lines(&data);
        let mut reader = Chunked { data, at: 0, sizes, read: 0 };
        let mut lines = LineReader::new();
        let mut got = Vec::new();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let error = runtime.block_on(async {
            loop {
                match lines.next_line(&mut reader).await {
                    Ok(Some(line)) => got.push(line),
                    Ok(None) => return None,
                    Err(LineError::TooLong) => return Some("too long"),
                    Err(LineError::NotUtf8) => return Some("not utf-8"),
                    Err(LineError::Truncated) => return Some("truncated"),
                    Err(LineError::Io(e)) => panic!("{e}"),
                }
            }
        });
        prop_assert_eq!(got, want_lines);
        prop_assert_eq!(error, want_error);
    }
}
