//! The chat page: HTML, script and style embedded in the binary, so the server needs no files
//! beside it and the page needs nothing from elsewhere (SPEC 9). Read `page/app.js` for how
//! the page talks to the server.

use axum::http::header;
use axum::response::IntoResponse;

/// The page: its markup only; the script and the style are files of their own, so that the
/// Content-Security-Policy can forbid inline script.
const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const STYLE_CSS: &str = include_str!("page/style.css");

/// `GET /`.
pub(super) async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
}

/// `GET /app.js`.
pub(super) async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
}

/// `GET /style.css`.
pub(super) async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLE_CSS,
    )
}
