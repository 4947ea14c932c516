//! Shared by the XDP program and user space; `no_std`, host-tested.
#![no_std]
