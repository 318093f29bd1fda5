//! The environment catalog: environments kept in the host's store. The environments file seeds
//! it at start; the API edits it.
//!
//! File entries are imported when new and updated when the file changed them, unless the API
//! edited or deleted them since (the API's word wins until the file entry changes again).
//!
//! Secrets at rest: an environment's `api_token` and `webhook_secret` are stored in their own
//! collection (`SECRETS`), not in the environment record that every list, view and dashboard
//! reads; only a trigger about to run, and a replace that keeps them, read that collection. The
//! store file itself is private to the host (mode 0600 in a 0700 directory).

use std::path::Path;

use plugin_guest::{Condition, StoreOp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::EnvironmentId;
use crate::{
    deployment::{Claim, HealthReport},
    environments::{self, Environment},
    model::{DeploymentId, Timestamp},
    persist::records::{self, collection, Records, StoreError},
};

/// Why the environments file could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file cannot be read or is invalid (the message names the file and the field).
    #[error("{0}")]
    File(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    File,
    Api,
}

/// An environment as the catalog keeps it. `environment` holds no secret (they are in
/// `SECRETS`); the `has_*` flags say which are set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredEnvironment {
    pub environment: Environment,
    pub source: Source,
    pub updated_at: Timestamp,
    /// The file's version of the entry when it was last imported (without its secrets), to
    /// notice file changes.
    #[serde(default)]
    pub file_version: Option<Environment>,
    /// SHA-256 of the file entry's secrets when it was last imported.
    #[serde(default)]
    pub file_secrets_sha256: Option<String>,
    #[serde(default)]
    pub has_api_token: bool,
    #[serde(default)]
    pub has_webhook_secret: bool,
}

/// Every secret value the catalog holds, for masking in deployment logs (one scan of the
/// secrets collection, which holds a row only for environments that have one).
pub async fn secret_values(records: &Records) -> Result<Vec<String>, StoreError> {
    Ok(records
        .scan::<Secrets>(collection::SECRETS, "")
        .await?
        .into_iter()
        .flat_map(|(_, secrets)| [secrets.api_token, secrets.webhook_secret])
        .flatten()
        .collect())
}

/// `given` back to `stored` when it is exactly how `stored` is shown (credentials masked).
fn keep_shown_url(given: &mut String, stored: &str) {
    if given != stored && *given == crate::redact::url(stored) {
        stored.clone_into(given);
    }
}

/// An environment's secrets, stored apart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secrets {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
}

impl Secrets {
    /// Takes the secrets out of an environment.
    fn take(environment: &mut Environment) -> Secrets {
        Secrets {
            api_token: environment.api_token_slot().and_then(Option::take),
            webhook_secret: environment.webhook_secret_slot().and_then(Option::take),
        }
    }

    fn is_empty(&self) -> bool {
        self.api_token.is_none() && self.webhook_secret.is_none()
    }

    fn fingerprint(&self) -> String {
        let mut digest = Sha256::new();
        for secret in [&self.api_token, &self.webhook_secret] {
            match secret {
                Some(secret) => {
                    digest.update([1u8]);
                    digest.update((secret.len() as u64).to_be_bytes());
                    digest.update(secret.as_bytes());
                }
                None => digest.update([0u8]),
            }
        }
        hex::encode(digest.finalize())
    }
}

/// What [`Catalog::delete`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deleted {
    Deleted,
    Missing,
    /// A running deployment holds the environment.
    Busy {
        deployment: String,
    },
}

#[derive(Clone)]
pub struct Catalog {
    records: Records,
}

/// What the import at start did, for the log.
#[derive(Debug, Default)]
pub struct ImportSummary {
    pub added: usize,
    pub removed: usize,
    pub updated: usize,
    pub kept_api_edits: usize,
}

impl Catalog {
    pub fn new(records: Records) -> Catalog {
        Catalog { records }
    }

