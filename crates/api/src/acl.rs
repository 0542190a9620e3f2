//! The caller's permissions: the token a request carries, resolved before its handler runs.
//!
//! The token comes from `?token=`, then `X-Consul-Token`, then `Authorization: Bearer`;
//! without one the agent's default token applies, then the anonymous token
//! (`State::acl_authorizer`). Handlers take an [`Authz`] and ask it: [`Authz::require`] for
//! what must be allowed (403 `Permission denied`), [`Authz::allows`] to leave out of a listing
//! what the caller may not see.

use std::sync::Arc;

use atoll_acl::{Access, Authorizer, Resource, Segment};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::{error_for_path, ApiError};
use crate::ApiContext;

/// Consul's body for a request its token does not allow.
pub const PERMISSION_DENIED: &str = "Permission denied";

/// What the caller of a request may do.
#[derive(Debug, Clone)]
pub struct Authz {
    authorizer: Arc<Authorizer>,
    secret: Option<String>,
}

impl Authz {
    /// A caller allowed everything (ACLs off).
    pub fn allow_all() -> Self {
        Self::from_authorizer(Authorizer::allow_all())
    }

    /// A caller with these permissions.
    pub fn from_authorizer(authorizer: Authorizer) -> Self {
        Authz {
            authorizer: Arc::new(authorizer),
            secret: None,
        }
    }

    /// The token's secret the request carried, if it carried one.
    pub fn secret(&self) -> Option<&str> {
        self.secret.as_deref()
    }

    /// The caller's merged rules.
    pub fn authorizer(&self) -> &Authorizer {
        &self.authorizer
    }

    /// Whether the caller may do `access` to `resource`.
    pub fn allows(&self, resource: Resource<'_>, access: Access) -> bool {
        self.authorizer.allows(resource, access)
    }

    /// `Ok` when the caller may do `access` to `resource`, else Consul's 403.
    pub fn require(&self, resource: Resource<'_>, access: Access) -> Result<(), ApiError> {
        if self.allows(resource, access) {
            Ok(())
        } else {
            Err(self.denied())
        }
    }

    /// Consul's 403 `Permission denied`.
    pub fn denied(&self) -> ApiError {
        ApiError::plain(StatusCode::FORBIDDEN, PERMISSION_DENIED)
    }

    /// Whether the caller may read the named resource.
    pub fn reads(&self, segment: Segment, name: &str) -> bool {
        self.allows(Resource::Named(segment, name), Access::Read)
    }

    /// Whether the caller may read a catalog node.
    pub fn reads_node(&self, node: &str) -> bool {
        self.reads(Segment::Node, node)
    }

    /// Whether the caller may see an instance of `service` on `node`: Consul asks for
    /// `service:read` on its service and `node:read` on its node.
    pub fn reads_instance(&self, service: &str, node: &str) -> bool {
        self.reads(Segment::Service, service) && self.reads_node(node)
    }

    /// `Ok` when the caller may read the named resource, else 403.
    pub fn require_read(&self, segment: Segment, name: &str) -> Result<(), ApiError> {
        self.require(Resource::Named(segment, name), Access::Read)
    }

    /// `Ok` when the caller may write the named resource, else 403.
    pub fn require_write(&self, segment: Segment, name: &str) -> Result<(), ApiError> {
        self.require(Resource::Named(segment, name), Access::Write)
    }

    /// Whether the caller may read the Marathon app (or group) `id`.
    pub fn reads_app(&self, id: &str) -> bool {
        self.reads(Segment::App, id)
    }

