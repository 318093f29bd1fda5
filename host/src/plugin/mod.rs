//! Plugins: loading and unloading copies (`loader`), the host side of the ABI (`bridge`), the
//! per-plugin slot that swaps copies atomically (`slot`), and what triggers swaps (`watch`).

pub mod bridge;
pub mod loader;
pub mod slot;
pub mod watch;
