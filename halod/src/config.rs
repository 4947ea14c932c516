//! The gateway's YAML config (`halod run --config FILE`): parsing and checks.
//!
//! Every check happens before the daemon changes anything on the system, and
//! every error names the key and the reason. docs/operations.md
//! ("Configuration reference") documents each key; keep the two in step.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::routing::MAX_ROUTES;

pub use crate::dataplane::InstanceName;

/// `routes:` as read: 1..=[`MAX_ROUTES`], or an error that says so (serde's
/// own for `NonZeroU16` would only say "expected a nonzero u16").
fn routes_in_range<'de, D: serde::Deserializer<'de>>(d: D) -> Result<NonZeroU16, D::Error> {
    let routes = u64::deserialize(d)?;
    u16::try_from(routes)
        .ok()
        .and_then(NonZeroU16::new)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`routes`: {routes} is out of range: use 1..={MAX_ROUTES}"
            ))
        })
}
/// Most listener groups (every route message lists one port per group and
/// must fit a 4 KiB protocol line).
pub const MAX_LISTENERS: usize = halod_common::listener::MAX_LISTENERS;
/// Default for `nodes.max_nodes`.
pub const DEFAULT_MAX_NODES: u32 = 10_000;
/// Default for `control.socket`.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/halod/halod.sock";
/// Directory of the default `state_file` (`<dir>/<instance>.state.json`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/halod";
/// Default for `nodes.restart_grace_ms`: longer than the reference agent's
/// longest reconnect backoff (5 s plus 50 % jitter).
pub const DEFAULT_RESTART_GRACE_MS: u64 = 10_000;
/// Longest `sun_path` of a Unix socket, less its terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// What went wrong with a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(
        "config {path} is {kind}, not a regular file: reading it could wait forever (a FIFO) \
         or read something else; give the path of the YAML file"
    )]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The whole config file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of this gateway instance; BPF objects are pinned under
    /// `/sys/fs/bpf/halod/<instance>`, so two gateways on one host need two names.
    #[serde(default = "default_instance")]
    pub instance: InstanceName,
    pub interfaces: Interfaces,
    /// The virtual address clients connect to.
    pub vip: Ipv4Addr,
    /// Number of routes `N`; route ids are `1..=N` ([`Config::route_count`]
    /// as the routing core counts them).
    #[serde(deserialize_with = "routes_in_range")]
    pub routes: NonZeroU16,
    pub listeners: Vec<Listener>,
    pub nodes: NodesConfig,
    /// The operator's control socket.
    #[serde(default)]
    pub control: ControlConfig,
    /// Where the daemon keeps its table (slots, spares, node addresses) for a
    /// restart; default `/var/lib/halod/<instance>.state.json`.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// The Prometheus endpoint; off unless `metrics.listen` is set.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// How long the XDP program reuses a next hop (MACs, egress interface,
    /// MTU) before asking the kernel again; 0 asks for every packet.
    #[serde(default = "default_next_hop_ttl_ms")]
    pub next_hop_ttl_ms: u32,
}

/// Longest `next_hop_ttl_ms`: a neighbour change reaches traffic within it.
pub const MAX_NEXT_HOP_TTL_MS: u32 = 60_000;

fn default_next_hop_ttl_ms() -> u32 {
    crate::dataplane::NEXT_HOP_TTL.as_millis() as u32
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Path of the Unix socket `halod routes|nodes|status|...` talk to.
    #[serde(default = "default_control_socket")]
    pub socket: PathBuf,
    /// Group allowed to use the socket (mode 0660); none: root only (0600).
    #[serde(default)]
    pub group: Option<String>,
}

