//! Services the host owns and lends to plugins: the store (the `record-store` crate), the event
//! bus and logging.

pub mod events;
