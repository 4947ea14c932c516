//! The data plane: the one owner of the XDP program and its maps.
//!
//! [`Dataplane::start`] loads the program (`halod-ebpf`, embedded at build time),
//! writes the configuration, attaches it to the external and internal interfaces
//! (native mode, generic as a fallback) and pins the maps under
//! `/sys/fs/bpf/halod/<instance>`. [`Dataplane::apply`] carries out the table
//! writes of a routing plan; [`spawn`] wraps it in the actor that the rest of the
//! daemon talks to. Dropping it detaches the program and removes the pins.
//!
//! Map layout (see `halod-common/src/maps.rs`): `ROUTE_SLOT[route-1] = slot`,
//! `SLOT_NODE[slot-1] = node`, so a packet costs two array lookups and a spare
//! taking over a failed node is one slot write.

mod actor;
pub mod attached;
mod batch;
mod flush;
pub mod heartbeats;
mod object;
mod table;

use std::{
    fs, io,
    net::{Ipv4Addr, SocketAddrV4},
    num::NonZeroU16,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray},
    programs::{
        ProgramError, TestRun, TestRunOptions, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use halod_common::{
    listener::{MAX_LISTENERS, last_port},
    maps::{
        self as common, CONFIG_ENABLED, CONFIG_RECENT_FLOWS, DRAIN_ACTIVE, DRAIN_NEW_PRESENT,
        DrainFlow, FlowNode, NODE_PRESENT, NodeAddr, ROUTE_DRAINING, Reason, RouteDrain, SlotNode,
        drain_counter, names,
    },
};
use serde::Serialize;

pub use actor::{DataplaneHandle, spawn};
pub use flush::{Flush, FlushSender, FlushStats, segment as flush_segment};
pub use heartbeats::HeartbeatTable;
use table::{AddrChange, Table};

/// Where the maps of every instance are pinned (bpffs).
pub const PIN_ROOT: &str = "/sys/fs/bpf/halod";
const BPF_FS: &str = "/sys/fs/bpf";
/// `statfs` magic of bpffs (linux/magic.h).
const BPF_FS_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0xcafe_4a11);
/// How long the program reuses a node's next hop (MACs, egress interface, MTU)
/// before asking `bpf_fib_lookup` again: a neighbour or route change reaches the
/// node's traffic within this time.
pub const NEXT_HOP_TTL: Duration = Duration::from_millis(500);

/// What the data plane needs to know to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// Instance name: the pin directory is `/sys/fs/bpf/halod/<instance>`.
    pub instance: InstanceName,
    /// Interface facing the clients (carries the VIP).
    pub external: String,
    /// Interface facing the nodes; may be the same as `external`.
    pub internal: String,
    /// The virtual IP clients connect to.
    pub vip: Ipv4Addr,
    /// Number of routes `N`.
    pub routes: NonZeroU16,
    /// Base port of each listener group; route `r` owns `base + r - 1` in each.
    pub listeners: Vec<u16>,
    /// Number of per-node counter slots; every `NodeTarget::index` is below it.
    pub max_nodes: u32,
    /// Most connections opened during drains that are recorded at once
    /// (`nodes.drain_flows`): the size of `DRAIN_FLOWS`.
    pub drain_flows: u32,
    /// Most connections opened through the VIP that are recorded for the
    /// dead-node flush (`nodes.flush_flows`): the size of `RECENT_FLOWS`;
    /// 0 records none (the flush is off).
    pub flush_flows: u32,
}

/// A node as the data plane sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeTarget {
    pub addr: Ipv4Addr,
    /// The node's per-node counter slot, `< max_nodes`.
    pub index: u32,
}

/// One table write. [`Dataplane::apply`] carries a batch out in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// Put a node in a slot (or empty it).
    Slot { slot: u16, node: Option<NodeTarget> },
    /// Point a route at a slot (or at nothing).
    Route { route: u16, slot: Option<u16> },
    /// The route is about to move away from `from`, which stays alive: for
    /// `window`, its TCP connections open now keep reaching `from`, and
    /// connections opened since reach the node the batch leaves the route
    /// with. Put it before the batch's writes that move the route; it is
    /// carried out before all of them, so one `ROUTE_SLOT` write switches
    /// the route whatever their order.
    Drain {
        route: u16,
        from: NodeTarget,
        window: Duration,
    },
    /// The route's drain is over: all of its packets follow its slot.
    DrainEnd { route: u16 },
}

/// How the program is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// In the driver (XDP_FLAGS_DRV_MODE).
    Native,
    /// In the kernel stack after the skb is built (XDP_FLAGS_SKB_MODE): slower.
    Generic,
}

impl AttachMode {
    /// The mode's name: in `halod status`, in the link pins' names, in logs.
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        }
    }

    /// The mode of a [`AttachMode::name`].
    pub fn from_name(name: &str) -> Option<AttachMode> {
        [AttachMode::Native, AttachMode::Generic]
            .into_iter()
            .find(|mode| mode.name() == name)
    }
}

/// Packets and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// A next hop the program cached for a node or client (see
/// [`Dataplane::cached_next_hops`], [`Dataplane::cached_client_next_hops`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    /// The node or client address it was looked up for.
    pub addr: Ipv4Addr,
    /// Egress interface index.
    pub ifindex: u32,
    /// Destination MAC (the next hop's).
    pub dmac: [u8; 6],
    /// Source MAC (the egress interface's).
    pub smac: [u8; 6],
    /// The route's MTU.
    pub mtu: u16,
}

/// Counters summed over all CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Forwarded traffic (both directions) per route; index `route - 1`.
    pub routes: Vec<Counter>,
    /// Forwarded traffic (both directions) per node index.
    pub nodes: Vec<Counter>,
    /// Packets per verdict reason (`forwarded_in`, `pass_no_node`, ...).
    pub reasons: Vec<(&'static str, u64)>,
    /// What happened to packets of draining routes.
    pub drain: DrainStats,
    /// What the dead-node flush did.
    pub flush: FlushStats,
    /// Established-connection estimates; `None` while the program records
    /// no connections (`nodes.flush_pps` 0).
    pub connections: Option<Connections>,
}

/// Established TCP connections through the VIP, estimated from what the
/// program records (`RECENT_NODES`, `ROUTE_CONNECTIONS`): connections whose
/// SYN it saw since recording started, minus those whose client sent a FIN
/// or RST through the gateway, minus those the dead-node flush told. A
/// connection that ends otherwise (the node reset it, the client vanished)
/// stays counted (a node's count until the node fails, a route's until the
/// maps are made anew: a start without adoption); one opened before
/// recording started is not counted. A SYN and the end of its connection
/// seen on different CPUs make one CPU's count go below zero: the sum is
/// what counts, and a negative sum reads 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Connections {
    /// Per route; index `route - 1`.
    pub routes: Vec<u64>,
    /// Per node index.
    pub nodes: Vec<u64>,
}

/// The `DRAIN_COUNTERS`, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DrainStats {
    /// Packets of connections older than a move, sent to the old node.
    pub to_old: u64,
    /// Connections opened during a drain, recorded for the new node.
    pub new_flows: u64,
    /// Connections opened during a drain that `nodes.drain_flows` had no
    /// room for: they stayed with the old node.
    pub full: u64,
}

impl Stats {
    /// The count of one reason by name; 0 for an unknown name.
    pub fn reason(&self, name: &str) -> u64 {
        self.reasons
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| *v)
    }
}

