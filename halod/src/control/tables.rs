//! The manager's sink for route-table writes: the data plane in the daemon,
//! [`Recorder`] in unit tests.

use std::future::Future;

pub use crate::dataplane::{AttachMode, Connections, Counter, Flush, NodeTarget, Stats, Write};

/// Where the manager pushes each plan's table writes, in order, and the
/// failed nodes whose clients are to be told (the dead-node flush).
pub trait TablePush: Send {
    /// Applies `writes` in order; returns when they are in effect.
    fn push(&self, writes: Vec<Write>) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Tells the clients of a failed node's connections of `flush.routes`
    /// (after the routes moved); returns at once, the flush runs on its own.
    fn flush(&self, flush: Flush);
}

impl TablePush for crate::dataplane::DataplaneHandle {
    async fn push(&self, writes: Vec<Write>) -> anyhow::Result<()> {
        self.apply(writes).await.map_err(anyhow::Error::from)
    }

    fn flush(&self, flush: Flush) {
        crate::dataplane::DataplaneHandle::flush(self, flush);
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

#[cfg(test)]
pub(crate) use recorder::Recorder;

#[cfg(test)]
mod recorder {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;

    /// The one stand-in for the data plane in unit tests: records every batch
    /// of writes (or refuses them all, [`Recorder::refusing`]), keeps a mirror
    /// of the tables they describe, and serves fixed counters and attach modes.
    #[derive(Clone, Default)]
    pub(crate) struct Recorder {
        batches: Arc<Mutex<Vec<Vec<Write>>>>,
        flushes: Arc<Mutex<Vec<Flush>>>,
        refuse: bool,
        tries: Arc<AtomicUsize>,
    }

    impl TablePush for Recorder {
        async fn push(&self, writes: Vec<Write>) -> anyhow::Result<()> {
            self.tries.fetch_add(1, Ordering::Relaxed);
            if self.refuse {
                anyhow::bail!("EPERM (test)");
            }
            self.batches.lock().unwrap().push(writes);
            Ok(())
        }

        fn flush(&self, flush: Flush) {
            self.flushes.lock().unwrap().push(flush);
        }
    }

    impl DataplaneView for Recorder {
        async fn stats(&self) -> anyhow::Result<Stats> {
            Ok(Stats {
                routes: (0..24)
                    .map(|i| Counter {
                        packets: i,
                        bytes: i * 100,
                    })
                    .collect(),
                nodes: (0..16)
                    .map(|i| Counter {
                        packets: 1000 + i,
                        bytes: 2000 + i,
                    })
                    .collect(),
                reasons: vec![("forwarded_in", 7), ("pass_no_node", 1)],
                drain: Default::default(),
                flush: Default::default(),
                connections: Some(Connections {
                    routes: (0..24).map(|i| i * 10).collect(),
                    nodes: (0..16).map(|i| 500 + i).collect(),
                }),
            })
        }

        async fn modes(&self) -> Vec<(String, AttachMode)> {
            vec![
                ("ext0".into(), AttachMode::Native),
                ("int0".into(), AttachMode::Generic),
            ]
        }
    }

    impl Recorder {
        /// A data plane that refuses every write, as one whose maps are gone would.
        pub(crate) fn refusing() -> Recorder {
            Recorder {
                refuse: true,
                ..Recorder::default()
            }
        }

        /// Every push so far, refused ones too.
        pub(crate) fn tries(&self) -> usize {
            self.tries.load(Ordering::Relaxed)
        }

        pub(crate) fn batches(&self) -> Vec<Vec<Write>> {
            self.batches.lock().unwrap().clone()
        }

        /// Every flush asked for so far, in order.
        pub(crate) fn flushes(&self) -> Vec<Flush> {
            self.flushes.lock().unwrap().clone()
        }

        /// Every write so far, in order.
        pub(crate) fn writes(&self) -> Vec<Write> {
            self.batches().into_iter().flatten().collect()
        }

        /// Draining route -> its old node's address, from every write so far.
        pub(crate) fn drains(&self) -> BTreeMap<u16, Ipv4Addr> {
            let mut drains = BTreeMap::new();
            for write in self.writes() {
                match write {
                    Write::Drain { route, from, .. } => {
                        drains.insert(route, from.addr);
                    }
                    Write::DrainEnd { route } => {
                        drains.remove(&route);
                    }
                    _ => {}
                }
            }
            drains
        }

        /// Route -> node address, from every write so far.
        pub(crate) fn mirror(&self) -> BTreeMap<u16, Ipv4Addr> {
            let mut routes: BTreeMap<u16, u16> = BTreeMap::new();
            let mut slots: BTreeMap<u16, Ipv4Addr> = BTreeMap::new();
            for write in self.batches().into_iter().flatten() {
                match write {
                    Write::Route {
                        route,
                        slot: Some(slot),
                    } => {
                        assert!(
                            slots.contains_key(&slot),
                            "route {route} -> empty slot {slot}"
                        );
                        routes.insert(route, slot);
                    }
                    Write::Route { route, slot: None } => {
                        routes.remove(&route);
                    }
                    Write::Slot {
                        slot,
                        node: Some(node),
                    } => {
                        slots.insert(slot, node.addr);
                    }
                    Write::Slot { slot, node: None } => {
                        assert!(
                            !routes.values().any(|s| *s == slot),
                            "slot {slot} emptied while used"
                        );
                        slots.remove(&slot);
                    }
                    Write::Drain { .. } | Write::DrainEnd { .. } => {}
                }
            }
            routes
                .into_iter()
                .map(|(route, slot)| (route, slots[&slot]))
                .collect()
        }
    }
}
