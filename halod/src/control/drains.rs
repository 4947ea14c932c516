//! Routes in transition: a route that moved away from a node that is still
//! alive keeps sending that node the connections that were open at the move,
//! for `nodes.drain_ms` (the data plane does the sending, see
//! `Write::Drain`). Here the manager keeps which routes drain from which
//! node until when, and the nodes that left (`bye`, `halod drain`) but still
//! drain: they are out of the node table, their counter index stays taken
//! (the data plane still counts their packets and translates their replies
//! by it) and their connection stays open for `drain_done`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::nodes::{ConnId, Connection};
use super::tables::NodeTarget;
use crate::routing::Route;

/// One route that drains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteDrain {
    pub route: Route,
    /// The node the route moved away from.
    pub node: String,
    pub addr: Ipv4Addr,
    pub index: u32,
    /// When the drain ends (Unix ms), for the operator's views.
    pub until_unix_ms: u64,
}

/// A node that left with routes still draining.
pub(super) struct Leaving {
    pub connection: Option<Connection>,
    pub index: u32,
    /// Left by `halod drain`: it is told `drained` at the end.
    pub by_operator: bool,
}

/// The routes one node drains.
struct NodeDrains {
    /// Route -> its end on the manager's clock (ms).
    routes: HashMap<Route, u64>,
}

/// The drains in progress. A route drains from every node it left within
/// its window; the data plane holds one drain per route, whose old node is
/// the first of them (its connections are the ones not recorded; those
/// opened since are recorded with their node) and whose end is the last.
/// Every operation costs O(log n) in the drains it touches, none a pass over
/// all of them: a join storm of thousands of nodes starts a drain per moved
/// route.
#[derive(Default)]
pub(super) struct Drains {
    /// Route -> the drain as the data plane holds it, ending at `.1` (ms).
    routes: BTreeMap<Route, (RouteDrain, u64)>,
    /// The data plane's drains by end, earliest first.
    route_ends: BTreeSet<(u64, Route)>,
    nodes: HashMap<Arc<str>, NodeDrains>,
    /// The nodes' drains by end, earliest first, in batches: the routes one
    /// plan drains from one node end together. An entry whose route was
    /// drained again (a later end) or ended otherwise is passed over when its
    /// batch comes. Names are shared, not copied: a join storm of thousands
    /// of nodes starts a drain per moved route, and each costs about 20 bytes.
    node_ends: BTreeMap<(u64, Arc<str>), Vec<Route>>,
    /// How many nodes drain each route.
    drainers: HashMap<Route, u32>,
    leaving: HashMap<String, Leaving>,
}

/// Drains that ended, for one node.
pub(super) struct Ended {
    pub node: String,
    pub routes: Vec<Route>,
    /// The node left and has nothing draining any more.
    pub left: Option<Leaving>,
}

impl Drains {
    /// `route` drains from `node` (at `target`) until `until_ms` on the
    /// manager's clock (`until_unix_ms` on the wall clock). Returns the old
    /// node of the route's drain in the data plane: `target`, or the node
    /// the route left first when it still drains.
    pub fn start(
        &mut self,
        route: Route,
        node: &str,
        target: NodeTarget,
        until_ms: u64,
        until_unix_ms: u64,
    ) -> NodeTarget {
        let name: Arc<str> = match self.nodes.get_key_value(node) {
            Some((name, _)) => name.clone(),
            None => Arc::from(node),
        };
        let drains = self
            .nodes
            .entry(name.clone())
            .or_insert_with(|| NodeDrains {
                routes: HashMap::new(),
            });
        if drains.routes.insert(route, until_ms).is_none() {
            *self.drainers.entry(route).or_default() += 1;
        }
        self.node_ends
            .entry((until_ms, name))
            .or_default()
            .push(route);
        let (drain, until) = self.routes.entry(route).or_insert_with(|| {
            (
                RouteDrain {
                    route,
                    node: node.to_string(),
                    addr: target.addr,
                    index: target.index,
                    until_unix_ms,
                },
                0,
            )
        });
        self.route_ends.remove(&(*until, route));
        *until = (*until).max(until_ms);
        self.route_ends.insert((*until, route));
        drain.until_unix_ms = drain.until_unix_ms.max(until_unix_ms);
        NodeTarget {
            addr: drain.addr,
            index: drain.index,
        }
    }

