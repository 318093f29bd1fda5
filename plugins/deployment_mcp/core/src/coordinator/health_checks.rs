//! The periodic health checks of every enabled environment with a `health_check_url`, and the
//! one place a health report is stored and, when it changed, published.

use std::{sync::Arc, time::Duration};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::Coordinator;
use crate::model::EnvironmentId;
use crate::{
    deployment::HealthReport,
    health,
    persist::records::StoreError,
    wire::{self, Event, HealthEvent, HealthView, View},
};

impl Coordinator {
    /// Periodic health checks of every enabled environment with a `health_check_url`.
    pub async fn health_loop(self: Arc<Self>, stop: CancellationToken) {
        let interval = self.settings.health_check_interval_secs;
        if interval == 0 {
            return;
        }
        let mut ticker = tokio::time::interval(Duration::from_secs(interval));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if let Err(error) = self.check_all_health().await {
                tracing::warn!("periodic health check: {error}");
            }
        }
    }

    async fn check_all_health(&self) -> Result<(), StoreError> {
        let environments = self.catalog.list().await?;
        let limit = Arc::new(Semaphore::new(self.settings.max_parallel));
        let mut checks = tokio::task::JoinSet::new();
        for stored in environments {
            let environment = stored.environment;
            if !environment.enabled || environment.health_check_url.is_none() {
                continue;
            }
            let limit = Arc::clone(&limit);
            let egress = self.egress.clone();
            let timeout = Duration::from_secs(self.settings.health_check_timeout_secs);
            checks.spawn(async move {
                let _permit = limit.acquire_owned().await.ok();
                let url = environment.health_check_url.clone().unwrap_or_default();
                (
                    environment.environment_id,
                    health::check(&egress, &url, timeout).await,
                )
            });
        }
        while let Some(done) = checks.join_next().await {
            let Ok((id, report)) = done else { continue };
            self.record_health(&id, &report).await?;
        }
        Ok(())
    }

    /// Stores an environment's health and publishes it when it changed.
    pub async fn record_health(
        &self,
        id: &EnvironmentId,
        report: &HealthReport,
    ) -> Result<(), StoreError> {
        if self.catalog.set_health(id, report).await? {
            let event = |view| {
                Event::Health(HealthEvent {
                    environment_id: id.clone(),
                    health: HealthView::new(report, view),
                })
            };
            wire::publish(
                self.records.host(),
                None,
                &event(View::Details),
                Some(&event(View::User)),
            );
        }
        self.changed();
        Ok(())
    }
}
