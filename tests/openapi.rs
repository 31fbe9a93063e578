//! `GET /openapi.json`, black-box: an OpenAPI 3.1 document that names every path the node lists
//! in `GET /endpoints`, and whose methods are exactly what the node routes: every described method
//! is served on its path, every other one is refused 405.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use serde_json::Value;
use support::{Gateway, client, status_json};

/// The control plane every node holds (the root Admin API paths address it).
const DEFAULT_CP_ID: &str = "00000000-0000-4000-8000-000000000001";
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

async fn document(gw: &Gateway) -> Value {
    let r = gw.http.get(gw.admin_url("/openapi.json")).send().await.expect("request");
    assert_eq!(r.status(), 200);
    let content_type = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert_eq!(content_type, "application/json");
    r.json().await.expect("a JSON document")
}

/// A concrete path for a template: the default control plane for `{id}`, `x` for the rest.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|s| match s {
            "{id}" => DEFAULT_CP_ID,
            s if s.starts_with('{') => "x",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_names_every_endpoint() {
    let gw = Gateway::start().await;
    let doc = document(&gw).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "Tollgate Admin API");
    assert!(doc["info"]["version"].is_string());
    let paths = doc["paths"].as_object().expect("paths");
    let (status, endpoints) = gw.get("/endpoints").await;
    assert_eq!(status, 200);
    let endpoints: Vec<&str> = endpoints["data"].as_array().expect("data").iter().filter_map(Value::as_str).collect();
    assert!(endpoints.contains(&"/openapi.json"), "{endpoints:?}");
    for template in endpoints {
        assert!(paths.contains_key(template), "{template} is not described");
        let prefixed = format!("/v2/control-planes/{{id}}{}", if template == "/" { "" } else { template });
        let prefixed = prefixed.replacen("{id}", "{id}/core-entities", 1);
        assert!(paths.contains_key(&prefixed), "{prefixed} is not described");
    }
    for konnect in ["/v1/tokens", "/v1/realms/{realm}/consumers/{consumer}/keys/{key}", "/v2/control-planes/{id}/nodes"]
    {
        assert!(paths.contains_key(konnect), "{konnect} is not described");
    }
    // Schemas come from the entity descriptors.
    let service = &doc["components"]["schemas"]["services.input"];
    assert_eq!(service["properties"]["port"]["maximum"], 65535, "{service}");
    let page = &paths["/services"]["get"]["responses"]["200"]["content"]["application/json"]["schema"];
    assert_eq!(page["properties"]["data"]["items"]["$ref"], "#/components/schemas/services", "{page}");
    // An open Admin API asks for no token.
    assert!(doc.get("security").is_none());
}

/// Probes every described path with every method: a described one is routed (whatever its
/// handler then says, never the router's 405), any other is the router's 405.
#[tokio::test]
async fn the_described_methods_are_exactly_the_routed_ones() {
    let gw = Gateway::start().await;
    let doc = document(&gw).await;
    let mut wrong = Vec::new();
    let mut probes = 0;
    for (template, item) in doc["paths"].as_object().expect("paths") {
        let url = gw.admin_url(&concrete(template));
        for method in METHODS {
            let op = &item[method];
            // A handler that itself refuses with 405 (Kong never deletes a route's service through it).
            if op["responses"]["405"].is_object() {
                continue;
            }
            let r = gw.http.request(method.to_uppercase().parse().unwrap(), &url).send().await.expect("request");
            let (status, body) = status_json(r).await;
            probes += 1;
            let refused = status == 405 && body["message"] == "Method not allowed";
            if op.is_object() == refused {
                wrong.push(format!("{method} {template}: described {}, answered {status} {body}", op.is_object()));
            }
        }
    }
    assert!(probes > 500, "{probes} probes");
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// On a control plane the document, like every path, needs an admin token (a viewer's will do),
/// and says so.
#[tokio::test]
async fn a_control_plane_serves_the_document_to_token_holders_only() {
    let (gw, _token) = Gateway::start_control_plane().await;
    let (status, body) =
        status_json(client(None).get(gw.admin_url("/openapi.json")).send().await.expect("request")).await;
    assert_eq!(status, 401, "{body}");
    let doc = document(&gw).await;
    assert_eq!(doc["security"], serde_json::json!([{"adminToken": []}]));
    assert_eq!(doc["components"]["securitySchemes"]["adminToken"]["scheme"], "bearer");
    let consumers = &doc["paths"]["/consumers"]["post"]["responses"];
    assert!(consumers["401"].is_object() && consumers["403"].is_object(), "{consumers}");
}
