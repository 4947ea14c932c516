//! halod's developer tasks as a library: set-up, the network-namespace test bed, the test run,
//! the demo and the benchmarks. halod's integration tests use [`testbed`] directly.

pub mod bench;
pub mod chaos;
pub mod command;
pub mod demo;
pub mod ebpf_build;
pub mod echo;
pub mod fuzz;
pub mod setup;
pub mod test_suite;
pub mod testbed;
pub mod workspace;

pub use testbed::{Testbed, TestbedOptions};
