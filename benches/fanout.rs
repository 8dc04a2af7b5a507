//! The fan-out benchmark: lenscast against Icecast 2.4, N viewers of one 0.54 Mbit/s stream.
//!
//! For each viewer count, three targets are measured one after the other in the same run, each
//! on a fresh server looping the same generated file (0.54 Mbit/s, 30 fps VP8 WebM):
//!
//! - `lenscast-ws`: `lenscast serve --passthrough --no-hls`, viewers on `/ws/view`;
//! - `lenscast-http`: the same server binary, viewers on `/live.webm` (chunked HTTP);
//! - `icecast`: Debian's `icecast2` on a loopback port, fed by `ffmpeg -re ... icecast://`,
//!   viewers on its `/live.webm` mount (plain HTTP body).
//!
//! Each target gets N viewers and a steady window of `--seconds` that begins once the last one
//! is connected. Measured: the server's CPU seconds per GB delivered (only the server's own pid,
//! never the ffmpeg feeding Icecast), its peak RSS and RSS per viewer, which viewers failed,
//! dropped out or fell below the stream rate, and which lost Clusters. Then a join storm:
//! `--join-rate` new viewers a second for `--join-seconds`, each timed to its first media byte
//! and to its first keyframe. The table puts the three side by side with lenscast/Icecast
//! ratios and the issue's targets; the same numbers go to `target/bench/fanout.json`.
//!
//! The load generator has to stay cheaper than the servers it loads: at 5,000 viewers on two
//! cores a full WebM parser per viewer would cost more than the server does. So every viewer
//! walks only EBML element headers (a few bytes per element, payloads skipped by size), enough
//! to find Cluster starts, their timecodes and keyframes; and only the first `--full-parse`
//! viewers of each target also run the whole stream through our own [`StreamReader`], so that a
//! stream the fan-out broke (a torn block, a resume inside an element) still shows up.
//!
//! Run it with `make bench`, or `cargo bench --bench fanout -- --viewers 1000,5000`.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, ValueEnum};
use lenscast::webm::StreamReader;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

/// How long one viewer may take to connect (TCP and response head) before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts a steady viewer makes to connect. Icecast listens with a backlog of 5: a burst of
/// connects overflows it and the kernel drops handshakes, which its retries may not recover
/// within the timeout. The steady window does not depend on how viewers arrived, so they try
/// again; join-storm viewers, which are about arrival, get one attempt.
const CONNECT_ATTEMPTS: u32 = 3;
/// Viewers keep reading this long after the window closes, so a Cluster that the fastest viewer
/// got just before the end is not counted as lost for a viewer a few milliseconds behind it.
const GRACE: Duration = Duration::from_secs(2);
/// How long after the last join the storm's viewers may take to get their first keyframe.
const JOIN_WAIT: Duration = Duration::from_secs(5);
/// Open files to ask for, for this process and the servers: one per viewer socket, and spare.
const WANTED_FILES: u64 = 65536;
/// Descriptors either process needs besides the viewer sockets (listener, files, pipes).
const SPARE_FILES: u64 = 64;
/// A viewer is healthy when it receives at least this share of the source's byte rate.
const HEALTHY_SHARE: f64 = 0.9;
/// The issue's targets.
const TARGET_CPU_RATIO: f64 = 0.5;
const TARGET_KIB_PER_VIEWER: f64 = 40.0;
const TARGET_FIRST_BYTE_P99_MS: f64 = 100.0;
const TARGET_KEYFRAME_P99_MS: f64 = 300.0;
/// Icecast's source password (loopback only, for one run).
const ICECAST_PASSWORD: &str = "bench-source";

/// Command line. `cargo bench` also passes `--bench`, which is accepted and ignored.
#[derive(Parser, Debug)]
#[command(about = "Fan-out benchmark: lenscast (WebSocket, HTTP) and Icecast, N viewers each")]
struct Args {
    /// Viewer counts to measure, one fresh server per count and target.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    viewers: Vec<usize>,

    /// Length of the measured window, after the last viewer has connected.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,

    /// Targets to measure, in this order.
    #[arg(
        long,
        value_delimiter = ',',
        value_enum,
        default_value = "ws,http,icecast,icecast-frames"
    )]
    targets: Vec<Target>,

    /// The lenscast binary [default: target/release/lenscast, built if missing].
    #[arg(long)]
    server: Option<PathBuf>,

    /// The Icecast binary.
    #[arg(long, default_value = "icecast2")]
    icecast: PathBuf,

    /// Viewers connecting at the same time while the N steady viewers connect.
    #[arg(long, default_value_t = 50)]
    connect_concurrency: usize,

    /// Join storm: new viewers per second, after the steady window.
    #[arg(long, default_value_t = 500.0)]
    join_rate: f64,

    /// Join storm: how long it lasts (0 skips it).
    #[arg(long, default_value_t = 2.0)]
    join_seconds: f64,

    /// Viewers per target whose stream is also fully parsed by our StreamReader.
    #[arg(long, default_value_t = 50)]
    full_parse: usize,

    /// Steady viewers pause this long after each read, so that at thousands of viewers the
    /// load generator wakes a few times a second per viewer instead of once per frame (30/s);
    /// the server's work per frame is the same either way. Join-storm viewers never pause.
    #[arg(long, default_value_t = 100)]
    read_interval_ms: u64,

    /// One more argument for `lenscast serve` (repeatable), e.g. `--server-arg=--viewer-buffer=64`.
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true)]
    server_args: Vec<String>,

    // Passed by `cargo bench` to every bench target; see `main`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// A server and the way its viewers reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
enum Target {
    /// lenscast, viewers on `/ws/view`.
    Ws,
    /// lenscast, viewers on `/live.webm`.
    Http,
    /// Icecast 2.4, viewers on its `/live.webm` mount, fed by ffmpeg's `icecast://` output
    /// (the issue's setup). ffmpeg's WebM muxer holds each Cluster until it is complete, so
    /// Icecast receives one write a second (one per 1 s Cluster), not one per frame.
    Icecast,
    /// The same Icecast fed frame by frame, as lenscast's own input is: ffmpeg remuxes to
    /// one-frame Matroska Clusters on a pipe, GStreamer's `webmmux streamable=true` makes
    /// keyframe Clusters again and `shout2send` sends each frame on as it comes.
    IcecastFrames,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Ws => "lenscast-ws",
            Target::Http => "lenscast-http",
            Target::Icecast => "icecast",
            Target::IcecastFrames => "icecast-frames",
        }
    }

    fn is_lenscast(self) -> bool {
        matches!(self, Target::Ws | Target::Http)
    }

    /// The request a viewer sends. The WebSocket key is fixed: we do not check the accept
    /// hash, only that the server switched protocols.
    fn request(self, addr: SocketAddr) -> String {
        match self {
            Target::Ws => format!(
                "GET /ws/view HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: bGVuc2Nhc3QtYmVuY2gtMQ==\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
            ),
            Target::Http | Target::Icecast | Target::IcecastFrames => {
                format!(
                    "GET /live.webm HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: fanout-bench\r\n\r\n"
                )
            }
        }
    }
}

fn main() -> Result<()> {
    // `cargo test --all-targets` (so `make test`) starts bench targets too, with no `--bench`
    // and maybe with test-harness flags; `test = false` does not prevent it. A full run takes
    // minutes, so only a start by `cargo bench`, which passes `--bench`, runs it.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("fanout: not started by `cargo bench`, skipped (run: make bench)");
        return Ok(());
    }
    let args = Args::parse();
    ensure!(args.seconds > 0.0, "--seconds must be positive");
    ensure!(
        args.connect_concurrency > 0,
        "--connect-concurrency must be positive"
    );
    ensure!(
        args.join_rate > 0.0 && args.join_seconds >= 0.0,
        "--join-rate must be positive and --join-seconds not negative"
    );
    let bench_dir = bench_dir();
    fs::create_dir_all(&bench_dir).with_context(|| format!("creating {}", bench_dir.display()))?;

    let open_files = raise_open_files_limit();
    let server = server_binary(&args)?;
    let source = Source::prepare(&bench_dir)?;
    println!(
        "source: {} ({:.1} s, {:.3} Mbit/s measured by ffprobe; {})",
        source.path.display(),
        source.duration_s,
        source.mbit_s,
        source.description
    );
    println!("lenscast: {}", server.display());
    println!(
        "client: open files limit {open_files}, {} cores, steady viewers read every {} ms",
        cores(),
        args.read_interval_ms
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let mut runs = Vec::new();
    for &viewers in &args.viewers {
        let config = RunConfig {
            viewers,
            window: Duration::from_secs_f64(args.seconds),
            connect_concurrency: args.connect_concurrency,
            join_count: (args.join_rate * args.join_seconds).round() as usize,
            join_rate: args.join_rate,
            full_parse: args.full_parse,
            read_interval: Duration::from_millis(args.read_interval_ms),
            open_files,
        };
        let mut run = Run {
            viewers,
            targets: Vec::new(),
        };
        for &target in &args.targets {
            let result = runtime
                .block_on(measure_target(
                    target, &config, &args, &server, &source, &bench_dir,
                ))
                .with_context(|| format!("{} with {viewers} viewers", target.name()))?;
            run.targets.push(result);
            run.fill_ratios();
            // Written after every target, so a later failure keeps the earlier numbers.
            write_json(&bench_dir.join("fanout.json"), &args, &source, &runs, &run)?;
        }
        print_table(&run);
        runs.push(run);
    }
    println!("\nwritten to {}", bench_dir.join("fanout.json").display());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Setup: where things are, the source file, the server binary, file descriptor limits.

/// The server binary that `cargo bench` builds along with this benchmark, from the same
/// sources: `<target>/release/lenscast`.
const BUILT_SERVER: &str = env!("CARGO_BIN_EXE_lenscast");

/// `<target>/bench`: the generated source, server logs, results. Found through the built
/// server, so a CARGO_TARGET_DIR other than ./target works too.
fn bench_dir() -> PathBuf {
    let target = Path::new(BUILT_SERVER).parent().and_then(Path::parent);
    target
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
            Path::to_path_buf,
        )
        .join("bench")
}

