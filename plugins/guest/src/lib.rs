//! Plugin-side runtime shared by every `powerautomation` plugin.
//!
//! It turns an ordinary async [`Handler`] into a [`PluginInstance`](plugin_api::PluginInstance)
//! that keeps the rules of the ABI (see `plugin-api`). The crate is in four parts, all
//! re-exported here:
//! - `api`: what plugin code is written against ([`Request`], [`Caller`], [`Response`],
//!   [`Refusal`], [`Handler`], [`Import`]);
//! - `host`: the host's services in std types ([`Host`], [`StoreOp`], [`Condition`],
//!   [`Conflict`]);
//! - `runtime`: the instance's own runtime, inboxes and dispatchers ([`start_instance`],
//!   [`RuntimeOptions`], [`Startup`]);
//! - `export`: the [`export_plugin!`] macro that writes a `cdylib`'s root module.
//!
//! Beside them, [`heap`] (the copy's global allocator) and [`log_forward`] (`tracing` to the
//! host's log).

mod api;
mod export;
// The copy heap is a global allocator over memory it maps itself: `unsafe` by nature, and the
// only module of this crate allowed it (each block says why it holds).
#[allow(unsafe_code)]
pub mod heap;
mod host;
pub mod log_forward;
mod runtime;

pub use api::{query_param, BodyStream, Caller, Handler, Import, Refusal, Request, Response, Role};
pub use host::{Condition, Conflict, Host, StoreOp, Write};
pub use runtime::{panic_message, start_instance, RuntimeOptions, Startup};
