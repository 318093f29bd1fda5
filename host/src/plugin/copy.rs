//! One started copy of a plugin, whichever way it runs: loaded into this process
//! ([`LoadedPlugin`]) or in a child process ([`ChildCopy`]). Requests reach either as host
//! types and come back as host types, so the dispatcher does not know the difference.

use abi_stable::std_types::{ROption, RString, RVec, Tuple2};
use axum::body::Bytes;
use plugin_api::{PluginRequest, Principal as AbiPrincipal, Role};

use crate::turn::AfterOthers;

use super::{
    bridge::{self, HostResponse},
    loader::{BuildInfo, LoadedPlugin},
    process::{ChildCopy, Death},
};

/// A request for a plugin, owned by the host.
#[derive(Debug)]
pub struct HostRequest {
    pub request_id: String,
    pub method: String,
    /// Relative to the plugin's mount, starting with `/`.
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub principal: Option<(String, Role)>,
}

/// Why a request got no answer from the plugin.
#[derive(Debug, Clone)]
pub enum CallError {
    /// The plugin dropped the request without answering.
    Unanswered,
    /// The copy's process ended while the request was in flight (or before it was sent).
    Crashed { plugin: String, death: Death },
}

pub enum PluginCopy {
    InProcess(LoadedPlugin),
    Process(ChildCopy),
}

impl PluginCopy {
    pub fn info(&self) -> &BuildInfo {
        match self {
            PluginCopy::InProcess(loaded) => &loaded.info,
            PluginCopy::Process(child) => &child.info,
        }
    }

    /// The child's process id, in process mode.
    pub fn pid(&self) -> Option<u32> {
        match self {
            PluginCopy::InProcess(_) => None,
            PluginCopy::Process(child) => Some(child.pid()),
        }
    }

    /// Which load of its slot a child is (process mode).
    pub fn child_sequence(&self) -> Option<u64> {
        match self {
            PluginCopy::InProcess(_) => None,
            PluginCopy::Process(child) => Some(child.sequence()),
        }
    }

    /// Hands one request to the copy and waits for its answer (a streamed answer's head).
    pub async fn call(&self, request: HostRequest) -> Result<HostResponse, CallError> {
        match self {
            PluginCopy::InProcess(loaded) => {
                let (sink, answer) = bridge::reply_channel();
                loaded.handle(export_request(request), sink);
                // The request's timeout takes its turn in the same poll when the request's
                // body is already in, so the two are one turn. This one is still needed: without
                // it the answer's waker would be registered before the turn, and an answer
                // arriving within it would write to the task's state from the plugin thread.
                AfterOthers::default().await;
                answer.await.map_err(|_| CallError::Unanswered)
            }
            PluginCopy::Process(child) => child.call(request).await,
        }
    }
}

/// The request in ABI types, for a copy in this process (or loaded by a child process).
pub fn export_request(request: HostRequest) -> PluginRequest {
    PluginRequest {
        request_id: RString::from(request.request_id),
        method: RString::from(request.method),
        path: RString::from(request.path),
        query: RString::from(request.query),
        headers: request
            .headers
            .into_iter()
            .map(|(name, value)| Tuple2(RString::from(name), RString::from(value)))
            .collect::<RVec<_>>(),
        body: RVec::from(Vec::from(request.body)),
        principal: match request.principal {
            Some((name, role)) => ROption::RSome(AbiPrincipal {
                name: RString::from(name),
                role,
            }),
            None => ROption::RNone,
        },
    }
}
