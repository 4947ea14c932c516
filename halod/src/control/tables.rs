//! The manager's sink for route-table writes: the data plane in the daemon,
//! a recorder in unit tests.

use std::future::Future;

pub use crate::dataplane::{NodeTarget, Write};

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
