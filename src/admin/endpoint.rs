//! One Admin API path's handlers, each method recorded with what it takes and answers as it is
//! routed. Routes are added only through an [`Endpoint`], so `GET /endpoints` and
//! `GET /openapi.json` describe exactly what is served; this module describes, it does not handle.

use axum::handler::Handler;
use axum::http::{Method, StatusCode};
use axum::routing::MethodRouter;

use super::AdminState;
use crate::model::Kind;

/// What a path serves.
#[derive(Debug, Clone, Copy)]
pub enum About {
    /// A collection of entities of a kind: GET lists a page, POST creates one.
    Collection(Kind),
    /// One entity, by id or endpoint key: GET reads, PATCH merges, PUT upserts, DELETE removes.
    Item(Kind),
    /// Anything else, in a few words.
    Other(&'static str),
}

/// A request or response body, as far as the description goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    Nothing,
    /// A whole entity (what POST and PUT take, what reads answer).
    Entity(Kind),
    /// Some of an entity's fields (what PATCH takes).
    Changes(Kind),
    /// A page of entities (`data`, `next`, `offset`).
    Page(Kind),
    /// A JSON object of another shape.
    Object,
    /// Plain text (`/metrics`: Prometheus' exposition format).
    Text,
}

/// One routed method.
#[derive(Debug, Clone)]
pub struct Op {
    pub method: Method,
    /// The status of a successful answer.
    pub status: StatusCode,
    pub takes: Body,
    pub answers: Body,
}

impl Op {
    /// What a method does on a path serving `about`, unless the endpoint says otherwise.
    fn usual(about: About, method: Method) -> Op {
        let (status, takes, answers) = match (about, &method) {
            (_, &Method::DELETE) => (StatusCode::NO_CONTENT, Body::Nothing, Body::Nothing),
            (About::Collection(k), &Method::GET) => (StatusCode::OK, Body::Nothing, Body::Page(k)),
            (About::Collection(k), &Method::POST) => (StatusCode::CREATED, Body::Entity(k), Body::Entity(k)),
            (About::Item(k), &Method::GET) => (StatusCode::OK, Body::Nothing, Body::Entity(k)),
            (About::Item(k), &Method::PATCH) => (StatusCode::OK, Body::Changes(k), Body::Entity(k)),
            (About::Item(k), &Method::PUT) => (StatusCode::OK, Body::Entity(k), Body::Entity(k)),
            (_, &Method::GET) => (StatusCode::OK, Body::Nothing, Body::Object),
            (_, &Method::POST) => (StatusCode::CREATED, Body::Object, Body::Object),
            _ => (StatusCode::OK, Body::Object, Body::Object),
        };
        Op { method, status, takes, answers }
    }
}

/// A path's method router and the description of every method it routes.
pub struct Endpoint {
    pub(super) router: MethodRouter<AdminState>,
    pub about: About,
    pub ops: Vec<Op>,
}

impl Endpoint {
    pub fn new(about: About) -> Endpoint {
        Endpoint { router: MethodRouter::new(), about, ops: Vec::new() }
    }

    pub fn collection(kind: Kind) -> Endpoint {
        Endpoint::new(About::Collection(kind))
    }

    pub fn item(kind: Kind) -> Endpoint {
        Endpoint::new(About::Item(kind))
    }

    pub fn other(summary: &'static str) -> Endpoint {
        Endpoint::new(About::Other(summary))
    }

    fn on(mut self, method: Method, route: impl FnOnce(MethodRouter<AdminState>) -> MethodRouter<AdminState>) -> Self {
        self.router = route(self.router);
        self.ops.push(Op::usual(self.about, method));
        self
    }

    pub fn get<H: Handler<T, AdminState>, T: 'static>(self, handler: H) -> Self {
        self.on(Method::GET, |r| r.get(handler))
    }

    pub fn post<H: Handler<T, AdminState>, T: 'static>(self, handler: H) -> Self {
        self.on(Method::POST, |r| r.post(handler))
    }

    pub fn put<H: Handler<T, AdminState>, T: 'static>(self, handler: H) -> Self {
        self.on(Method::PUT, |r| r.put(handler))
    }

    pub fn patch<H: Handler<T, AdminState>, T: 'static>(self, handler: H) -> Self {
        self.on(Method::PATCH, |r| r.patch(handler))
    }

    pub fn delete<H: Handler<T, AdminState>, T: 'static>(self, handler: H) -> Self {
        self.on(Method::DELETE, |r| r.delete(handler))
    }

    /// The last method added succeeds with `status` (a 204 or a 405 has no body).
    pub fn status(mut self, status: StatusCode) -> Self {
        if let Some(op) = self.ops.last_mut() {
            op.status = status;
            if matches!(status, StatusCode::NO_CONTENT | StatusCode::METHOD_NOT_ALLOWED) {
                op.answers = Body::Nothing;
            }
        }
        self
    }

    /// The last method added answers `body`.
    pub fn answers(mut self, body: Body) -> Self {
        if let Some(op) = self.ops.last_mut() {
            op.answers = body;
        }
        self
    }

    /// The last method added takes `body`.
    pub fn takes(mut self, body: Body) -> Self {
        if let Some(op) = self.ops.last_mut() {
            op.takes = body;
        }
        self
    }

    /// Wraps the router (a body limit, say) without changing what is routed.
    pub fn map(mut self, f: impl FnOnce(MethodRouter<AdminState>) -> MethodRouter<AdminState>) -> Self {
        self.router = f(self.router);
        self
    }
}
