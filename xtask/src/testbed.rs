//! The test bed: network namespaces and veth pairs that stand in for a gateway, its clients and
//! its backend nodes. Tests, the demo and the benchmarks all build it through this module.
//!
//! ```text
//!  {p}client1 eth0 198.18.0.2 ─┐                                ┌─ eth0 198.19.0.11 {p}node1
//!  {p}client2 eth0 198.18.0.3 ─┤ {p}extsw    {p}gateway      {p}switch ├─ eth0 198.19.0.12 {p}node2
//!          ...                 ├─ br0 ─ gw ── ext0 │ int0 ── gw ─ br0 ─┤        ...
//!                              │         198.18.0.1  198.19.0.1        │
//! ```
//!
//! * `{p}gateway` holds `ext0` (198.18.0.1/24, the VIP) and `int0` (198.19.0.1/24), with IPv4
//!   forwarding on. The data plane attaches XDP to these two and redirects between them.
//! * `{p}extsw` holds a bridge `br0` joining `ext0`'s peer (`gw`) with the clients' peers
//!   (`client1`..). Clients sit at 198.18.0.2.. with a route to 198.19.0.0/24 via 198.18.0.1.
//! * `{p}switch` holds a bridge `br0` joining `int0`'s peer (`gw`) with the nodes' peers
//!   (`node1`..). Nodes sit at 198.19.0.11.. with their default route via 198.19.0.1.
//!
//! Every veth is created directly inside its namespaces, so nothing lives in the host's
//! namespace, and every namespace name starts with the prefix, so several test beds with
//! different prefixes run side by side. Per ../shared/spec/toolchain.md every veth end has tx
//! checksum offload off (so frames look as they would from a wire) and GRO on (so the peer of an
//! XDP_REDIRECT target accepts the frames instead of dropping them).

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::command;

/// The backend server behind [`Testbed::backend_command`] (Python, standard library only).
const BACKEND_SERVER: &str = r#"
import selectors, socket, sys, threading
addr, name, ports = sys.argv[1], sys.argv[2], sys.argv[3:]
def serve(conn):
    try:
        conn.sendall((name + "\n").encode())
        while True:
            data = conn.recv(4096)
            if not data:
                break
            conn.sendall(data)
    except OSError:
        pass
    finally:
        conn.close()
sel = selectors.DefaultSelector()
for port in ports:
    s = socket.create_server((addr, int(port)), reuse_port=True)
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        conn, _ = key.fileobj.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;

/// The prefix of `cargo xtask testbed` and of [`TestbedOptions::default`].
pub const DEFAULT_PREFIX: &str = "hd-";
/// The gateway's external address: the virtual IP that clients connect to.
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The gateway's address on the node network; the nodes' default route.
pub const GATEWAY_INTERNAL_ADDR: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
/// The client-side network.
pub const EXTERNAL_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 24);
/// The node-side network.
pub const INTERNAL_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 19, 0, 0), 24);
/// The gateway's interface towards the clients.
pub const EXTERNAL_IF: &str = "ext0";
/// The gateway's interface towards the nodes.
pub const INTERNAL_IF: &str = "int0";
/// The one interface of every node and client namespace.
pub const HOST_IF: &str = "eth0";
/// The bridge in each switch namespace.
pub const BRIDGE: &str = "br0";
/// The bridge port in each switch namespace that leads to the gateway.
pub const UPLINK: &str = "gw";
/// Most nodes a test bed can have (198.19.0.11 ..= 198.19.0.250).
pub const MAX_NODES: usize = 240;
/// Most clients a test bed can have (198.18.0.2 ..= 198.18.0.251).
pub const MAX_CLIENTS: usize = 250;
const MAX_PREFIX_LEN: usize = 32;
const NETNS_DIR: &str = "/run/netns";

/// What [`Testbed::up`] builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestbedOptions {
    /// Starts every namespace name; letters, digits, `-` and `_`. Use a prefix of your own
    /// (e.g. "hd-tb-") in each test so tests can run at the same time.
    pub prefix: String,
    /// Backend nodes, 1 ..= [`MAX_NODES`].
    pub nodes: usize,
    /// Clients, 1 ..= [`MAX_CLIENTS`].
    pub clients: usize,
}