    /// Imports the environments file into the store: reads the catalog once, then writes the
    /// changes in batches (one transaction per [`IMPORT_BATCH`] writes).
    pub async fn import_file(&self, path: &Path) -> Result<ImportSummary, ImportError> {
        let from_file = environments::load_file(path).map_err(ImportError::File)?;
        let mut summary = ImportSummary::default();
        let stored: std::collections::HashMap<EnvironmentId, StoredEnvironment> = self
            .list()
            .await?
            .into_iter()
            .map(|stored| (stored.environment.environment_id.clone(), stored))
            .collect();
        let deleted: std::collections::HashSet<String> = self
            .records
            .scan::<bool>(collection::DELETED_FILE_ENVIRONMENTS, "")
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let mut ops = Vec::new();
        // An entry that only ever came from the file and left it is gone; API edits stay.
        let listed: std::collections::HashSet<&str> = from_file
            .iter()
            .map(|environment| environment.environment_id.as_str())
            .collect();
        for (id, entry) in &stored {
            if entry.source == Source::File && !listed.contains(id.as_str()) {
                ops.push(StoreOp::delete(collection::ENVIRONMENTS, id));
                summary.removed += 1;
            }
        }
        for mut environment in from_file {
            let id = environment.environment_id.clone();
            if deleted.contains(id.as_str()) {
                summary.kept_api_edits += 1;
                continue;
            }
            let secrets = Secrets::take(&mut environment);
            let fingerprint = secrets.fingerprint();
            let unchanged = |stored: &StoredEnvironment| {
                stored.file_version.as_ref() == Some(&environment)
                    && stored.file_secrets_sha256.as_deref() == Some(fingerprint.as_str())
            };
            let next = match stored.get(&id) {
                None => {
                    summary.added += 1;
                    Some(Source::File)
                }
                // Written by an older version with secrets inline: move them out.
                Some(stored)
                    if stored.environment.api_token().is_some()
                        || stored.environment.webhook_secret().is_some() =>
                {
                    let mut moved = stored.clone();
                    let inline = Secrets::take(&mut moved.environment);
                    ops.extend(save_ops(moved, Some(inline))?);
                    summary.updated += 1;
                    None
                }
                Some(stored) if unchanged(stored) => None,
                Some(stored) if stored.source == Source::Api && stored.file_version.is_some() => {
                    // The API edited it and the file changed since: the file's change wins.
                    summary.updated += 1;
                    Some(Source::File)
                }
                Some(stored) if stored.source == Source::Api => {
                    summary.kept_api_edits += 1;
                    None
                }
                Some(_) => {
                    summary.updated += 1;
                    Some(Source::File)
                }
            };
            if let Some(source) = next {
                ops.extend(save_ops(
                    StoredEnvironment {
                        file_version: Some(environment.clone()),
                        file_secrets_sha256: Some(fingerprint),
                        environment,
                        source,
                        updated_at: Timestamp::now(),
                        has_api_token: false,
                        has_webhook_secret: false,
                    },
                    Some(secrets),
                )?);
            }
        }
        while !ops.is_empty() {
            let rest = ops.split_off(ops.len().min(IMPORT_BATCH));
            self.records
                .apply(std::mem::replace(&mut ops, rest))
                .await?;
        }
        Ok(summary)
    }

    /// Writes an environment and, when given, replaces its secrets; one transaction.
    /// Stores an environment the API created or replaced (`before`: what it replaced), as the
    /// change of the call: the audit entry shows both, every secret as `***`.
    async fn save(
        &self,
        stored: StoredEnvironment,
        secrets: Option<Secrets>,
        before: Option<&StoredEnvironment>,
    ) -> Result<(), StoreError> {
        let after = secrets.as_ref().map(|secrets| {
            shown(
                &stored.environment,
                secrets.api_token.is_some(),
                secrets.webhook_secret.is_some(),
            )
        });
        let mut changes = serde_json::Map::new();
        if let Some(before) = before {
            changes.insert("before".into(), shown_stored(before));
        }
        if let Some(after) = after {
            changes.insert("after".into(), after);
        }
        let id = stored.environment.environment_id.to_string();
        self.records
            .apply_for_call(save_ops(stored, secrets)?, |call| {
                crate::audit::fill(&mut call.resource, || format!("environment:{id}"));
                call.environments = vec![id];
                call.changes = Some(serde_json::Value::Object(changes));
            })
            .await?;
        Ok(())
    }

    /// An environment's secrets, for a trigger about to run it.
    pub async fn secrets(&self, id: &str) -> Result<Secrets, StoreError> {
        Ok(self
            .records
            .get::<Secrets>(collection::SECRETS, id)
            .await?
            .unwrap_or_default())
    }

    /// The environment with its secrets put back, for its trigger.
    pub async fn with_secrets(
        &self,
        mut environment: Environment,
    ) -> Result<Environment, StoreError> {
        let secrets = self.secrets(&environment.environment_id).await?;
        if let Some(slot) = environment.api_token_slot() {
            *slot = secrets.api_token;
        }
        if let Some(slot) = environment.webhook_secret_slot() {
            *slot = secrets.webhook_secret;
        }
        Ok(environment)
    }

    pub async fn list(&self) -> Result<Vec<StoredEnvironment>, StoreError> {
        Ok(self
            .records
            .scan::<StoredEnvironment>(collection::ENVIRONMENTS, "")
            .await?
            .into_iter()
            .map(|(_, stored)| stored)
            .collect())
    }

