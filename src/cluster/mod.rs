//! Hybrid mode's link between a control plane and its data planes: the wire messages
//! ([`protocol`]), the control plane's side that pushes configurations ([`hub`]), the data plane's
//! side that applies and caches them ([`data_plane`]), the link's mutual TLS ([`tls`]), and every
//! node's status API ([`status`]).

pub mod data_plane;
pub mod hub;
pub mod protocol;
pub mod status;
pub mod tls;
