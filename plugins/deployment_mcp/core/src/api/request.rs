//! The request as the router takes it: imported from the host's ABI request (one copy of each
//! field) or from a plain one (the CLI's, a test's); and the router's answer as the host takes
//! it (a body of known length whole, any other streamed).

use axum::{
    body::{Body, Bytes},
    http::{self, HeaderValue, Method},
    response::Response,
};
use futures_util::StreamExt as _;
use http_body_util::BodyExt as _;
use plugin_guest::Caller;

use super::{ApiError, RequestId};

/// A request as the router takes it, or why it cannot be one (a header or target no HTTP
/// request may carry: 400 naming it).
pub struct ApiRequest(pub(super) Result<http::Request<Body>, ApiError>);

/// The host's request, imported with one copy of each field: the ABI's text goes straight into
/// the `http` types.
impl plugin_guest::Import for ApiRequest {
    fn import(request: plugin_api::PluginRequest) -> ApiRequest {
        let body = request.body.as_slice();
        ApiRequest(http_request(
            request.method.as_str(),
            request.path.as_str(),
            request.query.as_str(),
            request
                .headers
                .iter()
                .map(|pair| (pair.0.as_str(), pair.1.as_str())),
            (!body.is_empty()).then(|| Bytes::copy_from_slice(body)),
            request.request_id.as_str(),
            request
                .principal
                .as_ref()
                .into_option()
                .map(|principal| Caller {
                    name: principal.name.as_str().to_owned(),
                    role: principal.role,
                }),
        ))
    }
}

/// A plain request (the CLI's, a test's), as the host would have handed it over.
impl From<plugin_guest::Request> for ApiRequest {
    fn from(request: plugin_guest::Request) -> ApiRequest {
        ApiRequest(http_request(
            &request.method,
            &request.path,
            &request.query,
            request
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str())),
            (!request.body.is_empty()).then(|| Bytes::from(request.body)),
            &request.request_id,
            request.principal,
        ))
    }
}

/// Builds the router's request. Empty path segments do not count: `/status/` and `//status`
/// are `/status`.
fn http_request<'a>(
    method: &str,
    path: &str,
    query: &str,
    headers: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
    body: Option<Bytes>,
    request_id: &str,
    caller: Option<Caller>,
) -> Result<http::Request<Body>, ApiError> {
    let mut uri = String::with_capacity(path.len() + query.len() + 2);
    for segment in path.split('/').filter(|segment| !segment.is_empty()) {
        uri.push('/');
        uri.push_str(segment);
    }
    if uri.is_empty() {
        uri.push('/');
    }
    if !query.is_empty() {
        uri.push('?');
        uri.push_str(query);
    }
    let count = headers.len();
    let too_many = || {
        ApiError::field(
            "headers",
            format!("{count} fields are more than a request may carry"),
        )
    };
    let mut map = http::HeaderMap::try_with_capacity(count).map_err(|_| too_many())?;
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ApiError::field("headers", format!("{name:?} is not a header name")))?;
        let value = HeaderValue::from_str(value).map_err(|_| {
            ApiError::field(
                "headers",
                format!("the value of {name} is not a header value"),
            )
        })?;
        map.try_append(name, value).map_err(|_| too_many())?;
    }
    let mut request = http::Request::new(body.map_or_else(Body::empty, Body::from));
    *request.method_mut() = Method::from_bytes(method.as_bytes())
        .map_err(|_| ApiError::field("method", format!("{method:?} is not an HTTP method")))?;
    *request.uri_mut() = http::Uri::try_from(uri).map_err(|error| {
        ApiError::field("path", format!("is not a valid request target: {error}"))
    })?;
    *request.headers_mut() = map;
    request
        .extensions_mut()
        .insert(RequestId(request_id.to_owned()));
    if let Some(caller) = caller {
        request.extensions_mut().insert(caller);
    }
    Ok(request)
}

