//! The browser pages from `client/`, embedded in the binary so it serves them from any working
//! directory. Third-party browser code (hls.js) is not embedded: it comes from npm at build time.

use bytes::Bytes;
use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use warp::http::{Response, StatusCode};

/// (file name, content type, bytes) for every page file in `client/`.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../client/index.html"),
    ),
    (
        "viewer.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../client/viewer.js"),
    ),
    (
        "present.html",
        "text/html; charset=utf-8",
        include_bytes!("../../client/present.html"),
    ),
    (
        "present.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../client/present.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../client/style.css"),
    ),
];

/// The embedded file called `name`, if there is one. Only exact names match, so no request
/// path can reach anything else.
pub fn find(name: &str) -> Option<(&'static str, &'static [u8])> {
    FILES
        .iter()
        .find(|(file, _, _)| *file == name)
        .map(|(_, content_type, bytes)| (*content_type, *bytes))
}

/// A 200 response for an embedded file, or 404.
pub fn response(name: &str) -> Response<Bytes> {
    match find(name) {
        Some((content_type, bytes)) => Response::builder()
            .header(CONTENT_TYPE, content_type)
            // Pages change with the binary; revalidate rather than cache for long.
            .header(CACHE_CONTROL, "no-cache")
            .body(Bytes::from_static(bytes))
            .expect("static headers are valid"),
        None => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Bytes::from_static(b"not found"))
            .expect("static headers are valid"),
    }
}
