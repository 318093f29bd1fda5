//! Recovery at start: the runs of processes that are gone (the host, or the plugin's process,
//! died while they ran) are ended `interrupted` with everything recorded until then, and what
//! they held (running entries, claims) is freed. Deployments parked at a gate have no run to
//! lose and are left as they are.

use std::{collections::HashSet, time::SystemTime};

use super::Coordinator;
use crate::{
    deployment::{Phase, TargetStatus},
    model::{LogStream, Timestamp},
    persist::{self, records::StoreError, Lease, Outcome, Writes},
};

impl Coordinator {
    /// Marks runs of boots that are gone as interrupted: the host (or the plugin's process)
    /// died while they ran. Runs of this boot belong to a sibling copy (hot swap), and runs of
    /// a boot in `live_boots` to another process the host says is alive (an older one still
    /// finishing after a swap): both are left alone. The unfinished deployments are found
    /// through the status index, not by reading the whole history; each is closed in one
    /// transaction that holds only if its record is still what was read.
    pub async fn recover(&self, live_boots: &[String]) -> Result<usize, StoreError> {
        let alive = |boot: &str| boot == self.boot_id || live_boots.iter().any(|live| live == boot);
        let mut recovered = 0;
        let unfinished = crate::persist::history::History::new(self.records.clone())
            .unfinished()
            .await?;
        // A deployment waiting at its gate has no run to lose: it keeps waiting, with its
        // claims, until someone decides it (or its deadline passes).
        let parked: HashSet<String> = unfinished
            .iter()
            .filter(|(_, entry)| entry.status == Phase::AwaitingApproval)
            .map(|(_, entry)| entry.deployment_id.to_string())
            .collect();
        for (_, entry) in unfinished {
            if parked.contains(entry.deployment_id.as_str()) {
                continue;
            }
            // An unreadable record is left as it is; the others are still recovered.
            let (text, mut record) = match self
                .deployments()
                .read_for_update(&entry.deployment_id)
                .await
            {
                Ok(Some(read)) => read,
                Ok(None) | Err(StoreError::Decode { .. }) => continue,
                Err(error) => return Err(error),
            };
            if alive(&record.boot_id)
                || record.status.is_terminal()
                || record.status == Phase::AwaitingApproval
            {
                continue;
            }
            let now = SystemTime::now();
            let phase = record.status;
            // Written under the lease of the process that died: the claims it held are its.
            let lease = Lease::sole(&record.boot_id);
            let mut writes = Writes::new(&self.records, &lease);
            let mut failed = Vec::new();
            for mut target in self.deployments().targets(&record.deployment_id).await? {
                if !target.status.is_terminal() {
                    target.error = Some(format!(
                        "the host stopped while this environment was {}",
                        target.status.as_str()
                    ));
                    target.status = TargetStatus::Cancelled;
                    target.finished_at = Some(Timestamp::from(now));
                    writes.target(&record.deployment_id, &target)?;
                }
                if target.status != TargetStatus::Succeeded {
                    failed.push(target.environment_id.clone());
                }
            }
            let message = format!(
                "interrupted: the host stopped during phase {}; everything recorded until then is kept",
                phase.as_str()
            );
            self.log_line(&mut writes, &mut record, LogStream::Error, &message)
                .await?;
            record.status = Phase::Interrupted;
            record.errors.push(message);
            record.finished_at = Some(Timestamp::from(now));
            writes.moved(&record, phase, &failed, Some(&text))?;
            // A conflict: the record changed since it was read (another copy ended it).
            if writes.commit().await? == Outcome::Committed {
                recovered += 1;
            }
        }
        // Running entries and claims of runs that died with an earlier boot free their
        // environments.
        persist::runs::forget_dead_runs(&self.records, alive, &parked).await?;
        Ok(recovered)
    }
}
