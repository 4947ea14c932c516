//! What one event changes: the output of [`Cluster::apply`](super::Cluster::apply).

use serde::Serialize;

use super::{Event, Role, Route, Slot};

/// Everything one event changes, for the data plane and the nodes to act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The event this plan carries out.
    pub event: Event,
    /// Every route whose node changed, ascending by route.
    pub moves: Vec<RouteMove>,
    /// Every slot whose node changed, including a slot created or removed,
    /// ascending by slot.
    pub slots: Vec<SlotChange>,
    /// Every node whose role changed (`None` = not registered): the node that
    /// went away first, then the node that came in.
    pub roles: Vec<RoleChange>,
    /// Data-plane writes, in an order that never points a route at a slot
    /// without a node (and never at a departed node longer than needed).
    pub writes: Vec<TableWrite>,
    /// Messages to nodes, in sending order: every `Moved` (the departing node
    /// first, then by slot), then every `Role`, then every `Assigned` (by slot).
    pub notifications: Vec<Notification>,
    /// Every route that moved away from a node that is still alive (every
    /// move but a failed node's), with that node, ascending by route: the
    /// route's connections open at the move may keep reaching it for a
    /// while (`nodes.drain_ms`).
    pub drains: Vec<(Route, String)>,
}

/// One route whose node changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteMove {
    pub route: Route,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// One slot whose node changed; `from: None` = slot created, `to: None` =
/// slot removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SlotChange {
    pub slot: Slot,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// One node whose role changed; `None` = not registered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoleChange {
    pub node: String,
    pub from: Option<Role>,
    pub to: Option<Role>,
}

/// One write to the data-plane tables (slot -> node, route -> slot).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "table", rename_all = "lowercase")]
pub enum TableWrite {
    /// Slot `slot` now reaches `node`; `None` removes the slot.
    Slot { slot: Slot, node: Option<String> },
    /// Route `route` is now served by `slot`; `None` = no node serves it.
    Route { route: Route, slot: Option<Slot> },
}

/// One message to one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Notification {
    /// To the node that lost `routes`: each route with its new node (`None`
    /// when no node is active any more). Sent before or when the data plane
    /// switches, so the node can close that route's client connections.
    Moved {
        node: String,
        routes: Vec<(Route, Option<String>)>,
    },
    /// To the node that gained `routes` (ascending).
    Assigned { node: String, routes: Vec<Route> },
    /// To a node whose role changed and that is still registered.
    Role { node: String, role: Role },
}

impl Plan {
    pub(super) fn new(event: Event) -> Plan {
        Plan {
            event,
            moves: Vec::new(),
            slots: Vec::new(),
            roles: Vec::new(),
            writes: Vec::new(),
            notifications: Vec::new(),
            drains: Vec::new(),
        }
    }

    /// Fills `drains` from `moves`: a failed node drains nothing.
    pub(super) fn with_drains(mut self) -> Plan {
        let failed = match &self.event {
            Event::Fail(name) => Some(name.as_str()),
            _ => None,
        };
        self.drains = self
            .moves
            .iter()
            .filter_map(|change| {
                let from = change.from.as_deref()?;
                (Some(from) != failed).then(|| (change.route, from.to_string()))
            })
            .collect();
        self
    }
}
