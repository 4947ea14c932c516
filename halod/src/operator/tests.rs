//! The control socket and the operator client, in one process: a real node
//! manager (with a stand-in data plane), the socket server on a socket in a
//! temp directory, and the CLI's own connection code.

use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::api::Stamped;
use crate::control::manager::{Outbound, Registered, Request};
use crate::control::socket::{self, Services};
use crate::control::state::{Fingerprint, SavedState};
use crate::control::tables::Recorder;
use crate::control::wiring::{Wiring, test_config};
use crate::protocol::{ErrorCode, GatewayMessage};

struct Daemon {
    requests: mpsc::Sender<Request>,
    dataplane: Recorder,
    socket: PathBuf,
    dir: PathBuf,
    shutdown: CancellationToken,
    states: watch::Receiver<Option<SavedState>>,
    services: Services<Recorder>,
    next_conn: u64,
}

impl Daemon {
    async fn start(name: &str, saved: Option<SavedState>) -> Daemon {
        // Nodes here send no heartbeats: a dead window (3 s) longer than
        // the restart grace (1 s) keeps them alive through a test.
        let config = test_config(
            "spares: 1, restart_grace_ms: 1000, heartbeat_ms: 1000, max_nodes: 16, drain_ms: 0",
        );
        let dir = std::env::temp_dir().join(format!("halod-op-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let socket_path = dir.join("halod.sock");
        let dataplane = Recorder::default();
        let (states, receiver) = watch::channel(None);
        let mut wiring = Wiring::new(&config, dataplane.clone())
            .unwrap()
            .queue(64)
            .publish(Fingerprint::of(&config), states);
        if let Some(saved) = saved {
            let cluster = saved.cluster(&config, &dir).unwrap();
            wiring = wiring.restore(saved, cluster, Duration::from_millis(1000));
        }
        let shutdown = CancellationToken::new();
        let wired = wiring.start(&TaskTracker::new(), &shutdown).await;
        let listener = socket::bind(&socket_path, None).unwrap();
        tokio::spawn(socket::serve(
            listener,
            socket_path.clone(),
            None,
            wired.services.clone(),
            shutdown.clone(),
        ));
        Daemon {
            requests: wired.requests,
            dataplane,
            socket: socket_path,
            dir,
            shutdown,
            states: receiver,
            services: wired.services,
            next_conn: 0,
        }
    }

    /// Registers `name` as the connection task would; keeps its queue.
    async fn hello(&mut self, name: &str, last_octet: u8) -> Registered {
        self.next_conn += 1;
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Hello {
                conn: self.next_conn,
                name: name.into(),
                addr: Ipv4Addr::new(198, 19, 0, last_octet),
                reply,
            })
            .await
            .unwrap();
        answer.await.unwrap().unwrap()
    }

    /// One request through the CLI's connection code, on a blocking thread.
    async fn ask(&self, request: OperatorRequest) -> Result<String, String> {
        let path = self.socket.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = Connection::open(&path).map_err(|f| f.0)?;
            connection.send(&request).map_err(|f| f.0)?;
            connection.reply().map_err(|f| f.0)
        })
        .await
        .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.shutdown.cancel();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn drain_queue(queue: &mut mpsc::Receiver<Outbound>) -> Vec<GatewayMessage> {
    let mut messages = Vec::new();
    while let Ok(message) = queue.try_recv() {
        messages.push(*message);
    }
    messages
}

#[tokio::test]
async fn routes_nodes_status_and_stats_replies() {
    let mut daemon = Daemon::start("replies", None).await;
    let _n1 = daemon.hello("n1", 11).await;
    let _n2 = daemon.hello("n2", 12).await; // the spare
    let _n3 = daemon.hello("n3", 13).await;

    let routes = daemon.ask(OperatorRequest::Routes).await.unwrap();
    assert!(
        routes.starts_with(
            r#"{"routes":[{"route":1,"ports":[8000,9000],"node":"n1","slot":1,"addr":"198.19.0.11","connections":0},"#
        ),
        "{routes}"
    );
    assert!(
        routes.contains(
            r#"{"route":24,"ports":[8023,9023],"node":"n3","slot":2,"addr":"198.19.0.13","connections":230}]}"#
        ),
        "{routes}"
    );
    let parsed: RoutesReply = serde_json::from_str(&routes).unwrap();
    let text = render_routes(&parsed);
    assert!(text.starts_with("24 routes, 24 served\nRoute  Ports      Node  Slot  Address      Conns\n1      8000,9000  n1    1     198.19.0.11  0\n"), "{text}");
    assert!(
        text.contains("\n24     8023,9023  n3    2     198.19.0.13  230\n"),
        "{text}"
    );
    assert!(text.ends_with("\nConns: established connections, estimated from the SYNs and client FINs/RSTs the gateway saw (docs/operations.md)\n"), "{text}");
    let mut off = parsed.clone();
    for route in &mut off.routes {
        route.connections = None;
    }
    let text = render_routes(&off);
    assert!(
        text.contains("\n1      8000,9000  n1    1     198.19.0.11  -\n"),
        "{text}"
    );
    assert!(
        text.ends_with(
            "\nConns: not recorded (nodes.flush_pps is 0: the data plane records no connections)\n"
        ),
        "{text}"
    );

    let nodes = daemon.ask(OperatorRequest::Nodes).await.unwrap();
    let value: serde_json::Value = serde_json::from_str(&nodes).unwrap();
    let list = value["nodes"].as_array().unwrap();
    let names: Vec<&str> = list.iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["n1", "n3", "n2"], "slot order, then spares");
    assert_eq!(list[0]["role"], "active");
    assert_eq!(list[0]["slot"], 1);
    assert_eq!(list[0]["routes"], 12);
    assert_eq!(list[0]["addr"], "198.19.0.11");
    assert!(list[0]["last_heartbeat_ms"].is_u64(), "{nodes}");
    assert_eq!(list[2]["role"], "spare");
    assert_eq!(list[2]["slot"], serde_json::Value::Null);
    assert_eq!(list[2]["routes"], 0);
    let text = render_nodes(&serde_json::from_str(&nodes).unwrap(), u64::MAX / 2);
    assert!(
        text.starts_with(
            "3 nodes: 2 active, 1 spare\nName  Role    Slot  Routes  Address      LastHeartbeat"
        ),
        "{text}"
    );

