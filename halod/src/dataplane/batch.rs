//! Array-map writes gathered and made with one `BPF_MAP_UPDATE_BATCH` each.
//!
//! A join storm rewrites most of `ROUTE_SLOT` and `ROUTE_DRAIN` (65,535
//! entries each) several times; one `bpf(2)` call per entry cost 2 to 4 us
//! on the test VM, so a single batch of joins kept the daemon busy for half a
//! second. The kernel's batch update walks the same entries in one call.
//!
//! Writes keep their order: consecutive writes to one map are gathered, and
//! a write to another map (or any other map operation, which calls
//! [`Pending::flush`] first) sends what was gathered.

use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{MapData, MapError};

/// Entries whose room is kept between batches; a larger batch's is freed.
const KEEP: usize = 4096;

/// `BPF_MAP_UPDATE_BATCH` (include/uapi/linux/bpf.h, `enum bpf_cmd`).
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The `batch` member of `union bpf_attr`.
#[repr(C, align(8))]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Gathered writes to one array map.
#[derive(Default)]
pub(super) struct Pending {
    map: Option<&'static str>,
    keys: Vec<u32>,
    values: Vec<u8>,
}

impl Pending {
    /// The map whose writes are gathered, if any.
    pub fn map(&self) -> Option<&'static str> {
        self.map
    }

    /// Adds `value` at `key` of `map`; the caller flushed writes to any
    /// other map first.
    pub fn push<V: aya::Pod>(&mut self, map: &'static str, key: u32, value: &V) {
        debug_assert!(self.map.is_none_or(|m| m == map));
        self.map = Some(map);
        self.keys.push(key);
        // SAFETY: `V: Pod` is plain data without padding to hide; its bytes
        // are what the kernel copies into the map.
        let bytes =
            unsafe { std::slice::from_raw_parts((value as *const V).cast::<u8>(), size_of::<V>()) };
        self.values.extend_from_slice(bytes);
    }

    /// Sends the gathered writes to `data` (the map they were gathered for).
    /// An error says how many went in before it.
    pub fn send(&mut self, data: &MapData) -> Result<(), (usize, MapError)> {
        let count = self.keys.len();
        self.map = None;
        if count == 0 {
            return Ok(());
        }
        let mut attr = BatchAttr {
            keys: self.keys.as_ptr() as u64,
            values: self.values.as_ptr() as u64,
            count: count as u32,
            map_fd: data.fd().as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed;
        // `keys` and `values` hold `count` keys and values of the map's sizes
        // (the caller pushes values of the map's value type) and outlive the
        // call.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        let done = attr.count as usize;
        self.keys.clear();
        self.values.clear();
        // A storm's batch of 65,535 entries is not kept for the next one.
        if self.keys.capacity() > KEEP {
            self.keys = Vec::new();
            self.values = Vec::new();
        }
        if result < 0 {
            let io_error = std::io::Error::last_os_error();
            return Err((
                done,
                MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_update_batch",
                    io_error,
                }),
            ));
        }
        Ok(())
    }
}
