//! A typed client of the deployment API: [`DeploymentApi`] has one method per operation MCP and
//! the CLI use, taking and returning the [`crate::wire`] types, and failing with one
//! [`ClientError`] (the API's error answer with its status, an answer that is not the API's, or
//! no answer).
//!
//! [`ApiClient`] implements it once over a [`Transport`], which only moves requests and answers:
//! [`InProcess`] calls the plugin's own router as a given caller (MCP inside the plugin, the CLI
//! in-process), [`Http`] calls a host over HTTP with an API key (the CLI's `--server`). Paths
//! come from [`crate::api::endpoints`], the table the router serves, so both ends agree; the
//! API does every check (validation, roles, role views) whoever calls it.

mod error;
mod http;
mod in_process;

use std::future::Future;

use plugin_guest::Caller;
use serde::{de::DeserializeOwned, Serialize};

pub use error::ClientError;
pub use http::Http;
pub use in_process::InProcess;

use crate::{
    api::endpoints::{self, Endpoint},
    notifications::SubscriptionSpec,
    schedules::ScheduleSpec,
    windows::WindowSpec,
    wire::{
        Accepted, Calendar, CancelAnswer, DashboardAnswer, Deleted, DeliveryList, DeploymentDetail,
        DeploymentSummary, EnvironmentList, EnvironmentView, HealthCheckAnswer, HistoryPage,
        HistoryQuery, LogsAnswer, LogsQuery, NextRuns, Redelivery, ScheduleDetail, ScheduleList,
        StatusOverview, SubscriptionCreated, SubscriptionList, TriggerRequest, WindowExplanation,
        WindowList,
    },
};

/// What one call of the API returns.
pub type Answer<T> = Result<T, ClientError>;

