//! Route-assignment rules (shared/spec/routing.md): a pure state machine.
//!
//! [`Cluster`] holds the registered nodes (active ones in slots, spares in a
//! FIFO queue) and the canonical table `T(k)`. [`Cluster::apply`] takes one
//! [`Event`] and returns a [`Plan`]: the routes that change node, the
//! data-plane writes in a safe order and the notifications to send. No I/O
//! happens here; the control plane carries plans out.

mod plan;
pub mod table;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use plan::{Notification, Plan, RoleChange, RouteMove, SlotChange, TableWrite};
pub use table::Table;

/// A route id, `1..=N`.
pub type Route = u16;
/// A slot id, `1..=k`.
pub type Slot = u16;

/// Largest number of routes: one per port of a 16-bit port range (one home,
/// shared with the XDP program's map sizes).
pub use halod_common::maps::MAX_ROUTES;

/// The routing part of the gateway config. Checked by [`Cluster::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// `N`, the number of routes: `1..=65535`.
    pub routes: u32,
    /// How many spares to keep waiting before adding active nodes. Any value
    /// is accepted; `0` means every joining node becomes active while
    /// `max_active` allows.
    pub spares: u32,
    /// Most active nodes: `1..=routes`; `None` means `routes`.
    pub max_active: Option<u32>,
}

/// What a registered node does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Holds a slot and serves its routes.
    Active,
    /// Waits in the spare queue to replace a failed active node.
    Spare,
}

impl Role {
    /// `active` or `spare`, as the node protocol and the operator commands say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Spare => "spare",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something that happens to a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", content = "node", rename_all = "lowercase")]
pub enum Event {
    /// A node with a new name registers.
    Join(String),
    /// A node stops heartbeating or loses its connection past the grace time.
    Fail(String),
    /// A node or an operator asks to remove the node (announced first).
    Leave(String),
}

impl Event {
    /// The node the event is about.
    pub fn node(&self) -> &str {
        match self {
            Event::Join(name) | Event::Fail(name) | Event::Leave(name) => name,
        }
    }
}

/// `join:NAME`, `fail:NAME`, `leave:NAME`: the form `halod simulate` reads.
impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Join(name) => write!(f, "join:{name}"),
            Event::Fail(name) => write!(f, "fail:{name}"),
            Event::Leave(name) => write!(f, "leave:{name}"),
        }
    }
}

/// A token that is not `join:NAME`, `fail:NAME` or `leave:NAME`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid event '{token}': expected join:NAME, fail:NAME or leave:NAME with a non-empty NAME"
)]
pub struct ParseEventError {
    pub token: String,
}

impl FromStr for Event {
    type Err = ParseEventError;

    fn from_str(token: &str) -> Result<Event, ParseEventError> {
        let invalid = || ParseEventError {
            token: token.to_owned(),
        };
        let (kind, name) = token.split_once(':').ok_or_else(invalid)?;
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid());
        }
        let name = name.to_owned();
        match kind {
            "join" => Ok(Event::Join(name)),
            "fail" => Ok(Event::Fail(name)),
            "leave" => Ok(Event::Leave(name)),
            _ => Err(invalid()),
        }
    }
}

/// Why a config or an event was refused. The cluster is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    #[error(
        "node '{0}' is already registered; node names must be unique: remove the registered node \
         first or use another name"
    )]
    DuplicateNode(String),
    #[error("node '{0}' is not registered (neither active nor spare); check the node name")]
    UnknownNode(String),
    #[error("invalid routing config: {key} = {value}: {reason}")]
    InvalidConfig {
        key: &'static str,
        value: u64,
        reason: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Active(Slot),
    Spare,
}

/// The registered nodes and the live route table: `T(k)` composed with the
/// slot -> node mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    config: ClusterConfig,
    max_active: u16,
    table: Table,
    /// Node of each slot, index `slot - 1`.
    active: Vec<String>,
    /// Spare queue, front = oldest.
    spares: VecDeque<String>,
    places: HashMap<String, Place>,
}

