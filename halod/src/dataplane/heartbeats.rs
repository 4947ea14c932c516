//! The heartbeat stamps of protocol version 2: `HEARTBEATS`, one
//! [`HeartbeatSlot`] per node index, shared by the XDP program, the node
//! manager and the daemon's fallback UDP socket.
//!
//! The map is a memory-mappable array (`BPF_F_MMAPABLE`, Linux 5.5), mapped
//! once into the daemon: the manager writes a node's key when it welcomes it
//! and reads the stamps at its failure sweeps by plain loads, with no system
//! call and no message to the data-plane actor per node. It is the one map
//! the actor does not own: every field is read and written whole with
//! atomic operations, so the program's stores and the daemon's never tear.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use halod_common::heartbeat::Heartbeat;
use halod_common::maps::HeartbeatSlot;

/// A [`HeartbeatSlot`] as the daemon sees it: the same layout, atomics.
#[repr(C)]
struct Slot {
    key: AtomicU64,
    last_ns: AtomicU64,
    addr: AtomicU32,
    _pad: AtomicU32,
}
const _: () = assert!(size_of::<Slot>() == size_of::<HeartbeatSlot>());

/// Where the slots live.
struct Region {
    slots: NonNull<Slot>,
    len: usize,
    /// Bytes mapped (`munmap` on drop); `None`: heap memory of `len` slots.
    mapped: Option<usize>,
}

// SAFETY: the region is only accessed through atomics.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Drop for Region {
    fn drop(&mut self) {
        match self.mapped {
            // SAFETY: the mapping made in `HeartbeatTable::map`, unmapped once.
            Some(bytes) => unsafe {
                libc::munmap(self.slots.as_ptr().cast(), bytes);
            },
            // SAFETY: the boxed slice leaked in `HeartbeatTable::in_memory`.
            None => unsafe {
                drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                    self.slots.as_ptr(),
                    self.len,
                )));
            },
        }
    }
}

/// The heartbeat slots of every node index; cheap to clone (shared).
#[derive(Clone)]
pub struct HeartbeatTable {
    region: Arc<Region>,
}

impl std::fmt::Debug for HeartbeatTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeartbeatTable")
            .field("slots", &self.region.len)
            .field("mapped", &self.region.mapped.is_some())
            .finish()
    }
}

impl HeartbeatTable {
    /// Slots in the daemon's memory only: for a daemon whose heartbeats all
    /// reach its socket, and for tests.
    pub fn in_memory(slots: u32) -> HeartbeatTable {
        let memory: Box<[Slot]> = (0..slots)
            .map(|_| Slot {
                key: AtomicU64::new(0),
                last_ns: AtomicU64::new(0),
                addr: AtomicU32::new(0),
                _pad: AtomicU32::new(0),
            })
            .collect();
        let len = memory.len();
        let slots = NonNull::new(Box::into_raw(memory).cast::<Slot>())
            .expect("Box::into_raw never returns null");
        HeartbeatTable {
            region: Arc::new(Region {
                slots,
                len,
                mapped: None,
            }),
        }
    }

    /// Maps the `HEARTBEATS` array (`slots` entries) of the map `fd`. The
    /// mapping keeps the map alive by itself.
    pub(super) fn map(fd: BorrowedFd<'_>, slots: u32) -> io::Result<HeartbeatTable> {
        let len = slots as usize;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .unwrap_or(4096)
            .max(1);
        let bytes = (len * size_of::<Slot>()).next_multiple_of(page).max(page);
        // SAFETY: a new shared mapping of the map's memory; nothing else is
        // placed at the address the kernel picks.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let slots = NonNull::new(address.cast::<Slot>())
            .ok_or_else(|| io::Error::other("mmap of the heartbeat map returned a null address"))?;
        Ok(HeartbeatTable {
            region: Arc::new(Region {
                slots,
                len,
                mapped: Some(bytes),
            }),
        })
    }

    /// Number of slots (node indexes).
    pub fn len(&self) -> usize {
        self.region.len
    }

    pub fn is_empty(&self) -> bool {
        self.region.len == 0
    }

    fn slot(&self, index: u32) -> Option<&Slot> {
        let index = index as usize;
        // SAFETY: in bounds; the region lives as long as `self`.
        (index < self.region.len).then(|| unsafe { &*self.region.slots.as_ptr().add(index) })
    }