/// What went wrong, naming the interface, map or program and the kernel's answer.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("invalid data plane configuration: {0}")]
    Config(String),
    #[error("interface {interface:?}: {error}; check the name with `ip link`")]
    Interface {
        interface: String,
        error: nix::Error,
    },
    #[error(
        "this halod was built with HALOD_SKIP_EBPF, so it has no XDP program: rebuild without it"
    )]
    NoObject,
    // aya's errors keep the errno in their source: say it (console::causes).
    #[error("loading the XDP object failed: {}", crate::console::causes(&**.error))]
    Object { error: Box<aya::EbpfError> },
    #[error("program {program}: {action} failed: {}", crate::console::causes(&**.error))]
    Program {
        program: &'static str,
        action: &'static str,
        error: Box<ProgramError>,
    },
    #[error(
        "attaching XDP program {program} to interface {interface} failed in native mode ({}) and in generic mode ({})",
        crate::console::causes(&**.native),
        crate::console::causes(&**.generic)
    )]
    Attach {
        program: &'static str,
        interface: String,
        native: Box<ProgramError>,
        generic: Box<ProgramError>,
    },
    #[error(
        "interface {interface} already runs XDP program id {} {} ({} mode); halod needs the interface to itself. {}",
        .program.id,
        .program.name.as_deref().map_or("(name unknown)".to_string(), |name| format!("{name:?}")),
        .program.mode,
        occupied_advice(interface, program)
    )]
    Occupied {
        interface: String,
        program: attached::AttachedProgram,
    },
    #[error("map {map}: {action} failed: {}", crate::console::causes(&**.error))]
    Map {
        map: &'static str,
        action: String,
        error: Box<MapError>,
    },
    #[error("map {map} is missing from the XDP object")]
    MissingMap { map: &'static str },
    #[error("map {map}: mapping it into memory (mmap, Linux 5.5 or later) failed: {error}")]
    Mmap { map: &'static str, error: io::Error },
    #[error("pinning maps under {path}: {message}")]
    Pin { path: PathBuf, message: String },
    #[error("table write #{position} {write:?} refused, nothing written: {reason}")]
    Write {
        position: usize,
        write: Write,
        reason: String,
    },
    #[error("the data plane task has stopped")]
    Stopped,
}

/// What to do about a program already on an interface.
fn occupied_advice(interface: &str, program: &attached::AttachedProgram) -> String {
    if program.name.as_deref() == Some(common::PROGRAM_NAME) {
        return format!(
            "It is a halod program: another gateway instance uses {interface} (see `ls {PIN_ROOT}`); \
             stop it, or `halod teardown --config` its config if it is stopped"
        );
    }
    let off = match program.mode {
        "generic" => "xdpgeneric off",
        "offloaded" => "xdpoffload off",
        _ => "xdp off",
    };
    format!(
        "If nothing needs it, detach it with `ip link set dev {interface} {off}` \
         (if it was attached through a pinned link, remove the pin: `bpftool net show dev {interface}`); \
         otherwise give halod other interfaces"
    )
}

fn map_error(
    map: &'static str,
    action: impl Into<String>,
) -> impl FnOnce(MapError) -> DataplaneError {
    let action = action.into();
    move |error| DataplaneError::Map {
        map,
        action,
        error: Box::new(error),
    }
}

/// The loaded program and its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    config: DataplaneConfig,
    /// Set once the maps are pinned; removed on drop.
    pins: Option<PathBuf>,
    modes: Vec<(String, AttachMode)>,
    table: Table,
    /// Routes that drain: what `ROUTE_DRAIN` holds for them (out of `table`,
    /// whose copy checks every batch).
    drains: std::collections::HashMap<u16, table::Drain>,
    /// Leave the program attached and everything pinned when dropped (a
    /// stopping daemon that a restart will adopt).
    keep: bool,
    /// The dead-node flusher, once started ([`Dataplane::start_flusher`]).
    flusher: Option<FlushSender>,
    flush_counters: std::sync::Arc<flush::FlushCounters>,
    /// Array writes gathered for one batch update ([`batch`]).
    pending: batch::Pending,
}

/// Name prefix of the pinned XDP links in the pin directory:
/// `link_<native|generic>_<interface>`.
const LINK_PIN: &str = "link_";

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("config", &self.config)
            .field("pins", &self.pins)
            .field("modes", &self.modes)
            .finish_non_exhaustive()
    }
}

impl Dataplane {
    /// Loads the program, writes the configuration, attaches it to both
    /// interfaces and pins the maps under `/sys/fs/bpf/halod/<instance>`.
    pub fn start(config: &DataplaneConfig) -> Result<Dataplane, DataplaneError> {
        let pin_dir = Path::new(PIN_ROOT).join(&config.instance);
        // Checked before loading so a second instance with the same name does not
        // attach over the first one.
        prepare_pin_dir(&pin_dir, &config.instance)?;
        let mut dataplane = match Dataplane::load_unattached(config) {
            Ok(dataplane) => dataplane,
            Err(error) => {
                let _ = fs::remove_dir(&pin_dir);
                return Err(error);
            }
        };
        // From here `Drop` cleans up whatever was done.
        dataplane.pins = Some(pin_dir.clone());
        dataplane.pin_maps(&pin_dir)?;
        dataplane.attach()?;
        Ok(dataplane)
    }

    /// Loads the program and writes the configuration without attaching or
    /// pinning anything: for `BPF_PROG_TEST_RUN` tests and benchmarks. The
    /// interfaces must exist in the calling thread's network namespace.
    pub fn load_unattached(config: &DataplaneConfig) -> Result<Dataplane, DataplaneError> {
        Dataplane::load(config, None)
    }

