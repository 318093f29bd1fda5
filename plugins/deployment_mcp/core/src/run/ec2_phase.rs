//! The EC2 phase: the platform instance started (or found running) before any trigger, and
//! the platform's identity handed to the triggers.

use crate::{
    deployment::Phase,
    ec2,
    model::{Ec2Phase, LogSink, LogStream},
};

use super::{Run, RunOwner, PROGRESS_EC2, PROGRESS_TRIGGERING};

impl<O: RunOwner> Run<O> {
    /// The EC2 phase, when it is on; false when it failed (or the run was cancelled in it).
    pub(super) async fn ec2_phase(&self, log: &LogSink) -> bool {
        let mut platform = self.owner.platform_identity(self.ec2.is_some()).await;
        let ok = match &self.ec2 {
            None => {
                log.info("EC2 phase skipped: ec2 is off").await;
                true
            }
            Some(settings) => {
                self.set_phase(Phase::Ec2Deploying, PROGRESS_EC2).await;
                let outcome = tokio::select! {
                    outcome = ec2::ensure_running(settings, log) => Some(outcome),
                    _ = self.stop.requested().cancelled() => None,
                };
                match outcome {
                    Some(Ok(outcome)) => {
                        if platform.is_none() {
                            platform = outcome.platform();
                        }
                        self.record.lock().await.ec2 = outcome.into();
                        self.set_phase(Phase::Ec2Completed, PROGRESS_TRIGGERING)
                            .await;
                        true
                    }
                    Some(Err(message)) => {
                        log.line(LogStream::Error, format!("EC2 phase failed: {message}"))
                            .await;
                        let mut record = self.record.lock().await;
                        record.ec2 = Ec2Phase::Failed {
                            error: message.clone(),
                        };
                        record.errors.push(format!("ec2_deploying: {message}"));
                        false
                    }
                    None => false,
                }
            }
        };
        if let Some((id, ip)) = platform {
            log.info(format!(
                "platform instance {id}{}",
                ip.as_deref()
                    .map(|ip| format!(" at {ip}"))
                    .unwrap_or_default()
            ))
            .await;
            let mut record = self.record.lock().await;
            record.platform_instance_id = Some(id);
            record.platform_ip = ip;
        }
        ok
    }
}
