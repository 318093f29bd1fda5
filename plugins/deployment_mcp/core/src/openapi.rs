//! The plugin's own OpenAPI document, served at `{mount}/openapi.json` for the host to merge into
//! `/api/openapi.json`. Operations come from the `#[utoipa::path]` attributes on the handlers in
//! `routes`; the answers they reference are described in `wire`.
//!
//! Paths here are relative to the mount; the host prefixes them, and adds what it does for every
//! plugin route: key authentication and the error answers (its own and the plugin's share one
//! shape).

use std::sync::OnceLock;

use utoipa::OpenApi;

use crate::{
    deployment::{HealthReport, HistoryEntry, Phase, TargetRecord, TargetStatus},
    environments::{ConnectionMethod, EnvironmentJson, EnvironmentType},
    triggers::{LogLine, LogStream},
};

#[derive(OpenApi)]
#[openapi(
    info(title = "deployment_mcp", description = "Deployment coordination: environments, deployments, history."),
    paths(
        crate::routes::status,
        crate::routes::dashboard,
        crate::routes::trigger_local,
        crate::routes::one_click,
        crate::routes::history,
        crate::routes::detail,
        crate::routes::logs,
        crate::routes::cancel,
        crate::routes::retry,
        crate::routes::list_environments,
        crate::routes::create_environment,
        crate::routes::get_environment,
        crate::routes::replace_environment,
        crate::routes::delete_environment,
        crate::routes::health_check,
    ),
    components(schemas(
        EnvironmentJson, EnvironmentType, ConnectionMethod, LogLine, LogStream, Phase,
        TargetStatus, HealthReport, TargetRecord, HistoryEntry,
    )),
    tags((name = "deployment", description = "Deployment coordination (the deployment_mcp plugin)")),
)]
struct ApiDoc;

/// The document, rendered once per loaded copy.
pub fn document() -> &'static [u8] {
    static DOCUMENT: OnceLock<Vec<u8>> = OnceLock::new();
    DOCUMENT.get_or_init(|| serde_json::to_vec(&ApiDoc::openapi()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described() {
        let document: serde_json::Value = serde_json::from_slice(document()).unwrap();
        let paths = document["paths"].as_object().unwrap();
        // Every route of the table, but the document itself, is described with a success answer.
        for route in crate::routes::ROUTES {
            if route.pattern == ["openapi.json"] {
                continue;
            }
            let path = format!("/{}", route.pattern.join("/"));
            let method = route.method.to_ascii_lowercase();
            let operation = &paths[&path][&method];
            assert!(operation.is_object(), "{method} {path} is not described");
            let success = operation["responses"]
                .as_object()
                .is_some_and(|answers| answers.keys().any(|code| code.starts_with('2')));
            assert!(success, "{method} {path} has no success answer");
        }
        // And nothing else.
        let described: usize = paths
            .values()
            .map(|methods| methods.as_object().map_or(0, |m| m.len()))
            .sum();
        assert_eq!(described, crate::routes::ROUTES.len() - 1);
        // Secrets may be written, never read back.
        let view = &document["components"]["schemas"]["EnvironmentView"]["properties"];
        assert!(view["api_token"].is_null() && view["webhook_secret"].is_null());
        assert!(view["has_api_token"].is_object());
    }
}