/// The router's answer as the host takes it: a body of known length whole, any other streamed.
pub(super) async fn from_http(response: Response) -> plugin_guest::Response {
    let (parts, body) = response.into_parts();
    let headers = parts
        .headers
        .iter()
        .filter_map(|(name, value)| {
            let value = value.to_str().ok()?;
            Some((name.as_str().to_owned(), value.to_owned()))
        })
        .collect();
    let status = parts.status.as_u16();
    if axum::body::HttpBody::size_hint(&body).exact().is_some() {
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes().to_vec(),
            Err(error) => {
                tracing::error!("answer body failed: {error}");
                Vec::new()
            }
        };
        return plugin_guest::Response {
            status,
            headers,
            body,
            stream: None,
        };
    }
    let chunks = body
        .into_data_stream()
        .filter_map(|chunk| std::future::ready(chunk.ok().map(|bytes| bytes.to_vec())));
    plugin_guest::Response {
        status,
        headers,
        body: Vec::new(),
        stream: Some(Box::pin(chunks)),
    }
}

#[cfg(test)]
mod tests {
    use abi_stable::std_types::{ROption, RString, RVec, Tuple2};
    use axum::{http::StatusCode, response::IntoResponse as _};
    use plugin_api::{PluginRequest, Principal};
    use plugin_guest::{Import as _, Role};

    use super::*;

    fn abi_request(path: &str, headers: &[(&str, &str)], body: &[u8]) -> PluginRequest {
        PluginRequest {
            request_id: RString::from("req-7"),
            method: RString::from("POST"),
            path: RString::from(path),
            query: RString::from("limit=2&status=failed"),
            headers: headers
                .iter()
                .map(|(name, value)| Tuple2(RString::from(*name), RString::from(*value)))
                .collect::<RVec<_>>(),
            body: RVec::from(body.to_vec()),
            principal: ROption::RSome(Principal {
                name: RString::from("ops"),
                role: Role::Developer,
            }),
        }
    }

    #[tokio::test]
    async fn the_hosts_request_reaches_the_router_whole() {
        let headers = [
            ("content-type", "application/json"),
            ("x-forwarded-prefix", "/api/deployment"),
            ("x-forwarded-prefix", "/second"),
        ];
        let ApiRequest(imported) =
            ApiRequest::import(abi_request("//deployments//d-1/", &headers, b"{\"a\":1}"));
        let request = imported.unwrap_or_else(|error| panic!("not imported: {error:?}"));
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri(), "/deployments/d-1?limit=2&status=failed");
        assert_eq!(request.headers()["content-type"], "application/json");
        let prefixes: Vec<_> = request
            .headers()
            .get_all("x-forwarded-prefix")
            .iter()
            .collect();
        assert_eq!(prefixes, ["/api/deployment", "/second"]);
        assert_eq!(
            request
                .extensions()
                .get::<RequestId>()
                .map(|id| id.0.as_str()),
            Some("req-7")
        );
        let caller = request.extensions().get::<Caller>().cloned();
        assert_eq!(
            caller,
            Some(Caller {
                name: "ops".into(),
                role: Role::Developer
            })
        );
        let body = request
            .into_body()
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        assert_eq!(&body[..], b"{\"a\":1}");
    }

    #[test]
    fn a_request_no_router_could_take_is_refused_naming_what_is_wrong() {
        for (path, headers, wrong) in [
            (
                "/status",
                vec![("bad header", "x")],
                "headers: \"bad header\" is not a header name",
            ),
            (
                "/status",
                vec![("x-a", "line\nbreak")],
                "headers: the value of x-a is not a header value",
            ),
            ("/sta tus", vec![], "path: is not a valid request target"),
        ] {
            let ApiRequest(imported) = ApiRequest::import(abi_request(path, &headers, b""));
            let Err(error) = imported else {
                panic!("{path} {headers:?} was imported");
            };
            let text = error.to_string();
            assert!(text.starts_with(wrong), "{text}");
            assert_eq!(error.into_response().status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn a_plain_request_imports_as_the_hosts_does() {
        let plain = plugin_guest::Request {
            request_id: "req-7".into(),
            method: "POST".into(),
            path: "//deployments//d-1/".into(),
            query: "limit=2&status=failed".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: b"{}".to_vec(),
            principal: None,
        };
        let ApiRequest(imported) = ApiRequest::from(plain);
        let request = imported.unwrap_or_else(|error| panic!("not imported: {error:?}"));
        assert_eq!(request.uri(), "/deployments/d-1?limit=2&status=failed");
        assert_eq!(request.headers()["content-type"], "application/json");
        assert!(request.extensions().get::<Caller>().is_none());
    }
}
