//! Every deployment route × every caller (none, user, developer, admin) as one table, in-process:
//! the plugin's handler on `LocalHost`, no binary and no peers. The host authenticates and hands
//! the caller to the plugin; what each role may do is decided here, in the plugin, and this
//! table is the contract.

use e2e::scenario::local;
use plugin_api::Role;
use plugin_guest::{Handler, Response};
use serde_json::{json, Value};

use crate::in_process::{body, request, start, InProcess};

/// The plugin over one `local` environment, `demo`, whose command is a connection detail a
/// user must never see.
async fn in_process() -> InProcess {
    start(
        vec![local(
            "demo",
            &["/bin/echo", "secret-connection-detail"],
            30,
        )],
        json!({}),
    )
    .await
}

fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response
        .headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// One route: how it is called, the least role that may call it (`None`: anyone), and the
/// status it answers to that role with the given body.
struct Route {
    method: &'static str,
    path: String,
    body: Option<Value>,
    needs: Option<Role>,
    answers: u16,
}

/// How each route of the plugin's table is probed: `(method, route path, path called, body,
/// status when the role allows it)`. The roles are not written here: they come from the
/// plugin's own route table, so every route is checked with the role it declares.
fn probes() -> Vec<(&'static str, &'static str, &'static str, Option<Value>, u16)> {
    let invalid = Some(json!({ "environment_id": "Not Valid!" }));
    vec![
        ("GET", "/status", "/status", None, 200),
        ("GET", "/dashboard", "/dashboard", None, 200),
        ("GET", "/openapi.json", "/openapi.json", None, 200),
        (
            "POST",
            "/trigger-local",
            "/trigger-local",
            Some(json!({ "environments": ["none"] })),
            422,
        ),
        (
            "POST",
            "/one-click",
            "/one-click",
            Some(json!({ "version": 7 })),
            400,
        ),
        ("GET", "/history", "/history", None, 200),
        ("GET", "/deployments/{id}", "/deployments/none", None, 404),
        (
            "GET",
            "/deployments/{id}/logs",
            "/deployments/none/logs",
            None,
            404,
        ),
        (
            "POST",
            "/deployments/{id}/cancel",
            "/deployments/none/cancel",
            None,
            404,
        ),
        (
            "POST",
            "/deployments/{id}/retry",
            "/deployments/none/retry",
            None,
            404,
        ),
        (
            "POST",
            "/deployments/{id}/approve",
            "/deployments/none/approve",
            None,
            404,
        ),
        (
            "POST",
            "/deployments/{id}/reject",
            "/deployments/none/reject",
            None,
            404,
        ),
        (
            "POST",
            "/deployments/{id}/rollback",
            "/deployments/none/rollback",
            None,
            404,
        ),
        ("GET", "/environments", "/environments", None, 200),
        (
            "POST",
            "/environments",
            "/environments",
            invalid.clone(),
            400,
        ),
        ("GET", "/environments/{id}", "/environments/demo", None, 200),
        (
            "PUT",
            "/environments/{id}",
            "/environments/demo",
            invalid,
            400,
        ),
        (
            "DELETE",
            "/environments/{id}",
            "/environments/none",
            None,
            404,
        ),
        (
            "POST",
            "/environments/{id}/health-check",
            "/environments/none/health-check",
            None,
            404,
        ),
        ("GET", "/windows", "/windows", None, 200),
        (
            "POST",
            "/windows",
            "/windows",
            Some(json!({ "id": "w", "kind": "sometimes" })),
            400,
        ),
        (
            "GET",
            "/windows/explain",
            "/windows/explain?environment=demo",
            None,
            200,
        ),
        ("GET", "/windows/{id}", "/windows/none", None, 404),
        ("DELETE", "/windows/{id}", "/windows/none", None, 404),
        ("GET", "/calendar", "/calendar?days=2", None, 200),
        ("GET", "/schedules", "/schedules", None, 200),
        (
            "POST",
            "/schedules",
            "/schedules",
            Some(json!({ "id": "s", "at": "never" })),
            400,
        ),
        ("GET", "/schedules/{id}", "/schedules/none", None, 404),
        ("DELETE", "/schedules/{id}", "/schedules/none", None, 404),
        (
            "GET",
            "/schedules/{id}/next",
            "/schedules/none/next",
            None,
            404,
        ),
        ("GET", "/subscriptions", "/subscriptions", None, 200),
        (
            "POST",
            "/subscriptions",
            "/subscriptions",
            Some(json!({ "id": "s", "events": [] })),
            400,
        ),
        (
            "GET",
            "/subscriptions/{id}",
            "/subscriptions/none",
            None,
            404,
        ),
        (
            "DELETE",
            "/subscriptions/{id}",
            "/subscriptions/none",
            None,
            404,
        ),
        (
            "GET",
            "/subscriptions/{id}/deliveries",
            "/subscriptions/none/deliveries",
            None,
            404,
        ),
        (
            "POST",
            "/subscriptions/{id}/deliveries/{delivery}/redeliver",
            "/subscriptions/none/deliveries/none/redeliver",
            None,
            404,
        ),
    ]
}

