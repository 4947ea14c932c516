//! What the daemon counts as it goes ([`Metrics`]): node failures and
//! refusals, failovers, heartbeat lateness, plan pushes, state-file writes.
//! Counters only; `exporter` serves them on `metrics.listen`, with what it
//! reads at scrape time.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::api::StateFileHealth;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabel {
    pub cause: &'static str,
}

/// What the daemon counts as events happen. Cloning shares the counters.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// The heartbeat interval lateness is measured against.
    heartbeat_ms: u64,
    /// Nodes failed, by cause (`heartbeat`, `disconnected`, ...).
    pub node_failures: Family<CauseLabel, Counter>,
    /// Active nodes failed (their routes went to a spare or to other nodes).
    pub failovers: Counter,
    /// How much later than `heartbeat_ms` each heartbeat arrived (seconds).
    pub heartbeat_lateness: Histogram,
    /// Time to write one plan's table changes into the data plane (seconds).
    pub plan_push: Histogram,
    /// State-file writes that failed (each is retried).
    pub state_write_failures: Counter,
    /// Node connections refused or cut for misbehaving, by reason
    /// (`bad_request`, `line_too_long`, `hello_timeout`, `bad_token`, ...).
    pub node_refusals: Family<CauseLabel, Counter>,
    /// The state file's writes (the writer updates it, `status` reads it).
    pub state_file: std::sync::Arc<std::sync::Mutex<StateFileHealth>>,
}

impl Metrics {
    pub fn new(heartbeat: Duration) -> Metrics {
        Metrics {
            heartbeat_ms: heartbeat.as_millis() as u64,
            node_failures: Family::default(),
            failovers: Counter::default(),
            // 1 ms .. about 16 s.
            heartbeat_lateness: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            // 50 us .. about 1.6 s.
            plan_push: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            state_write_failures: Counter::default(),
            node_refusals: Family::default(),
            state_file: std::sync::Arc::new(std::sync::Mutex::new(StateFileHealth {
                up_to_date: true,
                ..StateFileHealth::default()
            })),
        }
    }

    /// Changes the state-file health in place.
    pub fn state_file(&self, change: impl FnOnce(&mut StateFileHealth)) {
        change(&mut self.state_file.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// A node connection was refused or cut for `reason`.
    pub fn node_refused(&self, reason: &'static str) {
        self.node_refusals
            .get_or_create(&CauseLabel { cause: reason })
            .inc();
    }

    /// A heartbeat (or any message) arrived `gap_ms` after the previous one.
    pub fn heartbeat_gap(&self, gap_ms: u64) {
        let late = gap_ms.saturating_sub(self.heartbeat_ms);
        self.heartbeat_lateness.observe(late as f64 / 1000.0);
    }

    pub fn node_failed(&self, cause: &'static str) {
        self.node_failures
            .get_or_create(&CauseLabel { cause })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new(Duration::from_millis(100))
    }
}
