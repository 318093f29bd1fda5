//! The plugin's handler in this process, on `LocalHost`: no binary, no peers. The in-process
//! modules of the suite (`routes_roles`, `history_paging`, `lifecycle`) build on it.

use deployment_mcp_core::api::Api;
use e2e::scenario::environments;
use plugin_api::Role;
use plugin_guest::{Caller, Handler, Request, Response};
use plugin_local_host::LocalHost;
use serde_json::{json, Value};

pub(crate) struct InProcess {
    pub(crate) api: Api,
    pub(crate) host: LocalHost,
    _dir: tempfile::TempDir,
}

/// The plugin over these environments, with `settings` added to the test defaults (no periodic
/// health checks).
pub(crate) async fn start(list: Vec<Value>, settings: Value) -> InProcess {
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("environments.json");
    std::fs::write(&file, environments(list)).expect("write the environments file");
    let host = LocalHost::open(&dir.path().join("data"), false).expect("open the local host");
    let mut all = json!({ "environments_file": file, "health_check_interval_secs": 0 });
    if let (Some(all), Some(extra)) = (all.as_object_mut(), settings.as_object()) {
        all.extend(extra.clone());
    }
    let api = deployment_mcp_core::build(host.host.clone(), &all, "0.0.0-in-process")
        .await
        .expect("build the plugin");
    InProcess {
        api,
        host,
        _dir: dir,
    }
}

/// A request as the host hands it over: `role` is the authenticated caller's, `None` without a
/// key.
pub(crate) fn request(
    method: &str,
    path: &str,
    body: Option<Value>,
    role: Option<Role>,
) -> Request {
    Request {
        request_id: "in-process".into(),
        method: method.into(),
        path: path.into(),
        query: String::new(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: body
            .map(|body| body.to_string().into_bytes())
            .unwrap_or_default(),
        principal: role.map(|role| Caller {
            name: role.as_str().into(),
            role,
        }),
    }
}

pub(crate) fn body(response: &Response) -> Value {
    serde_json::from_slice(&response.body).unwrap_or_else(|error| {
        panic!(
            "not JSON ({error}): {}",
            String::from_utf8_lossy(&response.body)
        )
    })
}

impl InProcess {
    /// Calls a route as `role` and returns the status and the JSON answer.
    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        role: Role,
    ) -> (u16, Value) {
        let response = self
            .api
            .handle(request(method, path, body, Some(role)).into())
            .await;
        (response.status, self::body(&response))
    }
}
