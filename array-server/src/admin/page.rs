//! The admin page: static HTML, CSS and JavaScript compiled into the binary, so the page
//! needs no build step and no files next to the server.

use super::http::ApiResponse;

/// The page itself.
pub const INDEX_HTML: &str = include_str!("page/index.html");
/// The page's script: plain DOM code over the JSON API.
pub const APP_JS: &str = include_str!("page/app.js");
/// The page's styles.
pub const STYLE_CSS: &str = include_str!("page/style.css");
/// Shown instead of the page (with status 401) when no valid token came with the request;
/// `{{why}}` is replaced with the reason.
pub const LOGIN_HTML: &str = include_str!("page/login.html");

/// `GET /`.
pub fn index() -> ApiResponse {
    ApiResponse::bytes(
        200,
        "text/html; charset=utf-8",
        INDEX_HTML.as_bytes().to_vec(),
    )
    .with_header(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'",
    )
}

/// `GET /assets/NAME`, if it exists.
pub fn asset(name: &str) -> Option<ApiResponse> {
    let (content_type, body) = match name {
        "app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "style.css" => ("text/css; charset=utf-8", STYLE_CSS),
        _ => return None,
    };
    Some(ApiResponse::bytes(
        200,
        content_type,
        body.as_bytes().to_vec(),
    ))
}
