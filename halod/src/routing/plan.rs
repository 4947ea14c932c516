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

impl Plan {
    /// The plans of consecutive joins, carried out as one: what changes
    /// between the table before the first and the table after the last.
    ///
    /// Every join was applied by the routing rules in turn, so the table is
    /// exactly the one the events give one by one; only what the data plane
    /// and the nodes are told is net. A route that moved twice is written
    /// once, and its node before the first join is told `moved` once, with
    /// its node after the last. A node that gained a route and lost it again
    /// hears nothing of it. A burst of thousands of joins (a gateway restart,
    /// a power event) then costs one data-plane write per route it changes,
    /// not one per move.
    ///
    /// `event` is the last join's. Plans of other events are not merged
    /// (`None` for them, and for an empty list): a failed node must not hear
    /// `moved`, which a merge of its plan would not know.
    pub fn merge_joins(plans: Vec<Plan>) -> Option<Plan> {
        use std::collections::{BTreeMap, HashMap};
        if plans
            .iter()
            .any(|plan| !matches!(plan.event, Event::Join(_)))
        {
            return None;
        }
        let event = plans.last()?.event.clone();
        // Per key: the value before the first plan and after the last.
        let mut moves: BTreeMap<Route, (Option<String>, Option<String>)> = BTreeMap::new();
        let mut slots: BTreeMap<Slot, (Option<String>, Option<String>)> = BTreeMap::new();
        let mut roles: Vec<(String, Option<Role>, Option<Role>)> = Vec::new();
        let mut role_index: HashMap<String, usize> = HashMap::new();
        let mut slot_writes: BTreeMap<Slot, Option<String>> = BTreeMap::new();
        let mut route_writes: BTreeMap<Route, Option<Slot>> = BTreeMap::new();
        for plan in plans {
            for change in plan.moves {
                moves
                    .entry(change.route)
                    .and_modify(|(_, to)| *to = change.to.clone())
                    .or_insert((change.from, change.to));
            }
            for change in plan.slots {
                slots
                    .entry(change.slot)
                    .and_modify(|(_, to)| *to = change.to.clone())
                    .or_insert((change.from, change.to));
            }
            for change in plan.roles {
                match role_index.get(&change.node) {
                    Some(&i) => roles[i].2 = change.to,
                    None => {
                        role_index.insert(change.node.clone(), roles.len());
                        roles.push((change.node, change.from, change.to));
                    }
                }
            }
            for write in plan.writes {
                match write {
                    TableWrite::Slot { slot, node } => {
                        slot_writes.insert(slot, node);
                    }
                    TableWrite::Route { route, slot } => {
                        route_writes.insert(route, slot);
                    }
                }
            }
        }
        let mut merged = Plan::new(event);
        merged.moves = moves
            .into_iter()
            .filter(|(_, (from, to))| from != to)
            .map(|(route, (from, to))| RouteMove { route, from, to })
            .collect();
        merged.slots = slots
            .into_iter()
            .filter(|(_, (from, to))| from != to)
            .map(|(slot, (from, to))| SlotChange { slot, from, to })
            .collect();
        merged.roles = roles
            .into_iter()
            .filter(|(_, from, to)| from != to)
            .map(|(node, from, to)| RoleChange { node, from, to })
            .collect();
        // Slots get their nodes first, then routes move, then slots that went
        // away are removed: no route ever points at a slot without a node.
        let (filled, emptied): (Vec<_>, Vec<_>) = slot_writes
            .into_iter()
            .partition(|(_, node)| node.is_some());
        merged.writes = filled
            .into_iter()
            .map(|(slot, node)| TableWrite::Slot { slot, node })
            .chain(
                route_writes
                    .into_iter()
                    .map(|(route, slot)| TableWrite::Route { route, slot }),
            )
            .chain(
                emptied
                    .into_iter()
                    .map(|(slot, node)| TableWrite::Slot { slot, node }),
            )
            .collect();
        merged.notifications = net_notifications(&merged.moves, &merged.roles);
        Some(merged.with_drains())
    }
}

/// The messages of a net change: `moved` to each node that lost routes,
/// `role` to each node whose role changed, `assigned` to each node that
/// gained routes; nodes in the order they first lost or gained (`moves`
/// ascending by route).
pub(super) fn net_notifications(moves: &[RouteMove], roles: &[RoleChange]) -> Vec<Notification> {
    use std::collections::HashMap;
    /// A node and the routes it lost, each with its new node.
    type Lost = (String, Vec<(Route, Option<String>)>);
    let mut lost: Vec<Lost> = Vec::new();
    let mut gained: Vec<(String, Vec<Route>)> = Vec::new();
    let mut lost_index: HashMap<&str, usize> = HashMap::new();
    let mut gained_index: HashMap<&str, usize> = HashMap::new();
    for change in moves {
        if let Some(from) = change.from.as_deref() {
            let i = *lost_index.entry(from).or_insert_with(|| {
                lost.push((from.to_string(), Vec::new()));
                lost.len() - 1
            });
            lost[i].1.push((change.route, change.to.clone()));
        }
        if let Some(to) = change.to.as_deref() {
            let i = *gained_index.entry(to).or_insert_with(|| {
                gained.push((to.to_string(), Vec::new()));
                gained.len() - 1
            });
            gained[i].1.push(change.route);
        }
    }
    lost.into_iter()
        .map(|(node, routes)| Notification::Moved { node, routes })
        .chain(roles.iter().filter_map(|change| {
            change.to.map(|role| Notification::Role {
                node: change.node.clone(),
                role,
            })
        }))
        .chain(
            gained
                .into_iter()
                .map(|(node, routes)| Notification::Assigned { node, routes }),
        )
        .collect()
}
