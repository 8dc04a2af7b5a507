//! `GET /hls/<name>`: the HLS mirror's playlist and segments, read from its run directory.
//!
//! Only the exact names the mirror writes are served ([`crate::hls::file_kind`]), so no request
//! can reach another file: `..`, slashes, percent escapes and half-written `.tmp` files are all
//! 404 before the file system is touched. Files are read whole; the mirror renames each one
//! into place complete, so a reader gets all of a file or (not yet written, already deleted)
//! a 404, never part of one.
//!
//! Caching: the playlist changes every segment, so it is `no-cache` (a CDN revalidates it each
//! time); a segment never changes once its name exists, so it is `immutable` for a year and a
//! CDN or nginx in front can serve it to every viewer after the first.

use std::path::Path;

use bytes::Bytes;
use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use warp::http::{Response, StatusCode};

use crate::hls::{file_kind, FileKind};

/// The response for `name` in the HLS directory `dir`: the file with its type and caching, or 404.
pub fn response(dir: &Path, name: &str) -> warp::reply::Response {
    let Some(kind) = file_kind(name) else {
        return not_found();
    };
    // A blocking read on the async runtime, deliberately: files are small (a segment is about
    // bitrate × 1 s), were just written and sit in the page cache, so the read takes
    // microseconds, less than handing it to a blocking thread would.
    let bytes = match std::fs::read(dir.join(name)) {
        Ok(bytes) => bytes,
        Err(_) => return not_found(),
    };
    let (content_type, cache_control) = match kind {
        FileKind::Playlist => ("application/vnd.apple.mpegurl", "no-cache"),
        FileKind::Segment => ("video/mp2t", "public, max-age=31536000, immutable"),
    };
    let response = Response::builder()
        .header(CONTENT_TYPE, content_type)
        .header(CACHE_CONTROL, cache_control)
        .body(Bytes::from(bytes))
        .expect("static headers are valid");
    warp::Reply::into_response(response)
}

fn not_found() -> warp::reply::Response {
    let response = Response::builder()
        .status(StatusCode::NOT_FOUND)
        // A CDN must not remember that a segment was missing: it may be written a moment later.
        .header(CACHE_CONTROL, "no-store")
        .body(Bytes::from_static(b"not found"))
        .expect("static headers are valid");
    warp::Reply::into_response(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(dir: &Path, name: &str) -> u16 {
        response(dir, name).status().as_u16()
    }

    #[test]
    fn only_the_mirrors_own_names_are_served() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("run");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("live.m3u8"), "#EXTM3U\n").unwrap();
        std::fs::write(dir.join("seg-7.ts"), [0x47; 188]).unwrap();
        std::fs::write(dir.join("seg-8.ts.tmp"), [0x47; 10]).unwrap();
        std::fs::write(root.path().join("secret.ts"), "no").unwrap();
        std::fs::write(root.path().join("seg-1.ts"), "outside").unwrap();

        assert_eq!(status(&dir, "live.m3u8"), 200);
        assert_eq!(status(&dir, "seg-7.ts"), 200);
        for name in [
            "seg-8.ts.tmp",
            "seg-8.ts",
            "../secret.ts",
            "..%2fsecret.ts",
            "%2e%2e/seg-1.ts",
            "../seg-1.ts",
            "run/seg-7.ts",
            "/etc/passwd",
            "seg-.ts",
            "seg-7.ts/",
            "seg--7.ts",
            "seg-+7.ts",
            "seg-7.TS",
            "seg-٣.ts",
            "seg-123456789012345678901.ts",
            "live.m3u8.tmp",
            "LIVE.m3u8",
            "",
            ".",
            "..",
        ] {
            assert_eq!(status(&dir, name), 404, "{name:?}");
        }
    }

    #[test]
    fn types_and_caching() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("live.m3u8"), "#EXTM3U\n").unwrap();
        std::fs::write(dir.path().join("seg-0.ts"), [0x47; 188]).unwrap();
        let playlist = response(dir.path(), "live.m3u8");
        assert_eq!(
            playlist.headers()[CONTENT_TYPE],
            "application/vnd.apple.mpegurl"
        );
        assert_eq!(playlist.headers()[CACHE_CONTROL], "no-cache");
        let segment = response(dir.path(), "seg-0.ts");
        assert_eq!(segment.headers()[CONTENT_TYPE], "video/mp2t");
        assert_eq!(
            segment.headers()[CACHE_CONTROL],
            "public, max-age=31536000, immutable"
        );
        let missing = response(dir.path(), "seg-1.ts");
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(missing.headers()[CACHE_CONTROL], "no-store");
    }
}
