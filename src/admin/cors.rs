//! Cross-origin requests to the Admin API, as Kong answers them (`api_helpers.cors_filter`), so that
//! a browser on the admin page's origin (`admin_gui_listen`, another port) may call it:
//! `Access-Control-Allow-Origin` is the request's `Origin` when `admin_gui_url` lists it (else the
//! first origin listed), or any `Origin` (`*` without one) when `admin_gui_url` is empty, with
//! `Access-Control-Allow-Credentials: true`; a preflight (`OPTIONS`) is answered 204 with the
//! path's methods in `Allow` and `Access-Control-Allow-Methods`, and the headers asked for (else
//! `Content-Type`) in `Access-Control-Allow-Headers`. Browsers send no token with a preflight, so
//! the token check lets `OPTIONS` through; no handler serves `OPTIONS`, so nothing runs for one.

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_REQUEST_HEADERS, ALLOW, ORIGIN, VARY,
};
use axum::http::{HeaderValue, Method, Request, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::AdminState;

/// Adds the CORS headers to every answer and turns a preflight into Kong's 204.
pub async fn cors(State(s): State<AdminState>, req: Request<Body>, next: Next) -> Response {
    let origin = req.headers().get(ORIGIN).cloned();
    let preflight = req.method() == Method::OPTIONS;
    let asked_headers = req.headers().get(ACCESS_CONTROL_REQUEST_HEADERS).cloned();
    let mut response = next.run(req).await;
    // No route serves OPTIONS: a path that exists answers 405 with its methods in `Allow`.
    if preflight && response.status() == StatusCode::METHOD_NOT_ALLOWED {
        let methods = response.headers().get(ALLOW).and_then(|v| v.to_str().ok()).map(allow_list);
        if let Some(methods) = methods.and_then(|m| HeaderValue::from_str(&m).ok()) {
            let mut answer = Response::new(Body::empty());
            *answer.status_mut() = StatusCode::NO_CONTENT;
            let headers = answer.headers_mut();
            headers.insert(ALLOW, methods.clone());
            headers.insert(ACCESS_CONTROL_ALLOW_METHODS, methods);
            let allowed = asked_headers.unwrap_or(HeaderValue::from_static("Content-Type"));
            headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, allowed);
            response = answer;
        }
    }
    let (allowed, varies) = allowed_origin(&s.settings.admin_gui_origins, origin);
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
    headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    if varies {
        headers.append(VARY, HeaderValue::from_static("Origin"));
    }
    response
}

/// The origin allowed for a request from `origin`, and whether the answer depends on it.
fn allowed_origin(configured: &[String], origin: Option<HeaderValue>) -> (HeaderValue, bool) {
    match configured {
        [] => match origin {
            Some(o) => (o, true),
            None => (HeaderValue::from_static("*"), true),
        },
        [first, ..] => {
            let listed = origin.filter(|o| configured.iter().any(|c| c.as_bytes() == o.as_bytes()));
            let varies = configured.len() > 1;
            match listed {
                Some(o) => (o, varies),
                None => (HeaderValue::from_str(first).unwrap_or(HeaderValue::from_static("*")), varies),
            }
        }
    }
}

/// axum's `Allow` (`GET,HEAD,POST`) with `OPTIONS` added, sorted and spaced as Kong lists it.
fn allow_list(allow: &str) -> String {
    let mut methods: Vec<&str> = allow.split(',').map(str::trim).filter(|m| !m.is_empty()).collect();
    methods.push("OPTIONS");
    methods.sort_unstable();
    methods.dedup();
    methods.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(s: &str) -> Option<HeaderValue> {
        Some(HeaderValue::from_str(s).expect("header"))
    }

    #[test]
    fn the_allowed_origin_follows_admin_gui_url() {
        assert_eq!(allowed_origin(&[], None).0, "*");
        assert_eq!(allowed_origin(&[], value("http://x.test")).0, "http://x.test");
        let one = ["http://admin.api:9100".to_string()];
        assert_eq!(
            allowed_origin(&one, value("http://example.com")),
            (value("http://admin.api:9100").expect("v"), false)
        );
        assert_eq!(allowed_origin(&one, None).0, "http://admin.api:9100");
        let two = ["http://a.test".to_string(), "https://b.test".to_string()];
        assert_eq!(allowed_origin(&two, value("https://b.test")), (value("https://b.test").expect("v"), true));
        assert_eq!(allowed_origin(&two, value("https://c.test")).0, "http://a.test");
    }

    #[test]
    fn allow_lists_are_kongs() {
        assert_eq!(allow_list("GET,HEAD"), "GET, HEAD, OPTIONS");
        assert_eq!(allow_list("GET,HEAD,POST"), "GET, HEAD, OPTIONS, POST");
        assert_eq!(allow_list("GET,HEAD,PATCH,PUT,DELETE"), "DELETE, GET, HEAD, OPTIONS, PATCH, PUT");
    }
}