    let status: StatusReply =
        serde_json::from_str(&daemon.ask(OperatorRequest::Status).await.unwrap()).unwrap();
    assert_eq!(status.counts.active, 2);
    assert_eq!(status.counts.spares, 1);
    assert_eq!(status.counts.routes_served, 24);
    assert_eq!(status.dataplane[1].mode, "generic");
    assert_eq!(status.last_failover, None);
    let text = render_status(&status);
    assert!(
        text.contains("Data plane:    ext0 native, int0 generic"),
        "{text}"
    );
    assert!(text.contains("Last failover: none"), "{text}");
    assert!(text.contains("State saved:   "), "{text}");
    assert!(status.state_file.is_some());

    let stats: StatsReply =
        serde_json::from_str(&daemon.ask(OperatorRequest::Stats).await.unwrap()).unwrap();
    assert_eq!(stats.routes[3].route, 4);
    assert_eq!(stats.routes[3].packets, 3);
    assert_eq!(stats.routes[3].node.as_deref(), Some("n1"));
    // n1 registered first: counter index 0.
    assert_eq!(
        stats.nodes.iter().find(|n| n.name == "n1").unwrap().packets,
        1000
    );
    assert_eq!(stats.reasons["forwarded_in"], 7);
    assert!(render_stats(&stats).contains("forwarded_in  7"));
    assert!(stats.connections_recorded);
    assert_eq!(stats.routes[3].connections, Some(30));
    assert_eq!(
        stats
            .nodes
            .iter()
            .find(|n| n.name == "n1")
            .unwrap()
            .connections,
        Some(500)
    );
    let text = render_stats(&stats);
    assert!(
        text.starts_with("Route  Node  Packets  Bytes  Conns\n1      n1    0        0      0\n"),
        "{text}"
    );
    assert!(text.contains("\nn1    1000     2000   500\n"), "{text}");
    assert!(text.contains("\nConns: established connections"), "{text}");
    let mut off = stats.clone();
    off.connections_recorded = false;
    for route in &mut off.routes {
        route.connections = None;
    }
    for node in &mut off.nodes {
        node.connections = None;
    }
    let json = serde_json::to_value(&off).unwrap();
    assert_eq!(json["routes"][0]["connections"], serde_json::Value::Null);
    let text = render_stats(&off);
    assert!(
        text.contains("\n1      n1    0        0      -\n"),
        "{text}"
    );
    assert!(
        text.contains("\nConns: not recorded (nodes.flush_pps is 0"),
        "{text}"
    );
    // A reply of a daemon before the estimates reads as "not recorded".
    let old: StatsReply = serde_json::from_str(
        r#"{"routes":[{"route":1,"node":null,"packets":1,"bytes":2}],"nodes":[{"name":"a","packets":1,"bytes":2}],"reasons":{}}"#,
    )
    .unwrap();
    assert!(!old.connections_recorded);
    assert_eq!(old.routes[0].connections, None);
}

