//! `libdeployment_mcp.so`: deployment coordination for the PowerAutomation host, as the plugin
//! library the host loads. Everything it does lives in `deployment-mcp-core`; this crate only
//! exports the root module (and, through `export_plugin!`, the copy's own heap).

deployment_mcp_core::export_deployment_mcp!();