impl Default for ControlConfig {
    fn default() -> ControlConfig {
        ControlConfig {
            socket: default_control_socket(),
            group: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `IP:PORT` serving `GET /metrics`; none: no metrics endpoint.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Interfaces {
    /// Faces the clients; the XDP program is attached here.
    pub external: String,
    /// Faces the nodes.
    pub internal: String,
}

/// One listener group: ports `base_port ..= base_port + routes - 1`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub base_port: u16,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodesConfig {
    /// Where nodes register and heartbeat (TCP).
    pub listen: SocketAddr,
    /// Heartbeat interval told to each node in `welcome`.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Missed heartbeat intervals before a node is failed.
    #[serde(default = "default_dead_after")]
    pub dead_after: u32,
    /// A lost connection fails the node after this long unless it comes back.
    #[serde(default)]
    pub reconnect_grace_ms: u64,
    /// After a daemon restart, how long the nodes of the saved state have to
    /// reconnect before they are failed.
    #[serde(default = "default_restart_grace_ms")]
    pub restart_grace_ms: u64,
    /// Spares to keep (routing rule `S`).
    #[serde(default)]
    pub spares: u32,
    /// Most active nodes (routing rule `A`); defaults to `routes`.
    #[serde(default)]
    pub max_active: Option<u32>,
    /// File holding the shared token nodes must present in `hello`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Most registered nodes (active and spare); more are refused with `full`.
    #[serde(default = "default_max_nodes")]
    pub max_nodes: u32,
    /// How long a new connection may take to send `hello`.
    #[serde(default = "default_hello_timeout_ms")]
    pub hello_timeout_ms: u64,
    /// Networks node addresses must lie in (`A.B.C.D/LEN`); empty: any unicast
    /// address that is not loopback or the VIP.
    #[serde(default)]
    pub allowed_cidrs: Vec<Cidr>,
    /// How long a route that moves away from a live node (a join, a leave,
    /// `halod drain`, the last slot's routes after a failure without spare)
    /// keeps sending its connections open at the move to that node; 0 moves
    /// them at once.
    #[serde(default = "default_drain_ms")]
    pub drain_ms: u64,
    /// Most connections opened during drains that the data plane records at
    /// once (the size of its `DRAIN_FLOWS` map, 8 bytes of key each).
    #[serde(default = "default_drain_flows")]
    pub drain_flows: u32,
    /// Dead-node flush: most segments a second sent to the clients of a
    /// failed node's connections (two per connection); 0 turns the flush
    /// off (and the recording of connections with it).
    #[serde(default = "default_flush_pps")]
    pub flush_pps: u32,
    /// Most connections opened through the VIP that the data plane records
    /// for the flush (the size of its `RECENT_FLOWS` map, 8 bytes of key and
    /// 4 of value each); the least recently used go first.
    #[serde(default = "default_flush_flows")]
    pub flush_flows: u32,
}

/// Default of `nodes.drain_ms`.
pub const DEFAULT_DRAIN_MS: u64 = 30_000;
/// Longest `nodes.drain_ms`.
pub const MAX_DRAIN_MS: u64 = 3_600_000;
/// Range of `nodes.drain_flows`.
pub const DRAIN_FLOWS: RangeInclusive<u32> = 1024..=16_777_216;

/// Default of `nodes.flush_pps`.
pub const DEFAULT_FLUSH_PPS: u32 = 10_000;
/// Most `nodes.flush_pps`.
pub const MAX_FLUSH_PPS: u32 = 1_000_000;
/// Range of `nodes.flush_flows`.
pub const FLUSH_FLOWS: RangeInclusive<u32> = 1024..=16_777_216;

fn default_flush_pps() -> u32 {
    DEFAULT_FLUSH_PPS
}

fn default_flush_flows() -> u32 {
    halod_common::maps::DEFAULT_FLUSH_FLOWS
}

fn default_drain_ms() -> u64 {
    DEFAULT_DRAIN_MS
}

fn default_drain_flows() -> u32 {
    halod_common::maps::DEFAULT_DRAIN_FLOWS
}

/// An IPv4 network, `A.B.C.D/LEN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let mask = mask_of(self.prefix);
        u32::from(addr) & mask == u32::from(self.addr) & mask
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;

    fn try_from(text: String) -> Result<Cidr, String> {
        text.parse()
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not a network: write A.B.C.D/LEN"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} in {text:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("prefix length {prefix:?} in {text:?} must be 0..=32"))?;
        if u32::from(addr) & !mask_of(prefix) != 0 {
            return Err(format!(
                "{text:?} has host bits set: write {}/{prefix}",
                Ipv4Addr::from(u32::from(addr) & mask_of(prefix))
            ));
        }
        Ok(Cidr { addr, prefix })
    }
}

/// The netmask of a prefix length (0..=32).
pub fn mask_of(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0)
}

fn default_hello_timeout_ms() -> u64 {
    10_000
}

fn default_instance() -> InstanceName {
    InstanceName::new("default").expect("a valid instance name")
}
fn default_heartbeat_ms() -> u64 {
    100
}
fn default_dead_after() -> u32 {
    3
}
fn default_max_nodes() -> u32 {
    DEFAULT_MAX_NODES
}
fn default_restart_grace_ms() -> u64 {
    DEFAULT_RESTART_GRACE_MS
}
fn default_control_socket() -> PathBuf {
    PathBuf::from(DEFAULT_CONTROL_SOCKET)
}

