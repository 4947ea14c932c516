//! Tests of the routing rules against shared/spec/routing.md.
//!
//! The reference `T(k)` below is written straight from the spec (sort by
//! count, walk, wrap around) and rebuilt from scratch every time; the
//! stepping [`Table`] must agree with it everywhere.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;

use super::*;

/// `T(k)` from the spec text: route -> slot, index `route - 1` (0 = none).
fn reference_table(routes: u16, k: u16) -> Vec<Slot> {
    if k == 0 {
        return vec![0; usize::from(routes)];
    }
    let mut slots: Vec<Vec<Route>> = vec![(1..=routes).collect()];
    for m in 1..k {
        let quota = usize::from(routes / (m + 1));
        let mut order: Vec<usize> = (0..slots.len()).collect();
        order.sort_by(|&a, &b| slots[b].len().cmp(&slots[a].len()).then(a.cmp(&b)));
        let mut new_slot = Vec::new();
        'walk: loop {
            for &slot in &order {
                if new_slot.len() == quota {
                    break 'walk;
                }
                let highest = slots[slot].iter().copied().max().expect("slot not empty");
                slots[slot].retain(|&route| route != highest);
                new_slot.push(highest);
            }
        }
        slots.push(new_slot);
    }
    let mut table = vec![0; usize::from(routes)];
    for (index, list) in slots.iter().enumerate() {
        for &route in list {
            table[usize::from(route) - 1] = index as Slot + 1;
        }
    }
    table
}

fn parse_row(row: &str) -> Vec<Slot> {
    row.split_whitespace()
        .map(|slot| slot.parse().unwrap())
        .collect()
}

/// The worked example of the spec, N = 24.
const WORKED_EXAMPLE: [&str; 4] = [
    "1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1",
    "1 1 1 1 1 1 1 1 1 1 1 1 2 2 2 2 2 2 2 2 2 2 2 2",
    "1 1 1 1 1 1 1 1 3 3 3 3 2 2 2 2 2 2 2 2 3 3 3 3",
    "1 1 1 1 1 1 4 4 3 3 3 3 2 2 2 2 2 2 4 4 3 3 4 4",
];

fn table_of(cluster: &Cluster) -> Vec<Slot> {
    (1..=cluster.routes())
        .map(|route| cluster.slot_of_route(route).unwrap_or(0))
        .collect()
}

fn config(routes: u32, spares: u32, max_active: Option<u32>) -> ClusterConfig {
    ClusterConfig {
        routes,
        spares,
        max_active,
    }
}

fn cluster_with(routes: u32, spares: u32, names: &[&str]) -> Cluster {
    let mut cluster = Cluster::new(config(routes, spares, None)).unwrap();
    for name in names {
        cluster.apply(Event::Join(name.to_string())).unwrap();
    }
    cluster
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|name| name.to_string()).collect()
}

#[test]
fn reference_matches_worked_example() {
    for (index, row) in WORKED_EXAMPLE.iter().enumerate() {
        assert_eq!(
            reference_table(24, index as u16 + 1),
            parse_row(row),
            "k={}",
            index + 1
        );
    }
}

#[test]
fn cluster_follows_worked_example_both_ways() {
    let mut cluster = Cluster::new(config(24, 0, None)).unwrap();
    let mut history = vec![table_of(&cluster)];
    for (index, name) in ["a", "b", "c", "d"].iter().enumerate() {
        cluster.apply(Event::Join(name.to_string())).unwrap();
        assert_eq!(
            table_of(&cluster),
            parse_row(WORKED_EXAMPLE[index]),
            "k={}",
            index + 1
        );
        history.push(table_of(&cluster));
    }
    // Failing the newest node steps back through the same rows.
    for name in ["d", "c", "b", "a"] {
        history.pop();
        cluster.apply(Event::Fail(name.to_string())).unwrap();
        assert_eq!(
            &table_of(&cluster),
            history.last().unwrap(),
            "after fail:{name}"
        );
    }
    assert!(cluster.active().is_empty());
}

#[test]
fn table_build_matches_reference_for_every_k() {
    for routes in [1u16, 2, 3, 7, 24, 100, 257] {
        let mut table = Table::new(routes);
        for k in 1..=routes {
            table.grow();
            let got: Vec<Slot> = (1..=routes)
                .map(|r| table.slot_of_route(r).unwrap())
                .collect();
            assert_eq!(got, reference_table(routes, k), "N={routes} k={k}");
            assert_eq!(table, Table::build(routes, k));
        }
        for k in (0..routes).rev() {
            table.shrink();
            assert_eq!(table, Table::build(routes, k), "N={routes} back to k={k}");
        }
    }
}