/// The server to measure; `cargo build --release` first if it does not exist (cargo bench
/// builds it, but it may have been removed since).
fn server_binary(args: &Args) -> Result<PathBuf> {
    let path = args.server.clone().unwrap_or_else(|| BUILT_SERVER.into());
    if !path.is_file() {
        println!(
            "{} is missing: running cargo build --release",
            path.display()
        );
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--bin", "lenscast"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .context("running cargo build --release")?;
        ensure!(status.success(), "cargo build --release failed");
        ensure!(
            path.is_file(),
            "{} is still missing after the build",
            path.display()
        );
    }
    Ok(path)
}

/// The stream every server loops. Generated once into target/bench, never committed.
#[derive(Debug, Serialize)]
struct Source {
    path: PathBuf,
    description: &'static str,
    duration_s: f64,
    mbit_s: f64,
}

impl Source {
    /// The issue's stream: 0.54 Mbit/s, 30 fps VP8 WebM.
    const DESCRIPTION: &'static str = "VP8 640x360 30 fps CBR 540k, keyframe every 1 s, no audio";

    fn prepare(dir: &Path) -> Result<Self> {
        let path = dir.join("source-540k.webm");
        if !path.is_file() {
            encode_source(&path)?;
        }
        let (duration_s, bit_rate) = probe(&path)?;
        let mbit_s = bit_rate / 1e6;
        if !(0.45..=0.65).contains(&mbit_s) {
            println!("warning: the source measures {mbit_s:.3} Mbit/s, not ~0.54 Mbit/s");
        }
        Ok(Source {
            path,
            description: Self::DESCRIPTION,
            duration_s,
            mbit_s,
        })
    }

    /// Bytes a second that a viewer keeping up receives (WebM framing aside).
    fn bytes_per_second(&self) -> f64 {
        self.mbit_s * 1e6 / 8.0
    }
}

/// 20 s of VP8 test pattern at a constant 540 kbit/s, one keyframe (so one Cluster) a second.
/// Video only: then the first block of every Cluster is the video keyframe, which is what the
/// join-storm timing looks for; the issue's stream is described by its video alone.
fn encode_source(path: &Path) -> Result<()> {
    println!("encoding {} with ffmpeg", path.display());
    // Encode beside the target and rename, so an interrupted run never leaves a short file
    // that later runs would reuse.
    let partial = path.with_extension("partial.webm");
    let output = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc2=s=640x360:r=30", "-t", "20"])
        .args(["-c:v", "libvpx", "-b:v", "540k", "-minrate", "540k"])
        .args(["-maxrate", "540k", "-bufsize", "270k"])
        .args(["-g", "30", "-deadline", "realtime", "-cpu-used", "8", "-an"])
        .arg(&partial)
        .output()
        .context("running ffmpeg (is it installed? `make deps`)")?;
    ensure!(
        output.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    fs::rename(&partial, path).context("moving the encoded source into place")
}

/// The file's duration in seconds and overall bit rate in bit/s, as ffprobe measures them.
fn probe(path: &Path) -> Result<(f64, f64)> {
    let output = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration,bit_rate",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .context("running ffprobe")?;
    ensure!(
        output.status.success(),
        "ffprobe failed on {}",
        path.display()
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    // ffprobe prints numbers as strings.
    let number = |key: &str| -> Result<f64> {
        json["format"][key]
            .as_str()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("ffprobe gave no format.{key}"))
    };
    Ok((number("duration")?, number("bit_rate")?))
}

/// Lifts this process's open-files limit as far as it may go: every viewer is a socket here.
/// Returns the limit now in force. The servers inherit it.
fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        if limit.rlim_cur < WANTED_FILES {
            // Root may raise the hard limit too; anyone may raise the soft one up to the hard.
            let wanted = libc::rlimit {
                rlim_cur: WANTED_FILES,
                rlim_max: limit.rlim_max.max(WANTED_FILES),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                let to_hard = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &to_hard);
            }
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    limit.rlim_cur
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A loopback port that is free now (bound, read, released: Icecast needs a number up front).
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

// ---------------------------------------------------------------------------------------------
// The servers under test and what /proc says about them.

/// A running target: the server process whose CPU and memory we measure, plus helpers (the
/// ffmpeg that feeds Icecast). All are killed when dropped, so no run leaves one behind.
struct Served {
    /// The measured server first, then helpers.
    children: Vec<Child>,
    addr: SocketAddr,
    /// The server's stderr (lenscast's log; Icecast's own error.log is copied beside it).
    log: PathBuf,
    /// Icecast's config and logs; removed when dropped.
    icecast_dir: Option<tempfile::TempDir>,
}

impl Drop for Served {
    fn drop(&mut self) {
        // Helpers first, so the feeder never sees its server vanish under it.
        for child in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = &self.icecast_dir {
            let _ = fs::copy(
                dir.path().join("error.log"),
                self.log.with_extension("error.log"),
            );
        }
    }
}

impl Served {
    fn pid(&self) -> String {
        self.children[0].id().to_string()
    }
}

/// A command that raises its own open-files limit, then becomes `program`. The limit is also
/// inherited from this process, but a shell keeps it working when the bench was started without
/// `ulimit -n` and could not raise its own; `exec` keeps the pid, so /proc/<pid> is the server.
fn with_file_limit(program: &Path) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$0" "$@""#)
        .arg(program);
    command
}

/// `lenscast serve` on 127.0.0.1:0, looping `source` as it is (passthrough, no HLS mirror).
fn start_lenscast(bin: &Path, source: &Path, extra: &[String], log: PathBuf) -> Result<Served> {
    let log_file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = with_file_limit(bin)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--passthrough",
            "--no-hls",
        ])
        .arg("--input")
        .arg(source)
        .args(extra)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut served = Served {
        children: vec![child],
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        log,
        icecast_dir: None,
    };
    served.addr = wait_for_address(stdout)
        .with_context(|| format!("see the server log {}", served.log.display()))?;
    Ok(served)
}

/// The address in the first `http://` URL the server prints on stdout.
fn wait_for_address(stdout: ChildStdout) -> Result<SocketAddr> {
    let (found, address) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        if let Some(addr) = lines.by_ref().find_map(|line| parse_address(&line)) {
            let _ = found.send(addr);
        }
        // Keep draining, so the server never blocks on a full pipe.
        lines.for_each(drop);
    });
    address
        .recv_timeout(Duration::from_secs(30))
        .context("the server printed no http:// URL (exited, or not within 30 s)")
}

fn parse_address(line: &str) -> Option<SocketAddr> {
    let start = line.find("http://")? + "http://".len();
    line[start..].split('/').next()?.parse().ok()
}

/// Icecast on a free loopback port, with one mount fed by ffmpeg from `source` in real time.
async fn start_icecast(
    bin: &Path,
    target: Target,
    source: &Path,
    clients: usize,
    log: PathBuf,
) -> Result<Served> {
    let dir = tempfile::Builder::new()
        .prefix("fanout-icecast-")
        .tempdir()
        .context("creating Icecast's directory")?;
    let port = free_port()?;
    let config = dir.path().join("icecast.xml");
    fs::write(&config, icecast_config(dir.path(), port, clients))?;
    // Icecast refuses to run as root; as root the config makes it switch to nobody right after
    // binding its port, and nobody has to write its logs here.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777))?;

    let log_file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let server = with_file_limit(bin)
        .arg("-c")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {} (apt-get install icecast2)", bin.display()))?;
    let mut served = Served {
        children: vec![server],
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        log: log.clone(),
        icecast_dir: Some(dir),
    };
    wait_for_port(served.addr, &mut served.children[0])
        .await
        .with_context(|| format!("see {}", log.display()))?;

    let feeder_log = log.with_extension("feeder.log");
    let feeders = match target {
        Target::IcecastFrames => feed_frames(source, port, &feeder_log)?,
        _ => vec![feed_ffmpeg(source, port, &feeder_log)?],
    };
    served.children.extend(feeders);
    Ok(served)
}

