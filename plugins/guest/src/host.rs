//! The host's services as plugin code calls them: [`Host`] wraps the `HostServices` the host
//! lent (log, publish, the store) in std types, and [`StoreOp`], [`Condition`], [`Write`] and
//! [`Conflict`] describe an atomic conditional batch ([`Host::store_apply`]).
//!
//! Kept apart from the runtime so that plugin code using the store sees only this, and the
//! conversion to the ABI's store types lives in one place.

use std::sync::Arc;

use abi_stable::std_types::{ROption, RResult, RStr, RString, RVec};
use plugin_api::{HostServicesBox, LogLevel, StoreCondition, StoreWrite};

/// The host's services, wrapped in std types. Cheap to clone. The calls may block on SQLite:
/// call them from `spawn_blocking` or accept a short stall of one worker.
#[derive(Clone)]
pub struct Host {
    services: Arc<HostServicesBox>,
}

impl Host {
    /// Wraps the services the host lent; plugins get this from [`Startup`](crate::Startup).
    pub fn new(services: HostServicesBox) -> Host {
        Host {
            services: Arc::new(services),
        }
    }

    pub fn log(&self, level: LogLevel, target: &str, message: &str) {
        self.services
            .log(level, RStr::from_str(target), RStr::from_str(message));
    }

    pub fn publish(&self, kind: &str, data: &serde_json::Value) -> u64 {
        let text = data.to_string();
        self.services
            .publish(RStr::from_str(kind), RStr::from_str(&text))
    }

    /// Publishes `data` to developers and admins and `user_data` to users (`None`: users do not
    /// get this event).
    pub fn publish_by_role(
        &self,
        kind: &str,
        data: &serde_json::Value,
        user_data: Option<&serde_json::Value>,
    ) -> u64 {
        let text = data.to_string();
        let user_text = user_data.map(serde_json::Value::to_string);
        let user = match &user_text {
            Some(text) => ROption::RSome(RStr::from_str(text)),
            None => ROption::RNone,
        };
        self.services
            .publish_by_role(RStr::from_str(kind), RStr::from_str(&text), user)
    }

    /// Applies `ops` atomically: all of them when every condition holds, else none and the
    /// first conflict.
    pub fn store_apply(&self, ops: &[StoreOp]) -> Result<Option<Conflict>, String> {
        self.store_apply_audited(ops, &[])
    }

    /// [`Host::store_apply`], with `audit` (audit drafts, JSON) chained onto the host's audit
    /// log in the same transaction when the batch applies.
    pub fn store_apply_audited(
        &self,
        ops: &[StoreOp],
        audit: &[String],
    ) -> Result<Option<Conflict>, String> {
        let exported: RVec<plugin_api::StoreOp> = ops.iter().map(StoreOp::export).collect();
        let drafts: RVec<RString> = audit
            .iter()
            .map(|draft| RString::from(draft.as_str()))
            .collect();
        let answer = if drafts.is_empty() {
            self.services.store_apply(exported.as_rslice())
        } else {
            self.services
                .store_apply_audited(exported.as_rslice(), drafts.as_rslice())
        };
        match answer {
            RResult::ROk(conflict) => Ok(conflict.into_option().map(|conflict| Conflict {
                index: conflict.index as usize,
                current: conflict.current.into_option().map(String::from),
            })),
            RResult::RErr(error) => Err(error.into()),
        }
    }

    /// A page of the host's audit log: `query` and the answer are JSON (see
    /// `HostServices::audit_query`).
    pub fn audit_query(&self, query: &str) -> Result<String, String> {
        self.services
            .audit_query(RStr::from_str(query))
            .into_result()
            .map(String::from)
            .map_err(String::from)
    }

    pub fn store_put(&self, collection: &str, key: &str, value: &str) -> Result<(), String> {
        self.services
            .store_put(collection.into(), key.into(), value.into())
            .into_result()
            .map_err(String::from)
    }

