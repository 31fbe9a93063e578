//! Errors the proxy answers itself, with Kong's statuses and messages (nginx's, where Kong leaves the
//! answer to nginx), written in the client's format when the response leaves.

use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::framing::{BodyFault, Refusal};
use super::upstream::ProxyBody;

/// nginx's status for a request whose client left before it could be answered; never sent.
const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => StatusCode::BAD_REQUEST,
};

/// Why the proxy answered instead of the upstream.
#[derive(Debug)]
pub enum GatewayError {
    NoRoute,
    NoService,
    /// The route does not accept plain HTTP: 426, or a redirect to this location.
    HttpsRequired(StatusCode, Option<HeaderValue>),
    BadRequest,
    /// The request body's framing is broken; the connection closes after the answer.
    BadBody,
    /// The request head was refused; the connection closes after the answer.
    Refused(Refusal),
    BodyTooLarge,
    /// Connection refused or reset, or an invalid response.
    BadGateway,
    /// The upstream host name does not exist or has no addresses.
    NameResolution,
    /// The upstream host name could not be resolved (Kong's 500, with the resolver's error).
    DnsFailed {
        host: Box<str>,
        error: Box<str>,
    },
    /// The service's upstream has no healthy target to send to.
    NoPeer,
    Timeout,
    Unexpected,
    /// The client left before its request was whole: logged as nginx's 499, never answered.
    ClientClosed,
}

impl GatewayError {
    /// Maps which side of the upstream exchange failed to Kong's status.
    pub fn from_upstream(e: &super::upstream::UpstreamError) -> GatewayError {
        use super::upstream::UpstreamError;
        match e {
            UpstreamError::ClientBody(fault) => GatewayError::from_body(*fault),
            UpstreamError::BodyMismatch(_) => GatewayError::Unexpected,
            e if e.timed_out() => GatewayError::Timeout,
            _ => GatewayError::BadGateway,
        }
    }

    /// A client body that could not be read: the client's fault, never the upstream's.
    pub fn from_body(fault: BodyFault) -> GatewayError {
        match fault {
            BodyFault::Framing => GatewayError::BadBody,
            BodyFault::ClientLeft => GatewayError::ClientClosed,
        }
    }

    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            GatewayError::NoRoute => (StatusCode::NOT_FOUND, "no Route matched with those values"),
            GatewayError::NoService => (StatusCode::SERVICE_UNAVAILABLE, "no Service found with those values"),
            GatewayError::HttpsRequired(status, _) => (*status, "Please use HTTPS protocol"),
            GatewayError::BadRequest | GatewayError::BadBody | GatewayError::Refused(Refusal::BadRequest) => {
                (StatusCode::BAD_REQUEST, "Bad request")
            }
            GatewayError::Refused(Refusal::NotImplemented) => (StatusCode::NOT_IMPLEMENTED, "Not implemented"),
            GatewayError::Refused(Refusal::UriTooLong) => (StatusCode::URI_TOO_LONG, "URI too long"),
            // Kong's message for nginx's oversized heads (its 494).
            GatewayError::Refused(Refusal::HeadTooLarge) => {
                (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "Request header or cookie too large")
            }
            GatewayError::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "Request size limit exceeded"),
            GatewayError::BadGateway => {
                (StatusCode::BAD_GATEWAY, "An invalid response was received from the upstream server")
            }
            GatewayError::NameResolution => (StatusCode::SERVICE_UNAVAILABLE, "name resolution failed"),
            GatewayError::NoPeer => (StatusCode::SERVICE_UNAVAILABLE, "failure to get a peer from the ring-balancer"),
            GatewayError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "The upstream server is timing out"),
            GatewayError::Unexpected | GatewayError::DnsFailed { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "An unexpected error occurred")
            }
            GatewayError::ClientClosed => (CLIENT_CLOSED_REQUEST, ""),
        }
    }

    pub fn into_response(self, started: Instant) -> Response<ProxyBody> {
        if let GatewayError::ClientClosed = self {
            let mut resp = Response::new(ProxyBody::Abandoned);
            *resp.status_mut() = CLIENT_CLOSED_REQUEST;
            return resp;
        }
        let (status, message) = self.parts();
        let redirect = matches!(&self, GatewayError::HttpsRequired(s, _) if *s != StatusCode::UPGRADE_REQUIRED);
        let message: Option<std::sync::Arc<str>> = match &self {
            _ if redirect => None,
            GatewayError::DnsFailed { host, error } => {
                Some(format!("failed the initial dns/balancer resolve for '{host}' with: {error}").into())
            }
            _ => Some(message.into()),
        };
        let mut resp = super::gateway_response(status, message, Vec::new(), started);
        if let GatewayError::Refused(_) | GatewayError::BadBody = self {
            // What follows a broken request on the connection cannot be trusted to be a request.
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let GatewayError::HttpsRequired(status, location) = self {
            let headers = resp.headers_mut();
            if status == StatusCode::UPGRADE_REQUIRED {
                headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
                headers.insert(header::UPGRADE, HeaderValue::from_static("TLS/1.2, HTTP/1.1"));
            } else if let Some(location) = location {
                headers.insert(header::LOCATION, location);
            }
        }
        resp
    }
}