/// An ffmpeg command that reads `source` in real time, looped forever; the caller adds the
/// output.
fn ffmpeg_looping(source: &Path) -> Command {
    let mut command = Command::new("ffmpeg");
    command
        .args([
            "-nostdin",
            "-v",
            "warning",
            "-re",
            "-stream_loop",
            "-1",
            "-i",
        ])
        .arg(source);
    command
}

/// `ffmpeg -re ... icecast://`: the source looped in real time, sent as ffmpeg's WebM muxer
/// writes it. `-dash 1`: that muxer, writing to a stream, otherwise cuts Clusters every 32 KB,
/// so half of them would not start with a keyframe; with it, every Cluster starts at one, as in
/// the file that lenscast loops. Icecast starts new listeners at a Cluster start.
fn feed_ffmpeg(source: &Path, port: u16, log: &Path) -> Result<Child> {
    let url = format!("icecast://source:{ICECAST_PASSWORD}@127.0.0.1:{port}/live.webm");
    ffmpeg_looping(source)
        .args(["-c", "copy", "-dash", "1", "-content_type", "video/webm"])
        .args(["-f", "webm", &url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(log)?)
        .spawn()
        .context("starting the ffmpeg that feeds Icecast")
}

/// ffmpeg (looping in real time, one frame per Matroska Cluster so that nothing waits in its
/// muxer) piped into GStreamer, which makes one Cluster per keyframe again and hands each frame
/// to Icecast as it comes (`sync=false`: ffmpeg's `-re` already paces it).
fn feed_frames(source: &Path, port: u16, log: &Path) -> Result<Vec<Child>> {
    let mut ffmpeg = ffmpeg_looping(source)
        .args([
            "-c",
            "copy",
            "-cluster_time_limit",
            "0",
            "-cluster_size_limit",
            "1",
        ])
        .args(["-f", "matroska", "pipe:1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(log)?)
        .spawn()
        .context("starting the ffmpeg that feeds GStreamer")?;
    let pipe = ffmpeg.stdout.take().expect("stdout is piped");
    let gst = Command::new("gst-launch-1.0")
        .args(["-q", "fdsrc", "fd=0", "!", "matroskademux", "!"])
        .args([
            "webmmux",
            "streamable=true",
            "!",
            "shout2send",
            "ip=127.0.0.1",
        ])
        .arg(format!("port={port}"))
        .arg(format!("password={ICECAST_PASSWORD}"))
        .args(["mount=/live.webm", "sync=false"])
        .stdin(pipe)
        .stdout(Stdio::null())
        .stderr(fs::File::create(log.with_extension("gst.log"))?)
        .spawn()
        .context("starting gst-launch-1.0 (apt-get install gstreamer1.0-plugins-good)")?;
    Ok(vec![ffmpeg, gst])
}

/// A minimal icecast.xml: one loopback port, one mount, room for `clients`, logs in `dir`.
/// Queue and burst sizes are Icecast's own defaults (512 KiB a listener may lag behind; 64 KiB
/// sent at once to a new listener, from the Cluster start before it).
fn icecast_config(dir: &Path, port: u16, clients: usize) -> String {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let changeowner = if root {
        "<changeowner><user>nobody</user><group>nogroup</group></changeowner>"
    } else {
        ""
    };
    let dir = dir.display();
    format!(
        r#"<icecast>
  <location>fanout bench</location>
  <admin>bench@localhost</admin>
  <hostname>127.0.0.1</hostname>
  <limits>
    <clients>{clients}</clients>
    <sources>2</sources>
    <queue-size>524288</queue-size>
    <burst-on-connect>1</burst-on-connect>
    <burst-size>65535</burst-size>
    <client-timeout>30</client-timeout>
    <header-timeout>15</header-timeout>
    <source-timeout>10</source-timeout>
  </limits>
  <authentication>
    <source-password>{ICECAST_PASSWORD}</source-password>
    <admin-user>admin</admin-user>
    <admin-password>{ICECAST_PASSWORD}</admin-password>
  </authentication>
  <listen-socket>
    <port>{port}</port>
    <bind-address>127.0.0.1</bind-address>
  </listen-socket>
  <mount type="normal">
    <mount-name>/live.webm</mount-name>
  </mount>
  <fileserve>0</fileserve>
  <paths>
    <basedir>/usr/share/icecast2</basedir>
    <logdir>{dir}</logdir>
    <webroot>/usr/share/icecast2/web</webroot>
    <adminroot>/usr/share/icecast2/admin</adminroot>
    <pidfile>{dir}/icecast.pid</pidfile>
  </paths>
  <logging>
    <accesslog>access.log</accesslog>
    <errorlog>error.log</errorlog>
    <loglevel>2</loglevel>
  </logging>
  <security>
    <chroot>0</chroot>
    {changeowner}
  </security>
</icecast>
"#
    )
}

/// Waits until something accepts connections on `addr`, failing early if `child` exits.
async fn wait_for_port(addr: SocketAddr, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("the server exited with {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nothing listens on {addr} after 15 s")
}

/// CPU time (user + system) that a process has used so far; `pid` may be `self`.
fn cpu_seconds(pid: &str) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces, so count fields from its closing ')'.
    // After it comes field 3; utime and stime are fields 14 and 15.
    let after_name = &stat[stat.rfind(')').context("malformed /proc stat")? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) as f64 / clock_ticks_per_second())
}

/// CPU time that the whole machine has spent busy (all cores, everything but idle and iowait).
fn machine_busy_seconds() -> Result<f64> {
    let stat = fs::read_to_string("/proc/stat")?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("cpu "))
        .context("no cpu line in /proc/stat")?
        .split_whitespace()
        .map(|field| field.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal ...; guest time is already in user.
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    let busy = ticks.iter().take(8).sum::<u64>() - idle;
    Ok(busy as f64 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// A `kB` line of /proc/<pid>/status (VmHWM is the peak resident set, VmRSS the current one).
fn status_kib(pid: &str, key: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// The soft open-files limit the process really got.
fn open_files_limit(pid: &str) -> Result<u64> {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .context("no open files line in /proc limits")?;
    let soft = line["Max open files".len()..].split_whitespace().next();
    Ok(soft.and_then(|s| s.parse().ok()).unwrap_or(u64::MAX)) // "unlimited"
}

/// lenscast's GET /api/status as JSON, over a plain HTTP/1.1 connection.
async fn lenscast_status(addr: SocketAddr) -> Result<serde_json::Value> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET /api/status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .context("/api/status timed out")??;
    let body = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| &response[at + 4..])
        .context("no HTTP header end in the /api/status answer")?;
    serde_json::from_slice(body).context("parsing /api/status")
}

// ---------------------------------------------------------------------------------------------
// Viewers: a TCP connection, one request, and the stream unwrapped from its transport.
//
// No WebSocket or HTTP library: each viewer is a socket, a small state machine per layer and a
// shared read buffer, so that thousands of them cost the client little.

/// When a viewer got what, handed back when it stops.
#[derive(Debug, Default)]
struct ViewerReport {
    connect_error: Option<String>,
    /// From starting the first attempt to the response head (WebSocket 101, HTTP 200).
    connect_time: Duration,
    /// Connection attempts made (a steady viewer tries again when one fails).
    connect_attempts: u32,
    /// From starting the attempt to the first byte of the WebM stream.
    first_byte: Option<Duration>,
    /// From starting the attempt to the last byte of the first keyframe that opens a Cluster:
    /// the moment a player can show a picture.
    first_keyframe: Option<Duration>,
    /// ... and to the start of the Cluster after that one, so that the whole keyframe Cluster
    /// has arrived. For a live stream this includes waiting for the rest of the GOP to happen.
    first_keyframe_cluster: Option<Duration>,
    /// Cluster timecodes in arrival order, with when each arrived.
    clusters: Vec<(u64, Instant)>,
    /// What the header walk or (for the sampled viewers) the full parse refused.
    parse_error: Option<String>,
    /// Why the connection ended before the benchmark stopped it, if it did.
    ended_early: Option<String>,
}

/// What every viewer of one target shares.
struct ViewerSpec {
    target: Target,
    addr: SocketAddr,
}

/// What a viewer is for, and so how it behaves.
#[derive(Debug, Clone, Copy)]
struct Role {
    /// Also parse the whole stream with our StreamReader.
    full_parse: bool,
    /// Connection attempts before it counts as failed.
    attempts: u32,
    /// After each read, wait this long before the next (0: read as data comes).
    read_interval: Duration,
}

impl Role {
    /// Joining viewers and probes are timed: one attempt, reading as data comes.
    const JOINING: Role = Role {
        full_parse: false,
        attempts: 1,
        read_interval: Duration::ZERO,
    };
    const PROBE: Role = Role {
        full_parse: true,
        ..Role::JOINING
    };
}

/// One viewer from start to stop: connects, then reads until `stop` turns true. `slot` is held
/// only while connecting (bounded concurrency); `bytes` counts media bytes as they come, for
/// the window snapshots.
async fn viewer(
    spec: Arc<ViewerSpec>,
    bytes: Arc<AtomicU64>,
    role: Role,
    slot: Option<OwnedSemaphorePermit>,
    stop: watch::Receiver<bool>,
) -> ViewerReport {
    let started = Instant::now();
    let mut media = Media::new(started, bytes, role.full_parse);
    let mut error = String::new();
    for _ in 0..role.attempts {
        media.report.connect_attempts += 1;
        match tokio::time::timeout(CONNECT_TIMEOUT, open_stream(&spec)).await {
            Ok(Ok((stream, unwrap, body_start))) => {
                drop(slot);
                media.report.connect_time = started.elapsed();
                let reading = Reading {
                    stream,
                    unwrap,
                    interval: role.read_interval,
                };
                return watch(reading, &body_start, media, stop).await;
            }
            Ok(Err(failed)) => error = format!("{failed:#}"),
            Err(_) => error = format!("no answer within {CONNECT_TIMEOUT:?}"),
        }
    }
    media.report.connect_time = started.elapsed();
    media.report.connect_error = Some(error);
    media.report
}

/// Connects, sends the request and reads the response head. Returns the socket, how to unwrap
/// the body, and the body bytes that came with the head.
async fn open_stream(spec: &ViewerSpec) -> Result<(TcpStream, Unwrap, Vec<u8>)> {
    let mut stream = TcpStream::connect(spec.addr).await?;
    stream.set_nodelay(true)?;
    stream
        .write_all(spec.target.request(spec.addr).as_bytes())
        .await?;
    let mut head = Vec::with_capacity(1024);
    let end = loop {
        let mut buf = [0u8; 2048];
        let n = stream.read(&mut buf).await?;
        ensure!(n > 0, "connection closed before the response head");
        head.extend_from_slice(&buf[..n]);
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        ensure!(head.len() < 16384, "response head over 16 KiB");
    };
    let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
    let status = text.lines().next().unwrap_or_default().to_owned();
    let unwrap = match spec.target {
        Target::Ws => {
            ensure!(status.contains(" 101"), "refused: {status}");
            Unwrap::WebSocket(WsFrames::default())
        }
        Target::Http | Target::Icecast | Target::IcecastFrames => {
            ensure!(status.contains(" 200"), "refused: {status}");
            if text.contains("transfer-encoding: chunked") {
                Unwrap::Chunked(Chunked::default())
            } else {
                Unwrap::Plain
            }
        }
    };
    Ok((stream, unwrap, head.split_off(end)))
}

thread_local! {
    /// One read buffer per runtime thread, shared by every viewer it runs: reads are processed
    /// before the next await, so no viewer needs one of its own (5,000 x 64 KiB would be 320 MB).
    static READ_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 * 1024]);
}

