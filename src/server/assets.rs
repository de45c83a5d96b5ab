//! The chat page's files: built into the engine from `web/` (precompressed by build.rs), or replaced as a
//! whole by a bundle's own `web/` folder. Served with content types, ETags and gzip where the client takes it.

use std::borrow::Cow;
use std::collections::HashMap;

use hyper::header::{
    HeaderMap, HeaderValue, ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_SECURITY_POLICY, CONTENT_TYPE,
    ETAG, IF_NONE_MATCH, REFERRER_POLICY, VARY, X_CONTENT_TYPE_OPTIONS,
};
use hyper::{Response, StatusCode};
use rust_embed::RustEmbed;
use sha2::{Digest, Sha256};

use super::body::Body;

#[derive(RustEmbed)]
#[folder = "$OUT_DIR/web/"]
struct BuiltIn;

struct File {
    data: Cow<'static, [u8]>,
    gzip: Option<Cow<'static, [u8]>>,
    etag: String,
}

/// The page's files by path (no leading slash).
pub struct Assets {
    files: HashMap<String, File>,
}

impl Assets {
    /// The built-in page, or `overrides` (a bundle's `web/` files) when there are any.
    pub fn new(overrides: &[(String, Vec<u8>)]) -> Self {
        let mut files = HashMap::new();
        if overrides.is_empty() {
            for name in BuiltIn::iter().filter(|n| !n.ends_with(".gz")) {
                let file = BuiltIn::get(&name).expect("listed file");
                let gzip = BuiltIn::get(&format!("{name}.gz")).map(|f| f.data);
                let etag = etag(&file.metadata.sha256_hash());
                files.insert(name.into_owned(), File { data: file.data, gzip, etag });
            }
        } else {
            for (name, data) in overrides {
                let etag = etag(&Sha256::digest(data));
                files.insert(name.clone(), File { data: Cow::Owned(data.clone()), gzip: None, etag });
            }
        }
        Assets { files }
    }

    pub fn respond(&self, path: &str, headers: &HeaderMap) -> Response<Body> {
        let name = match path.trim_start_matches('/') {
            "" => "index.html",
            name => name,
        };
        let Some(file) = self.files.get(name) else {
            return Response::builder()
                .status(StatusCode::NOT_FOUND)
                .header(CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(Body::full(format!("{path} is not part of the chat page\n")))
                .expect("valid response");
        };
        let response = Response::builder()
            .header(CONTENT_SECURITY_POLICY, PAGE_POLICY)
            .header(X_CONTENT_TYPE_OPTIONS, "nosniff")
            .header(REFERRER_POLICY, "no-referrer")
            .header(ETAG, &file.etag)
            // Names carry no content hash, so browsers must revalidate; the ETag makes that a cheap 304.
            .header(CACHE_CONTROL, "no-cache")
            .header(VARY, "Accept-Encoding");
        let not_modified = headers
            .get(IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|tag| tag.trim() == file.etag || tag.trim() == "*"));
        if not_modified {
            return response.status(StatusCode::NOT_MODIFIED).body(Body::empty()).expect("valid response");
        }
        let response = response.header(CONTENT_TYPE, content_type(name));
        match (&file.gzip, accepts_gzip(headers)) {
            (Some(gzip), true) => {
                response.header(CONTENT_ENCODING, HeaderValue::from_static("gzip")).body(Body::full(gzip.to_vec()))
            }
            _ => response.body(Body::full(file.data.to_vec())),
        }
        .expect("valid response")
    }
}

/// The browser itself keeps the page offline and contained: scripts, styles, images, sounds and connections
/// only from stove (no CDN, no tracking pixel in a model's Markdown; attached pictures and sounds show from
/// data: URLs), no plugins, and no framing by other sites. This holds for a bundle's own page too.
const PAGE_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
     media-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

fn etag(hash: &[u8]) -> String {
    format!("\"{}\"", crate::pack::hex(&hash[..16]))
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers.get_all(ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).any(|v| {
        v.split(',').any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| p.trim().replace(' ', "") == "q=0");
            (name == "gzip" || name == "*") && !refused
        })
    })
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("txt" | "md") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.parse().unwrap(), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn the_page_is_built_in_with_types_and_compression() {
        let assets = Assets::new(&[]);
        let page = assets.respond("/", &headers(&[("accept-encoding", "gzip, br")]));
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(page.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(page.headers()[CONTENT_ENCODING], "gzip");
        assert!(page.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap().contains("connect-src 'self'"));
        let plain = assets.respond("/index.html", &headers(&[]));
        assert!(plain.headers().get(CONTENT_ENCODING).is_none());
    }

    #[test]
    fn a_matching_etag_gets_304() {
        let assets = Assets::new(&[]);
        let etag = assets.respond("/", &headers(&[])).headers()[ETAG].clone();
        let mut request = HeaderMap::new();
        request.insert(IF_NONE_MATCH, etag);
        assert_eq!(assets.respond("/", &request).status(), StatusCode::NOT_MODIFIED);
    }

    #[test]
    fn a_bundle_page_replaces_the_built_in_one() {
        let assets = Assets::new(&[("index.html".into(), b"<p>custom</p>".to_vec())]);
        assert_eq!(assets.respond("/", &headers(&[])).status(), StatusCode::OK);
        assert_eq!(assets.respond("/js/app.js", &headers(&[])).status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn gzip_refused_with_q0_is_not_sent() {
        assert!(!accepts_gzip(&headers(&[("accept-encoding", "gzip;q=0")])));
        assert!(accepts_gzip(&headers(&[("accept-encoding", "deflate, gzip")])));
    }
}
