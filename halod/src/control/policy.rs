//! What the gateway accepts from nodes before they are registered: their
//! addresses (`nodes.allowed_cidrs`, never the VIP or the gateway's own), how
//! long `hello` may take, how many connections may be open, and how often a
//! refused connection is logged.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::config::Cidr;
use crate::protocol::ErrorCode;

/// How long a new connection may take to send `hello` (default of
/// `nodes.hello_timeout_ms`).
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections beyond `nodes.max_nodes` the gateway keeps open: nodes saying
/// `hello` and nodes reconnecting while their old connection is still open.
pub const EXTRA_CONNECTIONS: usize = 16;
/// Why a `hello` was refused: sent to the node as an `error` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

/// What the gateway accepts from nodes before they are registered.
#[derive(Clone, Debug)]
pub struct NodePolicy {
    /// `nodes.hello_timeout_ms`.
    pub hello_timeout: Duration,
    /// `nodes.allowed_cidrs`; empty: any unicast address.
    pub allowed: Vec<Cidr>,
    /// The VIP: never a node's address.
    pub vip: Option<Ipv4Addr>,
    /// The gateway's own addresses on the node side (`nodes.listen`, the
    /// internal interface's) with their prefix length: neither they nor the
    /// network and broadcast addresses of their subnets are a node.
    pub own: Vec<(Ipv4Addr, u8)>,
    /// Most node connections open at once (`max_nodes` + [`EXTRA_CONNECTIONS`]).
    pub max_connections: usize,
    /// Node connections open now (shared by every clone).
    pub open: Arc<AtomicUsize>,
    /// Log lines of refused connections, rate-limited (shared by every clone).
    pub refusal_log: Arc<RefusalLog>,
}

/// Refused node connections logged per [`REFUSAL_LOG_WINDOW`]; the rest
/// are counted and summed up in the next line logged. A flood of bad
/// connections (a misconfigured fleet, a scan) must not flood the log; the
/// metrics (`halod_node_refusals_total`) still count every one.
pub const REFUSAL_LOG_BURST: u32 = 20;
pub const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(10);

/// The rate limit of refusal log lines.
#[derive(Debug)]
pub struct RefusalLog {
    /// Start of the window, lines logged in it, lines left out since the last logged one.
    state: std::sync::Mutex<(std::time::Instant, u32, u64)>,
}

impl Default for RefusalLog {
    fn default() -> RefusalLog {
        RefusalLog {
            state: std::sync::Mutex::new((std::time::Instant::now(), 0, 0)),
        }
    }
}

impl RefusalLog {
    /// Whether a refusal at `now` may be logged: `Some(left out before it)`,
    /// or `None` when the window's lines are used up (it is counted).
    pub fn admit(&self, now: std::time::Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (start, logged, left_out) = &mut *state;
        if now.duration_since(*start) >= REFUSAL_LOG_WINDOW {
            *start = now;
            *logged = 0;
        }
        if *logged >= REFUSAL_LOG_BURST {
            *left_out += 1;
            return None;
        }
        *logged += 1;
        Some(std::mem::take(left_out))
    }
}

/// Logs one refused connection through the rate limit of `policy`.
macro_rules! refusal {
    ($policy:expr, $($field:tt)*) => {
        if let Some(left_out) = $policy.refusal_log.admit(std::time::Instant::now()) {
            if left_out > 0 {
                tracing::warn!(left_out, "node connections refused meanwhile and not logged (rate limit; halod_node_refusals_total counts all)");
            }
            tracing::warn!($($field)*);
        }
    };
}
pub(crate) use refusal;

impl Default for NodePolicy {
    fn default() -> NodePolicy {
        NodePolicy {
            hello_timeout: HELLO_TIMEOUT,
            allowed: Vec::new(),
            vip: None,
            own: Vec::new(),
            max_connections: usize::MAX,
            open: Arc::default(),
            refusal_log: Arc::default(),
        }
    }
}

impl NodePolicy {
    /// The policy `config` sets: its `nodes:` keys, the VIP, and the
    /// gateway's own addresses on the node side (the internal interface's,
    /// and `nodes.listen`'s).
    pub fn of(config: &crate::config::Config) -> NodePolicy {
        let mut own = interface_addresses(&config.interfaces.internal);
        if let std::net::IpAddr::V4(listen) = config.nodes.listen.ip()
            && !listen.is_unspecified()
        {
            own.push((listen, 32));
        }
        NodePolicy {
            hello_timeout: Duration::from_millis(config.nodes.hello_timeout_ms),
            allowed: config.nodes.allowed_cidrs.clone(),
            vip: Some(config.vip),
            own,
            max_connections: config.nodes.max_nodes as usize + EXTRA_CONNECTIONS,
            open: Default::default(),
            refusal_log: Default::default(),
        }
    }

    /// Takes a connection slot, or `None` when `max_connections` are open. The
    /// slot is given back when the returned guard goes.
    pub fn admit(&self) -> Option<OpenConnection> {
        let open = self.open.fetch_add(1, Ordering::AcqRel);
        if open >= self.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(OpenConnection(self.open.clone()))
    }

