//! The Host and Origin checks, and turning rejections into plain-text answers.
//!
//! Browsers send `Origin` on every WebSocket handshake, and any page on the web can open a
//! WebSocket to any host; checking it is what stops another site from publishing into or
//! reading from a lenscast that a user has open. Clients that are not browsers (ffmpeg, tests)
//! send no Origin and are let through: the publish token is what guards them.
//!
//! The Origin check compares against the Host header, so Host must be trustworthy first: a
//! DNS-rebinding page has its own name in both Origin and Host. So every request's Host must
//! name this server: an IP address (what a rebinding attack cannot choose), `localhost`, or a
//! name given with `--allow-host`.

use std::convert::Infallible;
use std::sync::Arc;

use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use super::HttpConfig;

/// The request's Origin is neither this server nor one of `--allow-origin`.
#[derive(Debug)]
pub struct ForbiddenOrigin(pub String);

impl warp::reject::Reject for ForbiddenOrigin {}

/// The Host header does not name this server.
#[derive(Debug)]
pub struct ForbiddenHost(pub String);

impl warp::reject::Reject for ForbiddenHost {}

/// The name part of a Host header (`name`, `name:port`, `[v6]:port`), lowercased.
fn host_name(host: &str) -> String {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// True if a request with this Host header is meant for this server.
pub fn host_allowed(host: Option<&str>, config: &HttpConfig) -> bool {
    // HTTP/1.0 clients may send no Host; there is no name to rebind then.
    let Some(host) = host else {
        return true;
    };
    let name = host_name(host);
    name.parse::<std::net::IpAddr>().is_ok()
        || name == "localhost"
        || config
            .allowed_hosts
            .iter()
            .any(|allowed| host_name(allowed) == name)
}

/// True if a WebSocket from `origin` may connect to a server reached as `host` (a Host that
/// [`host_allowed`] has already accepted).
pub fn allowed(origin: Option<&str>, host: Option<&str>, config: &HttpConfig) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    if listed(origin, &config.allowed_origins) {
        return true;
    }
    // Same origin means same scheme too: an https page is not an http server's page, nor
    // the other way round.
    let scheme = if config.tls { "https://" } else { "http://" };
    let authority = origin
        .get(..scheme.len())
        .filter(|s| s.eq_ignore_ascii_case(scheme))
        .map(|_| &origin[scheme.len()..]);
    matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
}

/// True if `origin` is in `list` (exactly, ignoring case) or `list` has `*`.
fn listed(origin: &str, list: &[String]) -> bool {
    list.iter()
        .any(|listed| listed == "*" || listed.eq_ignore_ascii_case(origin))
}

/// Adds CORS headers to a response of a route other sites' players may read (`/hls/`,
/// `/live.webm`), for a request from `origin`: `Access-Control-Allow-Origin` when
/// `--cors-origin` lists that origin (or `*`), and `Vary: Origin` so that a cache in front
/// keeps one answer per origin.
pub fn with_cors(
    mut response: warp::reply::Response,
    origin: Option<&str>,
    config: &HttpConfig,
) -> warp::reply::Response {
    use warp::http::header::{ACCESS_CONTROL_ALLOW_ORIGIN, VARY};
    let list = &config.cors_origins;
    if list.is_empty() {
        return response;
    }
    let headers = response.headers_mut();
    if list.iter().any(|listed| listed == "*") {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, "*".parse().expect("valid"));
        return response;
    }
    headers.append(VARY, "origin".parse().expect("valid"));
    if let Some(origin) = origin.filter(|origin| listed(origin, list)) {
        if let Ok(value) = origin.parse() {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, value);
        }
    }
    response
}

/// Rejects the request with 403 unless its Host names this server (see the module docs).
pub fn check_host(config: Arc<HttpConfig>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("host")
        .and_then(move |host: Option<String>| {
            let config = config.clone();
            async move {
                if host_allowed(host.as_deref(), &config) {
                    Ok(())
                } else {
                    tracing::debug!(host = ?host, "request refused: Host not allowed");
                    Err(warp::reject::custom(ForbiddenHost(
                        host.unwrap_or_default(),
                    )))
                }
            }
        })
        .untuple_one()
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
    } else if let Some(ForbiddenHost(host)) = rejection.find() {
        (
            StatusCode::FORBIDDEN,
            format!("Host {host:?} is not a name of this server (see --allow-host)\n"),
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
        // Same authority, other scheme: not the same origin.
        assert!(!allowed(
            Some("https://127.0.0.1:8080"),
            Some("127.0.0.1:8080"),
            &config
        ));
    }

    #[test]
    fn only_addresses_localhost_and_listed_names_are_hosts_of_ours() {
        let config = HttpConfig {
            allowed_hosts: vec!["live.example.org".into()],
            ..HttpConfig::default()
        };
        for host in [
            "127.0.0.1:8080",
            "[::1]:8080",
            "10.1.2.3",
            "localhost:8080",
            "LIVE.example.org:443",
            "live.example.org",
        ] {
            assert!(host_allowed(Some(host), &config), "{host}");
        }
        for host in [
            "attacker.example",
            "attacker.example:8080",
            "localhost.evil",
        ] {
            assert!(!host_allowed(Some(host), &config), "{host}");
        }
    }
}
