//! The client library against the real gateway code (manager and connection
//! tasks) on loopback TCP, with a data-plane stand-in that accepts writes.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::control::accept_loop;
use crate::control::tables::Recorder;
use crate::control::wiring::{Wiring, test_config};
use crate::protocol::Role;

/// A gateway whose moves do not drain.
async fn gateway(token: Option<&str>) -> (String, CancellationToken) {
    gateway_draining(token, 0).await
}

async fn gateway_draining(token: Option<&str>, drain_ms: u64) -> (String, CancellationToken) {
    let config = test_config(&format!(
        "heartbeat_ms: 50, dead_after: 3, max_nodes: 10, drain_ms: {drain_ms}"
    ));
    let shutdown = CancellationToken::new();
    let wired = Wiring::new(&config, Recorder::default())
        .unwrap()
        .token(token.map(str::to_string))
        .start(&TaskTracker::new(), &shutdown)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(accept_loop(listener, wired.connections));
    (address, shutdown)
}

fn options(gateway: &str, name: &str, last_octet: u8) -> ClientOptions {
    ClientOptions {
        gateway: gateway.to_string(),
        name: name.to_string(),
        addr: Some(Ipv4Addr::new(198, 19, 0, last_octet)),
        token: Some("t0ken".to_string()),
        version: crate::protocol::VERSION,
    }
}

#[tokio::test]
async fn client_follows_its_routes_and_heartbeats() {
    let (gateway, shutdown) = gateway(Some("t0ken")).await;
    let (mut n1, welcome) = Client::connect(&options(&gateway, "n1", 11)).await.unwrap();
    assert!(
        welcome
            .line
            .starts_with(r#"{"type":"welcome","role":"active","heartbeat_ms":50,"#)
    );
    assert_eq!(n1.routes(), (1..=24).collect::<Vec<_>>());
    assert_eq!(n1.ports().len(), 48);
    let (mut n2, _) = Client::connect(&options(&gateway, "n2", 12)).await.unwrap();
    assert_eq!(n2.routes(), (13..=24).collect::<Vec<_>>());
    let moved = n1.recv().await.unwrap();
    assert!(
        matches!(moved.message, GatewayMessage::Moved { ref routes, .. } if routes.len() == 12)
    );
    assert_eq!(n1.routes(), (1..=12).collect::<Vec<_>>());
    let before = NodeState {
        role: Role::Active,
        routes: (1..=24)
            .map(|route| (route, vec![7999 + route, 8999 + route]))
            .collect(),
    };
    let change = Change::between("moved", Some(&before), &NodeState::of(&n1));
    let environment = change.environment("n1");
    assert_eq!(environment[0], ("HALOD_EVENT", "moved".to_string()));
    assert_eq!(environment[1], ("HALOD_ROLE", "active".to_string()));
    assert_eq!(
        environment[2],
        ("HALOD_ROUTES", "1,2,3,4,5,6,7,8,9,10,11,12".to_string())
    );
    assert!(environment[3].1.starts_with("8000,8001,"));
    assert!(environment[3].1.ends_with(",9010,9011"));
    assert_eq!(environment[4], ("HALOD_NODE", "n1".to_string()));
    assert_eq!(environment[5], ("HALOD_GAINED_ROUTES", String::new()));
    assert_eq!(environment[6], ("HALOD_GAINED_PORTS", String::new()));
    assert_eq!(
        environment[7],
        (
            "HALOD_LOST_ROUTES",
            "13,14,15,16,17,18,19,20,21,22,23,24".to_string()
        )
    );
    assert!(
        environment[8].1.starts_with("8012,8013,"),
        "{environment:?}"
    );
    assert!(environment[8].1.ends_with(",9022,9023"), "{environment:?}");

    // Heartbeats keep both alive well past the 150 ms dead window.
    tokio::time::sleep(Duration::from_millis(600)).await;

    // n2 leaves: it hears `moved`, n1 hears `assigned`.
    let goodbye = n2.bye().await.unwrap();
    assert_eq!(goodbye.len(), 1);
    assert!(
        goodbye[0]
            .line
            .starts_with(r#"{"type":"moved","routes":[{"route":13,"ports":[8012,9012],"to":"n1"}"#)
    );
    let assigned = n1.recv().await.unwrap();
    assert!(matches!(assigned.message, GatewayMessage::Assigned { .. }));
    assert_eq!(n1.routes().len(), 24);
    shutdown.cancel();
}

#[tokio::test]
async fn refusals_are_errors_with_the_line() {
    let (gateway, shutdown) = gateway(Some("t0ken")).await;
    let mut wrong = options(&gateway, "n1", 11);
    wrong.token = Some("guess".into());
    match Client::connect(&wrong).await {
        Err(ClientError::Refused { code, line, .. }) => {
            assert_eq!(code, ErrorCode::BadToken);
            assert_eq!(
                line,
                r#"{"type":"error","code":"bad_token","message":"wrong token"}"#
            );
        }
        other => panic!("{other:?}"),
    }
    let (_n1, _) = Client::connect(&options(&gateway, "n1", 11)).await.unwrap();
    match Client::connect(&options(&gateway, "n1", 12)).await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::DuplicateName),
        other => panic!("{other:?}"),
    }
    shutdown.cancel();
    let unreachable = options("127.0.0.1:1", "n3", 13);
    assert!(matches!(
        Client::connect(&unreachable).await,
        Err(ClientError::Connect { .. })
    ));
}

