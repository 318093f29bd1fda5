//! The plugin's own OpenAPI document, served at `{mount}/openapi.json` for the host to merge into
//! `/api/openapi.json`. Operations come from the `#[utoipa::path]` attributes on the handlers in
//! `api`'s modules; the bodies they reference are the `wire` types the handlers answer with.
//!
//! Paths here are relative to the mount; the host prefixes them, and adds what it does for every
//! plugin route: key authentication and the error answers (its own and the plugin's share one
//! shape).

use std::sync::OnceLock;

use utoipa::OpenApi;

use crate::wire::{DeploymentEntry, ErrorAnswer, HealthView, TargetResult};
use crate::{
    deployment::{Phase, TargetStatus},
    environments::{ConnectionMethod, EnvironmentJson, EnvironmentType},
    model::{Ec2Instance, Ec2Phase, LogLine, LogStream, Timestamp},
};

#[derive(OpenApi)]
#[openapi(
    info(title = "deployment_mcp", description = "Deployment coordination: environments, deployments, history."),
    paths(
        super::overview::status,
        super::overview::dashboard,
        super::deployments::trigger_local,
        super::deployments::one_click,
        super::deployments::history,
        super::deployments::detail,
        super::deployments::logs,
        super::deployments::cancel,
        super::deployments::retry,
        super::deployments::approve,
        super::deployments::reject,
        super::deployments::rollback,
        super::environments::list,
        super::environments::create,
        super::environments::get,
        super::environments::replace,
        super::environments::delete,
        super::environments::health_check,
        super::windows::list,
        super::windows::create,
        super::windows::get,
        super::windows::delete,
        super::windows::explain,
        super::windows::calendar,
        super::subscriptions::list,
        super::subscriptions::create,
        super::subscriptions::get,
        super::subscriptions::delete,
        super::subscriptions::deliveries,
        super::subscriptions::redeliver,
        super::schedules::list,
        super::schedules::create,
        super::schedules::get,
        super::schedules::delete,
        super::schedules::next,
    ),
    components(schemas(
        EnvironmentJson, EnvironmentType, ConnectionMethod, LogLine, LogStream, Phase,
        TargetStatus, HealthView, TargetResult, DeploymentEntry, ErrorAnswer, Timestamp, Ec2Phase,
        Ec2Instance,
        crate::wire::BatchEvent, crate::wire::GateEvent, crate::notifications::Notice,
    )),
    tags(
        (name = "deployments", description = "Deployments: trigger, follow, decide, roll back, history (the deployment_mcp plugin)"),
        (name = "environments", description = "The target environments and their health (the deployment_mcp plugin)"),
        (name = "windows", description = "Deployment windows: when environments may deploy (the deployment_mcp plugin)"),
        (name = "notifications", description = "Subscriptions to deployment events, and their deliveries (the deployment_mcp plugin)"),
        (name = "schedules", description = "Schedules: deployments started by the calendar (the deployment_mcp plugin)"),
        (name = "overview", description = "What runs now and the dashboard's aggregate (the deployment_mcp plugin)"),
    ),
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
        for route in crate::api::ROUTES {
            if route.endpoint.path == "/openapi.json" {
                continue;
            }
            let path = route.endpoint.path;
            let method = route.endpoint.method.as_str().to_ascii_lowercase();
            let operation = &paths[path][&method];
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
        assert_eq!(described, crate::api::ROUTES.len() - 1);
        // Secrets may be written, never read back.
        let schemas = &document["components"]["schemas"];
        for name in ["EnvironmentView", "ConnectionDetails"] {
            let text = schemas[name].to_string();
            assert!(
                !text.contains("\"api_token") && !text.contains("\"webhook_secret"),
                "{name}: {text}"
            );
        }
        let details = &schemas["ConnectionDetails"];
        assert!(details["properties"]["has_api_token"].is_object());
        // A user's view has none of them.
        assert!(
            details["required"].as_array().is_none_or(Vec::is_empty),
            "{details}"
        );
    }
}
