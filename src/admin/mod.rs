//! The Admin API (axum): Kong 3.x paths for consumers, consumer groups, services, routes, plugins,
//! key-auth and ACL credentials (top-level and nested), node information, and the 0.x legacy paths of the seed
//! walkthrough, and the `/v1` and `/v2` APIs, every route described as it is added (`endpoint`,
//! served by `/endpoints` and `/openapi.json`). Handlers validate through `model`, persist through
//! `store`, and map errors once in `error`. Every answer carries Kong's CORS headers (`cors`), for
//! the admin page's browser. A write is live on the proxy as soon as the snapshot builder has
//! replayed it.

pub mod body;
mod certificates;
mod config;
mod consumer_groups;
mod control_planes;
mod cors;
mod endpoint;
mod entities;
pub mod error;
mod info;
mod legacy;
mod openapi;
mod pagination;
pub mod problem;
mod realms;
pub mod tokens;
mod upstreams;

use std::sync::{Arc, OnceLock};

use std::time::Duration;

use axum::Router;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{Method, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use uuid::Uuid;

use crate::balancer::Health;
use crate::config::Settings;
use crate::model::{Handlers, Kind};
use crate::proxy::stats::Stats;
use crate::snapshot::SnapshotHolder;
use crate::store::{DEFAULT_CP, Store};
use body::AdminBody;
use endpoint::{About, Body, Endpoint, Op};
use entities::Parent;
use error::AdminError;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AdminState {
    inner: Arc<AdminInner>,
}

#[derive(Debug)]
pub struct AdminInner {
    pub store: Store,
    pub settings: Settings,
    pub node_id: Uuid,
    pub hostname: String,
    pub stats: &'static Stats,
    /// This node's snapshot, so that a write is answered once the proxy serves it.
    pub holder: Arc<SnapshotHolder>,
    /// On a control plane: its data planes.
    pub hub: Option<Arc<crate::cluster::hub::Hub>>,
    /// Held while `POST /config` loads a configuration (one at a time).
    pub config_loading: tokio::sync::Mutex<()>,
}

impl std::ops::Deref for AdminState {
    type Target = AdminInner;
    fn deref(&self) -> &AdminInner {
        &self.inner
    }
}

impl AdminState {
    pub fn new(inner: AdminInner) -> AdminState {
        AdminState { inner: Arc::new(inner) }
    }

    /// The control plane this request addresses: the one named by a
    /// `/v2/control-planes/{id}/core-entities` prefix, else `default`.
    fn cp(&self) -> Arc<str> {
        static DEFAULT: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(DEFAULT_CP));
        CONTROL_PLANE.try_with(Arc::clone).unwrap_or_else(|_| DEFAULT.clone())
    }
}

tokio::task_local! {
    /// Set around a request under `/v2/control-planes/{id}/core-entities`.
    static CONTROL_PLANE: Arc<str>;
}

/// A top-level or nested collection: GET lists, POST creates.
fn collection(kind: Kind, parent: Option<Parent>) -> Endpoint {
    let endpoint = Endpoint::collection(kind);
    match parent {
        None => endpoint
            .get(move |State(s): State<AdminState>, OriginalUri(uri): OriginalUri| async move {
                s.list_entities(kind, None, &[], uri.query(), uri.path()).await
            })
            .post(move |State(s): State<AdminState>, body: AdminBody| async move {
                s.create_entity(kind, None, &[], body).await
            }),
        Some(_) => endpoint
            .get(
                move |State(s): State<AdminState>, Path(p): Path<Vec<String>>, OriginalUri(uri): OriginalUri| async move {
                    s.list_entities(kind, parent, &p, uri.query(), uri.path()).await
                },
            )
            .post(move |State(s): State<AdminState>, Path(p): Path<Vec<String>>, body: AdminBody| async move {
                s.create_entity(kind, parent, &p, body).await
            }),
    }
}

/// One entity by id or endpoint key: GET, PATCH, PUT, DELETE.
fn item(kind: Kind, parent: Option<Parent>) -> Endpoint {
    item_writes(kind, parent).get(move |State(s): State<AdminState>, Path(p): Path<Vec<String>>| async move {
        s.read_entity(kind, parent, &p).await
    })
}

