//! `deployment-mcp mcp`: the deployment tools and resources over the Model Context Protocol on
//! stdio, for a local agent. The same server the plugin serves at `{mount}/mcp`, reaching the
//! API through this command's typed client: in-process on the environments file (as admin, like
//! every in-process command), or a host with `--server URL --api-key KEY` (as that key's role).
//! Stdout carries the protocol only; diagnostics go to stderr.

use deployment_mcp_core::{
    client::DeploymentApi as _,
    mcp::{Fixed, McpServer},
};
use rmcp::ServiceExt as _;

use crate::{backend::Backend, CliError};

/// Serves MCP on stdin/stdout until the client closes stdin.
pub async fn serve(backend: Backend, read_only: bool) -> Result<u8, CliError> {
    let caller = backend.api().whoami().await?;
    eprintln!(
        "deployment-mcp: serving MCP on stdio as {} ({}){}",
        caller.name,
        caller.role.as_str(),
        if read_only { ", read-only" } else { "" }
    );
    // The client's caller is fixed: the key's, or the local admin.
    let server = McpServer::for_caller(
        Fixed(backend.api().clone()),
        read_only,
        env!("CARGO_PKG_VERSION"),
        caller,
    );
    let ended = match server.serve(rmcp::transport::stdio()).await {
        Ok(running) => running.waiting().await.map(|_| ()),
        Err(error) => {
            backend.close().await;
            return Err(CliError::Failed(format!(
                "cannot start MCP on stdio: {error}"
            )));
        }
    };
    backend.close().await;
    match ended {
        Ok(()) => Ok(0),
        Err(error) => Err(CliError::Failed(format!("the MCP session failed: {error}"))),
    }
}