impl Config {
    /// Reads, parses and checks a config file. Touches nothing on the system
    /// (see [`Config::check_system`] for the checks against the host).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        use std::os::unix::fs::FileTypeExt;
        // Opening a FIFO blocks until someone writes to it: look first.
        if let Ok(metadata) = std::fs::metadata(path) {
            let kind = metadata.file_type();
            let what = if kind.is_fifo() {
                Some("a FIFO")
            } else if kind.is_dir() {
                Some("a directory")
            } else if kind.is_socket() {
                Some("a socket")
            } else if kind.is_char_device() || kind.is_block_device() {
                Some("a device")
            } else {
                None
            };
            if let Some(kind) = what {
                return Err(ConfigError::NotAFile {
                    path: path.to_path_buf(),
                    kind,
                });
            }
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = Config::parse(&text).map_err(|err| match err {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// Parses and checks config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = serde_norway::from_str(text).map_err(|err| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: err.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// `routes`, as the routing core and the port arithmetic count them.
    pub fn route_count(&self) -> u32 {
        u32::from(self.routes.get())
    }

    /// The ports of listener `index`.
    pub fn listener_ports(&self, index: usize) -> RangeInclusive<u32> {
        let base = u32::from(self.listeners[index].base_port);
        base..=base + self.route_count() - 1
    }

    /// Base ports in listener order (route `r` is `base + r - 1` in each).
    pub fn base_ports(&self) -> Vec<u16> {
        self.listeners.iter().map(|l| l.base_port).collect()
    }

    /// The effective `state_file`.
    pub fn state_file(&self) -> PathBuf {
        self.state_file.clone().unwrap_or_else(|| {
            Path::new(DEFAULT_STATE_DIR).join(format!("{}.state.json", self.instance))
        })
    }

    /// The effective `nodes.max_active`.
    pub fn max_active(&self) -> u32 {
        self.nodes.max_active.unwrap_or(self.route_count())
    }

    /// Checks that do not need the system.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, name) in [
            ("interfaces.external", &self.interfaces.external),
            ("interfaces.internal", &self.interfaces.internal),
        ] {
            if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ']) {
                return Err(invalid(
                    key,
                    format!("{name:?} is not a valid interface name"),
                ));
            }
        }
        if self.vip.is_unspecified() || self.vip.is_broadcast() || self.vip.is_multicast() {
            return Err(invalid(
                "vip",
                format!("{} cannot be a virtual service address", self.vip),
            ));
        }
        if self.next_hop_ttl_ms > MAX_NEXT_HOP_TTL_MS {
            return Err(invalid(
                "next_hop_ttl_ms",
                format!(
                    "{} is out of range: use 0..={MAX_NEXT_HOP_TTL_MS} (a neighbour or route \
                     change reaches traffic only after this long; 0 looks up every packet)",
                    self.next_hop_ttl_ms
                ),
            ));
        }
        if self.listeners.is_empty() {
            return Err(invalid(
                "listeners",
                "at least one listener group is needed, e.g. `- {name: browser, base_port: 8000}`",
            ));
        }
        if self.listeners.len() > MAX_LISTENERS {
            return Err(invalid(
                "listeners",
                format!(
                    "{} listener groups: at most {MAX_LISTENERS} are supported",
                    self.listeners.len()
                ),
            ));
        }
        let mut names = HashSet::new();
        for (i, listener) in self.listeners.iter().enumerate() {
            let key = format!("listeners[{i}]");
            if listener.name.is_empty() || listener.name.len() > 64 {
                return Err(invalid(format!("{key}.name"), "must be 1 to 64 characters"));
            }
            if !names.insert(listener.name.as_str()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("{:?} is used by an earlier listener", listener.name),
                ));
            }
            if listener.base_port == 0 {
                return Err(invalid(
                    format!("{key}.base_port"),
                    "port 0 cannot be a listener port",
                ));
            }
            let last = u32::from(listener.base_port) + self.route_count() - 1;
            if last > 65_535 {
                return Err(invalid(
                    format!("{key} ({})", listener.name),
                    format!(
                        "ports {}..{last} go past port 65535: lower base_port to at most {} or use fewer routes",
                        listener.base_port,
                        65_536 - self.route_count()
                    ),
                ));
            }
            let ports = self.listener_ports(i);
            for (j, earlier) in self.listeners[..i].iter().enumerate() {
                let other = self.listener_ports(j);
                if ports.start() <= other.end() && other.start() <= ports.end() {
                    return Err(invalid(
                        format!("{key} ({})", listener.name),
                        format!(
                            "ports {}..{} overlap listeners[{j}] ({}) {}..{}",
                            ports.start(),
                            ports.end(),
                            earlier.name,
                            other.start(),
                            other.end()
                        ),
                    ));
                }
            }
        }
        let nodes = &self.nodes;
        if nodes.listen.port() == 0 {
            return Err(invalid(
                "nodes.listen",
                "needs a port, e.g. 198.19.0.1:7000",
            ));
        }
        if !(10..=60_000).contains(&nodes.heartbeat_ms) {
            return Err(invalid(
                "nodes.heartbeat_ms",
                format!("{} is out of range: use 10..=60000", nodes.heartbeat_ms),
            ));
        }
        if !(1..=1000).contains(&nodes.dead_after) {
            return Err(invalid(
                "nodes.dead_after",
                format!("{} is out of range: use 1..=1000", nodes.dead_after),
            ));
        }
        if nodes.reconnect_grace_ms > 3_600_000 {
            return Err(invalid(
                "nodes.reconnect_grace_ms",
                format!(
                    "{} is more than an hour (3600000)",
                    nodes.reconnect_grace_ms
                ),
            ));
        }
        if nodes.restart_grace_ms > 3_600_000 {
            return Err(invalid(
                "nodes.restart_grace_ms",
                format!("{} is more than an hour (3600000)", nodes.restart_grace_ms),
            ));
        }
        if let Some(max_active) = nodes.max_active
            && !(1..=self.route_count()).contains(&max_active)
        {
            return Err(invalid(
                "nodes.max_active",
                format!(
                    "{max_active} is out of range: use 1..={} (at most `routes`)",
                    self.route_count()
                ),
            ));
        }
        if nodes.drain_ms > MAX_DRAIN_MS {
            return Err(invalid(
                "nodes.drain_ms",
                format!(
                    "{} is out of range: use 0..={MAX_DRAIN_MS} (0 moves a route's connections at once)",
                    nodes.drain_ms
                ),
            ));
        }
        if !DRAIN_FLOWS.contains(&nodes.drain_flows) {
            return Err(invalid(
                "nodes.drain_flows",
                format!(
                    "{} is out of range: use {}..={}",
                    nodes.drain_flows,
                    DRAIN_FLOWS.start(),
                    DRAIN_FLOWS.end()
                ),
            ));
        }
        if nodes.flush_pps > MAX_FLUSH_PPS {
            return Err(invalid(
                "nodes.flush_pps",
                format!(
                    "{} is out of range: use 0..={MAX_FLUSH_PPS} (0 turns the dead-node flush off)",
                    nodes.flush_pps
                ),
            ));
        }
        if !FLUSH_FLOWS.contains(&nodes.flush_flows) {
            return Err(invalid(
                "nodes.flush_flows",
                format!(
                    "{} is out of range: use {}..={}",
                    nodes.flush_flows,
                    FLUSH_FLOWS.start(),
                    FLUSH_FLOWS.end()
                ),
            ));
        }
        if !(1..=1_000_000).contains(&nodes.max_nodes) {
            return Err(invalid(
                "nodes.max_nodes",
                format!("{} is out of range: use 1..=1000000", nodes.max_nodes),
            ));
        }
        if !(100..=600_000).contains(&nodes.hello_timeout_ms) {
            return Err(invalid(
                "nodes.hello_timeout_ms",
                format!(
                    "{} is out of range: use 100..=600000",
                    nodes.hello_timeout_ms
                ),
            ));
        }
        let socket = self.control.socket.as_os_str();
        if socket.is_empty() || socket.len() > MAX_SOCKET_PATH {
            return Err(invalid(
                "control.socket",
                format!(
                    "{:?} must be a path of 1 to {MAX_SOCKET_PATH} bytes (a Unix socket address)",
                    self.control.socket
                ),
            ));
        }
        if let Some(group) = &self.control.group
            && group.is_empty()
        {
            return Err(invalid(
                "control.group",
                "must name a group, or be left out (root only)",
            ));
        }
        if let Some(path) = &self.state_file
            && (path.as_os_str().is_empty() || path.file_name().is_none())
        {
            return Err(invalid(
                "state_file",
                format!("{path:?} must name a file, e.g. /var/lib/halod/default.state.json"),
            ));
        }
        if let Some(listen) = self.metrics.listen
            && listen.port() == 0
        {
            return Err(invalid(
                "metrics.listen",
                "needs a port, e.g. 127.0.0.1:9464",
            ));
        }
        if nodes.spares >= nodes.max_nodes {
            return Err(invalid(
                "nodes.spares",
                format!(
                    "{} spares leave no room for an active node under nodes.max_nodes = {}",
                    nodes.spares, nodes.max_nodes
                ),
            ));
        }
        Ok(())
    }

    /// Checks against the running system, still without changing it: both
    /// interfaces exist in this network namespace and the token file reads.
    /// Returns the node token, if one is configured.
    pub fn check_system(&self) -> Result<Option<String>, ConfigError> {
        for (key, name) in [
            ("interfaces.external", &self.interfaces.external),
            ("interfaces.internal", &self.interfaces.internal),
        ] {
            if let Err(errno) = nix::net::if_::if_nametoindex(name.as_str()) {
                return Err(invalid(
                    key,
                    format!(
                        "no interface named {name:?} in this network namespace ({errno}); check `ip link`"
                    ),
                ));
            }
        }
        if self.interfaces.internal != self.interfaces.external
            && addresses_of(&self.interfaces.internal).contains(&self.vip)
        {
            return Err(invalid(
                "vip",
                format!(
                    "{} is the address of {} (interfaces.internal, the node side); the VIP is \
                     the address clients connect to, on {} (interfaces.external): give that address",
                    self.vip, self.interfaces.internal, self.interfaces.external
                ),
            ));
        }
        match &self.nodes.token_file {
            None => Ok(None),
            Some(path) => read_token(path)
                .map(Some)
                .map_err(|reason| invalid("nodes.token_file", reason)),
        }
    }
}