#[test]
fn jitter_stays_within_half_again() {
    for _ in 0..100 {
        let delay = jitter(Duration::from_millis(100));
        assert!((100..=150).contains(&delay.as_millis()), "{delay:?}");
    }
}

/// One step of a [`scripted_gateway`].
enum Step {
    Send(&'static str),
    Sleep(Duration),
    /// Reads the node's lines (hello, heartbeats) until its `bye`.
    AwaitBye,
    /// Keeps the connection open (and unread) until the test ends.
    Hold,
}

/// A fake gateway on loopback that reads `hello`, then plays `script` on the
/// first connection, then closes it. Returns its address.
async fn scripted_gateway(script: Vec<Step>) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (reader, mut writer) = stream.into_split();
        let mut lines = BufReader::new(reader).lines();
        let hello = lines.next_line().await.unwrap().unwrap();
        assert!(hello.starts_with(r#"{"type":"hello""#), "{hello}");
        for step in script {
            match step {
                Step::Send(line) => writer
                    .write_all(format!("{line}\n").as_bytes())
                    .await
                    .unwrap(),
                Step::Sleep(delay) => tokio::time::sleep(delay).await,
                Step::AwaitBye => {
                    while let Some(line) = lines.next_line().await.unwrap() {
                        if line == r#"{"type":"bye"}"# {
                            break;
                        }
                    }
                }
                Step::Hold => std::future::pending::<()>().await,
            }
        }
    });
    address
}

const WELCOME_1_2_3: &str = r#"{"type":"welcome","role":"active","heartbeat_ms":50,"routes":[{"route":1,"ports":[8000,9000]},{"route":2,"ports":[8001,9001]},{"route":3,"ports":[8002,9002]}]}"#;
const MOVED_2_3_DRAIN: &str = r#"{"type":"moved","routes":[{"route":2,"ports":[8001,9001],"to":"n2"},{"route":3,"ports":[8002,9002],"to":"n2"}],"drain_ms":30000}"#;
const DRAIN_DONE_2: &str = r#"{"type":"drain_done","routes":[{"route":2,"ports":[8001,9001]}]}"#;
const DRAIN_DONE_3: &str = r#"{"type":"drain_done","routes":[{"route":3,"ports":[8002,9002]}]}"#;

