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
    path: &'static str,
    body: Option<Value>,
    needs: Option<Role>,
    answers: u16,
}

fn table() -> Vec<Route> {
    let route = |method, path, body, needs, answers| Route {
        method,
        path,
        body,
        needs,
        answers,
    };
    use Role::{Admin, Developer, User};
    let invalid = Some(json!({ "environment_id": "Not Valid!" }));
    vec![
        route("GET", "/status", None, Some(User), 200),
        route("GET", "/dashboard", None, Some(User), 200),
        route("GET", "/openapi.json", None, None, 200),
        route("GET", "/history", None, Some(Developer), 200),
        route("GET", "/deployments/none", None, Some(Developer), 404),
        route("GET", "/deployments/none/logs", None, Some(Developer), 404),
        route("POST", "/deployments/none/cancel", None, Some(Admin), 404),
        route("POST", "/deployments/none/retry", None, Some(Admin), 404),
        route("GET", "/environments", None, Some(Developer), 200),
        route("GET", "/environments/demo", None, Some(Developer), 200),
        route("GET", "/environments/none", None, Some(Developer), 404),
        route("POST", "/environments", invalid.clone(), Some(Admin), 400),
        route("PUT", "/environments/demo", invalid, Some(Admin), 400),
        route("DELETE", "/environments/none", None, Some(Admin), 404),
        route(
            "POST",
            "/environments/none/health-check",
            None,
            Some(Developer),
            404,
        ),
        route(
            "POST",
            "/trigger-local",
            Some(json!({ "environments": ["none"] })),
            Some(Admin),
            422,
        ),
        route(
            "POST",
            "/one-click",
            Some(json!({ "version": 7 })),
            Some(Admin),
            400,
        ),
    ]
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
                .handle(request(route.method, route.path, route.body.clone(), caller).into())
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
