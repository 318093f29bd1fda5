//! `GET /`: the operator dashboard, a static page embedded in the binary. It holds no data of
//! its own: the browser signs in with an API key and reads everything from the API. The page is
//! served to anyone (it is public code); every call it makes is authorised by the key.

use axum::{
    extract::Path,
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};

use super::error::ApiError;

const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");
const APP_JS: &str = include_str!("../../assets/dashboard/app.js");
const STYLE_CSS: &str = include_str!("../../assets/dashboard/style.css");

/// Only our own origin: no inline script or style, no framing, no third-party requests.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'";

pub fn routes() -> Router<()> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
}

/// The dashboard page.
#[utoipa::path(get, path = "/", operation_id = "getDashboardPage", tag = "dashboard",
    responses((status = 200, description = "The page", content_type = "text/html", body = String)))]
pub async fn index() -> Response {
    page(INDEX_HTML, "text/html; charset=utf-8")
}

/// The page's script and style sheet.
#[utoipa::path(get, path = "/assets/{file}", operation_id = "getDashboardAsset", tag = "dashboard",
    params(("file" = String, Path, description = "`app.js` or `style.css`")),
    responses((status = 200, description = "The asset", content(
        (String = "text/javascript"),
        (String = "text/css"),
    ))))]
pub async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => page(APP_JS, "text/javascript; charset=utf-8"),
        "style.css" => page(STYLE_CSS, "text/css; charset=utf-8"),
        _ => ApiError::not_found(format!("no dashboard asset named {file:?}")).into_response(),
    }
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    async fn get(path: &str) -> Response {
        routes()
            .oneshot(
                axum::http::Request::builder()
                    .uri(path)
                    .body(Body::empty())
                    .unwrap_or_default(),
            )
            .await
            .unwrap_or_else(|never| match never {})
    }

    #[tokio::test]
    async fn serves_the_page_and_its_assets_with_strict_headers() {
        for (path, kind) in [
            ("/", "text/html"),
            ("/assets/app.js", "text/javascript"),
            ("/assets/style.css", "text/css"),
        ] {
            let response = get(path).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let headers = response.headers();
            let value = |name: header::HeaderName| {
                headers
                    .get(name)
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            assert!(value(header::CONTENT_TYPE).starts_with(kind), "{path}");
            assert_eq!(value(header::CACHE_CONTROL), "no-cache");
            assert_eq!(value(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
            assert_eq!(
                value(header::CONTENT_SECURITY_POLICY),
                CONTENT_SECURITY_POLICY
            );
        }
        assert_eq!(
            get("/assets/secret.txt").await.status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn the_page_loads_only_its_own_assets() {
        assert!(INDEX_HTML.contains("/assets/app.js") && INDEX_HTML.contains("/assets/style.css"));
        for text in [INDEX_HTML, APP_JS, STYLE_CSS] {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
        assert!(!APP_JS.contains("innerHTML"));
    }
}