    /// Loads the program; with `pinned`, its maps are the ones pinned in that
    /// directory (adoption), not new ones.
    fn load(config: &DataplaneConfig, pinned: Option<&Path>) -> Result<Dataplane, DataplaneError> {
        let (external, internal) = validate(config)?;
        let bytes = object::bytes();
        if bytes.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        // Table sizes follow the configuration; `NODE_BY_ADDR` holds one address
        // per node index.
        let routes = u32::from(config.routes.get());
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::ROUTE_SLOT, routes)
            .map_max_entries(names::SLOT_NODE, routes)
            .map_max_entries(names::ROUTE_COUNTERS, routes)
            .map_max_entries(names::NODE_COUNTERS, config.max_nodes)
            .map_max_entries(names::NODE_BY_ADDR, config.max_nodes)
            .map_max_entries(names::NEXT_HOP, config.max_nodes)
            .map_max_entries(names::DIRECT_NODES, config.max_nodes)
            .map_max_entries(names::HEARTBEATS, config.max_nodes)
            .map_max_entries(names::ROUTE_DRAIN, routes)
            .map_max_entries(names::DRAIN_FLOWS, config.drain_flows.max(1))
            .map_max_entries(names::RECENT_FLOWS, config.flush_flows.max(1))
            .map_max_entries(names::RECENT_NODES, config.max_nodes)
            .map_max_entries(
                names::ROUTE_CONNECTIONS,
                routes * common::ROUTE_CONNECTION_HALVES,
            );
        if let Some(dir) = pinned {
            replace_smaller_reason_counters(dir);
            // CONFIG is written whole below, so it is not taken over: a new one
            // (of this build's layout) replaces the pin in `adopt`.
            for name in names::ALL.into_iter().filter(|name| *name != names::CONFIG) {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader.load(bytes).map_err(|error| DataplaneError::Object {
            error: Box::new(error),
        })?;
        let program: &mut Xdp = ebpf
            .program_mut(common::PROGRAM_NAME)
            .ok_or(DataplaneError::Object {
                error: Box::new(aya::EbpfError::ProgramError(ProgramError::InvalidName {
                    name: common::PROGRAM_NAME.to_owned(),
                })),
            })?
            .try_into()
            .map_err(|error| DataplaneError::Program {
                program: common::PROGRAM_NAME,
                action: "finding the XDP program",
                error: Box::new(error),
            })?;
        program.load().map_err(|error| DataplaneError::Program {
            program: common::PROGRAM_NAME,
            action: "loading (BPF_PROG_LOAD)",
            error: Box::new(error),
        })?;

        let mut listeners = [0u16; MAX_LISTENERS];
        listeners[..config.listeners.len()].copy_from_slice(&config.listeners);
        let value = common::Config {
            vip: config.vip.octets(),
            external_ifindex: external,
            internal_ifindex: internal,
            routes: config.routes.get(),
            listener_count: config.listeners.len() as u16,
            listeners,
            flags: if config.flush_flows > 0 {
                CONFIG_ENABLED | CONFIG_RECENT_FLOWS
            } else {
                CONFIG_ENABLED
            },
            next_hop_ttl_ms: NEXT_HOP_TTL.as_millis() as u32,
            ..Default::default()
        };
        let mut dataplane = Dataplane {
            ebpf,
            config: config.clone(),
            pins: None,
            modes: Vec::new(),
            table: Table::new(config.routes.get(), config.max_nodes),
            drains: std::collections::HashMap::new(),
            pending: batch::Pending::default(),
            keep: false,
            flusher: None,
            flush_counters: Default::default(),
        };
        dataplane
            .array::<common::Config>(names::CONFIG)?
            .set(0, value, 0)
            .map_err(map_error(names::CONFIG, "writing the configuration"))?;
        Ok(dataplane)
    }

    /// Takes over the program a previous daemon of this instance left
    /// attached and pinned (see [`Dataplane::keep_on_drop`]): a new program
    /// reusing the pinned maps, swapped into the pinned XDP links atomically
    /// (`bpf_link_update`), so forwarding never stops. `Ok(None)` when there
    /// is nothing complete to adopt; an error when the pins were made for
    /// another table size.
    pub fn adopt(config: &DataplaneConfig) -> Result<Option<Dataplane>, DataplaneError> {
        let dir = Path::new(PIN_ROOT).join(&config.instance);
        let mut interfaces = vec![config.external.clone()];
        if config.internal != config.external {
            interfaces.push(config.internal.clone());
        }
        let links: Vec<(String, AttachMode, PathBuf)> = match fs::read_dir(&dir) {
            Ok(entries) => entries
                .flatten()
                .filter_map(|entry| {
                    let name = entry.file_name().into_string().ok()?;
                    let rest = name.strip_prefix(LINK_PIN)?;
                    let (mode, interface) = rest.split_once('_')?;
                    let mode = AttachMode::from_name(mode)?;
                    Some((interface.to_owned(), mode, entry.path()))
                })
                .collect(),
            Err(_) => return Ok(None),
        };
        let complete = interfaces
            .iter()
            .all(|interface| links.iter().filter(|(i, _, _)| i == interface).count() == 1)
            && links.len() == interfaces.len()
            && names::ALL
                .iter()
                .filter(|name| !names::ADDED_LATER.contains(name))
                .all(|name| dir.join(name).exists());
        if !complete {
            return Ok(None);
        }
        let mut dataplane = Dataplane::load(config, Some(&dir))?;
        dataplane.adopt_drains()?;
        for (name, expected) in [
            (names::ROUTE_SLOT, u32::from(config.routes.get())),
            (names::SLOT_NODE, u32::from(config.routes.get())),
            (names::ROUTE_COUNTERS, u32::from(config.routes.get())),
            (
                names::ROUTE_CONNECTIONS,
                u32::from(config.routes.get()) * common::ROUTE_CONNECTION_HALVES,
            ),
            (names::NODE_COUNTERS, config.max_nodes),
            (names::RECENT_NODES, config.max_nodes),
            (names::NODE_BY_ADDR, config.max_nodes),
            (names::DIRECT_NODES, config.max_nodes),
        ] {
            let size = match dataplane.map_ref(name)? {
                aya::maps::Map::Array(data)
                | aya::maps::Map::PerCpuArray(data)
                | aya::maps::Map::HashMap(data) => data
                    .info()
                    .map_err(map_error(name, "reading the pinned map's info"))?
                    .max_entries(),
                _ => expected,
            };
            if size != expected {
                return Err(DataplaneError::Pin {
                    path: dir.join(name),
                    message: format!(
                        "the pinned map holds {size} entries, this configuration needs {expected}; \
                         start with --reset to replace the pinned data plane"
                    ),
                });
            }
        }
        // The new program reads its own CONFIG (the old one's layout may differ);
        // pin it in place of the old one so that the next daemon finds it.
        let config_pin = dir.join(names::CONFIG);
        fs::remove_file(&config_pin).map_err(|error| DataplaneError::Pin {
            path: config_pin.clone(),
            message: format!("removing the previous daemon's CONFIG pin: {error}"),
        })?;
        dataplane
            .map_ref(names::CONFIG)?
            .pin(&config_pin)
            .map_err(|error| DataplaneError::Pin {
                path: config_pin.clone(),
                message: format!("pinning map {}: {error}", names::CONFIG),
            })?;
        for (interface, mode, path) in links {
            let link = PinnedLink::from_pin(&path).map_err(|error| DataplaneError::Pin {
                path: path.clone(),
                message: format!("opening the pinned XDP link: {error}"),
            })?;
            let link =
                XdpLink::try_from(FdLink::from(link)).map_err(|error| DataplaneError::Pin {
                    path: path.clone(),
                    message: format!("the pin is not an XDP link: {error}"),
                })?;
            let program: &mut Xdp = dataplane
                .ebpf
                .program_mut(common::PROGRAM_NAME)
                .and_then(|p| p.try_into().ok())
                .ok_or(DataplaneError::Config("no XDP program loaded".to_owned()))?;
            program
                .attach_to_link(link)
                .map_err(|error| DataplaneError::Program {
                    program: common::PROGRAM_NAME,
                    action: "replacing the program in the pinned XDP link",
                    error: Box::new(error),
                })?;
            tracing::info!(interface = %interface, mode = ?mode, "XDP program adopted: the pinned link now runs the new program");
            dataplane.modes.push((interface, mode));
        }
        dataplane.pins = Some(dir);
        Ok(Some(dataplane))
    }

    /// When this data plane is dropped, leave the program attached and the
    /// maps and links pinned: it goes on forwarding with the last table until
    /// the next daemon adopts it ([`Dataplane::adopt`]) or
    /// [`Dataplane::remove_pins`] removes it.
    pub fn keep_on_drop(&mut self) {
        self.keep = true;
    }

    /// Removes what a stopped (or killed) daemon of `instance` left pinned:
    /// the XDP links (which detaches the program) and the maps. Returns
    /// whether there was anything. The caller makes sure no daemon of that
    /// instance runs.
    pub fn remove_pins(instance: &str) -> Result<bool, DataplaneError> {
        let dir = Path::new(PIN_ROOT).join(instance);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(error) => {
                return Err(DataplaneError::Pin {
                    path: dir,
                    message: format!("reading the pin directory: {error}"),
                });
            }
        };
        for entry in entries.flatten() {
            fs::remove_file(entry.path()).map_err(|error| DataplaneError::Pin {
                path: entry.path(),
                message: format!("removing the pin: {error}"),
            })?;
        }
        fs::remove_dir(&dir).map_err(|error| DataplaneError::Pin {
            path: dir.clone(),
            message: format!("removing the pin directory: {error}"),
        })?;
        let _ = fs::remove_dir(PIN_ROOT);
        Ok(true)
    }

