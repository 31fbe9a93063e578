//! An upstream's targets as Kong serves them (`kong/api/routes/upstreams.lua`): listed and created
//! under `/upstreams/{u}/targets` only (other methods there are 405, and `/targets` is 404), the raw
//! `/targets/all` page, and one target by id or `host:port`, which PUT updates but never creates. A
//! target named without a port means port 8000, as it was stored.

use axum::extract::{OriginalUri, Path, State};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::body::AdminBody;
use super::entities::Parent;
use super::error::{AdminError, AdminResult};
use super::{AdminState, Body, Endpoint};
use crate::balancer::{Balancer, Health, TargetConfig};
use crate::model::Kind;
use crate::model::schema::is_uuid;
use crate::model::upstreams::stored_target;

const UNDER_UPSTREAM: Option<Parent> = Some(Parent { kind: Kind::Upstream, field: "upstream" });

/// `GET` and `POST /upstreams/{u}/targets` (and `/targets/all`, the same list).
pub fn collection() -> Endpoint {
    Endpoint::collection(Kind::Target)
        .get(|State(s): State<AdminState>, Path(p): Path<Vec<String>>, OriginalUri(uri): OriginalUri| async move {
            s.list_entities(Kind::Target, UNDER_UPSTREAM, &p, uri.query(), uri.path()).await
        })
        .post(|State(s): State<AdminState>, Path(p): Path<Vec<String>>, body: AdminBody| async move {
            s.create_entity(Kind::Target, UNDER_UPSTREAM, &p, body).await
        })
}

/// `GET /upstreams/{u}/targets/all`.
pub fn all() -> Endpoint {
    Endpoint::collection(Kind::Target).get(
        |State(s): State<AdminState>, Path(p): Path<Vec<String>>, OriginalUri(uri): OriginalUri| async move {
            s.list_entities(Kind::Target, UNDER_UPSTREAM, &p, uri.query(), uri.path()).await
        },
    )
}

/// The path's `[upstream, target]` with the target in its stored form (`host:port`).
fn stored_key(mut params: Vec<String>) -> Vec<String> {
    if let Some(key) = params.get_mut(1).filter(|k| !is_uuid(k)) {
        *key = stored_target(key);
    }
    params
}

/// `/upstreams/{u}/targets/{id or host:port}`.
pub fn item() -> Endpoint {
    Endpoint::item(Kind::Target)
        .get(|State(s): State<AdminState>, Path(p): Path<Vec<String>>| async move {
            s.read_entity(Kind::Target, UNDER_UPSTREAM, &stored_key(p)).await
        })
        .patch(|State(s): State<AdminState>, Path(p): Path<Vec<String>>, body: AdminBody| async move {
            s.patch_entity(Kind::Target, UNDER_UPSTREAM, &stored_key(p), body).await
        })
        .put(|State(s): State<AdminState>, Path(p): Path<Vec<String>>, body: AdminBody| async move {
            s.put_target(stored_key(p), body).await
        })
        .delete(|State(s): State<AdminState>, Path(p): Path<Vec<String>>| async move {
            s.delete_entity(Kind::Target, UNDER_UPSTREAM, &stored_key(p)).await
        })
}

/// `PUT /upstreams/{u}/targets/{t}[/{address}]/healthy` (or `unhealthy`): sets the target's health on
/// this node until checks say otherwise.
pub fn set_health(health: Health) -> Endpoint {
    Endpoint::other("Sets a target's health on this node")
        .put(move |State(s): State<AdminState>, Path(p): Path<Vec<String>>| async move {
            s.set_target_health(stored_key(p), health).await
        })
        .takes(Body::Nothing)
        .status(axum::http::StatusCode::NO_CONTENT)
}

/// `GET /upstreams/{u}/health` (`?balancer_health=1`: the balancer's view).
pub fn health() -> Endpoint {
    Endpoint::other("The health of an upstream's targets").get(
        |State(s): State<AdminState>, Path(p): Path<Vec<String>>, OriginalUri(uri): OriginalUri| async move {
            let balancer_view = uri.query().is_some_and(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .any(|(k, v)| k == "balancer_health" && v != "0" && v != "false")
            });
            s.upstream_health(p.first().map(String::as_str).unwrap_or_default(), balancer_view).await
        },
    )
}

