//! The browser pages from `client/`, embedded in the binary so it serves them from any working
//! directory. Third-party browser code (hls.js) is neither committed nor embedded: `make`
//! installs it from npm, and [`hls_js`] finds it in `node_modules` at run time.

use std::path::PathBuf;
use std::sync::OnceLock;

use bytes::Bytes;
use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use warp::http::{Response, StatusCode};

/// (file name, content type, bytes) for every page file in `client/`.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "hls.html",
        "text/html; charset=utf-8",
        include_bytes!("../../client/hls.html"),
    ),
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
        "publisher.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../client/publisher.js"),
    ),
    (
        "codec-recorder.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../client/codec-recorder.js"),
    ),
    (
        "webm-writer.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../client/webm-writer.js"),
    ),
    (
        "mse-player.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../client/mse-player.js"),
    ),
    (
        "latency-clock.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../client/latency-clock.js"),
    ),
    (
        "block-times.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../client/block-times.js"),
    ),
    (
        "hls-player.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../client/hls-player.js"),
    ),
    (
        "clock-stamp.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../client/clock-stamp.js"),
    ),
    (
        "server-clock.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../client/server-clock.js"),
    ),
    (
        "glass-readout.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../client/glass-readout.js"),
    ),
    (
        "constants.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../client/constants.js"),
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

/// Where hls.js lives inside an npm install.
const HLS_JS: &str = "node_modules/hls.js/dist/hls.min.js";

/// Finds hls.js in a fixed, short list of places, never in whatever directory the server
/// happens to run from (a writable working directory must not decide what script every
/// viewer runs): `$LENSCAST_HLS_JS` if set; the repository the binary was built from (where
/// `make` runs `npm ci`); and the repository two levels above the executable
/// (`target/release/lenscast` in a checkout that was moved after building).
fn find_hls_js() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("LENSCAST_HLS_JS") {
        return Some(PathBuf::from(path));
    }
    let built_in = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(HLS_JS);
    let beside_exe = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join(HLS_JS)));
    std::iter::once(built_in)
        .chain(beside_exe)
        .find(|path| path.is_file())
}

/// `GET /vendor/hls.min.js`: hls.js from npm, located once and cached in memory.
pub fn hls_js() -> warp::reply::Response {
    static HLS_JS_BYTES: OnceLock<Option<Bytes>> = OnceLock::new();
    let bytes = HLS_JS_BYTES.get_or_init(|| {
        let path = find_hls_js()?;
        match std::fs::read(&path) {
            Ok(bytes) => Some(Bytes::from(bytes)),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read hls.js");
                None
            }
        }
    });
    match bytes {
        Some(bytes) => Response::builder()
            .header(CONTENT_TYPE, "text/javascript; charset=utf-8")
            .header(CACHE_CONTROL, "public, max-age=3600")
            .body(bytes.clone())
            .expect("static headers are valid")
            .map(Into::into),
        None => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Bytes::from_static(
                b"hls.js is not installed: run `npm ci` in the lenscast directory (make does)\n",
            ))
            .expect("static headers are valid")
            .map(Into::into),
    }
}