/// PATCH, PUT and DELETE of one entity.
fn item_writes(kind: Kind, parent: Option<Parent>) -> Endpoint {
    Endpoint::item(kind)
        .patch(move |State(s): State<AdminState>, Path(p): Path<Vec<String>>, body: AdminBody| async move {
            s.patch_entity(kind, parent, &p, body).await
        })
        .put(move |State(s): State<AdminState>, Path(p): Path<Vec<String>>, body: AdminBody| async move {
            s.put_entity(kind, parent, &p, body).await
        })
        .delete(move |State(s): State<AdminState>, Path(p): Path<Vec<String>>| async move {
            s.delete_entity(kind, parent, &p).await
        })
}

/// Which API a path belongs to, and so which error body it answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// Kong's Admin API (and Tollgate's own additions beside it): Kong's error bodies; listed by
    /// `GET /endpoints` and served again under `/v2/control-planes/{id}/core-entities`.
    Kong,
    /// The Konnect-shaped `/v1` and `/v2` APIs: `application/problem+json` errors.
    Konnect,
}

/// One routed path: its axum template (`/consumers/{consumers}`, also its OpenAPI path) and what
/// each of its methods does.
#[derive(Debug, Clone)]
pub struct Routed {
    pub template: String,
    pub surface: Surface,
    pub about: About,
    pub ops: Vec<Op>,
}

/// The Admin API's routes, each registered under its template together with the description of
/// its methods: the router, `GET /endpoints` and `GET /openapi.json` all come from this one list,
/// so none can drift from what is served. Nothing routes around it (a unit test checks).
struct Routes {
    router: Router<AdminState>,
    routed: Vec<Routed>,
}

impl Routes {
    /// A Kong Admin API path.
    fn add(self, template: &str, endpoint: Endpoint) -> Routes {
        self.on(Surface::Kong, template, endpoint)
    }

    /// A `/v1` or `/v2` path.
    fn konnect(self, template: &str, endpoint: Endpoint) -> Routes {
        self.on(Surface::Konnect, template, endpoint)
    }

    fn on(mut self, surface: Surface, template: &str, endpoint: Endpoint) -> Routes {
        self.router = self.router.route(template, endpoint.router);
        self.routed.push(Routed { template: template.to_string(), surface, about: endpoint.about, ops: endpoint.ops });
        self
    }

    /// Every entity's collections and items, top-level and nested, from the descriptors.
    fn entities(mut self) -> Routes {
        for kind in Kind::ALL {
            let def = kind.def();
            if def.handlers != Handlers::Standard {
                continue;
            }
            if let Some(path) = def.path {
                let item_handler = if kind == Kind::ConsumerGroup {
                    // Kong Enterprise answers a group with its members.
                    consumer_groups::group_item(item_writes(kind, None))
                } else {
                    item(kind, None)
                };
                self = self
                    .add(&format!("/{path}"), collection(kind, None))
                    .add(&format!("/{path}/{{{}}}", def.table), item_handler);
            }
            for &(parent_kind, segment) in def.nested {
                let (Some(parent_path), Some(field)) = (parent_kind.def().path, kind.field_towards(parent_kind)) else {
                    continue;
                };
                let parent = Some(Parent { kind: parent_kind, field });
                let base = format!("/{parent_path}/{{{}}}/{segment}", parent_kind.table());
                self = self
                    .add(&base, collection(kind, parent))
                    .add(&format!("{base}/{{{}}}", def.table), item(kind, parent));
            }
        }
        // Memberships answer with both sides (Kong Enterprise's shapes).
        for &(side, segment) in Kind::GroupMembership.def().nested {
            let other = if side == Kind::Consumer { Kind::ConsumerGroup } else { Kind::Consumer };
            let (Some(side_path), consumer_side) = (side.def().path, side == Kind::Consumer) else { continue };
            let base = format!("/{side_path}/{{{}}}/{segment}", side.table());
            self = self
                .add(&base, consumer_groups::memberships(consumer_side))
                .add(&format!("{base}/{{{}}}", other.table()), consumer_groups::membership(consumer_side));
        }
        self
    }