/// A connected viewer's socket and how it reads it.
struct Reading {
    stream: TcpStream,
    unwrap: Unwrap,
    /// Pause between reads: lets data pile up in the socket, so the load generator wakes less
    /// often than once per frame (see `--read-interval-ms`).
    interval: Duration,
}

/// Reads until stopped or the stream ends, feeding everything through `unwrap` into `media`.
async fn watch(
    reading: Reading,
    body_start: &[u8],
    mut media: Media,
    mut stop: watch::Receiver<bool>,
) -> ViewerReport {
    let Reading {
        mut stream,
        mut unwrap,
        interval,
    } = reading;
    // Body bytes may come with the response head: they arrived now, not at the start.
    media.now = Instant::now();
    let mut ended = unwrap.feed(body_start, &mut media);
    while ended.is_none() {
        tokio::select! {
            _ = stop.changed() => break,
            ready = stream.readable() => if let Err(error) = ready {
                ended = Some(error.to_string());
                break;
            },
        }
        ended = READ_BUFFER.with(|buffer| {
            let mut buffer = buffer.borrow_mut();
            match stream.try_read(&mut buffer) {
                Ok(0) => Some("connection closed".to_owned()),
                Ok(n) => {
                    media.now = Instant::now();
                    unwrap.feed(&buffer[..n], &mut media)
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => None,
                Err(error) => Some(error.to_string()),
            }
        });
        if let Some(pong) = unwrap.pong() {
            if let Err(error) = stream.write_all(&pong).await {
                ended = Some(format!("answering a ping: {error}"));
            }
        }
        if !interval.is_zero() && ended.is_none() {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
    media.report.ended_early = ended;
    media.finish()
}

/// How the WebM stream is wrapped in the response body.
enum Unwrap {
    WebSocket(WsFrames),
    /// lenscast's `/live.webm` (HTTP/1.1 chunked transfer coding).
    Chunked(Chunked),
    /// Icecast's body: the stream itself, until the connection closes.
    Plain,
}

impl Unwrap {
    /// Passes the WebM bytes in `input` on to `media`. Returns why the stream ended, if it did.
    fn feed(&mut self, input: &[u8], media: &mut Media) -> Option<String> {
        match self {
            Unwrap::WebSocket(frames) => frames.feed(input, media),
            Unwrap::Chunked(chunks) => chunks.feed(input, media),
            Unwrap::Plain => {
                media.push(input);
                None
            }
        }
    }

    /// A pong frame owed to the server, if it pinged.
    fn pong(&mut self) -> Option<Vec<u8>> {
        match self {
            Unwrap::WebSocket(frames) => frames.pong.take(),
            _ => None,
        }
    }
}

/// WebSocket frames from a server (RFC 6455: never masked). Binary payloads are the stream.
#[derive(Default)]
struct WsFrames {
    /// Header bytes of the next frame, while they come in (2 to 10 bytes).
    head: Vec<u8>,
    /// In a frame's payload, and how much of it is still to come.
    in_payload: bool,
    left: u64,
    opcode: u8,
    /// The opcode of the message that continuation frames (opcode 0) continue.
    message: u8,
    /// A control frame's payload (ping, close).
    control: Vec<u8>,
    pong: Option<Vec<u8>>,
}

impl WsFrames {
    fn feed(&mut self, mut input: &[u8], media: &mut Media) -> Option<String> {
        loop {
            if self.in_payload {
                let take = self.left.min(input.len() as u64) as usize;
                let (payload, rest) = input.split_at(take);
                match self.opcode {
                    2 => media.push(payload),
                    0 if self.message == 2 => media.push(payload),
                    8..=10 => self.control.extend_from_slice(payload),
                    _ => {} // text: lenscast's init notice (JSON), not part of the stream
                }
                self.left -= take as u64;
                input = rest;
                if self.left > 0 {
                    return None;
                }
                self.in_payload = false;
                if let Some(ended) = self.frame_done() {
                    return Some(ended);
                }
            }
            if input.is_empty() {
                return None;
            }
            // The header: 2 bytes, then 2 or 8 more for a long payload length.
            let needed = match self.head.get(1).map(|b| b & 0x7f) {
                None => 2,
                Some(126) => 4,
                Some(127) => 10,
                Some(_) => 2,
            };
            let take = (needed - self.head.len().min(needed)).min(input.len());
            self.head.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.head.len() < needed || (needed == 2 && self.head[1] & 0x7f >= 126) {
                continue; // more header bytes to come (maybe in this same input)
            }
            if self.head[1] & 0x80 != 0 {
                return Some("protocol error: a masked frame from the server".into());
            }
            self.opcode = self.head[0] & 0x0f;
            if (1..8).contains(&self.opcode) {
                self.message = self.opcode;
            }
            self.left = match needed {
                4 => u16::from_be_bytes([self.head[2], self.head[3]]).into(),
                10 => u64::from_be_bytes(self.head[2..10].try_into().expect("8 bytes")),
                _ => (self.head[1] & 0x7f).into(),
            };
            self.head.clear();
            self.in_payload = true;
        }
    }

    /// A whole frame has arrived.
    fn frame_done(&mut self) -> Option<String> {
        let control = std::mem::take(&mut self.control);
        match self.opcode {
            8 => {
                let code = control.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                let reason = String::from_utf8_lossy(control.get(2..).unwrap_or_default());
                return Some(format!("closed by the server: {code:?} {reason}"));
            }
            9 => {
                // A pong echoes the ping's payload, in a frame that a client must mask (a zero
                // mask leaves the payload as it is).
                let mut pong = vec![0x8a, 0x80 | control.len() as u8, 0, 0, 0, 0];
                pong.extend_from_slice(&control);
                self.pong = Some(pong);
            }
            _ => {}
        }
        None
    }
}

/// HTTP/1.1 chunked transfer coding: `<hex size>[;ext]\r\n<data>\r\n`, until a 0 size.
#[derive(Default)]
struct Chunked {
    /// The size line so far.
    line: Vec<u8>,
    /// Data bytes left in the current chunk, then the CRLF after it.
    data_left: u64,
    crlf_left: usize,
}

impl Chunked {
    fn feed(&mut self, mut input: &[u8], media: &mut Media) -> Option<String> {
        while !input.is_empty() {
            if self.data_left > 0 {
                let take = self.data_left.min(input.len() as u64) as usize;
                media.push(&input[..take]);
                self.data_left -= take as u64;
                input = &input[take..];
                if self.data_left == 0 {
                    self.crlf_left = 2;
                }
            } else if self.crlf_left > 0 {
                let take = self.crlf_left.min(input.len());
                self.crlf_left -= take;
                input = &input[take..];
            } else {
                let Some(newline) = input.iter().position(|&b| b == b'\n') else {
                    self.line.extend_from_slice(input);
                    return None;
                };
                self.line.extend_from_slice(&input[..newline]);
                input = &input[newline + 1..];
                let line = String::from_utf8_lossy(&self.line).into_owned();
                self.line.clear();
                let size = line.split(';').next().unwrap_or_default().trim();
                match u64::from_str_radix(size, 16) {
                    Ok(0) => return Some("end of the chunked body".into()),
                    Ok(size) => self.data_left = size,
                    Err(_) => return Some(format!("bad chunk size line {line:?}")),
                }
            }
        }
        None
    }
}

/// The WebM stream as one viewer receives it: counted, timed, and walked for Clusters.
struct Media {
    started: Instant,
    /// When the bytes being pushed arrived.
    now: Instant,
    bytes: Arc<AtomicU64>,
    scan: ClusterScan,
    /// Only for the sampled viewers: the whole stream through our own reader.
    full: Option<StreamReader>,
    report: ViewerReport,
}

impl Media {
    fn new(started: Instant, bytes: Arc<AtomicU64>, full_parse: bool) -> Self {
        Media {
            started,
            now: started,
            bytes,
            scan: ClusterScan::default(),
            full: full_parse.then(StreamReader::new),
            report: ViewerReport::default(),
        }
    }

    fn push(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        let since_start = self.now - self.started;
        self.report.first_byte.get_or_insert(since_start);
        if self.report.parse_error.is_some() {
            return;
        }
        if let Err(error) = self.scan.push(data, self.now, &mut self.report) {
            self.report.parse_error = Some(format!("header walk: {error}"));
        }
        if let Some(reader) = &mut self.full {
            reader.push(data);
            loop {
                match reader.next_event() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(error) => {
                        self.report.parse_error = Some(format!("StreamReader: {error}"));
                        self.full = None;
                        break;
                    }
                }
            }
        }
    }

    fn finish(mut self) -> ViewerReport {
        let started = self.started;
        let since = |at: Option<Instant>| at.map(|at| at - started);
        self.report.first_keyframe = since(self.scan.first_keyframe);
        self.report.first_keyframe_cluster = since(self.scan.first_keyframe_cluster_done);
        self.report
    }
}

// EBML IDs the walk cares about.
const ID_SEGMENT: u32 = 0x1853_8067;
const ID_CLUSTER: u32 = 0x1F43_B675;
const ID_TIMECODE: u32 = 0xE7;
const ID_SIMPLE_BLOCK: u32 = 0xA3;
const ID_BLOCK_GROUP: u32 = 0xA0;
/// A SimpleBlock's track number (1 to 8 bytes), timecode (2) and flags (1).
const BLOCK_HEAD_MAX: usize = 11;

/// Finds Clusters, their timecodes and keyframes by reading element headers only.
///
/// The walk is flat: it steps into Segment and Cluster (whose children follow their header,
/// and whose size may be unknown in a live stream) and skips every other element by its size.
/// Read in order, that visits every child of every Cluster, with or without known sizes.
/// Besides headers it keeps only Cluster Timecode values and a SimpleBlock's first bytes (its
/// keyframe flag). A Cluster's first block counts as a keyframe only if it is a SimpleBlock
/// with the flag set; a BlockGroup opening a Cluster counts as none (ffmpeg writes
/// SimpleBlocks).
#[derive(Default)]
struct ClusterScan {
    /// The header (or small payload) being read, across reads.
    pending: Vec<u8>,
    state: ScanState,
    /// The next block is the first of its Cluster.
    next_block_opens_cluster: bool,
    /// The current Cluster opened with a keyframe.
    in_keyframe_cluster: bool,
    first_keyframe: Option<Instant>,
    first_keyframe_cluster_done: Option<Instant>,
}

#[derive(Default)]
enum ScanState {
    /// Reading an element's ID and size.
    #[default]
    Header,
    /// Collecting a small payload: a Cluster Timecode, or a SimpleBlock's head (then `rest`).
    Capture { id: u32, size: usize, rest: u64 },
    /// Skipping payload bytes; `keyframe_end` when they end the first keyframe of a Cluster.
    Skip { left: u64, keyframe_end: bool },
}

impl ClusterScan {
    fn push(&mut self, mut data: &[u8], now: Instant, report: &mut ViewerReport) -> Result<()> {
        loop {
            match self.state {
                ScanState::Skip { left, keyframe_end } => {
                    let take = left.min(data.len() as u64);
                    data = &data[take as usize..];
                    if take < left {
                        self.state = ScanState::Skip {
                            left: left - take,
                            keyframe_end,
                        };
                        return Ok(());
                    }
                    if keyframe_end {
                        self.first_keyframe.get_or_insert(now);
                    }
                    self.state = ScanState::Header;
                }
                ScanState::Capture { id, size, rest } => {
                    let take = (size - self.pending.len()).min(data.len());
                    self.pending.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.pending.len() < size {
                        return Ok(());
                    }
                    self.captured(id, rest, now, report);
                    self.pending.clear();
                }
                ScanState::Header => {
                    let Some(&byte) = data.first() else {
                        return Ok(());
                    };
                    self.pending.push(byte);
                    data = &data[1..];
                    if let Some((id, size)) = parse_header(&self.pending)? {
                        self.pending.clear();
                        self.element(id, size, now)?;
                    }
                }
            }
        }
    }

    /// An element header is complete: decide what to do with its payload.
    fn element(&mut self, id: u32, size: Option<u64>, now: Instant) -> Result<()> {
        match id {
            ID_SEGMENT => return Ok(()), // step in: its children follow
            ID_CLUSTER => {
                if self.in_keyframe_cluster {
                    self.first_keyframe_cluster_done.get_or_insert(now);
                }
                self.next_block_opens_cluster = true;
                self.in_keyframe_cluster = false;
                return Ok(()); // step in
            }
            _ => {}
        }
        let size = size.with_context(|| format!("element {id:#x} of unknown size"))?;
        self.state = match id {
            ID_TIMECODE if size <= 8 => ScanState::Capture {
                id,
                size: size as usize,
                rest: 0,
            },
            ID_SIMPLE_BLOCK => {
                let head = size.min(BLOCK_HEAD_MAX as u64);
                ScanState::Capture {
                    id,
                    size: head as usize,
                    rest: size - head,
                }
            }
            _ => {
                if id == ID_BLOCK_GROUP {
                    self.next_block_opens_cluster = false;
                }
                ScanState::Skip {
                    left: size,
                    keyframe_end: false,
                }
            }
        };
        Ok(())
    }

    /// A captured payload (in `pending`) is complete.
    fn captured(&mut self, id: u32, rest: u64, now: Instant, report: &mut ViewerReport) {
        let keyframe_end = if id == ID_TIMECODE {
            let timecode = self
                .pending
                .iter()
                .fold(0u64, |value, &b| value << 8 | u64::from(b));
            report.clusters.push((timecode, now));
            false
        } else {
            // SimpleBlock: track number (an EBML varint), 2 bytes of timecode, then flags.
            let track_len = self
                .pending
                .first()
                .map_or(1, |b| b.leading_zeros() as usize + 1);
            let keyframe = self
                .pending
                .get(track_len + 2)
                .is_some_and(|flags| flags & 0x80 != 0);
            let opens = std::mem::take(&mut self.next_block_opens_cluster);
            if opens {
                self.in_keyframe_cluster = keyframe;
            }
            opens && keyframe
        };
        self.state = ScanState::Skip {
            left: rest,
            keyframe_end,
        };
    }
}

/// An element's ID (marker bits kept, as IDs are written) and size (`None`: unknown), once
/// `bytes` holds all of its header; `Ok(None)` while more bytes are needed.
fn parse_header(bytes: &[u8]) -> Result<Option<(u32, Option<u64>)>> {
    let id_len = bytes[0].leading_zeros() as usize + 1;
    ensure!(id_len <= 4, "invalid element ID byte {:#04x}", bytes[0]);
    let Some(&size_first) = bytes.get(id_len) else {
        return Ok(None);
    };
    let size_len = size_first.leading_zeros() as usize + 1;
    ensure!(size_len <= 8, "invalid element size byte 0x00");
    if bytes.len() < id_len + size_len {
        return Ok(None);
    }
    let id = bytes[..id_len]
        .iter()
        .fold(0u32, |id, &b| id << 8 | u32::from(b));
    // The size without its length marker; all ones means unknown.
    let marker_free = u64::from(size_first) & (0xff >> size_len);
    let size = bytes[id_len + 1..id_len + size_len]
        .iter()
        .fold(marker_free, |size, &b| size << 8 | u64::from(b));
    let unknown = size == (1u64 << (7 * size_len)) - 1;
    Ok(Some((id, (!unknown).then_some(size))))
}

// ---------------------------------------------------------------------------------------------
// Connecting many viewers.

/// The viewers of one target, all connected (or failed) and reading.
struct Viewers {
    tasks: Vec<JoinHandle<ViewerReport>>,
    /// Bytes each viewer has received so far, readable while it runs.
    bytes: Vec<Arc<AtomicU64>>,
    connect_time: Duration,
}

impl Viewers {
    async fn collect(self) -> Result<Vec<ViewerReport>> {
        let mut reports = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            reports.push(task.await.context("a viewer task panicked")?);
        }
        Ok(reports)
    }
}

/// Connects `n` viewers, `concurrency` at a time, and returns once every attempt has finished
/// (a bounded number of connects in flight keeps the server's listen backlog from overflowing).
/// The first `full_parse` of them also parse their stream fully.
async fn connect_viewers(
    spec: &Arc<ViewerSpec>,
    n: usize,
    concurrency: usize,
    full_parse: usize,
    read_interval: Duration,
    stop: &watch::Receiver<bool>,
) -> Viewers {
    let slots = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    let mut bytes = Vec::with_capacity(n);
    for i in 0..n {
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        let counter = Arc::new(AtomicU64::new(0));
        bytes.push(counter.clone());
        let role = Role {
            full_parse: i < full_parse,
            attempts: CONNECT_ATTEMPTS,
            read_interval,
        };
        tasks.push(tokio::spawn(viewer(
            spec.clone(),
            counter,
            role,
            Some(slot),
            stop.clone(),
        )));
    }
    // Every slot is free again only when every connect attempt has finished.
    let _all = slots
        .acquire_many(concurrency as u32)
        .await
        .expect("never closed");
    Viewers {
        tasks,
        bytes,
        connect_time: started.elapsed(),
    }
}

/// Waits until one viewer gets a first keyframe: the server is up and its stream is flowing
/// (for Icecast: the feeder has logged in, which takes a moment after the port opens).
async fn wait_for_stream(spec: &Arc<ViewerSpec>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        let (stop, stop_rx) = watch::channel(false);
        let probe = tokio::spawn(viewer(
            spec.clone(),
            Arc::default(),
            Role::PROBE,
            None,
            stop_rx,
        ));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let _ = stop.send(true);
        let report = probe.await?;
        if report.first_keyframe.is_some() {
            return Ok(());
        }
        last = report
            .connect_error
            .or(report.parse_error)
            .or(report.ended_early)
            .unwrap_or_else(|| "no keyframe within 2 s".into());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("the stream did not start within 20 s (last probe: {last})")
}

/// The join storm: `count` new viewers at `rate` a second, each started on schedule whatever
/// the others do. Returns once the last has had `JOIN_WAIT` to get its first keyframe.
async fn join_storm(spec: &Arc<ViewerSpec>, count: usize, rate: f64) -> Result<Vec<ViewerReport>> {
    let (stop, stop_rx) = watch::channel(false);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        tasks.push(tokio::spawn(viewer(
            spec.clone(),
            Arc::default(),
            Role::JOINING,
            None,
            stop_rx.clone(),
        )));
    }
    // A fixed wait, not "until all have their keyframe": a late one is what we want to see.
    tokio::time::sleep(JOIN_WAIT).await;
    let _ = stop.send(true);
    let viewers = Viewers {
        tasks,
        bytes: Vec::new(),
        connect_time: start.elapsed(),
    };
    viewers.collect().await
}