/// The deployment API, typed: one method per operation. Each call is made as the client's
/// caller (an in-process caller, or the API key's).
pub trait DeploymentApi: Send + Sync {
    /// `GET /status`: the running deployments and the latest finished one.
    fn status(&self) -> impl Future<Output = Answer<StatusOverview>> + Send;
    /// `GET /status?id=`: one deployment's summary (every role may read it).
    fn summary(&self, id: &str) -> impl Future<Output = Answer<DeploymentSummary>> + Send;
    /// `GET /dashboard`: counts, every environment in the caller's view, recent figures.
    fn dashboard(&self) -> impl Future<Output = Answer<DashboardAnswer>> + Send;
    /// `GET /environments` (developers and admins).
    fn environments(&self) -> impl Future<Output = Answer<EnvironmentList>> + Send;
    /// `GET /environments/{id}` (developers and admins).
    fn environment(&self, id: &str) -> impl Future<Output = Answer<EnvironmentView>> + Send;
    /// `POST /environments/{id}/health-check`: runs the check now and records it.
    fn check_health(&self, id: &str) -> impl Future<Output = Answer<HealthCheckAnswer>> + Send;
    /// `POST /trigger-local`: starts a deployment.
    fn trigger(&self, request: &TriggerRequest) -> impl Future<Output = Answer<Accepted>> + Send;
    /// `GET /history`: a page of deployments, newest first.
    fn history(&self, query: &HistoryQuery) -> impl Future<Output = Answer<HistoryPage>> + Send;
    /// `GET /deployments/{id}`: the full record with the log's last lines.
    fn deployment(&self, id: &str) -> impl Future<Output = Answer<DeploymentDetail>> + Send;
    /// `GET /deployments/{id}/logs`: a page of the log.
    fn logs(&self, id: &str, lines: LogsQuery) -> impl Future<Output = Answer<LogsAnswer>> + Send;
    /// `POST /deployments/{id}/cancel`.
    fn cancel(&self, id: &str) -> impl Future<Output = Answer<CancelAnswer>> + Send;
    /// `POST /deployments/{id}/retry`: a new deployment of the environments that failed.
    fn retry(&self, id: &str) -> impl Future<Output = Answer<Accepted>> + Send;
    /// `POST /deployments/{id}/approve`: continues a deployment waiting at its gate.
    fn approve(&self, id: &str) -> impl Future<Output = Answer<DeploymentSummary>> + Send;
    /// `POST /deployments/{id}/reject`: ends a deployment waiting at its gate.
    fn reject(&self, id: &str) -> impl Future<Output = Answer<DeploymentSummary>> + Send;
    /// `POST /deployments/{id}/rollback`: rolls a finished deployment back.
    fn rollback(&self, id: &str) -> impl Future<Output = Answer<Accepted>> + Send;
    /// `GET /windows`: every deployment window.
    fn windows(&self) -> impl Future<Output = Answer<WindowList>> + Send;
    /// `POST /windows`: a new window (admins).
    fn create_window(&self, spec: &WindowSpec) -> impl Future<Output = Answer<WindowSpec>> + Send;
    /// `DELETE /windows/{id}` (admins).
    fn delete_window(&self, id: &str) -> impl Future<Output = Answer<Deleted>> + Send;
    /// `GET /windows/explain`: whether `environment` may deploy at `at` (now when `None`).
    fn explain_window(
        &self,
        environment: &str,
        at: Option<&str>,
    ) -> impl Future<Output = Answer<WindowExplanation>> + Send;
    /// `GET /calendar`: windows and schedules per environment over `days` days from `from`
    /// (today's defaults when `None`).
    fn calendar(
        &self,
        from: Option<&str>,
        days: Option<u32>,
    ) -> impl Future<Output = Answer<Calendar>> + Send;
    /// `GET /schedules`: every schedule.
    fn schedules(&self) -> impl Future<Output = Answer<ScheduleList>> + Send;
    /// `GET /schedules/{id}`: one schedule with its last and next runs.
    fn schedule(&self, id: &str) -> impl Future<Output = Answer<ScheduleDetail>> + Send;
    /// `POST /schedules`: a new schedule (admins).
    fn create_schedule(
        &self,
        spec: &ScheduleSpec,
    ) -> impl Future<Output = Answer<ScheduleSpec>> + Send;
    /// `DELETE /schedules/{id}` (admins).
    fn delete_schedule(&self, id: &str) -> impl Future<Output = Answer<Deleted>> + Send;
    /// `GET /schedules/{id}/next`: its next `count` occurrences from `from` (now when `None`).
    fn schedule_next(
        &self,
        id: &str,
        from: Option<&str>,
        count: Option<u32>,
    ) -> impl Future<Output = Answer<NextRuns>> + Send;
    /// `GET /subscriptions`: every subscription, secrets masked (admins).
    fn subscriptions(&self) -> impl Future<Output = Answer<SubscriptionList>> + Send;
    /// `GET /subscriptions/{id}`: one subscription, secrets masked (admins).
    fn subscription(&self, id: &str) -> impl Future<Output = Answer<SubscriptionSpec>> + Send;
    /// `POST /subscriptions`: a new subscription (admins); with `test`, also a test delivery.
    fn create_subscription(
        &self,
        spec: &SubscriptionSpec,
        test: bool,
    ) -> impl Future<Output = Answer<SubscriptionCreated>> + Send;
    /// `DELETE /subscriptions/{id}`, with its deliveries (admins).
    fn delete_subscription(&self, id: &str) -> impl Future<Output = Answer<Deleted>> + Send;
    /// `GET /subscriptions/{id}/deliveries`: a page of its deliveries after the delivery id
    /// `after`, at most `limit` (the API's defaults when `None`).
    fn deliveries(
        &self,
        id: &str,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> impl Future<Output = Answer<DeliveryList>> + Send;
    /// `POST /subscriptions/{id}/deliveries/{delivery}/redeliver`: sends it again (admins).
    fn redeliver(
        &self,
        id: &str,
        delivery: &str,
    ) -> impl Future<Output = Answer<Redelivery>> + Send;
    /// Who the calls are made as.
    fn whoami(&self) -> impl Future<Output = Answer<Caller>> + Send;
}

/// One request, as a transport sends it: the method and target come from an [`Endpoint`].
#[derive(Debug)]
pub struct Request {
    pub endpoint: &'static Endpoint,
    /// The path after the mount, with its query.
    pub target: String,
    /// A JSON body.
    pub body: Option<Vec<u8>>,
}

/// An answer: its status and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// How requests reach the API. It moves bytes only; [`ApiClient`] makes and reads them.
pub trait Transport: Send + Sync {
    /// Sends one request; an error only when there is no answer.
    fn send(&self, request: Request) -> impl Future<Output = Answer<Reply>> + Send;
    /// Who this transport calls as.
    fn whoami(&self) -> impl Future<Output = Answer<Caller>> + Send;
}

/// The typed client over a transport.
#[derive(Debug, Clone)]
pub struct ApiClient<T> {
    transport: T,
}

impl<T: Transport> ApiClient<T> {
    pub fn new(transport: T) -> ApiClient<T> {
        ApiClient { transport }
    }

    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// Calls `endpoint` (with `id` in its path and `query`) and reads the answer as `R` when its
    /// status is one of `expected`.
    async fn call<R: DeserializeOwned>(
        &self,
        endpoint: &'static Endpoint,
        id: Option<&str>,
        query: &str,
        body: Option<&(impl Serialize + Sync)>,
        expected: &[u16],
    ) -> Answer<R> {
        self.call_at(
            endpoint,
            endpoint.target(id.as_slice(), query),
            body,
            expected,
        )
        .await
    }