/// One target's part in a health report (Kong's `data` of a target) and its health: `DNS_ERROR`
/// when it has no addresses (its name does not resolve, or it is not in the balancer yet),
/// else the health of its addresses (any healthy one makes it `HEALTHY`). `address_key` is
/// `health` (a state) on the health endpoint, `healthy` (a boolean) in the balancer's view.
fn target_report(balancer: Option<&Balancer>, id: Option<uuid::Uuid>, address_key: &str) -> (&'static str, Value) {
    let found = balancer.zip(id).and_then(|(b, id)| Some((b, b.targets.iter().find(|t| t.id == id)?)));
    let Some((balancer, target)) = found else {
        return (
            "DNS_ERROR",
            json!({"host": Value::Null, "port": Value::Null, "dns": "unknown", "nodeWeight": 0,
            "weight": {"total": 0, "available": 0, "unavailable": 0}, "addresses": []}),
        );
    };
    let checks_on = balancer.upstream.healthchecks.enabled();
    let peers = balancer.peers.get(target.peers.clone()).unwrap_or_default();
    let mut health = if peers.is_empty() { "DNS_ERROR" } else { "HEALTHCHECKS_OFF" };
    let (mut total, mut available) = (0u64, 0u64);
    let mut addresses = Vec::with_capacity(peers.len());
    for peer in peers {
        let healthy = peer.health.is_healthy();
        let state = if !checks_on || peer.weight == 0 {
            "HEALTHCHECKS_OFF"
        } else if healthy {
            "HEALTHY"
        } else {
            "UNHEALTHY"
        };
        if state == "HEALTHY" || (state == "UNHEALTHY" && health != "HEALTHY") {
            health = state;
        }
        total += u64::from(peer.weight);
        if healthy {
            available += u64::from(peer.weight);
        }
        let mut address =
            json!({"ip": peer.address.ip().to_string(), "port": peer.address.port(), "weight": peer.weight});
        address[address_key] = if address_key == "healthy" { json!(healthy) } else { json!(state) };
        addresses.push(address);
    }
    let data = json!({
        "host": &*target.host, "port": target.port, "dns": &*target.dns, "nodeWeight": target.weight,
        "weight": {"total": total, "available": available, "unavailable": total - available},
        "addresses": addresses,
    });
    (health, data)
}

impl AdminState {
    async fn upstream_health(&self, key: &str, balancer_view: bool) -> AdminResult<axum::response::Response> {
        let upstream = self.store.lookup(&self.cp(), Kind::Upstream, key).await?.ok_or(AdminError::NotFound)?;
        let id = upstream.get("id").and_then(Value::as_str).and_then(|i| uuid::Uuid::parse_str(i).ok());
        let snapshot = self.holder.load_full();
        let balancer = id.and_then(|id| snapshot.balancers.get(&id)).map(|live| live.load());
        let checks_on = balancer.as_ref().is_some_and(|b| b.upstream.healthchecks.enabled());
        let node_id = self.node_id.to_string();
        if balancer_view {
            let Some(b) = balancer else { return Err(AdminError::NotFound) };
            let hosts: Vec<Value> =
                b.targets.iter().map(|t| target_report(Some(&b), Some(t.id), "healthy").1).collect();
            let (total, available) = b.weight();
            let healthy = b.is_healthy();
            let balancer_health = if healthy { "HEALTHY" } else { "UNHEALTHY" };
            let health = if checks_on { balancer_health } else { "HEALTHCHECKS_OFF" };
            let body = json!({"data": {"health": health, "balancer_health": balancer_health, "id": b.upstream.id,
                "details": {"healthy": healthy, "weight": {"total": total, "available": available,
                    "unavailable": total - available}, "hosts": hosts}},
                "next": Value::Null, "node_id": node_id});
            return Ok(axum::Json(body).into_response());
        }
        let upstream_id = upstream.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
        let q = crate::store::ListQuery {
            cp: &self.cp(),
            parent: Some(("upstream", upstream_id)),
            size: 1000,
            offset: None,
            tags: None,
        };
        let page = self.store.list(Kind::Target, &q).await?;
        let data: Vec<Value> = page
            .data
            .into_iter()
            .map(|mut target| {
                let tid = target.get("id").and_then(Value::as_str).and_then(|i| uuid::Uuid::parse_str(i).ok());
                let (health, data) = target_report(balancer.as_deref(), tid, "health");
                target.insert("health".into(), json!(health));
                target.insert("data".into(), data);
                Value::Object(target)
            })
            .collect();
        Ok(axum::Json(json!({"data": data, "next": Value::Null, "node_id": node_id})).into_response())
    }

