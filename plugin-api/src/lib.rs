//! The stable ABI between the `powerautomation` host and its plugins.
//!
//! A plugin is a `cdylib` that exports a [`PluginModRef`] root module with
//! `#[abi_stable::export_root_module]`. The host loads it at run time, and `abi_stable` checks
//! the library's interface version (this crate's semver) and the layout of every type reachable
//! from the root module before any plugin code runs.
//!
//! Rules every implementation follows (the host relies on them to unload copies safely):
//! - Only the types of this crate and `abi_stable` cross the boundary: no std, tokio or serde types.
//! - No panic crosses the boundary: every exported function and trait method catches panics.
//! - Entry points called from host threads ([`PluginInstance::handle`]) only enqueue work: plugin
//!   code that touches thread-locals (an async runtime, `tracing`) runs on threads the instance
//!   owns and joins in [`PluginInstance::shutdown`].
//! - Whatever one side allocates and hands to the other is dropped through its own vtable
//!   (`RString`, `RVec`, `RBox`), so the receiver copies plugin-allocated data into its own types
//!   before the library may be unloaded.

// `#[sabi_trait]` expands to impls of items it generates beside the trait.
#![allow(non_local_definitions)]

// `#[sabi_trait]` needs `unsafe` code at its traits' spans: they are in `objects` (see there).
#[allow(unsafe_code)]
mod objects;

pub use objects::*;

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings,
    sabi_types::VersionStrings,
    std_types::{RBox, ROption, RResult, RString, RVec, Tuple2},
    StableAbi,
};

/// The interface version a plugin was built against (this crate's version). A plugin whose
/// major version differs is refused by the loader.
pub const INTERFACE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Caller roles, ordered: `User < Developer < Admin`.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    User = 0,
    Developer = 1,
    Admin = 2,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Developer => "developer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "user" => Some(Role::User),
            "developer" => Some(Role::Developer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Who made a request, as authenticated by the host.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct Principal {
    pub name: RString,
    pub role: Role,
}

/// One HTTP request routed to a plugin. `path` is relative to the plugin's mount and starts
/// with `/`; `query` is the raw query string without `?`.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct PluginRequest {
    pub request_id: RString,
    pub method: RString,
    pub path: RString,
    pub query: RString,
    pub headers: RVec<Tuple2<RString, RString>>,
    pub body: RVec<u8>,
    pub principal: ROption<Principal>,
}

/// A plugin's answer to one request.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct PluginResponse {
    pub status: u16,
    pub headers: RVec<Tuple2<RString, RString>>,
    pub body: RVec<u8>,
}

/// Static facts about a plugin build.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct PluginMetadata {
    pub name: RString,
    pub version: RString,
    pub description: RString,
}

#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
    Trace = 4,
}

/// One row of a store collection.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct StoreEntry {
    pub key: RString,
    pub value: RString,
}

/// What must hold for one [`StoreOp`] of a batch.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreCondition {
    Always = 0,
    /// The key does not exist.
    Absent = 1,
    /// The key holds exactly [`StoreOp::expected`].
    Equals = 2,
}

/// What one [`StoreOp`] does once every condition of its batch held.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreWrite {
    /// Inserts or replaces the key with [`StoreOp::value`].
    Put = 0,
    Delete = 1,
    /// Nothing: the operation only checks its condition.
    Keep = 2,
    /// Adds [`StoreOp::value`], a decimal integer (negative to subtract), to the key's value,
    /// read as an integer (absent: 0). Counters stay right under concurrent writers without a
    /// read-modify-write round trip.
    Add = 3,
}

/// One operation of an atomic batch ([`HostServices::store_apply`]).
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct StoreOp {
    pub collection: RString,
    pub key: RString,
    pub condition: StoreCondition,
    /// The value required by [`StoreCondition::Equals`]; ignored otherwise.
    pub expected: RString,
    pub write: StoreWrite,
    /// The value written by [`StoreWrite::Put`], or added by [`StoreWrite::Add`].
    pub value: RString,
}

/// Why a batch was not applied: the first operation whose condition failed (its index in the
/// batch) and what its key holds now.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct StoreConflict {
    pub index: u32,
    pub current: ROption<RString>,
}

pub type HostServicesBox = HostServices_TO<'static, RBox<()>>;

/// What happened to a chunk pushed into a streamed body.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Queued for the client.
    Accepted = 0,
    /// The host's bounded buffer is full: nothing was queued; push it again a little later.
    Full = 1,
    /// The client is gone (or the answer was already sent): stop producing.
    Closed = 2,
}

/// The largest chunk [`BodySender::push`] takes: the host answers `Closed` to a larger one (and
/// the answer ends), so what one stream holds in the host's buffer stays bounded in bytes.
pub const MAX_STREAM_CHUNK_BYTES: usize = 256 * 1024;

pub type BodySenderBox = BodySender_TO<'static, RBox<()>>;

pub type ResponseSinkBox = ResponseSink_TO<'static, RBox<()>>;

pub type PluginInstanceBox = PluginInstance_TO<'static, RBox<()>>;

/// The address range a plugin copy's heap occupies, as the copy reports it through the symbol
/// [`HEAP_SYMBOL`] (`extern "C" fn() -> PluginHeap`). After the host has shut the copy down and
/// closed the library, it unmaps the range: everything the copy allocated goes with it. A
/// library without the symbol (or reporting `size` 0) keeps the system allocator, and its
/// leftovers stay.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginHeap {
    pub base: usize,
    pub size: usize,
}

/// The name of the plugin library's heap-range function, NUL-terminated.
pub const HEAP_SYMBOL: &[u8] = b"powerautomation_plugin_heap\0";

/// The root module every plugin library exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// Facts about this build; safe to call before `start`.
    pub metadata: extern "C" fn() -> PluginMetadata,

    /// Starts an instance with the host's services and the plugin's settings as JSON. Called
    /// once per loaded copy, from a short-lived host thread. The error is a message for operators.
    #[sabi(last_prefix_field)]
    pub start: extern "C" fn(HostServicesBox, RString) -> RResult<PluginInstanceBox, RString>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "powerautomation_plugin";
    const NAME: &'static str = "powerautomation_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

impl PluginResponse {
    /// A response with a JSON body.
    pub fn json(status: u16, body: Vec<u8>) -> PluginResponse {
        PluginResponse {
            status,
            headers: RVec::from(vec![Tuple2(
                RString::from("content-type"),
                RString::from("application/json"),
            )]),
            body: RVec::from(body),
        }
    }

    /// A JSON error in the host's error shape: `{"error": code, "message": message}`.
    pub fn error(status: u16, code: &str, message: &str) -> PluginResponse {
        let body = format!(
            "{{\"error\":{},\"message\":{}}}",
            json_string(code),
            json_string(message)
        );
        PluginResponse::json(status, body.into_bytes())
    }
}

/// Quotes `text` as a JSON string without pulling a serializer into the interface crate.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered() {
        assert!(Role::User < Role::Developer && Role::Developer < Role::Admin);
        assert_eq!(Role::parse("developer"), Some(Role::Developer));
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn error_body_is_escaped_json() {
        let response = PluginResponse::error(503, "x", "say \"hi\"\n");
        let text = String::from_utf8(response.body.to_vec()).unwrap_or_default();
        assert_eq!(text, r#"{"error":"x","message":"say \"hi\"\n"}"#);
    }
}
