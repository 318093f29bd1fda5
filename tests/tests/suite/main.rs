//! The end-to-end suite, one test binary (linked once): the real `powerautomation` binary with
//! real plugin libraries and real peers, one module per area.

mod audit;
mod cli;
mod cluster;
mod cluster_events;
mod cluster_soak;
mod dashboard;
mod deployments;
mod ec2_deployments;
mod ec2_phase;
mod event_log;
mod event_order;
mod hardening;
mod history_paging;
mod host;
mod hot_swap;
mod in_process;
mod isolation;
mod lifecycle;
mod loopback_only;
mod mcp;
mod metrics;
mod notifications;
mod openapi;
mod rollouts;
mod routes_roles;
mod scale_counts;
mod schedules;
mod soak;
mod ssh_trigger;
mod store_postgres;
mod windows;