#[test]
fn config_errors_name_key_and_value() {
    let err = Cluster::new(config(0, 0, None)).unwrap_err();
    assert!(matches!(
        err,
        RoutingError::InvalidConfig {
            key: "routes",
            value: 0,
            ..
        }
    ));
    assert!(err.to_string().contains("routes = 0"), "{err}");
    let err = Cluster::new(config(65536, 0, None)).unwrap_err();
    assert!(err.to_string().contains("routes = 65536"), "{err}");
    let err = Cluster::new(config(10, 0, Some(11))).unwrap_err();
    assert!(matches!(
        err,
        RoutingError::InvalidConfig {
            key: "max_active",
            value: 11,
            ..
        }
    ));
    assert!(err.to_string().contains("max_active = 11"), "{err}");
    let err = Cluster::new(config(10, 0, Some(0))).unwrap_err();
    assert!(err.to_string().contains("max_active = 0"), "{err}");
    assert!(Cluster::new(config(65535, u32::MAX, Some(65535))).is_ok());
    assert!(Cluster::new(config(1, 0, Some(1))).is_ok());
}

#[test]
fn event_errors_name_the_node_and_change_nothing() {
    let mut cluster = cluster_with(24, 1, &["a", "b"]);
    let before = cluster.clone();
    let err = cluster.apply(Event::Join("a".into())).unwrap_err();
    assert_eq!(err, RoutingError::DuplicateNode("a".into()));
    assert!(err.to_string().contains("'a'"), "{err}");
    let err = cluster.apply(Event::Join("b".into())).unwrap_err();
    assert_eq!(err, RoutingError::DuplicateNode("b".into()));
    let err = cluster.apply(Event::Fail("zed".into())).unwrap_err();
    assert_eq!(err, RoutingError::UnknownNode("zed".into()));
    assert!(err.to_string().contains("'zed'"), "{err}");
    let err = cluster.apply(Event::Leave("zed".into())).unwrap_err();
    assert_eq!(err, RoutingError::UnknownNode("zed".into()));
    assert_eq!(cluster, before);
}

#[test]
fn event_parsing() {
    assert_eq!("join:a".parse(), Ok(Event::Join("a".into())));
    assert_eq!("fail:node-7".parse(), Ok(Event::Fail("node-7".into())));
    assert_eq!("leave:x:y".parse(), Ok(Event::Leave("x:y".into())));
    for bad in ["jion:a", "join:", "join", "", ":a", "JOIN:a", "join:a b"] {
        let err = bad.parse::<Event>().unwrap_err();
        assert_eq!(err.token, bad);
        assert!(err.to_string().contains(&format!("'{bad}'")), "{err}");
    }
    assert_eq!(Event::Leave("q".into()).to_string(), "leave:q");
}

#[test]
fn first_join_writes_slot_then_every_route() {
    let mut cluster = Cluster::new(config(3, 0, None)).unwrap();
    let plan = cluster.apply(Event::Join("a".into())).unwrap();
    assert_eq!(
        plan.writes,
        vec![
            TableWrite::Slot {
                slot: 1,
                node: Some("a".into())
            },
            TableWrite::Route {
                route: 1,
                slot: Some(1)
            },
            TableWrite::Route {
                route: 2,
                slot: Some(1)
            },
            TableWrite::Route {
                route: 3,
                slot: Some(1)
            },
        ]
    );
    assert_eq!(plan.moves.len(), 3);
    assert!(
        plan.moves
            .iter()
            .all(|m| m.from.is_none() && m.to.as_deref() == Some("a"))
    );
    assert_eq!(
        plan.slots,
        vec![SlotChange {
            slot: 1,
            from: None,
            to: Some("a".into())
        }]
    );
    assert_eq!(
        plan.roles,
        vec![RoleChange {
            node: "a".into(),
            from: None,
            to: Some(Role::Active)
        }]
    );
    assert_eq!(
        plan.notifications,
        vec![
            Notification::Role {
                node: "a".into(),
                role: Role::Active
            },
            Notification::Assigned {
                node: "a".into(),
                routes: vec![1, 2, 3]
            },
        ]
    );
}

#[test]
fn join_of_fourth_node_on_worked_example() {
    let mut cluster = cluster_with(24, 0, &["a", "b", "c"]);
    let plan = cluster.apply(Event::Join("d".into())).unwrap();
    let moved: Vec<(Route, Option<&str>)> = plan
        .moves
        .iter()
        .map(|m| (m.route, m.from.as_deref()))
        .collect();
    assert_eq!(
        moved,
        vec![
            (7, Some("a")),
            (8, Some("a")),
            (19, Some("b")),
            (20, Some("b")),
            (23, Some("c")),
            (24, Some("c")),
        ]
    );
    assert_eq!(
        plan.writes[0],
        TableWrite::Slot {
            slot: 4,
            node: Some("d".into())
        }
    );
    assert_eq!(plan.writes.len(), 7);
    let d = Some("d".to_string());
    assert_eq!(
        plan.notifications,
        vec![
            Notification::Moved {
                node: "a".into(),
                routes: vec![(7, d.clone()), (8, d.clone())]
            },
            Notification::Moved {
                node: "b".into(),
                routes: vec![(19, d.clone()), (20, d.clone())]
            },
            Notification::Moved {
                node: "c".into(),
                routes: vec![(23, d.clone()), (24, d.clone())]
            },
            Notification::Role {
                node: "d".into(),
                role: Role::Active
            },
            Notification::Assigned {
                node: "d".into(),
                routes: vec![7, 8, 19, 20, 23, 24]
            },
        ]
    );
}

