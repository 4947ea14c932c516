//! Route churn: how many routes move on a join and on a failure, for halod (its real
//! routing core, through `halod simulate --json`), for the theoretical minimum, and for
//! Maglev consistent hashing (Eisenbud et al., NSDI 2016) with a lookup table of 65,537
//! entries, computed here for the same node counts.
//!
//! Maglev is mapped onto routes directly: route `r` uses table entry `r - 1` (65,535 of
//! the 65,537 entries). Maglev's per-backend permutations already scatter each backend
//! over the table, so hashing the route first would not change the counts.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::command;

/// Routes (`routes:`), the largest the config allows.
pub const ROUTES: u32 = 65_535;
/// Maglev lookup table size: prime, and the paper's example for small backend counts.
pub const MAGLEV_TABLE: usize = 65_537;

/// Churn for one node count `k`.
#[derive(Debug, Clone)]
pub struct Churn {
    pub nodes: usize,
    /// k -> k+1 nodes.
    pub join: Moves,
    /// k -> k-1 nodes: the node in the last slot fails (no spare).
    pub fail_last: Moves,
    /// k -> k-1 nodes: a node in the middle fails (no spare).
    pub fail_middle: Moves,
    /// halod with a spare waiting: the failed node's routes move to the spare.
    pub halod_fail_with_spare: usize,
}

/// Routes moved by one event.
#[derive(Debug, Clone, Copy)]
pub struct Moves {
    pub halod: usize,
    pub minimum: usize,
    pub maglev: usize,
}

pub fn run(halod: &Path, node_counts: &[usize]) -> Result<Vec<Churn>> {
    node_counts
        .iter()
        .map(|&k| measure(halod, k).with_context(|| format!("route churn with {k} nodes")))
        .collect()
}

fn measure(halod: &Path, k: usize) -> Result<Churn> {
    if k < 2 {
        bail!("churn needs at least 2 nodes, not {k}");
    }
    let names: Vec<String> = (1..=k + 1).map(|i| format!("n{i}")).collect();
    let joins = |count: usize| -> Vec<String> {
        names[..count].iter().map(|n| format!("join:{n}")).collect()
    };
    let middle = k / 2;

    // halod: the real routing core. `moved` lists the routes moved by each event.
    let mut events = joins(k + 1);
    let join = last_moved(&simulate(halod, 0, &events)?)?;
    events = joins(k);
    events.push(format!("fail:{}", names[k - 1]));
    let fail_last = last_moved(&simulate(halod, 0, &events)?)?;
    events.pop();
    events.push(format!("fail:{}", names[middle - 1]));
    let fail_middle = last_moved(&simulate(halod, 0, &events)?)?;
    // With spares: 1, the second join waits as the spare; k actives need k+1 joins.
    events = joins(k + 1);
    events.push(format!("fail:{}", names[0]));
    let with_spare = simulate(halod, 1, &events)?;
    let halod_fail_with_spare = last_moved(&with_spare)?;

    // The theoretical minimum: a balanced join must give the new node its share; a
    // failure must move at least the failed node's routes (the same for any node when
    // the table is balanced, up to one route).
    let n = ROUTES as usize;
    let join_minimum = n / (k + 1);
    let share_of = |slot: usize| n / k + usize::from(slot <= n % k);
    let fail_last_minimum = share_of(k);
    let fail_middle_minimum = share_of(middle);

    // Maglev with the same backends.
    let backends: Vec<&str> = names.iter().map(String::as_str).collect();
    let before = maglev_table(&backends[..k], MAGLEV_TABLE);
    let after_join = maglev_table(&backends[..k + 1], MAGLEV_TABLE);
    let without = |failed: usize| -> Vec<&str> {
        backends[..k]
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != failed)
            .map(|(_, b)| *b)
            .collect()
    };
    let after_fail_last = maglev_table(&without(k - 1), MAGLEV_TABLE);
    let after_fail_middle = maglev_table(&without(middle - 1), MAGLEV_TABLE);
    let moved = |a: &[u32], b: &[u32], names_a: &[&str], names_b: &[&str]| {
        (0..n)
            .filter(|&e| names_a[a[e] as usize] != names_b[b[e] as usize])
            .count()
    };
    let fail_last_names = without(k - 1);
    let fail_middle_names = without(middle - 1);
    Ok(Churn {
        nodes: k,
        join: Moves {
            halod: join,
            minimum: join_minimum,
            maglev: moved(&before, &after_join, &backends[..k], &backends[..k + 1]),
        },
        fail_last: Moves {
            halod: fail_last,
            minimum: fail_last_minimum,
            maglev: moved(&before, &after_fail_last, &backends[..k], &fail_last_names),
        },
        fail_middle: Moves {
            halod: fail_middle,
            minimum: fail_middle_minimum,
            maglev: moved(
                &before,
                &after_fail_middle,
                &backends[..k],
                &fail_middle_names,
            ),
        },
        halod_fail_with_spare,
    })
}

