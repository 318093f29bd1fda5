//! The host side of the ABI: host services lent to plugins, and the per-request reply channel.
//! Everything a plugin hands over is copied into host types right here, while the plugin is
//! certainly loaded (it is the caller).

use std::sync::{Arc, Mutex};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{ROption, RResult, RSlice, RStr, RString, RVec},
};
use axum::{
    body::Bytes,
    http::{HeaderMap, HeaderName, HeaderValue},
};
use plugin_api::{
    BodySender, BodySenderBox, BodySender_TO, HostServices, HostServicesBox, HostServices_TO,
    LogLevel, PluginResponse, PushOutcome, ResponseSink, ResponseSinkBox, ResponseSink_TO,
    StoreConflict, StoreEntry, StoreOp,
};
use record_store::RecordStore;
use tokio::sync::{mpsc, oneshot};

use crate::services::events::{EventBus, UserView};

struct Services {
    plugin: String,
    store: Arc<dyn RecordStore>,
    bus: Arc<EventBus>,
}

pub fn host_services(
    plugin: &str,
    store: Arc<dyn RecordStore>,
    bus: Arc<EventBus>,
) -> HostServicesBox {
    HostServices_TO::from_value(
        Services {
            plugin: plugin.to_owned(),
            store,
            bus,
        },
        TD_Opaque,
    )
}

impl HostServices for Services {
    fn log(&self, level: LogLevel, target: RStr<'_>, message: RStr<'_>) {
        log_record(&self.plugin, level, target.as_str(), message.as_str());
    }

    fn publish(&self, kind: RStr<'_>, data: RStr<'_>) -> u64 {
        self.bus.publish(kind.as_str(), data.as_str().to_owned())
    }

    fn store_put(
        &self,
        collection: RStr<'_>,
        key: RStr<'_>,
        value: RStr<'_>,
    ) -> RResult<(), RString> {
        record_store::put_abi(&*self.store, collection, key, value)
    }

    fn store_get(&self, collection: RStr<'_>, key: RStr<'_>) -> RResult<ROption<RString>, RString> {
        record_store::get_abi(&*self.store, collection, key)
    }

    fn store_delete(&self, collection: RStr<'_>, key: RStr<'_>) -> RResult<bool, RString> {
        record_store::delete_abi(&*self.store, collection, key)
    }

    fn store_list(
        &self,
        collection: RStr<'_>,
        after: ROption<RStr<'_>>,
        limit: u32,
    ) -> RResult<RVec<StoreEntry>, RString> {
        record_store::list_abi(&*self.store, collection, after, limit)
    }

    fn store_apply(&self, ops: RSlice<'_, StoreOp>) -> RResult<ROption<StoreConflict>, RString> {
        record_store::apply_abi(&*self.store, ops, RSlice::from_slice(&[]))
    }

    fn store_apply_audited(
        &self,
        ops: RSlice<'_, StoreOp>,
        audit: RSlice<'_, RString>,
    ) -> RResult<ROption<StoreConflict>, RString> {
        record_store::apply_abi(&*self.store, ops, audit)
    }

    fn audit_query(&self, query: RStr<'_>) -> RResult<RString, RString> {
        record_store::audit_query_abi(&*self.store, query)
    }

    fn publish_by_role(&self, kind: RStr<'_>, data: RStr<'_>, user_data: ROption<RStr<'_>>) -> u64 {
        let user_view = match user_data {
            ROption::RSome(view) => UserView::Redacted(view.as_str().to_owned()),
            ROption::RNone => UserView::Hidden,
        };
        self.bus
            .publish_views(kind.as_str(), data.as_str().to_owned(), user_view)
    }
}

