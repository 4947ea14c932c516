//! The state file (`state_file`): what a restarted daemon needs to keep every
//! route where it was. The table is a pure function of `k` and the slot ->
//! node mapping (shared/spec/routing.md), so the file holds the active nodes
//! in slot order, the spare queue, each node's address and counter index, and
//! a fingerprint of the config keys the table depends on.
//!
//! The manager publishes each new state on a `watch` channel; [`run_writer`]
//! writes the latest one atomically (temp file, fsync, rename, fsync of the
//! directory). A failed write is logged, counted and retried with backoff; it
//! never stops forwarding.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::metrics::Metrics;
use crate::config::Config;
use crate::routing::{Cluster, ClusterConfig};

/// Format version of the file.
pub const STATE_VERSION: u32 = 1;

/// First retry delay after a failed write; doubles up to [`RETRY_MAX`].
pub const RETRY_START: Duration = Duration::from_millis(100);
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// The config keys the saved table depends on. A saved state is only adopted
/// under a config with the same fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub routes: u32,
    /// Base port of each listener group, in order.
    pub listeners: Vec<u16>,
    pub vip: Ipv4Addr,
    pub external: String,
    pub internal: String,
}

impl Fingerprint {
    pub fn of(config: &Config) -> Fingerprint {
        Fingerprint {
            routes: config.route_count(),
            listeners: config.base_ports(),
            vip: config.vip,
            external: config.interfaces.external.clone(),
            internal: config.interfaces.internal.clone(),
        }
    }

    /// What differs from `saved`, one `key: saved -> now` per key.
    pub fn differences(&self, saved: &Fingerprint) -> Vec<String> {
        let mut differences = Vec::new();
        let mut differ = |key: &str, was: String, now: String| {
            if was != now {
                differences.push(format!("{key}: {was} -> {now}"));
            }
        };
        differ("routes", saved.routes.to_string(), self.routes.to_string());
        differ(
            "listeners (base ports)",
            format!("{:?}", saved.listeners),
            format!("{:?}", self.listeners),
        );
        differ("vip", saved.vip.to_string(), self.vip.to_string());
        differ(
            "interfaces.external",
            saved.external.clone(),
            self.external.clone(),
        );
        differ(
            "interfaces.internal",
            saved.internal.clone(),
            self.internal.clone(),
        );
        differences
    }
}

/// One node as saved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedNode {
    pub name: String,
    pub addr: Ipv4Addr,
    /// Per-node counter index in the data plane.
    pub index: u32,
}

/// The whole file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedState {
    pub version: u32,
    pub fingerprint: Fingerprint,
    /// Active nodes; index 0 is slot 1.
    pub active: Vec<SavedNode>,
    /// Spare queue, front (next to take over) first.
    pub spares: Vec<SavedNode>,
}

impl SavedState {
    /// Every saved node, active ones first.
    pub fn nodes(&self) -> impl Iterator<Item = &SavedNode> {
        self.active.iter().chain(&self.spares)
    }