#[tokio::test]
async fn drain_moves_routes_tells_the_node_and_unknown_nodes_fail() {
    let mut daemon = Daemon::start("drain", None).await;
    let mut n1 = daemon.hello("n1", 11).await;
    let _n2 = daemon.hello("n2", 12).await;
    let _n3 = daemon.hello("n3", 13).await;

    let error = daemon
        .ask(OperatorRequest::Drain {
            node: "nope".into(),
        })
        .await
        .unwrap();
    let error: ErrorReply = serde_json::from_str(&error).unwrap();
    assert!(
        error.error.starts_with("unknown node \"nope\""),
        "{}",
        error.error
    );

    drain_queue(&mut n1.outbound);
    let reply = daemon
        .ask(OperatorRequest::Drain { node: "n1".into() })
        .await
        .unwrap();
    assert_eq!(reply, r#"{"drained":"n1","moved":12,"to":["n2"]}"#);
    let told = drain_queue(&mut n1.outbound);
    assert!(
        matches!(&told[0], GatewayMessage::Moved { routes, .. } if routes.len() == 12
            && routes.iter().all(|r| r.to.as_deref() == Some("n2"))),
        "{told:?}"
    );
    assert!(
        matches!(
            &told[1],
            GatewayMessage::Error {
                code: ErrorCode::Drained,
                ..
            }
        ),
        "{told:?}"
    );
    // The queue is closed: the connection ends after these messages.
    assert!(n1.outbound.recv().await.is_none());
    let nodes: NodesReply =
        serde_json::from_str(&daemon.ask(OperatorRequest::Nodes).await.unwrap()).unwrap();
    let names: Vec<&str> = nodes.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["n2", "n3"]);
}