#[test]
fn failure_of_middle_slot_moves_last_node_in() {
    let mut cluster = cluster_with(24, 0, &["a", "b", "c", "d"]);
    let plan = cluster.apply(Event::Fail("b".into())).unwrap();
    assert_eq!(cluster.active(), names(&["a", "d", "c"]).as_slice());
    assert_eq!(table_of(&cluster), parse_row(WORKED_EXAMPLE[2]));
    assert_eq!(
        plan.writes,
        vec![
            TableWrite::Slot {
                slot: 2,
                node: Some("d".into())
            },
            TableWrite::Route {
                route: 7,
                slot: Some(1)
            },
            TableWrite::Route {
                route: 8,
                slot: Some(1)
            },
            TableWrite::Route {
                route: 19,
                slot: Some(2)
            },
            TableWrite::Route {
                route: 20,
                slot: Some(2)
            },
            TableWrite::Route {
                route: 23,
                slot: Some(3)
            },
            TableWrite::Route {
                route: 24,
                slot: Some(3)
            },
            TableWrite::Slot {
                slot: 4,
                node: None
            },
        ]
    );
    // Routes 19 and 20 change slot (4 -> 2) but not node (d): no move.
    let moved: Vec<Route> = plan.moves.iter().map(|m| m.route).collect();
    assert_eq!(moved, vec![7, 8, 13, 14, 15, 16, 17, 18, 23, 24]);
    assert_eq!(
        plan.slots,
        vec![
            SlotChange {
                slot: 2,
                from: Some("b".into()),
                to: Some("d".into())
            },
            SlotChange {
                slot: 4,
                from: Some("d".into()),
                to: None
            },
        ]
    );
    let (a, c, d) = (
        Some("a".to_string()),
        Some("c".to_string()),
        Some("d".to_string()),
    );
    assert_eq!(
        plan.notifications,
        vec![
            Notification::Moved {
                node: "b".into(),
                routes: (13..=18).map(|r| (r, d.clone())).collect()
            },
            Notification::Moved {
                node: "d".into(),
                routes: vec![(7, a.clone()), (8, a), (23, c.clone()), (24, c)],
            },
            Notification::Assigned {
                node: "a".into(),
                routes: vec![7, 8]
            },
            Notification::Assigned {
                node: "d".into(),
                routes: (13..=18).collect()
            },
            Notification::Assigned {
                node: "c".into(),
                routes: vec![23, 24]
            },
        ]
    );
    assert_eq!(cluster.routes_of("d"), (13..=20).collect::<Vec<_>>());
}

#[test]
fn spare_takes_over_with_one_write() {
    // spares: 1 -> a active, b spare, c active, d spare (queue full -> rule 4
    // does not apply while k < max_active, so d takes slot 3)
    let mut cluster = cluster_with(24, 1, &["a", "b", "c", "d"]);
    assert_eq!(cluster.active(), names(&["a", "c", "d"]).as_slice());
    assert_eq!(cluster.spares(), vec!["b"]);
    let table = table_of(&cluster);
    let plan = cluster.apply(Event::Leave("c".into())).unwrap();
    assert_eq!(
        plan.writes,
        vec![TableWrite::Slot {
            slot: 2,
            node: Some("b".into())
        }]
    );
    assert_eq!(table_of(&cluster), table);
    assert_eq!(cluster.active(), names(&["a", "b", "d"]).as_slice());
    assert!(cluster.spares().is_empty());
    assert_eq!(plan.moves.len(), 8);
    assert_eq!(
        plan.roles,
        vec![
            RoleChange {
                node: "c".into(),
                from: Some(Role::Active),
                to: None
            },
            RoleChange {
                node: "b".into(),
                from: Some(Role::Spare),
                to: Some(Role::Active)
            },
        ]
    );
    assert!(matches!(&plan.notifications[0], Notification::Moved { node, .. } if node == "c"));
}

#[test]
fn last_node_leaving_unmaps_every_route_then_the_slot() {
    let mut cluster = cluster_with(2, 0, &["a"]);
    let plan = cluster.apply(Event::Leave("a".into())).unwrap();
    assert_eq!(
        plan.writes,
        vec![
            TableWrite::Route {
                route: 1,
                slot: None
            },
            TableWrite::Route {
                route: 2,
                slot: None
            },
            TableWrite::Slot {
                slot: 1,
                node: None
            },
        ]
    );
    assert_eq!(
        plan.notifications,
        vec![Notification::Moved {
            node: "a".into(),
            routes: vec![(1, None), (2, None)]
        }]
    );
    assert_eq!(cluster.node_of_route(1), None);
    assert_eq!(cluster.slot_of_route(1), None);
}