    /// Checks a node's address against `nodes.allowed_cidrs`, the VIP and
    /// the gateway's own addresses and subnets. The state file's addresses
    /// go through the same check at start.
    pub fn check_address(&self, addr: Ipv4Addr) -> Result<(), Refusal> {
        let refuse = |message: String| {
            Err(Refusal {
                code: ErrorCode::BadRequest,
                message,
            })
        };
        if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() {
            return refuse(format!("{addr} cannot be a node address"));
        }
        if addr.is_loopback() || Some(addr) == self.vip {
            return refuse(format!(
                "{addr} cannot be a node address (loopback or the gateway's VIP)"
            ));
        }
        for &(own, prefix) in &self.own {
            let mask = crate::config::mask_of(prefix);
            let network = u32::from(own) & mask;
            let subnet = format!("{}/{prefix}", Ipv4Addr::from(network));
            let why = if addr == own {
                Some("the gateway's own address".to_string())
            } else if prefix <= 30 && u32::from(addr) == network {
                Some(format!("the network address of {subnet}"))
            } else if prefix <= 30 && u32::from(addr) == network | !mask {
                Some(format!("the broadcast address of {subnet}"))
            } else {
                None
            };
            if let Some(why) = why {
                return refuse(format!(
                    "{addr} cannot be a node address: it is {why}; give the node's own \
                     unicast address (hello.addr, `halod node --addr`)"
                ));
            }
        }
        if !self.allowed.is_empty() && !self.allowed.iter().any(|net| net.contains(addr)) {
            let allowed: Vec<String> = self.allowed.iter().map(Cidr::to_string).collect();
            return refuse(format!(
                "node address {addr} is outside nodes.allowed_cidrs ({}): give an address \
                 of the node network in hello.addr, or ask the operator to allow it",
                allowed.join(", ")
            ));
        }
        Ok(())
    }
}

/// The IPv4 addresses of `interface` with their prefix lengths (empty when
/// it has none or cannot be read): for [`NodePolicy::own`].
pub fn interface_addresses(interface: &str) -> Vec<(Ipv4Addr, u8)> {
    let Ok(addresses) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addresses
        .filter(|entry| entry.interface_name == interface)
        .filter_map(|entry| {
            let addr = entry.address?.as_sockaddr_in()?.ip();
            let mask = entry.netmask?.as_sockaddr_in()?.ip();
            Some((addr, u32::from(mask).leading_ones() as u8))
        })
        .collect()
}

/// An open node connection, counted in [`NodePolicy::open`] until dropped.
#[derive(Debug)]
pub struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateways_own_addresses_and_subnet_ends_are_refused() {
        let policy = NodePolicy {
            vip: Some(Ipv4Addr::new(198, 18, 0, 1)),
            own: vec![
                (Ipv4Addr::new(198, 19, 0, 1), 24),
                (Ipv4Addr::new(198, 19, 7, 5), 32),
            ],
            allowed: vec!["198.19.0.0/16".parse().unwrap()],
            ..NodePolicy::default()
        };
        for (addr, says) in [
            ("198.19.0.255", "the broadcast address of 198.19.0.0/24"),
            ("198.19.0.0", "the network address of 198.19.0.0/24"),
            ("198.19.0.1", "the gateway's own address"),
            ("198.19.7.5", "the gateway's own address"),
            ("198.18.0.1", "the gateway's VIP"),
            ("127.0.0.1", "loopback"),
            ("255.255.255.255", "cannot be a node address"),
            ("224.0.0.1", "cannot be a node address"),
            ("10.0.0.1", "outside nodes.allowed_cidrs"),
        ] {
            let refusal = policy.check_address(addr.parse().unwrap()).unwrap_err();
            assert_eq!(refusal.code, ErrorCode::BadRequest);
            assert!(
                refusal.message.contains(says),
                "{addr}: {}",
                refusal.message
            );
        }
        for addr in ["198.19.0.11", "198.19.0.254", "198.19.7.4", "198.19.7.6"] {
            assert!(
                policy.check_address(addr.parse().unwrap()).is_ok(),
                "{addr}"
            );
        }
        let loopback = interface_addresses("lo");
        assert!(loopback.contains(&(Ipv4Addr::LOCALHOST, 8)), "{loopback:?}");
    }

    #[test]
    fn refusal_lines_are_rate_limited() {
        let log = RefusalLog::default();
        let start = std::time::Instant::now();
        for _ in 0..REFUSAL_LOG_BURST {
            assert_eq!(log.admit(start), Some(0));
        }
        for _ in 0..5 {
            assert_eq!(log.admit(start + Duration::from_secs(1)), None);
        }
        // A new window: the first line says how many were left out.
        let later = start + REFUSAL_LOG_WINDOW;
        assert_eq!(log.admit(later), Some(5));
        assert_eq!(log.admit(later), Some(0));
    }
}
