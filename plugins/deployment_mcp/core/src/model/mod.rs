//! The core's vocabulary, shared by every layer (persist, run, api, wire, triggers, the CLI):
//! ids, times, log lines, a field at fault, and what the EC2 phase found. Nothing here does I/O.

mod ec2;
mod field;
mod ids;
mod log;
mod time;

pub use ec2::{Ec2Instance, Ec2Phase};
pub use field::FieldError;
pub use ids::{DeploymentId, EnvironmentId, MAX_ID_LEN};
pub use log::{LineSplitter, LogLine, LogSink, LogStream, MAX_LINE_BYTES};
pub use time::{BadTimestamp, Timestamp};
