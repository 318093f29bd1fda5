//! The one record store of powerautomation: collections of JSON records kept in an embedded
//! SQLite file, used by the host (which lends it to plugins) and by the in-process host the
//! standalone CLI and the tests run plugins on.
//!
//! - [`Store`]: `put`/`get`/`delete`/`list` by key within a collection, and [`Store::apply`], an
//!   atomic batch whose writes happen only if every condition holds (insert-if-absent,
//!   compare-and-set). Everything a second copy of a plugin, or a second host on the same
//!   database, must not race on goes through it. The operations are plain SQL transactions, so
//!   a PostgreSQL backend can offer the same ones.
//! - [`DataDir`]: the data directory, private (0700, files 0600) and locked for one process:
//!   a second process exits naming the holder instead of touching what the first one runs.

#![forbid(unsafe_code)]

#[cfg(feature = "plugin-api")]
mod abi;
mod data_dir;
mod store;

#[cfg(feature = "plugin-api")]
pub use abi::{apply_abi, delete_abi, get_abi, list_abi, op_from_parts, put_abi};
pub use data_dir::{DataDir, DataDirError};
pub use store::{
    Condition, Conflict, Op, Store, StoreCounts, StoreError, Write, MAX_LIST, MAX_VALUE_LEN,
};