    /// The routes that drain from `node`.
    pub fn routes_from(&self, node: &str) -> Vec<Route> {
        let mut routes: Vec<Route> = self
            .nodes
            .get(node)
            .map(|drains| drains.routes.keys().copied().collect())
            .unwrap_or_default();
        routes.sort_unstable();
        routes
    }

    /// Whether any route drains from `node`.
    pub fn drains_from(&self, node: &str) -> bool {
        self.nodes.contains_key(node)
    }

    /// One node's drain of one route is over.
    fn forget(&mut self, route: Route) {
        if let Some(count) = self.drainers.get_mut(&route) {
            *count -= 1;
            if *count == 0 {
                self.drainers.remove(&route);
            }
        }
    }

    /// Ends every drain from `node` (it failed: its connections are gone).
    /// Returns the routes whose drain ends in the data plane too (no other
    /// node drains them), and the node's leaving entry.
    pub fn end_node(&mut self, node: &str) -> (Vec<Route>, Option<Leaving>) {
        let mut ended = Vec::new();
        // Its batches in `node_ends` are passed over when they come.
        if let Some(drains) = self.nodes.remove(node) {
            for route in drains.routes.into_keys() {
                self.forget(route);
                let first = self.routes.get(&route).is_some_and(|(d, _)| d.node == node);
                if first && !self.drainers.contains_key(&route) {
                    if let Some((_, until)) = self.routes.remove(&route) {
                        self.route_ends.remove(&(until, route));
                    }
                    ended.push(route);
                }
            }
        }
        ended.sort_unstable();
        (ended, self.leaving.remove(node))
    }

    /// Takes the drains that end by `now_ms`: per node (by name), and the
    /// routes whose drain ends in the data plane.
    pub fn take_due(&mut self, now_ms: u64) -> (Vec<Ended>, Vec<Route>) {
        let mut by_node: BTreeMap<Arc<str>, Vec<Route>> = BTreeMap::new();
        while let Some(entry) = self.node_ends.first_entry() {
            let (until, node) = entry.key().clone();
            if until > now_ms {
                break;
            }
            let batch = entry.remove();
            let Some(drains) = self.nodes.get_mut(&node) else {
                continue;
            };
            let mut due = Vec::new();
            for route in batch {
                // Still this end: not drained again since, not ended.
                if drains.routes.get(&route) == Some(&until) {
                    drains.routes.remove(&route);
                    due.push(route);
                }
            }
            if drains.routes.is_empty() {
                self.nodes.remove(&node);
            } else if drains.routes.len() * 4 < drains.routes.capacity() {
                drains.routes.shrink_to_fit();
            }
            for &route in &due {
                self.forget(route);
            }
            if !due.is_empty() {
                by_node.entry(node).or_default().extend(due);
            }
        }
        let ended = by_node
            .into_iter()
            .map(|(node, mut routes)| {
                routes.sort_unstable();
                Ended {
                    left: if self.nodes.contains_key(&node) {
                        None
                    } else {
                        self.leaving.remove(&*node)
                    },
                    node: node.to_string(),
                    routes,
                }
            })
            .collect();
        let mut routes = Vec::new();
        while let Some(&(until, route)) = self.route_ends.first() {
            if until > now_ms {
                break;
            }
            self.route_ends.pop_first();
            self.routes.remove(&route);
            routes.push(route);
        }
        routes.sort_unstable();
        // A storm's drains leave room for every route behind: give it back
        // once most of them ended.
        if self.drainers.len() * 4 < self.drainers.capacity() {
            self.drainers.shrink_to_fit();
        }
        if self.nodes.len() * 4 < self.nodes.capacity() {
            self.nodes.shrink_to_fit();
        }
        (ended, routes)
    }

    /// When the next drain ends (manager's clock, ms).
    pub fn next_end(&self) -> Option<u64> {
        let node = self
            .node_ends
            .first_key_value()
            .map(|((until, _), _)| *until);
        let route = self.route_ends.first().map(|(until, _)| *until);
        node.into_iter().chain(route).min()
    }

    /// A node that left keeps its connection and counter index while it drains.
    pub fn leave(&mut self, name: &str, leaving: Leaving) {
        self.leaving.insert(name.to_string(), leaving);
    }