    /// Sets how long the program reuses a node's next hop before it asks
    /// `bpf_fib_lookup` again ([`NEXT_HOP_TTL`] unless set); zero looks up every
    /// packet. Applies to entries already cached too.
    pub fn set_next_hop_ttl(&mut self, ttl: Duration) -> Result<(), DataplaneError> {
        let millis = u32::try_from(ttl.as_millis())
            .ok()
            .filter(|_| ttl.subsec_nanos().is_multiple_of(1_000_000))
            .ok_or_else(|| {
                DataplaneError::Config(format!(
                    "next-hop TTL {ttl:?} must be whole milliseconds, at most {} ms",
                    u32::MAX
                ))
            })?;
        let mut map = self.array::<common::Config>(names::CONFIG)?;
        let mut value = map
            .get(&0, 0)
            .map_err(map_error(names::CONFIG, "reading the configuration"))?;
        value.next_hop_ttl_ms = millis;
        map.set(0, value, 0)
            .map_err(map_error(names::CONFIG, "writing the next-hop TTL"))
    }

    /// Protocol version 2: the program stamps UDP heartbeats to `port`
    /// (0: it leaves them to the kernel stack).
    pub fn set_heartbeat_port(&mut self, port: u16) -> Result<(), DataplaneError> {
        let mut map = self.array::<common::Config>(names::CONFIG)?;
        let mut value = map
            .get(&0, 0)
            .map_err(map_error(names::CONFIG, "reading the configuration"))?;
        value.heartbeat_port = port.to_be_bytes();
        map.set(0, value, 0)
            .map_err(map_error(names::CONFIG, "writing the heartbeat port"))
    }

    /// The program's heartbeat stamps (`HEARTBEATS`), mapped into this
    /// process: see [`HeartbeatTable`].
    pub fn heartbeats(&self) -> Result<HeartbeatTable, DataplaneError> {
        let aya::maps::Map::Array(data) = self.map_ref(names::HEARTBEATS)? else {
            return Err(DataplaneError::MissingMap {
                map: names::HEARTBEATS,
            });
        };
        use std::os::fd::AsFd;
        HeartbeatTable::map(data.fd().as_fd(), self.config.max_nodes).map_err(|error| {
            DataplaneError::Mmap {
                map: names::HEARTBEATS,
                error,
            }
        })
    }

    /// The next hop the program has cached for node index `index`, per CPU
    /// (`None` where that CPU has none). For tests and diagnostics.
    pub fn cached_next_hops(&self, index: u32) -> Result<Vec<Option<NextHop>>, DataplaneError> {
        self.next_hops(names::NEXT_HOP, index)
    }

    /// The next hop the program has cached for node replies to `client`, per CPU
    /// (`None` where that CPU has none for this client). For tests and diagnostics.
    pub fn cached_client_next_hops(
        &self,
        client: Ipv4Addr,
    ) -> Result<Vec<Option<NextHop>>, DataplaneError> {
        Ok(self
            .next_hops(names::CLIENT_NEXT_HOP, common::client_slot(client.octets()))?
            .into_iter()
            .map(|hop| hop.filter(|hop| hop.addr == client))
            .collect())
    }

    /// The connections the program recorded in `DRAIN_FLOWS` (opened to a
    /// draining route): route, client address and port, and the node they
    /// reach; sorted. For tests and diagnostics.
    pub fn drain_flows(&self) -> Result<Vec<(u16, SocketAddrV4, NodeTarget)>, DataplaneError> {
        let map: BpfHashMap<&MapData, DrainFlow, FlowNode> =
            BpfHashMap::try_from(self.map_ref(names::DRAIN_FLOWS)?)
                .map_err(map_error(names::DRAIN_FLOWS, "opening"))?;
        let mut flows = map
            .iter()
            .map(|entry| {
                let (flow, node) = entry.map_err(map_error(names::DRAIN_FLOWS, "reading"))?;
                let client = SocketAddrV4::new(
                    Ipv4Addr::from(flow.client),
                    u16::from_be_bytes(flow.client_port),
                );
                let node = NodeTarget {
                    addr: Ipv4Addr::from(node.addr),
                    index: node.index,
                };
                Ok((flow.route, client, node))
            })
            .collect::<Result<Vec<_>, DataplaneError>>()?;
        flows.sort_by_key(|(route, client, _)| (*route, *client));
        Ok(flows)
    }

    fn next_hops(
        &self,
        name: &'static str,
        index: u32,
    ) -> Result<Vec<Option<NextHop>>, DataplaneError> {
        let map: PerCpuArray<&MapData, common::NextHop> =
            PerCpuArray::try_from(self.map_ref(name)?).map_err(map_error(name, "opening"))?;
        let values = map
            .get(&index, 0)
            .map_err(map_error(name, format!("reading index {index}")))?;
        Ok(values
            .iter()
            .map(|hop| {
                (hop.ifindex != 0).then(|| NextHop {
                    addr: Ipv4Addr::from(hop.addr),
                    ifindex: hop.ifindex,
                    dmac: hop.dmac,
                    smac: hop.smac,
                    mtu: hop.mtu,
                })
            })
            .collect())
    }