impl Cluster {
    /// An empty cluster: no node, no route mapped.
    pub fn new(config: ClusterConfig) -> Result<Cluster, RoutingError> {
        if !(1..=MAX_ROUTES).contains(&config.routes) {
            return Err(RoutingError::InvalidConfig {
                key: "routes",
                value: config.routes.into(),
                reason: format!("must be between 1 and {MAX_ROUTES} (one route per port)"),
            });
        }
        let max_active = config.max_active.unwrap_or(config.routes);
        if !(1..=config.routes).contains(&max_active) {
            return Err(RoutingError::InvalidConfig {
                key: "max_active",
                value: max_active.into(),
                reason: format!(
                    "must be between 1 and routes ({}): a slot needs at least one route",
                    config.routes
                ),
            });
        }
        Ok(Cluster {
            config,
            max_active: max_active as u16,
            table: Table::new(config.routes as u16),
            active: Vec::new(),
            spares: VecDeque::new(),
            places: HashMap::new(),
        })
    }

    /// The cluster with `active` in slots `1..=k` (in that order) and
    /// `spares` queued (front first), as a saved state describes it. Because
    /// the table is a pure function of `k` and the slot -> node mapping, this
    /// is exactly the cluster that reached that state through events.
    pub fn restore(
        config: ClusterConfig,
        active: Vec<String>,
        spares: Vec<String>,
    ) -> Result<Cluster, RoutingError> {
        let mut cluster = Cluster::new(config)?;
        if active.len() > usize::from(cluster.max_active) {
            return Err(RoutingError::InvalidConfig {
                key: "max_active",
                value: cluster.max_active.into(),
                reason: format!(
                    "the saved state has {} active nodes, more than max_active allows",
                    active.len()
                ),
            });
        }
        for (i, name) in active.iter().enumerate() {
            if cluster
                .places
                .insert(name.clone(), Place::Active(i as Slot + 1))
                .is_some()
            {
                return Err(RoutingError::DuplicateNode(name.clone()));
            }
            cluster.table.grow();
        }
        for name in &spares {
            if cluster.places.insert(name.clone(), Place::Spare).is_some() {
                return Err(RoutingError::DuplicateNode(name.clone()));
            }
        }
        cluster.active = active;
        cluster.spares = spares.into();
        Ok(cluster)
    }

    /// Carry out `event` and say what changed. On `Err` nothing changed.
    pub fn apply(&mut self, event: Event) -> Result<Plan, RoutingError> {
        match &event {
            Event::Join(name) => {
                if self.places.contains_key(name) {
                    return Err(RoutingError::DuplicateNode(name.clone()));
                }
                let name = name.clone();
                Ok(self.join(event, name).with_drains())
            }
            Event::Fail(name) | Event::Leave(name) => {
                let place = *self
                    .places
                    .get(name)
                    .ok_or_else(|| RoutingError::UnknownNode(name.clone()))?;
                let name = name.clone();
                let plan = match place {
                    Place::Spare => self.remove_spare(event, name),
                    Place::Active(slot) => match self.spares.pop_front() {
                        Some(spare) => self.take_over(event, name, slot, spare),
                        None => self.close_slot(event, name, slot),
                    },
                };
                Ok(plan.with_drains())
            }
        }
    }

