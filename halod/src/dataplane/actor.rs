//! The task that owns the [`Dataplane`]: nobody else touches the maps. Requests
//! arrive on an mpsc channel and are answered on oneshot channels.

use tokio::sync::{mpsc, oneshot};

use super::{AttachMode, Dataplane, DataplaneError, Flush, FlushSender, NodeTarget, Stats, Write};

type TableView = (Vec<Option<u16>>, Vec<Option<NodeTarget>>);

enum Request {
    Apply(Vec<Write>, oneshot::Sender<Result<(), DataplaneError>>),
    Stats(oneshot::Sender<Result<Stats, DataplaneError>>),
    Table(oneshot::Sender<Result<TableView, DataplaneError>>),
    Shutdown(oneshot::Sender<()>),
    /// Stop, leaving the program attached and pinned for the next daemon.
    ShutdownKeeping(oneshot::Sender<()>),
}

/// A cheap, cloneable way to reach the data plane task.
#[derive(Clone, Debug)]
pub struct DataplaneHandle {
    requests: mpsc::Sender<Request>,
    /// The dead-node flusher (its own thread), when it runs.
    flusher: Option<FlushSender>,
    /// Attach mode per interface, fixed when the program was attached: read
    /// without waiting for the task, which a large batch keeps busy.
    modes: std::sync::Arc<Vec<(String, AttachMode)>>,
}

/// Moves `dataplane` into its own task. The task ends on
/// [`DataplaneHandle::shutdown`] (detaching the program and removing the
/// pins), on [`DataplaneHandle::shutdown_keeping`] (leaving both), or when
/// every handle is dropped (as the dataplane's `keep_on_drop` says). Must be
/// called inside a tokio runtime.
pub fn spawn(dataplane: Dataplane) -> DataplaneHandle {
    let modes = std::sync::Arc::new(dataplane.modes());
    let flusher = dataplane.flusher();
    let (requests, mut inbox) = mpsc::channel::<Request>(64);
    // Map updates are short syscalls; a blocking thread keeps them off the
    // async workers anyway.
    tokio::task::spawn_blocking(move || {
        let mut dataplane = dataplane;
        while let Some(request) = inbox.blocking_recv() {
            match request {
                Request::Apply(writes, reply) => {
                    let result = dataplane.apply(&writes);
                    if let Err(error) = &result {
                        tracing::error!(%error, "data plane write failed");
                    }
                    let _ = reply.send(result);
                }
                Request::Stats(reply) => {
                    let _ = reply.send(dataplane.stats());
                }
                Request::Table(reply) => {
                    let _ = reply.send(dataplane.table());
                }
                Request::ShutdownKeeping(reply) => {
                    dataplane.keep_on_drop();
                    drop(dataplane);
                    let _ = reply.send(());
                    return;
                }
                Request::Shutdown(reply) => {
                    dataplane.keep = false;
                    drop(dataplane);
                    let _ = reply.send(());
                    return;
                }
            }
        }
    });
    DataplaneHandle {
        requests,
        flusher,
        modes,
    }
}

impl DataplaneHandle {
    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, DataplaneError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(request(reply))
            .await
            .map_err(|_| DataplaneError::Stopped)?;
        answer.await.map_err(|_| DataplaneError::Stopped)
    }

    /// Hands a failed node's connections to the flusher (at once, without
    /// waiting for it); nothing when the flush is off.
    pub fn flush(&self, flush: Flush) {
        if let Some(flusher) = &self.flusher {
            flusher.send(flush);
        }
    }

    /// Carries out `writes` in order (see [`Dataplane::apply`]).
    pub async fn apply(&self, writes: Vec<Write>) -> Result<(), DataplaneError> {
        self.ask(|reply| Request::Apply(writes, reply)).await?
    }

    pub async fn stats(&self) -> Result<Stats, DataplaneError> {
        self.ask(Request::Stats).await?
    }

    /// Attach mode per interface; empty once the task has stopped.
    pub async fn modes(&self) -> Vec<(String, AttachMode)> {
        if self.requests.is_closed() {
            return Vec::new();
        }
        self.modes.as_ref().clone()
    }

    /// The route -> slot and slot -> node tables as the kernel holds them.
    pub async fn table(&self) -> Result<TableView, DataplaneError> {
        self.ask(Request::Table).await?
    }

    /// Detaches the program and removes the pins; returns once done. Other
    /// handles get [`DataplaneError::Stopped`] afterwards.
    pub async fn shutdown(&self) {
        let _ = self.ask(Request::Shutdown).await;
    }

    /// Resolves when the task has ended (stopped, or panicked): nothing
    /// answers on this handle any more.
    pub async fn stopped(&self) {
        self.requests.closed().await;
    }

    /// Stops the task but leaves the program attached and the maps and links
    /// pinned, so it goes on forwarding with the last table until the next
    /// daemon adopts it ([`Dataplane::adopt`](super::Dataplane::adopt)).
    pub async fn shutdown_keeping(&self) {
        let _ = self.ask(Request::ShutdownKeeping).await;
    }
}
