//! The environment catalog: environments kept in the host's store. The environments file seeds
//! it at start; the API edits it.
//!
//! File entries are imported when new and updated when the file changed them, unless the API
//! edited or deleted them since (the API's word wins until the file entry changes again).

use std::{path::Path, time::SystemTime};

use serde::{Deserialize, Serialize};

use crate::{
    deployment::HealthReport,
    environments::{self, Environment},
    records::{collection, Records},
    triggers::timestamp,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    File,
    Api,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredEnvironment {
    pub environment: Environment,
    pub source: Source,
    pub updated_at: String,
    /// The file's version of the entry when it was last imported, to notice file changes.
    #[serde(default)]
    pub file_version: Option<Environment>,
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

    /// Imports the environments file into the store.
    pub async fn import_file(&self, path: &Path) -> Result<ImportSummary, String> {
        let from_file = environments::load_file(path)?;
        let mut summary = ImportSummary::default();
        // An entry that only ever came from the file and left it is gone; API edits stay.
        let listed: std::collections::HashSet<&str> = from_file
            .iter()
            .map(|environment| environment.environment_id.as_str())
            .collect();
        for stored in self.list().await? {
            let id = stored.environment.environment_id.as_str();
            if stored.source == Source::File && !listed.contains(id) {
                self.records.delete(collection::ENVIRONMENTS, id).await?;
                summary.removed += 1;
            }
        }
        for environment in from_file {
            let id = environment.environment_id.clone();
            if self
                .records
                .get::<bool>(collection::DELETED_FILE_ENVIRONMENTS, &id)
                .await?
                .is_some()
            {
                summary.kept_api_edits += 1;
                continue;
            }
            let stored: Option<StoredEnvironment> =
                self.records.get(collection::ENVIRONMENTS, &id).await?;
            let next = match stored {
                None => {
                    summary.added += 1;
                    Some(Source::File)
                }
                Some(stored) if stored.file_version.as_ref() == Some(&environment) => None,
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
                self.save(StoredEnvironment {
                    file_version: Some(environment.clone()),
                    environment,
                    source,
                    updated_at: timestamp(SystemTime::now()),
                })
                .await?;
            }
        }
        Ok(summary)
    }

    async fn save(&self, stored: StoredEnvironment) -> Result<(), String> {
        let id = stored.environment.environment_id.clone();
        self.records
            .put(collection::ENVIRONMENTS, &id, &stored)
            .await
    }

    pub async fn list(&self) -> Result<Vec<StoredEnvironment>, String> {
        Ok(self
            .records
            .scan::<StoredEnvironment>(collection::ENVIRONMENTS, "")
            .await?
            .into_iter()
            .map(|(_, stored)| stored)
            .collect())
    }

    pub async fn get(&self, id: &str) -> Result<Option<StoredEnvironment>, String> {
        self.records.get(collection::ENVIRONMENTS, id).await
    }

    /// Adds a new environment; false when the id is taken.
    pub async fn create(&self, environment: Environment) -> Result<bool, String> {
        if self.get(&environment.environment_id).await?.is_some() {
            return Ok(false);
        }
        self.records
            .delete(
                collection::DELETED_FILE_ENVIRONMENTS,
                &environment.environment_id,
            )
            .await?;
        self.save(StoredEnvironment {
            environment,
            source: Source::Api,
            updated_at: timestamp(SystemTime::now()),
            file_version: None,
        })
        .await?;
        Ok(true)
    }

    /// Replaces an environment; secrets not given are kept, and an empty secret clears it.
    /// Returns the stored result, or `None` when there is no such environment.
    pub async fn replace(
        &self,
        mut environment: Environment,
    ) -> Result<Option<Environment>, String> {
        let Some(previous) = self.get(&environment.environment_id).await? else {
            return Ok(None);
        };
        keep_secret(&mut environment.api_token, &previous.environment.api_token);
        keep_secret(
            &mut environment.webhook_secret,
            &previous.environment.webhook_secret,
        );
        self.save(StoredEnvironment {
            environment: environment.clone(),
            source: Source::Api,
            updated_at: timestamp(SystemTime::now()),
            file_version: previous.file_version,
        })
        .await?;
        Ok(Some(environment))
    }

    /// Deletes an environment; false when there was none. A file entry is remembered as deleted.
    pub async fn delete(&self, id: &str) -> Result<bool, String> {
        let Some(previous) = self.get(id).await? else {
            return Ok(false);
        };
        if previous.file_version.is_some() {
            self.records
                .put(collection::DELETED_FILE_ENVIRONMENTS, id, &true)
                .await?;
        }
        self.records.delete(collection::ENVIRONMENTS, id).await?;
        self.records.delete(collection::HEALTH, id).await?;
        Ok(true)
    }

    pub async fn health(&self, id: &str) -> Result<Option<HealthReport>, String> {
        self.records.get(collection::HEALTH, id).await
    }

    pub async fn all_health(
        &self,
    ) -> Result<std::collections::HashMap<String, HealthReport>, String> {
        Ok(self
            .records
            .scan::<HealthReport>(collection::HEALTH, "")
            .await?
            .into_iter()
            .collect())
    }

    /// Records a health report; true when healthiness changed (or was unknown).
    pub async fn set_health(&self, id: &str, report: &HealthReport) -> Result<bool, String> {
        let previous = self.health(id).await?;
        self.records.put(collection::HEALTH, id, report).await?;
        Ok(previous.map(|previous| previous.healthy) != Some(report.healthy))
    }
}

fn keep_secret(new: &mut Option<String>, old: &Option<String>) {
    match new.as_deref() {
        None => new.clone_from(old),
        Some("") => *new = None,
        Some(_) => {}
    }
}

/// How the API shows a stored environment: no secrets, plus its source and last health.
pub fn public_view(stored: &StoredEnvironment, health: Option<&HealthReport>) -> serde_json::Value {
    let mut view = stored.environment.public_view();
    view["source"] = serde_json::json!(stored.source);
    view["updated_at"] = serde_json::json!(stored.updated_at);
    view["last_health"] = serde_json::json!(health);
    view
}