impl Default for TestbedOptions {
    fn default() -> Self {
        TestbedOptions {
            prefix: DEFAULT_PREFIX.to_string(),
            nodes: 3,
            clients: 1,
        }
    }
}

impl TestbedOptions {
    /// Checks the prefix and the counts, with an error that says what to change.
    pub fn validate(&self) -> Result<()> {
        validate_prefix(&self.prefix)?;
        if !(1..=MAX_NODES).contains(&self.nodes) {
            bail!(
                "a test bed needs 1 to {MAX_NODES} nodes (addresses 198.19.0.11 to \
                 198.19.0.250), not {}",
                self.nodes
            );
        }
        if !(1..=MAX_CLIENTS).contains(&self.clients) {
            bail!(
                "a test bed needs 1 to {MAX_CLIENTS} clients (addresses 198.18.0.2 to \
                 198.18.0.251), not {}",
                self.clients
            );
        }
        Ok(())
    }
}

fn validate_prefix(prefix: &str) -> Result<()> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if prefix.is_empty() || prefix.len() > MAX_PREFIX_LEN || !prefix.chars().all(allowed) {
        bail!(
            "invalid test bed prefix {prefix:?}: use 1 to {MAX_PREFIX_LEN} letters, digits, \
             '-' or '_', such as \"{DEFAULT_PREFIX}\""
        );
    }
    Ok(())
}

/// The part a namespace plays; its name is the prefix followed by [`Role::suffix`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Gateway,
    ExternalSwitch,
    Switch,
    Client(usize),
    Node(usize),
}

impl Role {
    fn suffix(self) -> String {
        match self {
            Role::Gateway => "gateway".into(),
            Role::ExternalSwitch => "extsw".into(),
            Role::Switch => "switch".into(),
            Role::Client(i) => format!("client{i}"),
            Role::Node(i) => format!("node{i}"),
        }
    }

    /// The role of a namespace named `prefix` + `suffix`, if it is one of ours. Matching whole
    /// suffixes keeps `down` of prefix "hd-" away from the namespaces of prefix "hd-tb-".
    fn parse(suffix: &str) -> Option<Role> {
        let index = |digits: &str| -> Option<usize> {
            let ok = !digits.is_empty()
                && !digits.starts_with('0')
                && digits.chars().all(|c| c.is_ascii_digit());
            if ok { digits.parse().ok() } else { None }
        };
        match suffix {
            "gateway" => Some(Role::Gateway),
            "extsw" => Some(Role::ExternalSwitch),
            "switch" => Some(Role::Switch),
            _ => {
                if let Some(digits) = suffix.strip_prefix("client") {
                    index(digits).map(Role::Client)
                } else if let Some(digits) = suffix.strip_prefix("node") {
                    index(digits).map(Role::Node)
                } else {
                    None
                }
            }
        }
    }
}

/// A running test bed. Dropping it tears everything down (best effort, never panics) unless
/// [`Testbed::keep`] was called.
#[derive(Debug)]
pub struct Testbed {
    prefix: String,
    nodes: usize,
    clients: usize,
    teardown_on_drop: bool,
}

impl Testbed {
    /// Builds the test bed, after removing whatever an earlier one with the same prefix left.
    /// If building fails half-way, everything built so far is removed again.
    pub fn up(opts: TestbedOptions) -> Result<Testbed> {
        opts.validate()?;
        require_root()?;
        Self::down_prefix(&opts.prefix).with_context(|| {
            format!(
                "removing what an earlier test bed with prefix {} left",
                opts.prefix
            )
        })?;
        let bed = Testbed {
            prefix: opts.prefix,
            nodes: opts.nodes,
            clients: opts.clients,
            teardown_on_drop: true,
        };
        // On error `bed` is dropped here, which removes the half-built test bed.
        bed.build()
            .with_context(|| format!("building the test bed with prefix {}", bed.prefix))?;
        Ok(bed)
    }