    pub async fn get(&self, id: &str) -> Result<Option<StoredEnvironment>, StoreError> {
        self.records.get(collection::ENVIRONMENTS, id).await
    }

    /// Adds a new environment; false when the id is taken.
    pub async fn create(&self, mut environment: Environment) -> Result<bool, StoreError> {
        if self.get(&environment.environment_id).await?.is_some() {
            return Ok(false);
        }
        self.records
            .delete(
                collection::DELETED_FILE_ENVIRONMENTS,
                &environment.environment_id,
            )
            .await?;
        let secrets = Secrets::take(&mut environment);
        self.save(
            StoredEnvironment {
                environment,
                source: Source::Api,
                updated_at: Timestamp::now(),
                file_version: None,
                file_secrets_sha256: None,
                has_api_token: false,
                has_webhook_secret: false,
            },
            Some(secrets),
            None,
        )
        .await?;
        Ok(true)
    }

    /// Replaces an environment; secrets not given are kept, and an empty secret clears it. A
    /// `webhook_url` equal to the stored one as the API shows it (password masked) keeps the
    /// stored one, so reading an environment and writing it back changes nothing. Returns the
    /// stored result, or `None` when there is no such environment.
    pub async fn replace(
        &self,
        mut environment: Environment,
    ) -> Result<Option<Environment>, StoreError> {
        let Some(previous) = self.get(&environment.environment_id).await? else {
            return Ok(None);
        };
        let kept = self.secrets(&environment.environment_id).await?;
        if let Some(slot) = environment.api_token_slot() {
            keep_secret(slot, &kept.api_token);
        }
        if let Some(slot) = environment.webhook_secret_slot() {
            keep_secret(slot, &kept.webhook_secret);
        }
        // A URL written back as it was shown (its credentials `***`) keeps the real one.
        if let (Some(given), Some(stored)) = (
            environment.webhook_url_mut(),
            previous.environment.webhook_url(),
        ) {
            keep_shown_url(given, stored);
        }
        if let (Some(given), Some(stored)) = (
            environment.health_check_url.as_mut(),
            previous.environment.health_check_url.as_deref(),
        ) {
            keep_shown_url(given, stored);
        }
        let shown = environment.clone();
        let secrets = Secrets::take(&mut environment);
        self.save(
            StoredEnvironment {
                environment,
                source: Source::Api,
                updated_at: Timestamp::now(),
                file_version: previous.file_version.clone(),
                file_secrets_sha256: previous.file_secrets_sha256.clone(),
                has_api_token: false,
                has_webhook_secret: false,
            },
            Some(secrets),
            Some(&previous),
        )
        .await?;
        Ok(Some(shown))
    }

    /// Deletes an environment unless a running deployment holds it, in one transaction (the
    /// claim is checked where it is taken). A file entry is remembered as deleted.
    pub async fn delete(&self, id: &str) -> Result<Deleted, StoreError> {
        let Some(previous) = self.get(id).await? else {
            return Ok(Deleted::Missing);
        };
        let mut ops = vec![
            StoreOp::check(collection::CLAIMS, id, Condition::Absent),
            StoreOp::delete(collection::ENVIRONMENTS, id),
            StoreOp::delete(collection::SECRETS, id),
            StoreOp::delete(collection::HEALTH, id),
            StoreOp::delete(collection::VERSIONS, id),
        ];
        if previous.file_version.is_some() {
            ops.push(StoreOp::put(
                collection::DELETED_FILE_ENVIRONMENTS,
                id,
                "true".to_owned(),
            ));
        }
        let describe = |call: &mut crate::audit::Subject| {
            crate::audit::fill(&mut call.resource, || format!("environment:{id}"));
            call.environments = vec![id.to_owned()];
            call.changes = Some(serde_json::json!({ "before": shown_stored(&previous) }));
        };
        match self.records.apply_for_call(ops, describe).await? {
            None => Ok(Deleted::Deleted),
            Some(conflict) => Ok(Deleted::Busy {
                deployment: conflict
                    .current
                    .and_then(|text| serde_json::from_str::<Claim>(&text).ok())
                    .map(|claim| claim.deployment_id.into_string())
                    .unwrap_or_default(),
            }),
        }
    }

    pub async fn health(&self, id: &str) -> Result<Option<HealthReport>, StoreError> {
        self.records.get(collection::HEALTH, id).await
    }

    pub async fn all_health(
        &self,
    ) -> Result<std::collections::HashMap<String, HealthReport>, StoreError> {
        Ok(self
            .records
            .scan::<HealthReport>(collection::HEALTH, "")
            .await?
            .into_iter()
            .collect())
    }