// ---------------------------------------------------------------------------------------------
// Measuring one target.

/// What every target of one viewer count shares.
struct RunConfig {
    viewers: usize,
    window: Duration,
    connect_concurrency: usize,
    join_count: usize,
    join_rate: f64,
    full_parse: usize,
    read_interval: Duration,
    /// This process's open-files limit.
    open_files: u64,
}

/// Everything read at one edge of the window.
struct Snapshot {
    at: Instant,
    server_cpu_s: f64,
    client_cpu_s: f64,
    machine_busy_s: f64,
    viewer_bytes: Vec<u64>,
    /// lenscast's /api/status (null for Icecast).
    status: serde_json::Value,
}

impl Snapshot {
    async fn take(target: Target, served: &Served, viewers: &Viewers) -> Result<Self> {
        let pid = served.pid();
        let snapshot = Snapshot {
            at: Instant::now(),
            server_cpu_s: cpu_seconds(&pid)?,
            client_cpu_s: cpu_seconds("self")?,
            machine_busy_s: machine_busy_seconds()?,
            viewer_bytes: viewers
                .bytes
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            status: serde_json::Value::Null,
        };
        if !target.is_lenscast() {
            return Ok(snapshot);
        }
        Ok(Snapshot {
            status: lenscast_status(served.addr).await?,
            ..snapshot
        })
    }

