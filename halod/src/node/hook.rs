//! `--exec CMD`: a shell command run once per change of the node's state, in
//! order, one at a time, with the change in its environment.

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::state::Change;

/// The queue of changes and the task that runs the command for each.
#[derive(Debug)]
pub struct Hook {
    changes: mpsc::UnboundedSender<Change>,
    runner: JoinHandle<()>,
}

impl Hook {
    pub fn spawn(command: String, node: String) -> Hook {
        let (changes, mut queue) = mpsc::unbounded_channel::<Change>();
        let runner = tokio::spawn(async move {
            while let Some(change) = queue.recv().await {
                let status = tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(&command)
                    .envs(change.environment(&node))
                    .stdin(std::process::Stdio::null())
                    .status()
                    .await;
                match status {
                    Ok(status) if status.success() => {}
                    Ok(status) => warn!(
                        node = %node,
                        event = change.event,
                        "--exec exited with {status}"
                    ),
                    Err(err) => {
                        warn!(node = %node, event = change.event, "cannot run --exec: {err}")
                    }
                }
            }
        });
        Hook { changes, runner }
    }

    pub fn run(&self, change: Change) {
        // The runner ends only after `finish` drops the sender.
        let _ = self.changes.send(change);
    }

    /// Waits until the command has run for every change queued so far: the
    /// agent calls it before it exits, so the last `moved` reaches the server.
    pub async fn finish(self) {
        let Hook { changes, runner } = self;
        drop(changes);
        if !runner.is_finished() {
            info!("waiting for --exec to finish the last changes (SIGTERM again: exit now)");
        }
        let _ = runner.await;
    }
}