    /// [`ApiClient::call`] with the target already built (a path with more than `{id}`).
    async fn call_at<R: DeserializeOwned>(
        &self,
        endpoint: &'static Endpoint,
        target: String,
        body: Option<&(impl Serialize + Sync)>,
        expected: &[u16],
    ) -> Answer<R> {
        let body = match body {
            Some(body) => Some(serde_json::to_vec(body).map_err(|error| {
                ClientError::Transport(format!("cannot encode the request body: {error}"))
            })?),
            None => None,
        };
        let request = Request {
            endpoint,
            target,
            body,
        };
        let reply = self.transport.send(request).await?;
        error::read(endpoint, reply, expected)
    }

    async fn get<R: DeserializeOwned>(
        &self,
        endpoint: &'static Endpoint,
        id: Option<&str>,
        query: &str,
    ) -> Answer<R> {
        self.call(endpoint, id, query, None::<&()>, &[200]).await
    }
}

/// `?id=…` of `/status`.
fn id_query(id: &str) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("id", id)
        .finish()
}

impl<T: Transport> DeploymentApi for ApiClient<T> {
    async fn status(&self) -> Answer<StatusOverview> {
        self.get(&endpoints::STATUS, None, "").await
    }

    async fn summary(&self, id: &str) -> Answer<DeploymentSummary> {
        self.get(&endpoints::STATUS, None, &id_query(id)).await
    }

    async fn dashboard(&self) -> Answer<DashboardAnswer> {
        self.get(&endpoints::DASHBOARD, None, "").await
    }

    async fn environments(&self) -> Answer<EnvironmentList> {
        self.get(&endpoints::ENVIRONMENTS, None, "").await
    }

    async fn environment(&self, id: &str) -> Answer<EnvironmentView> {
        self.get(&endpoints::ENVIRONMENT, Some(id), "").await
    }

    async fn check_health(&self, id: &str) -> Answer<HealthCheckAnswer> {
        let endpoint = &endpoints::HEALTH_CHECK;
        self.call(endpoint, Some(id), "", None::<&()>, &[200]).await
    }

    async fn trigger(&self, request: &TriggerRequest) -> Answer<Accepted> {
        let endpoint = &endpoints::TRIGGER;
        self.call(endpoint, None, "", Some(request), &[202]).await
    }

    async fn history(&self, query: &HistoryQuery) -> Answer<HistoryPage> {
        self.get(&endpoints::HISTORY, None, &query.encode()).await
    }

    async fn deployment(&self, id: &str) -> Answer<DeploymentDetail> {
        self.get(&endpoints::DEPLOYMENT, Some(id), "").await
    }

    async fn logs(&self, id: &str, lines: LogsQuery) -> Answer<LogsAnswer> {
        self.get(&endpoints::LOGS, Some(id), &lines.encode()).await
    }

    async fn cancel(&self, id: &str) -> Answer<CancelAnswer> {
        let endpoint = &endpoints::CANCEL;
        self.call(endpoint, Some(id), "", None::<&()>, &[200, 202])
            .await
    }

    async fn retry(&self, id: &str) -> Answer<Accepted> {
        let endpoint = &endpoints::RETRY;
        self.call(endpoint, Some(id), "", None::<&()>, &[202]).await
    }

    async fn approve(&self, id: &str) -> Answer<DeploymentSummary> {
        let endpoint = &endpoints::APPROVE;
        self.call(endpoint, Some(id), "", None::<&()>, &[200]).await
    }

    async fn reject(&self, id: &str) -> Answer<DeploymentSummary> {
        let endpoint = &endpoints::REJECT;
        self.call(endpoint, Some(id), "", None::<&()>, &[200]).await
    }

