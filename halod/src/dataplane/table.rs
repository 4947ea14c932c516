//! The user-space mirror of the route and slot tables, and the checks that keep
//! every batch of writes safe before any of it reaches the kernel.
//!
//! Pure: no BPF here, so the ordering rules are unit-tested without root.

use std::{collections::HashMap, net::Ipv4Addr};

use super::{DataplaneError, NodeTarget, Write};

/// What the maps hold, as user space last wrote it.
#[derive(Clone, Debug)]
pub(super) struct Table {
    /// `routes[route - 1]`: the slot serving the route.
    pub routes: Vec<Option<u16>>,
    /// `slots[slot - 1]`: the node in the slot.
    pub slots: Vec<Option<NodeTarget>>,
    /// Node index -> last address written for it: the `NODE_BY_ADDR` entries.
    /// A node keeps its entry after it leaves its slot, so the FIN/RST of the
    /// connections it closes still leave from the VIP; the entry goes when the
    /// index or the address is reused.
    pub known: HashMap<u32, Ipv4Addr>,
    /// `known` the other way round (address -> index), so that a slot write
    /// does not pass over every known node.
    known_addrs: HashMap<Ipv4Addr, u32>,
    max_nodes: u32,
}

/// Which address each node index has in the slots, and the other way round,
/// with the number of slots that hold each pair (a node moving from one slot
/// to another is in both for a moment): finds a conflicting slot write
/// without passing over every slot.
#[derive(Default)]
struct Occupants {
    by_addr: HashMap<Ipv4Addr, (u32, usize)>,
    by_index: HashMap<u32, (Ipv4Addr, usize)>,
}

impl Occupants {
    fn of(slots: &[Option<NodeTarget>]) -> Occupants {
        let mut occupants = Occupants::default();
        for node in slots.iter().flatten() {
            occupants.add(node);
        }
        occupants
    }

    fn add(&mut self, node: &NodeTarget) {
        self.by_addr.entry(node.addr).or_insert((node.index, 0)).1 += 1;
        self.by_index.entry(node.index).or_insert((node.addr, 0)).1 += 1;
    }

    fn remove(&mut self, node: &NodeTarget) {
        for count in [
            self.by_addr.get_mut(&node.addr).map(|e| &mut e.1),
            self.by_index.get_mut(&node.index).map(|e| &mut e.1),
        ]
        .into_iter()
        .flatten()
        {
            *count -= 1;
        }
        if self.by_addr.get(&node.addr).is_some_and(|e| e.1 == 0) {
            self.by_addr.remove(&node.addr);
        }
        if self.by_index.get(&node.index).is_some_and(|e| e.1 == 0) {
            self.by_index.remove(&node.index);
        }
    }

    /// A node in another slot with `target`'s address and another index, or
    /// its index and another address.
    fn conflict(&self, target: &NodeTarget) -> Option<NodeTarget> {
        if let Some(&(index, _)) = self.by_addr.get(&target.addr)
            && index != target.index
        {
            return Some(NodeTarget {
                addr: target.addr,
                index,
            });
        }
        match self.by_index.get(&target.index) {
            Some(&(addr, _)) if addr != target.addr => Some(NodeTarget {
                addr,
                index: target.index,
            }),
            _ => None,
        }
    }
}

/// What a batch changes in the route and slot tables, without a copy of them.
#[derive(Default)]
pub(super) struct Overlay {
    pub routes: HashMap<u16, Option<u16>>,
    pub slots: HashMap<u16, Option<NodeTarget>>,
}

impl Overlay {
    pub fn of(writes: &[Write]) -> Overlay {
        let mut overlay = Overlay::default();
        for write in writes {
            match *write {
                Write::Route { route, slot } => {
                    overlay.routes.insert(route, slot);
                }
                Write::Slot { slot, node } => {
                    overlay.slots.insert(slot, node);
                }
                Write::Drain { .. } | Write::DrainEnd { .. } => {}
            }
        }
        overlay
    }
}

/// A drain as written into `ROUTE_DRAIN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Drain {
    pub from: NodeTarget,
    /// Where the route's new connections go (`None`: no node serves it).
    pub to: Option<NodeTarget>,
    /// On `CLOCK_MONOTONIC`.
    pub until_ns: u64,
}

/// A change to `NODE_BY_ADDR` that must happen before a slot write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum AddrChange {
    Remove(Ipv4Addr),
    Insert(Ipv4Addr, u32),
}

impl Table {
    pub fn new(routes: u16, max_nodes: u32) -> Table {
        Table {
            routes: vec![None; routes as usize],
            slots: vec![None; routes as usize],
            known: HashMap::new(),
            known_addrs: HashMap::new(),
            max_nodes,
        }
    }

