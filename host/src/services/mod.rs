//! Services the host owns and lends to plugins: the store, the event bus and logging.

pub mod events;
pub mod store;