#[test]
fn max_active_sends_extra_nodes_to_the_spare_queue() {
    let mut cluster = Cluster::new(config(10, 0, Some(2))).unwrap();
    for name in ["a", "b", "c", "d"] {
        cluster.apply(Event::Join(name.into())).unwrap();
    }
    assert_eq!(cluster.active(), names(&["a", "b"]).as_slice());
    assert_eq!(cluster.spares(), vec!["c", "d"]);
    assert_eq!(cluster.role("c"), Some(Role::Spare));
    assert_eq!(cluster.slot_of("c"), None);
    assert!(cluster.routes_of("c").is_empty());
    let plan = cluster.apply(Event::Fail("c".into())).unwrap();
    assert!(plan.moves.is_empty() && plan.writes.is_empty() && plan.notifications.is_empty());
    assert_eq!(cluster.spares(), vec!["d"]);
    assert!(!cluster.contains("c"));
}

#[test]
fn accessors_outside_range() {
    let cluster = cluster_with(5, 0, &["a"]);
    assert_eq!(cluster.slot_of_route(0), None);
    assert_eq!(cluster.slot_of_route(6), None);
    assert_eq!(cluster.node_of_route(6), None);
    assert!(cluster.routes_of_slot(0).is_empty());
    assert!(cluster.routes_of_slot(2).is_empty());
    assert!(cluster.routes_of("nobody").is_empty());
    assert_eq!(cluster.role("nobody"), None);
}

// ---------------------------------------------------------------------------
// Property tests

#[derive(Clone, Debug)]
struct Scenario {
    config: ClusterConfig,
    events: Vec<Event>,
}

const POOL: [&str; 12] = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"];

fn scenario() -> impl Strategy<Value = Scenario> {
    // Small route counts reach k = N; larger ones exercise uneven quotas.
    let routes = prop_oneof![1u32..=16, 1u32..=200];
    (routes, 0u32..=3)
        .prop_flat_map(|(routes, spares)| {
            let max_active = prop_oneof![Just(None), (1..=routes).prop_map(Some)];
            let event = (0u8..6, 0..POOL.len()).prop_map(|(kind, index)| {
                let name = POOL[index].to_string();
                // Joins twice as likely, so clusters grow.
                match kind {
                    0..=2 => Event::Join(name),
                    3 | 4 => Event::Fail(name),
                    _ => Event::Leave(name),
                }
            });
            (
                Just(routes),
                Just(spares),
                max_active,
                prop::collection::vec(event, 0..=40),
            )
        })
        .prop_map(|(routes, spares, max_active, events)| Scenario {
            config: config(routes, spares, max_active),
            events,
        })
}

/// What the data plane would hold: slot -> node and route -> slot.
struct DataPlane {
    slots: HashMap<Slot, String>,
    routes: Vec<Option<Slot>>,
    /// Routes pointing at each slot.
    users: HashMap<Slot, usize>,
}

impl DataPlane {
    fn of(cluster: &Cluster) -> DataPlane {
        let routes: Vec<Option<Slot>> = (1..=cluster.routes())
            .map(|r| cluster.slot_of_route(r))
            .collect();
        let mut users = HashMap::new();
        for slot in routes.iter().flatten() {
            *users.entry(*slot).or_insert(0) += 1;
        }
        DataPlane {
            slots: (1..).zip(cluster.active().iter().cloned()).collect(),
            routes,
            users,
        }
    }

    fn apply(&mut self, write: &TableWrite) -> Result<(), TestCaseError> {
        match write {
            TableWrite::Slot {
                slot,
                node: Some(node),
            } => {
                prop_assert_ne!(
                    self.slots.get(slot),
                    Some(node),
                    "slot write without change: {:?}",
                    write
                );
                self.slots.insert(*slot, node.clone());
            }
            TableWrite::Slot { slot, node: None } => {
                prop_assert!(
                    self.slots.remove(slot).is_some(),
                    "removing absent slot: {:?}",
                    write
                );
                prop_assert_eq!(
                    self.users.get(slot).copied().unwrap_or(0),
                    0,
                    "slot removed under routes"
                );
            }
            TableWrite::Route { route, slot } => {
                let entry = &mut self.routes[usize::from(*route) - 1];
                prop_assert_ne!(
                    *entry,
                    *slot,
                    "route write without slot change: {:?}",
                    write
                );
                if let Some(old) = entry {
                    *self.users.get_mut(old).unwrap() -= 1;
                }
                if let Some(new) = slot {
                    prop_assert!(
                        self.slots.contains_key(new),
                        "route pointed at empty slot: {:?}",
                        write
                    );
                    *self.users.entry(*new).or_insert(0) += 1;
                }
                *entry = *slot;
            }
        }
        Ok(())
    }
}

