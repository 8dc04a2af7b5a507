//! lenscast behind real nginx, configured by `deploy/nginx.conf` (the example deployment,
//! with only its listen address and upstream addresses filled in): viewers play through it
//! over WebSocket and chunked HTTP, least_conn spreads them over two lenscast servers, and
//! fifty HLS players cost the origin one request per segment and per part.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use prometheus_parse::{Scrape, Value};

/// nginx started by a test in its own prefix directory. Dropping it stops nginx the way its
/// service would (SIGTERM to the master, which takes its workers along: a SIGKILLed master
/// leaves them running, still holding the port and the test's output pipes) and, if the
/// test failed, prints what nginx logged.
struct Nginx {
    addr: SocketAddr,
    prefix: tempfile::TempDir,
    master: Child,
}

impl Nginx {
    /// What nginx wrote to stderr (before it read its config), to its error log, and the
    /// last requests of its access log.
    fn logs(&self) -> String {
        let read = |name| std::fs::read_to_string(self.prefix.path().join(name));
        let access = read("access.log").unwrap_or_default();
        let last: Vec<&str> = access.lines().rev().take(40).collect();
        format!(
            "{}{}\nlast requests (newest first):\n{}",
            read("stderr.log").unwrap_or_default(),
            read("error.log").unwrap_or_default(),
            last.join("\n")
        )
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        sigterm(&self.master);
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.master.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.master.kill();
        let _ = self.master.wait();
        if std::thread::panicking() {
            eprintln!("nginx logged:\n{}", self.logs());
        }
    }
}

