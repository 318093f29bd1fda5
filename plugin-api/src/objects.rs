//! The `#[sabi_trait]` objects that cross the ABI: [`HostServices`], [`ResponseSink`],
//! [`BodySender`] and [`PluginInstance`], re-exported from the crate root.
//!
//! In a module of their own because `#[sabi_trait]` expands to `unsafe impl`s and `unsafe`
//! blocks at the traits' own spans, which an `allow` on the trait does not reach: the crate's
//! `unsafe_code` exception is this module, and nothing else here is exempt.

use abi_stable::{
    sabi_trait,
    std_types::{ROption, RResult, RSlice, RStr, RString, RVec},
};

use crate::{
    BodySenderBox, LogLevel, PluginRequest, PluginResponse, PushOutcome, ResponseSinkBox,
    StoreConflict, StoreEntry, StoreOp,
};

/// Services the host owns and lends to a plugin instance. They outlive every plugin copy, so a
/// swap loses neither stored records nor event subscribers. Implemented by the host; the methods
/// may block briefly (SQLite), so plugins call them off their async workers.
///
/// Methods after `store_list` came with interface 1.2 and 1.3; a plugin built against an older
/// minor version never calls the newer ones, and a host always provides them all.
#[sabi_trait]
pub trait HostServices: Send + Sync {
    /// Emits one log record through the host's logger.
    fn log(&self, level: LogLevel, target: RStr<'_>, message: RStr<'_>);

    /// Publishes an event to every subscriber of the host's event stream. `data` is JSON.
    /// Returns the event id the host assigned, or 0 when it was not published or is numbered
    /// later (hosts that share a database number events when they write them to the shared
    /// log).
    fn publish(&self, kind: RStr<'_>, data: RStr<'_>) -> u64;

    /// Inserts or replaces `key` in `collection`. `value` is JSON.
    fn store_put(
        &self,
        collection: RStr<'_>,
        key: RStr<'_>,
        value: RStr<'_>,
    ) -> RResult<(), RString>;

    fn store_get(&self, collection: RStr<'_>, key: RStr<'_>) -> RResult<ROption<RString>, RString>;

    /// Removes `key`; `true` when it existed.
    fn store_delete(&self, collection: RStr<'_>, key: RStr<'_>) -> RResult<bool, RString>;

    /// Up to `limit` rows of `collection` ordered by key, starting after `after`.
    #[sabi(last_prefix_field)]
    fn store_list(
        &self,
        collection: RStr<'_>,
        after: ROption<RStr<'_>>,
        limit: u32,
    ) -> RResult<RVec<StoreEntry>, RString>;

    /// Applies every operation in one transaction when every condition holds, else none and
    /// the first conflict (`RSome`). Conditions see the state before the batch's writes. This
    /// is what idempotency keys, claims on shared resources and state transitions use, so two
    /// copies of a plugin (a hot swap) or two hosts on one database cannot both win.
    fn store_apply(&self, ops: RSlice<'_, StoreOp>) -> RResult<ROption<StoreConflict>, RString>;

    /// Publishes one event in two views: `data` for developers and admins, `user_data` for
    /// users (`RNone`: users do not get this event), so what a user may not see (connection
    /// details, log lines) never reaches a user's stream. Both views share one event id, so
    /// `Last-Event-ID` works alike for every subscriber. [`HostServices::publish`] is this
    /// with the same data for everyone. Returns the event id.
    fn publish_by_role(&self, kind: RStr<'_>, data: RStr<'_>, user_data: ROption<RStr<'_>>) -> u64;

    /// [`HostServices::store_apply`], and when the batch applies, `audit` (audit drafts, JSON:
    /// actor, via, tool, action, resource, outcome, request_id, reason, changes, environments)
    /// chained onto the host's audit log in the same transaction, so a change is never stored
    /// without its entry. With no operations, the entries alone. Since 1.3.
    fn store_apply_audited(
        &self,
        ops: RSlice<'_, StoreOp>,
        audit: RSlice<'_, RString>,
    ) -> RResult<ROption<StoreConflict>, RString>;

    /// A page of the audit log: `query` is JSON (the filters of `GET /api/audit`, `before`
    /// and `limit`), the answer JSON `{"entries":[…],"next_cursor"}`, newest first. Since 1.3.
    fn audit_query(&self, query: RStr<'_>) -> RResult<RString, RString>;
}

/// Where a plugin delivers the answer to one request. Implemented by the host; called once
/// (either method), from any plugin thread. Dropping it unanswered makes the host answer 500.
#[sabi_trait]
pub trait ResponseSink: Send + Sync {
    /// The whole answer at once.
    fn send(&self, response: PluginResponse);

    /// Starts a streamed answer: `head`'s status and headers go out now (its body first, if
    /// any), the rest through the returned sender. Dropping the sender ends the body.
    #[sabi(last_prefix_field)]
    fn stream(&self, head: PluginResponse) -> BodySenderBox;
}

/// The body of a streamed answer. Implemented by the host, which copies every chunk, so the
/// plugin's memory is never referenced after `push` returns. Chunks are at most
/// [`MAX_STREAM_CHUNK_BYTES`](crate::MAX_STREAM_CHUNK_BYTES).
#[sabi_trait]
pub trait BodySender: Send + Sync {
    /// Queues `chunk`. An empty chunk queues nothing: it only asks whether the client is still
    /// there (`Closed` when not), so a stream with nothing to send can stop once nobody reads.
    #[sabi(last_prefix_field)]
    fn push(&self, chunk: RSlice<'_, u8>) -> PushOutcome;
}

/// A started plugin instance.
#[sabi_trait]
pub trait PluginInstance: Send + Sync {
    /// Accepts one request. Called from host threads: must only enqueue the work and return.
    fn handle(&self, request: PluginRequest, reply: ResponseSinkBox);

    /// Stops the instance: finishes accepted work, then stops and joins every thread it owns.
    /// Called once, from a host thread that exits right after; no call follows.
    #[sabi(last_prefix_field)]
    fn shutdown(&self);
}
