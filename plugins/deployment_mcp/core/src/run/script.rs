//! A script of what each environment does when triggered and how healthy it is, for tests of
//! the run itself: triggers wait in the runtime's (virtual) time and then succeed, fail or never
//! answer, and every trigger is recorded, so a test with paused time checks phases, timeouts,
//! cancels, gates and rollbacks in milliseconds, without a process or a socket.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::{
    deployment::HealthReport,
    environments::Environment,
    model::Timestamp,
    triggers::{TriggerContext, TriggerFailure, TriggerResult, TriggerSuccess},
};

/// What a trigger does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Answers success after this long.
    Succeed(Duration),
    /// Answers a failure after this long.
    Fail(Duration),
    /// Never answers (its timeout or a cancel ends it).
    Hang,
}

/// One trigger as it was called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub environment: String,
    pub version: String,
    pub rollback: bool,
}

#[derive(Default)]
pub struct Script {
    /// What each environment does; the rest succeed at once.
    steps: Mutex<HashMap<String, Step>>,
    /// What a rollback of each environment does; the rest succeed at once.
    rollbacks: Mutex<HashMap<String, Step>>,
    /// Health URLs that answer unhealthy; the rest are healthy.
    unhealthy: Mutex<Vec<String>>,
    calls: Mutex<Vec<Call>>,
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Script {
    pub fn new() -> Arc<Script> {
        Arc::new(Script::default())
    }

    /// `environment`'s deployments do `step`.
    pub fn on(&self, environment: &str, step: Step) -> &Script {
        locked(&self.steps).insert(environment.to_owned(), step);
        self
    }

    /// `environment`'s rollbacks do `step`.
    pub fn on_rollback(&self, environment: &str, step: Step) -> &Script {
        locked(&self.rollbacks).insert(environment.to_owned(), step);
        self
    }

    /// Health checks of `url` answer unhealthy.
    pub fn unhealthy(&self, url: &str) -> &Script {
        locked(&self.unhealthy).push(url.to_owned());
        self
    }

    /// Every trigger so far, in the order they started.
    pub fn calls(&self) -> Vec<Call> {
        locked(&self.calls).clone()
    }

    pub fn trigger(self: &Arc<Script>, environment: &Environment) -> ScriptedTrigger {
        ScriptedTrigger {
            script: Arc::clone(self),
            environment: environment.environment_id.to_string(),
        }
    }

    pub fn health(&self, url: &str) -> HealthReport {
        let healthy = !locked(&self.unhealthy).iter().any(|bad| bad == url);
        HealthReport {
            healthy,
            url: url.to_owned(),
            checked_at: Timestamp::now(),
            http_status: Some(if healthy { 200 } else { 503 }),
            error: (!healthy).then(|| format!("{url} answered 503")),
            latency_ms: 0,
        }
    }
}

pub struct ScriptedTrigger {
    script: Arc<Script>,
    environment: String,
}

impl ScriptedTrigger {
    pub async fn run(&self, context: &TriggerContext) -> TriggerResult {
        let steps = if context.rollback {
            &self.script.rollbacks
        } else {
            &self.script.steps
        };
        let step = locked(steps)
            .get(&self.environment)
            .copied()
            .unwrap_or(Step::Succeed(Duration::ZERO));
        locked(&self.script.calls).push(Call {
            environment: self.environment.clone(),
            version: context.version.clone(),
            rollback: context.rollback,
        });
        match step {
            Step::Succeed(after) => {
                tokio::time::sleep(after).await;
                Ok(TriggerSuccess {
                    exit_code: Some(0),
                    detail: Some("scripted".into()),
                })
            }
            Step::Fail(after) => {
                tokio::time::sleep(after).await;
                Err(TriggerFailure::failed("scripted failure").with_exit_code(Some(1)))
            }
            Step::Hang => std::future::pending().await,
        }
    }
}
