//! The web page at `/`: plain HTML, CSS and JavaScript embedded in the
//! binary, so it works offline with no build step and nothing fetched from
//! elsewhere.
//!
//! The files hold no data: everything the page shows comes from the JSON
//! API. They are therefore served without the API token (a browser
//! navigation cannot send one); the page asks for the token when an API
//! call answers 401 and keeps it in the tab's `sessionStorage`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};

/// One embedded file.
#[derive(Debug)]
pub(crate) struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

const ASSETS: [Asset; 4] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("web/index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("web/app.js"),
    },
    Asset {
        path: "/plot.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("web/plot.js"),
    },
    Asset {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("web/style.css"),
    },
];

/// Only this origin's own files and API: no inline script, no third party.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; form-action 'none'; \
    frame-ancestors 'none'; base-uri 'none'";

/// The embedded file served at `path`, if any.
pub(crate) fn asset(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

impl Asset {
    /// The file as an HTTP answer, with headers that keep it from being
    /// framed, sniffed or cached stale after an upgrade.
    pub(crate) fn response(&'static self) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(Bytes::from_static(self.body.as_bytes())));
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert(
            HeaderName::from_static("content-security-policy"),
            HeaderValue::from_static(CSP),
        );
        h.insert(
            HeaderName::from_static("x-content-type-options"),
            HeaderValue::from_static("nosniff"),
        );
        h.insert(
            HeaderName::from_static("referrer-policy"),
            HeaderValue::from_static("no-referrer"),
        );
        resp
    }
}