    /// Adds `GET /endpoints` (the Kong paths, itself included) and `GET /openapi.json` (every
    /// path, itself included), both computed once here, and hands back the router.
    fn finish(self, admin_auth: bool) -> (Router<AdminState>, Vec<Routed>) {
        let listing: Arc<OnceLock<Arc<Vec<String>>>> = Arc::default();
        let document: Arc<OnceLock<bytes::Bytes>> = Arc::default();
        let (l, d) = (listing.clone(), document.clone());
        let routes = self
            .add(
                "/endpoints",
                Endpoint::other("Every Kong Admin API path this node serves")
                    .get(move || info::endpoints(l.get().cloned().unwrap_or_default())),
            )
            .add(
                "/openapi.json",
                Endpoint::other("This OpenAPI document").get(move || openapi::serve(d.get().cloned())),
            );
        let mut templates: Vec<String> =
            routes.routed.iter().filter(|r| r.surface == Surface::Kong).map(|r| r.template.clone()).collect();
        templates.sort();
        let _ = listing.set(Arc::new(templates));
        let _ = document.set(openapi::render(&routes.routed, admin_auth));
        (routes.router, routes.routed)
    }
}

/// Every route of the Admin API, Kong's paths then the `/v1` and `/v2` ones, not yet finished.
fn routes() -> Routes {
    let kong = Routes { router: Router::new(), routed: Vec::new() }
        .add("/", Endpoint::other("Node information").get(info::root))
        .add("/status", Endpoint::other("Node status").get(info::status))
        .add(
            "/metrics",
            Endpoint::other("Prometheus metrics, Kong's names")
                .get(crate::cluster::status::metrics)
                .answers(Body::Text),
        )
        .add(
            "/config",
            Endpoint::other("The declarative configuration (DB-less)")
                .get(config::read)
                .post(config::load)
                .map(|r| r.layer(axum::extract::DefaultBodyLimit::max(config::CONFIG_MAX))),
        )
        .add("/plugins/enabled", Endpoint::other("Plugins this node runs").get(info::enabled_plugins))
        .add("/plugins/schema/{name}", Endpoint::other("A plugin's schema").get(info::plugin_schema))
        .add("/schemas/plugins/{name}", Endpoint::other("A plugin's schema").get(info::plugin_schema))
        .add(
            "/schemas/plugins/validate",
            Endpoint::other("Validates a plugin").post(info::validate_plugin).status(StatusCode::OK),
        )
        .add("/schemas/{db_entity_name}", Endpoint::other("An entity's schema").get(info::entity_schema))
        .add(
            "/schemas/{db_entity_name}/validate",
            Endpoint::other("Validates an entity").post(info::validate_entity).status(StatusCode::OK),
        )
        .entities()
        .add("/certificates", certificates::collection())
        .add("/certificates/{certificates}", certificates::item())
        .add("/upstreams/{upstreams}/health", upstreams::health())
        .add("/upstreams/{upstreams}/targets", upstreams::collection())
        .add("/upstreams/{upstreams}/targets/all", upstreams::all())
        .add("/upstreams/{upstreams}/targets/{targets}", upstreams::item())
        .add("/upstreams/{upstreams}/targets/{targets}/healthy", upstreams::set_health(Health::Healthy))
        .add("/upstreams/{upstreams}/targets/{targets}/unhealthy", upstreams::set_health(Health::Unhealthy))
        .add("/upstreams/{upstreams}/targets/{targets}/{address}/healthy", upstreams::set_health(Health::Healthy))
        .add("/upstreams/{upstreams}/targets/{targets}/{address}/unhealthy", upstreams::set_health(Health::Unhealthy))
        .add("/routes/{routes}/service", info::route_service())
        .add("/key-auths/{keyauth_credentials}/consumer", info::owner(Kind::KeyAuth, "consumer", Kind::Consumer))
        .add("/acls/{acls}/consumer", info::owner(Kind::Acl, "consumer", Kind::Consumer));
    legacy::routes(kong)
        .konnect("/v1/tokens", Endpoint::other("Admin tokens").get(tokens::list).post(tokens::create))
        .konnect("/v1/tokens/{id}", Endpoint::other("An admin token").delete(tokens::delete))
        .konnect(
            "/v2/control-planes",
            Endpoint::other("Control planes").get(control_planes::list).post(control_planes::create),
        )
        .konnect(
            "/v2/control-planes/{id}",
            Endpoint::other("A control plane")
                .get(control_planes::read)
                .patch(control_planes::update)
                .delete(control_planes::delete),
        )
        .konnect(
            "/v2/control-planes/{id}/data-plane-tokens",
            Endpoint::other("A control plane's data plane tokens")
                .get(control_planes::list_data_plane_tokens)
                .post(control_planes::create_data_plane_token),
        )
        .konnect(
            "/v2/control-planes/{id}/data-plane-tokens/{token}",
            Endpoint::other("A data plane token").delete(control_planes::delete_data_plane_token),
        )
        .konnect(
            "/v2/control-planes/{id}/nodes",
            Endpoint::other("A control plane's data planes").get(control_planes::nodes),
        )
        .konnect("/v1/realms", Endpoint::other("Realms").get(realms::list_realms).post(realms::create_realm))
        .konnect(
            "/v1/realms/{realm}",
            Endpoint::other("A realm").get(realms::read_realm).patch(realms::update_realm).delete(realms::delete_realm),
        )
        .konnect(
            "/v1/realms/{realm}/consumers",
            Endpoint::other("A realm's consumers").get(realms::list_consumers).post(realms::create_consumer),
        )
        .konnect(
            "/v1/realms/{realm}/consumers/{consumer}",
            Endpoint::other("A realm consumer")
                .get(realms::read_consumer)
                .patch(realms::update_consumer)
                .delete(realms::delete_consumer),
        )
        .konnect(
            "/v1/realms/{realm}/consumers/{consumer}/move",
            Endpoint::other("Moves a realm consumer to another realm").post(realms::move_consumer),
        )
        .konnect(
            "/v1/realms/{realm}/consumers/{consumer}/keys",
            Endpoint::other("A realm consumer's keys").get(realms::list_keys).post(realms::create_key),
        )
        .konnect(
            "/v1/realms/{realm}/consumers/{consumer}/keys/{key}",
            Endpoint::other("A realm consumer's key").get(realms::read_key).delete(realms::delete_key),
        )
        .konnect(
            "/v2/control-planes/{id}/expected-config-hash",
            Endpoint::other("The configuration hash a control plane's data planes should have")
                .get(control_planes::expected_config_hash),
        )
}

