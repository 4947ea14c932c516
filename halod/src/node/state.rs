//! What the agent knows of its node (role, the full route set, whether it is
//! registered now), what changed with each message, and the `--state-file`
//! that shows it to the push server beside the agent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::Client;
use crate::protocol::{Role, Route, RoutePorts};

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

/// One change of the node's state, as `--exec` is told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `welcome`, `assigned`, `moved`, `role`, or `resync` (SIGUSR1: nothing
    /// changed, the hook runs again with the full state).
    pub event: &'static str,
    /// The state after the change: always the full set.
    pub state: NodeState,
    /// Routes the node gained with this change, with their ports.
    pub gained: BTreeMap<Route, Vec<u16>>,
    /// Routes the node lost with this change, with their ports.
    pub lost: BTreeMap<Route, Vec<u16>>,
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
        }
    }

    /// The environment `--exec` gets: the full state, and what this change
    /// gained and lost.
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
    updated_unix_ms: u64,
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
    ) -> std::io::Result<()> {
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
            updated_unix_ms: crate::api::unix_ms(),
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
            .write("n1", "198.19.0.1:7000", true, &state(Role::Active, &[2]))
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
        publisher
            .write("n1", "198.19.0.1:7000", false, &state(Role::Active, &[2]))
            .unwrap();
        let rewritten: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(rewritten["connected"], false);
        // Only the file itself is left in the directory: no temporary file.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        publisher.remove().unwrap();
        assert!(!path.exists());
        publisher.remove().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