    /// Joins `names`, in that order, as consecutive `Join` events, and says
    /// what changed between before the first and after the last: exactly
    /// [`Plan::merge_joins`] of their plans (property-tested), computed
    /// without building them. Each join is the routing rules' own (the table
    /// steps `T(k)` to `T(k+1)` per active join), so the cluster ends up as
    /// the events give it one by one; only the intermediate moves, which a
    /// storm of joins makes by the hundred thousand, are never spelled out.
    ///
    /// `Ok(None)` for no names. On `Err` (a name already registered, or twice
    /// in `names`) nothing changed.
    pub fn join_all(&mut self, names: Vec<String>) -> Result<Option<Plan>, RoutingError> {
        let mut seen = std::collections::HashSet::new();
        for name in &names {
            if self.places.contains_key(name) || !seen.insert(name.as_str()) {
                return Err(RoutingError::DuplicateNode(name.clone()));
            }
        }
        let Some(last) = names.last().cloned() else {
            return Ok(None);
        };
        let before = self.active.len();
        // The slot each moved route had before the first join (u16::MAX:
        // not moved yet), and the moved routes.
        let mut first: Vec<Slot> = Vec::new();
        let mut touched: Vec<Route> = Vec::new();
        let mut roles = Vec::with_capacity(names.len());
        for name in names {
            let k = self.active.len() as u16;
            let spare = k > 0 && (self.spares.len() as u64) < u64::from(self.config.spares)
                || k >= self.max_active;
            if spare {
                self.spares.push_back(name.clone());
                self.places.insert(name.clone(), Place::Spare);
                roles.push(RoleChange {
                    node: name,
                    from: None,
                    to: Some(Role::Spare),
                });
                continue;
            }
            self.active.push(name.clone());
            self.places.insert(name.clone(), Place::Active(k + 1));
            if first.is_empty() {
                first = vec![Slot::MAX; usize::from(self.table.routes())];
            }
            for &(route, origin) in self.table.grow() {
                let was = &mut first[usize::from(route) - 1];
                if *was == Slot::MAX {
                    *was = origin;
                    touched.push(route);
                }
            }
            roles.push(RoleChange {
                node: name,
                from: None,
                to: Some(Role::Active),
            });
        }
        touched.sort_unstable();
        let node_of = |slot: Slot| (slot != 0).then(|| self.active[usize::from(slot) - 1].clone());
        let mut plan = Plan::new(Event::Join(last));
        plan.moves = touched
            .iter()
            .map(|&route| RouteMove {
                route,
                from: node_of(first[usize::from(route) - 1]),
                to: node_of(self.table.slot_of_route(route).unwrap_or(0)),
            })
            .collect();
        plan.slots = (before..self.active.len())
            .map(|i| SlotChange {
                slot: i as Slot + 1,
                from: None,
                to: Some(self.active[i].clone()),
            })
            .collect();
        // Slots get their nodes before routes point at them.
        plan.writes = plan
            .slots
            .iter()
            .map(|change| TableWrite::Slot {
                slot: change.slot,
                node: change.to.clone(),
            })
            .chain(touched.iter().map(|&route| TableWrite::Route {
                route,
                slot: self.table.slot_of_route(route),
            }))
            .collect();
        plan.notifications = plan::net_notifications(&plan.moves, &roles);
        plan.roles = roles;
        Ok(Some(plan.with_drains()))
    }

    /// The config this cluster was built with.
    pub fn config(&self) -> ClusterConfig {
        self.config
    }

    /// `N`.
    pub fn routes(&self) -> u16 {
        self.table.routes()
    }

    /// Most active nodes (`max_active`, defaulted).
    pub fn max_active(&self) -> u16 {
        self.max_active
    }

    /// Active nodes; index 0 is slot 1.
    pub fn active(&self) -> &[String] {
        &self.active
    }

    /// Spares in queue order, front (next to take over) first.
    pub fn spares(&self) -> Vec<&str> {
        self.spares.iter().map(String::as_str).collect()
    }

    /// Whether `name` is registered (active or spare).
    /// How many spares wait.
    pub fn spare_count(&self) -> usize {
        self.spares.len()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.places.contains_key(name)
    }

    pub fn role(&self, name: &str) -> Option<Role> {
        self.places.get(name).map(|place| match place {
            Place::Active(_) => Role::Active,
            Place::Spare => Role::Spare,
        })
    }

    pub fn slot_of(&self, name: &str) -> Option<Slot> {
        match self.places.get(name)? {
            Place::Active(slot) => Some(*slot),
            Place::Spare => None,
        }
    }

    /// Slot serving `route`; `None` when no node is active or the route is
    /// outside `1..=N`.
    pub fn slot_of_route(&self, route: Route) -> Option<Slot> {
        self.table.slot_of_route(route)
    }

    /// Node serving `route`; `None` when no node is active or the route is
    /// outside `1..=N`.
    pub fn node_of_route(&self, route: Route) -> Option<&str> {
        let slot = self.table.slot_of_route(route)?;
        Some(&self.active[usize::from(slot) - 1])
    }

    /// Routes `name` serves, ascending; empty for a spare or unknown node.
    pub fn routes_of(&self, name: &str) -> Vec<Route> {
        self.slot_of(name)
            .map_or_else(Vec::new, |slot| self.routes_of_slot(slot))
    }

    /// Routes of `slot`, ascending; empty for a slot outside `1..=k`.
    pub fn routes_of_slot(&self, slot: Slot) -> Vec<Route> {
        self.table.routes_of_slot(slot).to_vec()
    }

