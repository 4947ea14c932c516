//! Routing core: time to plan one event at 65535 routes and 10,000 active
//! nodes, memory held by the cluster, and the cost of rebuilding `T(k)` from
//! scratch (what replaying every step per event would pay) as a baseline.
//!
//! `cargo bench -p halod --bench routing`; figures in docs/benchmarks.md.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::Criterion;
use halod::routing::{Cluster, ClusterConfig, Event, Table};

/// Counts live heap bytes so the memory figure is measured, not estimated.
struct CountingAllocator;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const ROUTES: u32 = 65535;
const NODES: u32 = 10_000;
/// A slot in the middle: its failure without a spare moves the last node in.
const MIDDLE: u16 = 5_000;

fn node(index: u32) -> String {
    format!("node-{index:05}")
}

fn cluster(active: u32, spares: u32) -> Cluster {
    let mut cluster = Cluster::new(ClusterConfig {
        routes: ROUTES,
        spares,
        max_active: None,
    })
    .expect("valid config");
    // The first node goes active; with `spares: S` the next S wait; the rest
    // take slots.
    for index in 0..active + spares {
        cluster.apply(Event::Join(node(index))).expect("fresh name");
    }
    assert_eq!(cluster.active().len() as u32, active);
    assert_eq!(cluster.spares().len() as u32, spares);
    cluster
}

fn report_memory() {
    println!("routing memory (routes = {ROUTES}, counting allocator, live bytes after building):");
    for nodes in [1_000, 10_000] {
        let before = LIVE_BYTES.load(Ordering::Relaxed);
        let built = cluster(nodes, 0);
        let bytes = LIVE_BYTES.load(Ordering::Relaxed) - before;
        let table_before = LIVE_BYTES.load(Ordering::Relaxed);
        let table = Table::build(ROUTES as u16, nodes as u16);
        let table_bytes = LIVE_BYTES.load(Ordering::Relaxed) - table_before;
        let log_entries: u32 = (2..=nodes).map(|k| ROUTES / k).sum();
        println!(
            "  {nodes:>6} active: cluster {bytes} B ({:.1} B/route, {:.1} B/node if charged to nodes), \
             of which T(k) {table_bytes} B (undo log {log_entries} entries = {} B); heap_bytes() = {}",
            bytes as f64 / f64::from(ROUTES),
            bytes as f64 / f64::from(nodes),
            log_entries * 2,
            built.heap_bytes(),
        );
        drop(table);
        drop(built);
    }
}

/// Time only applying the first event of `events(cluster)`; the second one
/// (untimed) puts the cluster back in an equivalent state.
fn measure(
    cluster: &mut Cluster,
    iterations: u64,
    events: impl Fn(&Cluster) -> (Event, Event),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iterations {
        let (timed, undo) = events(cluster);
        let start = Instant::now();
        black_box(cluster.apply(timed).unwrap());
        total += start.elapsed();
        cluster.apply(undo).unwrap();
    }
    total
}

/// Fail the node of slot `MIDDLE`, then let it join again.
fn fail_middle(cluster: &Cluster) -> (Event, Event) {
    let failed = cluster.active()[usize::from(MIDDLE) - 1].clone();
    (Event::Fail(failed.clone()), Event::Join(failed))
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("routing/65535 routes, 10000 active");

    let mut no_spare = cluster(NODES, 0);
    group.bench_function("plan join (k 10000 -> 10001)", |b| {
        b.iter_custom(|iterations| {
            measure(&mut no_spare, iterations, |_| {
                (Event::Join("joiner".into()), Event::Fail("joiner".into()))
            })
        })
    });
    // The last node moves into slot 5000, then T(10000) -> T(9999).
    group.bench_function("plan fail of slot 5000, no spare (k 10000 -> 9999)", |b| {
        b.iter_custom(|iterations| measure(&mut no_spare, iterations, fail_middle))
    });
    // The spare takes slot 5000; the failed node rejoins as the new spare.
    let mut with_spare = cluster(NODES, 1);
    group.bench_function("plan fail of slot 5000, spare waiting", |b| {
        b.iter_custom(|iterations| measure(&mut with_spare, iterations, fail_middle))
    });
    group.finish();

    // Baseline: rebuilding T(k) from T(1) on each event, with the same
    // (already linear-per-step) stepping code.
    let mut baseline = c.benchmark_group("routing baseline: rebuild T(k) from scratch");
    baseline.sample_size(10);
    baseline.bench_function("T(10001) (the join)", |b| {
        b.iter(|| black_box(Table::build(ROUTES as u16, NODES as u16 + 1)))
    });
    baseline.bench_function("T(9999) (the failure)", |b| {
        b.iter(|| black_box(Table::build(ROUTES as u16, NODES as u16 - 1)))
    });
    baseline.finish();
}

fn main() {
    report_memory();
    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion);
    criterion.final_summary();
}