    /// Reads `path`; `None` when it does not exist.
    pub fn load(path: &Path) -> anyhow::Result<Option<SavedState>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => {
                return Err(err).with_context(|| {
                    format!(
                        "state_file: cannot read {}; fix its permissions, or start with --reset to begin with an empty table",
                        path.display()
                    )
                });
            }
        };
        let state: SavedState = serde_json::from_str(&text).with_context(|| {
            format!(
                "state_file: {} is not a halod state file; start with --reset to begin with an empty table (it is then overwritten)",
                path.display()
            )
        })?;
        anyhow::ensure!(
            state.version == STATE_VERSION,
            "state_file: {} has format version {}, this halod reads version {STATE_VERSION}; start with --reset",
            path.display(),
            state.version
        );
        Ok(Some(state))
    }

    /// The routing cluster this state describes, under `config`. Refuses a
    /// state the config cannot hold, naming what differs.
    pub fn cluster(&self, config: &Config, path: &Path) -> anyhow::Result<Cluster> {
        let now = Fingerprint::of(config);
        let differences = now.differences(&self.fingerprint);
        if !differences.is_empty() {
            anyhow::bail!(
                "the config does not match the saved state in {} ({}): the table cannot be kept across this change; \
                 start with --reset to drop the saved state (every node registers again and routes are assigned anew)",
                path.display(),
                differences.join(", ")
            );
        }
        let mut names = std::collections::HashSet::new();
        let mut addrs = std::collections::HashSet::new();
        let mut indexes = std::collections::HashSet::new();
        for node in self.nodes() {
            // Two nodes on one counter index would share the data plane's
            // per-node entry: the maps and the table would disagree.
            anyhow::ensure!(
                indexes.insert(node.index),
                "state_file {}: counter index {} is saved for two nodes (the second is {:?}); \
                 the file was edited or damaged: start with --reset",
                path.display(),
                node.index,
                node.name
            );
            anyhow::ensure!(
                crate::protocol::valid_name(&node.name) && names.insert(node.name.as_str()),
                "state_file {}: node name {:?} is invalid or repeated; start with --reset",
                path.display(),
                node.name
            );
            anyhow::ensure!(
                addrs.insert(node.addr),
                "state_file {}: address {} is saved for two nodes; start with --reset",
                path.display(),
                node.addr
            );
            anyhow::ensure!(
                node.index < config.nodes.max_nodes,
                "state_file {}: node {:?} has counter index {}, but nodes.max_nodes is now {}; \
                 raise nodes.max_nodes or start with --reset",
                path.display(),
                node.name,
                node.index,
                config.nodes.max_nodes
            );
        }
        anyhow::ensure!(
            names.len() <= config.nodes.max_nodes as usize,
            "state_file {}: {} nodes saved, more than nodes.max_nodes = {}",
            path.display(),
            names.len(),
            config.nodes.max_nodes
        );
        let names = |list: &[SavedNode]| list.iter().map(|n| n.name.clone()).collect();
        Cluster::restore(
            ClusterConfig {
                routes: config.route_count(),
                spares: config.nodes.spares,
                max_active: config.nodes.max_active,
            },
            names(&self.active),
            names(&self.spares),
        )
        .with_context(|| {
            format!(
                "state_file {}: the saved table does not fit the config; change it back or start with --reset",
                path.display()
            )
        })
    }
}

impl SavedState {
    /// Checks every saved address as strictly as a node's `hello` is
    /// checked (`policy`): a hand-edited file must not route traffic to the
    /// VIP, loopback, the gateway itself or outside `nodes.allowed_cidrs`.
    pub fn check_addresses(
        &self,
        policy: &super::policy::NodePolicy,
        path: &Path,
    ) -> anyhow::Result<()> {
        for node in self.nodes() {
            if let Err(refusal) = policy.check_address(node.addr) {
                anyhow::bail!(
                    "state_file {}: node {:?}: {}; a node would refuse to register with it, \
                     so the saved table is not taken over. Fix the file, or start with --reset",
                    path.display(),
                    node.name,
                    refusal.message
                );
            }
        }
        Ok(())
    }
}

/// Least time between two tables handed to the state-file writer. Building
/// one walks every node; a burst of joins (thousands of nodes starting at
/// once) builds one per interval instead of one per join. The writer
/// coalesces anyway, so the file lags the table by at most this plus one
/// write.
pub const STATE_COALESCE: Duration = Duration::from_millis(50);

/// When the manager hands its table to the state-file writer: after a
/// change, at most once per [`STATE_COALESCE`].
#[derive(Debug, Default)]
pub struct Coalescer {
    /// The table changed since it was last handed over.
    changed: bool,
    last: Option<tokio::time::Instant>,
    due: Option<tokio::time::Instant>,
}

impl Coalescer {
    /// The table changed.
    pub fn changed(&mut self) {
        self.changed = true;
    }

    /// The next hand-over may not wait (the manager stops, or a restored
    /// table must be saved before anything else).
    pub fn now(&mut self) {
        self.last = None;
    }

