//! The persistence layer: the only code that knows how the plugin's records lie in the host's
//! store (collections, keys, encodings) and that builds store operations. Everything else asks
//! it for a deployment's parts or hands it a transaction in the domain's words.
//!
//! - [`records`]: typed access to the host's store calls (on the blocking pool);
//! - [`writes`]: one transaction of a deployment's writes, made under a [`Lease`] (the one
//!   place where a run's write is fenced);
//! - [`runs`]: a run's release, cancel requests, the clean-up after a process that died, the
//!   look at the nodes;
//! - [`deployments`], [`history`], [`catalog`]: the repositories of deployments (records,
//!   results, logs, idempotency keys), of the newest-first history and its indexes, of
//!   environments (with their secrets, health and versions);
//! - [`retention`]: pruning of old deployments;
//! - [`named`]: records kept by id, created and deleted whole by a caller (audited);
//! - [`windows`], [`schedules`]: the deployment windows; the schedules and what became of
//!   each of their occurrences;
//! - [`outbox`]: notifications: subscriptions, the outbox of notices, deliveries, the
//!   notifier's lease.
//!
//! Invariants: a deployment's claims, records and history indexes change together in one
//! transaction or not at all; a record a decision was made on is written only if it is still
//! what was read; nothing outside this module names a collection.

pub mod catalog;
pub mod deployments;
pub mod history;
pub mod named;
pub mod outbox;
pub mod records;
pub mod retention;
pub mod runs;
pub mod schedules;
#[cfg(test)]
pub mod test_records;
pub mod windows;
pub mod writes;

pub use writes::{Lease, NodeTag, Outcome, Writes};
