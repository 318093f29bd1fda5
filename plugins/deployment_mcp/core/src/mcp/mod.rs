//! The Model Context Protocol face of the deployment API: tools and resources an AI agent
//! calls, served over Streamable HTTP at `{mount}/mcp` (inside the plugin's router) and over
//! stdio by `deployment-mcp mcp`.
//!
//! Every tool is a call of the REST API as the caller, through the typed client
//! ([`crate::client::DeploymentApi`]): the plugin's own router (HTTP) or the CLI's client
//! (stdio), so the same validation, role checks and role views apply, and nothing here can show
//! more than the API would. `tools/list` shows what the caller's role may call, and hides every
//! write tool when `mcp.read_only` is set.
//!
//! Code map: `tools` (the table: each tool's spec, argument and result types, and run),
//! `types` (those types; their `ToSchema` descriptions become the tools' schemas through
//! `schema`), `follow` (`trigger_deployment`'s wait), `resources`, `origin` (which browser
//! origins may call the HTTP endpoint); here the server and its errors.

mod follow;
mod origin;
mod resources;
mod schema;
mod tools;
mod types;

use std::sync::Arc;

use plugin_guest::{Caller, Refusal, Role};
use rmcp::{
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, Implementation,
        ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
        ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, ResourceContents,
        ServerCapabilities, ServerConfig,
    },
    service::RequestContext,
    ErrorData, RoleServer, ServerHandler,
};
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use origin::{origin_allowed, OriginRule};
pub use tools::ToolSpec;
pub use types::MAX_LOG_LINES;

use crate::client::{ApiClient, ClientError, DeploymentApi, InProcess};
use tools::Entry;

/// Where the tools reach the API, for one caller.
pub trait Connect: Send + Sync + 'static {
    type Api: DeploymentApi + 'static;

    /// A client calling as `caller`, its answers' links under `mount` (the MCP request's own),
    /// its calls labelled as made by the MCP tool `tool` (for their audit entries).
    fn connect(
        &self,
        caller: Option<&Caller>,
        mount: Option<&str>,
        tool: Option<&str>,
    ) -> Self::Api;
}

/// The plugin's router in this process: each tool call is made as its MCP request's caller.
impl Connect for InProcess {
    type Api = ApiClient<InProcess>;

    fn connect(
        &self,
        caller: Option<&Caller>,
        mount: Option<&str>,
        tool: Option<&str>,
    ) -> ApiClient<InProcess> {
        let client = self.as_caller(caller.cloned(), mount.map(str::to_owned));
        ApiClient::new(match tool {
            Some(tool) => client.through_tool(tool),
            None => client,
        })
    }
}

/// A client whose caller is fixed (an API key's, the CLI's local admin): every call is its.
#[derive(Clone)]
pub struct Fixed<A>(pub A);

impl<A: DeploymentApi + Clone + 'static> Connect for Fixed<A> {
    type Api = A;

    fn connect(&self, _caller: Option<&Caller>, _mount: Option<&str>, _tool: Option<&str>) -> A {
        self.0.clone()
    }
}

/// A failed call, as the tool's error result: what happened and, where the API said, which
/// field, with the API's status.
#[derive(Debug, Serialize)]
pub(crate) struct ToolError {
    error: String,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    /// The role the tool needs, when the caller's is too low.
    #[serde(skip_serializing_if = "Option::is_none")]
    needs: Option<&'static str>,
}

impl ToolError {
    pub(crate) fn new(code: &str, message: impl Into<String>) -> ToolError {
        ToolError {
            error: code.to_owned(),
            message: message.into(),
            field: None,
            status: None,
            needs: None,
        }
    }

    /// An argument at fault, named.
    pub(crate) fn field(field: &str, message: impl std::fmt::Display) -> ToolError {
        ToolError {
            field: Some(field.to_owned()),
            ..ToolError::new("invalid_field", format!("{field}: {message}"))
        }
    }

    fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl From<ClientError> for ToolError {
    fn from(error: ClientError) -> ToolError {
        let status = error.status();
        let code = match &error {
            ClientError::Api { code, .. } => code.clone(),
            ClientError::NotApi { .. } | ClientError::Decode { .. } => "api_error".into(),
            ClientError::Unreachable { .. } | ClientError::Transport(_) => "unavailable".into(),
        };
        ToolError {
            field: error.field().map(str::to_owned),
            status,
            ..ToolError::new(&code, error.to_string())
        }
    }
}

/// One tool call in progress: the API as its caller, and the request it came in.
pub(crate) struct Call<'a, A> {
    pub(crate) api: A,
    pub(crate) caller: Option<&'a Caller>,
    pub(crate) context: &'a RequestContext<RoleServer>,
    /// Ends waits when the instance stops (a hot swap or shutdown), with an answer.
    pub(crate) stop: &'a CancellationToken,
    /// The host's audit log, where this server reads it (inside the plugin).
    pub(crate) audit: Option<&'a crate::persist::records::Records>,
}

impl<A> Call<'_, A> {
    /// Whether the caller sees details (the developer role and above).
    pub(crate) fn developer(&self) -> bool {
        self.caller
            .is_some_and(|caller| caller.role >= Role::Developer)
    }
}

/// The tools' server; `C` reaches the API.
pub struct McpServer<C: Connect> {
    connect: Arc<C>,
    tools: Arc<[Entry<C::Api>]>,
    read_only: bool,
    /// The caller of every request (stdio); over HTTP, each request's own.
    fixed: Option<Caller>,
    version: &'static str,
    /// Ends waits when the instance stops (a hot swap or shutdown), with an answer.
    stop: CancellationToken,
    /// Where refusals of tools are recorded (the plugin's store; none over stdio, where the
    /// caller is the operator at the terminal or the host records what its key is refused).
    audit: Option<crate::persist::records::Records>,
}

impl<C: Connect> Clone for McpServer<C> {
    fn clone(&self) -> Self {
        McpServer {
            connect: Arc::clone(&self.connect),
            tools: Arc::clone(&self.tools),
            read_only: self.read_only,
            fixed: self.fixed.clone(),
            version: self.version,
            stop: self.stop.clone(),
            audit: self.audit.clone(),
        }
    }
}

impl<C: Connect> McpServer<C> {
    /// Over HTTP: each request's caller is the one the host authenticated.
    pub fn new(
        connect: C,
        read_only: bool,
        version: &'static str,
        stop: CancellationToken,
    ) -> McpServer<C> {
        McpServer {
            connect: Arc::new(connect),
            tools: tools::table().into(),
            read_only,
            fixed: None,
            version,
            stop,
            audit: None,
        }
    }

    /// Records refused tool calls in `records`' audit log.
    pub fn audited(mut self, records: crate::persist::records::Records) -> McpServer<C> {
        self.audit = Some(records);
        self
    }

    /// Over stdio: every request is `caller`'s.
    pub fn for_caller(
        connect: C,
        read_only: bool,
        version: &'static str,
        caller: Caller,
    ) -> McpServer<C> {
        McpServer {
            fixed: Some(caller),
            ..McpServer::new(connect, read_only, version, CancellationToken::new())
        }
    }

    /// The HTTP request an MCP request came in (none over stdio).
    fn parts(context: &RequestContext<RoleServer>) -> Option<&axum::http::request::Parts> {
        context.extensions.get::<axum::http::request::Parts>()
    }

    fn caller(&self, context: &RequestContext<RoleServer>) -> Option<Caller> {
        self.fixed.clone().or_else(|| {
            Self::parts(context).and_then(|parts| parts.extensions.get::<Caller>().cloned())
        })
    }

    /// The client for this request: as its caller, its links under the mount it came in at.
    fn api(
        &self,
        caller: Option<&Caller>,
        context: &RequestContext<RoleServer>,
        tool: Option<&str>,
    ) -> C::Api {
        let mount = Self::parts(context)
            .and_then(|parts| parts.headers.get("x-forwarded-prefix"))
            .and_then(|value| value.to_str().ok());
        self.connect.connect(caller, mount, tool)
    }