    async fn rollback(&self, id: &str) -> Answer<Accepted> {
        let endpoint = &endpoints::ROLLBACK;
        self.call(endpoint, Some(id), "", None::<&()>, &[202]).await
    }

    async fn windows(&self) -> Answer<WindowList> {
        self.get(&endpoints::WINDOWS, None, "").await
    }

    async fn create_window(&self, spec: &WindowSpec) -> Answer<WindowSpec> {
        let endpoint = &endpoints::CREATE_WINDOW;
        self.call(endpoint, None, "", Some(spec), &[201]).await
    }

    async fn delete_window(&self, id: &str) -> Answer<Deleted> {
        let endpoint = &endpoints::DELETE_WINDOW;
        self.call(endpoint, Some(id), "", None::<&()>, &[200]).await
    }

    async fn explain_window(
        &self,
        environment: &str,
        at: Option<&str>,
    ) -> Answer<WindowExplanation> {
        let query = {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            query.append_pair("environment", environment);
            if let Some(at) = at {
                query.append_pair("at", at);
            }
            query.finish()
        };
        self.get(&endpoints::EXPLAIN_WINDOWS, None, &query).await
    }

    async fn calendar(&self, from: Option<&str>, days: Option<u32>) -> Answer<Calendar> {
        let query = {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            if let Some(from) = from {
                query.append_pair("from", from);
            }
            if let Some(days) = days {
                query.append_pair("days", &days.to_string());
            }
            query.finish()
        };
        self.get(&endpoints::CALENDAR, None, &query).await
    }

    async fn schedules(&self) -> Answer<ScheduleList> {
        self.get(&endpoints::SCHEDULES, None, "").await
    }

    async fn schedule(&self, id: &str) -> Answer<ScheduleDetail> {
        self.get(&endpoints::SCHEDULE, Some(id), "").await
    }

    async fn create_schedule(&self, spec: &ScheduleSpec) -> Answer<ScheduleSpec> {
        let endpoint = &endpoints::CREATE_SCHEDULE;
        self.call(endpoint, None, "", Some(spec), &[201]).await
    }

    async fn delete_schedule(&self, id: &str) -> Answer<Deleted> {
        let endpoint = &endpoints::DELETE_SCHEDULE;
        self.call(endpoint, Some(id), "", None::<&()>, &[200]).await
    }

    async fn schedule_next(
        &self,
        id: &str,
        from: Option<&str>,
        count: Option<u32>,
    ) -> Answer<NextRuns> {
        let query = {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            if let Some(from) = from {
                query.append_pair("from", from);
            }
            if let Some(count) = count {
                query.append_pair("count", &count.to_string());
            }
            query.finish()
        };
        self.get(&endpoints::SCHEDULE_NEXT, Some(id), &query).await
    }

    async fn subscriptions(&self) -> Answer<SubscriptionList> {
        self.get(&endpoints::SUBSCRIPTIONS, None, "").await
    }

    async fn subscription(&self, id: &str) -> Answer<SubscriptionSpec> {
        self.get(&endpoints::SUBSCRIPTION, Some(id), "").await
    }

    async fn create_subscription(
        &self,
        spec: &SubscriptionSpec,
        test: bool,
    ) -> Answer<SubscriptionCreated> {
        let endpoint = &endpoints::CREATE_SUBSCRIPTION;
        let query = if test { "test=true" } else { "" };
        self.call(endpoint, None, query, Some(spec), &[201]).await
    }

    async fn delete_subscription(&self, id: &str) -> Answer<Deleted> {
        let endpoint = &endpoints::DELETE_SUBSCRIPTION;
        self.call(endpoint, Some(id), "", None::<&()>, &[200]).await
    }

    async fn deliveries(
        &self,
        id: &str,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Answer<DeliveryList> {
        let query = {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            if let Some(after) = after {
                query.append_pair("after", after);
            }
            if let Some(limit) = limit {
                query.append_pair("limit", &limit.to_string());
            }
            query.finish()
        };
        self.get(&endpoints::DELIVERIES, Some(id), &query).await
    }

    async fn redeliver(&self, id: &str, delivery: &str) -> Answer<Redelivery> {
        let endpoint = &endpoints::REDELIVER;
        let target = endpoint.target(&[id, delivery], "");
        self.call_at(endpoint, target, None::<&()>, &[202]).await
    }

    async fn whoami(&self) -> Answer<Caller> {
        self.transport.whoami().await
    }
}
