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

async fn gateway(token: Option<&str>) -> (String, CancellationToken) {
    let config = test_config("heartbeat_ms: 50, dead_after: 3, max_nodes: 10");
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