/// Emits a plugin's log record through the host's logger, naming the plugin.
pub fn log_record(plugin: &str, level: LogLevel, source: &str, message: &str) {
    match level {
        LogLevel::Error => tracing::error!(target: "plugin", plugin, source, "{message}"),
        LogLevel::Warn => tracing::warn!(target: "plugin", plugin, source, "{message}"),
        LogLevel::Info => tracing::info!(target: "plugin", plugin, source, "{message}"),
        LogLevel::Debug => tracing::debug!(target: "plugin", plugin, source, "{message}"),
        LogLevel::Trace => tracing::trace!(target: "plugin", plugin, source, "{message}"),
    }
}

/// A plugin's answer, copied into host memory.
#[derive(Debug)]
pub struct HostResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: HostBody,
}

#[derive(Debug)]
pub enum HostBody {
    Full(Bytes),
    /// Chunks of a streamed answer; the stream ends when the plugin drops its sender.
    Stream(mpsc::Receiver<Bytes>, StreamCut),
}

/// Set, with the reason, when a streamed answer must not end as complete: its plugin's process
/// died, or the plugin pushed a chunk over [`plugin_api::MAX_STREAM_CHUNK_BYTES`]. The answer
/// is then cut off (the connection aborted), so a client does not take a partial body for a
/// whole one.
pub type StreamCut = Arc<std::sync::OnceLock<String>>;

/// Pieces a streamed answer may have queued before the plugin is told to wait.
pub const STREAM_BUFFER_CHUNKS: usize = 64;
/// The largest piece in that buffer: a chunk is queued as pieces of at most this size, so one
/// stream holds at most `STREAM_BUFFER_CHUNKS × STREAM_PIECE_BYTES` (2 MiB) whatever the size
/// of its plugin's chunks.
pub const STREAM_PIECE_BYTES: usize = 32 * 1024;

// The largest chunk a plugin may push fits in an empty buffer: it can always be queued.
const _: () = assert!(
    plugin_api::MAX_STREAM_CHUNK_BYTES.div_ceil(STREAM_PIECE_BYTES) <= STREAM_BUFFER_CHUNKS
);

struct ReplySlot {
    sender: Mutex<Option<oneshot::Sender<HostResponse>>>,
}

impl ReplySlot {
    /// Delivers the answer, unless one was delivered already. False when nobody waits for it.
    fn deliver(&self, response: HostResponse) -> bool {
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        // The requester may have gone (timeout, disconnect): nothing to deliver to.
        sender.is_some_and(|sender| sender.send(response).is_ok())
    }
}

/// The most header fields of one plugin answer that reach the client. No sane answer has as
/// many; past it a broken or hostile plugin could make the header map overflow its limit.
pub const MAX_ANSWER_HEADERS: usize = 1024;

/// A plugin's headers and `body`, copied into one buffer: the header values are slices of it
/// (no allocation per header), the body is the rest. A header the HTTP types refuse (a name
/// or value no client could be sent), and any past the first [`MAX_ANSWER_HEADERS`], is left
/// out.
pub fn copy_answer<'a, I>(headers: I, body: &[u8]) -> (HeaderMap, Bytes)
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
    I::IntoIter: Clone,
{
    let all = headers.into_iter();
    let pairs = all.clone().take(MAX_ANSWER_HEADERS);
    let mut size = body.len();
    let mut count = 0;
    for (_, value) in pairs.clone() {
        size += value.len();
        count += 1;
    }
    if all.clone().nth(MAX_ANSWER_HEADERS).is_some() {
        tracing::warn!(
            kept = MAX_ANSWER_HEADERS,
            "a plugin answered with more header fields than the host passes on; the rest were left out"
        );
    }
    let mut buffer = Vec::with_capacity(size);
    for (_, value) in pairs.clone() {
        buffer.extend_from_slice(value.as_bytes());
    }
    buffer.extend_from_slice(body);
    let buffer = Bytes::from(buffer);
    let mut map = HeaderMap::try_with_capacity(count).unwrap_or_default();
    let mut offset = 0;
    for (name, value) in pairs {
        let range = offset..offset + value.len();
        offset = range.end;
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_maybe_shared(buffer.slice(range)),
        ) else {
            continue;
        };
        if map.try_append(name, value).is_err() {
            break;
        }
    }
    (map, buffer.slice(offset..))
}

