//! How a run reaches its environments: the trigger of each one's connection and the health
//! checks of its URL, through the egress that confines them to `allowed_target_networks`. In
//! the core's own tests a [`super::script::Script`] stands in for the network, in virtual time.

use std::time::Duration;

use crate::{
    deployment::HealthReport, egress::Egress, environments::Environment, health,
    triggers::AnyTrigger,
};

#[derive(Clone)]
pub enum Reach {
    /// Through the network, as the product always does.
    Network(Egress),
    /// A script of outcomes, for tests of the run itself.
    #[cfg(test)]
    Scripted(std::sync::Arc<super::script::Script>),
}

impl Reach {
    /// The trigger for `environment` (with its secrets).
    pub fn trigger(&self, environment: &Environment) -> AnyTrigger {
        match self {
            Reach::Network(egress) => AnyTrigger::for_environment(environment, egress),
            #[cfg(test)]
            Reach::Scripted(script) => AnyTrigger::Scripted(script.trigger(environment)),
        }
    }

    /// One health check of `url`.
    pub async fn check(&self, url: &str, per_request: Duration) -> HealthReport {
        match self {
            Reach::Network(egress) => health::check(egress, url, per_request).await,
            #[cfg(test)]
            Reach::Scripted(script) => script.health(url),
        }
    }

    /// Health checks of `url` until it is healthy or `deadline` passes.
    pub async fn wait_healthy(
        &self,
        url: &str,
        per_request: Duration,
        deadline: std::time::Instant,
    ) -> HealthReport {
        match self {
            Reach::Network(egress) => {
                health::wait_healthy(egress, url, per_request, deadline).await
            }
            #[cfg(test)]
            Reach::Scripted(script) => script.health(url),
        }
    }
}