    pub fn store_get(&self, collection: &str, key: &str) -> Result<Option<String>, String> {
        match self.services.store_get(collection.into(), key.into()) {
            RResult::ROk(value) => Ok(value.into_option().map(String::from)),
            RResult::RErr(error) => Err(error.into()),
        }
    }

    pub fn store_delete(&self, collection: &str, key: &str) -> Result<bool, String> {
        self.services
            .store_delete(collection.into(), key.into())
            .into_result()
            .map_err(String::from)
    }

    pub fn store_list(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, String)>, String> {
        let after = match after {
            Some(key) => ROption::RSome(RStr::from_str(key)),
            None => ROption::RNone,
        };
        match self
            .services
            .store_list(RStr::from_str(collection), after, limit)
        {
            RResult::ROk(rows) => Ok(rows
                .into_iter()
                .map(|row| (String::from(row.key), String::from(row.value)))
                .collect()),
            RResult::RErr(error) => Err(error.into()),
        }
    }
}

/// What must hold for one [`StoreOp`] of an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    Always,
    /// The key does not exist.
    Absent,
    /// The key holds exactly this value.
    Equals(String),
}

/// What one [`StoreOp`] does once every condition of its batch held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put(String),
    Delete,
    /// Nothing: the operation only checks its condition.
    Keep,
    /// Adds to the key's integer value (absent: 0).
    Add(i64),
}

/// One operation of an atomic batch ([`Host::store_apply`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOp {
    pub collection: String,
    pub key: String,
    pub condition: Condition,
    pub write: Write,
}

impl StoreOp {
    pub fn put(collection: &str, key: &str, value: String) -> StoreOp {
        StoreOp {
            collection: collection.to_owned(),
            key: key.to_owned(),
            condition: Condition::Always,
            write: Write::Put(value),
        }
    }

    /// Writes only if the key does not exist yet.
    pub fn insert(collection: &str, key: &str, value: String) -> StoreOp {
        StoreOp::put(collection, key, value).when(Condition::Absent)
    }

    pub fn delete(collection: &str, key: &str) -> StoreOp {
        StoreOp {
            collection: collection.to_owned(),
            key: key.to_owned(),
            condition: Condition::Always,
            write: Write::Delete,
        }
    }

    /// Adds `amount` to the key's integer value (absent: 0).
    pub fn add(collection: &str, key: &str, amount: i64) -> StoreOp {
        StoreOp {
            collection: collection.to_owned(),
            key: key.to_owned(),
            condition: Condition::Always,
            write: Write::Add(amount),
        }
    }

    /// Only checks that `condition` holds for the key.
    pub fn check(collection: &str, key: &str, condition: Condition) -> StoreOp {
        StoreOp {
            collection: collection.to_owned(),
            key: key.to_owned(),
            condition,
            write: Write::Keep,
        }
    }

    pub fn when(mut self, condition: Condition) -> StoreOp {
        self.condition = condition;
        self
    }

    fn export(&self) -> plugin_api::StoreOp {
        let (condition, expected) = match &self.condition {
            Condition::Always => (StoreCondition::Always, RString::new()),
            Condition::Absent => (StoreCondition::Absent, RString::new()),
            Condition::Equals(value) => (StoreCondition::Equals, RString::from(value.as_str())),
        };
        let (write, value) = match &self.write {
            Write::Put(value) => (StoreWrite::Put, RString::from(value.as_str())),
            Write::Delete => (StoreWrite::Delete, RString::new()),
            Write::Keep => (StoreWrite::Keep, RString::new()),
            Write::Add(amount) => (StoreWrite::Add, RString::from(amount.to_string())),
        };
        plugin_api::StoreOp {
            collection: RString::from(self.collection.as_str()),
            key: RString::from(self.key.as_str()),
            condition,
            expected,
            write,
            value,
        }
    }
}

/// Why a batch was not applied: the first operation whose condition failed, and what its key
/// holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub index: usize,
    pub current: Option<String>,
}
