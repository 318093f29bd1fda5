//! Plugins: loading and unloading copies (`loader`), the host side of the ABI (`bridge`), a
//! started copy whichever way it runs (`copy`) and one call of it (`call`), the child process of a plugin with process
//! isolation (`process`), the per-plugin slot that swaps copies atomically and restarts a
//! crashed child (`slot`), and what triggers swaps (`watch`).

pub mod bridge;
pub mod call;
pub mod copy;
// Opening a library, reading its symbols, unmapping a closed copy's heap and the fatal-signal
// handler are `unsafe` by nature: the loader's module tree is the only place in the host that
// may use it (each block says why it holds).
#[allow(unsafe_code)]
pub mod loader;
pub mod process;
pub mod slot;
pub mod watch;