    pub async fn versions(&self, id: &str) -> Result<Option<EnvironmentVersions>, StoreError> {
        self.records.get(collection::VERSIONS, id).await
    }

    /// Every environment's versions, from one pass over their collection.
    pub async fn all_versions(
        &self,
    ) -> Result<std::collections::HashMap<String, EnvironmentVersions>, StoreError> {
        Ok(self
            .records
            .scan::<EnvironmentVersions>(collection::VERSIONS, "")
            .await?
            .into_iter()
            .collect())
    }

    /// Records a health report; true when healthiness changed (or was unknown).
    pub async fn set_health(&self, id: &str, report: &HealthReport) -> Result<bool, StoreError> {
        let previous = self.health(id).await?;
        let put = StoreOp::put(
            collection::HEALTH,
            id,
            records::encode(collection::HEALTH, id, report)?,
        );
        // A check asked for by a call is that call's change; the periodic ones are no call's.
        self.records
            .apply_for_call(vec![put], |call| {
                crate::audit::fill(&mut call.resource, || format!("environment:{id}"));
                call.environments = vec![id.to_owned()];
                call.changes = Some(serde_json::json!({ "healthy": report.healthy }));
            })
            .await?;
        Ok(previous.map(|previous| previous.healthy) != Some(report.healthy))
    }
}

/// An environment as an audit entry shows it: its fields as the API takes them, URLs with
/// their credentials masked, and each secret it has as `***`.
fn shown(environment: &Environment, api_token: bool, webhook_secret: bool) -> serde_json::Value {
    let mut value = serde_json::to_value(environments::EnvironmentJson::from(environment.clone()))
        .unwrap_or(serde_json::Value::Null);
    if let Some(fields) = value.as_object_mut() {
        for url in ["webhook_url", "health_check_url"] {
            if let Some(serde_json::Value::String(text)) = fields.get_mut(url) {
                *text = crate::redact::url(text);
            }
        }
        for (secret, present) in [("api_token", api_token), ("webhook_secret", webhook_secret)] {
            if present {
                fields.insert(secret.into(), serde_json::Value::String("***".into()));
            } else {
                fields.remove(secret);
            }
        }
    }
    value
}

fn shown_stored(stored: &StoredEnvironment) -> serde_json::Value {
    shown(
        &stored.environment,
        stored.has_api_token,
        stored.has_webhook_secret,
    )
}

/// Writes per transaction when the environments file is imported.
const IMPORT_BATCH: usize = 1000;

/// The writes that store an environment and, when given, replace its secrets.
fn save_ops(
    mut stored: StoredEnvironment,
    secrets: Option<Secrets>,
) -> Result<Vec<StoreOp>, StoreError> {
    let id = stored.environment.environment_id.clone();
    let mut ops = Vec::with_capacity(2);
    if let Some(secrets) = secrets {
        stored.has_api_token = secrets.api_token.is_some();
        stored.has_webhook_secret = secrets.webhook_secret.is_some();
        ops.push(if secrets.is_empty() {
            StoreOp::delete(collection::SECRETS, &id)
        } else {
            StoreOp::put(
                collection::SECRETS,
                &id,
                records::encode(collection::SECRETS, &id, &secrets)?,
            )
        });
    }
    ops.push(StoreOp::put(
        collection::ENVIRONMENTS,
        &id,
        records::encode(collection::ENVIRONMENTS, &id, &stored)?,
    ));
    Ok(ops)
}

fn keep_secret(new: &mut Option<String>, old: &Option<String>) {
    match new.as_deref() {
        None => new.clone_from(old),
        Some("") => *new = None,
        Some(_) => {}
    }
}

/// What an environment runs: the version of its last successful deployment (or rollback) and
/// the one before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentVersions {
    pub deployed_version: String,
    #[serde(default)]
    pub previous_version: Option<String>,
    /// The deployment that set `deployed_version`.
    pub deployment_id: DeploymentId,
    pub updated_at: Timestamp,
}

impl EnvironmentVersions {
    /// The versions once `version` is deployed over `before` by `deployment_id`.
    pub fn after(
        before: Option<&EnvironmentVersions>,
        version: &str,
        deployment_id: &DeploymentId,
        now: Timestamp,
    ) -> EnvironmentVersions {
        let previous_version = match before {
            Some(before) if before.deployed_version != version => {
                Some(before.deployed_version.clone())
            }
            Some(before) => before.previous_version.clone(),
            None => None,
        };
        EnvironmentVersions {
            deployed_version: version.to_owned(),
            previous_version,
            deployment_id: deployment_id.clone(),
            updated_at: now,
        }
    }
}
