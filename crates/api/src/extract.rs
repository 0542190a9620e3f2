//! Request extractors whose rejections are the API's JSON errors instead of axum's plain
//! text, and the answers for unknown routes and methods.

use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::Response;
use serde::de::DeserializeOwned;

use crate::error::error_for_path;

/// Path parameters, like axum's `Path`; a parameter that is not valid UTF-8 or does not
/// parse is a 400 naming it.
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => {
                let field = match &rejection {
                    PathRejection::FailedToDeserializePathParams(e) => match e.kind() {
                        ErrorKind::InvalidUtf8InPathParam { key }
                        | ErrorKind::ParseErrorAtKey { key, .. }
                        | ErrorKind::DeserializeError { key, .. } => Some(key.clone()),
                        _ => None,
                    },
                    _ => None,
                };
                Err(error_for_path(
                    parts.uri.path(),
                    rejection.status(),
                    rejection.body_text(),
                    field.as_deref(),
                ))
            }
        }
    }
}

/// No route has this path.
pub async fn unknown_route(request: Request) -> Response {
    let path = request.uri().path();
    error_for_path(
        path,
        StatusCode::NOT_FOUND,
        format!("No endpoint {} {path}", request.method()),
        None,
    )
}

/// The route exists, not with this method.
pub async fn method_not_allowed(request: Request) -> Response {
    let path = request.uri().path();
    error_for_path(
        path,
        StatusCode::METHOD_NOT_ALLOWED,
        format!("Method {} is not allowed on {path}", request.method()),
        None,
    )
}
