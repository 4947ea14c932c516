//! The XDP object built by `halod/build.rs` from `halod-ebpf`.

/// The ELF object; empty when built with `HALOD_SKIP_EBPF`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/halod-ebpf.o"));

pub(super) fn bytes() -> &'static [u8] {
    OBJECT
}