#[tokio::test]
async fn watch_streams_events() {
    let mut daemon = Daemon::start("watch", None).await;
    let path = daemon.socket.clone();
    let (lines, mut received) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut connection = Connection::open(&path).unwrap();
        connection.send(&OperatorRequest::Watch).unwrap();
        while let Ok(line) = connection.line() {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    assert_eq!(received.recv().await.unwrap(), r#"{"watching":true}"#);
    let _n1 = daemon.hello("n1", 11).await;
    let joined = received.recv().await.unwrap();
    let event: Stamped = serde_json::from_str(&joined).unwrap();
    assert!(
        joined.contains(r#""event":"node_joined","node":"n1","addr":"198.19.0.11","role":"active","slot":1,"routes":24"#),
        "{joined}"
    );
    assert!(event.time_unix_ms > 0);
    let moved = received.recv().await.unwrap();
    assert!(moved.contains(r#""event":"routes_moved""#), "{moved}");
    let text = render_event(&joined);
    assert!(
        text.ends_with("node_joined addr=198.19.0.11 node=n1 role=active routes=24 slot=1"),
        "{text}"
    );
}

#[tokio::test]
async fn the_socket_is_private_and_a_live_one_is_not_replaced() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let daemon = Daemon::start("socket", None).await;
    let meta = std::fs::metadata(&daemon.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let error = socket::bind(&daemon.socket, None).unwrap_err().to_string();
    assert!(error.contains("another halod is serving"), "{error}");

    // A stale socket (nobody listening) is replaced; a group gets 0660.
    let stale = daemon.dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let gid = nix::unistd::getgid();
    let _listener = socket::bind(&stale, Some(gid)).unwrap();
    let meta = std::fs::metadata(&stale).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), gid.as_raw());

    // Anything that is not a socket is the operator's: refused, kept.
    let file = daemon.dir.join("notes.txt");
    std::fs::write(&file, "keep me\n").unwrap();
    let error = format!("{:#}", socket::bind(&file, None).unwrap_err());
    assert!(
        error.contains("a regular file is at this path, not a socket")
            && error.contains("set control.socket to another path"),
        "{error}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me\n");
    let directory = daemon.dir.join("a-directory");
    std::fs::create_dir(&directory).unwrap();
    let error = format!("{:#}", socket::bind(&directory, None).unwrap_err());
    assert!(error.contains("a directory is at this path"), "{error}");
    assert!(directory.is_dir());

    // Nobody there: one line that says what to do.
    let missing = daemon.dir.join("missing.sock");
    let error = Connection::open(&missing).err().unwrap().0;
    assert_eq!(
        error,
        format!(
            "cannot reach the daemon at {}: No such file or directory (is `halod run` running? use --socket)",
            missing.display()
        )
    );
    // A bad request gets an error reply and the connection stays usable.
    let path = daemon.socket.clone();
    let replies = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut stream = UnixStream::connect(&path).unwrap();
        stream
            .write_all(b"{\"cmd\":\"dance\"}\n{\"cmd\":\"routes\"}\n")
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut first = String::new();
        let mut second = String::new();
        reader.read_line(&mut first).unwrap();
        reader.read_line(&mut second).unwrap();
        (first, second)
    })
    .await
    .unwrap();
    assert!(
        replies.0.starts_with(r#"{"error":"bad request"#),
        "{}",
        replies.0
    );
    assert!(
        replies.1.starts_with(
            r#"{"routes":[{"route":1,"ports":[8000,9000],"node":null,"slot":null,"addr":null,"connections":0}"#
        ),
        "{}",
        replies.1
    );
}

#[tokio::test]
async fn a_restarted_daemon_keeps_the_table_and_fails_only_the_missing() {
    // The first daemon's table, as its state-file writer saw it.
    let mut first = Daemon::start("restart-a", None).await;
    let _n1 = first.hello("n1", 11).await;
    let _n2 = first.hello("n2", 12).await;
    let _n3 = first.hello("n3", 13).await;
    let _n4 = first.hello("n4", 14).await;
    let routes_before = first.ask(OperatorRequest::Routes).await.unwrap();
    first
        .states
        .wait_for(|s| s.as_ref().is_some_and(|s| s.active.len() == 3))
        .await
        .unwrap();
    let saved = first.states.borrow().clone().unwrap();
    assert_eq!(saved.spares[0].name, "n2");
    drop(first);

    let mut second = Daemon::start("restart-b", Some(saved.clone())).await;
    // The whole table is written at once, before any node is back.
    let writes = second.dataplane.writes();
    assert_eq!(writes.len(), 3 + 24, "{writes:?}");
    assert_eq!(
        second.ask(OperatorRequest::Routes).await.unwrap(),
        routes_before
    );
    let nodes: NodesReply =
        serde_json::from_str(&second.ask(OperatorRequest::Nodes).await.unwrap()).unwrap();
    assert!(
        nodes
            .nodes
            .iter()
            .all(|n| n.awaiting.as_deref() == Some("restart"))
    );

    // n1, n2 (spare) and n4 come back and resume; n3 does not.
    let mut n1 = second.hello("n1", 11).await;
    let _n2 = second.hello("n2", 12).await;
    let _n4 = second.hello("n4", 14).await;
    assert!(matches!(
        *n1.outbound.recv().await.unwrap(),
        GatewayMessage::Welcome { ref routes, .. } if routes.len() == 8
    ));
    assert_eq!(
        second.ask(OperatorRequest::Routes).await.unwrap(),
        routes_before
    );
    assert_eq!(second.dataplane.writes().len(), 27, "no route changed");

    // After the grace n3 fails through the routing rules: the spare takes its slot.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status: StatusReply =
            serde_json::from_str(&second.ask(OperatorRequest::Status).await.unwrap()).unwrap();
        if status.last_failover.is_some() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "n3 never failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let failover = status.last_failover.unwrap();
    assert_eq!(failover.node, "n3");
    assert_eq!(failover.replacement.as_deref(), Some("n2"));
    assert_eq!(failover.moved, 8);
    assert!(
        failover.cause.contains("restart_grace_ms"),
        "{}",
        failover.cause
    );
    assert_eq!(status.restored_nodes, Some(4));
}

#[tokio::test]
async fn metrics_show_nodes_counters_and_failovers() {
    let mut daemon = Daemon::start("metrics", None).await;
    let _n1 = daemon.hello("n1", 11).await;
    let _n2 = daemon.hello("n2", 12).await;
    let _n3 = daemon.hello("n3", 13).await;
    daemon.services.metrics.heartbeat_gap(1150);
    let text = crate::control::exporter::render(&daemon.services)
        .await
        .unwrap();
    for line in [
        "halod_nodes{role=\"active\"} 2",
        "halod_nodes{role=\"spare\"} 1",
        "halod_route_packets_total{route=\"4\"} 3",
        "halod_route_bytes_total{route=\"4\"} 300",
        "halod_node_packets_total{node=\"n1\"} 1000",
        "halod_dataplane_packets_total{reason=\"forwarded_in\"} 7",
        "halod_heartbeat_lateness_seconds_count 1",
        "halod_failovers_total 0",
        "halod_state_file_write_failures_total 0",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    assert!(text.contains("halod_plan_push_seconds_count 2"), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[tokio::test]
async fn malformed_requests_get_an_error_reply_and_the_connection_goes_on() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let daemon = Daemon::start("malformed", None).await;
    let stream = tokio::net::UnixStream::connect(&daemon.socket)
        .await
        .unwrap();
    let (read, mut write) = stream.into_split();
    let mut replies = BufReader::new(read).lines();
    for bad in [
        "not json",
        "[1,2]",
        r#"{"cmd":"explode"}"#,
        r#"{"cmd":"drain"}"#,
        r#"{"nocmd":true}"#,
    ] {
        write
            .write_all(format!("{bad}\n").as_bytes())
            .await
            .unwrap();
        let reply = replies.next_line().await.unwrap().expect("a reply line");
        let value: serde_json::Value = serde_json::from_str(&reply).unwrap();
        let error = value["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error for {bad:?}: {reply}"));
        assert!(error.contains("bad request"), "{bad:?}: {error}");
        assert!(
            error.contains("expected e.g."),
            "says what to send: {error}"
        );
    }
    // The same connection still answers a good request.
    write.write_all(b"{\"cmd\":\"routes\"}\n").await.unwrap();
    let reply = replies.next_line().await.unwrap().unwrap();
    assert!(reply.starts_with(r#"{"routes":"#), "{reply}");
    // A line past the limit gets an error line, then the daemon hangs up.
    let long = "x".repeat(10_000);
    write
        .write_all(format!("{long}\n").as_bytes())
        .await
        .unwrap();
    let reply = replies.next_line().await.unwrap().unwrap();
    assert!(reply.starts_with(r#"{"error":"#), "{reply}");
    assert!(
        !matches!(replies.next_line().await, Ok(Some(_))),
        "nothing more after the error"
    );
}

#[tokio::test]
async fn a_removed_socket_is_made_again_and_a_replaced_one_left_alone() {
    let daemon = Daemon::start("removed", None).await;
    std::fs::remove_file(&daemon.socket).unwrap();
    let start = std::time::Instant::now();
    loop {
        if std::os::unix::net::UnixStream::connect(&daemon.socket).is_ok() {
            break;
        }
        assert!(
            start.elapsed() < socket::SOCKET_CHECK * 5,
            "the socket did not come back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let socket = daemon.socket.clone();
    let reply = tokio::task::spawn_blocking(move || {
        let mut connection = Connection::open(&socket).unwrap();
        connection.send(&OperatorRequest::Status).unwrap();
        connection.reply().unwrap()
    })
    .await
    .unwrap();
    assert!(reply.contains(r#""instance""#), "{reply}");

    // Something else at the path is not the daemon's to replace or remove.
    std::fs::remove_file(&daemon.socket).unwrap();
    std::fs::write(&daemon.socket, "operator's file\n").unwrap();
    tokio::time::sleep(socket::SOCKET_CHECK * 2).await;
    assert_eq!(
        std::fs::read_to_string(&daemon.socket).unwrap(),
        "operator's file\n"
    );
    daemon.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        daemon.socket.exists(),
        "shutdown removed only its own socket"
    );
}

#[tokio::test]
async fn operator_connections_are_limited() {
    let daemon = Daemon::start("limit", None).await;
    let socket = daemon.socket.clone();
    let refused = tokio::task::spawn_blocking(move || {
        // Each one is served (status answered) and then stays open.
        let held: Vec<Connection> = (0..socket::MAX_OPERATOR_CONNECTIONS)
            .map(|_| {
                let mut connection = Connection::open(&socket).unwrap();
                connection.send(&OperatorRequest::Status).unwrap();
                connection.reply().unwrap();
                connection
            })
            .collect();
        let mut extra = Connection::open(&socket).unwrap();
        let line = extra.reply().unwrap();
        drop(held);
        line
    })
    .await
    .unwrap();
    assert!(
        refused.contains("too many operator connections open (64)"),
        "{refused}"
    );
}

#[test]
fn a_daemon_that_does_not_answer_times_out() {
    let dir = std::env::temp_dir().join(format!("halod-op-timeout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Listening, never accepting: what a SIGSTOPped daemon looks like.
    let path = dir.join("stopped.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let target = Target {
        socket: path.clone(),
        json: false,
        timeout: parse_timeout("300ms").unwrap(),
    };
    let started = std::time::Instant::now();
    let Failure(message) = execute(&OperatorRequest::Status, &target).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "{message}");
    assert!(
        message.starts_with(&format!(
            "no reply from the daemon at {} within 300ms (--timeout)",
            path.display()
        )) && message.ends_with("the request changes nothing; try again when the daemon answers"),
        "{message}"
    );
    let Failure(message) =
        execute(&OperatorRequest::Drain { node: "n1".into() }, &target).unwrap_err();
    assert!(
        message.contains(
            "the drain of n1 was sent and may still be carried out when the daemon resumes"
        ),
        "{message}"
    );

    // A full listen queue blocks connect itself: that times out too.
    let full = dir.join("full.sock");
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&socket2::SockAddr::unix(&full).unwrap())
        .unwrap();
    socket.listen(0).unwrap();
    let mut queued = Vec::new();
    let refused = loop {
        match connect(&full, Duration::from_millis(200)) {
            Ok(stream) => queued.push(stream),
            Err(err) => break err,
        }
        assert!(queued.len() < 16, "the listen queue never filled");
    };
    assert_eq!(refused.kind(), std::io::ErrorKind::TimedOut);
    let target = Target {
        socket: full,
        ..target
    };
    let Failure(message) = execute(&OperatorRequest::Routes, &target).unwrap_err();
    assert!(
        message.contains("the daemon accepts no connections")
            && message.contains("nothing was sent"),
        "{message}"
    );
    assert!(parse_timeout("0").is_err());
    assert!(parse_timeout("soon").is_err());
    assert_eq!(parse_timeout("2.5").unwrap(), Duration::from_millis(2500));
    assert_eq!(parse_timeout("5s").unwrap(), Duration::from_secs(5));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_state_files_health_is_said_in_words() {
    use crate::api::StateFileHealth;
    let now = 1_000_000;
    let fine = StateFileHealth {
        written_unix_ms: Some(now - 3_000),
        up_to_date: true,
        write_failures: 0,
        last_error: None,
    };
    assert_eq!(
        state_saved(&fine, now),
        "last written 3.0s ago, holds the current table"
    );
    let failing = StateFileHealth {
        up_to_date: false,
        write_failures: 7,
        last_error: Some("No space left on device (os error 28)".into()),
        ..fine
    };
    assert_eq!(
        state_saved(&failing, now),
        "last written 3.0s ago, BEHIND the current table (a restart now would bring back the older one); \
         7 failed writes, failing now: No space left on device (os error 28) (retrying)"
    );
}

#[test]
fn a_failover_event_names_its_time_once() {
    use crate::api::{Failover, WatchEvent};
    let stamped = Stamped {
        time_unix_ms: 1_700_000_000_123,
        event: WatchEvent::Failover(Failover {
            node: "n1".into(),
            cause: "no heartbeat for 300 ms".into(),
            time_unix_ms: 1_700_000_000_123,
            replacement: Some("n4".into()),
            moved: 6,
            plan_us: 40,
        }),
    };
    let line = serde_json::to_string(&stamped).unwrap();
    assert_eq!(line.matches("time_unix_ms").count(), 1, "{line}");
    assert_eq!(
        line,
        r#"{"time_unix_ms":1700000000123,"event":"failover","node":"n1","cause":"no heartbeat for 300 ms","replacement":"n4","moved":6,"plan_us":40}"#
    );
    // Strict parsers (one key per object) and this build both read it.
    let parsed: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&line).unwrap();
    assert_eq!(parsed.len(), 7);
    let back: Stamped = serde_json::from_str(&line).unwrap();
    assert_eq!(back.time_unix_ms, 1_700_000_000_123);
}

#[test]
fn drain_says_where_the_routes_went() {
    let reply = |moved, to: &[&str]| DrainReply {
        drained: "n3".into(),
        moved,
        to: to.iter().map(|n| n.to_string()).collect(),
        drain_ms: 0,
    };
    assert_eq!(
        drained_text(&reply(6, &["n1"])),
        "drained n3: it left the cluster; 6 routes moved to n1\n"
    );
    assert_eq!(
        drained_text(&DrainReply {
            drain_ms: 30_000,
            ..reply(6, &["n1"])
        }),
        "drained n3: it left the cluster; 6 routes moved to n1; its connections open now stay \
         on it for 30.0s (nodes.drain_ms), then it is disconnected\n"
    );
    assert_eq!(
        drained_text(&reply(6, &["n1", "n2"])),
        "drained n3: it left the cluster; 6 routes moved to 2 nodes (n1, n2)\n"
    );
    assert_eq!(
        drained_text(&reply(1, &["n1"])),
        "drained n3: it left the cluster; 1 route moved to n1\n"
    );
    assert_eq!(
        drained_text(&reply(12, &[])),
        "drained n3: it left the cluster; 12 routes moved and no node is left to serve them\n"
    );
    assert_eq!(
        drained_text(&reply(0, &[])),
        "drained n3: it left the cluster; 0 routes moved\n"
    );
}

/// A scraper that opens connections without end gets `503` beyond
/// `MAX_SCRAPES` at once, and the endpoint answers again once they go.
#[tokio::test]
async fn the_metrics_endpoint_answers_a_bounded_number_of_scrapes_at_once() {
    use crate::control::exporter::{self, MAX_SCRAPES};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let daemon = Daemon::start("scrapes", None).await;
    let listener = exporter::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let address = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(exporter::serve(
        listener,
        daemon.services.clone(),
        stop.clone(),
    ));
    // Connections that never send their request hold their slot.
    let mut idle = Vec::new();
    for _ in 0..MAX_SCRAPES {
        idle.push(tokio::net::TcpStream::connect(address).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut answer = String::new();
    extra.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    drop(idle);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut scrape = tokio::net::TcpStream::connect(address).await.unwrap();
    scrape
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    scrape.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    stop.cancel();
}