    /// Removes every namespace of the test bed with this prefix, and every process inside them,
    /// whether it was fully built, half built or left by a crashed run. Doing nothing is success.
    pub fn down_prefix(prefix: &str) -> Result<()> {
        validate_prefix(prefix)?;
        let names = Self::namespaces_with_prefix(prefix)?;
        if names.is_empty() {
            return Ok(());
        }
        require_root()?;
        let mut problems = Vec::new();
        // Processes first: a namespace with a process in it outlives `ip netns del`.
        let mut pids = Vec::new();
        for name in &names {
            match pids_in_netns(name) {
                Ok(found) => pids.extend(found),
                Err(e) => problems.push(format!("{e:#}")),
            }
        }
        if let Err(e) = stop_processes(&pids) {
            problems.push(format!("{e:#}"));
        }
        for name in &names {
            if let Err(e) = command::run(Command::new("ip").args(["netns", "del", name])) {
                problems.push(format!("{e:#}"));
            }
        }
        let left = Self::namespaces_with_prefix(prefix)?;
        if !left.is_empty() {
            problems.push(format!("namespaces still present: {}", left.join(" ")));
        }
        if !problems.is_empty() {
            bail!(
                "could not remove the test bed with prefix {prefix}:\n{}\nby hand: kill the \
                 processes listed by `ip netns pids NAME`, then `ip netns del NAME`",
                problems.join("\n")
            );
        }
        Ok(())
    }

