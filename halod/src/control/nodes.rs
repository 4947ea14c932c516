//! The manager's node table: every registered node with its address, its
//! data-plane counter index and its connection, found by name or by address
//! in O(1), with counter indexes recycled.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::protocol::GatewayMessage;

/// Identifies one connection (a node name may reconnect on a new one).
pub type ConnId = u64;

/// A message queued for a node's connection.
pub type Outbound = Box<GatewayMessage>;

/// A registered node's open connection.
pub(super) struct Connection {
    pub id: ConnId,
    pub outbound: mpsc::Sender<Outbound>,
}

/// What the daemon keeps per node.
pub(super) struct NodeEntry {
    /// Changed through [`NodeTable::set_addr`], which keeps the index right.
    addr: Ipv4Addr,
    /// Per-node counter slot in the data plane, `< max_nodes`.
    index: u32,
    pub connection: Option<Connection>,
    pub last_seen: Arc<AtomicU64>,
    /// While the node may reconnect: the deadline (ms) and why it waits.
    pub awaiting: Option<Awaiting>,
    pub connected_since_unix_ms: Option<u64>,
}

impl NodeEntry {
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    /// The last sign of life (ms on the manager's clock).
    pub fn last_seen_ms(&self) -> u64 {
        self.last_seen.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Awaiting {
    pub until: u64,
    /// Known from the state file after a daemon restart (not a lost connection).
    pub restart: bool,
}

/// The registered nodes.
#[derive(Default)]
pub(super) struct NodeTable {
    nodes: HashMap<String, NodeEntry>,
    /// Address -> name: the data plane tells nodes apart by address.
    by_addr: HashMap<Ipv4Addr, String>,
    free_indexes: Vec<u32>,
    next_index: u32,
    /// `free_indexes` must be worked out again, from the entries, before any
    /// index is taken, given back or kept by a leaving node: nodes of a saved
    /// table were entered (once for all of them, not per node).
    free_stale: bool,
    /// Entries that wait for their node to reconnect (`awaiting` set): kept
    /// as entries change, so `halod status` never counts them one by one.
    awaiting: usize,
}

impl NodeTable {
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Entries waiting for their node to reconnect.
    pub fn awaiting(&self) -> usize {
        self.awaiting
    }

    /// Sets `name`'s reconnect deadline (`None`: it is connected again).
    pub fn set_awaiting(&mut self, name: &str, awaiting: Option<Awaiting>) {
        if let Some(entry) = self.nodes.get_mut(name) {
            match (entry.awaiting.is_some(), awaiting.is_some()) {
                (false, true) => self.awaiting += 1,
                (true, false) => self.awaiting -= 1,
                _ => {}
            }
            entry.awaiting = awaiting;
        }
    }

    /// Works the free indexes out again after a restore.
    fn refresh_free(&mut self) {
        if !std::mem::take(&mut self.free_stale) {
            return;
        }
        let used: std::collections::HashSet<u32> = self.nodes.values().map(|n| n.index).collect();
        self.free_indexes = (0..self.next_index)
            .rev()
            .filter(|i| !used.contains(i))
            .collect();
    }

    pub fn contains(&self, name: &str) -> bool {
        self.nodes.contains_key(name)
    }

    pub fn get(&self, name: &str) -> Option<&NodeEntry> {
        self.nodes.get(name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut NodeEntry> {
        self.nodes.get_mut(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &NodeEntry)> {
        self.nodes.iter()
    }

    pub fn values(&self) -> impl Iterator<Item = &NodeEntry> {
        self.nodes.values()
    }

    /// The node registered with `addr`, if any.
    pub fn owner_of(&self, addr: Ipv4Addr) -> Option<&str> {
        self.by_addr.get(&addr).map(String::as_str)
    }

    /// Registers a new node with the lowest free counter index, connected now
    /// (`last_seen` = `now_ms`). The caller checked that neither its name nor
    /// its address is taken.
    pub fn join(
        &mut self,
        name: &str,
        addr: Ipv4Addr,
        connection: Connection,
        now_ms: u64,
        since_unix_ms: u64,
    ) -> &NodeEntry {
        self.refresh_free();
        let index = self.free_indexes.pop().unwrap_or_else(|| {
            self.next_index += 1;
            self.next_index - 1
        });
        self.insert(
            name,
            NodeEntry {
                addr,
                index,
                connection: Some(connection),
                last_seen: Arc::new(AtomicU64::new(now_ms)),
                awaiting: None,
                connected_since_unix_ms: Some(since_unix_ms),
            },
        )
    }

    /// Enters a node of a saved table (its index as saved), disconnected and
    /// awaiting its reconnect until `until`.
    pub fn restore(&mut self, name: &str, addr: Ipv4Addr, index: u32, until: u64) {
        self.insert(
            name,
            NodeEntry {
                addr,
                index,
                connection: None,
                last_seen: Arc::new(AtomicU64::new(0)),
                awaiting: Some(Awaiting {
                    until,
                    restart: true,
                }),
                connected_since_unix_ms: None,
            },
        );
        self.next_index = self.next_index.max(index + 1);
        self.free_stale = true;
    }

    fn insert(&mut self, name: &str, entry: NodeEntry) -> &NodeEntry {
        self.by_addr.insert(entry.addr, name.to_string());
        self.awaiting += usize::from(entry.awaiting.is_some());
        let replaced = self.nodes.insert(name.to_string(), entry);
        self.awaiting -= replaced.map_or(0, |old| usize::from(old.awaiting.is_some()));
        &self.nodes[name]
    }

    /// A registered node now sends from `addr`; `true` when it changed.
    pub fn set_addr(&mut self, name: &str, addr: Ipv4Addr) -> bool {
        let Some(entry) = self.nodes.get_mut(name) else {
            return false;
        };
        if entry.addr == addr {
            return false;
        }
        if self
            .by_addr
            .get(&entry.addr)
            .is_some_and(|owner| owner == name)
        {
            self.by_addr.remove(&entry.addr);
        }
        entry.addr = addr;
        self.by_addr.insert(addr, name.to_string());
        true
    }

    /// Takes a node's entry out of the table but keeps its counter index
    /// taken (the data plane still uses it) until [`NodeTable::release`].
    pub fn retire(&mut self, name: &str) -> Option<NodeEntry> {
        // Before the entry goes: its index stays taken.
        self.refresh_free();
        let entry = self.nodes.remove(name)?;
        self.awaiting -= usize::from(entry.awaiting.is_some());
        if self
            .by_addr
            .get(&entry.addr)
            .is_some_and(|owner| owner == name)
        {
            self.by_addr.remove(&entry.addr);
        }
        Some(entry)
    }

    /// Frees a counter index kept by [`NodeTable::retire`] or [`NodeTable::reserve`].
    pub fn release(&mut self, index: u32) {
        self.refresh_free();
        if !self.nodes.values().any(|node| node.index == index) {
            self.free_indexes.push(index);
        }
    }

    /// Keeps `index` from being handed out (a node of a saved table that
    /// left and still drains).
    pub fn reserve(&mut self, index: u32) {
        self.refresh_free();
        self.next_index = self.next_index.max(index + 1);
        self.free_indexes.retain(|free| *free != index);
    }

    /// Drops a node's entry (its connection closes after what is queued) and
    /// frees its counter index.
    pub fn remove(&mut self, name: &str) -> Option<NodeEntry> {
        let entry = self.retire(name)?;
        self.free_indexes.push(entry.index);
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection() -> Connection {
        let (outbound, _) = mpsc::channel(1);
        Connection { id: 0, outbound }
    }

    fn addr(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, 0, last)
    }

    #[test]
    fn indexes_are_recycled_and_addresses_found() {
        let mut table = NodeTable::default();
        assert_eq!(table.join("n1", addr(11), connection(), 5, 0).index(), 0);
        assert_eq!(table.join("n2", addr(12), connection(), 5, 0).index(), 1);
        assert_eq!(table.owner_of(addr(12)), Some("n2"));
        assert_eq!(table.remove("n1").unwrap().index(), 0);
        assert_eq!(table.owner_of(addr(11)), None);
        assert_eq!(table.join("n3", addr(13), connection(), 5, 0).index(), 0);
        assert!(table.set_addr("n3", addr(14)));
        assert!(!table.set_addr("n3", addr(14)));
        assert_eq!(table.owner_of(addr(13)), None);
        assert_eq!(table.owner_of(addr(14)), Some("n3"));
        assert_eq!(table.get("n3").unwrap().last_seen_ms(), 5);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn a_restored_table_keeps_its_indexes_and_frees_the_gaps() {
        let mut table = NodeTable::default();
        table.restore("n1", addr(11), 3, 100);
        table.restore("n2", addr(12), 1, 100);
        assert!(table.get("n1").unwrap().awaiting.is_some_and(|a| a.restart));
        assert_eq!(table.join("n3", addr(13), connection(), 0, 0).index(), 0);
        assert_eq!(table.join("n4", addr(14), connection(), 0, 0).index(), 2);
        assert_eq!(table.join("n5", addr(15), connection(), 0, 0).index(), 4);
    }

    /// A restored node that leaves before any join keeps its index taken
    /// (it drains), and the waiting ones are counted as they come and go.
    #[test]
    fn a_restored_node_that_leaves_keeps_its_index_and_waiting_nodes_are_counted() {
        let mut table = NodeTable::default();
        table.restore("n1", addr(11), 0, 100);
        table.restore("n2", addr(12), 2, 100);
        assert_eq!(table.awaiting(), 2);
        let left = table.retire("n1").unwrap();
        assert_eq!(left.index(), 0);
        assert_eq!(table.awaiting(), 1);
        assert_eq!(table.join("n3", addr(13), connection(), 0, 0).index(), 1);
        assert_eq!(table.join("n4", addr(14), connection(), 0, 0).index(), 3);
        table.release(0);
        assert_eq!(table.join("n5", addr(15), connection(), 0, 0).index(), 0);
        table.set_awaiting("n2", None);
        assert_eq!(table.awaiting(), 0);
        table.set_awaiting(
            "n3",
            Some(Awaiting {
                until: 5,
                restart: false,
            }),
        );
        assert_eq!(table.awaiting(), 1);
        table.remove("n3");
        assert_eq!(table.awaiting(), 0);
    }
}