fn node_table(cluster: &Cluster) -> Vec<Option<String>> {
    (1..=cluster.routes())
        .map(|route| cluster.node_of_route(route).map(str::to_owned))
        .collect()
}

/// Check every invariant of the spec after one event, given the state before.
fn check_step(
    before: &Cluster,
    after: &Cluster,
    event: &Event,
    plan: &Plan,
    known: &mut BTreeMap<String, BTreeSet<Route>>,
) -> Result<(), TestCaseError> {
    let n = after.routes();
    let k_before = before.active().len() as u16;
    let k = after.active().len() as u16;
    let config = after.config();
    prop_assert_eq!(&plan.event, event);

    // Every route that leaves a node that is still alive drains from it, and
    // only those: the node served it before, not after; a failed node drains
    // nothing.
    let mut drains = Vec::new();
    for route in 1..=n {
        let (Some(was), now) = (before.node_of_route(route), after.node_of_route(route)) else {
            continue;
        };
        if Some(was) != now && *event != Event::Fail(was.to_string()) {
            drains.push((route, was.to_string()));
        }
    }
    prop_assert_eq!(&plan.drains, &drains);

    // Every route maps to exactly one active node, or none when none is active.
    for route in 1..=n {
        match after.node_of_route(route) {
            Some(node) => {
                prop_assert!(k > 0);
                prop_assert_eq!(after.role(node), Some(Role::Active));
                prop_assert_eq!(after.slot_of_route(route), after.slot_of(node));
            }
            None => prop_assert_eq!(k, 0, "route {} unmapped with {} active", route, k),
        }
    }
    prop_assert!(k <= after.max_active());
    // With no node active there is no spare either.
    prop_assert!(k > 0 || after.spares().is_empty());

    // The table is T(k): it depends on k alone, and slots hold their routes ascending.
    prop_assert_eq!(table_of(after), reference_table(n, k));
    let mut counts = Vec::new();
    for slot in 1..=k {
        let list = after.routes_of_slot(slot);
        prop_assert!(list.windows(2).all(|w| w[0] < w[1]));
        prop_assert!(list.iter().all(|&r| after.slot_of_route(r) == Some(slot)));
        prop_assert_eq!(
            after.routes_of(&after.active()[usize::from(slot) - 1]),
            list.clone()
        );
        counts.push(list.len());
    }
    // Balanced: counts of two active slots differ by at most one.
    if let (Some(min), Some(max)) = (counts.iter().min(), counts.iter().max()) {
        prop_assert!(max - min <= 1, "unbalanced counts {:?}", counts);
    }
    // Registry consistency.
    for (index, name) in after.active().iter().enumerate() {
        prop_assert_eq!(after.slot_of(name), Some(index as Slot + 1));
    }
    for name in after.spares() {
        prop_assert_eq!(after.role(name), Some(Role::Spare));
    }

    // `moves` is exactly the routes whose node changed, ascending.
    let old_nodes = node_table(before);
    let new_nodes = node_table(after);
    let expected: Vec<RouteMove> = (1..=n)
        .filter(|&r| old_nodes[usize::from(r) - 1] != new_nodes[usize::from(r) - 1])
        .map(|r| RouteMove {
            route: r,
            from: old_nodes[usize::from(r) - 1].clone(),
            to: new_nodes[usize::from(r) - 1].clone(),
        })
        .collect();
    prop_assert_eq!(&plan.moves, &expected);

    // `slots` is exactly the slots whose node changed.
    let slot_node = |c: &Cluster, s: Slot| c.active().get(usize::from(s) - 1).cloned();
    let expected: Vec<SlotChange> = (1..=k.max(k_before))
        .filter(|&s| slot_node(before, s) != slot_node(after, s))
        .map(|s| SlotChange {
            slot: s,
            from: slot_node(before, s),
            to: slot_node(after, s),
        })
        .collect();
    prop_assert_eq!(&plan.slots, &expected);

    // `roles` is exactly the nodes whose role changed.
    let mut expected: BTreeSet<(String, Option<Role>, Option<Role>)> = BTreeSet::new();
    for name in POOL {
        if before.role(name) != after.role(name) {
            expected.insert((name.to_string(), before.role(name), after.role(name)));
        }
    }
    let got: BTreeSet<_> = plan
        .roles
        .iter()
        .map(|c| (c.node.clone(), c.from, c.to))
        .collect();
    prop_assert_eq!(got, expected);
    prop_assert_eq!(
        plan.roles.len(),
        plan.roles
            .iter()
            .map(|c| &c.node)
            .collect::<BTreeSet<_>>()
            .len()
    );

    // The rules of each event.
    let name = event.node();
    let quota = |k: u16| n / (k + 1);
    match event {
        Event::Join(_) => {
            let spares = before.spares().len() as u64;
            let expect_active = k_before == 0
                || (spares >= u64::from(config.spares) && k_before < before.max_active());
            if expect_active {
                prop_assert_eq!(after.slot_of(name), Some(k_before + 1));
                prop_assert_eq!(plan.moves.len(), usize::from(quota(k_before)));
                prop_assert_eq!(after.spares(), before.spares());
            } else {
                prop_assert_eq!(after.role(name), Some(Role::Spare));
                prop_assert_eq!(after.spares().last().copied(), Some(name));
                prop_assert_eq!(after.spares().len(), before.spares().len() + 1);
                prop_assert!(plan.moves.is_empty());
                prop_assert_eq!(after.active(), before.active());
            }
        }
        Event::Fail(_) | Event::Leave(_) => {
            prop_assert!(!after.contains(name));
            let lost = before.routes_of(name);
            match before.slot_of(name) {
                None => {
                    let mut spares = before.spares();
                    spares.retain(|spare| *spare != name);
                    prop_assert_eq!(after.spares(), spares);
                    prop_assert!(plan.moves.is_empty() && plan.writes.is_empty());
                    prop_assert_eq!(after.active(), before.active());
                }
                Some(failed) if !before.spares().is_empty() => {
                    let spare = before.spares()[0];
                    prop_assert_eq!(after.slot_of(spare), Some(failed));
                    prop_assert_eq!(&after.spares()[..], &before.spares()[1..]);
                    prop_assert_eq!(k, k_before);
                    let moved: Vec<Route> = plan.moves.iter().map(|m| m.route).collect();
                    prop_assert_eq!(moved, lost);
                    prop_assert_eq!(plan.writes.len(), 1);
                }
                Some(failed) => {
                    prop_assert_eq!(k, k_before - 1);
                    let last_routes = before.routes_of_slot(k_before);
                    prop_assert!(plan.moves.len() <= lost.len() + last_routes.len());
                    prop_assert!(
                        plan.moves
                            .iter()
                            .all(|m| lost.contains(&m.route) || last_routes.contains(&m.route))
                    );
                    if failed < k_before {
                        let last = &before.active()[usize::from(k_before) - 1];
                        prop_assert_eq!(after.slot_of(last), Some(failed));
                    }
                    // The others keep their slots.
                    for (index, node) in before
                        .active()
                        .iter()
                        .enumerate()
                        .take(usize::from(k_before) - 1)
                    {
                        if index + 1 != usize::from(failed) {
                            prop_assert_eq!(after.slot_of(node), Some(index as Slot + 1));
                        }
                    }
                }
            }
            if before.role(name) == Some(Role::Active) {
                // The departing node hears first.
                prop_assert!(
                    matches!(plan.notifications.first(), Some(Notification::Moved { node, .. }) if node == name),
                    "first notification {:?}",
                    plan.notifications.first()
                );
            }
        }
    }

    // Data-plane writes in order never point a route at a slot without a node,
    // write each route at most once, and end at the new table.
    let mut plane = DataPlane::of(before);
    let mut written = BTreeSet::new();
    for write in &plan.writes {
        plane.apply(write)?;
        if let TableWrite::Route { route, .. } = write {
            prop_assert!(written.insert(*route), "route {} written twice", route);
        }
    }
    let target = DataPlane::of(after);
    prop_assert_eq!(plane.routes, target.routes);
    prop_assert_eq!(plane.slots, target.slots);

    // Notifications keep each node's own view of its routes exact.
    let mut role_notes = BTreeSet::new();
    for note in &plan.notifications {
        match note {
            Notification::Moved { node, routes } => {
                let set = known.entry(node.clone()).or_default();
                for (route, to) in routes {
                    prop_assert!(
                        set.remove(route),
                        "{} told it lost {} it did not have",
                        node,
                        route
                    );
                    prop_assert_eq!(to.as_deref(), after.node_of_route(*route));
                }
            }
            Notification::Assigned { node, routes } => {
                prop_assert!(after.contains(node));
                let set = known.entry(node.clone()).or_default();
                for route in routes {
                    prop_assert!(set.insert(*route), "{} assigned {} twice", node, route);
                }
            }
            Notification::Role { node, role } => {
                prop_assert_eq!(after.role(node), Some(*role));
                role_notes.insert(node.clone());
            }
        }
    }
    let expected_notes: BTreeSet<String> = plan
        .roles
        .iter()
        .filter(|c| c.to.is_some())
        .map(|c| c.node.clone())
        .collect();
    prop_assert_eq!(role_notes, expected_notes);
    for name in POOL {
        let set = known.get(name).cloned().unwrap_or_default();
        let exact: BTreeSet<Route> = after.routes_of(name).into_iter().collect();
        prop_assert_eq!(set, exact, "node {} view", name);
    }
    Ok(())
}