    /// Resolves the token a request carries (`query`: its raw query string).
    pub fn resolve(
        context: &ApiContext,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Self, AclNotFoundResponse> {
        let secret = request_token(headers, query);
        let settings = context.acl();
        if !settings.enabled {
            // ACLs off: no lock taken, nothing allocated but the secret.
            static ALLOW_ALL: std::sync::LazyLock<Arc<Authorizer>> =
                std::sync::LazyLock::new(|| Arc::new(Authorizer::allow_all()));
            return Ok(Authz {
                authorizer: ALLOW_ALL.clone(),
                secret,
            });
        }
        #[cfg(test)]
        if let Some(authorizer) = secret.as_deref().and_then(test_tokens::get) {
            return Ok(Authz {
                authorizer: Arc::new(authorizer),
                secret,
            });
        }
        let now = atoll_state::acl::now_unix_ms();
        let authorizer = context
            .store()
            .read(|state| {
                context
                    .acl_cache()
                    .authorizer(state, settings, secret.as_deref(), now)
            })
            .map_err(|_: atoll_state::acl::AclNotFound| AclNotFoundResponse { marathon: false })?;
        Ok(Authz { authorizer, secret })
    }
}

/// The token a request carries: `?token=`, then `X-Consul-Token`, then
/// `Authorization: Bearer` (the scheme in any case) or DC/OS's `Authorization: token=SECRET`.
/// Empty values count as none.
pub fn request_token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let from_query = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(name, _)| name == "token")
            .map(|(_, value)| value.into_owned())
    });
    let from_header = headers
        .get("x-consul-token")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string());
    let from_bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let v = v.trim();
            if let Some(secret) = v.strip_prefix("token=") {
                return Some(secret.trim().to_string());
            }
            let (scheme, rest) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| rest.trim().to_string())
        });
    [from_query, from_header, from_bearer]
        .into_iter()
        .flatten()
        .find(|t| !t.is_empty())
}

/// The answer to a request whose token names no token: 403 `ACL not found`.
#[derive(Debug)]
pub struct AclNotFoundResponse {
    marathon: bool,
}

impl IntoResponse for AclNotFoundResponse {
    fn into_response(self) -> Response {
        if self.marathon {
            return error_for_path("/v2", StatusCode::FORBIDDEN, "ACL not found", None);
        }
        ApiError::plain(StatusCode::FORBIDDEN, "ACL not found").into_response()
    }
}

impl FromRequestParts<ApiContext> for Authz {
    type Rejection = AclNotFoundResponse;

    async fn from_request_parts(
        parts: &mut Parts,
        context: &ApiContext,
    ) -> Result<Self, Self::Rejection> {
        let marathon = crate::error::is_marathon_path(parts.uri.path());
        Authz::resolve(context, &parts.headers, parts.uri.query())
            .map_err(|_| AclNotFoundResponse { marathon })
    }
}

/// Tokens installed by unit tests, resolved before the state is asked (the state's tables
/// are not needed to test what a rule allows). Per thread: a `#[tokio::test]` runs its
/// requests on its own thread.
#[cfg(test)]
pub(crate) mod test_tokens {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use atoll_acl::Authorizer;

    thread_local! {
        static TOKENS: RefCell<HashMap<String, Authorizer>> = RefCell::new(HashMap::new());
    }

    /// Makes `secret` resolve to `authorizer` on this thread.
    pub(crate) fn install(secret: &str, authorizer: Authorizer) {
        TOKENS.with(|t| t.borrow_mut().insert(secret.to_string(), authorizer));
    }

    pub(super) fn get(secret: &str) -> Option<Authorizer> {
        TOKENS.with(|t| t.borrow().get(secret).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_the_query_then_the_header_then_bearer() {
        let mut headers = HeaderMap::new();
        headers.insert("x-consul-token", "h".parse().unwrap());
        headers.insert("authorization", "BEARER b".parse().unwrap());
        assert_eq!(
            request_token(&headers, Some("a=1&token=q%2Dx")).as_deref(),
            Some("q-x")
        );
        assert_eq!(
            request_token(&headers, Some("token=")).as_deref(),
            Some("h")
        );
        headers.remove("x-consul-token");
        assert_eq!(request_token(&headers, None).as_deref(), Some("b"));
        headers.insert("authorization", "token=dcos".parse().unwrap());
        assert_eq!(request_token(&headers, None).as_deref(), Some("dcos"));
        assert_eq!(request_token(&HeaderMap::new(), None), None);
    }
}
