//! Shared by the XDP program and user space; `no_std`, host-tested.
//!
//! - [`maps`]: the `#[repr(C)]` keys and values of every BPF map.
//! - [`checksum`]: RFC 1624 incremental checksum updates used by the rewrite.
//! - [`listener`]: port <-> route arithmetic for listener groups.
//! - [`packet`]: the header checks made before a packet is rewritten.
//! - [`heartbeat`]: the UDP heartbeat datagram of protocol version 2.
#![no_std]

pub mod checksum;
pub mod heartbeat;
pub mod listener;
pub mod maps;
pub mod packet;
