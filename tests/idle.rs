//! Nobody watching: the looped demo pauses (no decoding, detecting or encoding for nobody) and
//! resumes for the first viewer or HLS request; `--always-on` keeps it running.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// The real binary with `args`; its address.
fn serve(args: &[&str]) -> (KillOnDrop, SocketAddr) {
    let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let (child, url) = spawn_binary(&all, Stdio::null());
    (
        KillOnDrop(child),
        url.trim_start_matches("http://").parse().unwrap(),
    )
}

/// Waits up to `limit` for the source to show `reason` as why it ended (or, with `None`, to be
/// live); returns how long that took.
async fn wait_for_source(addr: SocketAddr, reason: Option<&str>, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let source = status(addr).await["source"].clone();
        let done = match reason {
            Some(reason) => source["state"] == "ended" && source["ended_reason"] == reason,
            None => source["state"] == "live",
        };
        if done {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "the source never became {reason:?}: {source}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf only reads a configuration value.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

const PAUSED: &str = "paused: nobody is watching";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_pauses_when_nobody_watches_and_resumes_for_a_viewer_or_hls() {
    // The full default server: annotating, with the HLS mirror.
    let (server, addr) = serve(&[]);
    wait_for_source(addr, None, Duration::from_secs(10)).await;
    // Nobody came: it pauses a few seconds after the start.
    wait_for_source(addr, Some(PAUSED), Duration::from_secs(12)).await;

    // Paused means idle: no frame goes in, no HLS segment is made.
    let before = status(addr).await;
    let cpu_before = cpu_seconds(server.0.id());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = status(addr).await;
    let cpu = (cpu_seconds(server.0.id()) - cpu_before) / 3.0;
    println!("idle: {:.1} % of one core", cpu * 100.0);
    assert_eq!(
        before["pipeline"]["frames_in"], after["pipeline"]["frames_in"],
        "frames went in while paused"
    );
    assert_eq!(
        before["hls"]["frames_encoded"], after["hls"]["frames_encoded"],
        "the HLS mirror encoded while paused"
    );

    // A viewer joins: within 1.5 s it has a stream that decodes from a keyframe (fresh media,
    // not a replay of what was cached before the pause).
    let received = ws_collect(addr, Duration::from_millis(1500)).await;
    let frames = assert_decodes_from_start("viewer after the pause", &received.bytes);
    assert!(frames >= 3, "only {frames} frames within 1.5 s");
    assert_eq!(status(addr).await["source"]["state"], "live");

    // It left: paused again; then an HLS player's playlist request resumes it.
    wait_for_source(addr, Some(PAUSED), Duration::from_secs(12)).await;
    let (code, _, _) = http_get(addr, "/hls/live.m3u8", Duration::from_secs(2)).await;
    assert_eq!(code, 200);
    let took = wait_for_source(addr, None, Duration::from_secs(3)).await;
    println!("an HLS request resumed the demo in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_on_keeps_the_demo_running_with_nobody_watching() {
    let (_server, addr) = serve(&["--always-on", "--passthrough", "--no-hls"]);
    wait_for_source(addr, None, Duration::from_secs(10)).await;
    // What the hub holds for late viewers grows while media flows (its ring is far from full
    // after 10 s of this stream).
    let before = status(addr).await["buffered_bytes"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = status(addr).await;
    assert_eq!(after["source"]["state"], "live", "{after}");
    assert!(
        after["buffered_bytes"].as_u64().unwrap() > before,
        "{after}"
    );
}
