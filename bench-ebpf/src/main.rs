//! XDP programs for `cargo xtask bench` (not part of halod):
//!
//! - `bench_tx`: writes the frame held in `TX_FRAME`, returns `XDP_TX`. Run by `BPF_PROG_TEST_RUN` with
//!   `BPF_F_TEST_XDP_LIVE_FRAMES`, the kernel transmits every repetition out of
//!   the ingress interface: a packet generator that costs one program run per frame.
//! - `bench_sink`: counts and drops IPv4 frames addressed to the one address in
//!   `SINK_ADDR`; passes everything else (ARP keeps working).
//! - `bench_floor`: the cheapest program that does what any load balancer must:
//!   parse Ethernet, IPv4 and the TCP/UDP ports with bounds checks, then pass.
//!   The floor that halod's per-packet cost is compared with.
//!
//! Built for `bpfel-unknown-none` by `cargo xtask bench`. On the host the same code
//! compiles (so `cargo clippy --workspace` checks it) into a binary that does nothing.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod programs;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic; this is never called.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("bench-ebpf holds XDP programs: `cargo xtask bench` builds and loads them");
}