    /// The node the route reaches through its slot once `batch` is applied
    /// (`None` for `batch`: now).
    pub fn target_after(&self, batch: Option<&Overlay>, route: u16) -> Option<NodeTarget> {
        let slot = match batch.and_then(|b| b.routes.get(&route)) {
            Some(slot) => *slot,
            None => *self.routes.get(usize::from(route).checked_sub(1)?)?,
        }?;
        match batch.and_then(|b| b.slots.get(&slot)) {
            Some(node) => *node,
            None => *self.slots.get(usize::from(slot) - 1)?,
        }
    }

    /// The node the route reaches through its slot.
    pub fn target(&self, route: u16) -> Option<NodeTarget> {
        let slot = self
            .routes
            .get(usize::from(route).checked_sub(1)?)
            .copied()??;
        self.slots.get(usize::from(slot) - 1).copied()?
    }

    /// Checks a whole batch, applied in order, against the rules: every id in
    /// range, no route ever pointing at a slot without a node, one index per
    /// address. Nothing is written when this fails.
    pub fn check(&self, writes: &[Write]) -> Result<(), DataplaneError> {
        let mut table = self.clone();
        // Built at the first slot write of the batch, kept up to date after.
        let mut occupants: Option<Occupants> = None;
        for (position, write) in writes.iter().enumerate() {
            let reject = |reason: String| DataplaneError::Write {
                position,
                write: write.clone(),
                reason,
            };
            match *write {
                Write::Drain { route, from, .. } => {
                    table.route_index(route).map_err(reject)?;
                    if from.index >= table.max_nodes {
                        return Err(reject(format!(
                            "node index {} is not below max_nodes {}",
                            from.index, table.max_nodes
                        )));
                    }
                }
                Write::DrainEnd { route } => {
                    table.route_index(route).map_err(reject)?;
                }
                Write::Route { route, slot } => {
                    table.route_index(route).map_err(reject)?;
                    if let Some(slot) = slot {
                        let index = table.slot_index(slot).map_err(reject)?;
                        if table.slots[index].is_none() {
                            return Err(reject(format!(
                                "slot {slot} has no node; write the slot's node before pointing routes at it"
                            )));
                        }
                    }
                }
                Write::Slot { slot, node } => {
                    let index = table.slot_index(slot).map_err(reject)?;
                    let occupants = occupants.get_or_insert_with(|| Occupants::of(&table.slots));
                    if let Some(old) = &table.slots[index] {
                        occupants.remove(old);
                    }
                    match node {
                        None => {
                            let serving: Vec<u16> = table
                                .routes
                                .iter()
                                .enumerate()
                                .filter(|(_, s)| **s == Some(slot))
                                .map(|(r, _)| r as u16 + 1)
                                .take(5)
                                .collect();
                            if !serving.is_empty() {
                                return Err(reject(format!(
                                    "slot {slot} still serves routes {serving:?}; move them before emptying the slot"
                                )));
                            }
                        }
                        Some(target) => {
                            if target.index >= table.max_nodes {
                                return Err(reject(format!(
                                    "node index {} is not below max_nodes {}",
                                    target.index, table.max_nodes
                                )));
                            }
                            if target.addr.is_unspecified() || target.addr.is_broadcast() {
                                return Err(reject(format!(
                                    "{} is not a node address",
                                    target.addr
                                )));
                            }
                            if let Some(other) = occupants.conflict(&target) {
                                return Err(reject(format!(
                                    "node {} (index {}) conflicts with node {} (index {}) in another slot: one address, one index",
                                    target.addr, target.index, other.addr, other.index
                                )));
                            }
                            occupants.add(&target);
                        }
                    }
                }
            }
            table.record(write);
        }
        Ok(())
    }

    /// The `NODE_BY_ADDR` changes needed before writing `node` into a slot.
    pub fn addr_changes(&self, node: &NodeTarget) -> Vec<AddrChange> {
        if self.known.get(&node.index) == Some(&node.addr) {
            return Vec::new();
        }
        let mut changes = Vec::new();
        if let Some(old) = self.known.get(&node.index) {
            changes.push(AddrChange::Remove(*old));
        }
        changes.push(AddrChange::Insert(node.addr, node.index));
        changes
    }

    /// Records a write that reached the kernel.
    pub fn record(&mut self, write: &Write) {
        match *write {
            // The drains are the data plane's (`Dataplane::drains`), not this
            // mirror's: checking a batch clones the mirror.
            Write::Drain { .. } | Write::DrainEnd { .. } => {}
            Write::Route { route, slot } => self.routes[route as usize - 1] = slot,
            Write::Slot { slot, node } => {
                if let Some(node) = node {
                    // The address now belongs to this index only.
                    if let Some(other) = self.known_addrs.insert(node.addr, node.index)
                        && other != node.index
                    {
                        self.known.remove(&other);
                    }
                    if let Some(old) = self.known.insert(node.index, node.addr)
                        && old != node.addr
                        && self.known_addrs.get(&old) == Some(&node.index)
                    {
                        self.known_addrs.remove(&old);
                    }
                }
                self.slots[slot as usize - 1] = node;
            }
        }
    }

