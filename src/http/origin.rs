//! The Origin check for WebSocket upgrades, and turning rejections into plain-text answers.
//!
//! Browsers send `Origin` on every WebSocket handshake, and any page on the web can open a
//! WebSocket to any host; checking it is what stops another site from publishing into or
//! reading from a lenscast that a user has open. Clients that are not browsers (ffmpeg, tests)
//! send no Origin and are let through: the publish token is what guards them.

use std::convert::Infallible;
use std::sync::Arc;

use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use super::HttpConfig;

/// The request's Origin is neither this server nor one of `--allow-origin`.
#[derive(Debug)]
pub struct ForbiddenOrigin(pub String);

impl warp::reject::Reject for ForbiddenOrigin {}

/// True if a WebSocket from `origin` may connect to a server reached as `host`.
pub fn allowed(origin: Option<&str>, host: Option<&str>, config: &HttpConfig) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    if config
        .allowed_origins
        .iter()
        .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
}

/// Rejects the request with 403 unless its Origin is allowed.
pub fn check(config: Arc<HttpConfig>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("origin")
        .and(warp::header::optional::<String>("host"))
        .and_then(move |origin: Option<String>, host: Option<String>| {
            let config = config.clone();
            async move {
                if allowed(origin.as_deref(), host.as_deref(), &config) {
                    Ok(())
                } else {
                    tracing::warn!(origin = ?origin, host = ?host, "WebSocket refused: origin not allowed");
                    Err(warp::reject::custom(ForbiddenOrigin(origin.unwrap_or_default())))
                }
            }
        })
        .untuple_one()
}

/// Every rejection becomes a short plain-text answer with the right status.
pub async fn recover(rejection: Rejection) -> Result<impl Reply, Infallible> {
    let (status, message) = if let Some(ForbiddenOrigin(origin)) = rejection.find() {
        (
            StatusCode::FORBIDDEN,
            format!("origin {origin:?} may not open this WebSocket (see --allow-origin)\n"),
        )
    } else if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "not found\n".to_string())
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".to_string(),
        )
    } else {
        (
            StatusCode::BAD_REQUEST,
            format!("bad request: {rejection:?}\n"),
        )
    };
    Ok(warp::reply::with_status(message, status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_and_listed_origins_pass() {
        let config = HttpConfig {
            allowed_origins: vec!["https://studio.example".into()],
            ..HttpConfig::default()
        };
        assert!(allowed(None, Some("127.0.0.1:8080"), &config));
        assert!(allowed(
            Some("http://127.0.0.1:8080"),
            Some("127.0.0.1:8080"),
            &config
        ));
        assert!(allowed(
            Some("https://studio.example"),
            Some("127.0.0.1:8080"),
            &config
        ));
        assert!(!allowed(
            Some("http://evil.example"),
            Some("127.0.0.1:8080"),
            &config
        ));
        assert!(!allowed(
            Some("http://127.0.0.1:9999"),
            Some("127.0.0.1:8080"),
            &config
        ));
        assert!(!allowed(Some("null"), Some("127.0.0.1:8080"), &config));
    }
}