    /// The namespaces that belong to the test bed with this prefix, gateway first.
    pub fn namespaces_with_prefix(prefix: &str) -> Result<Vec<String>> {
        validate_prefix(prefix)?;
        let entries = match fs::read_dir(NETNS_DIR) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("listing {NETNS_DIR}")),
        };
        let mut ours = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {NETNS_DIR}"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(role) = name.strip_prefix(prefix).and_then(Role::parse) {
                ours.push((role, name));
            }
        }
        ours.sort();
        Ok(ours.into_iter().map(|(_, name)| name).collect())
    }

    /// Process ids of every process whose network namespace is one of this prefix's.
    pub fn pids_with_prefix(prefix: &str) -> Result<Vec<i32>> {
        let mut pids = Vec::new();
        for name in Self::namespaces_with_prefix(prefix)? {
            pids.extend(pids_in_netns(&name)?);
        }
        Ok(pids)
    }

    /// A readable description of the test bed with this prefix: namespaces, interfaces,
    /// addresses, routes and the processes inside.
    pub fn status_prefix(prefix: &str) -> Result<String> {
        let names = Self::namespaces_with_prefix(prefix)?;
        if names.is_empty() {
            return Ok(format!("no test bed with prefix {prefix} is up\n"));
        }
        let count = |role: &str| {
            names
                .iter()
                .filter(|n| n[prefix.len()..].starts_with(role))
                .count()
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "test bed {prefix}: nodes: {}, clients: {}, namespaces: {}",
            count("node"),
            count("client"),
            names.len()
        );
        for name in &names {
            let _ = writeln!(out, "  {name}");
            if name[prefix.len()..] == *"gateway" {
                let forwarding =
                    run_in_netns(name, || fs::read_to_string("/proc/sys/net/ipv4/ip_forward"))?
                        .with_context(|| format!("reading ip_forward in {name}"))?;
                let _ = writeln!(out, "      ip_forward={}", forwarding.trim());
            }
            let addrs = command::run(Command::new("ip").args(["-n", name, "-br", "addr"]))?;
            for line in addrs.lines() {
                let mut words = line.split_whitespace();
                let ifname = words.next().unwrap_or("").split('@').next().unwrap_or("");
                if ifname.is_empty() || ifname == "lo" {
                    continue;
                }
                let state = words.next().unwrap_or("?");
                let addrs: Vec<&str> = words.collect();
                let _ = writeln!(out, "      {ifname:<9} {state:<8} {}", addrs.join(" "));
            }
            let routes = command::run(Command::new("ip").args(["-n", name, "-4", "route"]))?;
            for route in routes.lines().filter(|r| !r.contains("proto kernel")) {
                let _ = writeln!(out, "      route {}", route.trim());
            }
            for pid in pids_in_netns(name)? {
                let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                let _ = writeln!(out, "      process {pid} {}", comm.trim());
            }
        }
        Ok(out)
    }

    /// Leaves the test bed up when this value is dropped (for `cargo xtask testbed up`).
    pub fn keep(mut self) {
        self.teardown_on_drop = false;
    }

    /// Tears the test bed down now, reporting any problem (dropping it does the same quietly).
    pub fn down(mut self) -> Result<()> {
        self.teardown_on_drop = false;
        Self::down_prefix(&self.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn nodes(&self) -> usize {
        self.nodes
    }
    pub fn clients(&self) -> usize {
        self.clients
    }

    fn ns(&self, role: Role) -> String {
        format!("{}{}", self.prefix, role.suffix())
    }
    pub fn gateway_ns(&self) -> String {
        self.ns(Role::Gateway)
    }
    /// The namespace of the bridge joining the gateway's `ext0` with the clients.
    pub fn external_switch_ns(&self) -> String {
        self.ns(Role::ExternalSwitch)
    }
    /// The namespace of the bridge joining the gateway's `int0` with the nodes.
    pub fn switch_ns(&self) -> String {
        self.ns(Role::Switch)
    }
    /// Namespace of node `i`, counting from 1.
    pub fn node_ns(&self, i: usize) -> String {
        self.check_node(i);
        self.ns(Role::Node(i))
    }
    /// Namespace of client `i`, counting from 1.
    pub fn client_ns(&self, i: usize) -> String {
        self.check_client(i);
        self.ns(Role::Client(i))
    }
    /// Address of node `i` (1-based): 198.19.0.10 + i.
    pub fn node_addr(&self, i: usize) -> Ipv4Addr {
        self.check_node(i);
        node_addr(i)
    }
    /// Address of client `i` (1-based): 198.18.0.1 + i.
    pub fn client_addr(&self, i: usize) -> Ipv4Addr {
        self.check_client(i);
        client_addr(i)
    }
    /// The address clients connect to: the gateway's `ext0`, 198.18.0.1.
    pub fn vip(&self) -> Ipv4Addr {
        VIP
    }
    /// Which node answers on `port` of the VIP, asked from client 1: the name line that a
    /// [`Testbed::backend_command`] server sends first. `None` when nothing answers (no
    /// connection within `connect_timeout`, or no line within 1 s).
    pub fn answering_node(&self, port: u16, connect_timeout: Duration) -> Option<String> {
        self.answer_at(
            std::net::SocketAddr::from((self.vip(), port)),
            connect_timeout,
        )
    }
    /// Like [`Testbed::answering_node`] for any address client 1 can reach (a node's own
    /// address, not the VIP: what a health check or a monitor does).
    pub fn answer_at(
        &self,
        target: std::net::SocketAddr,
        connect_timeout: Duration,
    ) -> Option<String> {
        run_in_netns(&self.client_ns(1), move || {
            let stream = std::net::TcpStream::connect_timeout(&target, connect_timeout).ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
            let mut answer = String::new();
            io::BufRead::read_line(&mut io::BufReader::new(stream), &mut answer).ok()?;
            let answer = answer.trim().to_string();
            (!answer.is_empty()).then_some(answer)
        })
        .ok()
        .flatten()
    }
    /// The gateway's `int0`, 198.19.0.1: the nodes' default route.
    pub fn gateway_internal_addr(&self) -> Ipv4Addr {
        GATEWAY_INTERNAL_ADDR
    }

    fn check_node(&self, i: usize) {
        assert!(
            (1..=self.nodes).contains(&i),
            "node {i} does not exist: test bed {} has nodes 1..={}",
            self.prefix,
            self.nodes
        );
    }
    fn check_client(&self, i: usize) {
        assert!(
            (1..=self.clients).contains(&i),
            "client {i} does not exist: test bed {} has clients 1..={}",
            self.prefix,
            self.clients
        );
    }

    /// A real backend server for node `node` (1-based): on each of `ports` of the node's own
    /// address it sends `NAME\n`, then echoes what it reads until the client closes, and it
    /// prints `ready` on stdout once every port is bound. Tests, the demo and chaos use it to
    /// see which node a route reaches.
    pub fn backend_command(
        &self,
        node: usize,
        name: &str,
        ports: impl IntoIterator<Item = u16>,
    ) -> Command {
        let mut command = self.command(&self.node_ns(node), "python3");
        command
            .args([
                "-c",
                BACKEND_SERVER,
                &self.node_addr(node).to_string(),
                name,
            ])
            .args(ports.into_iter().map(|port| port.to_string()));
        command
    }

    /// A command that runs `program` inside network namespace `ns` (and only that namespace,
    /// so it sees the host's /sys/fs/bpf). Processes started this way are killed by `down`.
    pub fn command(&self, ns: &str, program: &str) -> Command {
        netns_command(ns, program)
    }

    /// Every namespace of this test bed, in the order they are built.
    pub fn namespaces(&self) -> Vec<String> {
        let mut roles = vec![Role::Gateway, Role::ExternalSwitch, Role::Switch];
        roles.extend((1..=self.clients).map(Role::Client));
        roles.extend((1..=self.nodes).map(Role::Node));
        roles.into_iter().map(|role| self.ns(role)).collect()
    }

    fn build(&self) -> Result<()> {
        let gateway = self.gateway_ns();
        let extsw = self.external_switch_ns();
        let switch = self.switch_ns();
        for ns in self.namespaces() {
            ip(&["netns", "add", &ns])?;
            // IPv6 would add router solicitations and MLD reports to every capture and counter;
            // the test networks are IPv4 only. Set before any veth exists so all inherit it.
            if fs::metadata("/proc/sys/net/ipv6").is_ok() {
                write_sysctl(&ns, "net/ipv6/conf/default/disable_ipv6", "1")?;
                write_sysctl(&ns, "net/ipv6/conf/all/disable_ipv6", "1")?;
            }
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        write_sysctl(&gateway, "net/ipv4/ip_forward", "1")?;

        for bridge_ns in [&extsw, &switch] {
            ip(&[
                "-n",
                bridge_ns,
                "link",
                "add",
                BRIDGE,
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
            ])?;
            ip(&["-n", bridge_ns, "link", "set", BRIDGE, "up"])?;
            // A switch, not a firewall: with br_netfilter in the kernel, every bridged frame
            // would also cross iptables, nftables and arptables (their defaults are on).
            if run_in_netns(bridge_ns, || {
                fs::metadata("/proc/sys/net/bridge/bridge-nf-call-iptables").is_ok()
            })? {
                for table in ["iptables", "ip6tables", "arptables"] {
                    write_sysctl(
                        bridge_ns,
                        &format!("net/bridge/bridge-nf-call-{table}"),
                        "0",
                    )?;
                }
            }
        }

        veth((EXTERNAL_IF, &gateway), (UPLINK, &extsw))?;
        veth((INTERNAL_IF, &gateway), (UPLINK, &switch))?;
        let (int_net, len) = INTERNAL_NET;
        ip(&[
            "-n",
            &gateway,
            "addr",
            "add",
            &format!("{VIP}/{len}"),
            "dev",
            EXTERNAL_IF,
        ])?;
        ip(&[
            "-n",
            &gateway,
            "addr",
            "add",
            &format!("{GATEWAY_INTERNAL_ADDR}/{len}"),
            "dev",
            INTERNAL_IF,
        ])?;

        for i in 1..=self.clients {
            let ns = self.client_ns(i);
            let port = format!("client{i}");
            veth((HOST_IF, &ns), (&port, &extsw))?;
            ip(&["-n", &extsw, "link", "set", &port, "master", BRIDGE])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/{len}", client_addr(i)),
                "dev",
                HOST_IF,
            ])?;
            let vip = VIP.to_string();
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                &format!("{int_net}/{len}"),
                "via",
                &vip,
            ])?;
        }
        for i in 1..=self.nodes {
            let ns = self.node_ns(i);
            let port = format!("node{i}");
            veth((HOST_IF, &ns), (&port, &switch))?;
            ip(&["-n", &switch, "link", "set", &port, "master", BRIDGE])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/{len}", node_addr(i)),
                "dev",
                HOST_IF,
            ])?;
            let via = GATEWAY_INTERNAL_ADDR.to_string();
            ip(&["-n", &ns, "route", "add", "default", "via", &via])?;
        }
        ip(&["-n", &extsw, "link", "set", UPLINK, "master", BRIDGE])?;
        ip(&["-n", &switch, "link", "set", UPLINK, "master", BRIDGE])?;
        Ok(())
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if self.teardown_on_drop
            && let Err(e) = Self::down_prefix(&self.prefix)
        {
            eprintln!("warning: tearing down test bed {}: {e:#}", self.prefix);
        }
    }
}

