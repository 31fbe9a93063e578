//! Admin tokens and roles: minting (`tgp_` + 40 random alphanumerics, shown once, stored as a SHA-256
//! hash), checking a request's `Authorization: Bearer` against every stored hash in constant time,
//! and what each role may do (`org_admin` everything, `viewer` only reads). Required on a control
//! plane, and on a traditional node with `admin_auth = on`.

use http::Method;
use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::model::EntityError;
use crate::store::{Store, StoredToken};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    OrgAdmin,
    Viewer,
}

impl Role {
    pub const NAMES: &'static [&'static str] = &["org_admin", "viewer"];

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "org_admin" => Some(Role::OrgAdmin),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::OrgAdmin => "org_admin",
            Role::Viewer => "viewer",
        }
    }

    /// Viewers read; org admins do everything.
    pub fn may(self, method: &Method) -> bool {
        match self {
            Role::OrgAdmin => true,
            Role::Viewer => matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS),
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("A valid token is required")]
    Unauthenticated,
    #[error("You do not have permission to perform this action")]
    Forbidden,
}

/// A new token's secret.
pub fn new_secret() -> String {
    let body: String = rand::rng().sample_iter(&Alphanumeric).take(40).map(char::from).collect();
    format!("tgp_{body}")
}

/// The stored form of a secret.
pub fn hash(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The role of the token a request carries (`Authorization: Bearer <token>`), checking it against
/// every stored hash without an early exit.
pub async fn authenticate(store: &Store, authorization: Option<&str>) -> Result<(Role, StoredToken), AuthError> {
    let Some(secret) = authorization.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim) else {
        return Err(AuthError::Unauthenticated);
    };
    let presented = hash(secret);
    let tokens = store.tokens().await.map_err(|e: EntityError| {
        tracing::error!(error = %e, "admin tokens could not be read");
        AuthError::Unauthenticated
    })?;
    let mut found = None;
    for t in tokens {
        if bool::from(t.token_hash.as_bytes().ct_eq(presented.as_bytes())) {
            found = Some(t);
        }
    }
    let token = found.ok_or(AuthError::Unauthenticated)?;
    let role = Role::parse(&token.role).ok_or(AuthError::Unauthenticated)?;
    Ok((role, token))
}

/// Whether `role` may use `method`.
pub fn authorize(role: Role, method: &Method) -> Result<(), AuthError> {
    if role.may(method) { Ok(()) } else { Err(AuthError::Forbidden) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_random_and_hashed() {
        let a = new_secret();
        assert!(a.starts_with("tgp_") && a.len() == 44, "{a}");
        assert_ne!(a, new_secret());
        assert_eq!(hash("x").len(), 64);
        assert_eq!(hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn viewers_only_read() {
        assert!(Role::Viewer.may(&Method::GET));
        assert!(!Role::Viewer.may(&Method::POST));
        assert!(!Role::Viewer.may(&Method::DELETE));
        assert!(Role::OrgAdmin.may(&Method::PATCH));
    }
}
