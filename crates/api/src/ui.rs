//! The web UI at `/ui/`: one page and its scripts and stylesheet, embedded in the binary
//! (nothing is fetched at run time but the API itself). The page is a client of the same
//! HTTP API everyone else uses; this module only hands out the files.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;
use crate::ApiContext;

/// Every file of `src/ui`, by name, as the build script embedded them.
const FILES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));

/// The routes of the UI: `/` and `/ui` lead to `/ui/`, which is the page; its files are
/// under `/ui/assets/`.
pub fn routes() -> Router<ApiContext> {
    Router::new()
        .route("/", get(to_ui))
        .route("/ui", get(to_ui))
        .route("/ui/", get(page))
        .route("/ui/assets/{file}", get(asset))
}

async fn to_ui() -> Redirect {
    Redirect::to("/ui/")
}

async fn page() -> Response {
    match file("index.html") {
        Some(body) => serve("index.html", body),
        None => missing("index.html"),
    }
}

async fn asset(Path(name): Path<String>) -> Response {
    // The page itself is served at `/ui/` only, so that there is one address for it.
    match file(&name).filter(|_| name != "index.html") {
        Some(body) => serve(&name, body),
        None => missing(&name),
    }
}

fn file(name: &str) -> Option<&'static str> {
    FILES
        .iter()
        .find(|(file, _)| *file == name)
        .map(|(_, body)| *body)
}

/// The content type of a UI file, from its extension.
fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, extension)| extension) {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("json") => "application/json",
        _ => "text/plain; charset=utf-8",
    }
}

fn serve(name: &str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(name)),
    );
    // Embedded files change with the binary: a browser revalidates instead of keeping an
    // old script after an upgrade.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn missing(name: &str) -> Response {
    ApiError::not_found(format!("No UI asset {name:?}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_scripts_are_embedded() {
        for name in ["index.html", "style.css", "core.js", "consul.js"] {
            assert!(
                file(name).is_some_and(|body| !body.is_empty()),
                "{name} is embedded"
            );
        }
    }

    #[test]
    fn every_script_the_page_loads_is_embedded() {
        let page = file("index.html").unwrap_or_default();
        let mut loaded = 0;
        for piece in page.split("src=\"assets/").skip(1) {
            let name = piece.split('"').next().unwrap_or_default();
            loaded += 1;
            assert!(file(name).is_some(), "{name} is loaded by the page");
        }
        assert!(loaded >= 2, "the page loads its scripts from assets/");
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type("core.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("style.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
    }
}
