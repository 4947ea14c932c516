//! The canonical route -> slot table `T(k)` (shared/spec/routing.md, "T(k)").
//!
//! `T(k)` is a pure function of `N` and `k`. [`Table`] holds `T(k)` and steps
//! to `T(k+1)` ([`Table::grow`]) or back to `T(k-1)` ([`Table::shrink`]) in
//! time proportional to the slots and routes touched, never by replaying the
//! steps from `T(1)`.
//!
//! To step back, the table remembers for every route of slot `j >= 2` the slot
//! it came from when slot `j` was added (one `u16` per moved route). Slot `j`
//! only ever receives routes in the step that creates it, so when `T(j)` is the
//! current table again its route list is exactly the list it was created with,
//! and the remembered origins line up with it. That log holds
//! `sum(floor(N/m), m = 2..=k)` entries, about `N * (ln k - 0.42)`.

use super::{Route, Slot};

/// `T(k)` for a fixed number of routes `N`, with enough history to step back.
#[derive(Clone, Debug)]
pub struct Table {
    routes: u16,
    /// Slot serving each route, index `route - 1`; 0 while no slot exists.
    slot_of_route: Vec<Slot>,
    /// Routes of each slot, index `slot - 1`, ascending.
    routes_of_slot: Vec<Vec<Route>>,
    /// For slots `2..=k` in order: the origin slot of each route of that slot,
    /// aligned with the slot's ascending route list as it was created.
    origins: Vec<Slot>,
    /// Scratch space for one step, kept to avoid allocating on every event.
    order: Vec<Slot>,
    moved: Vec<(Route, Slot)>,
}

/// Two tables are equal when they are the same `T(k)` with the same history;
/// the scratch space does not count.
impl PartialEq for Table {
    fn eq(&self, other: &Table) -> bool {
        self.routes == other.routes
            && self.slot_of_route == other.slot_of_route
            && self.routes_of_slot == other.routes_of_slot
            && self.origins == other.origins
    }
}

impl Eq for Table {}

/// Number of routes the step from `T(k-1)` to `T(k)` moves into slot `k`.
pub fn quota(routes: u16, k: u16) -> u16 {
    if k <= 1 { routes } else { routes / k }
}

impl Table {
    /// `T(0)`: no slot, no route mapped. `routes` must be at least 1.
    pub fn new(routes: u16) -> Table {
        assert!(routes >= 1, "a table needs at least one route");
        Table {
            routes,
            slot_of_route: vec![0; usize::from(routes)],
            routes_of_slot: Vec::new(),
            origins: Vec::new(),
            order: Vec::new(),
            moved: Vec::new(),
        }
    }

    /// `T(k)` built from scratch by stepping up from `T(0)`. This is what a
    /// replaying implementation pays on every event; it serves as the
    /// baseline in the benchmark.
    pub fn build(routes: u16, k: u16) -> Table {
        assert!(k <= routes, "T(k) needs k <= N");
        let mut table = Table::new(routes);
        for _ in 0..k {
            table.grow();
        }
        table
    }

    /// `N`.
    pub fn routes(&self) -> u16 {
        self.routes
    }

    /// `k`, the number of slots.
    pub fn slots(&self) -> u16 {
        self.routes_of_slot.len() as u16
    }

    /// Slot serving `route`, `None` for `k = 0` or a route outside `1..=N`.
    pub fn slot_of_route(&self, route: Route) -> Option<Slot> {
        let index = usize::from(route).checked_sub(1)?;
        self.slot_of_route
            .get(index)
            .copied()
            .filter(|&slot| slot != 0)
    }

    /// Routes of `slot`, ascending; empty for a slot outside `1..=k`.
    pub fn routes_of_slot(&self, slot: Slot) -> &[Route] {
        usize::from(slot)
            .checked_sub(1)
            .and_then(|index| self.routes_of_slot.get(index))
            .map_or(&[], Vec::as_slice)
    }