/// A scratch directory for one test.
fn scratch(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("halod-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An agent whose hook appends its drain variables to `dir/hook.log`, and
/// whose state file is `dir/node.json`.
fn test_agent(gateway: &str, dir: &std::path::Path) -> Agent {
    let hook = format!(
        "echo \"$HALOD_EVENT routes=$HALOD_ROUTES lost=$HALOD_LOST_ROUTES drain_ms=$HALOD_DRAIN_MS \
         drained=$HALOD_DRAINED_ROUTES drained_ports=$HALOD_DRAINED_PORTS\" >> {}",
        dir.join("hook.log").display()
    );
    Agent {
        options: options(gateway, "n1", 11),
        hook: Some(Hook::spawn(hook, "n1".into())),
        publisher: Some(StatePublisher::new(dir.join("node.json"))),
        known: None,
        draining: Draining::default(),
        hurry: false,
    }
}

fn draining_routes(dir: &std::path::Path) -> Vec<u64> {
    let text = std::fs::read_to_string(dir.join("node.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    state["draining"]
        .as_array()
        .unwrap_or_else(|| panic!("no draining list: {text}"))
        .iter()
        .map(|entry| {
            let until = entry["until_unix_ms"].as_u64().unwrap();
            let left = until.saturating_sub(crate::api::unix_ms());
            assert!((20_000..=30_000).contains(&left), "{text}");
            entry["route"].as_u64().unwrap()
        })
        .collect()
}

fn hook_log(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("hook.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn the_agent_tells_the_drain_and_its_end_to_the_hook_and_the_state_file() {
    let dir = scratch("agent-drain");
    let gateway = scripted_gateway(vec![
        Step::Send(WELCOME_1_2_3),
        Step::Send(MOVED_2_3_DRAIN),
        Step::Send(DRAIN_DONE_2),
        Step::Send(DRAIN_DONE_3),
        Step::Hold,
    ])
    .await;
    let mut agent = test_agent(&gateway, &dir);
    let (mut client, welcome) = Client::connect(&agent.options).await.unwrap();
    agent.apply(&client, &welcome.message);
    assert!(draining_routes(&dir).is_empty());
    let moved = client.recv().await.unwrap();
    assert_eq!(moved.line, MOVED_2_3_DRAIN, "printed as received");
    agent.apply(&client, &moved.message);
    assert_eq!(draining_routes(&dir), [2, 3]);
    let done = client.recv().await.unwrap();
    assert_eq!(done.line, DRAIN_DONE_2);
    agent.apply(&client, &done.message);
    assert_eq!(draining_routes(&dir), [3]);
    let done = client.recv().await.unwrap();
    agent.apply(&client, &done.message);
    assert!(draining_routes(&dir).is_empty());
    assert_eq!(client.routes(), [1]);
    agent.hook.take().unwrap().finish().await;
    assert_eq!(
        hook_log(&dir),
        [
            "welcome routes=1,2,3 lost= drain_ms=0 drained= drained_ports=",
            "moved routes=1 lost=2,3 drain_ms=30000 drained= drained_ports=",
            "drain_done routes=1 lost= drain_ms=0 drained=2 drained_ports=8001,9001",
            "drain_done routes=1 lost= drain_ms=0 drained=3 drained_ports=8002,9002",
        ]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn bye_waits_out_a_drain_longer_than_its_timeout() {
    let gateway = scripted_gateway(vec![
        Step::Send(WELCOME_1_2_3),
        Step::AwaitBye,
        Step::Send(
            r#"{"type":"moved","routes":[{"route":1,"ports":[8000,9000],"to":"n2"}],"drain_ms":10000}"#,
        ),
        Step::Sleep(BYE_TIMEOUT + Duration::from_secs(2)),
        Step::Send(r#"{"type":"drain_done","routes":[{"route":1,"ports":[8000,9000]}]}"#),
    ])
    .await;
    let (mut client, _) = Client::connect(&options(&gateway, "n1", 11)).await.unwrap();
    tokio::time::pause();
    let start = tokio::time::Instant::now();
    let messages = client.bye().await.unwrap();
    let types: Vec<_> = messages
        .iter()
        .map(|m| m.line.split('"').nth(3).unwrap().to_string())
        .collect();
    assert_eq!(types, ["moved", "drain_done"]);
    assert!(start.elapsed() >= BYE_TIMEOUT + Duration::from_secs(2));
    assert_eq!(client.routes(), [2, 3]);

    // A gateway that never closes: bye gives up BYE_TIMEOUT after the window.
    let gateway = scripted_gateway(vec![
        Step::Send(WELCOME_1_2_3),
        Step::AwaitBye,
        Step::Send(MOVED_2_3_DRAIN),
        Step::Hold,
    ])
    .await;
    tokio::time::resume();
    let (mut client, _) = Client::connect(&options(&gateway, "n1", 11)).await.unwrap();
    tokio::time::pause();
    let start = tokio::time::Instant::now();
    assert_eq!(client.bye().await.unwrap().len(), 1);
    let waited = start.elapsed();
    let window = Duration::from_millis(30_000) + BYE_TIMEOUT;
    assert!(
        waited >= window && waited < window + Duration::from_secs(1),
        "{waited:?}"
    );
}

/// The agent after `bye`, with signal handlers installed in the test process
/// (this is the only test that installs them, and it raises SIGTERM itself).
#[tokio::test]
async fn after_bye_the_agent_runs_the_hook_until_the_drain_ends_or_it_is_asked_again() {
    let dir = scratch("agent-bye-drain");
    let mut signals = Signals::install().unwrap();
    let mut stdout = tokio::io::stdout();
    let gateway = scripted_gateway(vec![
        Step::Send(WELCOME_1_2_3),
        Step::AwaitBye,
        Step::Send(MOVED_2_3_DRAIN),
        Step::Send(r#"{"type":"moved","routes":[{"route":1,"ports":[8000,9000],"to":"n2"}],"drain_ms":30000}"#),
        Step::Sleep(Duration::from_secs(20)),
        Step::Send(
            r#"{"type":"drain_done","routes":[{"route":1,"ports":[8000,9000]},{"route":2,"ports":[8001,9001]},{"route":3,"ports":[8002,9002]}]}"#,
        ),
    ])
    .await;
    let mut agent = test_agent(&gateway, &dir);
    let (client, welcome) = Client::connect(&agent.options).await.unwrap();
    agent.apply(&client, &welcome.message);
    tokio::time::pause();
    let start = tokio::time::Instant::now();
    agent.leave(client, &mut stdout, &mut signals).await;
    assert!(
        start.elapsed() >= Duration::from_secs(20),
        "waited for the drain"
    );
    assert!(!agent.hurry);
    assert!(agent.draining.is_empty());
    tokio::time::resume();
    agent.hook.take().unwrap().finish().await;
    assert_eq!(
        hook_log(&dir),
        [
            "welcome routes=1,2,3 lost= drain_ms=0 drained= drained_ports=",
            "moved routes=1 lost=2,3 drain_ms=30000 drained= drained_ports=",
            "moved routes= lost=1 drain_ms=30000 drained= drained_ports=",
            "drain_done routes= lost= drain_ms=0 drained=1,2,3 drained_ports=8000,8001,8002,9000,9001,9002",
        ]
    );

    // A second SIGTERM during the drain: the agent stops waiting at once.
    let gateway = scripted_gateway(vec![
        Step::Send(WELCOME_1_2_3),
        Step::AwaitBye,
        Step::Send(MOVED_2_3_DRAIN),
        Step::Hold,
    ])
    .await;
    let mut agent = test_agent(&gateway, &dir);
    agent.hook = None;
    let (client, _) = Client::connect(&agent.options).await.unwrap();
    let start = std::time::Instant::now();
    tokio::spawn(async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM).unwrap();
    });
    agent.leave(client, &mut stdout, &mut signals).await;
    assert!(agent.hurry);
    assert!(start.elapsed() < BYE_TIMEOUT, "{:?}", start.elapsed());
    assert_eq!(draining_routes(&dir), [2, 3]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_node_that_leaves_drains_until_the_gateway_says_drain_done() {
    let (gateway, shutdown) = gateway_draining(Some("t0ken"), 300).await;
    let (mut n1, _) = Client::connect(&options(&gateway, "n1", 11)).await.unwrap();
    let (mut n2, _) = Client::connect(&options(&gateway, "n2", 12)).await.unwrap();
    let moved = n1.recv().await.unwrap();
    assert!(
        matches!(moved.message, GatewayMessage::Moved { drain_ms: 300, .. }),
        "{}",
        moved.line
    );
    let started = std::time::Instant::now();
    let goodbye = n2.bye().await.unwrap();
    let kinds: Vec<String> = goodbye
        .iter()
        .map(|m| m.line.split('"').nth(3).unwrap_or_default().to_string())
        .collect();
    assert_eq!(kinds, ["moved", "drain_done"], "{goodbye:?}");
    assert!(
        goodbye[0].line.contains(r#""drain_ms":300"#),
        "{}",
        goodbye[0].line
    );
    match &goodbye[1].message {
        GatewayMessage::DrainDone { routes } => assert_eq!(routes.len(), 12),
        other => panic!("expected drain_done, got {other:?}"),
    }
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "drain_done came before the window ended"
    );
    shutdown.cancel();
}

/// A gateway of a build that speaks version 1 only: it refuses `hello` with
/// any other version as such a gateway does (`bad_request`), and welcomes a
/// version-1 node. Returns its address and the versions it was offered.
async fn version_1_gateway() -> (String, std::sync::Arc<std::sync::Mutex<Vec<u64>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let offered = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = offered.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (reader, mut writer) = stream.into_split();
            let mut lines = BufReader::new(reader).lines();
            let hello = lines.next_line().await.unwrap().unwrap();
            let hello: serde_json::Value = serde_json::from_str(&hello).unwrap();
            let version = hello["version"].as_u64().unwrap();
            seen.lock().unwrap().push(version);
            let answer = if version == 1 {
                WELCOME_1_2_3.to_string()
            } else {
                format!(
                    r#"{{"type":"error","code":"bad_request","message":"unsupported protocol version {version} (this build speaks 1)"}}"#
                )
            };
            writer
                .write_all(format!("{answer}\n").as_bytes())
                .await
                .unwrap();
            // Held open until the test ends.
            tokio::spawn(async move {
                let _lines = lines;
                let _writer = writer;
                std::future::pending::<()>().await
            });
        }
    });
    (address, offered)
}

#[tokio::test]
async fn a_version_2_client_falls_back_to_version_1_on_an_older_gateway() {
    let (gateway, offered) = version_1_gateway().await;
    let (client, welcome) = Client::connect(&options(&gateway, "n1", 11)).await.unwrap();
    assert_eq!(*offered.lock().unwrap(), [2, 1]);
    assert_eq!(client.version(), 1);
    assert_eq!(
        client.udp_heartbeats(),
        None,
        "TCP heartbeats with version 1"
    );
    assert_eq!(client.routes(), [1, 2, 3]);
    assert!(matches!(
        welcome.message,
        GatewayMessage::Welcome { hb_udp: None, .. }
    ));
    // Asked for version 1, it says 1 at once.
    let (gateway, offered) = version_1_gateway().await;
    let options = ClientOptions {
        version: 1,
        ..options(&gateway, "n1", 11)
    };
    let (client, _) = Client::connect(&options).await.unwrap();
    assert_eq!(*offered.lock().unwrap(), [1]);
    assert_eq!(client.version(), 1);
}

#[tokio::test]
async fn a_version_2_client_is_offered_udp_heartbeats_only_when_the_gateway_has_them() {
    // The in-process gateway of these tests takes no UDP heartbeats: a
    // version-2 welcome without `hb_udp` means heartbeats over TCP.
    let (gateway, shutdown) = gateway(Some("t0ken")).await;
    let (client, welcome) = Client::connect(&options(&gateway, "n1", 11)).await.unwrap();
    assert_eq!(client.version(), 2);
    assert!(matches!(
        welcome.message,
        GatewayMessage::Welcome { hb_udp: None, .. }
    ));
    assert_eq!(client.udp_heartbeats(), None);
    shutdown.cancel();
}