    fn route_index(&self, route: u16) -> Result<usize, String> {
        if route == 0 || route as usize > self.routes.len() {
            return Err(format!(
                "route {route} is outside 1..={}",
                self.routes.len()
            ));
        }
        Ok(route as usize - 1)
    }

    fn slot_index(&self, slot: u16) -> Result<usize, String> {
        if slot == 0 || slot as usize > self.slots.len() {
            return Err(format!("slot {slot} is outside 1..={}", self.slots.len()));
        }
        Ok(slot as usize - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(last: u8, index: u32) -> Option<NodeTarget> {
        Some(NodeTarget {
            addr: Ipv4Addr::new(198, 19, 0, last),
            index,
        })
    }

    fn apply(table: &mut Table, writes: &[Write]) -> Result<(), DataplaneError> {
        table.check(writes)?;
        for write in writes {
            table.record(write);
        }
        Ok(())
    }

    #[test]
    fn routes_only_point_at_slots_with_nodes() {
        let mut table = Table::new(4, 8);
        let err = table
            .check(&[Write::Route {
                route: 1,
                slot: Some(1),
            }])
            .unwrap_err()
            .to_string();
        assert!(err.contains("slot 1 has no node"), "{err}");
        // Node first, then the routes: fine.
        apply(
            &mut table,
            &[
                Write::Slot {
                    slot: 1,
                    node: node(10, 0),
                },
                Write::Route {
                    route: 1,
                    slot: Some(1),
                },
                Write::Route {
                    route: 2,
                    slot: Some(1),
                },
            ],
        )
        .unwrap();
        // Emptying a slot that still serves routes is refused, and nothing changes.
        let before = table.slots.clone();
        let err = table
            .check(&[
                Write::Slot {
                    slot: 1,
                    node: None,
                },
                Write::Route {
                    route: 1,
                    slot: None,
                },
            ])
            .unwrap_err()
            .to_string();
        assert!(err.contains("still serves routes [1, 2]"), "{err}");
        assert_eq!(table.slots, before);
        // Moving the routes away first makes it safe.
        apply(
            &mut table,
            &[
                Write::Route {
                    route: 1,
                    slot: None,
                },
                Write::Route {
                    route: 2,
                    slot: None,
                },
                Write::Slot {
                    slot: 1,
                    node: None,
                },
            ],
        )
        .unwrap();
    }

    #[test]
    fn ids_are_range_checked() {
        let table = Table::new(4, 2);
        for (write, expected) in [
            (
                Write::Route {
                    route: 0,
                    slot: None,
                },
                "route 0 is outside 1..=4",
            ),
            (
                Write::Route {
                    route: 5,
                    slot: None,
                },
                "route 5 is outside",
            ),
            (
                Write::Slot {
                    slot: 9,
                    node: None,
                },
                "slot 9 is outside",
            ),
            (
                Write::Slot {
                    slot: 1,
                    node: node(1, 2),
                },
                "not below max_nodes 2",
            ),
        ] {
            let err = table
                .check(std::slice::from_ref(&write))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn a_spare_takes_over_with_one_write_and_the_old_address_is_replaced() {
        let mut table = Table::new(4, 8);
        apply(
            &mut table,
            &[Write::Slot {
                slot: 1,
                node: node(10, 0),
            }],
        )
        .unwrap();
        assert_eq!(
            table.addr_changes(&node(11, 1).unwrap()),
            vec![AddrChange::Insert(Ipv4Addr::new(198, 19, 0, 11), 1)]
        );
        apply(
            &mut table,
            &[Write::Slot {
                slot: 1,
                node: node(11, 1),
            }],
        )
        .unwrap();
        // The failed node keeps its entry (its FINs still leave from the VIP)...
        assert_eq!(table.known.len(), 2);
        // ...until its index is reused by another address.
        assert_eq!(
            table.addr_changes(&node(12, 0).unwrap()),
            vec![
                AddrChange::Remove(Ipv4Addr::new(198, 19, 0, 10)),
                AddrChange::Insert(Ipv4Addr::new(198, 19, 0, 12), 0)
            ]
        );
    }

    #[test]
    fn one_address_one_index() {
        let mut table = Table::new(4, 8);
        apply(
            &mut table,
            &[Write::Slot {
                slot: 1,
                node: node(10, 0),
            }],
        )
        .unwrap();
        let err = table
            .check(&[Write::Slot {
                slot: 2,
                node: node(10, 3),
            }])
            .unwrap_err()
            .to_string();
        assert!(err.contains("one address, one index"), "{err}");
        // The same node moving to another slot (last slot fills a hole) is fine.
        apply(
            &mut table,
            &[
                Write::Slot {
                    slot: 2,
                    node: node(10, 0),
                },
                Write::Slot {
                    slot: 1,
                    node: None,
                },
            ],
        )
        .unwrap();
    }
}
