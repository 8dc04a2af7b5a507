//! Pipeline benchmark: the face fixture (640x480, 30 fps, VP8) through decode → detect →
//! VP8 encode → WebM → hub, in-process, with the real FFmpeg and OpenCV.
//!
//! Two measurements, each pinned to one core and then to two (via `sched_setaffinity`, in a
//! child process per core count so every thread the pipeline starts inherits the mask):
//! - throughput: source events as fast as the pipeline accepts them (backpressure), no
//!   frame dropping: sustained frames/s out, per-stage ms;
//! - live: the same file paced in real time (30 fps): server-side latency from a frame's
//!   arrival to its bytes entering the broadcast (p50, p99), frames dropped.
//!
//! Run: `cargo bench --bench pipeline` (options: `--seconds N`). Figures are printed and
//! written to `target/bench/pipeline.json`.

use std::time::{Duration, Instant};

use lenscast::pipeline::{PipelineConfig, PipelineStats};
use lenscast::server::{Server, ServerConfig};
use lenscast::source::{self, Feeder, Pacer, Slot, SourceKind};

const FIXTURE: &[u8] = include_bytes!("../fixtures/face.webm");

#[derive(Debug, serde::Serialize)]
struct Run {
    cores: usize,
    mode: &'static str,
    seconds: f64,
    fps_out: f64,
    frames_out: u64,
    frames_dropped: u64,
    detections_per_s: f64,
    decode_ms: f64,
    detect_ms: f64,
    encode_ms: f64,
    latency_ms_p50: f64,
    latency_ms_p99: f64,
    /// Process CPU time (user + system, all threads, detection included) per frame out, ms.
    cpu_ms_per_frame: f64,
    /// CPU time of the frame path alone (the "pipeline" thread: decode, scale, draw, encode,
    /// write, hand to the hub) per frame out, ms.
    frame_path_cpu_ms: f64,
}

/// CPU seconds (user + system) of each of this process's threads called `name` (the
/// pipeline thread and the codec threads it starts, which inherit its name), by thread id.
fn threads_cpu_seconds(name: &str) -> std::collections::HashMap<String, f64> {
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut found = std::collections::HashMap::new();
    for task in std::fs::read_dir("/proc/self/task")
        .expect("/proc is mounted")
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the ")" that closes the name start at field 3; utime and stime are
        // fields 14 and 15.
        let Some(end) = stat.rfind(')') else { continue };
        let fields: Vec<&str> = stat[end + 1..].split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        found.insert(
            task.file_name().to_string_lossy().into_owned(),
            (field(11) + field(12)) / ticks,
        );
    }
    found
}

/// User + system CPU time this process has used so far, in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the zeroed struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn pin_to_cores(cores: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only
    // touch that local set and this process's (thread group leader's) affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..cores {
            libc::CPU_SET(cpu, &mut set);
        }
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(rc, 0, "sched_setaffinity failed");
    }
}

/// Feeds the fixture in a loop until `stop`, paced or not.
async fn feed(slot: Slot, paced: bool, stop: Instant) {
    let guard = slot
        .claim("bench", SourceKind::Input, false)
        .await
        .expect("the slot is free");
    let pacer = paced.then(Pacer::new);
    let mut feeder = Feeder::new(guard, pacer, false);
    while Instant::now() < stop {
        source::read_all(FIXTURE, &mut feeder)
            .await
            .expect("fixture feeds");
        feeder.next_loop();
    }
}