impl Config {
    /// A warning when no interface of this network namespace has the VIP:
    /// then nothing answers the clients' ARP for it, and unless a router
    /// sends the VIP's traffic here no client reaches the gateway.
    pub fn vip_warning(&self) -> Option<String> {
        let addresses = nix::ifaddrs::getifaddrs().ok()?;
        let present = addresses
            .filter_map(|entry| Some(entry.address?.as_sockaddr_in()?.ip()))
            .any(|addr| addr == self.vip);
        (!present).then(|| {
            format!(
                "vip {vip} is on no interface of this host: clients' ARP for it gets no answer, so \
                 only traffic a router sends here reaches the gateway. If that is not the plan, add it: \
                 `ip addr add {vip}/32 dev {external}`",
                vip = self.vip,
                external = self.interfaces.external
            )
        })
    }

    /// The group of `control.group`, looked up without changing anything.
    pub fn control_group(&self) -> Result<Option<nix::unistd::Gid>, ConfigError> {
        let Some(name) = &self.control.group else {
            return Ok(None);
        };
        match nix::unistd::Group::from_name(name) {
            Ok(Some(group)) => Ok(Some(group.gid)),
            Ok(None) => Err(invalid(
                "control.group",
                format!("no group named {name:?} on this system; check `getent group {name}`"),
            )),
            Err(errno) => Err(invalid(
                "control.group",
                format!("looking up group {name:?}: {errno}"),
            )),
        }
    }
}

