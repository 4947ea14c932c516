//! What the agent knows of its node (role, the full route set, whether it is
//! registered now), what changed with each message, and the `--state-file`
//! that shows it to the push server beside the agent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::Client;
use crate::protocol::{MovedRoute, Role, Route, RoutePorts};

/// The node as the gateway last described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub role: Role,
    /// Every route the node serves, with its ports (one per listener group).
    pub routes: BTreeMap<Route, Vec<u16>>,
}

impl NodeState {
    pub fn of(client: &Client) -> NodeState {
        NodeState {
            role: client.role(),
            routes: client.route_ports().clone(),
        }
    }

    /// Every port of every route, ascending.
    pub fn ports(&self) -> Vec<u16> {
        ports_of(self.routes.values())
    }
}

/// Routes the node lost with a drain (a `moved` with `drain_ms`) whose
/// `drain_done` has not come yet: the node still holds their connections that
/// were open at the `moved`, until `until_unix_ms` at the latest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Draining {
    /// Route -> (its ports, when its drain window ends, Unix ms).
    routes: BTreeMap<Route, (Vec<u16>, u64)>,
}

impl Draining {
    /// A `moved` with `drain_ms` > 0 received at `now_unix_ms`.
    pub fn start(&mut self, routes: &[MovedRoute], drain_ms: u64, now_unix_ms: u64) {
        let until = now_unix_ms.saturating_add(drain_ms);
        for route in routes {
            self.routes
                .insert(route.route, (route.ports.clone(), until));
        }
    }

    /// A `drain_done`: its routes stop draining. Returns the routes (with the
    /// ports the message gives) whose connections are lost for this node now:
    /// those of the message that the node does not serve again by now.
    pub fn done(
        &mut self,
        routes: &[RoutePorts],
        served: &BTreeMap<Route, Vec<u16>>,
    ) -> BTreeMap<Route, Vec<u16>> {
        for route in routes {
            self.routes.remove(&route.route);
        }
        routes
            .iter()
            .filter(|route| !served.contains_key(&route.route))
            .map(|route| (route.route, route.ports.clone()))
            .collect()
    }

    /// Keeps only what is still valid at `now_unix_ms`: windows not over yet,
    /// of routes the node does not serve again (`served`: the full set now).
    pub fn retain_valid(&mut self, served: &BTreeMap<Route, Vec<u16>>, now_unix_ms: u64) {
        self.routes
            .retain(|route, (_, until)| *until > now_unix_ms && !served.contains_key(route));
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The routes still draining at `now_unix_ms`, ascending.
    fn entries(&self, now_unix_ms: u64) -> Vec<DrainingRoute> {
        self.routes
            .iter()
            .filter(|(_, (_, until))| *until > now_unix_ms)
            .map(|(route, (ports, until))| DrainingRoute {
                route: *route,
                ports: ports.clone(),
                until_unix_ms: *until,
            })
            .collect()
    }
}

/// One change of the node's state, as `--exec` is told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `welcome`, `assigned`, `moved`, `drain_done`, `role`, or `resync`
    /// (SIGUSR1: nothing changed, the hook runs again with the full state).
    pub event: &'static str,
    /// The state after the change: always the full set.
    pub state: NodeState,
    /// Routes the node gained with this change, with their ports.
    pub gained: BTreeMap<Route, Vec<u16>>,
    /// Routes the node lost with this change, with their ports.
    pub lost: BTreeMap<Route, Vec<u16>>,
    /// A `moved`'s `drain_ms`: how long the node keeps the lost routes' open
    /// connections (0: none, close them now).
    pub drain_ms: u64,
    /// A `drain_done`'s routes: their connections are lost for this node now.
    pub drained: BTreeMap<Route, Vec<u16>>,
}

impl Change {
    /// The change from `before` (`None`: the agent knew nothing yet) to `after`.
    pub fn between(event: &'static str, before: Option<&NodeState>, after: &NodeState) -> Change {
        let empty = BTreeMap::new();
        let before_routes = before.map_or(&empty, |state| &state.routes);
        let difference = |a: &BTreeMap<Route, Vec<u16>>, b: &BTreeMap<Route, Vec<u16>>| {
            a.iter()
                .filter(|(route, _)| !b.contains_key(route))
                .map(|(route, ports)| (*route, ports.clone()))
                .collect()
        };
        Change {
            event,
            state: after.clone(),
            gained: difference(&after.routes, before_routes),
            lost: difference(before_routes, &after.routes),
            drain_ms: 0,
            drained: BTreeMap::new(),
        }
    }