    /// The connection of a node that left and drains, if it is `conn`.
    pub fn leaving_connection(&mut self, name: &str, conn: ConnId) -> Option<&mut Leaving> {
        self.leaving
            .get_mut(name)
            .filter(|leaving| leaving.connection.as_ref().is_some_and(|c| c.id == conn))
    }

    /// Every drain the data plane holds, with the time left (ms), by route.
    pub fn list(&self, now_ms: u64) -> Vec<(RouteDrain, u64)> {
        self.routes
            .values()
            .map(|(drain, until)| (drain.clone(), until.saturating_sub(now_ms)))
            .collect()
    }

    /// The data plane's drains, one per route with its old node.
    #[cfg(test)]
    pub fn data_plane_drains(&self) -> Vec<RouteDrain> {
        self.routes
            .values()
            .map(|(drain, _)| drain.clone())
            .collect()
    }

    /// Every counter index a node that left still holds.
    #[cfg(test)]
    pub fn held_indexes(&self) -> impl Iterator<Item = u32> + '_ {
        self.leaving.values().map(|leaving| leaving.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(last: u8) -> NodeTarget {
        NodeTarget {
            addr: Ipv4Addr::new(198, 19, 0, last),
            index: u32::from(last),
        }
    }

    #[test]
    fn drains_end_on_time_grouped_by_node_and_release_nodes_that_left() {
        let mut drains = Drains::default();
        drains.leave(
            "n1",
            Leaving {
                connection: None,
                index: 11,
                by_operator: true,
            },
        );
        drains.start(1, "n1", target(11), 100, 0);
        drains.start(2, "n1", target(11), 200, 0);
        drains.start(3, "n2", target(12), 100, 0);
        assert_eq!(drains.next_end(), Some(100));
        assert_eq!(drains.held_indexes().collect::<Vec<_>>(), [11]);
        let (ended, routes) = drains.take_due(100);
        assert_eq!(routes, [1, 3]);
        assert_eq!(ended.len(), 2);
        assert_eq!(
            (ended[0].node.as_str(), &ended[0].routes[..]),
            ("n1", &[1][..])
        );
        assert!(ended[0].left.is_none(), "n1 still drains route 2");
        assert_eq!(
            (ended[1].node.as_str(), &ended[1].routes[..]),
            ("n2", &[3][..])
        );
        let (ended, routes) = drains.take_due(250);
        assert_eq!((&ended[0].routes[..], &routes[..]), (&[2][..], &[2][..]));
        assert!(ended[0].left.as_ref().is_some_and(|l| l.by_operator));
        assert_eq!(drains.next_end(), None);
        assert_eq!(drains.held_indexes().count(), 0);
    }

    #[test]
    fn a_route_that_moves_again_keeps_its_first_old_node_and_drains_to_the_last_end() {
        let mut drains = Drains::default();
        assert_eq!(drains.start(1, "n2", target(12), 100, 1000), target(12));
        // Route 1 moves on (n1 had it for a while): the data plane keeps n2.
        assert_eq!(drains.start(1, "n1", target(11), 150, 1050), target(12));
        assert_eq!(drains.list(0)[0].1, 150);
        let saved = drains.data_plane_drains();
        assert_eq!(
            saved.iter().map(|d| d.node.as_str()).collect::<Vec<_>>(),
            ["n2"],
            "the data plane's drain, with its old node"
        );
        // n2's window ends first: it hears drain_done; the route drains on.
        let (ended, routes) = drains.take_due(100);
        assert_eq!((ended[0].node.as_str(), routes.len()), ("n2", 0));
        let (ended, routes) = drains.take_due(150);
        assert_eq!((ended[0].node.as_str(), &routes[..]), ("n1", &[1][..]));
    }

    #[test]
    fn a_failed_node_ends_its_drains_unless_another_node_drains_the_route() {
        let mut drains = Drains::default();
        drains.start(1, "n1", target(11), 100, 0);
        drains.start(2, "n1", target(11), 100, 0);
        drains.start(2, "n2", target(12), 100, 0);
        let (ended, left) = drains.end_node("n1");
        assert_eq!(ended, [1], "route 2 still drains from n2");
        assert!(left.is_none());
        assert!(!drains.drains_from("n1"));
        assert_eq!(drains.list(0).len(), 1);
    }
}
