//! Services the host owns and lends to plugins: the store (the `record-store` crate), the event
//! bus and logging; on a shared store, the bus is fed from the cluster's event log.

pub mod cluster_events;
pub mod events;
pub mod outbound;
