//! The messages between the host and a plugin's child process, and how they are framed on the
//! socket: a little-endian `u32` length, then the message in `postcard`. Both ends are the same
//! executable (the child is `powerautomation plugin-runner`), so the format needs no versioning:
//! it only has to agree with itself.

use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::plugin::loader::LoadTarget;

/// The largest message either side accepts. A request body is bounded by
/// `server.body_limit_bytes` and a store value by what plugins write; a longer frame means the
/// other side is broken, and the connection is dropped.
pub const MAX_FRAME: usize = 256 * 1024 * 1024;

/// Room a frame starts with: a request or an answer of a few hundred bytes is encoded without
/// growing its buffer several times over (from 4 bytes, doubling).
const FRAME_START: usize = 512;

/// From the host to the child.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToChild {
    /// The first message: what to load. Sent over the socket rather than on the command line,
    /// so the plugin's settings (which may hold secrets) never show in a process list.
    Start(StartChild),
    Request(RequestFrame),
    /// The answer to a [`ToHost::Call`].
    Reply {
        call: u64,
        result: ServiceResult,
    },
    /// Stop: finish the work accepted, shut the instance down, answer [`ToHost::Stopped`], exit.
    Shutdown,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartChild {
    pub target: LoadTarget,
    pub memory_limit_mb: Option<u64>,
    pub cpu_shares: Option<u32>,
    /// The host's log filter and whether it logs JSON, so the child's own lines match.
    pub log_level: String,
    pub log_json: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RequestFrame {
    pub id: u64,
    pub request_id: String,
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// The caller's name and role (`Role as u8`).
    pub principal: Option<(String, u8)>,
}

/// From the child to the host.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToHost {
    /// The plugin is loaded, checked and started.
    Ready(ReadyInfo),
    /// It could not be: `kind` is the loader's failure (missing, incompatible, failed).
    LoadFailed { kind: u8, message: String },
    /// A whole answer to request `id`.
    Response(ResponseFrame),
    /// The head of a streamed answer to request `id`; its chunks come as [`ServiceOp::Push`].
    StreamHead(ResponseFrame),
    /// The streamed answer to request `id` is complete.
    StreamEnd { id: u64 },
    /// The plugin dropped request `id` without answering.
    Unanswered { id: u64 },
    /// A host service the plugin called; answered by [`ToChild::Reply`] with the same `call`.
    Call { call: u64, op: ServiceOp },
    /// A log record (no answer).
    Log {
        level: u8,
        target: String,
        message: String,
    },
    /// Shut down as asked; the child exits next.
    Stopped,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadyInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    pub abi: String,
    pub sha256: String,
    pub source: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ResponseFrame {
    pub id: u64,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// One host service call, as the plugin made it through `HostServices` (or a chunk of a
/// streamed answer, which the host's buffer accepts or refuses like in-process).
#[derive(Debug, Serialize, Deserialize)]
pub enum ServiceOp {
    Publish {
        kind: String,
        data: String,
        /// `None`: the same data for every role; `Some(None)`: users do not get it.
        user_data: Option<Option<String>>,
    },
    Put {
        collection: String,
        key: String,
        value: String,
    },
    Get {
        collection: String,
        key: String,
    },
    Delete {
        collection: String,
        key: String,
    },
    List {
        collection: String,
        after: Option<String>,
        limit: u32,
    },
    Apply {
        ops: Vec<StoreOpFrame>,
        /// Audit drafts (JSON) chained in the batch's transaction.
        audit: Vec<String>,
    },
    AuditQuery {
        query: String,
    },
    Push {
        stream: u64,
        #[serde(with = "serde_bytes")]
        chunk: Vec<u8>,
    },
}

/// `plugin_api::StoreOp` in owned form; `condition` and `write` are the ABI enums' values.
#[derive(Debug, Serialize, Deserialize)]
pub struct StoreOpFrame {
    pub collection: String,
    pub key: String,
    pub condition: u8,
    pub expected: String,
    pub write: u8,
    pub value: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ServiceResult {
    Published(u64),
    Done,
    Value(Option<String>),
    Deleted(bool),
    Rows(Vec<(String, String)>),
    /// `None`: applied; `Some((index, current))`: the first conflict.
    Applied(Option<(u32, Option<String>)>),
    /// A `PushOutcome` as its value.
    Pushed(u8),
    Text(String),
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the connection closed")]
    Closed,
    #[error("reading or writing the socket failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("a message of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("a message does not decode: {0}")]
    Decode(#[from] postcard::Error),
}

/// Encodes `message` with its length in front, ready to be written.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let mut start = Vec::with_capacity(FRAME_START);
    start.extend_from_slice(&[0u8; 4]);
    let mut frame = postcard::to_extend(message, start)?;
    let length = frame.len() - 4;
    if length > MAX_FRAME {
        return Err(FrameError::TooLarge(length));
    }
    frame[..4].copy_from_slice(&(length as u32).to_le_bytes());
    Ok(frame)
}

/// Decodes the body of one frame (without its length).
pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, FrameError> {
    Ok(postcard::from_bytes(body)?)
}

/// Checks a frame's length prefix.
pub fn frame_length(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let length = u32::from_le_bytes(prefix) as usize;
    if length > MAX_FRAME {
        return Err(FrameError::TooLarge(length));
    }
    Ok(length)
}

/// Reads one frame's body from a blocking reader; `Closed` at a clean end of stream.
pub fn read_blocking(reader: &mut impl Read, body: &mut Vec<u8>) -> Result<(), FrameError> {
    let mut prefix = [0u8; 4];
    match reader.read_exact(&mut prefix) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(FrameError::Closed)
        }
        Err(error) => return Err(error.into()),
    }
    let length = frame_length(prefix)?;
    body.clear();
    body.resize(length, 0);
    reader.read_exact(body)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_survives_the_round_trip() {
        let frame = encode(&ToChild::Request(RequestFrame {
            id: 7,
            request_id: "r-1".into(),
            method: "GET".into(),
            path: "/status".into(),
            query: "id=a%20b".into(),
            headers: vec![("accept".into(), "application/json".into())],
            body: vec![0, 1, 2, 255],
            principal: Some(("ops".into(), 2)),
        }))
        .expect("encode");
        let length = frame_length(frame[..4].try_into().expect("prefix")).expect("length");
        assert_eq!(length, frame.len() - 4);
        let mut reader = std::io::Cursor::new(frame);
        let mut body = Vec::new();
        read_blocking(&mut reader, &mut body).expect("read");
        match decode::<ToChild>(&body).expect("decode") {
            ToChild::Request(request) => {
                assert_eq!(request.id, 7);
                assert_eq!(request.body, vec![0, 1, 2, 255]);
                assert_eq!(request.principal, Some(("ops".into(), 2)));
            }
            other => panic!("decoded {other:?}"),
        }
        assert!(matches!(
            read_blocking(&mut reader, &mut body),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn an_oversized_length_is_refused_before_reading() {
        let prefix = ((MAX_FRAME + 1) as u32).to_le_bytes();
        assert!(matches!(frame_length(prefix), Err(FrameError::TooLarge(_))));
    }
}
