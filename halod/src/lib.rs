//! halod: an XDP load-balancing router for comet/push clusters.
//!
//! The binary (`src/main.rs`) is a thin clap entry; each subcommand lives in
//! its own module here so tests and benchmarks can drive the same code.

pub mod api;
pub mod config;
pub mod console;
pub mod control;
pub mod dataplane;
pub mod node;
pub mod operator;
pub mod protocol;
pub mod routing;
pub mod simulate;