    async fn set_target_health(&self, params: Vec<String>, health: Health) -> AdminResult<axum::response::Response> {
        // As in Kong, a control plane (which balances nothing) has no such endpoint.
        if self.settings.role == crate::config::NodeRole::ControlPlane {
            return Err(AdminError::NotFound);
        }
        let (Some(upstream_key), Some(key)) = (params.first(), params.get(1)) else { return Err(AdminError::NotFound) };
        let upstream =
            self.store.lookup(&self.cp(), Kind::Upstream, upstream_key).await?.ok_or(AdminError::NotFound)?;
        let upstream_id = upstream.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
        let name = upstream.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        let target = self.store.lookup_under(&self.cp(), Kind::Target, key, ("upstream", &upstream_id)).await?;
        let target = target
            .filter(|t| t.get("upstream").and_then(|u| u.get("id")).and_then(Value::as_str) == Some(&upstream_id))
            .ok_or(AdminError::NotFound)?;
        let target_id = target.get("id").and_then(Value::as_str).and_then(|id| uuid::Uuid::parse_str(id).ok());
        let snapshot = self.holder.load_full();
        let balancer =
            uuid::Uuid::parse_str(&upstream_id).ok().and_then(|id| snapshot.balancers.get(&id)).map(|live| live.load());
        let Some(balancer) = balancer else {
            return Err(AdminError::BadRequest(format!("Upstream {name} has no balancer")));
        };
        if !balancer.upstream.healthchecks.enabled() {
            return Err(AdminError::BadRequest(format!("no healthchecker found for {name}")));
        }
        // An address (`ip[:port]`, port 8000 when none) must be one of the target's.
        let address = match params.get(2) {
            Some(a) => {
                let nil = uuid::Uuid::nil();
                let split = TargetConfig::new(nil, nil, &stored_target(a), 0).map_err(|_| AdminError::NotFound)?;
                let ip = split.host.parse::<std::net::IpAddr>().map_err(|_| AdminError::NotFound)?;
                Some(std::net::SocketAddr::new(ip, split.port))
            }
            None => None,
        };
        let set = balancer.set_health(target_id, address, health);
        if set.is_empty() {
            return Err(AdminError::NotFound);
        }
        // The other nodes of this database follow (Kong's `balancer:post_health`).
        for address in set {
            let event = crate::store::HealthEvent {
                id: uuid::Uuid::new_v4().to_string(),
                node: self.node_id.to_string(),
                upstream: upstream_id.clone(),
                host: address.ip().to_string(),
                port: address.port(),
                healthy: health == Health::Healthy,
                at: crate::clock::now_millis(),
            };
            self.store.record_health_event(&event).await?;
        }
        Ok(axum::http::StatusCode::NO_CONTENT.into_response())
    }

    /// Kong's PUT on a target updates one that exists and never creates it.
    async fn put_target(&self, params: Vec<String>, body: AdminBody) -> AdminResult<axum::response::Response> {
        let (Some(upstream), Some(key)) = (params.first(), params.get(1)) else { return Err(AdminError::NotFound) };
        let upstream = self.store.lookup(&self.cp(), Kind::Upstream, upstream).await?.ok_or(AdminError::NotFound)?;
        let upstream_id = upstream.get("id").and_then(Value::as_str).unwrap_or_default();
        let existing = self.store.lookup_under(&self.cp(), Kind::Target, key, ("upstream", upstream_id)).await?;
        let belongs = existing
            .as_ref()
            .and_then(|t| t.get("upstream")?.get("id")?.as_str().map(|id| id == upstream_id))
            .unwrap_or(false);
        if !belongs {
            return Err(AdminError::NotFound);
        }
        self.put_entity(Kind::Target, UNDER_UPSTREAM, &params, body).await
    }
}
