//! One daemon per instance: `halod run` holds an exclusive `flock` on
//! `/run/halod/<instance>.lock` from before it touches the pins under
//! `/sys/fs/bpf/halod/<instance>` until it exits. A second daemon of the same
//! instance (even with its own control socket, node port and state file)
//! would otherwise remove the first one's XDP program and maps as "left
//! over" and every route would go dark. `halod teardown` takes the same lock,
//! so it never removes what a running daemon uses.
//!
//! The lock goes with the process (also on SIGKILL), so a restart after a
//! crash is never blocked by it. The file names the holder (pid and control
//! socket) for the message the next one prints. It lives in /run (tmpfs),
//! not in the pin directory: bpffs holds only pins and directories, no
//! files to write a pid into, and the pin directory is removed and made
//! again by the daemon itself.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Where the lock files are.
pub const LOCK_DIR: &str = "/run/halod";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "instance {instance:?} is in use by {holder} (lock {path}): one daemon per instance. \
         Stop that daemon first, or give this one its own `instance` in its config"
    )]
    Held {
        instance: String,
        holder: String,
        path: PathBuf,
    },
    #[error("instance lock {path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
}

/// The held lock; released (and its file removed) when dropped.
#[derive(Debug)]
pub struct InstanceLock {
    file: Option<Flock<File>>,
    path: PathBuf,
}

impl InstanceLock {
    /// Takes the lock of `instance` in [`LOCK_DIR`] without waiting.
    /// `holder` says who holds it (e.g. "halod pid 12, control socket
    /// /run/halod.sock") for the message another one gets.
    pub fn acquire(instance: &str, holder: &str) -> Result<InstanceLock, LockError> {
        InstanceLock::acquire_in(Path::new(LOCK_DIR), instance, holder)
    }

    pub fn acquire_in(dir: &Path, instance: &str, holder: &str) -> Result<InstanceLock, LockError> {
        let path = dir.join(format!("{instance}.lock"));
        let io = |action: &'static str| {
            let path = path.clone();
            move |source| LockError::Io {
                path,
                action,
                source,
            }
        };
        std::fs::create_dir_all(dir).map_err(io("creating its directory"))?;
        loop {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(&path)
                .map_err(io("opening"))?;
            let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(locked) => locked,
                Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                    let mut text = String::new();
                    let _ = file.read_to_string(&mut text);
                    let holder = match text.trim() {
                        "" => "another halod (starting up)".to_string(),
                        text => text.to_string(),
                    };
                    return Err(LockError::Held {
                        instance: instance.to_string(),
                        holder,
                        path,
                    });
                }
                Err((_, errno)) => return Err(io("locking")(errno.into())),
            };
            // The holder before us may have removed the file between our
            // open and our lock: then we hold a lock on a file nobody else
            // can find, and must take the one at the path again.
            let locked = file.metadata().map_err(io("reading its inode"))?;
            match std::fs::metadata(&path) {
                Ok(now) if now.dev() == locked.dev() && now.ino() == locked.ino() => {}
                Ok(_) => continue,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(io("reading its inode")(error)),
            }
            file.set_len(0).map_err(io("writing the holder"))?;
            file.rewind().map_err(io("writing the holder"))?;
            file.write_all(format!("{holder}\n").as_bytes())
                .map_err(io("writing the holder"))?;
            return Ok(InstanceLock {
                file: Some(file),
                path,
            });
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the lock file at the path is still the one held (an
    /// operator's `rm` would let a second daemon in).
    pub fn still_in_place(&self) -> bool {
        let Some(file) = &self.file else { return false };
        match (file.metadata(), std::fs::metadata(&self.path)) {
            (Ok(held), Ok(now)) => held.dev() == now.dev() && held.ino() == now.ino(),
            _ => false,
        }
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        // Remove the file while still holding it (see the inode check in
        // `acquire_in`), then let go.
        if self.still_in_place() {
            let _ = std::fs::remove_file(&self.path);
        }
        self.file = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("halod-lock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_name() {
        let dir = dir("second");
        let first =
            InstanceLock::acquire_in(&dir, "edge", "halod pid 1, control socket /a.sock").unwrap();
        assert!(first.still_in_place());
        let error = InstanceLock::acquire_in(&dir, "edge", "halod pid 2").unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("instance \"edge\" is in use by halod pid 1, control socket /a.sock"),
            "{message}"
        );
        // Another instance is independent.
        let other = InstanceLock::acquire_in(&dir, "other", "halod pid 3").unwrap();
        drop(first);
        assert!(!dir.join("edge.lock").exists(), "released: file removed");
        let again = InstanceLock::acquire_in(&dir, "edge", "halod pid 4").unwrap();
        let text = std::fs::read_to_string(dir.join("edge.lock")).unwrap();
        assert_eq!(text, "halod pid 4\n");
        drop((again, other));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_removed_lock_file_is_noticed() {
        let dir = dir("removed");
        let lock = InstanceLock::acquire_in(&dir, "edge", "halod pid 1").unwrap();
        std::fs::remove_file(lock.path()).unwrap();
        assert!(!lock.still_in_place());
        drop(lock);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