    /// The canonical table `T(k)` behind the live table.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Heap bytes held by the cluster (capacities; names and the node index
    /// estimated from their lengths; allocator overhead excluded).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let names: usize = self.places.keys().map(String::capacity).sum();
        self.table.heap_bytes()
            + self.active.capacity() * size_of::<String>()
            + self.spares.capacity() * size_of::<String>()
            // A hashbrown bucket is the (key, value) pair plus one control byte.
            + self.places.capacity() * (size_of::<(String, Place)>() + 1)
            + 2 * names
    }

    fn join(&mut self, event: Event, name: String) -> Plan {
        let k = self.active.len() as u16;
        let spare = k > 0 && (self.spares.len() as u64) < u64::from(self.config.spares)
            || k >= self.max_active;
        let mut plan = Plan::new(event);
        if spare {
            self.spares.push_back(name.clone());
            self.places.insert(name.clone(), Place::Spare);
            plan.roles.push(RoleChange {
                node: name.clone(),
                from: None,
                to: Some(Role::Spare),
            });
            plan.notifications.push(Notification::Role {
                node: name,
                role: Role::Spare,
            });
            return plan;
        }

        let slot = k + 1;
        self.active.push(name.clone());
        self.places.insert(name.clone(), Place::Active(slot));
        let moved = self.table.grow();
        plan.slots.push(SlotChange {
            slot,
            from: None,
            to: Some(name.clone()),
        });
        plan.roles.push(RoleChange {
            node: name.clone(),
            from: None,
            to: Some(Role::Active),
        });
        // The new node's slot must exist before any route points at it.
        plan.writes.push(TableWrite::Slot {
            slot,
            node: Some(name.clone()),
        });
        let node_of = |origin: Slot| -> Option<String> {
            (origin != 0).then(|| self.active[usize::from(origin) - 1].clone())
        };
        let mut by_origin: Vec<(Slot, Route)> = Vec::with_capacity(moved.len());
        for &(route, origin) in moved {
            plan.moves.push(RouteMove {
                route,
                from: node_of(origin),
                to: Some(name.clone()),
            });
            plan.writes.push(TableWrite::Route {
                route,
                slot: Some(slot),
            });
            if origin != 0 {
                by_origin.push((origin, route));
            }
        }
        by_origin.sort_unstable();
        for group in by_origin.chunk_by(|a, b| a.0 == b.0) {
            plan.notifications.push(Notification::Moved {
                node: self.active[usize::from(group[0].0) - 1].clone(),
                routes: group
                    .iter()
                    .map(|&(_, route)| (route, Some(name.clone())))
                    .collect(),
            });
        }
        plan.notifications.push(Notification::Role {
            node: name.clone(),
            role: Role::Active,
        });
        plan.notifications.push(Notification::Assigned {
            node: name,
            routes: self.table.routes_of_slot(slot).to_vec(),
        });
        plan
    }

    fn remove_spare(&mut self, event: Event, name: String) -> Plan {
        let index = self
            .spares
            .iter()
            .position(|spare| *spare == name)
            .expect("a node placed as spare is in the spare queue");
        self.spares.remove(index);
        self.places.remove(&name);
        let mut plan = Plan::new(event);
        plan.roles.push(RoleChange {
            node: name,
            from: Some(Role::Spare),
            to: None,
        });
        plan
    }

    /// Active `name` in `slot` goes; `spare` (already taken off the queue)
    /// takes its slot. `T(k)` is unchanged.
    fn take_over(&mut self, event: Event, name: String, slot: Slot, spare: String) -> Plan {
        self.places.remove(&name);
        self.places.insert(spare.clone(), Place::Active(slot));
        self.active[usize::from(slot) - 1] = spare.clone();
        let routes = self.table.routes_of_slot(slot).to_vec();
        let mut plan = Plan::new(event);
        plan.moves = routes
            .iter()
            .map(|&route| RouteMove {
                route,
                from: Some(name.clone()),
                to: Some(spare.clone()),
            })
            .collect();
        plan.slots.push(SlotChange {
            slot,
            from: Some(name.clone()),
            to: Some(spare.clone()),
        });
        plan.roles.push(RoleChange {
            node: name.clone(),
            from: Some(Role::Active),
            to: None,
        });
        plan.roles.push(RoleChange {
            node: spare.clone(),
            from: Some(Role::Spare),
            to: Some(Role::Active),
        });
        plan.writes.push(TableWrite::Slot {
            slot,
            node: Some(spare.clone()),
        });
        plan.notifications.push(Notification::Moved {
            node: name,
            routes: routes
                .iter()
                .map(|&route| (route, Some(spare.clone())))
                .collect(),
        });
        plan.notifications.push(Notification::Role {
            node: spare.clone(),
            role: Role::Active,
        });
        plan.notifications.push(Notification::Assigned {
            node: spare,
            routes,
        });
        plan
    }

    /// Active `name` in slot `failed` goes and no spare waits: the node of the
    /// last slot `k` moves into `failed`, then the table steps back to `T(k-1)`.
    fn close_slot(&mut self, event: Event, name: String, failed: Slot) -> Plan {
        let last = self.active.len() as Slot;
        self.places.remove(&name);
        let mut plan = Plan::new(event);
        plan.roles.push(RoleChange {
            node: name.clone(),
            from: Some(Role::Active),
            to: None,
        });

        // Routes that stay in slot `failed` but change node (only when the
        // last node moves in).
        let mut kept: Vec<Route> = Vec::new();
        let mover = if failed < last {
            let mover = self.active.pop().expect("slot k exists");
            self.active[usize::from(failed) - 1] = mover.clone();
            self.places.insert(mover.clone(), Place::Active(failed));
            kept = self.table.routes_of_slot(failed).to_vec();
            plan.slots.push(SlotChange {
                slot: failed,
                from: Some(name.clone()),
                to: Some(mover.clone()),
            });
            plan.writes.push(TableWrite::Slot {
                slot: failed,
                node: Some(mover.clone()),
            });
            mover
        } else {
            self.active.pop();
            name.clone()
        };
        plan.slots.push(SlotChange {
            slot: last,
            from: Some(mover.clone()),
            to: None,
        });

        // `mover` is the node that served slot `last`; its routes go back to
        // their origin slots.
        let returned = self.table.shrink();
        let mut by_origin: Vec<(Slot, Route)> = Vec::with_capacity(returned.len());
        let mut moves: Vec<RouteMove> = Vec::with_capacity(kept.len() + returned.len());
        let mut mover_lost: Vec<(Route, Option<String>)> = Vec::new();
        for &(route, origin) in returned {
            let to = (origin != 0).then(|| self.active[usize::from(origin) - 1].clone());
            plan.writes.push(TableWrite::Route {
                route,
                slot: (origin != 0).then_some(origin),
            });
            if origin == failed && failed < last {
                // Back in the slot `mover` now holds: same node, new slot.
                continue;
            }
            moves.push(RouteMove {
                route,
                from: Some(mover.clone()),
                to: to.clone(),
            });
            mover_lost.push((route, to));
            if origin != 0 {
                by_origin.push((origin, route));
            }
        }
        plan.writes.push(TableWrite::Slot {
            slot: last,
            node: None,
        });
        moves.extend(kept.iter().map(|&route| RouteMove {
            route,
            from: Some(name.clone()),
            to: Some(mover.clone()),
        }));
        moves.sort_unstable_by_key(|change| change.route);
        plan.moves = moves;

        // The departing node hears first: everything it served, with the new
        // node of each route.
        if failed < last {
            plan.notifications.push(Notification::Moved {
                node: name,
                routes: kept
                    .iter()
                    .map(|&route| (route, Some(mover.clone())))
                    .collect(),
            });
            if !mover_lost.is_empty() {
                plan.notifications.push(Notification::Moved {
                    node: mover.clone(),
                    routes: mover_lost,
                });
            }
            by_origin.extend(kept.iter().map(|&route| (failed, route)));
        } else {
            plan.notifications.push(Notification::Moved {
                node: name,
                routes: mover_lost,
            });
        }
        by_origin.sort_unstable();
        for group in by_origin.chunk_by(|a, b| a.0 == b.0) {
            plan.notifications.push(Notification::Assigned {
                node: self.active[usize::from(group[0].0) - 1].clone(),
                routes: group.iter().map(|&(_, route)| route).collect(),
            });
        }
        plan
    }
}
