//! The `powerautomation` host as a library: the binary in `main.rs` is a thin CLI over it, and
//! benchmarks and tests drive the same code.

pub mod audit;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod http;
pub mod plugin;
pub mod server;
pub mod services;
mod turn;
