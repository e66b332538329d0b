//! Bearer-token authentication: each token may read and write a set of namespaces.

use std::collections::HashSet;

use tonic::Status;

use super::config::TokenConfig;

/// What one caller may touch.
#[derive(Clone, Debug)]
pub(crate) enum Access {
    All,
    Namespaces(HashSet<String>),
}

impl Access {
    pub(crate) fn allows(&self, namespace: &str) -> bool {
        match self {
            Access::All => true,
            Access::Namespaces(set) => set.contains(namespace),
        }
    }

    /// `PERMISSION_DENIED` unless the namespace is allowed.
    pub(crate) fn check(&self, namespace: &str) -> Result<(), Status> {
        if self.allows(namespace) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "this token may not access namespace `{namespace}`"
            )))
        }
    }
}

/// The configured tokens.
pub(crate) struct Auth {
    tokens: Vec<(Vec<u8>, Access)>,
}

impl Auth {
    pub(crate) fn new(tokens: &[TokenConfig]) -> Auth {
        Auth {
            tokens: tokens
                .iter()
                .map(|t| {
                    let access = if t.namespaces.iter().any(|n| n == "*") {
                        Access::All
                    } else {
                        Access::Namespaces(t.namespaces.iter().cloned().collect())
                    };
                    (t.token.as_bytes().to_vec(), access)
                })
                .collect(),
        }
    }

    /// The caller's access from its `authorization: Bearer <token>` header;
    /// `UNAUTHENTICATED` when tokens are configured and it has none or a wrong one.
    pub(crate) fn caller(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Access, Status> {
        let presented = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        self.token(presented)
    }

    /// The access of a presented token (the data channel's hello carries it);
    /// `UNAUTHENTICATED` when tokens are configured and it is missing or unknown.
    pub(crate) fn token(&self, presented: Option<&str>) -> Result<Access, Status> {
        if self.tokens.is_empty() {
            return Ok(Access::All);
        }
        let presented = presented
            .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>`"))?;
        let mut found = None;
        // Compare against every token in constant time, so timing reveals nothing.
        for (token, access) in &self.tokens {
            if constant_time_eq(token, presented.as_bytes()) {
                found = Some(access.clone());
            }
        }
        found.ok_or_else(|| Status::unauthenticated("unknown token"))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(token: Option<&str>) -> tonic::metadata::MetadataMap {
        let mut m = tonic::metadata::MetadataMap::new();
        if let Some(t) = token {
            m.insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        m
    }

    #[test]
    fn tokens_grant_their_namespaces_only() {
        let auth = Auth::new(&[
            TokenConfig {
                token: "token-aaaa".into(),
                namespaces: vec!["a".into()],
            },
            TokenConfig {
                token: "token-root".into(),
                namespaces: vec!["*".into()],
            },
        ]);
        let a = auth.caller(&meta(Some("token-aaaa"))).unwrap();
        assert!(a.allows("a") && !a.allows("b"));
        assert_eq!(
            a.check("b").unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert!(auth.caller(&meta(Some("token-root"))).unwrap().allows("b"));
        let err = auth.caller(&meta(None)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let err = auth.caller(&meta(Some("token-aaab"))).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(Auth::new(&[]).caller(&meta(None)).unwrap().allows("x"));
    }
}
