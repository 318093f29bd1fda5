//! The deployment windows as stored: one record per window, by id, with who made it and when.
//! A create or a delete is the call's change, written with its audit entry.

use serde::{Deserialize, Serialize};

pub use super::named::Created;
use super::{
    named::{self, Described},
    records::{collection, Records, StoreError},
};
use crate::{
    model::Timestamp,
    windows::{Window, WindowSpec, Windows, MAX_WINDOWS},
};

/// A window's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredWindow {
    pub spec: WindowSpec,
    pub created_by: String,
    pub created_at: Timestamp,
}

impl StoredWindow {
    /// The window as the API shows it: as created, with who created it and when.
    pub fn view(self) -> WindowSpec {
        WindowSpec {
            created_by: Some(self.created_by),
            created_at: Some(self.created_at),
            ..self.spec
        }
    }
}

/// Every window as stored, in id order.
pub async fn all(records: &Records) -> Result<Vec<StoredWindow>, StoreError> {
    Ok(records
        .scan::<StoredWindow>(collection::WINDOWS, "")
        .await?
        .into_iter()
        .map(|(_, stored)| stored)
        .collect())
}

/// Every window, checked, for the checks of a trigger or an explanation. A stored window that
/// no longer reads (its zone gone from this host's database) is logged and left out.
pub async fn windows(records: &Records) -> Result<Windows, StoreError> {
    let checked = all(records)
        .await?
        .into_iter()
        .filter_map(|stored| match Window::new(&stored.spec) {
            Ok(window) => Some(window),
            Err(error) => {
                tracing::error!(window = %stored.spec.id, "a stored deployment window cannot be read, so it is not applied: {error}");
                None
            }
        })
        .collect();
    Ok(Windows::new(checked))
}

pub async fn get(records: &Records, id: &str) -> Result<Option<StoredWindow>, StoreError> {
    records.get(collection::WINDOWS, id).await
}

/// Stores a new window (its spec already checked).
pub async fn create(records: &Records, stored: &StoredWindow) -> Result<Created, StoreError> {
    let id = &stored.spec.id;
    let described = Described {
        resource: format!("window:{id}"),
        environments: stored.spec.environments.clone().unwrap_or_default(),
        changes: serde_json::json!({ "after": serde_json::to_value(&stored.spec).unwrap_or_default() }),
        reason: stored.spec.reason.clone(),
    };
    named::create(
        records,
        collection::WINDOWS,
        id,
        stored,
        MAX_WINDOWS,
        Vec::new(),
        described,
    )
    .await
}

/// Removes a window; `None` when there was none.
pub async fn delete(records: &Records, id: &str) -> Result<Option<StoredWindow>, StoreError> {
    named::delete(
        records,
        collection::WINDOWS,
        id,
        async |_: &StoredWindow| Ok(Vec::new()),
        |stored: &StoredWindow| Described {
            resource: format!("window:{id}"),
            environments: stored.spec.environments.clone().unwrap_or_default(),
            changes: serde_json::json!({ "before": serde_json::to_value(&stored.spec).unwrap_or_default() }),
            reason: None,
        },
    )
    .await
}
