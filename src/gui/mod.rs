//! The admin page (Kong Manager's place, on `admin_gui_listen`): one HTML page, one plain ES module
//! and one stylesheet, embedded in the binary and served as written (no build step), and
//! `kconfig.js`, which tells the page where the Admin API is (Kong Manager's `window.K_CONFIG`).
//! The page talks to the Admin API only, from the browser, with the admin token the user pastes;
//! this module holds no state and never reaches the store. It serves these files and nothing else;
//! the page renders every entity value as text (never as markup), and the Content-Security-Policy
//! sent with the files lets only them run.

use axum::Router;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::config::Settings;

const INDEX: &str = include_str!("assets/index.html");
const APP: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");

/// Scripts and styles from the page's own origin only (no inline script, so a value that slipped
/// into markup could not run); requests to any http(s) origin (the Admin API is on another port).
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                      connect-src http: https:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page's router: `/` (and `/index.html`), `/app.js`, `/app.css`, `/kconfig.js`.
pub fn router(settings: &Settings) -> Router {
    let kconfig = kconfig(settings);
    Router::new()
        .route("/", get(|| async { file("text/html; charset=utf-8", INDEX) }))
        .route("/index.html", get(|| async { file("text/html; charset=utf-8", INDEX) }))
        .route("/app.js", get(|| async { file("text/javascript; charset=utf-8", APP) }))
        .route("/app.css", get(|| async { file("text/css; charset=utf-8", STYLE) }))
        .route("/kconfig.js", get(move || async move { file("text/javascript; charset=utf-8", kconfig.as_str()) }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "Not found\n").into_response() })
}

/// `window.K_CONFIG` as Kong Manager reads it: `ADMIN_API_URL` (`admin_gui_api_url`, may be
/// empty) and the ports of the first cleartext and TLS `admin_listen` entries, which the page
/// joins to its own host when there is no URL.
fn kconfig(settings: &Settings) -> String {
    let port = |ssl: bool| {
        settings.admin_listen.iter().find(|l| l.ssl == ssl).map(|l| l.addr.port().to_string()).unwrap_or_default()
    };
    let config = json!({
        "ADMIN_API_URL": settings.admin_gui_api_url.clone().unwrap_or_default(),
        "ADMIN_API_PORT": port(false),
        "ADMIN_API_SSL_PORT": port(true),
        "ADMIN_GUI_PATH": "/",
    });
    format!("window.K_CONFIG = {config};\n")
}

fn file(content_type: &'static str, body: impl Into<String>) -> Response {
    let mut response = body.into().into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(HeaderName::from_static("referrer-policy"), HeaderValue::from_static("no-referrer"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kconfig_names_the_admin_api() {
        let file = "admin_listen = 127.0.0.1:9001, 127.0.0.1:9444 ssl\nadmin_gui_api_url = api.test:9001\n";
        let settings = crate::config::from_sources(Some(file), &[]).expect("settings");
        assert_eq!(
            kconfig(&settings),
            "window.K_CONFIG = {\"ADMIN_API_PORT\":\"9001\",\"ADMIN_API_SSL_PORT\":\"9444\",\
             \"ADMIN_API_URL\":\"api.test:9001\",\"ADMIN_GUI_PATH\":\"/\"};\n"
        );
    }
}
