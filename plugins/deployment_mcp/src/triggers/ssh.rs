//! `ssh`: runs the init script on the environment over SSH.

use super::{Trigger, TriggerContext, TriggerFailure, TriggerResult};
use crate::environments::Environment;

pub struct SshTrigger {
    environment: Environment,
}

impl SshTrigger {
    pub fn new(environment: Environment) -> SshTrigger {
        SshTrigger { environment }
    }
}

impl Trigger for SshTrigger {
    async fn run(&self, _context: &TriggerContext) -> TriggerResult {
        Err(TriggerFailure::failed(format!(
            "ssh to {:?} is being written",
            self.environment.host
        )))
    }
}