    /// Step from `T(k)` to `T(k+1)`. Returns the routes that moved to the new
    /// slot `k+1`, ascending, each with the slot it came from (the new slot's
    /// list). Panics if `k = N` (the caller bounds `k` by `max_active <= N`).
    pub fn grow(&mut self) -> &[(Route, Slot)] {
        let m = self.slots();
        assert!(
            m < self.routes,
            "cannot add slot {} to {} routes",
            m + 1,
            self.routes
        );
        self.moved.clear();
        if m == 0 {
            self.routes_of_slot.push((1..=self.routes).collect());
            self.slot_of_route.fill(1);
            self.moved.extend((1..=self.routes).map(|route| (route, 0)));
            return &self.moved;
        }
        let new_slot = m + 1;
        let quota = self.routes / new_slot;
        // T(m) is balanced: every slot holds c or c+1 routes. The spec's order
        // (count descending, slot ascending) is therefore the c+1 slots in
        // ascending order followed by the c slots in ascending order.
        let c = self.routes / m;
        self.order.clear();
        let full = self.routes_of_slot.iter().enumerate();
        self.order.extend(
            full.clone()
                .filter(|(_, list)| list.len() > usize::from(c))
                .map(|(i, _)| i as Slot + 1),
        );
        self.order.extend(
            full.filter(|(_, list)| list.len() <= usize::from(c))
                .map(|(i, _)| i as Slot + 1),
        );
        let mut left = quota;
        'walk: loop {
            for &slot in &self.order {
                if left == 0 {
                    break 'walk;
                }
                let route = self.routes_of_slot[usize::from(slot) - 1]
                    .pop()
                    .expect("a balanced table has no empty slot while k < N");
                self.moved.push((route, slot));
                left -= 1;
            }
        }
        self.moved.sort_unstable_by_key(|&(route, _)| route);
        let mut list = Vec::with_capacity(self.moved.len());
        for &(route, origin) in &self.moved {
            list.push(route);
            self.origins.push(origin);
            self.slot_of_route[usize::from(route) - 1] = new_slot;
        }
        self.routes_of_slot.push(list);
        &self.moved
    }

    /// Step from `T(k)` back to `T(k-1)`: every route of slot `k` returns to
    /// the slot it came from. Returns those routes, ascending, each with the
    /// slot it returned to (0 when `k` was 1: the route is now unmapped).
    /// Panics if `k = 0`.
    pub fn shrink(&mut self) -> &[(Route, Slot)] {
        let list = self
            .routes_of_slot
            .pop()
            .expect("shrink needs at least one slot");
        self.moved.clear();
        if self.routes_of_slot.is_empty() {
            self.slot_of_route.fill(0);
            self.moved.extend(list.iter().map(|&route| (route, 0)));
            return &self.moved;
        }
        let start = self.origins.len() - list.len();
        // Each origin gave away its highest routes, so they are above every
        // route it kept: pushing them back in ascending order keeps its list
        // ascending.
        for (&route, &origin) in list.iter().zip(&self.origins[start..]) {
            self.routes_of_slot[usize::from(origin) - 1].push(route);
            self.slot_of_route[usize::from(route) - 1] = origin;
            self.moved.push((route, origin));
        }
        self.origins.truncate(start);
        &self.moved
    }

    /// Heap bytes this table holds (capacities, not lengths; allocator
    /// overhead excluded).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        self.slot_of_route.capacity() * size_of::<Slot>()
            + self.routes_of_slot.capacity() * size_of::<Vec<Route>>()
            + self
                .routes_of_slot
                .iter()
                .map(|list| list.capacity() * size_of::<Route>())
                .sum::<usize>()
            + self.origins.capacity() * size_of::<Slot>()
            + self.order.capacity() * size_of::<Slot>()
            + self.moved.capacity() * size_of::<(Route, Slot)>()
    }
}