/// The whole Admin API.
pub fn router(state: AdminState) -> Router {
    let (entities, _) = routes().finish(state.settings.admin_auth);
    let entities = entities
        .fallback(|| async { AdminError::NotFound })
        .method_not_allowed_fallback(|| async { AdminError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(state.clone(), read_your_writes))
        .with_state(state.clone());
    // Before routing: the token check, then the control-plane prefix; around everything, the
    // catch of a panic, and outside it the CORS headers every answer carries (401s included).
    Router::new()
        .fallback_service(entities)
        .layer(axum::middleware::from_fn_with_state(state.clone(), core_entities))
        .layer(axum::middleware::from_fn_with_state(state.clone(), require_token))
        .layer(axum::middleware::from_fn(catch_panic))
        .layer(axum::middleware::from_fn_with_state(state, cors::cors))
}

/// A panic in a handler (a bug) is answered 500 with Kong's body; the node and every other request
/// go on. The panic hook has logged it.
async fn catch_panic(req: Request<axum::body::Body>, next: Next) -> Response {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(response) => response,
        Err(_) => AdminError::Unexpected.into_response(),
    }
}

const CORE_ENTITIES: &str = "/core-entities";

/// Serves `/v2/control-planes/{id}/core-entities/<path>` as `/<path>` of that control plane.
async fn core_entities(State(s): State<AdminState>, mut req: Request<axum::body::Body>, next: Next) -> Response {
    let path = req.uri().path();
    let Some(rest) = path.strip_prefix("/v2/control-planes/") else {
        return next.run(req).await;
    };
    let Some((id, tail)) = rest.split_once('/') else {
        return next.run(req).await;
    };
    let Some(tail) = tail.strip_prefix(&CORE_ENTITIES[1..]) else {
        return next.run(req).await;
    };
    if !(tail.is_empty() || tail.starts_with('/')) {
        return next.run(req).await;
    }
    let cp = match s.store.control_plane(id).await {
        Ok(Some(cp)) => cp,
        Ok(None) => return problem::Problem::not_found().into_response(),
        Err(e) => return problem::Problem::from(e).into_response(),
    };
    let inner_path = if tail.is_empty() { "/" } else { tail };
    let pq = match req.uri().query() {
        Some(q) => format!("{inner_path}?{q}"),
        None => inner_path.to_string(),
    };
    match pq.parse() {
        Ok(uri) => *req.uri_mut() = uri,
        Err(_) => return AdminError::NotFound.into_response(),
    }
    CONTROL_PLANE.scope(Arc::from(cp.cp), next.run(req)).await
}