/// A plugin answer's header pairs, as text.
fn header_pairs(response: &PluginResponse) -> impl Iterator<Item = (&str, &str)> + Clone {
    response
        .headers
        .iter()
        .map(|pair| (pair.0.as_str(), pair.1.as_str()))
}

impl ResponseSink for ReplySlot {
    fn send(&self, response: PluginResponse) {
        let status = response.status;
        let (headers, body) = copy_answer(header_pairs(&response), response.body.as_slice());
        // The plugin's buffers are freed through its own vtable, now, while it is loaded.
        drop(response);
        self.deliver(HostResponse {
            status,
            headers,
            body: HostBody::Full(body),
        });
    }

    fn stream(&self, head: PluginResponse) -> BodySenderBox {
        let status = head.status;
        let (headers, _) = copy_answer(header_pairs(&head), &[]);
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER_CHUNKS);
        let cut = StreamCut::default();
        // The head's body goes in like any chunk: bounded the same way.
        let _ = push_chunk(&sender, &cut, head.body.as_slice());
        drop(head);
        let delivered = self.deliver(HostResponse {
            status,
            headers,
            body: HostBody::Stream(receiver, Arc::clone(&cut)),
        });
        let sender = delivered.then_some(sender);
        BodySender_TO::from_value(StreamSender { sender, cut }, TD_Opaque)
    }
}

/// The host end of a streamed body. Runs on plugin threads: only non-blocking channel calls.
struct StreamSender {
    sender: Option<mpsc::Sender<Bytes>>,
    cut: StreamCut,
}

impl BodySender for StreamSender {
    fn push(&self, chunk: abi_stable::std_types::RSlice<'_, u8>) -> PushOutcome {
        let Some(sender) = &self.sender else {
            return PushOutcome::Closed;
        };
        push_chunk(sender, &self.cut, chunk.as_slice())
    }
}

/// Offers one chunk of a streamed answer to its bounded buffer, without waiting: queued whole
/// (as pieces of at most [`STREAM_PIECE_BYTES`]) or not at all. An empty chunk is a probe: is
/// anybody still reading? A chunk over [`plugin_api::MAX_STREAM_CHUNK_BYTES`] cuts the answer:
/// nothing more is taken, and the client's connection is aborted once the plugin lets go.
pub fn push_chunk(sender: &mpsc::Sender<Bytes>, cut: &StreamCut, chunk: &[u8]) -> PushOutcome {
    if cut.get().is_some() {
        return PushOutcome::Closed;
    }
    if chunk.is_empty() {
        return if sender.is_closed() {
            PushOutcome::Closed
        } else {
            PushOutcome::Accepted
        };
    }
    if chunk.len() > plugin_api::MAX_STREAM_CHUNK_BYTES {
        tracing::warn!(
            bytes = chunk.len(),
            limit = plugin_api::MAX_STREAM_CHUNK_BYTES,
            "a plugin pushed a streamed chunk over the limit; its answer was cut"
        );
        let _ = cut.set(format!(
            "it pushed a chunk of {} bytes, over the limit of {}",
            chunk.len(),
            plugin_api::MAX_STREAM_CHUNK_BYTES
        ));
        return PushOutcome::Closed;
    }
    let pieces = chunk.len().div_ceil(STREAM_PIECE_BYTES);
    match sender.try_reserve_many(pieces) {
        Ok(permits) => {
            // One copy; the pieces are views of it.
            let whole = Bytes::copy_from_slice(chunk);
            let mut start = 0;
            for permit in permits {
                let end = (start + STREAM_PIECE_BYTES).min(whole.len());
                permit.send(whole.slice(start..end));
                start = end;
            }
            PushOutcome::Accepted
        }
        Err(mpsc::error::TrySendError::Full(())) => PushOutcome::Full,
        Err(mpsc::error::TrySendError::Closed(())) => PushOutcome::Closed,
    }
}

