//! Tollgate: an API gateway that speaks Kong's Admin API and proxy behaviour. See `DESIGN.md` in the
//! steering repository for the architecture; each module opens with what it owns.

pub mod admin;
pub mod auth;
pub mod balancer;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod declarative;
pub mod dns;
pub mod gui;
pub mod headers;
pub mod identity;
pub mod metrics;
pub mod model;
pub mod node;
pub mod paths;
pub mod plugins;
pub mod proxy;
pub mod router;
pub mod scrapes;
pub mod snapshot;
pub mod store;
pub mod sync;
pub mod tls;

/// The version reported by `tollgate version`, `GET /` and `Via`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
