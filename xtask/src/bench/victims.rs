//! Failure detection under load, shared by the `scale` and `heartbeats` sections: the
//! last simulated nodes go silent one after the other (each keeps its connection and
//! stops its heartbeats), and each is timed from its last heartbeat to the gateway
//! closing its connection. Only the victim's own connection is watched: the messages
//! other nodes get may be read late by a busy generator.
//!
//! Times are ns since a base instant the caller keeps (its generator's clock).

use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// What the measuring thread and the simulated nodes share about the victims.
pub struct Victims {
    /// Index of the node that must go silent, or u64::MAX.
    victim: AtomicU64,
    /// When the victim's last heartbeat left (0: it has not stopped yet).
    last_hb: AtomicU64,
    /// After this time, the victim's connection ending is noted.
    armed_at: AtomicU64,
    /// When the gateway ended the victim's connection (0: not yet).
    failed_at: AtomicU64,
}

impl Default for Victims {
    fn default() -> Victims {
        Victims {
            victim: AtomicU64::new(u64::MAX),
            last_hb: AtomicU64::new(0),
            armed_at: AtomicU64::new(u64::MAX),
            failed_at: AtomicU64::new(0),
        }
    }
}

impl Victims {
    /// Whether node `i` must be silent now.
    pub fn is(&self, i: usize) -> bool {
        self.victim.load(Ordering::Relaxed) == i as u64
    }

    /// The node that must be silent now, or u64::MAX.
    pub fn current(&self) -> u64 {
        self.victim.load(Ordering::Relaxed)
    }

    /// The victim stopped; its last heartbeat left at `last_sent`.
    pub fn stopped(&self, last_sent: u64) {
        self.last_hb.store(last_sent.max(1), Ordering::SeqCst);
    }

    /// The gateway ended the victim's connection at `now`.
    pub fn failed(&self, now: u64) {
        if now >= self.armed_at.load(Ordering::SeqCst) {
            let _ = self
                .failed_at
                .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    /// Silences the last `count` of `nodes` one after the other; returns each one's
    /// detection time (ms). A victim must stop within `stop_within` and be failed
    /// within `fail_within` of its last heartbeat.
    pub fn measure(
        &self,
        nodes: usize,
        count: usize,
        stop_within: Duration,
        fail_within: Duration,
    ) -> Result<Vec<f64>> {
        let mut detection_ms = Vec::new();
        for v in 0..count {
            // The last joined nodes hold the last slots: each failure returns only their
            // routes to the slots they came from.
            let victim = nodes - 1 - v;
            self.failed_at.store(0, Ordering::SeqCst);
            self.last_hb.store(0, Ordering::SeqCst);
            self.victim.store(victim as u64, Ordering::SeqCst);
            let deadline = Instant::now() + stop_within;
            while self.last_hb.load(Ordering::SeqCst) == 0 {
                if Instant::now() > deadline {
                    bail!("the victim node {victim} did not stop its heartbeats");
                }
                thread::sleep(Duration::from_millis(1));
            }
            let last_hb = self.last_hb.load(Ordering::SeqCst);
            self.armed_at.store(last_hb, Ordering::SeqCst);
            let deadline = Instant::now() + fail_within;
            let failed = loop {
                let failed = self.failed_at.load(Ordering::SeqCst);
                if failed != 0 {
                    break failed;
                }
                if Instant::now() > deadline {
                    bail!("the silent node {victim} was not failed within {fail_within:?}");
                }
                thread::sleep(Duration::from_millis(1));
            };
            detection_ms.push(failed.saturating_sub(last_hb) as f64 / 1e6);
            self.armed_at.store(u64::MAX, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(200));
        }
        Ok(detection_ms)
    }
}
