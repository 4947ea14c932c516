//! halod's XDP program: parse -> look up -> rewrite -> redirect.
//!
//! Built for `bpfel-unknown-none` by `halod/build.rs`. On the host the same code
//! compiles (so `cargo clippy --workspace` checks it) into a binary that does
//! nothing; the program itself only runs in the kernel.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod program;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic; this is never called.
    loop {}
}

/// `bpf_fib_lookup` is a GPL-only helper; the kernel accepts "Dual MIT/GPL".
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "halod-ebpf is an XDP program: it is built for bpfel-unknown-none and loaded by halod"
    );
}