/// Packet counters of one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketCounters {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

/// The packet counters of interface `dev` in namespace `ns` (from /proc/net/dev as seen there).
/// Tests use them to show which way traffic went.
pub fn packet_counters(ns: &str, dev: &str) -> Result<PacketCounters> {
    // /proc/thread-self, not /proc/self: the namespace was entered by this thread only.
    let table = run_in_netns(ns, || fs::read_to_string("/proc/thread-self/net/dev"))?
        .with_context(|| format!("reading /proc/net/dev in namespace {ns}"))?;
    parse_proc_net_dev(&table, dev)
        .with_context(|| format!("namespace {ns} has no interface {dev}"))
}

/// Reads one interface's line of /proc/net/dev: 8 receive columns, then 8 transmit columns.
fn parse_proc_net_dev(table: &str, dev: &str) -> Option<PacketCounters> {
    table.lines().find_map(|line| {
        let (name, numbers) = line.split_once(':')?;
        if name.trim() != dev {
            return None;
        }
        let columns: Vec<u64> = numbers
            .split_whitespace()
            .map(|n| n.parse().ok())
            .collect::<Option<_>>()?;
        (columns.len() >= 16).then(|| PacketCounters {
            rx_packets: columns[1],
            rx_dropped: columns[3],
            tx_packets: columns[9],
            tx_dropped: columns[11],
        })
    })
}