    /// Starts the dead-node flusher ([`flush`]): its own thread, with a raw
    /// socket opened here (in the calling thread's network namespace, which
    /// must be the VIP's) and its own handles on `RECENT_FLOWS`,
    /// `RECENT_NODES` and `ROUTE_CONNECTIONS`, sending at most `pps` segments a second. Needs
    /// `flush_flows` > 0 and CAP_NET_RAW.
    pub fn start_flusher(&mut self, pps: u32) -> Result<(), DataplaneError> {
        if self.config.flush_flows == 0 || pps == 0 {
            return Err(DataplaneError::Config(
                "the dead-node flush needs nodes.flush_flows and nodes.flush_pps above 0"
                    .to_owned(),
            ));
        }
        let id = |name: &'static str| -> Result<u32, DataplaneError> {
            let data = match self.map_ref(name)? {
                aya::maps::Map::LruHashMap(data) | aya::maps::Map::PerCpuArray(data) => data,
                _ => return Err(DataplaneError::MissingMap { map: name }),
            };
            Ok(data
                .info()
                .map_err(map_error(name, "reading the map's info"))?
                .id())
        };
        let ids = flush::MapIds {
            flows: id(names::RECENT_FLOWS)?,
            nodes: id(names::RECENT_NODES)?,
            routes: id(names::ROUTE_CONNECTIONS)?,
        };
        let config = flush::FlusherConfig {
            vip: self.config.vip,
            routes: self.config.routes.get(),
            listeners: self.config.listeners.clone(),
            pps,
            flows: self.config.flush_flows,
        };
        let sender = flush::Flusher::start(config, ids, self.flush_counters.clone())
            .map_err(DataplaneError::Config)?;
        self.flusher = Some(sender);
        Ok(())
    }

    /// The way to the flusher, once started.
    pub fn flusher(&self) -> Option<FlushSender> {
        self.flusher.clone()
    }

    /// The connections `RECENT_FLOWS` holds, with the node index each was
    /// opened to. For tests and diagnostics.
    pub fn recent_flows(&self) -> Result<Vec<(common::RecentFlow, u32)>, DataplaneError> {
        let map: BpfHashMap<&MapData, common::RecentFlow, u32> =
            BpfHashMap::try_from(self.map_ref(names::RECENT_FLOWS)?)
                .map_err(map_error(names::RECENT_FLOWS, "opening"))?;
        Ok(map.iter().filter_map(Result::ok).collect())
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &DataplaneConfig {
        &self.config
    }

    /// Carries out `writes` in the given order after checking the whole batch:
    /// ids in range, no route ever pointing at a slot without a node. A refused
    /// batch writes nothing.
    pub fn apply(&mut self, writes: &[Write]) -> Result<(), DataplaneError> {
        self.table.check(writes)?;
        // What an earlier, failed batch left gathered is not written.
        self.pending = batch::Pending::default();
        // Where the batch leaves each route: a new drain's new node.
        let after = writes
            .iter()
            .any(|w| matches!(w, Write::Drain { .. }))
            .then(|| table::Overlay::of(writes));
        // A slot that had a node and gets another (a takeover) or none: the
        // drains of its routes may have a new node.
        let slot_changed = writes.iter().any(|w| {
            matches!(*w, Write::Slot { slot, .. }
                if self.table.slots.get(usize::from(slot) - 1).is_some_and(Option::is_some))
        });
        let mut written: Vec<u16> = Vec::new();
        // Routes the batch drains, and routes it points at a slot: looked up
        // per write below, so a batch of thousands of routes stays linear.
        let mut drained = std::collections::HashSet::new();
        let mut routed = std::collections::HashSet::new();
        for write in writes {
            match *write {
                Write::Drain { route, .. } => {
                    drained.insert(route);
                }
                Write::Route { route, .. } => {
                    routed.insert(route);
                }
                Write::Slot { .. } | Write::DrainEnd { .. } => {}
            }
        }
        // New drains first: the entry (old and new node), then the route's
        // flag, in one write of its `ROUTE_SLOT` value. A drain the batch
        // ends before it starts the route's next one ends first, in order:
        // else it would end the new drain.
        let now = monotonic_ns();
        let mut done = vec![false; writes.len()];
        let mut flagged = Vec::new();
        let mut ended = false;
        for (position, write) in writes.iter().enumerate() {
            if let Write::DrainEnd { route } = *write {
                let restarts = drained.contains(&route)
                    && writes[position + 1..]
                        .iter()
                        .any(|later| matches!(*later, Write::Drain { route: r, .. } if r == route));
                if restarts {
                    self.drains.remove(&route);
                    done[position] = true;
                    ended = true;
                }
            }
            if let Write::Drain {
                route,
                from,
                window,
            } = *write
            {
                // A route that moves again while it drains keeps its old node
                // (its connections are the ones not recorded) and drains on.
                let until_ns = now.saturating_add(window.as_nanos() as u64);
                let until_ns = match self.drains.get(&route) {
                    Some(drain) if drain.from == from && drain.until_ns > now => {
                        drain.until_ns.max(until_ns)
                    }
                    _ => until_ns,
                };
                let drain = table::Drain {
                    from,
                    to: self.table.target_after(after.as_ref(), route),
                    until_ns,
                };
                self.write_drain(route, &drain)?;
                self.drains.insert(route, drain);
                // A route write of the batch sets the flag with the new slot;
                // without one (a spare taking the slot over) it is set now,
                // before the slot changes node.
                if !routed.contains(&route) {
                    flagged.push(route);
                }
            }
        }
        // Every entry before any flag (each route's entry before its flag),
        // so the entries go in one batch and the flags in another.
        for route in flagged {
            self.write_route(route)?;
        }
        for (write, _) in writes.iter().zip(&done).filter(|(_, done)| !**done) {
            match *write {
                Write::Drain { .. } => continue,
                Write::Route { route, .. } => {
                    self.table.record(write);
                    self.write_route(route)?;
                    written.push(route);
                }
                // Clearing the flag ends it: the program reads `ROUTE_DRAIN`
                // only for routes with the flag, and so does an adopting
                // daemon, so the entry is left as it is.
                Write::DrainEnd { route } => {
                    self.drains.remove(&route);
                    self.write_route(route)?;
                    ended = true;
                }
                Write::Slot { slot, node } => {
                    // Return traffic from the node must be recognised before
                    // client traffic reaches it.
                    if let Some(node) = &node {
                        for change in self.table.addr_changes(node) {
                            self.change_addr(change)?;
                        }
                    }
                    let value = node.map_or(SlotNode::default(), |node| SlotNode {
                        addr: node.addr.octets(),
                        index: node.index,
                        flags: NODE_PRESENT,
                    });
                    self.queue(names::SLOT_NODE, u32::from(slot) - 1, value)?;
                    self.table.record(write);
                }
            }
        }
        // Drains whose new node changed since they began (it failed, a spare
        // took its slot): their new connections follow. Only the routes this
        // batch moved can have one, or all when a slot changed node.
        let candidates: Vec<u16> = if slot_changed {
            self.drains.keys().copied().collect()
        } else {
            written
                .into_iter()
                .filter(|route| self.drains.contains_key(route))
                .collect()
        };
        for route in candidates {
            let Some(drain) = self.drains.get(&route).copied() else {
                continue;
            };
            let to = self.table.target(route);
            if drain.to != to {
                let drain = table::Drain { to, ..drain };
                self.write_drain(route, &drain)?;
                self.drains.insert(route, drain);
            }
        }
        self.flush()?;
        if ended {
            self.forget_drain_flows()?;
            // The drains of a storm leave room for 65,535 behind.
            if self.drains.len() * 4 < self.drains.capacity() {
                self.drains.shrink_to_fit();
            }
        }
        Ok(())
    }

    /// Gathers a write of `value` at `key` of the array `name`, after
    /// sending what was gathered for another map (order is kept).
    fn queue<V: aya::Pod>(
        &mut self,
        name: &'static str,
        key: u32,
        value: V,
    ) -> Result<(), DataplaneError> {
        if self.pending.map().is_some_and(|map| map != name) {
            self.flush()?;
        }
        self.pending.push(name, key, &value);
        Ok(())
    }

    /// Sends the gathered array writes in one batch update.
    fn flush(&mut self) -> Result<(), DataplaneError> {
        let Some(name) = self.pending.map() else {
            return Ok(());
        };
        let data = match self.ebpf.map(name) {
            Some(aya::maps::Map::Array(data)) => data,
            Some(_) => {
                return Err(map_error(name, "batch writing")(MapError::InvalidName {
                    name: format!("{name} is not an array map"),
                }));
            }
            None => return Err(DataplaneError::MissingMap { map: name }),
        };
        self.pending.send(data).map_err(|(done, error)| {
            map_error(name, format!("writing a batch (after {done} entries)"))(error)
        })
    }

    /// Writes `ROUTE_SLOT[route - 1]` from the mirror: the route's slot, with
    /// `ROUTE_DRAINING` while it drains.
    fn write_route(&mut self, route: u16) -> Result<(), DataplaneError> {
        let slot = u32::from(self.table.routes[usize::from(route) - 1].unwrap_or(0));
        let value = if self.drains.contains_key(&route) {
            slot | ROUTE_DRAINING
        } else {
            slot
        };
        self.queue(names::ROUTE_SLOT, u32::from(route) - 1, value)
    }

    fn write_drain(&mut self, route: u16, drain: &table::Drain) -> Result<(), DataplaneError> {
        let (new_addr, new_index, present) = match drain.to {
            Some(to) => (to.addr.octets(), to.index, DRAIN_NEW_PRESENT),
            None => ([0; 4], 0, 0),
        };
        let value = RouteDrain {
            old_addr: drain.from.addr.octets(),
            old_index: drain.from.index,
            new_addr,
            new_index,
            flags: DRAIN_ACTIVE | present,
            _pad: 0,
            until_ns: drain.until_ns,
        };
        self.queue(names::ROUTE_DRAIN, u32::from(route) - 1, value)
    }

    /// Removes the `DRAIN_FLOWS` entries of drains that are over, so that the
    /// map's room goes to the drains to come. One pass over the map.
    fn forget_drain_flows(&mut self) -> Result<(), DataplaneError> {
        let Some(map) = self.ebpf.map_mut(names::DRAIN_FLOWS) else {
            return Ok(());
        };
        let mut flows: BpfHashMap<&mut MapData, DrainFlow, FlowNode> =
            BpfHashMap::try_from(map).map_err(map_error(names::DRAIN_FLOWS, "opening"))?;
        let stale: Vec<DrainFlow> = flows
            .keys()
            .filter_map(Result::ok)
            .filter(|flow| !self.drains.contains_key(&flow.route))
            .collect();
        for flow in stale {
            match flows.remove(&flow) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(error) => {
                    return Err(map_error(
                        names::DRAIN_FLOWS,
                        "removing an ended drain's flow",
                    )(error));
                }
            }
        }
        Ok(())
    }

    /// The drains a previous daemon left in the pinned maps, into the
    /// mirror, so that this daemon's route writes keep them.
    fn adopt_drains(&mut self) -> Result<(), DataplaneError> {
        let now = monotonic_ns();
        let routes = u32::from(self.config.routes.get());
        let slots = self.array_ref::<common::RouteSlot>(names::ROUTE_SLOT)?;
        let draining: Vec<u16> = (0..routes)
            .filter(|i| slots.get(i, 0).is_ok_and(|v| v & ROUTE_DRAINING != 0))
            .map(|i| i as u16 + 1)
            .collect();
        let entries = self.array_ref::<RouteDrain>(names::ROUTE_DRAIN)?;
        let mut adopted = Vec::new();
        for route in draining {
            let Ok(entry) = entries.get(&(u32::from(route) - 1), 0) else {
                continue;
            };
            if entry.flags & DRAIN_ACTIVE == 0 || entry.until_ns <= now {
                continue;
            }
            let to = (entry.flags & DRAIN_NEW_PRESENT != 0).then(|| NodeTarget {
                addr: Ipv4Addr::from(entry.new_addr),
                index: entry.new_index,
            });
            adopted.push((
                route,
                table::Drain {
                    from: NodeTarget {
                        addr: Ipv4Addr::from(entry.old_addr),
                        index: entry.old_index,
                    },
                    to,
                    until_ns: entry.until_ns,
                },
            ));
        }
        for (route, drain) in adopted {
            self.drains.insert(route, drain);
        }
        Ok(())
    }

    /// The drains in progress: route, old node, time left.
    pub fn drains(&self) -> Vec<(u16, NodeTarget, Duration)> {
        let now = monotonic_ns();
        let mut drains: Vec<_> = self
            .drains
            .iter()
            .filter(|(_, drain)| drain.until_ns > now)
            .map(|(route, drain)| {
                (
                    *route,
                    drain.from,
                    Duration::from_nanos(drain.until_ns - now),
                )
            })
            .collect();
        drains.sort_by_key(|(route, _, _)| *route);
        drains
    }

    fn change_addr(&mut self, change: AddrChange) -> Result<(), DataplaneError> {
        // The address must be known before gathered slot writes reach it.
        self.flush()?;
        let mut map: BpfHashMap<&mut MapData, NodeAddr, u32> =
            BpfHashMap::try_from(self.ebpf.map_mut(names::NODE_BY_ADDR).ok_or(
                DataplaneError::MissingMap {
                    map: names::NODE_BY_ADDR,
                },
            )?)
            .map_err(map_error(names::NODE_BY_ADDR, "opening"))?;
        match change {
            AddrChange::Insert(addr, index) => map
                .insert(
                    NodeAddr {
                        addr: addr.octets(),
                    },
                    index,
                    0,
                )
                .map_err(map_error(names::NODE_BY_ADDR, format!("inserting {addr}"))),
            AddrChange::Remove(addr) => match map.remove(&NodeAddr {
                addr: addr.octets(),
            }) {
                Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
                Err(error) => Err(map_error(names::NODE_BY_ADDR, format!("removing {addr}"))(
                    error,
                )),
            },
        }
    }

    /// Reads the route -> slot and slot -> node tables back from the kernel
    /// (index `route - 1` and `slot - 1`).
    #[allow(clippy::type_complexity)]
    pub fn table(&self) -> Result<(Vec<Option<u16>>, Vec<Option<NodeTarget>>), DataplaneError> {
        let routes = self.array_ref::<common::RouteSlot>(names::ROUTE_SLOT)?;
        let routes = (0..u32::from(self.config.routes.get()))
            .map(|i| {
                routes
                    .get(&i, 0)
                    .map(|slot| {
                        u16::try_from(slot & !ROUTE_DRAINING)
                            .ok()
                            .filter(|s| *s != 0)
                    })
                    .map_err(map_error(
                        names::ROUTE_SLOT,
                        format!("reading route {}", i + 1),
                    ))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let slots = self.array_ref::<SlotNode>(names::SLOT_NODE)?;
        let slots = (0..u32::from(self.config.routes.get()))
            .map(|i| {
                slots
                    .get(&i, 0)
                    .map(|node| {
                        (node.flags & NODE_PRESENT != 0).then(|| NodeTarget {
                            addr: Ipv4Addr::from(node.addr),
                            index: node.index,
                        })
                    })
                    .map_err(map_error(
                        names::SLOT_NODE,
                        format!("reading slot {}", i + 1),
                    ))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((routes, slots))
    }

    /// Sums the per-CPU counters. A verdict the map has no entry for (it was
    /// pinned by an older build) reads 0.
    pub fn stats(&self) -> Result<Stats, DataplaneError> {
        let routes = self.counters(names::ROUTE_COUNTERS)?;
        let nodes = self.counters(names::NODE_COUNTERS)?;
        let map = self.map_ref(names::REASON_COUNTERS)?;
        let reasons_map: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(map_error(names::REASON_COUNTERS, "opening"))?;
        let reasons = Reason::ALL
            .iter()
            .map(|reason| {
                if *reason as u32 >= reasons_map.len() {
                    return Ok((reason.name(), 0));
                }
                reasons_map
                    .get(&(*reason as u32), 0)
                    .map(|values| (reason.name(), values.iter().sum()))
                    .map_err(map_error(
                        names::REASON_COUNTERS,
                        format!("reading {}", reason.name()),
                    ))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Stats {
            routes,
            nodes,
            reasons,
            drain: self.drain_stats()?,
            flush: self.flush_counters.read(),
            connections: self.connections()?,
        })
    }

    /// The established-connection estimates ([`Connections`]); `None` when
    /// the program does not record connections (its configuration says).
    fn connections(&self) -> Result<Option<Connections>, DataplaneError> {
        let flags = self
            .array_ref::<common::Config>(names::CONFIG)?
            .get(&0, 0)
            .map_err(map_error(names::CONFIG, "reading the configuration"))?
            .flags;
        if flags & CONFIG_RECENT_FLOWS == 0 {
            return Ok(None);
        }
        let counts = self.signed_sums(names::ROUTE_CONNECTIONS)?;
        let (seen, flushed) =
            counts.split_at(usize::from(self.config.routes.get()).min(counts.len()));
        let routes = seen
            .iter()
            .enumerate()
            .map(|(i, count)| count.wrapping_sub(flushed.get(i).copied().unwrap_or(0)))
            .collect();
        let nodes = self.signed_sums(names::RECENT_NODES)?;
        let clamp = |counts: Vec<i64>| counts.into_iter().map(|c| c.max(0) as u64).collect();
        Ok(Some(Connections {
            routes: clamp(routes),
            nodes: clamp(nodes),
        }))
    }

    /// Every entry of a per-CPU array of wrapping up/down counts, summed
    /// over CPUs and read as signed.
    fn signed_sums(&self, name: &'static str) -> Result<Vec<i64>, DataplaneError> {
        let map: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.map_ref(name)?).map_err(map_error(name, "opening"))?;
        (0..map.len())
            .map(|i| {
                map.get(&i, 0)
                    .map(|values| values.iter().fold(0u64, |a, b| a.wrapping_add(*b)) as i64)
                    .map_err(map_error(name, format!("reading index {i}")))
            })
            .collect()
    }

    /// The drain counters; zero when the map is not there (a program of an
    /// older build).
    fn drain_stats(&self) -> Result<DrainStats, DataplaneError> {
        let Some(map) = self.ebpf.map(names::DRAIN_COUNTERS) else {
            return Ok(DrainStats::default());
        };
        let map: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(map_error(names::DRAIN_COUNTERS, "opening"))?;
        let read = |index: u32| -> Result<u64, DataplaneError> {
            map.get(&index, 0)
                .map(|values| values.iter().sum())
                .map_err(map_error(names::DRAIN_COUNTERS, format!("reading {index}")))
        };
        Ok(DrainStats {
            to_old: read(drain_counter::TO_OLD)?,
            new_flows: read(drain_counter::NEW_FLOWS)?,
            full: read(drain_counter::FULL)?,
        })
    }

    fn counters(&self, name: &'static str) -> Result<Vec<Counter>, DataplaneError> {
        let map: PerCpuArray<&MapData, common::Counter> =
            PerCpuArray::try_from(self.map_ref(name)?).map_err(map_error(name, "opening"))?;
        (0..map.len())
            .map(|i| {
                map.get(&i, 0)
                    .map(|values| {
                        values.iter().fold(Counter::default(), |sum, c| Counter {
                            packets: sum.packets + c.packets,
                            bytes: sum.bytes + c.bytes,
                        })
                    })
                    .map_err(map_error(name, format!("reading index {i}")))
            })
            .collect()
    }

    /// Attach mode per interface.
    pub fn modes(&self) -> Vec<(String, AttachMode)> {
        self.modes.clone()
    }

    /// The pin directory, once pinned.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pins.as_deref()
    }

    /// Runs the program once on `frame` as if it arrived on interface
    /// `ingress_ifindex` (`BPF_PROG_TEST_RUN`), returning the verdict and the
    /// frame as the program left it. The interface must exist in the calling
    /// thread's network namespace; `bpf_fib_lookup` consults that namespace.
    pub fn test_run(
        &self,
        frame: &[u8],
        ingress_ifindex: u32,
    ) -> Result<(u32, Vec<u8>), DataplaneError> {
        let program: &Xdp = self
            .ebpf
            .program(common::PROGRAM_NAME)
            .and_then(|p| p.try_into().ok())
            .ok_or(DataplaneError::Config("no XDP program loaded".to_owned()))?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex (the kernel wants data = 0 and data_end = frame length).
        let context: [u32; 6] = [0, frame.len() as u32, 0, ingress_ifindex, 0, 0];
        let context: Vec<u8> = context.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let mut out = vec![0u8; frame.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&context),
                ..TestRunOptions::default()
            })
            .map_err(|error| DataplaneError::Program {
                program: common::PROGRAM_NAME,
                action: "BPF_PROG_TEST_RUN",
                error: Box::new(error),
            })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    fn attach(&mut self) -> Result<(), DataplaneError> {
        let mut interfaces = vec![self.config.external.clone()];
        if self.config.internal != self.config.external {
            interfaces.push(self.config.internal.clone());
        }
        for interface in interfaces {
            let program: &mut Xdp = self
                .ebpf
                .program_mut(common::PROGRAM_NAME)
                .and_then(|p| p.try_into().ok())
                .ok_or(DataplaneError::Config("no XDP program loaded".to_owned()))?;
            // Ask first: with a program in the way both attach modes fail
            // with nothing but "`bpf_link_create` failed".
            if let Ok(ifindex) = nix::net::if_::if_nametoindex(interface.as_str())
                && let Ok(Some(program)) = attached::attached_program(ifindex)
            {
                return Err(DataplaneError::Occupied { interface, program });
            }
            let (mode, link) = match program.attach(&interface, XdpMode::Driver) {
                Ok(link) => (AttachMode::Native, link),
                Err(native) => {
                    tracing::warn!(
                        interface = %interface,
                        error = %crate::console::causes(&native),
                        "native XDP attach failed; falling back to generic (skb) mode, which is much slower"
                    );
                    match program.attach(&interface, XdpMode::Skb) {
                        Ok(link) => (AttachMode::Generic, link),
                        Err(generic) => {
                            return Err(DataplaneError::Attach {
                                program: common::PROGRAM_NAME,
                                interface,
                                native: Box::new(native),
                                generic: Box::new(generic),
                            });
                        }
                    }
                }
            };
            // Pinned, the link (and so the attachment) outlives this process;
            // Drop removes the pin unless the data plane is kept.
            if let Some(dir) = &self.pins {
                let mode_name = mode.name();
                let path = dir.join(format!("{LINK_PIN}{mode_name}_{interface}"));
                let pin_error = |message: String| DataplaneError::Pin {
                    path: path.clone(),
                    message,
                };
                let link = program
                    .take_link(link)
                    .map_err(|error| pin_error(format!("taking the XDP link: {error}")))?;
                let link = FdLink::try_from(link).map_err(|error| {
                    pin_error(format!(
                        "the kernel attached XDP without a BPF link ({error}); Linux 5.9 or later is needed"
                    ))
                })?;
                // The fd closes here; the pin keeps the link.
                drop(
                    link.pin(&path)
                        .map_err(|error| pin_error(format!("pinning the XDP link: {error}")))?,
                );
            }
            tracing::info!(interface = %interface, mode = ?mode, "XDP program attached");
            self.modes.push((interface, mode));
        }
        Ok(())
    }

    /// Pins every map as `<dir>/<MAP>`. A later restart can adopt them with
    /// `EbpfLoader::map_pin_path` per name.
    fn pin_maps(&mut self, dir: &Path) -> Result<(), DataplaneError> {
        for name in names::ALL {
            let path = dir.join(name);
            self.map_ref(name)?
                .pin(&path)
                .map_err(|error| DataplaneError::Pin {
                    path: path.clone(),
                    message: format!("pinning map {name}: {error}"),
                })?;
        }
        Ok(())
    }

    fn map_ref(&self, name: &'static str) -> Result<&aya::maps::Map, DataplaneError> {
        self.ebpf
            .map(name)
            .ok_or(DataplaneError::MissingMap { map: name })
    }

    fn array_ref<V: aya::Pod>(
        &self,
        name: &'static str,
    ) -> Result<Array<&MapData, V>, DataplaneError> {
        Array::try_from(self.map_ref(name)?).map_err(map_error(name, "opening"))
    }

    fn array<V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<Array<&mut MapData, V>, DataplaneError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap { map: name })?;
        Array::try_from(map).map_err(map_error(name, "opening"))
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        // The program's links are released with `self.ebpf` (detaching it); the
        // pins would keep the maps alive, so remove them.
        if let Some(dir) = self.pins.take() {
            if self.keep {
                tracing::info!(path = %dir.display(), "leaving the XDP program attached and its maps pinned for the next daemon");
                return;
            }
            // Without its pin a link goes with its last file descriptor: detached.
            if let Ok(entries) = fs::read_dir(&dir) {
                for entry in entries.flatten() {
                    if entry.file_name().to_string_lossy().starts_with(LINK_PIN)
                        && let Err(error) = fs::remove_file(entry.path())
                    {
                        tracing::warn!(path = %entry.path().display(), %error, "removing pinned XDP link");
                    }
                }
            }
            for name in names::ALL {
                match fs::remove_file(dir.join(name)) {
                    Ok(()) => {}
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    Err(error) => {
                        tracing::warn!(path = %dir.join(name).display(), %error, "removing pinned map")
                    }
                }
            }
            if let Err(error) = fs::remove_dir(&dir) {
                tracing::warn!(path = %dir.display(), %error, "removing pin directory");
            }
            // The shared parent goes when the last instance leaves; it fails
            // harmlessly while others remain.
            let _ = fs::remove_dir(PIN_ROOT);
        }
    }
}