    /// Whether to hand the table over at `now`. When it changed but the last
    /// hand-over was too recent, [`Coalescer::due`] says when to ask again.
    /// A `true` counts as the hand-over; call [`Coalescer::changed`] again if
    /// it did not happen after all.
    pub fn ready(&mut self, now: tokio::time::Instant) -> bool {
        if !self.changed {
            return false;
        }
        if let Some(last) = self.last
            && now < last + STATE_COALESCE
        {
            self.due = Some(last + STATE_COALESCE);
            return false;
        }
        self.due = None;
        self.changed = false;
        self.last = Some(now);
        true
    }

    /// When a postponed hand-over is due.
    pub fn due(&self) -> Option<tokio::time::Instant> {
        self.due
    }
}

/// Writes `state` to `path` atomically: a temp file in the same directory,
/// fsync, rename over `path`, fsync of the directory. Creates the directory
/// (mode 0700) if needed.
pub fn write_atomic(path: &Path, state: &SavedState) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the state file path has no file name"))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".tmp.{}", std::process::id()));
    let temp = dir.join(temp_name);
    let mut text = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    text.push(b'\n');
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(&text)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// A state-file write slower than this is logged.
const SLOW_WRITE: Duration = Duration::from_millis(500);

/// Writes every state published on `states` (the latest one when several
/// come at once) to `path` until `shutdown`, then writes the last one if it
/// is not on disk yet.
pub async fn run_writer(
    path: PathBuf,
    mut states: watch::Receiver<Option<SavedState>>,
    metrics: Metrics,
    retry_start: Duration,
    shutdown: CancellationToken,
) {
    let mut written: Option<SavedState> = None;
    // The manager's first table is on its way: nothing is on disk for it yet.
    metrics.state_file(|health| health.up_to_date = false);
    loop {
        let stopping = tokio::select! {
            () = shutdown.cancelled() => true,
            changed = states.changed() => changed.is_err(),
        };
        let mut retry = retry_start;
        loop {
            let Some(state) = states.borrow_and_update().clone() else {
                break;
            };
            if written.as_ref() == Some(&state) {
                break;
            }
            metrics.state_file(|health| health.up_to_date = false);
            let target = path.clone();
            let attempt = state.clone();
            let started = std::time::Instant::now();
            let result = tokio::task::spawn_blocking(move || write_atomic(&target, &attempt))
                .await
                .unwrap_or_else(|err| Err(std::io::Error::other(err.to_string())));
            match result {
                Ok(()) => {
                    let took = started.elapsed();
                    if took > SLOW_WRITE {
                        // fsync waits for the disk: until the write lands, a
                        // restart after a crash finds the previous table.
                        warn!(path = %path.display(), took_ms = took.as_millis() as u64,
                            "the state file write was slow (fsync); the saved table lagged the live one meanwhile");
                    }
                    debug!(path = %path.display(), active = state.active.len(),
                        spares = state.spares.len(), "state file written");
                    if retry > retry_start {
                        info!(path = %path.display(), "state file written again after failures");
                    }
                    metrics.state_file(|health| {
                        health.written_unix_ms = Some(crate::api::unix_ms());
                        health.last_error = None;
                        // A newer table may have come meanwhile: the loop
                        // writes it next, and marks it so.
                        health.up_to_date = true;
                    });
                    written = Some(state);
                    break;
                }
                Err(err) => {
                    metrics.state_write_failures.inc();
                    metrics.state_file(|health| {
                        health.write_failures += 1;
                        health.last_error = Some(err.to_string());
                    });
                    warn!(path = %path.display(), retry_ms = retry.as_millis() as u64,
                        "writing the state file failed: {err}; forwarding goes on, retrying");
                    if stopping {
                        // One last try happened; do not hold the exit up.
                        return;
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_handed_over_at_most_once_per_interval() {
        let start = tokio::time::Instant::now();
        let mut publishing = Coalescer::default();
        assert!(!publishing.ready(start), "nothing changed");
        publishing.changed();
        assert!(publishing.ready(start));
        publishing.changed();
        let soon = start + STATE_COALESCE / 2;
        assert!(!publishing.ready(soon), "too soon after the last");
        assert_eq!(publishing.due(), Some(start + STATE_COALESCE));
        assert!(publishing.ready(start + STATE_COALESCE));
        assert_eq!(publishing.due(), None);
        publishing.changed();
        publishing.now();
        assert!(
            publishing.ready(start + STATE_COALESCE),
            "now() does not wait"
        );
    }

    fn state(active: &[&str], spares: &[&str]) -> SavedState {
        let node = |(i, name): (usize, &&str)| SavedNode {
            name: name.to_string(),
            addr: Ipv4Addr::new(198, 19, 0, 11 + i as u8),
            index: i as u32,
        };
        SavedState {
            version: STATE_VERSION,
            fingerprint: Fingerprint {
                routes: 24,
                listeners: vec![8000, 9000],
                vip: Ipv4Addr::new(198, 18, 0, 1),
                external: "ext0".into(),
                internal: "int0".into(),
            },
            active: active.iter().enumerate().map(node).collect(),
            spares: spares
                .iter()
                .enumerate()
                .map(|(i, n)| node((i + active.len(), n)))
                .collect(),
        }
    }

    fn config() -> Config {
        Config::parse(
            "interfaces: {external: ext0, internal: int0}\nvip: 198.18.0.1\nroutes: 24\n\
             listeners: [{name: b, base_port: 8000}, {name: a, base_port: 9000}]\n\
             nodes: {listen: 127.0.0.1:7000, spares: 1}\n",
        )
        .unwrap()
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("halod-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn written_atomically_and_read_back() {
        let dir = temp_dir("atomic");
        let path = dir.join("sub").join("gw.state.json");
        assert_eq!(SavedState::load(&path).unwrap(), None);
        let saved = state(&["n1", "n2"], &["n3"]);
        write_atomic(&path, &saved).unwrap();
        assert_eq!(SavedState::load(&path).unwrap(), Some(saved.clone()));
        // Overwriting leaves no temp file behind.
        write_atomic(&path, &state(&["n1"], &[])).unwrap();
        let files: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(files, vec![std::ffi::OsString::from("gw.state.json")]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_broken_file_is_refused_with_what_to_do() {
        let dir = temp_dir("broken");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.json");
        std::fs::write(&path, "{not json").unwrap();
        let message = format!("{:#}", SavedState::load(&path).unwrap_err());
        assert!(message.contains("--reset"), "{message}");
        let mut other = state(&["n1"], &[]);
        other.version = 9;
        std::fs::write(&path, serde_json::to_string(&other).unwrap()).unwrap();
        let message = format!("{:#}", SavedState::load(&path).unwrap_err());
        assert!(message.contains("version 9"), "{message}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_cluster_comes_back_or_the_difference_is_named() {
        let path = Path::new("/x/state.json");
        let saved = state(&["n1", "n2"], &["n3"]);
        let cluster = saved.cluster(&config(), path).unwrap();
        assert_eq!(cluster.active(), ["n1".to_string(), "n2".to_string()]);
        assert_eq!(cluster.spares(), vec!["n3"]);
        assert_eq!(cluster.routes_of("n2").len(), 12);

        let mut changed = config();
        changed.routes = std::num::NonZeroU16::new(30).unwrap();
        changed.vip = Ipv4Addr::new(198, 18, 0, 9);
        let message = saved.cluster(&changed, path).unwrap_err().to_string();
        assert!(message.contains("routes: 24 -> 30"), "{message}");
        assert!(
            message.contains("vip: 198.18.0.1 -> 198.18.0.9"),
            "{message}"
        );
        assert!(message.contains("--reset"), "{message}");

        let mut small = config();
        small.nodes.max_nodes = 2;
        let message = saved.cluster(&small, path).unwrap_err().to_string();
        assert!(message.contains("max_nodes"), "{message}");

        let mut twice = saved.clone();
        twice.spares[0].addr = twice.active[0].addr;
        assert!(twice.cluster(&config(), path).is_err());

        // Two nodes on one counter index: the maps would not match the table.
        let mut shared = saved.clone();
        shared.spares[0].index = shared.active[1].index;
        let message = shared.cluster(&config(), path).unwrap_err().to_string();
        assert!(
            message.contains("counter index 1 is saved for two nodes (the second is \"n3\")"),
            "{message}"
        );
    }

    #[test]
    fn saved_addresses_are_checked_like_a_hello() {
        use crate::control::policy::NodePolicy;
        let path = Path::new("/x/state.json");
        let policy = NodePolicy {
            vip: Some(Ipv4Addr::new(198, 18, 0, 1)),
            allowed: vec!["198.19.0.0/24".parse().unwrap()],
            own: vec![(Ipv4Addr::new(198, 19, 0, 1), 24)],
            ..NodePolicy::default()
        };
        let saved = state(&["n1", "n2"], &["n3"]);
        saved.check_addresses(&policy, path).unwrap();
        for (addr, says) in [
            ("198.18.0.1", "the gateway's VIP"),
            ("127.0.0.1", "loopback"),
            ("10.9.9.9", "outside nodes.allowed_cidrs"),
            ("198.19.0.255", "the broadcast address of 198.19.0.0/24"),
            ("198.19.0.1", "the gateway's own address"),
        ] {
            let mut bad = saved.clone();
            bad.spares[0].addr = addr.parse().unwrap();
            let message = bad.check_addresses(&policy, path).unwrap_err().to_string();
            assert!(
                message.starts_with("state_file /x/state.json: node \"n3\": ")
                    && message.contains(says)
                    && message.contains("--reset"),
                "{addr}: {message}"
            );
        }
    }

    #[tokio::test]
    async fn the_writer_coalesces_and_retries_after_failures() {
        let dir = temp_dir("writer");
        std::fs::create_dir_all(&dir).unwrap();
        // A file where the state directory should be: every write fails.
        let blocker = dir.join("blocked");
        std::fs::write(&blocker, "").unwrap();
        let path = blocker.join("gw.state.json");
        let (states, receiver) = watch::channel(None);
        let metrics = Metrics::default();
        let shutdown = CancellationToken::new();
        let writer = tokio::spawn(run_writer(
            path.clone(),
            receiver,
            metrics.clone(),
            Duration::from_millis(5),
            shutdown.clone(),
        ));
        states.send_replace(Some(state(&["n1"], &[])));
        states.send_replace(Some(state(&["n1", "n2"], &[])));
        while metrics.state_write_failures.get() < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(SavedState::load(&path).ok().flatten(), None);
        {
            // What `halod status` shows meanwhile.
            let health = metrics.state_file.lock().unwrap().clone();
            assert!(!health.up_to_date);
            assert!(health.write_failures >= 3);
            assert_eq!(health.written_unix_ms, None);
            assert!(
                health
                    .last_error
                    .as_deref()
                    .unwrap()
                    .contains("File exists"),
                "{health:?}"
            );
        }
        // The disk comes back: the latest state is written.
        std::fs::remove_file(&blocker).unwrap();
        let latest = state(&["n1", "n2"], &["n3"]);
        states.send_replace(Some(latest.clone()));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while SavedState::load(&path).unwrap() != Some(latest.clone()) {
            assert!(std::time::Instant::now() < deadline, "never written");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The health is updated just after the rename.
        loop {
            let health = metrics.state_file.lock().unwrap().clone();
            if health.up_to_date {
                assert!(health.written_unix_ms.is_some());
                assert_eq!(health.last_error, None);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{health:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A state published just before shutdown still reaches the disk.
        let last = state(&["n2"], &[]);
        states.send_replace(Some(last.clone()));
        shutdown.cancel();
        writer.await.unwrap();
        assert_eq!(SavedState::load(&path).unwrap(), Some(last));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