/// Address of node `i` (1-based).
pub fn node_addr(i: usize) -> Ipv4Addr {
    let [a, b, c, _] = INTERNAL_NET.0.octets();
    Ipv4Addr::new(
        a,
        b,
        c,
        u8::try_from(10 + i).expect("node index checked against MAX_NODES"),
    )
}

/// Address of client `i` (1-based).
pub fn client_addr(i: usize) -> Ipv4Addr {
    let [a, b, c, _] = EXTERNAL_NET.0.octets();
    Ipv4Addr::new(
        a,
        b,
        c,
        u8::try_from(1 + i).expect("client index checked against MAX_CLIENTS"),
    )
}

fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the test bed must be built by root: network namespaces and veths need \
             CAP_SYS_ADMIN and CAP_NET_ADMIN (run as root, e.g. with sudo)"
        );
    }
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    command::run(Command::new("ip").args(args)).map(drop)
}

/// A veth pair with one end in each namespace, both up, tx checksum offload off, GRO on.
///
/// Both ends go up *before* GRO is switched on: veth only starts accepting XDP_REDIRECTed
/// frames (its NAPI path) when GRO is enabled on a running device (seen on Linux 6.18: with the
/// other order every redirect fails with -EOPNOTSUPP on the `xdp:xdp_redirect_err` tracepoint).
fn veth((a, a_ns): (&str, &str), (b, b_ns): (&str, &str)) -> Result<()> {
    ip(&[
        "link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns", b_ns,
    ])?;
    for (dev, ns) in [(a, a_ns), (b, b_ns)] {
        ip(&["-n", ns, "link", "set", dev, "up"])?;
    }
    for (dev, ns) in [(a, a_ns), (b, b_ns)] {
        command::run(netns_command(ns, "ethtool").args(["-K", dev, "tx", "off", "gro", "on"]))?;
    }
    Ok(())
}

/// Writes `/proc/sys/<key>` as seen from namespace `ns` (sysctl keys under net/ are per
/// network namespace, resolved from the writing thread's namespace).
fn write_sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{key}");
    run_in_netns(ns, || fs::write(&path, value))?
        .with_context(|| format!("writing {value} to {path} in namespace {ns}"))
}

fn netns_path(ns: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(ns)
}

