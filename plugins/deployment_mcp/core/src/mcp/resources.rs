//! The resources: `environment://{id}`, `deployment://{id}` and (developers and above)
//! `deployment://{id}/log`, listed for the caller's role and read through the same calls as the
//! tools, so a resource shows what the matching tool would.

use rmcp::model::{Resource, ResourceTemplate};
use serde_json::Value;

use super::{
    tools::{deployment, environment, log_page},
    types::{LogArguments, MAX_LOG_LINES},
    ToolError,
};
use crate::{
    client::DeploymentApi,
    wire::{DeploymentEntry, HistoryQuery},
};

/// Deployments listed as resources.
const LISTED_DEPLOYMENTS: u32 = 20;

/// The URI templates.
pub(super) fn templates() -> Vec<ResourceTemplate> {
    vec![
        ResourceTemplate::new("environment://{id}", "environment"),
        ResourceTemplate::new("deployment://{id}", "deployment"),
        ResourceTemplate::new("deployment://{id}/log", "deployment log"),
    ]
}

fn json_resource(uri: String, name: String) -> Resource {
    Resource::new(uri, name).with_mime_type("application/json")
}

/// Each environment, and the newest deployments with their log (the log for developers and
/// above): the history's first page for them, the running and the latest finished for users.
pub(super) async fn list<A: DeploymentApi>(
    api: &A,
    developer: bool,
) -> Result<Vec<Resource>, ToolError> {
    let mut found = Vec::new();
    for card in api.dashboard().await?.environments {
        let id = card.environment.environment_id;
        found.push(json_resource(
            format!("environment://{id}"),
            format!("environment {id}"),
        ));
    }
    let deployments: Vec<DeploymentEntry> = if developer {
        let query = HistoryQuery {
            limit: Some(LISTED_DEPLOYMENTS),
            ..HistoryQuery::default()
        };
        api.history(&query).await?.history
    } else {
        let status = api.status().await?;
        status.active.into_iter().chain(status.latest).collect()
    };
    for entry in deployments {
        let id = entry.deployment_id;
        found.push(json_resource(
            format!("deployment://{id}"),
            format!("deployment {id}"),
        ));
        if developer {
            found.push(json_resource(
                format!("deployment://{id}/log"),
                format!("log of deployment {id}"),
            ));
        }
    }
    Ok(found)
}

/// One resource's content.
pub(super) async fn read<A: DeploymentApi>(
    api: &A,
    developer: bool,
    uri: &str,
) -> Result<Value, ToolError> {
    let value = if let Some(id) = uri.strip_prefix("environment://") {
        serde_json::to_value(environment(api, id).await?)
    } else if let Some(rest) = uri.strip_prefix("deployment://") {
        match rest.strip_suffix("/log") {
            Some(id) => {
                let last = LogArguments {
                    id: id.to_owned(),
                    tail: Some(MAX_LOG_LINES),
                    offset: None,
                    limit: None,
                };
                serde_json::to_value(log_page(api, last).await?)
            }
            None => serde_json::to_value(deployment(api, developer, rest).await?),
        }
    } else {
        return Err(ToolError::new(
            "not_found",
            format!("{uri:?} is not a resource here: environment://{{id}}, deployment://{{id}} or deployment://{{id}}/log"),
        ));
    };
    value.map_err(|error| ToolError::new("internal", format!("cannot encode {uri}: {error}")))
}
