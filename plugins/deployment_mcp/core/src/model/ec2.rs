//! What the EC2 phase of a deployment did, as recorded on it and shown to clients.

use serde::{Deserialize, Serialize};

/// One platform instance as the EC2 phase found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Ec2Instance {
    pub instance_id: String,
    /// EC2's state name (`running`, `stopped`, …).
    pub state: String,
    pub public_ip: Option<String>,
    pub public_dns: Option<String>,
    pub private_ip: Option<String>,
}

impl Ec2Instance {
    /// Where the environments reach it: the public IPv4, else the private one.
    pub fn address(&self) -> Option<&str> {
        self.public_ip.as_deref().or(self.private_ip.as_deref())
    }
}

/// The EC2 phase of a deployment, by its `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Ec2Phase {
    /// Not run: `reason` says why (the request or the settings turned it off).
    Skipped { reason: String },
    /// To run, or running.
    Pending,
    /// The instances found running, and the ids this phase started (stopped or stopping when
    /// it began).
    Completed {
        instances: Vec<Ec2Instance>,
        started: Vec<String>,
    },
    /// What went wrong (said so that an operator knows what to fix).
    Failed { error: String },
}

impl Default for Ec2Phase {
    /// A record written before the phase was recorded.
    fn default() -> Ec2Phase {
        Ec2Phase::Skipped {
            reason: "not recorded".into(),
        }
    }
}

impl Ec2Phase {
    /// The platform the environments connect to: the first instance's id and address.
    pub fn platform(instances: &[Ec2Instance]) -> Option<(String, Option<String>)> {
        instances.first().map(|instance| {
            (
                instance.instance_id.clone(),
                instance.address().map(str::to_owned),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_and_writes_the_shapes_clients_know() {
        let skipped = Ec2Phase::Skipped {
            reason: "ec2 is off".into(),
        };
        assert_eq!(
            serde_json::to_value(&skipped).unwrap(),
            json!({ "status": "skipped", "reason": "ec2 is off" })
        );
        let completed: Ec2Phase = serde_json::from_value(json!({
            "status": "completed",
            "instances": [{ "instance_id": "i-1", "state": "running", "public_ip": null,
                            "public_dns": null, "private_ip": "127.0.0.1" }],
            "started": ["i-1"],
        }))
        .unwrap();
        let Ec2Phase::Completed { instances, started } = &completed else {
            panic!("{completed:?}");
        };
        assert_eq!(started, &["i-1"]);
        assert_eq!(
            Ec2Phase::platform(instances),
            Some(("i-1".to_owned(), Some("127.0.0.1".to_owned())))
        );
        assert_eq!(
            serde_json::to_value(Ec2Phase::Failed { error: "no".into() }).unwrap(),
            json!({ "status": "failed", "error": "no" })
        );
    }
}