    /// The environment `--exec` gets: the full state, what this change gained
    /// and lost, the drain of what it lost, and what a `drain_done` ended.
    pub fn environment(&self, node: &str) -> Vec<(&'static str, String)> {
        vec![
            ("HALOD_EVENT", self.event.to_string()),
            ("HALOD_ROLE", self.state.role.as_str().to_string()),
            ("HALOD_ROUTES", join(self.state.routes.keys())),
            ("HALOD_PORTS", join(&self.state.ports())),
            ("HALOD_NODE", node.to_string()),
            ("HALOD_GAINED_ROUTES", join(self.gained.keys())),
            ("HALOD_GAINED_PORTS", join(&ports_of(self.gained.values()))),
            ("HALOD_LOST_ROUTES", join(self.lost.keys())),
            ("HALOD_LOST_PORTS", join(&ports_of(self.lost.values()))),
            ("HALOD_DRAIN_MS", self.drain_ms.to_string()),
            ("HALOD_DRAINED_ROUTES", join(self.drained.keys())),
            (
                "HALOD_DRAINED_PORTS",
                join(&ports_of(self.drained.values())),
            ),
        ]
    }
}

fn ports_of<'a>(ports: impl Iterator<Item = &'a Vec<u16>>) -> Vec<u16> {
    let mut ports: Vec<u16> = ports.flatten().copied().collect();
    ports.sort_unstable();
    ports
}

fn join<'a>(items: impl IntoIterator<Item = &'a u16>) -> String {
    items
        .into_iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// What `--state-file` holds (docs/operations.md, "The node agent").
#[derive(Debug, Serialize)]
struct StateFile<'a> {
    node: &'a str,
    gateway: &'a str,
    /// Registered with the gateway now; `false` while the agent reconnects
    /// (the routes are the last ones the gateway gave).
    connected: bool,
    role: Role,
    routes: Vec<RoutePorts>,
    ports: Vec<u16>,
    /// Routes lost with a drain whose `drain_done` has not come yet.
    draining: Vec<DrainingRoute>,
    updated_unix_ms: u64,
}

#[derive(Debug, Serialize)]
struct DrainingRoute {
    route: Route,
    ports: Vec<u16>,
    until_unix_ms: u64,
}

/// The agent's `--state-file`: rewritten whole (a temporary file renamed over
/// it, so a reader never sees half a file) on every change, removed on exit.
#[derive(Debug)]
pub struct StatePublisher {
    path: PathBuf,
    temporary: PathBuf,
}