/// The role table: every route the plugin declares, with its declared role, probed as
/// [`probes`] says. A route without a probe, or a probe without a route, fails here.
fn table() -> Vec<Route> {
    let declared = deployment_mcp_core::api::route_roles();
    let probes = probes();
    for (method, path, _) in &declared {
        assert!(
            probes
                .iter()
                .any(|probe| probe.0 == *method && probe.1 == *path),
            "{method} {path} has no probe: add one to probes()"
        );
    }
    let mut table = Vec::new();
    for (method, route, path, body, answers) in probes {
        let needs = declared
            .iter()
            .find(|(m, p, _)| *m == method && *p == route)
            .unwrap_or_else(|| panic!("{method} {route} is probed but not a route"))
            .2;
        table.push(Route {
            method,
            path: path.to_owned(),
            body,
            needs,
            answers,
        });
    }
    table
}

#[test]
fn the_roles_are_the_contract() {
    // What each role may do, pinned: a change to a route's role is a visible diff here.
    use Role::{Admin, Developer, User};
    let pinned: Vec<(&str, &str, Option<Role>)> = vec![
        ("GET", "/status", Some(User)),
        ("GET", "/dashboard", Some(User)),
        ("GET", "/openapi.json", None),
        ("POST", "/trigger-local", Some(Admin)),
        ("POST", "/one-click", Some(Admin)),
        ("GET", "/history", Some(Developer)),
        ("GET", "/deployments/{id}", Some(Developer)),
        ("GET", "/deployments/{id}/logs", Some(Developer)),
        ("POST", "/deployments/{id}/cancel", Some(Admin)),
        ("POST", "/deployments/{id}/retry", Some(Admin)),
        ("POST", "/deployments/{id}/approve", Some(Admin)),
        ("POST", "/deployments/{id}/reject", Some(Admin)),
        ("POST", "/deployments/{id}/rollback", Some(Admin)),
        ("GET", "/environments", Some(Developer)),
        ("POST", "/environments", Some(Admin)),
        ("GET", "/environments/{id}", Some(Developer)),
        ("PUT", "/environments/{id}", Some(Admin)),
        ("DELETE", "/environments/{id}", Some(Admin)),
        ("POST", "/environments/{id}/health-check", Some(Developer)),
        ("GET", "/windows", Some(Developer)),
        ("POST", "/windows", Some(Admin)),
        ("GET", "/windows/explain", Some(Developer)),
        ("GET", "/windows/{id}", Some(Developer)),
        ("DELETE", "/windows/{id}", Some(Admin)),
        ("GET", "/calendar", Some(Developer)),
        ("GET", "/schedules", Some(Developer)),
        ("POST", "/schedules", Some(Admin)),
        ("GET", "/schedules/{id}", Some(Developer)),
        ("DELETE", "/schedules/{id}", Some(Admin)),
        ("GET", "/schedules/{id}/next", Some(Developer)),
        ("GET", "/subscriptions", Some(Admin)),
        ("POST", "/subscriptions", Some(Admin)),
        ("GET", "/subscriptions/{id}", Some(Admin)),
        ("DELETE", "/subscriptions/{id}", Some(Admin)),
        ("GET", "/subscriptions/{id}/deliveries", Some(Admin)),
        (
            "POST",
            "/subscriptions/{id}/deliveries/{delivery}/redeliver",
            Some(Admin),
        ),
    ];
    assert_eq!(deployment_mcp_core::api::route_roles(), pinned);
}

