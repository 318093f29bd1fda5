//! [`InProcess`]: the API through the plugin's own router in this process, as a given caller.
//! The request carries the caller and a request id the way the host's import does, so the
//! routes' role checks and views apply exactly as to a request from outside. MCP inside the
//! plugin uses it (as each tool call's caller), and the CLI in-process (as the local admin).

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use axum::{
    body::Body,
    http::{self, header},
    Router,
};
use http_body_util::BodyExt as _;
use plugin_guest::Caller;
use tower::ServiceExt as _;

use super::{Answer, ClientError, Reply, Request, Transport};
use crate::api::RequestId;

/// The plugin's router in this process, called as one caller.
#[derive(Clone)]
pub struct InProcess {
    router: Router,
    caller: Option<Caller>,
    /// The mount the answers' links name (`x-forwarded-prefix`); the router's default when
    /// absent.
    mount: Option<String>,
    /// The MCP tool its calls are made for (their audit entries say `via: mcp` and the tool).
    tool: Option<String>,
    ids: Arc<RequestIds>,
}

/// Request ids `{prefix}-{n}`, shared by the clients made from one another.
struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl InProcess {
    /// Calls `router` as `caller`; its requests are numbered `{id_prefix}-{n}`.
    pub(crate) fn new(router: Router, caller: Option<Caller>, id_prefix: String) -> InProcess {
        InProcess {
            router,
            caller,
            mount: None,
            tool: None,
            ids: Arc::new(RequestIds {
                prefix: id_prefix,
                next: AtomicU64::new(1),
            }),
        }
    }

    /// The same router, called as `caller`, its links under `mount`.
    pub fn as_caller(&self, caller: Option<Caller>, mount: Option<String>) -> InProcess {
        InProcess {
            router: self.router.clone(),
            caller,
            mount,
            tool: None,
            ids: Arc::clone(&self.ids),
        }
    }

    /// The same client, its calls made for the MCP tool `tool`.
    pub fn through_tool(mut self, tool: &str) -> InProcess {
        self.tool = Some(tool.to_owned());
        self
    }
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcess")
            .field("caller", &self.caller)
            .field("mount", &self.mount)
            .finish_non_exhaustive()
    }
}

impl Transport for InProcess {
    async fn send(&self, request: Request) -> Answer<Reply> {
        let mut builder = http::Request::builder()
            .method(request.endpoint.method.clone())
            .uri(&request.target)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(mount) = &self.mount {
            builder = builder.header("x-forwarded-prefix", mount);
        }
        if let Some(tool) = &self.tool {
            builder = builder
                .header(crate::audit::VIA_HEADER, "mcp")
                .header(crate::audit::TOOL_HEADER, tool);
        }
        let mut http_request = builder
            .body(request.body.map_or_else(Body::empty, Body::from))
            .map_err(|error| {
                ClientError::Transport(format!("cannot make {}: {error}", request.target))
            })?;
        let number = self.ids.next.fetch_add(1, Ordering::Relaxed);
        http_request
            .extensions_mut()
            .insert(RequestId(format!("{}-{number}", self.ids.prefix)));
        if let Some(caller) = &self.caller {
            http_request.extensions_mut().insert(caller.clone());
        }
        let response = match self.router.clone().oneshot(http_request).await {
            Ok(response) => response,
            Err(infallible) => match infallible {},
        };
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|error| {
                ClientError::Transport(format!(
                    "the answer to {} broke off: {error}",
                    request.target
                ))
            })?
            .to_bytes()
            .to_vec();
        Ok(Reply { status, body })
    }

    async fn whoami(&self) -> Answer<Caller> {
        self.caller.clone().ok_or_else(|| ClientError::Api {
            status: 401,
            code: "unauthorized".into(),
            message: "no caller: these calls are made without a key".into(),
            field: None,
        })
    }
}
