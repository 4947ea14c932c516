//! The manager's sink for route-table writes: the data plane in the daemon,
//! a recorder in unit tests.

use std::future::Future;

pub use crate::dataplane::{AttachMode, Counter, NodeTarget, Stats, Write};

/// Where the manager pushes each plan's table writes, in order.
pub trait TablePush: Send {
    /// Applies `writes` in order; returns when they are in effect.
    fn push(&self, writes: Vec<Write>) -> impl Future<Output = anyhow::Result<()>> + Send;
}

impl TablePush for crate::dataplane::DataplaneHandle {
    async fn push(&self, writes: Vec<Write>) -> anyhow::Result<()> {
        self.apply(writes).await.map_err(anyhow::Error::from)
    }
}

/// What the control socket and the metrics endpoint read from the data plane:
/// the daemon's data-plane task, or a stand-in in unit tests.
pub trait DataplaneView: Clone + Send + Sync + 'static {
    /// The counters, summed over CPUs.
    fn stats(&self) -> impl Future<Output = anyhow::Result<Stats>> + Send;
    /// How the program is attached, per interface.
    fn modes(&self) -> impl Future<Output = Vec<(String, AttachMode)>> + Send;
}

impl DataplaneView for crate::dataplane::DataplaneHandle {
    async fn stats(&self) -> anyhow::Result<Stats> {
        crate::dataplane::DataplaneHandle::stats(self)
            .await
            .map_err(anyhow::Error::from)
    }

    async fn modes(&self) -> Vec<(String, AttachMode)> {
        crate::dataplane::DataplaneHandle::modes(self).await
    }
}