    /// The tools `role` may call here.
    pub fn visible(&self, role: Option<Role>) -> impl Iterator<Item = &ToolSpec> + '_ {
        self.tools
            .iter()
            .map(|entry| &entry.spec)
            .filter(move |spec| {
                Refusal::of(role, spec.needs).is_none() && !(self.read_only && spec.writes)
            })
    }
}

impl<C: Connect> ServerHandler for McpServer<C> {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new("deployment_mcp", self.version))
        .with_instructions(
            "Deployment coordination: list and inspect environments and deployments, read logs, and (with the admin role) start, follow, cancel, retry, approve, reject and roll back deployments. Tools your key's role may not call are not listed.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let role = self.caller(&context).map(|caller| caller.role);
        let visible: Vec<&str> = self.visible(role).map(|spec| spec.name).collect();
        Ok(ListToolsResult::with_all_items(
            self.tools
                .iter()
                .filter(|entry| visible.contains(&entry.spec.name))
                .map(Entry::listed)
                .collect(),
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let caller = self.caller(&context);
        let Some(entry) = self
            .tools
            .iter()
            .find(|entry| entry.spec.name == request.name)
        else {
            return Err(ErrorData::invalid_params(
                format!("no tool {:?}; tools/list shows the tools", request.name),
                None,
            ));
        };
        let spec = &entry.spec;
        if let Some(refusal) = Refusal::of(caller.as_ref().map(|caller| caller.role), spec.needs) {
            let message = format!(
                "{} needs the {} role: {}",
                spec.name,
                spec.needs.as_str(),
                refusal.message
            );
            let error = ToolError {
                needs: Some(spec.needs.as_str()),
                ..ToolError::new(refusal.code, message)
            };
            if let Some(records) = &self.audit {
                // A refusal inside MCP never reaches the host as one: recorded here.
                let call = crate::audit::AuditCall::new(
                    caller.as_ref(),
                    crate::audit::Via::Mcp,
                    Some(spec.name.to_owned()),
                    "mcp.call",
                    Some(format!("tool:{}", spec.name)),
                    None,
                );
                let outcome = crate::audit::Outcome {
                    status: crate::audit::Status::Denied,
                    error: Some(refusal.code.to_owned()),
                    http_status: Some(refusal.status),
                };
                if let Err(error) = records.record_call(&call, &outcome).await {
                    tracing::error!(tool = spec.name, "cannot write the audit entry: {error}");
                }
            }
            return Ok(CallToolResult::structured_error(error.to_value()).into());
        }
        if self.read_only && spec.writes {
            let error = ToolError::new(
                "read_only",
                format!(
                    "{} changes deployments, and this endpoint is read-only (mcp.read_only)",
                    spec.name
                ),
            );
            return Ok(CallToolResult::structured_error(error.to_value()).into());
        }
        let call = Call {
            api: self.api(caller.as_ref(), &context, Some(spec.name)),
            caller: caller.as_ref(),
            context: &context,
            stop: &self.stop,
            audit: self.audit.as_ref(),
        };
        Ok(match entry
            .call(&call, request.arguments.unwrap_or_default())
            .await
        {
            Ok(value) => CallToolResult::structured(value),
            Err(error) => CallToolResult::structured_error(error.to_value()),
        }
        .into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let caller = self.caller(&context);
        let developer = caller.as_ref().is_some_and(|c| c.role >= Role::Developer);
        let api = self.api(caller.as_ref(), &context, None);
        match resources::list(&api, developer).await {
            Ok(resources) => Ok(ListResourcesResult::with_all_items(resources)),
            Err(error) => Err(ErrorData::internal_error(
                error.message.clone(),
                Some(error.to_value()),
            )),
        }
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(
            resources::templates(),
        ))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let caller = self.caller(&context);
        let developer = caller.as_ref().is_some_and(|c| c.role >= Role::Developer);
        let api = self.api(caller.as_ref(), &context, None);
        match resources::read(&api, developer, &request.uri).await {
            Ok(value) => Ok(ReadResourceResult::new(vec![ResourceContents::text(
                value.to_string(),
                request.uri.clone(),
            )
            .with_mime_type("application/json")])
            .into()),
            Err(error) => Err(ErrorData::resource_not_found(
                error.message.clone(),
                Some(error.to_value()),
            )),
        }
    }
}
