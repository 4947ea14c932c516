//! Port <-> route arithmetic (shared/spec/routing.md): route `r` owns port
//! `base + r - 1` in every listener group, so a group with base port `B` covers
//! `B ..= B + routes - 1`.

/// Most listener groups one gateway serves; the XDP program walks this many at most.
pub const MAX_LISTENERS: usize = 8;

/// The route (1-based) that `port` belongs to, or `None` when it is in no listener
/// group. Only the first `count` entries of `bases` are groups. Groups never overlap
/// (user space checks it), so the first match is the only one.
#[inline(always)]
pub fn route_for_port(
    port: u16,
    bases: &[u16; MAX_LISTENERS],
    count: u16,
    routes: u16,
) -> Option<u16> {
    let mut i = 0;
    while i < MAX_LISTENERS {
        if i >= count as usize {
            break;
        }
        let base = bases[i];
        if port >= base {
            let offset = port - base;
            if offset < routes {
                return Some(offset + 1);
            }
        }
        i += 1;
    }
    None
}

/// The port route `route` (1-based) owns in the group starting at `base`, or `None`
/// when it does not fit in 16 bits or `route` is 0.
#[inline(always)]
pub fn port_for_route(base: u16, route: u16) -> Option<u16> {
    if route == 0 {
        return None;
    }
    base.checked_add(route - 1)
}

/// The last port of a group starting at `base` with `routes` routes, or `None` when
/// the group would run past port 65535 or has no routes.
#[inline(always)]
pub fn last_port(base: u16, routes: u16) -> Option<u16> {
    port_for_route(base, routes)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use proptest::prelude::*;

    use super::*;

    fn groups() -> impl Strategy<Value = (u16, Vec<u16>)> {
        (1u16..2000, 1usize..=MAX_LISTENERS).prop_flat_map(|(routes, count)| {
            // Place non-overlapping groups: each base lies past the previous group's end.
            proptest::collection::vec(0u16..3000, count).prop_map(move |gaps| {
                let mut bases = Vec::new();
                let mut next: u32 = 1;
                for gap in gaps {
                    let base = next + gap as u32;
                    if base + routes as u32 - 1 > u16::MAX as u32 {
                        break;
                    }
                    bases.push(base as u16);
                    next = base + routes as u32;
                }
                (routes, bases)
            })
        })
    }

    proptest! {
        #[test]
        fn route_for_port_matches_enumeration((routes, bases) in groups(), port in any::<u16>()) {
            let mut table = [0u16; MAX_LISTENERS];
            table[..bases.len()].copy_from_slice(&bases);
            // Independent model: enumerate every port of every group.
            let expected = bases.iter().find_map(|&base| {
                (1..=routes).find(|&r| base as u32 + r as u32 - 1 == port as u32)
            });
            prop_assert_eq!(route_for_port(port, &table, bases.len() as u16, routes), expected);
        }

        #[test]
        fn port_and_route_round_trip((routes, bases) in groups(), route in 1u16..2000) {
            prop_assume!(route <= routes);
            let mut table = [0u16; MAX_LISTENERS];
            table[..bases.len()].copy_from_slice(&bases);
            for &base in &bases {
                let port = port_for_route(base, route).unwrap();
                prop_assert_eq!(route_for_port(port, &table, bases.len() as u16, routes), Some(route));
            }
        }
    }

    #[test]
    fn edges() {
        let mut bases = [0u16; MAX_LISTENERS];
        bases[0] = 8000;
        bases[1] = 9000;
        assert_eq!(route_for_port(7999, &bases, 2, 24), None);
        assert_eq!(route_for_port(8000, &bases, 2, 24), Some(1));
        assert_eq!(route_for_port(8023, &bases, 2, 24), Some(24));
        assert_eq!(route_for_port(8024, &bases, 2, 24), None);
        assert_eq!(route_for_port(9023, &bases, 2, 24), Some(24));
        // Entries past `count` are not groups.
        assert_eq!(route_for_port(9000, &bases, 1, 24), None);
        assert_eq!(last_port(65535, 1), Some(65535));
        assert_eq!(last_port(65535, 2), None);
        assert_eq!(port_for_route(100, 0), None);
    }
}