/// Runs `halod simulate --json` and returns its output.
fn simulate(halod: &Path, spares: u32, events: &[String]) -> Result<Value> {
    let mut cmd = Command::new(halod);
    cmd.args(["simulate", "--json", "--routes", &ROUTES.to_string()])
        .args(["--spares", &spares.to_string()])
        .args(events);
    let out = command::run(&mut cmd)?;
    serde_json::from_str(&out).with_context(|| format!("`halod simulate --json` printed {out:?}"))
}

fn last_moved(summary: &Value) -> Result<usize> {
    summary["moved"]
        .as_array()
        .and_then(|moved| moved.last())
        .and_then(Value::as_u64)
        .map(|m| m as usize)
        .with_context(|| format!("no `moved` counts in {summary}"))
}

/// Maglev's lookup table (the paper's Pseudocode 1): entry -> index into `backends`.
pub fn maglev_table(backends: &[&str], size: usize) -> Vec<u32> {
    assert!(
        !backends.is_empty() && size > 1,
        "Maglev needs backends and a table"
    );
    let m = size as u64;
    let permutation: Vec<(u64, u64)> = backends
        .iter()
        .map(|name| {
            let offset = hash(name, 0x5bd1_e995) % m;
            let skip = hash(name, 0x9e37_79b9_7f4a_7c15) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; backends.len()];
    let mut entry = vec![u32::MAX; size];
    let mut filled = 0;
    loop {
        for (i, &(offset, skip)) in permutation.iter().enumerate() {
            let mut c = ((offset + next[i] * skip) % m) as usize;
            while entry[c] != u32::MAX {
                next[i] += 1;
                c = ((offset + next[i] * skip) % m) as usize;
            }
            entry[c] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == size {
                return entry;
            }
        }
    }
}

/// FNV-1a over the name, then a 64-bit finaliser (splitmix64) mixed with `seed`: two
/// independent hashes for offset and skip, stable across runs and Rust versions.
fn hash(name: &str, seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for byte in name.bytes() {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = h.wrapping_add(seed);
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(k: usize) -> Vec<String> {
        (1..=k).map(|i| format!("n{i}")).collect()
    }

    #[test]
    fn maglev_fills_the_table_and_balances_it() {
        for k in [1, 3, 10, 100] {
            let owned = names(k);
            let backends: Vec<&str> = owned.iter().map(String::as_str).collect();
            let table = maglev_table(&backends, MAGLEV_TABLE);
            let mut counts = vec![0usize; k];
            for &e in &table {
                counts[e as usize] += 1;
            }
            // Every entry has a backend, and round-robin population gives every backend
            // floor(M/k) or ceil(M/k) entries (the paper's balance property).
            assert_eq!(counts.iter().sum::<usize>(), MAGLEV_TABLE);
            let low = MAGLEV_TABLE / k;
            assert!(
                counts.iter().all(|&c| c == low || c == low + 1),
                "{counts:?}"
            );
        }
    }

    #[test]
    fn maglev_is_minimally_disruptive_for_the_removed_backend() {
        let owned = names(10);
        let backends: Vec<&str> = owned.iter().map(String::as_str).collect();
        let before = maglev_table(&backends, MAGLEV_TABLE);
        let rest: Vec<&str> = backends.iter().copied().filter(|b| *b != "n4").collect();
        let after = maglev_table(&rest, MAGLEV_TABLE);
        let failed_entries = before
            .iter()
            .filter(|&&e| backends[e as usize] == "n4")
            .count();
        let changed = (0..MAGLEV_TABLE)
            .filter(|&e| backends[before[e] as usize] != rest[after[e] as usize])
            .count();
        // All of n4's entries move, and Maglev moves some others too, but few.
        assert!(changed >= failed_entries);
        assert!(
            changed < failed_entries * 2,
            "{changed} vs {failed_entries}"
        );
    }

    #[test]
    fn the_same_backends_give_the_same_table() {
        let owned = names(7);
        let backends: Vec<&str> = owned.iter().map(String::as_str).collect();
        assert_eq!(maglev_table(&backends, 251), maglev_table(&backends, 251));
    }
}