    fn counter(&self, key: &str) -> u64 {
        self.status[key].as_u64().unwrap_or(0)
    }
}

/// The server's memory: before any viewer, and its peak by the end of the window.
struct Memory {
    baseline_kib: u64,
    peak_kib: u64,
}

/// Starts the target's server, connects the viewers, measures the window, runs the join storm,
/// and stops everything again.
async fn measure_target(
    target: Target,
    run: &RunConfig,
    args: &Args,
    lenscast: &Path,
    source: &Source,
    bench_dir: &Path,
) -> Result<TargetResult> {
    let n = run.viewers;
    let sockets = (n + run.join_count) as u64 + SPARE_FILES;
    ensure!(
        run.open_files >= sockets,
        "{n} viewers and {} joining need {sockets} open files, but this process may open only {} \
         (raise the hard limit: `ulimit -Hn`)",
        run.join_count,
        run.open_files
    );
    let log = bench_dir.join(format!("{}-{n}.log", target.name()));
    let served = match target {
        Target::Ws | Target::Http => {
            start_lenscast(lenscast, &source.path, &args.server_args, log)?
        }
        Target::Icecast | Target::IcecastFrames => {
            // Icecast counts its source among the clients; leave room for probes and spares.
            let clients = n + run.join_count + 100;
            start_icecast(&args.icecast, target, &source.path, clients, log).await?
        }
    };
    let server_files = open_files_limit(&served.pid())?;
    ensure!(
        server_files >= sockets,
        "the server may open only {server_files} files, too few for {sockets}"
    );
    let spec = Arc::new(ViewerSpec {
        target,
        addr: served.addr,
    });
    wait_for_stream(&spec)
        .await
        .with_context(|| format!("see {}", served.log.display()))?;
    println!(
        "\n{} with {n} viewers: server at {} (pid {})",
        target.name(),
        served.addr,
        served.pid()
    );

    let baseline_kib = status_kib(&served.pid(), "VmRSS")?;
    let (stop, stop_rx) = watch::channel(false);
    let viewers = connect_viewers(
        &spec,
        n,
        run.connect_concurrency,
        run.full_parse,
        run.read_interval,
        &stop_rx,
    )
    .await;
    println!(
        "  connected in {:.2} s; measuring {:.0} s",
        viewers.connect_time.as_secs_f64(),
        run.window.as_secs_f64()
    );
    let start = Snapshot::take(target, &served, &viewers).await?;
    tokio::time::sleep(run.window).await;
    let end = Snapshot::take(target, &served, &viewers).await?;
    let memory = Memory {
        baseline_kib,
        peak_kib: status_kib(&served.pid(), "VmHWM")?,
    };

    // The storm comes on top of the N viewers, which keep watching meanwhile.
    let joins = if run.join_count > 0 {
        println!(
            "  join storm: {} viewers at {:.0}/s",
            run.join_count, run.join_rate
        );
        join_storm(&spec, run.join_count, run.join_rate).await?
    } else {
        tokio::time::sleep(GRACE).await;
        Vec::new()
    };
    let _ = stop.send(true);
    let connect_s = viewers.connect_time.as_secs_f64();
    let reports = viewers.collect().await?;
    let warnings = count_warnings(&served.log);
    drop(served);

    let steady = SteadyInput {
        target,
        start: &start,
        end: &end,
        reports: &reports,
        source,
    };
    let result = summarize(&steady, connect_s, &memory, &joins, warnings);
    print_problems("viewer", &reports);
    print_problems("joining viewer", &joins);
    Ok(result)
}

/// WARN and ERROR lines in lenscast's log (e.g. "viewer lagged"); Icecast's are its own.
fn count_warnings(log: &Path) -> usize {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
        .count()
}