/// The IPv4 addresses of `interface` (none when it has none or they cannot be read).
fn addresses_of(interface: &str) -> Vec<Ipv4Addr> {
    let Ok(addresses) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addresses
        .filter(|entry| entry.interface_name == interface)
        .filter_map(|entry| Some(entry.address?.as_sockaddr_in()?.ip()))
        .collect()
}

/// Reads a token file: its content with surrounding white space removed. The
/// gateway and the node agent read tokens the same way.
pub fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read token file {}: {err}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("token file {} is empty", path.display()));
    }
    if token.len() > 1024 || token.chars().any(|c| c.is_control()) {
        return Err(format!(
            "token in {} must be at most 1024 printable characters",
            path.display()
        ));
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "
interfaces: {external: ext0, internal: int0}
vip: 198.18.0.1
routes: 24
listeners:
  - {name: browser, base_port: 8000}
  - {name: app, base_port: 9000}
nodes:
  listen: 198.19.0.1:7000
  heartbeat_ms: 100
  dead_after: 3
  reconnect_grace_ms: 0
  spares: 0
  max_active: 24
  token_file: /etc/halod/token
";

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_the_issue_example() {
        let config = Config::parse(EXAMPLE).unwrap();
        assert_eq!(config.instance.as_str(), "default");
        assert_eq!(config.interfaces.external, "ext0");
        assert_eq!(config.vip, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(config.route_count(), 24);
        assert_eq!(config.base_ports(), vec![8000, 9000]);
        assert_eq!(config.listener_ports(1), 9000..=9023);
        assert_eq!(config.nodes.listen, "198.19.0.1:7000".parse().unwrap());
        assert_eq!(config.nodes.max_active, Some(24));
        assert_eq!(
            config.nodes.token_file.as_deref(),
            Some(Path::new("/etc/halod/token"))
        );
        assert_eq!(config.nodes.max_nodes, DEFAULT_MAX_NODES);
    }

    #[test]
    fn the_deployed_example_parses() {
        let config = Config::parse(include_str!("../../deploy/halod.example.yaml")).unwrap();
        let mut expected = Config::parse(
            &EXAMPLE
                .replace("  token_file: /etc/halod/token\n", "")
                .replace("  max_active: 24\n", ""),
        )
        .unwrap();
        // The example turns metrics on and spells out the default state file.
        expected.metrics.listen = Some("127.0.0.1:9464".parse().unwrap());
        expected.state_file = Some(PathBuf::from("/var/lib/halod/default.state.json"));
        // And allows node addresses in the test network only.
        expected.nodes.allowed_cidrs = vec!["198.19.0.0/24".parse().unwrap()];
        assert_eq!(config, expected);
        assert_eq!(config.state_file(), expected.state_file());
    }

    #[test]
    fn operator_keys_parse_with_defaults() {
        let config = Config::parse(EXAMPLE).unwrap();
        assert_eq!(config.control.socket, Path::new(DEFAULT_CONTROL_SOCKET));
        assert_eq!(config.control.group, None);
        assert_eq!(config.metrics.listen, None);
        assert_eq!(config.nodes.restart_grace_ms, DEFAULT_RESTART_GRACE_MS);
        assert_eq!(
            config.state_file(),
            Path::new("/var/lib/halod/default.state.json")
        );
        let config = Config::parse(&format!(
            "{}control: {{socket: /tmp/h.sock, group: adm}}\nstate_file: /tmp/s.json\n\
             metrics: {{listen: 127.0.0.1:9464}}\n",
            EXAMPLE.replace("  spares: 0", "  spares: 0\n  restart_grace_ms: 2500")
        ))
        .unwrap();
        assert_eq!(config.control.socket, Path::new("/tmp/h.sock"));
        assert_eq!(config.control.group.as_deref(), Some("adm"));
        assert_eq!(config.state_file(), Path::new("/tmp/s.json"));
        assert_eq!(
            config.metrics.listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(config.nodes.restart_grace_ms, 2500);

        for (extra, key) in [
            ("control: {sockett: /x}\n", "sockett"),
            ("metrics: {listen: 127.0.0.1:0}\n", "`metrics.listen`"),
            ("control: {group: \"\"}\n", "`control.group`"),
            ("state_file: /\n", "`state_file`"),
        ] {
            let message = err(&format!("{EXAMPLE}{extra}"));
            assert!(message.contains(key), "{extra}: {message}");
        }
        let long = format!("control: {{socket: /{}}}\n", "s".repeat(120));
        assert!(err(&format!("{EXAMPLE}{long}")).contains("`control.socket`"));
        let message =
            err(&EXAMPLE.replace("  spares: 0", "  spares: 0\n  restart_grace_ms: 3600001"));
        assert!(message.contains("`nodes.restart_grace_ms`"), "{message}");
    }

    #[test]
    fn next_hop_ttl() {
        assert_eq!(Config::parse(EXAMPLE).unwrap().next_hop_ttl_ms, 500);
        let config =
            Config::parse(&EXAMPLE.replace("routes: 24", "routes: 24\nnext_hop_ttl_ms: 0"))
                .unwrap();
        assert_eq!(config.next_hop_ttl_ms, 0);
    }

    #[test]
    fn node_security_keys() {
        let config = Config::parse(EXAMPLE).unwrap();
        assert_eq!(config.nodes.hello_timeout_ms, 10_000);
        assert!(config.nodes.allowed_cidrs.is_empty());
        let config = Config::parse(&EXAMPLE.replace(
            "  spares: 0",
            "  spares: 0\n  hello_timeout_ms: 500\n  allowed_cidrs: [198.19.0.0/24, 10.1.2.3/32]",
        ))
        .unwrap();
        assert_eq!(config.nodes.hello_timeout_ms, 500);
        let allowed = &config.nodes.allowed_cidrs;
        assert_eq!(allowed.len(), 2);
        assert!(allowed[0].contains(Ipv4Addr::new(198, 19, 0, 77)));
        assert!(!allowed[0].contains(Ipv4Addr::new(198, 19, 1, 1)));
        assert!(allowed[1].contains(Ipv4Addr::new(10, 1, 2, 3)));
        assert!(!allowed[1].contains(Ipv4Addr::new(10, 1, 2, 4)));
        let any: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains(Ipv4Addr::new(203, 0, 113, 1)));
        for (value, says) in [
            ("[198.19.0.1/24]", "host bits set: write 198.19.0.0/24"),
            ("[198.19.0.0]", "not a network"),
            ("[198.19.0.0/33]", "0..=32"),
            ("[nonsense/8]", "not an IPv4 address"),
        ] {
            let message = err(&EXAMPLE.replace(
                "  spares: 0",
                &format!("  spares: 0\n  allowed_cidrs: {value}"),
            ));
            assert!(
                message.contains("nodes.allowed_cidrs") && message.contains(says),
                "{value}: {message}"
            );
        }
        let message = err(&format!("instance: ../x\n{EXAMPLE}"));
        assert!(
            message.contains("\"../x\" is not a valid instance name: use 1 to 32 of"),
            "{message}"
        );
        let message = err(&EXAMPLE.replace("  spares: 0", "  spares: 0\n  hello_timeout_ms: 50"));
        assert!(message.contains("`nodes.hello_timeout_ms`"), "{message}");
    }

    #[test]
    fn control_group_is_looked_up() {
        let mut config = Config::parse(EXAMPLE).unwrap();
        assert_eq!(config.control_group().unwrap(), None);
        config.control.group = Some("root".into());
        assert_eq!(
            config.control_group().unwrap(),
            Some(nix::unistd::Gid::from_raw(0))
        );
        config.control.group = Some("no-such-group-halod".into());
        let message = config.control_group().unwrap_err().to_string();
        assert!(message.contains("no group named"), "{message}");
    }

    #[test]
    fn defaults_apply() {
        let config = Config::parse(
            "interfaces: {external: a, internal: b}\nvip: 198.18.0.1\nroutes: 4\n\
             listeners: [{name: x, base_port: 100}]\nnodes: {listen: 127.0.0.1:7000}\n",
        )
        .unwrap();
        assert_eq!(config.nodes.heartbeat_ms, 100);
        assert_eq!(config.nodes.dead_after, 3);
        assert_eq!(config.nodes.reconnect_grace_ms, 0);
        assert_eq!(config.nodes.spares, 0);
        assert_eq!(config.max_active(), 4);
        assert_eq!(config.nodes.token_file, None);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let message = err(&EXAMPLE.replace("  spares: 0", "  spares: 0\n  sparez: 1"));
        assert!(message.contains("sparez"), "{message}");
        let message = err(&format!("{EXAMPLE}colour: blue\n"));
        assert!(message.contains("colour"), "{message}");
    }

    #[test]
    fn overlapping_listeners_are_rejected() {
        let message = err(&EXAMPLE.replace("base_port: 9000", "base_port: 8010"));
        assert_eq!(
            message,
            "config key `listeners[1] (app)`: ports 8010..8033 overlap listeners[0] (browser) 8000..8023"
        );
        // Touching but not overlapping is fine.
        Config::parse(&EXAMPLE.replace("base_port: 9000", "base_port: 8024")).unwrap();
    }

    #[test]
    fn ranges_past_65535_are_rejected() {
        let message = err(&EXAMPLE.replace("base_port: 9000", "base_port: 65530"));
        assert!(
            message.starts_with(
                "config key `listeners[1] (app)`: ports 65530..65553 go past port 65535"
            ),
            "{message}"
        );
        Config::parse(&EXAMPLE.replace("base_port: 9000", "base_port: 65512")).unwrap();
        let message = err(&EXAMPLE.replace("base_port: 9000", "base_port: 70000"));
        assert!(message.contains("base_port"), "{message}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (from, to, key) in [
            ("routes: 24", "routes: 0", "routes"),
            ("routes: 24", "routes: 65536", "routes"),
            ("max_active: 24", "max_active: 25", "nodes.max_active"),
            ("heartbeat_ms: 100", "heartbeat_ms: 0", "nodes.heartbeat_ms"),
            ("dead_after: 3", "dead_after: 0", "nodes.dead_after"),
            (
                "spares: 0",
                "spares: 0\n  flush_pps: 1000001",
                "nodes.flush_pps",
            ),
            (
                "spares: 0",
                "spares: 0\n  flush_flows: 1000",
                "nodes.flush_flows",
            ),
            (
                "{name: app, base_port: 9000}",
                "{name: browser, base_port: 9000}",
                "listeners[1].name",
            ),
            ("vip: 198.18.0.1", "vip: 0.0.0.0", "vip"),
            (
                "routes: 24",
                "routes: 24\nnext_hop_ttl_ms: 60001",
                "next_hop_ttl_ms",
            ),
        ] {
            let message = err(&EXAMPLE.replace(from, to));
            assert!(message.contains(&format!("`{key}`")), "{to}: {message}");
        }
        let defaults = Config::parse(EXAMPLE).unwrap();
        assert_eq!(
            (defaults.nodes.flush_pps, defaults.nodes.flush_flows),
            (10_000, 262_144)
        );
        let off =
            Config::parse(&EXAMPLE.replace("spares: 0", "spares: 0\n  flush_pps: 0")).unwrap();
        assert_eq!(off.nodes.flush_pps, 0);
        let message = err(&EXAMPLE.replace("vip: 198.18.0.1", "vip: nowhere"));
        assert!(message.contains("vip"), "{message}");
        let message = err(&EXAMPLE.replace("  listen: 198.19.0.1:7000\n", ""));
        assert!(message.contains("listen"), "{message}");
        let message = err(&EXAMPLE.replace("{external: ext0, internal: int0}", "{external: ext0}"));
        assert!(message.contains("internal"), "{message}");
    }

    #[test]
    fn missing_interface_is_named() {
        let config = Config::parse(
            &EXAMPLE
                .replace("internal: int0", "internal: lo")
                .replace("ext0", "nosuch9"),
        )
        .unwrap();
        let message = config.check_system().unwrap_err().to_string();
        assert!(
            message.starts_with("config key `interfaces.external`: no interface named \"nosuch9\""),
            "{message}"
        );
    }

    #[test]
    fn a_config_that_is_not_a_file_is_refused_at_once() {
        let dir = std::env::temp_dir().join(format!("halod-config-fifo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("halod.yaml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // Before: `read_to_string` waited for a writer forever.
        let (done, result) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || {
            let _ = done.send(Config::load(&path).map(drop).map_err(|e| e.to_string()));
        });
        let message = result
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("Config::load of a FIFO did not return")
            .unwrap_err();
        assert!(
            message.contains("is a FIFO, not a regular file"),
            "{message}"
        );
        let message = Config::load(&dir).unwrap_err().to_string();
        assert!(
            message.contains("is a directory, not a regular file"),
            "{message}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_vip_on_no_interface_is_warned_about() {
        let mut config = Config::parse(
            "interfaces: {external: lo, internal: lo}\nvip: 127.0.0.1\nroutes: 4\n\
             listeners: [{name: b, base_port: 8000}]\nnodes: {listen: 127.0.0.1:7000}\n",
        )
        .unwrap();
        // One interface for both sides: the VIP is on it, as it should be.
        assert!(config.check_system().is_ok());
        assert_eq!(config.vip_warning(), None);
        config.vip = Ipv4Addr::new(198, 18, 255, 254);
        let warning = config.vip_warning().unwrap();
        assert!(
            warning.starts_with("vip 198.18.255.254 is on no interface of this host")
                && warning.contains("ip addr add 198.18.255.254/32 dev lo"),
            "{warning}"
        );
    }

    #[test]
    fn token_file_is_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("halod-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        assert_eq!(read_token(&path).unwrap(), "s3cret");
        std::fs::write(&path, "  \n").unwrap();
        assert!(read_token(&path).unwrap_err().contains("empty"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(read_token(&path).unwrap_err().contains("cannot read"));
    }
}
