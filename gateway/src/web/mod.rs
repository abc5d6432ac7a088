//! The control-room page: every asset embedded in the binary, served at `/`.

use axum::Router;

/// The page's routes (`/` and its assets).
pub fn routes() -> Router {
    Router::new()
}