/// Lists the first few viewers that failed, ended early or received a stream that did not parse.
fn print_problems(kind: &str, reports: &[ViewerReport]) {
    let problems: Vec<String> = reports
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let problem = r
                .connect_error
                .as_ref()
                .map(|e| format!("connect: {e}"))
                .or_else(|| r.parse_error.as_ref().map(|e| format!("parse: {e}")))
                .or_else(|| r.ended_early.as_ref().map(|e| format!("ended early: {e}")))?;
            Some(format!("{kind} {i}: {problem}"))
        })
        .collect();
    for problem in problems.iter().take(5) {
        println!("  {problem}");
    }
    if problems.len() > 5 {
        println!("  ... and {} more with problems", problems.len() - 5);
    }
}

// ---------------------------------------------------------------------------------------------
// Results.

/// min, median and max of a set of per-viewer numbers.
#[derive(Debug, Default, Clone, Copy, Serialize)]
struct Spread {
    min: f64,
    median: f64,
    max: f64,
}

impl Spread {
    fn of(mut values: Vec<f64>) -> Self {
        if values.is_empty() {
            return Spread::default();
        }
        values.sort_by(f64::total_cmp);
        Spread {
            min: values[0],
            median: values[values.len() / 2],
            max: values[values.len() - 1],
        }
    }
}

/// p50 and p99 of join times in ms (nearest rank). A viewer that never got there counts as
/// infinitely late, so the percentiles cannot look better by leaving it out; `None` then.
#[derive(Debug, Default, Clone, Copy, Serialize)]
struct Percentiles {
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    /// Viewers that never got there within the wait.
    missing: usize,
}

impl Percentiles {
    fn of(times: impl Iterator<Item = Option<Duration>>) -> Self {
        let mut ms: Vec<f64> = times
            .map(|t| t.map_or(f64::INFINITY, |t| t.as_secs_f64() * 1e3))
            .collect();
        ms.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            let at = ((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len().max(1)) - 1;
            ms.get(at).copied().filter(|v| v.is_finite())
        };
        Percentiles {
            p50_ms: rank(0.50),
            p99_ms: rank(0.99),
            missing: ms.iter().filter(|v| v.is_infinite()).count(),
        }
    }
}

/// The join storm's numbers for one target.
#[derive(Debug, Default, Serialize)]
struct JoinResult {
    viewers: usize,
    failed: usize,
    first_byte: Percentiles,
    /// The last byte of the first keyframe opening a Cluster (a picture can be shown).
    first_keyframe: Percentiles,
    /// The start of the Cluster after the first keyframe Cluster (that Cluster complete).
    first_keyframe_cluster: Percentiles,
}

/// One row of the table, and one entry of fanout.json.
#[derive(Debug, Serialize)]
struct TargetResult {
    target: &'static str,
    viewers: usize,
    connected: usize,
    connect_failed: usize,
    /// Extra connection attempts the steady viewers needed.
    connect_retries: u32,
    connect_s: f64,
    window_s: f64,
    /// Bytes all viewers received inside the window.
    bytes_total: u64,
    mbit_s_per_viewer: Spread,
    /// Viewers below HEALTHY_SHARE of the source's byte rate over the window.
    viewers_slow: usize,
    /// Viewers whose connection ended (closed by the server, lost) before the bench stopped it.
    viewers_dropped: usize,
    /// Connected, never dropped, at the stream rate, and their stream parsed.
    viewers_healthy: usize,
    viewers_with_parse_errors: usize,
    /// Distinct Clusters that some viewer received inside the window.
    clusters_in_window: usize,
    clusters_lost_max: usize,
    viewers_losing_clusters: usize,
    /// lenscast's /api/status counters during the window (0 for Icecast).
    lag_resyncs: u64,
    slow_viewers_dropped: u64,
    server_warnings_logged: usize,
    server_cpu_s: f64,
    server_cpu_percent_of_core: f64,
    /// The headline: server CPU seconds per GB (1e9 bytes) that its viewers received.
    cpu_s_per_gb: f64,
    /// cpu_s_per_gb / Icecast's in the same run, fed by ffmpeg's icecast output (the issue's
    /// setup) and frame by frame (filled in once those have run).
    cpu_ratio_to_icecast: Option<f64>,
    cpu_ratio_to_icecast_frames: Option<f64>,
    server_rss_before_viewers_mib: f64,
    server_peak_rss_mib: f64,
    /// (peak RSS - RSS before viewers) / N.
    rss_kib_per_viewer: f64,
    client_cpu_s: f64,
    client_cpu_percent_of_core: f64,
    /// The whole machine's busy time in the window, as a share of all cores: near 100 means
    /// it was saturated, and other processes' share is this minus server and client.
    machine_busy_percent: f64,
    join: JoinResult,
}

/// The steady window's inputs for `summarize`.
struct SteadyInput<'a> {
    target: Target,
    start: &'a Snapshot,
    end: &'a Snapshot,
    reports: &'a [ViewerReport],
    source: &'a Source,
}

fn summarize(
    input: &SteadyInput,
    connect_s: f64,
    memory: &Memory,
    joins: &[ViewerReport],
    server_warnings_logged: usize,
) -> TargetResult {
    let (start, end, reports) = (input.start, input.end, input.reports);
    let n = reports.len();
    let window_s = (end.at - start.at).as_secs_f64();
    let connected: Vec<usize> = (0..n)
        .filter(|&i| reports[i].connect_error.is_none())
        .collect();
    let window_bytes: Vec<u64> = connected
        .iter()
        .map(|&i| end.viewer_bytes[i] - start.viewer_bytes[i])
        .collect();
    let bytes_total: u64 = window_bytes.iter().sum();
    let healthy_bytes = HEALTHY_SHARE * input.source.bytes_per_second() * window_s;
    let slow: Vec<bool> = window_bytes
        .iter()
        .map(|&b| (b as f64) < healthy_bytes)
        .collect();
    let connected_reports: Vec<&ViewerReport> = connected.iter().map(|&i| &reports[i]).collect();
    let (clusters_in_window, lost) = clusters_lost(&connected_reports, start.at, end.at);
    let healthy = connected_reports
        .iter()
        .zip(&slow)
        .filter(|(r, &slow)| !slow && r.ended_early.is_none() && r.parse_error.is_none())
        .count();
    let server_cpu_s = end.server_cpu_s - start.server_cpu_s;
    let client_cpu_s = end.client_cpu_s - start.client_cpu_s;
    let count = |f: fn(&ViewerReport) -> bool| connected_reports.iter().filter(|r| f(r)).count();
    let counter = |key| end.counter(key).saturating_sub(start.counter(key));
    let mib = |kib: u64| kib as f64 / 1024.0;
    TargetResult {
        target: input.target.name(),
        viewers: n,
        connected: connected.len(),
        connect_failed: n - connected.len(),
        connect_retries: reports
            .iter()
            .map(|r| r.connect_attempts.saturating_sub(1))
            .sum(),
        connect_s,
        window_s,
        bytes_total,
        mbit_s_per_viewer: Spread::of(
            window_bytes
                .iter()
                .map(|&b| b as f64 * 8.0 / 1e6 / window_s)
                .collect(),
        ),
        viewers_slow: slow.iter().filter(|&&s| s).count(),
        viewers_dropped: count(|r| r.ended_early.is_some()),
        viewers_healthy: healthy,
        viewers_with_parse_errors: count(|r| r.parse_error.is_some()),
        clusters_in_window,
        clusters_lost_max: lost.iter().copied().max().unwrap_or(0),
        viewers_losing_clusters: lost.iter().filter(|&&l| l > 0).count(),
        lag_resyncs: counter("lag_resyncs"),
        slow_viewers_dropped: counter("slow_viewers_dropped"),
        server_warnings_logged,
        server_cpu_s,
        server_cpu_percent_of_core: 100.0 * server_cpu_s / window_s,
        cpu_s_per_gb: server_cpu_s / (bytes_total.max(1) as f64 / 1e9),
        cpu_ratio_to_icecast: None,
        cpu_ratio_to_icecast_frames: None,
        server_rss_before_viewers_mib: mib(memory.baseline_kib),
        server_peak_rss_mib: mib(memory.peak_kib),
        rss_kib_per_viewer: memory.peak_kib.saturating_sub(memory.baseline_kib) as f64
            / n.max(1) as f64,
        client_cpu_s,
        client_cpu_percent_of_core: 100.0 * client_cpu_s / window_s,
        machine_busy_percent: 100.0 * (end.machine_busy_s - start.machine_busy_s)
            / (window_s * cores() as f64),
        join: JoinResult {
            viewers: joins.len(),
            failed: joins.iter().filter(|r| r.connect_error.is_some()).count(),
            first_byte: Percentiles::of(joins.iter().map(|r| r.first_byte)),
            first_keyframe: Percentiles::of(joins.iter().map(|r| r.first_keyframe)),
            first_keyframe_cluster: Percentiles::of(joins.iter().map(|r| r.first_keyframe_cluster)),
        },
    }
}

