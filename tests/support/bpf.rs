//! For the BPF_PROG_TEST_RUN tests (`xdp_test_run.rs`, `xdp_corpus.rs`, which
//! `use support::bpf::*`): their private gateway namespace ([`in_gateway_netns`]), its
//! addresses and MACs, the listener layout, XDP verdicts, and a command runner.

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
        instance: halod::dataplane::InstanceName::new(instance).expect("a valid instance name"),
        external: "ext0".to_owned(),
        internal: internal.to_owned(),
        vip: VIP,
        routes: std::num::NonZeroU16::new(ROUTES).expect("routes > 0"),
        listeners: GROUPS.to_vec(),
        max_nodes: 8,
        drain_flows: 1024,
        flush_flows: 1024,
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

/// The gateway's interfaces in a test namespace (see [`in_gateway_netns`]).
#[derive(Clone, Copy, Debug)]
pub struct Interfaces {
    pub ext: u32,
    pub int: u32,
    /// `int0`, or `ext0` when both sides share it.
    pub int_name: &'static str,
}

/// Runs `test` on a new thread inside a fresh network namespace, set up as a
/// gateway, and returns what it returns. `bpf_fib_lookup` answers from the
/// namespace of the thread that runs the program, and `unshare(CLONE_NEWNET)`
/// moves only the calling thread, so the namespace disappears with the thread,
/// even when the test fails (its panic is the test's).
///
/// The namespace: veth `ext0` (`EXT_MAC`, 198.18.0.1/24, peer `extp`) and
/// `int0` (`INT_MAC`, 198.19.0.1/24, peer `intp`), or with `shared` one `ext0`
/// carrying both networks; `lo` up; forwarding on (`bpf_fib_lookup` answers
/// FWD_DISABLED otherwise); a permanent neighbour entry for each of
/// `neighbours`, on the interface of its network.
pub fn in_gateway_netns<T: Send + 'static>(
    shared: bool,
    neighbours: &'static [(Ipv4Addr, [u8; 6])],
    test: impl FnOnce(Interfaces) -> T + Send + 'static,
) -> T {
    let thread = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET): the test needs root");
        let int_name = if shared { "ext0" } else { "int0" };
        let mut links = vec![("ext0", EXT_MAC, "extp", "198.18.0.1/24")];
        if !shared {
            links.push(("int0", INT_MAC, "intp", "198.19.0.1/24"));
        }
        for (name, address, peer, net) in links {
            run(&[
                "ip",
                "link",
                "add",
                name,
                "address",
                &mac(address),
                "type",
                "veth",
                "peer",
                "name",
                peer,
            ]);
            run(&["ip", "addr", "add", net, "dev", name]);
            run(&["ip", "link", "set", name, "up"]);
            run(&["ip", "link", "set", peer, "up"]);
        }
        if shared {
            run(&["ip", "addr", "add", "198.19.0.1/24", "dev", "ext0"]);
        }
        run(&["ip", "link", "set", "lo", "up"]);
        for (addr, lladdr) in neighbours {
            let dev = if addr.octets()[1] == 18 {
                "ext0"
            } else {
                int_name
            };
            set_neighbour(*addr, *lladdr, dev);
        }
        // /proc/sys/net shows the namespace of the thread that opens it.
        std::fs::write("/proc/sys/net/ipv4/conf/all/forwarding", "1").expect("enabling forwarding");
        let index = |name: &str| nix::net::if_::if_nametoindex(name).unwrap();
        test(Interfaces {
            ext: index("ext0"),
            int: index(int_name),
            int_name,
        })
    });
    match thread.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