    /// A new session of node `index` at `addr`: its heartbeats carry `key`
    /// from now on, and it counts as heard from at `now_ns`. `false` when the
    /// index is out of range.
    pub fn arm(&self, index: u32, key: u64, addr: Ipv4Addr, now_ns: u64) -> bool {
        let Some(slot) = self.slot(index) else {
            return false;
        };
        // The old key stops matching before the address changes.
        slot.key.store(0, Ordering::Release);
        slot.addr
            .store(u32::from_ne_bytes(addr.octets()), Ordering::Relaxed);
        slot.last_ns.store(now_ns, Ordering::Relaxed);
        slot.key.store(key, Ordering::Release);
        true
    }

    /// Node `index` is gone: no heartbeat matches its slot any more.
    pub fn disarm(&self, index: u32) {
        if let Some(slot) = self.slot(index) {
            slot.key.store(0, Ordering::Release);
            slot.addr.store(0, Ordering::Relaxed);
            slot.last_ns.store(0, Ordering::Relaxed);
        }
    }

    /// A heartbeat from `source` that reached the daemon's socket: stamped
    /// at `now_ns` when it is the node's (the check the XDP program makes).
    pub fn accept(&self, heartbeat: Heartbeat, source: Ipv4Addr, now_ns: u64) -> bool {
        let Some(slot) = self.slot(heartbeat.id) else {
            return false;
        };
        if heartbeat.key == 0
            || slot.key.load(Ordering::Acquire) != heartbeat.key
            || slot.addr.load(Ordering::Relaxed) != u32::from_ne_bytes(source.octets())
        {
            return false;
        }
        slot.last_ns.fetch_max(now_ns, Ordering::Relaxed);
        true
    }

    /// The last heartbeat of node `index` (ns on [`coarse_now_ns`]'s clock),
    /// or `None` for a slot without a session.
    pub fn last_ns(&self, index: u32) -> Option<u64> {
        let slot = self.slot(index)?;
        if slot.key.load(Ordering::Acquire) == 0 {
            return None;
        }
        Some(slot.last_ns.load(Ordering::Relaxed))
    }
}

/// Now on `CLOCK_MONOTONIC_COARSE`, the clock of `bpf_ktime_get_coarse_ns`.
pub fn coarse_now_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
        .expect("CLOCK_MONOTONIC_COARSE is always there");
    (now.tv_sec() as u64) * 1_000_000_000 + now.tv_nsec() as u64
}

/// A new heartbeat key: 64 random bits from the kernel, never 0.
pub fn new_key() -> io::Result<u64> {
    loop {
        let mut bytes = [0u8; 8];
        // SAFETY: `bytes` is a live buffer of the length passed.
        let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        if got < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if got as usize != bytes.len() {
            continue;
        }
        let key = u64::from_ne_bytes(bytes);
        if key != 0 {
            return Ok(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 11);

    #[test]
    fn only_the_sessions_key_from_the_nodes_address_stamps() {
        let table = HeartbeatTable::in_memory(4);
        assert_eq!(table.last_ns(1), None);
        assert!(table.arm(1, 42, NODE, 100));
        assert!(!table.arm(4, 42, NODE, 100), "out of range");
        assert_eq!(table.last_ns(1), Some(100));
        let beat = |id, key| Heartbeat { id, key };
        assert!(!table.accept(beat(1, 41), NODE, 200), "wrong key");
        assert!(!table.accept(beat(2, 42), NODE, 200), "wrong id");
        assert!(!table.accept(beat(9, 42), NODE, 200), "id out of range");
        assert!(
            !table.accept(beat(1, 42), Ipv4Addr::new(198, 19, 0, 12), 200),
            "other address"
        );
        assert_eq!(table.last_ns(1), Some(100));
        assert!(table.accept(beat(1, 42), NODE, 300));
        assert_eq!(table.last_ns(1), Some(300));
        // A new session: the old key is dead.
        assert!(table.arm(1, 43, NODE, 400));
        assert!(!table.accept(beat(1, 42), NODE, 500));
        table.disarm(1);
        assert_eq!(table.last_ns(1), None);
        assert!(!table.accept(beat(1, 43), NODE, 600));
        assert!(
            !table.accept(beat(1, 0), Ipv4Addr::UNSPECIFIED, 600),
            "key 0"
        );
    }

    #[test]
    fn keys_are_never_zero_and_differ() {
        let keys: std::collections::HashSet<u64> = (0..64).map(|_| new_key().unwrap()).collect();
        assert_eq!(keys.len(), 64);
        assert!(!keys.contains(&0));
    }
}