/// On a control plane (or with `admin_auth = on`) every path needs a token whose role allows the
/// method: 401 without a valid token, 403 for a viewer's write. A CORS preflight (`OPTIONS`)
/// passes: browsers send it without the token, and no handler serves it (see `cors`).
async fn require_token(State(s): State<AdminState>, req: Request<axum::body::Body>, next: Next) -> Response {
    if !s.settings.admin_auth || req.method() == Method::OPTIONS {
        return next.run(req).await;
    }
    let header = req.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match crate::auth::authenticate(&s.store, header).await {
        Ok((role, _)) => match crate::auth::authorize(role, req.method()) {
            Ok(()) => next.run(req).await,
            Err(e) => problem::Problem::from(e).into_response(),
        },
        Err(e) => problem::Problem::from(e).into_response(),
    }
}

/// How long a write waits for this node's proxy to serve it before answering anyway.
const LIVE_WAIT: Duration = Duration::from_secs(1);

/// Answers a successful write only once this node's proxy serves it, so a script can create a
/// consumer and a key and call the route at once (Kong's node-local cache invalidation gives the
/// same guarantee).
async fn read_your_writes(State(s): State<AdminState>, req: Request<axum::body::Body>, next: Next) -> Response {
    let write = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let response = next.run(req).await;
    if write && response.status().is_success() {
        let version = s.store.committed_version();
        if !s.holder.wait_for(version, LIVE_WAIT).await {
            tracing::warn!(version, "write acknowledged before the proxy caught up");
        }
    }
    response
}

/// Kong accepts a trailing slash on every path (`POST /consumers/`).
pub fn trim_trailing_slash<B>(mut req: Request<B>) -> Request<B> {
    let path = req.uri().path();
    if path.len() > 1 && path.ends_with('/') {
        let trimmed = path.trim_end_matches('/');
        let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
        let pq = match req.uri().query() {
            Some(q) => format!("{trimmed}?{q}"),
            None => trimmed.to_string(),
        };
        if let Ok(uri) = pq.parse() {
            *req.uri_mut() = uri;
        }
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tower::ServiceExt;

    async fn buggy() -> &'static str {
        panic!("a bug in a handler")
    }

    #[tokio::test]
    async fn a_panicking_handler_is_answered_500_and_the_next_request_is_served() {
        let app: Router = Router::new()
            .route("/bug", get(buggy))
            .route("/fine", get(|| async { "fine" }))
            .layer(axum::middleware::from_fn(catch_panic));
        let call = |path: &'static str| {
            app.clone().oneshot(Request::builder().uri(path).body(axum::body::Body::empty()).expect("request"))
        };
        let bug = call("/bug").await.expect("answered");
        assert_eq!(bug.status(), axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        let body = http_body_util::BodyExt::collect(bug.into_body()).await.expect("body").to_bytes();
        assert_eq!(&body[..], br#"{"message":"An unexpected error occurred"}"#);
        assert_eq!(call("/fine").await.expect("answered").status(), axum::http::StatusCode::OK);
    }
}