#[tokio::test]
async fn every_route_for_every_role() {
    let plugin = in_process().await;
    let callers = [
        None,
        Some(Role::User),
        Some(Role::Developer),
        Some(Role::Admin),
    ];
    let mut failures = Vec::new();
    for route in table() {
        for caller in callers {
            let response = plugin
                .api
                .handle(request(route.method, &route.path, route.body.clone(), caller).into())
                .await;
            let allowed = match route.needs {
                None => true,
                Some(needed) => caller.is_some_and(|role| role >= needed),
            };
            let expected = match (allowed, caller) {
                (true, _) => route.answers,
                (false, None) => 401,
                (false, Some(_)) => 403,
            };
            let who = caller.map_or("no key", Role::as_str);
            if response.status != expected {
                failures.push(format!(
                    "{} {} as {who}: {} (expected {expected}): {}",
                    route.method,
                    route.path,
                    response.status,
                    String::from_utf8_lossy(&response.body)
                ));
                continue;
            }
            if route.path == "/dashboard" && allowed {
                continue;
            }
            let answer = body(&response);
            if response.status >= 400 {
                // One error shape everywhere: a machine code and a sentence.
                assert!(
                    answer["error"].is_string() && answer["message"].is_string(),
                    "{} {} as {who}: {answer}",
                    route.method,
                    route.path
                );
                if !allowed && caller.is_some() {
                    let needed = route.needs.map_or("", Role::as_str);
                    assert!(
                        answer["message"]
                            .as_str()
                            .is_some_and(|message| message.contains(needed)),
                        "{} {} as {who} names the role it needs ({needed}): {answer}",
                        route.method,
                        route.path
                    );
                }
            }
            // A user sees no connection details anywhere.
            if caller == Some(Role::User) {
                let text = String::from_utf8_lossy(&response.body);
                assert!(
                    !text.contains("secret-connection-detail") && !text.contains("/bin/echo"),
                    "{} {} shows a user connection details: {text}",
                    route.method,
                    route.path
                );
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn a_method_a_route_does_not_take_is_405_with_allow_before_any_role_check() {
    let plugin = in_process().await;
    for (method, path, allow) in [
        ("POST", "/status", "GET"),
        ("DELETE", "/history", "GET"),
        ("GET", "/trigger-local", "POST"),
        ("GET", "/one-click", "POST"),
        ("PUT", "/deployments/x", "GET"),
        ("GET", "/deployments/x/cancel", "POST"),
        ("DELETE", "/environments", "GET, POST"),
        ("POST", "/environments/demo", "GET, PUT, DELETE"),
        ("GET", "/environments/demo/health-check", "POST"),
    ] {
        for caller in [None, Some(Role::User), Some(Role::Admin)] {
            let response = plugin
                .api
                .handle(request(method, path, None, caller).into())
                .await;
            assert_eq!(response.status, 405, "{method} {path}");
            assert_eq!(header(&response, "allow"), Some(allow), "{method} {path}");
            assert_eq!(body(&response)["error"], "method_not_allowed");
        }
    }
    let response = plugin
        .api
        .handle(request("GET", "/nowhere", None, Some(Role::Admin)).into())
        .await;
    assert_eq!(response.status, 404);
    assert_eq!(body(&response)["error"], "not_found");
}

#[tokio::test]
async fn paths_are_read_as_before_the_router() {
    let plugin = in_process().await;
    // Empty segments do not count.
    for path in ["/status/", "//status", "/environments//demo"] {
        let response = plugin
            .api
            .handle(request("GET", path, None, Some(Role::Admin)).into())
            .await;
        assert_eq!(response.status, 200, "{path}");
    }
    // An id that is not UTF-8 once decoded names nothing: a JSON 404, not the router's text.
    for path in ["/deployments/%FF", "/environments/%FF%FE/health-check"] {
        let method = if path.ends_with("check") {
            "POST"
        } else {
            "GET"
        };
        let response = plugin
            .api
            .handle(request(method, path, None, Some(Role::Admin)).into())
            .await;
        assert_eq!(response.status, 404, "{path}");
        assert_eq!(body(&response)["error"], "not_found", "{path}");
    }
    // A body above axum's own default limit (2 MiB) reaches the handler: the host enforces
    // `server.body_limit_bytes` before the plugin sees a request.
    let large = json!({ "environment_id": "x".repeat(3 << 20) });
    let response = plugin
        .api
        .handle(request("POST", "/environments", Some(large), Some(Role::Admin)).into())
        .await;
    assert_eq!(
        response.status,
        400,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(body(&response)["error"], "invalid_field");
}

#[tokio::test]
async fn the_mcp_endpoint_needs_a_key_of_any_role() {
    let plugin = in_process().await;
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "roles", "version": "1"}}});
    for caller in [
        None,
        Some(Role::User),
        Some(Role::Developer),
        Some(Role::Admin),
    ] {
        let mut call = request("POST", "/mcp", Some(initialize.clone()), caller);
        call.headers.push((
            "accept".into(),
            "application/json, text/event-stream".into(),
        ));
        call.headers.push(("host".into(), "127.0.0.1".into()));
        let response = plugin.api.handle(call.into()).await;
        let who = caller.map_or("no key", Role::as_str);
        let text = String::from_utf8_lossy(&response.body).into_owned();
        match caller {
            None => assert_eq!(response.status, 401, "{who}: {text}"),
            Some(_) => assert_eq!(response.status, 200, "{who}: {text}"),
        }
    }
}