/// A reply sink for one request and the receiver its answer arrives on. If the plugin drops
/// the sink unanswered, the receiver reports it.
pub fn reply_channel() -> (ResponseSinkBox, oneshot::Receiver<HostResponse>) {
    let (sender, receiver) = oneshot::channel();
    let sink = ResponseSink_TO::from_value(
        ReplySlot {
            sender: Mutex::new(Some(sender)),
        },
        TD_Opaque,
    );
    (sink, receiver)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_buffers_a_bounded_number_of_bytes_whatever_its_chunks() {
        let (sender, mut receiver) = mpsc::channel(STREAM_BUFFER_CHUNKS);
        let cut = StreamCut::default();
        let chunk = vec![b'x'; plugin_api::MAX_STREAM_CHUNK_BYTES];
        let mut accepted = 0;
        while push_chunk(&sender, &cut, &chunk) == PushOutcome::Accepted {
            accepted += 1;
        }
        let mut queued = 0;
        let mut largest = 0;
        while let Ok(piece) = receiver.try_recv() {
            queued += piece.len();
            largest = largest.max(piece.len());
        }
        assert_eq!(
            queued,
            accepted * chunk.len(),
            "chunks are queued whole or not at all"
        );
        assert!(
            queued <= STREAM_BUFFER_CHUNKS * STREAM_PIECE_BYTES,
            "{queued} bytes queued"
        );
        assert!(largest <= STREAM_PIECE_BYTES);
        assert!(
            accepted >= 1,
            "a chunk of the largest size fits an empty buffer"
        );
        let too_large = vec![b'x'; plugin_api::MAX_STREAM_CHUNK_BYTES + 1];
        assert_eq!(push_chunk(&sender, &cut, &too_large), PushOutcome::Closed);
        assert!(
            cut.get().is_some(),
            "the answer is cut, not ended as complete"
        );
        // Nothing more is taken, however small.
        assert_eq!(push_chunk(&sender, &cut, b"x"), PushOutcome::Closed);
        assert!(receiver.try_recv().is_err());
    }

    #[test]
    fn an_answer_is_copied_whole_and_a_header_no_client_could_get_is_left_out() {
        let pairs = [
            ("content-type", "application/json"),
            ("set-cookie", "a=1"),
            ("bad header", "x"),
            ("x-bad-value", "line\nbreak"),
            ("set-cookie", "b=2"),
            ("x-empty", ""),
        ];
        let (headers, body) = copy_answer(pairs.iter().copied(), b"{\"ok\":true}");
        assert_eq!(&body[..], b"{\"ok\":true}");
        assert_eq!(headers.len(), 4);
        assert_eq!(headers["content-type"], "application/json");
        let cookies: Vec<_> = headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(headers["x-empty"], "");
        assert!(!headers.contains_key("x-bad-value"));
    }

    #[test]
    fn headers_past_the_limit_are_left_out_and_the_body_stays_whole() {
        let names: Vec<String> = (0..MAX_ANSWER_HEADERS * 40)
            .map(|index| format!("x-h{index}"))
            .collect();
        let (headers, body) = copy_answer(names.iter().map(|name| (name.as_str(), "v")), b"end");
        assert_eq!(headers.len(), MAX_ANSWER_HEADERS);
        assert!(
            headers.contains_key("x-h0")
                && !headers.contains_key(names[MAX_ANSWER_HEADERS].as_str())
        );
        assert_eq!(&body[..], b"end");
    }

    #[test]
    fn an_answer_without_headers_or_body_is_empty() {
        let (headers, body) = copy_answer(std::iter::empty(), &[]);
        assert!(headers.is_empty() && body.is_empty());
    }
}