fn run(scenario: &Scenario) -> (Cluster, Vec<Result<Plan, RoutingError>>) {
    let mut cluster = Cluster::new(scenario.config).unwrap();
    let results = scenario
        .events
        .iter()
        .map(|e| cluster.apply(e.clone()))
        .collect();
    (cluster, results)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn every_invariant_holds_after_every_event(scenario in scenario()) {
        let mut cluster = Cluster::new(scenario.config).unwrap();
        let mut known: BTreeMap<String, BTreeSet<Route>> = BTreeMap::new();
        for event in &scenario.events {
            let before = cluster.clone();
            match cluster.apply(event.clone()) {
                Ok(plan) => check_step(&before, &cluster, event, &plan, &mut known)?,
                Err(err) => {
                    prop_assert_eq!(&cluster, &before, "state changed on error");
                    let registered = before.contains(event.node());
                    match (event, err) {
                        (Event::Join(name), RoutingError::DuplicateNode(bad)) => {
                            prop_assert!(registered);
                            prop_assert_eq!(name, &bad);
                        }
                        (Event::Fail(name) | Event::Leave(name), RoutingError::UnknownNode(bad)) => {
                            prop_assert!(!registered);
                            prop_assert_eq!(name, &bad);
                        }
                        (event, err) => prop_assert!(false, "{} gave {}", event, err),
                    }
                }
            }
        }
    }

    #[test]
    fn same_events_same_table(scenario in scenario()) {
        let (first, first_plans) = run(&scenario);
        let (second, second_plans) = run(&scenario);
        prop_assert_eq!(&first, &second);
        prop_assert_eq!(first_plans, second_plans);
        prop_assert_eq!(table_of(&first), table_of(&second));
    }

    /// Joining a node and then failing (or removing) it, while no spare
    /// waits, restores everything: table, history, slots and spare queue.
    #[test]
    fn join_then_fail_restores_previous_state(scenario in scenario(), leave in any::<bool>()) {
        let mut cluster = Cluster::new(scenario.config).unwrap();
        for event in &scenario.events {
            let _ = cluster.apply(event.clone());
            if !cluster.spares().is_empty() {
                continue;
            }
            let mut probe = cluster.clone();
            let join = probe.apply(Event::Join("probe".into())).unwrap();
            let back = if leave { Event::Leave("probe".into()) } else { Event::Fail("probe".into()) };
            let undo = probe.apply(back).unwrap();
            prop_assert_eq!(&probe, &cluster);
            // The undo moves exactly the routes the join moved, back.
            let forward: Vec<_> = join.moves.iter().map(|m| (m.route, m.to.clone(), m.from.clone())).collect();
            let reverse: Vec<_> = undo.moves.iter().map(|m| (m.route, m.from.clone(), m.to.clone())).collect();
            prop_assert_eq!(forward, reverse);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// A cluster rebuilt from its slot -> node mapping and spare queue (what
    /// the daemon's state file holds) is the same cluster: table, history,
    /// slots and spares; and it goes on to make the same plans.
    #[test]
    fn restore_rebuilds_the_same_cluster(scenario in scenario()) {
        let (cluster, _) = run(&scenario);
        let active = cluster.active().to_vec();
        let spares: Vec<String> = cluster.spares().into_iter().map(str::to_string).collect();
        let mut restored = Cluster::restore(scenario.config, active, spares).unwrap();
        prop_assert_eq!(&restored, &cluster);
        let mut original = cluster.clone();
        for event in [Event::Join("x".into()), Event::Fail("a".into()), Event::Leave("x".into())] {
            prop_assert_eq!(restored.apply(event.clone()), original.apply(event));
        }
    }
}

#[test]
fn restore_refuses_states_the_config_cannot_hold() {
    let err =
        Cluster::restore(config(24, 0, Some(2)), names(&["a", "b", "c"]), vec![]).unwrap_err();
    assert!(err.to_string().contains("max_active"), "{err}");
    let err = Cluster::restore(config(24, 0, None), names(&["a", "b"]), names(&["a"])).unwrap_err();
    assert_eq!(err, RoutingError::DuplicateNode("a".into()));
    let restored =
        Cluster::restore(config(24, 1, None), names(&["a", "b"]), names(&["c"])).unwrap();
    assert_eq!(restored, cluster_with(24, 1, &["a", "c", "b"]));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Joins carried out together (`Plan::merge_joins`): the merged plan is
    /// the net change between the cluster before the first join and after
    /// the last. Its writes turn the data plane's tables of before into those
    /// of after; each node that was registered before ends up knowing exactly
    /// its routes from `moved` and `assigned`; every drain is a route whose
    /// node before is still registered and serves it no more; and the cluster
    /// is the one the joins give one by one.
    #[test]
    fn merged_joins_are_the_net_change(scenario in scenario(), joins in 1usize..8) {
        let (mut cluster, _) = run(&scenario);
        let before = cluster.clone();
        let mut plans = Vec::new();
        for i in 0..joins {
            plans.push(cluster.apply(Event::Join(format!("new{i}"))).unwrap());
        }
        let merged = Plan::merge_joins(plans).unwrap();
        let node_of = |c: &Cluster, route: Route| c.node_of_route(route).map(str::to_string);
        let expected: Vec<RouteMove> = (1..=cluster.routes())
            .filter(|&r| node_of(&before, r) != node_of(&cluster, r))
            .map(|r| RouteMove { route: r, from: node_of(&before, r), to: node_of(&cluster, r) })
            .collect();
        prop_assert_eq!(&merged.moves, &expected);
        // The writes, applied to the tables of before, give the tables of after.
        let mut slot_node: HashMap<Slot, String> = (1..=before.active().len() as Slot)
            .map(|s| (s, before.active()[usize::from(s) - 1].clone()))
            .collect();
        let mut route_slot: Vec<Option<Slot>> =
            (1..=before.routes()).map(|r| before.slot_of_route(r)).collect();
        for write in &merged.writes {
            match write {
                TableWrite::Slot { slot, node: Some(node) } => { slot_node.insert(*slot, node.clone()); }
                TableWrite::Slot { slot, node: None } => { slot_node.remove(slot); }
                TableWrite::Route { route, slot } => {
                    // Never a route pointed at a slot without a node.
                    if let Some(slot) = slot {
                        prop_assert!(slot_node.contains_key(slot), "route {} -> empty slot {}", route, slot);
                    }
                    route_slot[usize::from(*route) - 1] = *slot;
                }
            }
        }
        for route in 1..=cluster.routes() {
            let reached = route_slot[usize::from(route) - 1].and_then(|s| slot_node.get(&s).cloned());
            prop_assert_eq!(reached, node_of(&cluster, route), "route {}", route);
        }
        // Nodes of before learn exactly their routes of after.
        let mut known: HashMap<String, BTreeSet<Route>> = before
            .active()
            .iter()
            .map(|n| (n.clone(), before.routes_of(n).into_iter().collect()))
            .collect();
        for notification in &merged.notifications {
            match notification {
                Notification::Moved { node, routes } => {
                    let set = known.get_mut(node).expect("moved to a node of before");
                    for (route, to) in routes {
                        prop_assert!(set.remove(route));
                        prop_assert_eq!(to.clone(), node_of(&cluster, *route));
                    }
                }
                Notification::Assigned { node, routes } => {
                    known.entry(node.clone()).or_default().extend(routes.iter().copied());
                }
                Notification::Role { node, role } => {
                    prop_assert_eq!(Some(*role), cluster.role(node));
                }
            }
        }
        for (node, routes) in &known {
            let actual: BTreeSet<Route> = cluster.routes_of(node).into_iter().collect();
            prop_assert_eq!(routes, &actual, "node {}", node);
        }
        let drains: Vec<(Route, String)> = expected
            .iter()
            .filter_map(|m| Some((m.route, m.from.clone()?)))
            .collect();
        prop_assert_eq!(&merged.drains, &drains);
    }
}

#[test]
fn only_joins_merge() {
    let mut cluster = cluster_with(24, 0, &["a", "b"]);
    let join = cluster.apply(Event::Join("c".into())).unwrap();
    let fail = cluster.apply(Event::Fail("a".into())).unwrap();
    assert_eq!(Plan::merge_joins(vec![join.clone(), fail]), None);
    assert_eq!(Plan::merge_joins(vec![]), None);
    // One plan merges into itself, but for message order within a kind.
    let merged = Plan::merge_joins(vec![join.clone()]).unwrap();
    assert_eq!(merged.moves, join.moves);
    assert_eq!(merged.drains, join.drains);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// `Cluster::join_all` is the joins one by one, merged: the same plan as
    /// `Plan::merge_joins` of the single plans, and the same cluster after.
    #[test]
    fn join_all_is_the_merge_of_single_joins(scenario in scenario(), joins in 0usize..10) {
        let (cluster, _) = run(&scenario);
        let names: Vec<String> = (0..joins).map(|i| format!("new{i}")).collect();
        let mut one_by_one = cluster.clone();
        let plans: Vec<Plan> = names
            .iter()
            .map(|name| one_by_one.apply(Event::Join(name.clone())).unwrap())
            .collect();
        let mut together = cluster.clone();
        let plan = together.join_all(names).unwrap();
        prop_assert_eq!(plan, Plan::merge_joins(plans));
        prop_assert_eq!(&together, &one_by_one);
    }
}

#[test]
fn join_all_refuses_known_and_repeated_names_and_changes_nothing() {
    let mut cluster = cluster_with(24, 0, &["a", "b"]);
    let before = cluster.clone();
    assert_eq!(
        cluster.join_all(names(&["c", "a"])),
        Err(RoutingError::DuplicateNode("a".into()))
    );
    assert_eq!(
        cluster.join_all(names(&["c", "d", "c"])),
        Err(RoutingError::DuplicateNode("c".into()))
    );
    assert_eq!(cluster, before);
    assert_eq!(cluster.join_all(Vec::new()), Ok(None));
}
