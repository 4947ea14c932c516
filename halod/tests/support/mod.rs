//! Shared by the BPF_PROG_TEST_RUN tests (`xdp_test_run.rs`, `xdp_corpus.rs`), each of which
//! includes it with `mod support;`: the addresses and MACs of their private network
//! namespace, the listener layout, XDP verdicts, and a command runner. Each test uses a
//! subset, hence `dead_code`.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::process::Command;

use halod::dataplane::DataplaneConfig;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
pub const NODE_A: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
/// A node with no neighbour entry: the FIB answers NO_NEIGH.
pub const NODE_UNRESOLVED: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 12);

pub const EXT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xe0, 0x01];
pub const INT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x10, 0x01];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xc0, 0x0a];
pub const NODE_A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xa0, 0x0a];

pub const ROUTES: u16 = 24;
pub const GROUPS: [u16; 2] = [8000, 9000];

/// The data plane of a test namespace: `ext0` outside, `internal` inside, the
/// VIP and listeners above, 8 node indexes.
pub fn dataplane_config(instance: &str, internal: &str) -> DataplaneConfig {
    DataplaneConfig {
        instance: instance.to_owned(),
        external: "ext0".to_owned(),
        internal: internal.to_owned(),
        vip: VIP,
        routes: ROUTES,
        listeners: GROUPS.to_vec(),
        max_nodes: 8,
    }
}

/// `aa:bb:cc:dd:ee:ff`, as `ip` takes it.
pub fn mac(bytes: [u8; 6]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Makes `addr` a permanent neighbour with `lladdr` on `dev` (replacing any
/// entry), so `bpf_fib_lookup` resolves it without ARP.
pub fn set_neighbour(addr: Ipv4Addr, lladdr: [u8; 6], dev: &str) {
    run(&[
        "ip",
        "neigh",
        "replace",
        &addr.to_string(),
        "lladdr",
        &mac(lladdr),
        "dev",
        dev,
        "nud",
        "permanent",
    ]);
}

/// Runs `args[0]` with the rest as arguments; panics with its stderr if it fails.
pub fn run(args: &[&str]) {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