/// An instance name (`instance:` in the config), checked once when it is
/// made: 1 to 32 of `A-Z a-z 0-9 _ -`. The name is a directory under
/// `/sys/fs/bpf/halod` and part of the lock and state-file names.
#[derive(Clone, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct InstanceName(String);

/// As the name's string: `"edge"`, in messages that quote it.
impl std::fmt::Debug for InstanceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl InstanceName {
    pub fn new(name: impl Into<String>) -> Result<InstanceName, String> {
        let name = name.into();
        let valid = (1..=32).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(InstanceName(name))
        } else {
            Err(format!(
                "{name:?} is not a valid instance name: use 1 to 32 of A-Z a-z 0-9 _ - \
                 (it names a directory under {PIN_ROOT})"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for InstanceName {
    type Error = String;

    fn try_from(name: String) -> Result<InstanceName, String> {
        InstanceName::new(name)
    }
}

impl std::ops::Deref for InstanceName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<Path> for InstanceName {
    fn as_ref(&self) -> &Path {
        Path::new(&self.0)
    }
}

impl std::fmt::Display for InstanceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Now on `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_coarse_ns`.
fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always there");
    (now.tv_sec() as u64) * 1_000_000_000 + now.tv_nsec() as u64
}

/// Checks the configuration and resolves the interface indices (in the calling
/// thread's network namespace).
fn validate(config: &DataplaneConfig) -> Result<(u32, u32), DataplaneError> {
    let invalid = |message: String| Err(DataplaneError::Config(message));
    if config.listeners.is_empty() || config.listeners.len() > MAX_LISTENERS {
        return invalid(format!(
            "{} listener groups given; between 1 and {MAX_LISTENERS} are supported",
            config.listeners.len()
        ));
    }
    let mut groups: Vec<(u16, u16)> = Vec::new();
    for &base in &config.listeners {
        let Some(last) = last_port(base, config.routes.get()).filter(|_| base != 0) else {
            return invalid(format!(
                "listener group with base port {base} and {} routes does not fit in ports 1..=65535",
                config.routes
            ));
        };
        if let Some((other, other_last)) = groups.iter().find(|(b, l)| base <= *l && *b <= last) {
            return invalid(format!(
                "listener groups {base}..={last} and {other}..={other_last} overlap"
            ));
        }
        groups.push((base, last));
    }
    if config.max_nodes == 0 {
        return invalid("max_nodes must be at least 1".to_owned());
    }
    if config.vip.is_unspecified() || config.vip.is_broadcast() || config.vip.is_multicast() {
        return invalid(format!("VIP {} is not a unicast address", config.vip));
    }
    let index = |interface: &str| {
        nix::net::if_::if_nametoindex(interface).map_err(|error| DataplaneError::Interface {
            interface: interface.to_owned(),
            error,
        })
    };
    Ok((index(&config.external)?, index(&config.internal)?))
}

/// Why pins cannot be made under [`BPF_FS`], if they cannot (for `halod run
/// --check`).
pub fn bpffs_problem() -> Option<String> {
    match nix::sys::statfs::statfs(BPF_FS) {
        Ok(fs) if fs.filesystem_type() == BPF_FS_MAGIC => None,
        Ok(_) => Some(format!(
            "{BPF_FS} is not a BPF filesystem; mount it with `mount -t bpf bpf {BPF_FS}`"
        )),
        Err(error) => Some(format!("statfs {BPF_FS}: {error}")),
    }
}

/// Makes sure bpffs is mounted and `dir` is free for this instance.
fn prepare_pin_dir(dir: &Path, instance: &str) -> Result<(), DataplaneError> {
    let pin_error = |message: String| DataplaneError::Pin {
        path: dir.to_path_buf(),
        message,
    };
    match nix::sys::statfs::statfs(BPF_FS) {
        Ok(fs) if fs.filesystem_type() == BPF_FS_MAGIC => {}
        Ok(_) => {
            return Err(pin_error(format!(
                "{BPF_FS} is not a BPF filesystem; mount it with `mount -t bpf bpf {BPF_FS}`"
            )));
        }
        Err(error) => return Err(pin_error(format!("statfs {BPF_FS}: {error}"))),
    }
    fs::create_dir_all(PIN_ROOT)
        .map_err(|error| pin_error(format!("creating {PIN_ROOT}: {error}")))?;
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Err(pin_error(format!(
            "already exists: another halod instance named {instance:?} is running, or one \
             stopped without cleaning up; stop it, or remove the directory with `rm -r {}`",
            dir.display()
        ))),
        Err(error) => Err(pin_error(format!("creating the directory: {error}"))),
    }
}

/// The verdict counters pinned by an older build can hold fewer verdicts than
/// this one counts: their pin is removed so that the adopting program gets a
/// map of the right size (the verdict counts start again from zero; the old
/// program keeps its map until the link is swapped).
fn replace_smaller_reason_counters(dir: &Path) {
    let path = dir.join(names::REASON_COUNTERS);
    let size = aya::maps::MapData::from_pin(&path)
        .and_then(|map| map.info())
        .map(|info| info.max_entries());
    if let Ok(size) = size
        && size < Reason::COUNT
    {
        tracing::info!(
            pinned = size,
            needed = Reason::COUNT,
            "the pinned verdict counters are from an older build; they start again from zero"
        );
        let _ = fs::remove_file(&path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DataplaneConfig {
        DataplaneConfig {
            instance: InstanceName::new("test").unwrap(),
            external: "lo".to_owned(),
            internal: "lo".to_owned(),
            vip: Ipv4Addr::new(198, 18, 0, 1),
            routes: NonZeroU16::new(24).unwrap(),
            listeners: vec![8000, 9000],
            max_nodes: 16,
            drain_flows: 1024,
            flush_flows: 1024,
        }
    }

    #[test]
    fn bad_configurations_are_explained() {
        for (change, expected) in [
            (
                Box::new(|c: &mut DataplaneConfig| c.listeners = vec![])
                    as Box<dyn Fn(&mut DataplaneConfig)>,
                "0 listener groups",
            ),
            (Box::new(|c| c.listeners = vec![8000, 8010]), "overlap"),
            (Box::new(|c| c.listeners = vec![65530]), "does not fit"),
            (Box::new(|c| c.max_nodes = 0), "max_nodes"),
            (Box::new(|c| c.vip = Ipv4Addr::UNSPECIFIED), "not a unicast"),
            (
                Box::new(|c| c.external = "halod-nope0".into()),
                "interface \"halod-nope0\"",
            ),
        ] {
            let mut c = config();
            change(&mut c);
            let err = validate(&c).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
        assert!(validate(&config()).is_ok());
    }
}