async fn measure(cores: usize, mode: &'static str, seconds: f64) -> Run {
    let config = ServerConfig {
        pipeline: PipelineConfig {
            // Detection back to back: the bench measures what the detector can do, not its pace.
            detect_interval: None,
            // Throughput: never drop, measure how fast frames can go. Live: the real policy.
            max_lag: if mode == "throughput" {
                Duration::from_secs(3600)
            } else {
                PipelineConfig::default().max_lag
            },
            ..PipelineConfig::default()
        },
        hls: None,
        ..ServerConfig::default()
    };
    // The same constructor as the binary; no listener is needed to drive the pipeline.
    let server = Server::new(config).expect("server builds").without_input();
    let slot = server.app().slot.clone();
    let pipeline = slot.pipeline().expect("annotating").clone();
    let warmup = Duration::from_secs(2);
    let window = Duration::from_secs_f64(seconds);
    let stop = Instant::now() + warmup + window + Duration::from_secs(1);
    let feeder = tokio::spawn(feed(slot, mode == "live", stop));
    tokio::time::sleep(warmup).await;
    let before: PipelineStats = pipeline.stats();
    let cpu_before = cpu_seconds();
    let frame_path_before = threads_cpu_seconds("pipeline");
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let after = pipeline.stats();
    let cpu = cpu_seconds() - cpu_before;
    // Threads alive through the whole window (an idle pipeline from an earlier run adds 0).
    let frame_path: f64 = threads_cpu_seconds("pipeline")
        .iter()
        .filter_map(|(tid, after)| Some(after - frame_path_before.get(tid)?))
        .sum();
    let elapsed = started.elapsed().as_secs_f64();
    feeder.abort();
    tokio::task::block_in_place(|| pipeline.stop());
    let detections = |s: &PipelineStats| s.faces_total; // faces, one per detection here
    Run {
        cores,
        mode,
        seconds: elapsed,
        fps_out: (after.frames_out - before.frames_out) as f64 / elapsed,
        frames_out: after.frames_out - before.frames_out,
        frames_dropped: after.frames_dropped - before.frames_dropped,
        detections_per_s: (detections(&after) - detections(&before)) as f64 / elapsed,
        decode_ms: after.decode_ms,
        detect_ms: after.detect_ms,
        encode_ms: after.encode_ms,
        latency_ms_p50: after.latency_ms_p50,
        latency_ms_p99: after.latency_ms_p99,
        cpu_ms_per_frame: cpu * 1000.0 / (after.frames_out - before.frames_out).max(1) as f64,
        frame_path_cpu_ms: frame_path * 1000.0
            / (after.frames_out - before.frames_out).max(1) as f64,
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let seconds: f64 = arg("--seconds").map_or(15.0, |s| s.parse().expect("--seconds N"));
    if let Some(cores) = arg("--child-cores") {
        // Child: pin first, so the runtime and pipeline threads inherit the mask.
        let cores: usize = cores.parse().unwrap();
        pin_to_cores(cores);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        for mode in ["throughput", "live"] {
            let run = runtime.block_on(measure(cores, mode, seconds));
            println!("{}", serde_json::to_string(&run).unwrap());
        }
        return;
    }
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut runs: Vec<serde_json::Value> = Vec::new();
    for cores in [1, 2].into_iter().filter(|&c| c <= available) {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--child-cores",
                &cores.to_string(),
                "--seconds",
                &seconds.to_string(),
            ])
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("child runs");
        assert!(output.status.success(), "child failed: {output:?}");
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            if let Ok(value) = serde_json::from_str(line) {
                runs.push(value);
            }
        }
    }
    println!("\npipeline benchmark: face.webm 640x480 30 fps, {seconds} s windows");
    println!(
        "{:>5} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "cores",
        "mode",
        "fps_out",
        "dropped",
        "det/s",
        "decode",
        "detect",
        "encode",
        "lat p50",
        "lat p99",
        "cpu/frame",
        "path/frame"
    );
    for r in &runs {
        println!(
            "{:>5} {:>10} {:>8.1} {:>8} {:>8.1} {:>7.2}ms {:>7.2}ms {:>7.2}ms {:>7.1}ms {:>7.1}ms {:>7.2}ms {:>8.2}ms",
            r["cores"],
            r["mode"].as_str().unwrap(),
            r["fps_out"].as_f64().unwrap(),
            r["frames_dropped"],
            r["detections_per_s"].as_f64().unwrap(),
            r["decode_ms"].as_f64().unwrap(),
            r["detect_ms"].as_f64().unwrap(),
            r["encode_ms"].as_f64().unwrap(),
            r["latency_ms_p50"].as_f64().unwrap(),
            r["latency_ms_p99"].as_f64().unwrap(),
            r["cpu_ms_per_frame"].as_f64().unwrap(),
            r["frame_path_cpu_ms"].as_f64().unwrap()
        );
    }
    std::fs::create_dir_all("target/bench").unwrap();
    std::fs::write(
        "target/bench/pipeline.json",
        serde_json::to_string_pretty(&runs).unwrap(),
    )
    .unwrap();
}
