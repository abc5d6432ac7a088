//! The control-room page: every asset embedded in the binary, served at `/`.
//!
//! The page works on a LAN with no internet: HTML, CSS, JavaScript and the icon are compiled in
//! (`include_str!`), fonts are the system's, tones are generated in the browser (WebAudio), and
//! every asset goes out with `Content-Security-Policy: default-src 'self'`, so the page can load
//! nothing from elsewhere and runs no inline script or style. The assets live in `web/assets/`:
//!
//! - `index.html`: the page's skeleton (login form, board, facility with the "connect a
//!   device" help, shift summary, audit log);
//! - `app.css`: the dark theme;
//! - `i18n.js`: the words in Chinese (default) and English;
//! - `app.js`: session, SSE stream and heartbeat watchdog, tones, views;
//! - `icon.svg`: the tab icon.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The page's policy is the API's (`default-src 'self'`: only its own origin, no inline script
/// or style; never framed, as an acknowledge button in someone else's frame would be a
/// click-jacking target), set here too so the page keeps it whatever layers wrap these routes.
pub use crate::api::CONTENT_SECURITY_POLICY;

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

/// Every file the page needs, by the path it is served at.
pub const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("assets/index.html"),
    },
    Asset {
        path: "/assets/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("assets/app.css"),
    },
    Asset {
        path: "/assets/i18n.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("assets/i18n.js"),
    },
    Asset {
        path: "/assets/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("assets/app.js"),
    },
    Asset {
        path: "/assets/icon.svg",
        content_type: "image/svg+xml",
        body: include_str!("assets/icon.svg"),
    },
];

/// The page's routes (`/` and its assets).
pub fn routes() -> Router {
    let mut router = Router::new();
    for asset in ASSETS {
        router = router.route(asset.path, get(move || async move { serve(asset) }));
    }
    router
}

/// An asset with its type and the page's security headers. `no-cache`: a browser left open for
/// weeks on a control-room screen revalidates after a gateway upgrade instead of mixing versions.
fn serve(asset: &Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        ],
        asset.body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn serve_routes() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, routes()).await });
        addr
    }

    #[tokio::test]
    async fn every_asset_is_served_with_its_type_and_the_policy() {
        let addr = serve_routes().await;
        let client = reqwest011::Client::new();
        for asset in ASSETS {
            let r = client
                .get(format!("http://{addr}{}", asset.path))
                .send()
                .await
                .expect("request");
            assert_eq!(r.status().as_u16(), 200, "{}", asset.path);
            let h = r.headers();
            assert_eq!(h["content-type"], asset.content_type, "{}", asset.path);
            assert_eq!(h["cache-control"], "no-cache");
            assert!(
                h["content-security-policy"]
                    .to_str()
                    .is_ok_and(|v| v.contains("default-src 'self'")),
                "{}",
                asset.path
            );
            assert_eq!(r.text().await.expect("body"), asset.body);
        }
    }

    #[test]
    fn the_page_references_only_embedded_assets_and_has_nothing_inline() {
        let html = ASSETS[0].body;
        for part in html.split("src=\"").skip(1).chain(html.split("href=\"").skip(1)) {
            let url = part.split('"').next().unwrap_or_default();
            assert!(
                ASSETS.iter().any(|a| a.path == url),
                "index.html refers to {url}, which is not embedded"
            );
        }
        // Under `default-src 'self'` inline code and style attributes are refused by the browser.
        assert!(!html.contains("style="), "style attribute in index.html");
        assert!(!html.contains("<style"), "style element in index.html");
        assert!(!html.contains(" on"), "inline event handler in index.html");
        for chunk in html.split("<script").skip(1) {
            assert!(chunk.trim_start().starts_with("src="), "inline script in index.html");
        }
    }

    #[test]
    fn both_languages_have_the_same_words() {
        let dict = ASSETS
            .iter()
            .find(|a| a.path.ends_with("i18n.js"))
            .map(|a| a.body)
            .unwrap_or_default();
        let (zh, en) = dict.split_once("\n  en: {").expect("an en block");
        let keys = |block: &str| -> std::collections::BTreeSet<String> {
            block
                .lines()
                .filter_map(|l| l.trim().split_once(": "))
                .map(|(k, _)| k.to_owned())
                .filter(|k| k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                .collect()
        };
        let zh_keys = keys(zh.split_once("zh: {").map(|(_, b)| b).unwrap_or_default());
        let en_keys = keys(en);
        assert!(zh_keys.len() > 50, "{zh_keys:?}");
        assert_eq!(zh_keys, en_keys);
    }
}