impl StatePublisher {
    pub fn new(path: PathBuf) -> StatePublisher {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".tmp-{}", std::process::id()));
        let temporary = path.with_file_name(name);
        StatePublisher { path, temporary }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(
        &self,
        node: &str,
        gateway: &str,
        connected: bool,
        state: &NodeState,
        draining: &Draining,
    ) -> std::io::Result<()> {
        let now = crate::api::unix_ms();
        let file = StateFile {
            node,
            gateway,
            connected,
            role: state.role,
            routes: state
                .routes
                .iter()
                .map(|(route, ports)| RoutePorts {
                    route: *route,
                    ports: ports.clone(),
                })
                .collect(),
            ports: state.ports(),
            draining: draining.entries(now),
            updated_unix_ms: now,
        };
        let mut text = serde_json::to_string(&file).map_err(std::io::Error::other)?;
        text.push('\n');
        std::fs::write(&self.temporary, text)?;
        std::fs::rename(&self.temporary, &self.path).inspect_err(|_| {
            let _ = std::fs::remove_file(&self.temporary);
        })
    }

    /// Removes the file (the agent exits: it no longer vouches for it).
    pub fn remove(&self) -> std::io::Result<()> {
        let _ = std::fs::remove_file(&self.temporary);
        match std::fs::remove_file(&self.path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(role: Role, routes: &[Route]) -> NodeState {
        NodeState {
            role,
            routes: routes
                .iter()
                .map(|route| (*route, vec![7999 + route, 8999 + route]))
                .collect(),
        }
    }

    fn moved(routes: &[Route]) -> Vec<MovedRoute> {
        routes
            .iter()
            .map(|route| MovedRoute {
                route: *route,
                ports: vec![7999 + route, 8999 + route],
                to: Some("n2".into()),
            })
            .collect()
    }

    fn route_ports(routes: &[Route]) -> Vec<RoutePorts> {
        routes
            .iter()
            .map(|route| RoutePorts {
                route: *route,
                ports: vec![7999 + route, 8999 + route],
            })
            .collect()
    }

    #[test]
    fn a_drain_lasts_until_its_drain_done_its_window_or_the_route_coming_back() {
        let mut draining = Draining::default();
        draining.start(&moved(&[2, 3]), 30_000, 1_000);
        draining.start(&moved(&[5]), 10_000, 2_000);
        let served = state(Role::Active, &[1]).routes;
        draining.retain_valid(&served, 11_999);
        let routes = |d: &Draining| d.routes.keys().copied().collect::<Vec<_>>();
        assert_eq!(routes(&draining), [2, 3, 5]);
        assert_eq!(draining.entries(11_999)[2].until_unix_ms, 12_000);
        // The state file leaves out what ended, even before it is pruned.
        let shown = draining.entries(12_000);
        assert_eq!(shown.iter().map(|e| e.route).collect::<Vec<_>>(), [2, 3]);
        // Route 5's window is over (a drain_done lost with a reconnect).
        draining.retain_valid(&served, 12_000);
        assert_eq!(routes(&draining), [2, 3]);
        // Route 3 is served again (assigned back): nothing of it drains.
        draining.retain_valid(&state(Role::Active, &[1, 3]).routes, 12_000);
        assert_eq!(routes(&draining), [2]);
        // drain_done: removed, and its connections are lost unless the node
        // serves the route again by now.
        let mut again = draining.clone();
        let drained = draining.done(&route_ports(&[2]), &served);
        assert_eq!(drained, BTreeMap::from([(2, vec![8001, 9001])]));
        assert!(draining.is_empty());
        let drained = again.done(&route_ports(&[2]), &state(Role::Active, &[2]).routes);
        assert!(drained.is_empty());
        assert!(again.is_empty());
    }

    #[test]
    fn the_hook_hears_the_drain_and_its_end() {
        let before = state(Role::Active, &[1, 2, 3]);
        let after = state(Role::Active, &[1]);
        let mut change = Change::between("moved", Some(&before), &after);
        let environment: BTreeMap<_, _> = change.environment("n1").into_iter().collect();
        assert_eq!(environment["HALOD_DRAIN_MS"], "0");
        assert_eq!(environment["HALOD_DRAINED_ROUTES"], "");
        change.drain_ms = 30_000;
        let environment: BTreeMap<_, _> = change.environment("n1").into_iter().collect();
        assert_eq!(environment["HALOD_DRAIN_MS"], "30000");
        assert_eq!(environment["HALOD_LOST_PORTS"], "8001,8002,9001,9002");
        let mut done = Change::between("drain_done", Some(&after), &after);
        done.drained = BTreeMap::from([(3, vec![8002, 9002]), (2, vec![8001, 9001])]);
        let environment: BTreeMap<_, _> = done.environment("n1").into_iter().collect();
        assert_eq!(environment["HALOD_EVENT"], "drain_done");
        assert_eq!(environment["HALOD_DRAINED_ROUTES"], "2,3");
        assert_eq!(environment["HALOD_DRAINED_PORTS"], "8001,8002,9001,9002");
        assert_eq!(environment["HALOD_LOST_ROUTES"], "");
        assert_eq!(environment["HALOD_DRAIN_MS"], "0");
        assert_eq!(environment["HALOD_ROUTES"], "1");
    }

    #[test]
    fn a_change_carries_the_full_set_and_what_moved() {
        let first = Change::between("welcome", None, &state(Role::Active, &[1, 2, 3]));
        assert_eq!(first.gained.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
        assert!(first.lost.is_empty());
        let before = state(Role::Active, &[1, 2, 3]);
        let after = state(Role::Active, &[1, 4]);
        let change = Change::between("moved", Some(&before), &after);
        let environment: BTreeMap<_, _> = change.environment("n1").into_iter().collect();
        assert_eq!(environment["HALOD_ROUTES"], "1,4");
        assert_eq!(environment["HALOD_PORTS"], "8000,8003,9000,9003");
        assert_eq!(environment["HALOD_GAINED_ROUTES"], "4");
        assert_eq!(environment["HALOD_GAINED_PORTS"], "8003,9003");
        assert_eq!(environment["HALOD_LOST_ROUTES"], "2,3");
        assert_eq!(environment["HALOD_LOST_PORTS"], "8001,8002,9001,9002");
        let spare = Change::between("role", Some(&after), &state(Role::Spare, &[]));
        let environment: BTreeMap<_, _> = spare.environment("n1").into_iter().collect();
        assert_eq!(environment["HALOD_ROLE"], "spare");
        assert_eq!(environment["HALOD_ROUTES"], "");
        assert_eq!(environment["HALOD_LOST_ROUTES"], "1,4");
    }

    #[test]
    fn the_state_file_is_replaced_whole_and_removed() {
        let dir = std::env::temp_dir().join(format!("halod-node-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.json");
        let publisher = StatePublisher::new(path.clone());
        publisher
            .write(
                "n1",
                "198.19.0.1:7000",
                true,
                &state(Role::Active, &[2]),
                &Draining::default(),
            )
            .unwrap();
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(written["node"], "n1");
        assert_eq!(written["connected"], true);
        assert_eq!(written["role"], "active");
        assert_eq!(
            written["routes"],
            serde_json::json!([{"route": 2, "ports": [8001, 9001]}])
        );
        assert_eq!(written["ports"], serde_json::json!([8001, 9001]));
        assert_eq!(written["draining"], serde_json::json!([]));
        let mut draining = Draining::default();
        let now = crate::api::unix_ms();
        draining.start(&moved(&[3]), 30_000, now);
        draining.start(&moved(&[4]), 30_000, now - 30_000);
        publisher
            .write(
                "n1",
                "198.19.0.1:7000",
                false,
                &state(Role::Active, &[2]),
                &draining,
            )
            .unwrap();
        let rewritten: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(rewritten["connected"], false);
        assert_eq!(
            rewritten["draining"],
            serde_json::json!([{"route": 3, "ports": [8002, 9002], "until_unix_ms": now + 30_000}])
        );
        // Only the file itself is left in the directory: no temporary file.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        publisher.remove().unwrap();
        assert!(!path.exists());
        publisher.remove().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