/// The Clusters of the window, and how many of them each viewer lost.
///
/// A Cluster belongs to the window when the first viewer to get it got it inside the window;
/// a viewer lost it when it never received it (arriving during the grace period still counts,
/// since late is not lost). Defining the window by first arrival, not by each viewer's own
/// clock, keeps a Cluster that straddles an edge from counting as lost for the slower viewers.
fn clusters_lost(reports: &[&ViewerReport], from: Instant, to: Instant) -> (usize, Vec<usize>) {
    let mut first_arrival: HashMap<u64, Instant> = HashMap::new();
    for &(timecode, at) in reports.iter().flat_map(|r| &r.clusters) {
        first_arrival
            .entry(timecode)
            .and_modify(|first| *first = (*first).min(at))
            .or_insert(at);
    }
    let window: Vec<u64> = first_arrival
        .into_iter()
        .filter(|&(_, at)| from <= at && at < to)
        .map(|(timecode, _)| timecode)
        .collect();
    let lost = reports
        .iter()
        .map(|report| {
            let seen: HashSet<u64> = report.clusters.iter().map(|&(t, _)| t).collect();
            window.iter().filter(|t| !seen.contains(t)).count()
        })
        .collect();
    (window.len(), lost)
}

/// All targets of one viewer count.
#[derive(Debug, Serialize)]
struct Run {
    viewers: usize,
    targets: Vec<TargetResult>,
}

impl Run {
    /// Fills in each target's CPU ratios to the Icecast targets that have run.
    fn fill_ratios(&mut self) {
        let cpu_of = |target: Target| {
            self.targets
                .iter()
                .find(|t| t.target == target.name())
                .map(|t| t.cpu_s_per_gb)
        };
        let icecast = cpu_of(Target::Icecast);
        let icecast_frames = cpu_of(Target::IcecastFrames);
        for t in &mut self.targets {
            t.cpu_ratio_to_icecast = icecast.map(|i| t.cpu_s_per_gb / i);
            t.cpu_ratio_to_icecast_frames = icecast_frames.map(|i| t.cpu_s_per_gb / i);
        }
    }
}

fn times(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "-".into(), |r| format!("{r:.2}x"))
}

fn ms(value: Option<f64>) -> String {
    match value {
        None => "-".into(),
        Some(v) if v < 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.0}"),
    }
}

fn print_table(run: &Run) {
    println!("\n{} viewers", run.viewers);
    println!(
        "{:<14} | {:>8} | {:>16} | {:>8} | {:>10} | {:>23} | {:>8} | {:>13} | {:>15} | {:>10} | {:>10} | {:>7}",
        "target", "CPU-s/GB", "CPU/GB ratio to", "peak RSS", "RSS/viewer", "viewers", "lost", "join 1st byte",
        "join 1st keyfr.", "server CPU", "client CPU", "machine"
    );
    println!(
        "{:<14} | {:>8} | {:>16} | {:>8} | {:>10} | {:>23} | {:>8} | {:>13} | {:>15} | {:>10} | {:>10} | {:>7}",
        "", "", "icecast / frames", "MiB", "KiB", "ok/failed/slow/dropped", "clusters", "p50/p99 ms",
        "p50/p99 ms", "% of core", "% of core", "busy %"
    );
    for t in &run.targets {
        let join = &t.join;
        println!(
            "{:<13} | {:>8.2} | {:>16} | {:>8.1} | {:>10.1} | {:>23} | {:>8} | {:>13} | {:>15} | {:>10.0} | {:>10.0} | {:>7.0}",
            t.target,
            t.cpu_s_per_gb,
            format!(
                "{} / {}",
                times(t.cpu_ratio_to_icecast),
                times(t.cpu_ratio_to_icecast_frames)
            ),
            t.server_peak_rss_mib,
            t.rss_kib_per_viewer,
            format!(
                "{}/{}/{}/{}",
                t.viewers_healthy, t.connect_failed, t.viewers_slow, t.viewers_dropped
            ),
            format!("{}/{}", t.viewers_losing_clusters, t.clusters_in_window),
            format!("{}/{}", ms(join.first_byte.p50_ms), ms(join.first_byte.p99_ms)),
            format!(
                "{}/{}",
                ms(join.first_keyframe.p50_ms),
                ms(join.first_keyframe.p99_ms)
            ),
            t.server_cpu_percent_of_core,
            t.client_cpu_percent_of_core,
            t.machine_busy_percent,
        );
    }
    println!(
        "(viewers ok: >= {:.0}% of the source's byte rate over the window, never dropped, stream \
         parsed; lost clusters: viewers that missed any / Clusters in the window; machine busy: \
         all {} cores, everything running)",
        HEALTHY_SHARE * 100.0,
        cores()
    );
    for t in &run.targets {
        if t.connect_retries > 0 {
            println!(
                "{}: steady viewers needed {} connection retries",
                t.target, t.connect_retries
            );
        }
        if t.viewers_with_parse_errors > 0 {
            println!(
                "{}: {} viewers received a stream that did not parse",
                t.target, t.viewers_with_parse_errors
            );
        }
        if t.target.starts_with("lenscast")
            && (t.lag_resyncs + t.slow_viewers_dropped + t.server_warnings_logged as u64) > 0
        {
            println!(
                "{}: server counted {} lag resyncs, {} slow viewers dropped, logged {} warnings",
                t.target, t.lag_resyncs, t.slow_viewers_dropped, t.server_warnings_logged
            );
        }
    }
    for t in &run.targets {
        if t.target.starts_with("lenscast") {
            println!("{}", targets_line(t));
        }
    }
}

/// The issue's targets for one lenscast target: met or not.
fn targets_line(t: &TargetResult) -> String {
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut line = format!("{} targets:", t.target);
    let ratios = [
        ("Icecast", t.cpu_ratio_to_icecast),
        ("frame-fed Icecast", t.cpu_ratio_to_icecast_frames),
    ];
    for (name, ratio) in ratios {
        if let Some(ratio) = ratio {
            let _ = write!(
                line,
                " CPU/GB {ratio:.2}x {name} (<= {TARGET_CPU_RATIO}x {});",
                verdict(ratio <= TARGET_CPU_RATIO)
            );
        }
    }
    let _ = write!(
        line,
        " {:.1} KiB/viewer (<= {TARGET_KIB_PER_VIEWER} {});",
        t.rss_kib_per_viewer,
        verdict(t.rss_kib_per_viewer <= TARGET_KIB_PER_VIEWER)
    );
    let _ = write!(
        line,
        " {}/{} viewers ok ({});",
        t.viewers_healthy,
        t.viewers,
        verdict(t.viewers_healthy == t.viewers)
    );
    if t.join.viewers > 0 {
        let p99_within = |p: Option<f64>, limit: f64| p.is_some_and(|p| p <= limit);
        let _ =
            write!(
            line,
            " join p99 first byte {} ms (<= {TARGET_FIRST_BYTE_P99_MS} {}), first keyframe {} ms \
             (<= {TARGET_KEYFRAME_P99_MS} {})",
            ms(t.join.first_byte.p99_ms),
            verdict(p99_within(t.join.first_byte.p99_ms, TARGET_FIRST_BYTE_P99_MS)),
            ms(t.join.first_keyframe.p99_ms),
            verdict(p99_within(t.join.first_keyframe.p99_ms, TARGET_KEYFRAME_P99_MS)),
        );
    }
    line
}

/// fanout.json: the source, the machine, one entry per viewer count.
#[derive(Serialize)]
struct Report<'a> {
    source: &'a Source,
    cores: usize,
    /// Steady viewers' pause after each read.
    read_interval_ms: u64,
    /// How a viewer counts as ok, and what the join times measure.
    definitions: &'static str,
    runs: Vec<&'a Run>,
}

const DEFINITIONS: &str = "cpu_s_per_gb: the server process's own utime+stime over the window \
    divided by 1e9-byte units received by all its viewers (Icecast's feeder ffmpeg not counted). \
    rss_kib_per_viewer: (VmHWM at the end of the window - VmRSS before viewers) / N. A viewer is \
    healthy if it received >= 90% of the source's byte rate over the window, was never dropped \
    and its stream parsed. Join times run from the start of the TCP connect: first_byte to the \
    first WebM byte (WebSocket: first binary payload), first_keyframe to the last byte of the \
    first keyframe SimpleBlock that opens a Cluster, first_keyframe_cluster to the start of the \
    next Cluster (that Cluster complete).";

/// Rewrites fanout.json with the finished runs plus the one in progress.
fn write_json(
    path: &Path,
    args: &Args,
    source: &Source,
    done: &[Run],
    current: &Run,
) -> Result<()> {
    let report = Report {
        source,
        cores: cores(),
        read_interval_ms: args.read_interval_ms,
        definitions: DEFINITIONS,
        runs: done.iter().chain([current]).collect(),
    };
    fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}
