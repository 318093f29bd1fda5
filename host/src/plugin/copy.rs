//! One started copy of a plugin, whichever way it runs: loaded into this process
//! ([`LoadedPlugin`]) or in a child process ([`ChildCopy`]). Requests reach either as host
//! types and come back as host types, so the dispatcher does not know the difference.

use crate::turn::AfterOthers;

use super::{
    bridge::{self, HostResponse},
    call::{export_request, CallError, HostRequest},
    loader::{BuildInfo, LoadedPlugin},
    process::ChildCopy,
};

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