/// A command that runs `program` inside network namespace `ns` only (via `nsenter --net`), not
/// `ip netns exec`, which would also give it a private mount namespace and a fresh /sys, hiding
/// the host's /sys/fs/bpf pins.
pub fn netns_command(ns: &str, program: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns_path(ns).display()))
        .arg("--")
        .arg(program);
    cmd
}

/// Runs `f` on a thread that has entered network namespace `ns`, and returns its result.
/// Sockets made by `f` stay in `ns` wherever they are used afterwards, so a test can bind a
/// listener or connect a stream "from" a namespace and then use it on its own thread.
/// A panic in `f` is passed on to the caller.
pub fn run_in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let file = open_netns(ns)?;
    thread::scope(|scope| {
        let worker = scope.spawn(move || -> Result<T> {
            setns(&file, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering network namespace {ns}"))?;
            Ok(f())
        });
        match worker.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Starts `f` on a new thread inside network namespace `ns` (for servers that run for the
/// length of a test). The thread ends when `f` returns.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<Result<T>>> {
    let file = open_netns(ns)?;
    let ns = ns.to_string();
    thread::Builder::new()
        .name(format!("netns {ns}"))
        .spawn(move || -> Result<T> {
            setns(&file, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering network namespace {ns}"))?;
            drop(file);
            Ok(f())
        })
        .context("starting a thread")
}

fn open_netns(ns: &str) -> Result<File> {
    let path = netns_path(ns);
    File::open(&path).with_context(|| {
        format!(
            "opening network namespace {ns} ({}): is the test bed up?",
            path.display()
        )
    })
}

/// Processes whose network namespace is `ns` (what `ip netns pids` reports), never this one.
fn pids_in_netns(ns: &str) -> Result<Vec<i32>> {
    let target = match fs::metadata(netns_path(ns)) {
        Ok(meta) => (meta.dev(), meta.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("inspecting network namespace {ns}")),
    };
    let own = std::process::id() as i32;
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").context("listing /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        // Processes come and go while we look, and zombies have no namespace: skip errors.
        if let Ok(meta) = fs::metadata(format!("/proc/{pid}/ns/net"))
            && (meta.dev(), meta.ino()) == target
        {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// SIGTERM, a grace period, then SIGKILL for whatever is left.
fn stop_processes(pids: &[i32]) -> Result<()> {
    if pids.is_empty() {
        return Ok(());
    }
    for signal in [Signal::SIGTERM, Signal::SIGKILL] {
        for &pid in pids {
            // ESRCH: it exited already, which is what we want.
            let _ = kill(Pid::from_raw(pid), signal);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if pids.iter().all(|&pid| !in_some_netns(pid)) {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
    let left: Vec<String> = pids
        .iter()
        .filter(|&&pid| in_some_netns(pid))
        .map(|pid| pid.to_string())
        .collect();
    Err(anyhow!(
        "processes {} did not exit after SIGKILL",
        left.join(" ")
    ))
}

/// Whether `pid` is still a live process (a zombie has no namespaces any more).
fn in_some_netns(pid: i32) -> bool {
    fs::metadata(format!("/proc/{pid}/ns/net")).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bed(prefix: &str, nodes: usize, clients: usize) -> Testbed {
        // Never built: teardown is off so dropping it touches nothing.
        Testbed {
            prefix: prefix.into(),
            nodes,
            clients,
            teardown_on_drop: false,
        }
    }

    #[test]
    fn defaults_match_the_issue() {
        let opts = TestbedOptions::default();
        assert_eq!(
            opts,
            TestbedOptions {
                prefix: "hd-".into(),
                nodes: 3,
                clients: 1
            }
        );
        opts.validate().unwrap();
    }

    #[test]
    fn names_and_addresses() {
        let bed = bed("hd-x-", 3, 2);
        assert_eq!(bed.gateway_ns(), "hd-x-gateway");
        assert_eq!(bed.switch_ns(), "hd-x-switch");
        assert_eq!(bed.external_switch_ns(), "hd-x-extsw");
        assert_eq!(bed.node_ns(3), "hd-x-node3");
        assert_eq!(bed.client_ns(2), "hd-x-client2");
        assert_eq!(bed.node_addr(1), Ipv4Addr::new(198, 19, 0, 11));
        assert_eq!(bed.node_addr(3), Ipv4Addr::new(198, 19, 0, 13));
        assert_eq!(bed.client_addr(1), Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(bed.vip(), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(bed.gateway_internal_addr(), Ipv4Addr::new(198, 19, 0, 1));
        assert_eq!(
            bed.namespaces(),
            [
                "hd-x-gateway",
                "hd-x-extsw",
                "hd-x-switch",
                "hd-x-client1",
                "hd-x-client2",
                "hd-x-node1",
                "hd-x-node2",
                "hd-x-node3"
            ]
        );
    }

    #[test]
    fn the_largest_test_bed_stays_inside_its_networks() {
        assert_eq!(node_addr(MAX_NODES), Ipv4Addr::new(198, 19, 0, 250));
        assert_eq!(client_addr(MAX_CLIENTS), Ipv4Addr::new(198, 18, 0, 251));
    }

    #[test]
    #[should_panic(expected = "node 4 does not exist")]
    fn asking_for_a_missing_node_says_so() {
        bed("hd-", 3, 1).node_ns(4);
    }

    #[test]
    fn bad_options_are_explained() {
        let err = |opts: TestbedOptions| opts.validate().unwrap_err().to_string();
        let base = TestbedOptions::default();
        assert!(
            err(TestbedOptions {
                nodes: 0,
                ..base.clone()
            })
            .contains("1 to 240 nodes")
        );
        assert!(
            err(TestbedOptions {
                nodes: 241,
                ..base.clone()
            })
            .contains("not 241")
        );
        assert!(
            err(TestbedOptions {
                clients: 0,
                ..base.clone()
            })
            .contains("1 to 250 clients")
        );
        for prefix in ["", "a b", "x/y", "hd.", &"p".repeat(33)] {
            let text = err(TestbedOptions {
                prefix: prefix.into(),
                ..base.clone()
            });
            assert!(
                text.contains("invalid test bed prefix"),
                "{prefix:?}: {text}"
            );
        }
    }

    #[test]
    fn only_whole_role_names_belong_to_a_prefix() {
        assert_eq!(Role::parse("gateway"), Some(Role::Gateway));
        assert_eq!(Role::parse("extsw"), Some(Role::ExternalSwitch));
        assert_eq!(Role::parse("switch"), Some(Role::Switch));
        assert_eq!(Role::parse("node12"), Some(Role::Node(12)));
        assert_eq!(Role::parse("client1"), Some(Role::Client(1)));
        // Another test bed's namespaces, whose prefix extends ours ("hd-" vs "hd-tb-").
        for other in [
            "tb-gateway",
            "tb-node1",
            "node",
            "node01",
            "node1x",
            "clientx",
            "gw",
        ] {
            assert_eq!(Role::parse(other), None, "{other}");
        }
        for role in [
            Role::Gateway,
            Role::Switch,
            Role::Node(7),
            Role::Client(250),
        ] {
            assert_eq!(Role::parse(&role.suffix()), Some(role));
        }
    }

    #[test]
    fn down_of_a_prefix_with_nothing_up_is_a_no_op() {
        // Works without root, because there is nothing to remove.
        Testbed::down_prefix("hd-unit-never-up-").unwrap();
        assert!(
            Testbed::namespaces_with_prefix("hd-unit-never-up-")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn proc_net_dev_columns() {
        let table = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
  int0:    9000      70    0    2    0     0          0         0     5000      40    0    1    0     0       0          0
";
        assert_eq!(
            parse_proc_net_dev(table, "int0"),
            Some(PacketCounters {
                rx_packets: 70,
                tx_packets: 40,
                rx_dropped: 2,
                tx_dropped: 1
            })
        );
        assert_eq!(parse_proc_net_dev(table, "ext0"), None);
    }

    #[test]
    fn netns_command_enters_only_the_network_namespace() {
        let cmd = netns_command("hd-gateway", "halod");
        assert_eq!(
            command::describe(&cmd),
            "nsenter --net=/run/netns/hd-gateway -- halod"
        );
    }
}