/// The nginx binary: Debian puts it in /usr/sbin, which a non-root PATH may lack.
fn nginx_binary() -> PathBuf {
    ["/usr/sbin/nginx", "nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|candidate| {
            Command::new(candidate)
                .arg("-v")
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .expect("nginx is not installed: run `make deps` (Debian package nginx)")
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `deploy/nginx.conf` with its placeholders filled in.
fn config(listen: SocketAddr, origin: SocketAddr, edge: SocketAddr) -> String {
    let template =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx.conf"))
            .unwrap();
    let filled = template
        .replace("@LISTEN@", &listen.to_string())
        .replace("@ORIGIN@", &origin.to_string())
        .replace("@EDGE@", &edge.to_string());
    assert!(!filled.contains('@'), "a placeholder is left:\n{filled}");
    filled
}

/// Starts nginx in the foreground on a free loopback port, in front of `origin` and `edge`,
/// and waits until it accepts connections.
async fn start_nginx(origin: SocketAddr, edge: SocketAddr) -> Nginx {
    let binary = nginx_binary();
    let prefix = tempfile::tempdir().unwrap();
    // Run as root, nginx's workers switch to `nobody`: they must reach the cache and temp
    // directories inside the prefix (a temp dir is 0700).
    std::fs::set_permissions(
        prefix.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let conf = prefix.path().join("nginx.conf");
    std::fs::write(&conf, config(addr, origin, edge)).unwrap();
    let stderr = std::fs::File::create(prefix.path().join("stderr.log")).unwrap();
    let master = Command::new(binary)
        .arg("-p")
        .arg(prefix.path())
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("nginx starts");
    let mut nginx = Nginx {
        addr,
        prefix,
        master,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Some(exit) = nginx.master.try_wait().unwrap() {
            panic!("nginx exited ({exit}): {}", nginx.logs());
        }
        assert!(Instant::now() < deadline, "nginx never listened on {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nginx
}

/// The real binary on a free loopback port, in passthrough mode (the demo's own VP8, so the
/// two cores go to nginx and the clients rather than to face detection).
fn spawn_lenscast(extra: &[&str]) -> (KillOnDrop, SocketAddr) {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--passthrough"];
    args.extend_from_slice(extra);
    let (child, url) = spawn_binary(&args, Stdio::null());
    let addr = url.trim_start_matches("http://").parse().unwrap();
    (KillOnDrop(child), addr)
}

/// A real edge of `origin` (`--relay`): it pulls the origin's stream and proxies its HLS.
fn spawn_edge(origin: SocketAddr) -> (KillOnDrop, SocketAddr) {
    let relay = format!("http://{origin}");
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--relay",
        relay.as_str(),
    ];
    let (child, url) = spawn_binary(&args, Stdio::null());
    let child = KillOnDrop(child);
    let addr = url.trim_start_matches("http://").parse().unwrap();
    (child, addr)
}

/// Scrapes `/metrics` from lenscast itself (not through nginx).
async fn metrics(addr: SocketAddr) -> Scrape {
    let (code, head, body) = http_get(addr, "/metrics", Duration::from_secs(2)).await;
    assert_eq!(code, 200, "{head}");
    let text = String::from_utf8(body).unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The value of sample `name` with label `key` = `value`.
fn sample(scrape: &Scrape, name: &str, key: &str, value: &str) -> f64 {
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && s.labels.get(key) == Some(value))
        .unwrap_or_else(|| panic!("no {name}{{{key}={value:?}}}"));
    match found.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{name} is not a number: {other:?}"),
    }
}

/// Waits until the server at `addr` counts one viewer on `transport` (`ws` or `http`).
async fn wait_for_viewer(addr: SocketAddr, transport: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if sample(
            &metrics(addr).await,
            "lenscast_viewers",
            "transport",
            transport,
        ) >= 1.0
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_play_through_nginx_spread_by_least_conn() {
    // Two servers, each playing the demo itself, stand for two upstreams (the edge's own
    // relay connection to the origin would count on the origin's side, not nginx's).
    let (_origin, origin) = spawn_lenscast(&[]);
    let (_edge, edge) = spawn_lenscast(&["--no-hls"]);
    let nginx = start_nginx(origin, edge).await;

    let ws = tokio::spawn(ws_collect(nginx.addr, Duration::from_secs(5)));
    let ws_on_origin = tokio::select! {
        on = wait_for_viewer(origin, "ws") => on,
        on = wait_for_viewer(edge, "ws") => !on,
    };
    // least_conn: the second viewer goes to the server without one.
    let (ws_server, other) = if ws_on_origin {
        (origin, edge)
    } else {
        (edge, origin)
    };
    let http = tokio::spawn(http_get(nginx.addr, "/live.webm", Duration::from_secs(4)));
    let joined = wait_for_viewer(other, "http").await;
    assert!(
        joined,
        "the /live.webm viewer did not go to the server without a viewer ({other})"
    );
    assert_eq!(
        sample(
            &metrics(ws_server).await,
            "lenscast_viewers",
            "transport",
            "http"
        ),
        0.0
    );

    let received = ws.await.unwrap();
    assert!(!received.closed, "nginx closed the WebSocket early");
    assert!(!received.inits.is_empty(), "no init message over the proxy");
    let frames = assert_decodes_from_start("ws through nginx", &received.bytes);
    assert!(frames > 60, "only {frames} frames in 5 s");

    let (code, head, body) = http.await.unwrap();
    assert_eq!(code, 200, "{head}");
    let frames = assert_decodes_from_start("/live.webm through nginx", &body);
    assert!(frames > 40, "only {frames} frames in 4 s");
}

/// Per file name: how many times the players fetched it.
///
/// Under [`NOT_YET`]: how many answers were a "not yet written" 404 (`no-store`).
type Fetched = Arc<Mutex<HashMap<String, usize>>>;

/// The key under which [`Fetched`] counts "not yet written" 404s.
const NOT_YET: &str = "(not yet written)";

/// What a player reads from a live LL-HLS playlist: segment URIs, part URIs, the hinted part.
struct Listing {
    segments: Vec<String>,
    parts: Vec<String>,
    hint: Option<String>,
}

fn listing(text: &str) -> Listing {
    let uri = |line: &str| {
        line.split("URI=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .map(str::to_string)
    };
    let mut listing = Listing {
        segments: Vec::new(),
        parts: Vec::new(),
        hint: None,
    };
    for line in text.lines() {
        if line.starts_with("#EXT-X-PART:") {
            listing.parts.extend(uri(line));
        } else if line.starts_with("#EXT-X-PRELOAD-HINT:") {
            listing.hint = uri(line);
        } else if !line.starts_with('#') && !line.is_empty() {
            listing.segments.push(line.to_string());
        }
    }
    listing
}

/// (msn, part) of a part's name, `part-M.N.ts`.
fn part_number(name: &str) -> (u64, u64) {
    let (msn, part) = name
        .strip_prefix("part-")
        .and_then(|n| n.strip_suffix(".ts"))
        .and_then(|n| n.split_once('.'))
        .unwrap_or_else(|| panic!("not a part name: {name}"));
    (msn.parse().unwrap(), part.parse().unwrap())
}

/// One LL-HLS player through nginx until `until`: the playlist, then the newest two segments
/// and the parts listed after them; then, over and over, the hinted part (held until it is
/// written) and a blocking reload for it, and whatever new segment or part it lists.
async fn player(nginx: SocketAddr, until: Instant, fetched: Fetched, playlists: Fetched) {
    let timeout = Duration::from_secs(5);
    let get = |path: String| async move { http_get(nginx, &path, timeout).await };
    let (code, head, body) = get("/hls/live.m3u8".into()).await;
    assert_eq!(code, 200, "{head}");
    let mut seen = HashSet::new();
    let mut text = String::from_utf8(body).unwrap();
    let mut first = true;
    while Instant::now() < until {
        let listed = listing(&text);
        let mut wanted: Vec<&String> = Vec::new();
        let newest_segments = listed.segments.len().saturating_sub(2);
        wanted.extend(&listed.segments[newest_segments..]);
        // On the first listing only the parts of the segment being written (a player joins
        // at the live edge); later, every part listed that is new.
        let current = listed
            .segments
            .last()
            .and_then(|s| s.strip_prefix("seg-"))
            .and_then(|s| s.strip_suffix(".ts"))
            .map_or(0, |msn| msn.parse::<u64>().unwrap() + 1);
        wanted.extend(
            listed
                .parts
                .iter()
                .filter(|p| !first || part_number(p).0 >= current),
        );
        first = false;
        for name in wanted {
            if seen.insert(name.clone()) {
                let (code, head, _) = get(format!("/hls/{name}")).await;
                assert_eq!(code, 200, "{name}: {head}");
                *fetched.lock().unwrap().entry(name.clone()).or_default() += 1;
            }
        }
        let hint = listed.hint.expect("an LL-HLS playlist hints the next part");
        if seen.insert(hint.clone()) {
            let (code, head, _) = get(format!("/hls/{hint}")).await;
            // A segment may end before the part it hinted: a final 404, which caches share.
            // A hinted part still missing when the origin stops waiting (a busy machine) is a
            // 404 nobody may keep: each player that got one went to the origin for it.
            assert!(code == 200 || code == 404, "{hint}: {head}");
            *fetched.lock().unwrap().entry(hint.clone()).or_default() += 1;
            if header(&head, "cache-control").as_deref() == Some("no-store") {
                *fetched.lock().unwrap().entry(NOT_YET.into()).or_default() += 1;
            }
        }
        let (msn, part) = part_number(&hint);
        let reload = format!("/hls/live.m3u8?_HLS_msn={msn}&_HLS_part={part}");
        let (code, head, body) = get(reload.clone()).await;
        assert_eq!(code, 200, "{reload}: {head}");
        *playlists.lock().unwrap().entry(reload).or_default() += 1;
        text = String::from_utf8(body).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_hls_players_cost_one_origin_request_per_file() {
    let (_origin, origin) = spawn_lenscast(&[]);
    let (_edge, edge) = spawn_edge(origin);
    let nginx = start_nginx(origin, edge).await;

    // Straight to the origin until the mirror has a few segments listed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, _, body) = http_get(origin, "/hls/live.m3u8", Duration::from_secs(2)).await;
        if code == 200 && listing(&String::from_utf8_lossy(&body)).segments.len() >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the HLS mirror never listed 3 segments"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let before = metrics(origin).await;
    let requests = |scrape: &Scrape, kind| {
        sample(scrape, "lenscast_hls_requests_total", "kind", kind) as usize
    };

    let fetched = Fetched::default();
    let playlists = Fetched::default();
    let until = Instant::now() + Duration::from_secs(6);
    let players: Vec<_> = (0..50)
        .map(|_| {
            tokio::spawn(player(
                nginx.addr,
                until,
                fetched.clone(),
                playlists.clone(),
            ))
        })
        .collect();
    for player in players {
        player.await.unwrap();
    }

    let after = metrics(origin).await;
    let mut fetched = fetched.lock().unwrap().clone();
    let not_yet = fetched.remove(NOT_YET).unwrap_or(0);
    let distinct = |prefix| fetched.keys().filter(|n| n.starts_with(prefix)).count();
    let fetches = |prefix| {
        fetched
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, count)| count)
            .sum::<usize>()
    };
    let (segments, parts) = (distinct("seg-"), distinct("part-"));
    let origin_segments = requests(&after, "segment") - requests(&before, "segment");
    let origin_parts = requests(&after, "part") - requests(&before, "part");
    let origin_playlists = requests(&after, "playlist") - requests(&before, "playlist");
    let playlists = playlists.lock().unwrap().clone();
    eprintln!(
        "50 players through nginx: {segments} distinct segments fetched {} times, \
         {origin_segments} origin segment requests; {parts} distinct parts fetched {} times, \
         {origin_parts} origin part requests ({not_yet} \"not yet\" 404s); {} distinct blocking reloads made {} times \
         (+50 plain playlists), {origin_playlists} origin playlist requests",
        fetches("seg-"),
        fetches("part-"),
        playlists.len(),
        playlists.values().sum::<usize>(),
    );
    // The test means something only if the players shared many files.
    assert!(segments >= 4, "only {segments} segments fetched");
    assert!(parts >= 20, "only {parts} parts fetched");
    assert!(
        fetches("part-") >= 40 * parts,
        "the players did not share parts"
    );
    assert!(
        origin_segments <= segments,
        "{origin_segments} origin requests for {segments} segments"
    );
    assert!(
        origin_parts <= parts + not_yet,
        "{origin_parts} origin requests for {parts} parts ({not_yet} \"not yet\" 404s)"
    );
    // Each blocking reload URL once; the 50 first (plain) playlists go around the cache.
    assert!(
        origin_playlists <= playlists.len() + 50,
        "{origin_playlists} origin playlist requests for {} blocking reload URLs",
        playlists.len()
    );
}
