//! `deployment-mcp mcp`: the deployment tools and resources over the Model Context Protocol on
//! stdio, for a local agent. The same server the plugin serves at `{mount}/mcp`, reaching the
//! API through this command's backend: in-process on the environments file (as admin, like
//! every in-process command), or a host with `--server URL --api-key KEY` (as that key's role).
//! Stdout carries the protocol only; diagnostics go to stderr.

use std::sync::Arc;

use deployment_mcp_core::mcp::{ApiClient, McpServer};
use plugin_guest::Caller;
use rmcp::ServiceExt as _;
use serde_json::Value;

use crate::{backend::Backend, CliError};

/// The API as the tools reach it here: this command's backend (its caller is fixed).
struct BackendClient(Backend);

impl ApiClient for BackendClient {
    async fn call(
        &self,
        _caller: Option<&Caller>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        self.0
            .call(method, path, body.as_ref())
            .await
            .map_err(|error| error.to_string())
    }
}

/// Serves MCP on stdin/stdout until the client closes stdin.
pub async fn serve(backend: Backend, read_only: bool) -> Result<u8, CliError> {
    let caller = backend.whoami().await?;
    eprintln!(
        "deployment-mcp: serving MCP on stdio as {} ({}){}",
        caller.name,
        caller.role.as_str(),
        if read_only { ", read-only" } else { "" }
    );
    let client = Arc::new(BackendClient(backend));
    let server = McpServer::for_caller(
        Arc::clone(&client),
        read_only,
        env!("CARGO_PKG_VERSION"),
        caller,
    );
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|error| CliError::Failed(format!("cannot start MCP on stdio: {error}")))?;
    let ended = running.waiting().await;
    if let Ok(client) = Arc::try_unwrap(client) {
        client.0.close().await;
    }
    match ended {
        Ok(_) => Ok(0),
        Err(error) => Err(CliError::Failed(format!("the MCP session failed: {error}"))),
    }
}
