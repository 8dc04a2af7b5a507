//! The fan-out benchmark: N WebSocket viewers on loopback receiving a ~1 Mbit/s stream.
//!
//! For each viewer count it starts the real `lenscast` binary on a generated 1 Mbit/s VP8 file,
//! connects N viewers to `/ws/view`, and measures a steady window of `--seconds` that begins
//! once the last viewer is connected: bytes delivered per viewer, Clusters lost per viewer, the
//! server's CPU time and peak RSS, and this client's own CPU, since both share the same cores.
//!
//! Every viewer parses what it receives with our own [`StreamReader`], so a stream that the
//! fan-out broke (a torn block, a resume in the middle of an element) shows up as a parse error
//! and not only as a byte count.
//!
//! Run it with `make bench`, or `cargo bench --bench fanout -- --viewers 100,1000 --seconds 30`.
//! It prints a table and writes the same numbers to `target/bench/fanout.json`.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Parser;
use futures_util::StreamExt;
use lenscast::webm::{Event, StreamReader};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// How long one viewer may take to connect before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Viewers keep reading this long after the window closes, so a Cluster that the fastest viewer
/// got just before the end is not counted as lost for a viewer a few milliseconds behind it.
const GRACE: Duration = Duration::from_secs(2);
/// Open files to ask for, for this process and the server: one per viewer socket, and spare.
const WANTED_FILES: u64 = 65536;
/// Descriptors either process needs besides the viewer sockets (listener, files, pipes).
const SPARE_FILES: u64 = 64;

/// Command line. `cargo bench` also passes `--bench`, which is accepted and ignored.
#[derive(Parser, Debug)]
#[command(about = "Fan-out benchmark: N WebSocket viewers of a ~1 Mbit/s lenscast stream")]
struct Args {
    /// Viewer counts to measure, one fresh server each.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    viewers: Vec<usize>,

    /// Length of the measured window, after the last viewer has connected.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,

    /// The server binary [default: target/release/lenscast, built if missing].
    #[arg(long)]
    server: Option<PathBuf>,

    /// Viewers connecting at the same time.
    #[arg(long, default_value_t = 50)]
    connect_concurrency: usize,

    /// One more argument for `lenscast serve` (repeatable), e.g. `--server-arg=--viewer-buffer=64`.
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true)]
    server_args: Vec<String>,

    // Passed by `cargo bench` to every bench target; see `main`.
    #[arg(long, hide = true)]
    bench: bool,
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
    let bench_dir = bench_dir();
    fs::create_dir_all(&bench_dir).with_context(|| format!("creating {}", bench_dir.display()))?;

    let open_files = raise_open_files_limit();
    let server = server_binary(&args)?;
    let source = Source::prepare(&bench_dir)?;
    println!(
        "source: {} ({:.1} s, {:.2} Mbit/s measured by ffprobe)",
        source.path.display(),
        source.duration_s,
        source.mbit_s
    );
    println!("server: {}", server.display());
    println!("client: open files limit {open_files}, {} cores", cores());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let mut results = Vec::new();
    for &viewers in &args.viewers {
        let run = RunConfig {
            viewers,
            window: Duration::from_secs_f64(args.seconds),
            connect_concurrency: args.connect_concurrency,
            open_files,
            server_args: args.server_args.clone(),
        };
        let result = runtime
            .block_on(run_one(&run, &server, &source, &bench_dir))
            .with_context(|| format!("the run with {viewers} viewers"))?;
        results.push(result);
        // Written after every run, so a later failure keeps the earlier numbers.
        write_json(&bench_dir.join("fanout.json"), &source, &results)?;
    }
    print_table(&results);
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

/// The ~1 Mbit/s stream the server loops. Generated once, never committed.
#[derive(Debug, Serialize)]
struct Source {
    path: PathBuf,
    duration_s: f64,
    mbit_s: f64,
}

impl Source {
    fn prepare(dir: &Path) -> Result<Self> {
        let path = dir.join("source-1mbit.webm");
        if !path.is_file() {
            encode_source(&path)?;
        }
        let (duration_s, bit_rate) = probe(&path)?;
        let mbit_s = bit_rate / 1e6;
        if !(0.7..=1.5).contains(&mbit_s) {
            println!("warning: the source measures {mbit_s:.2} Mbit/s, not ~1 Mbit/s");
        }
        Ok(Source {
            path,
            duration_s,
            mbit_s,
        })
    }
}

/// 10 s of VP8 test pattern at a constant 1 Mbit/s, one keyframe (and so one Cluster) a second.
fn encode_source(path: &Path) -> Result<()> {
    println!("encoding {} with ffmpeg", path.display());
    // Encode beside the target and rename, so an interrupted run never leaves a short file
    // that later runs would reuse.
    let partial = path.with_extension("partial.webm");
    let output = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc2=s=640x480:r=30", "-t", "10"])
        .args([
            "-c:v", "libvpx", "-b:v", "1M", "-minrate", "1M", "-maxrate", "1M",
        ])
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
/// Returns the limit now in force.
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

// ---------------------------------------------------------------------------------------------
// The server process and what /proc says about it.

/// The server under test. Killed when dropped, so no run leaves one behind, even on a panic.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `bin` on 127.0.0.1:0 looping `source`; its log (stderr) goes to `log`.
    fn start(bin: &Path, source: &Path, extra_args: &[String], log: PathBuf) -> Result<Self> {
        let log_file =
            fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new("sh")
            // The server needs a descriptor per viewer. Raise its limit here as well, so it has
            // one even when this benchmark was started without `ulimit -n` (plain cargo bench).
            // `exec` keeps the PID, so /proc/<pid> below is the server itself.
            .arg("-c")
            .arg(r#"ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$0" "$@""#)
            .arg(bin)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--passthrough",
                "--input",
            ])
            .arg(source)
            .args(extra_args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        server.addr = wait_for_address(stdout)
            .with_context(|| format!("see the server log {}", server.log.display()))?;
        Ok(server)
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }
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

/// GET /api/status as JSON, over a plain HTTP/1.1 connection.
async fn server_status(addr: SocketAddr) -> Result<serde_json::Value> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
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
// Viewers.

/// What one viewer saw, handed back when it stops.
#[derive(Debug, Default)]
struct ViewerReport {
    connect_error: Option<String>,
    /// From starting the attempt to the finished WebSocket handshake (or the failure).
    connect_time: Duration,
    /// Cluster timecodes in arrival order, with when each arrived.
    clusters: Vec<(u64, Instant)>,
    /// JSON text messages (`{"type":"init",...}`) received.
    init_notices: u64,
    /// The first thing our reader (or the JSON check) refused; the viewer stops parsing then.
    parse_error: Option<String>,
    /// Why the connection ended before the benchmark stopped it, if it did.
    ended_early: Option<String>,
}

/// The viewers of one run, all connected (or failed) and reading.
struct Viewers {
    tasks: Vec<JoinHandle<ViewerReport>>,
    /// Bytes each viewer has received so far, readable while it runs.
    bytes: Vec<Arc<AtomicU64>>,
    failed: usize,
    connect_time: Duration,
}

/// Connects `n` viewers, `concurrency` at a time, and returns once every attempt has finished.
/// Each viewer starts reading as soon as it is connected and stops when `stop` turns true.
async fn connect_viewers(
    addr: SocketAddr,
    n: usize,
    concurrency: usize,
    stop: watch::Receiver<bool>,
) -> Viewers {
    let url = format!("ws://{addr}/ws/view");
    let slots = Arc::new(Semaphore::new(concurrency));
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    let mut bytes = Vec::with_capacity(n);
    for _ in 0..n {
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        let counter = Arc::new(AtomicU64::new(0));
        bytes.push(counter.clone());
        let (url, stop, failed) = (url.clone(), stop.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let attempt = Instant::now();
            let connected =
                tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(url)).await;
            let connect_time = attempt.elapsed();
            drop(slot);
            let mut report = match connected {
                Ok(Ok((socket, _))) => watch_stream(socket, counter, stop).await,
                Ok(Err(error)) => failed_viewer(&failed, error.to_string()),
                Err(_) => {
                    failed_viewer(&failed, format!("no connection within {CONNECT_TIMEOUT:?}"))
                }
            };
            report.connect_time = connect_time;
            report
        }));
    }
    // Every slot is free again only when every connect attempt has finished.
    let _all = slots
        .acquire_many(concurrency as u32)
        .await
        .expect("never closed");
    Viewers {
        tasks,
        bytes,
        failed: failed.load(Ordering::Relaxed),
        connect_time: started.elapsed(),
    }
}

fn failed_viewer(failed: &AtomicUsize, error: String) -> ViewerReport {
    failed.fetch_add(1, Ordering::Relaxed);
    ViewerReport {
        connect_error: Some(error),
        ..ViewerReport::default()
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One viewer: reads until told to stop, counting bytes and parsing the stream as it comes.
async fn watch_stream(
    mut socket: Socket,
    bytes: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> ViewerReport {
    let mut reader = StreamReader::new();
    let mut report = ViewerReport::default();
    loop {
        let message = tokio::select! {
            _ = stop.changed() => break,
            message = socket.next() => message,
        };
        match message {
            Some(Ok(Message::Binary(data))) => {
                bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                if report.parse_error.is_none() {
                    reader.push(&data);
                    parse_events(&mut reader, &mut report);
                }
            }
            Some(Ok(Message::Text(text))) => {
                let json: serde_json::Value =
                    serde_json::from_str(text.as_str()).unwrap_or_default();
                if json["type"] == "init" {
                    report.init_notices += 1;
                } else if report.parse_error.is_none() {
                    report.parse_error = Some(format!("unexpected text message {text:?}"));
                }
            }
            Some(Ok(Message::Close(frame))) => {
                report.ended_early = Some(format!("closed by the server: {frame:?}"));
                break;
            }
            Some(Ok(_)) => {} // ping and pong; tungstenite answers pings itself
            Some(Err(error)) => {
                report.ended_early = Some(error.to_string());
                break;
            }
            None => {
                report.ended_early = Some("connection closed".into());
                break;
            }
        }
    }
    report
}

/// Drains the reader, noting each Cluster's timecode and arrival, or the first error.
fn parse_events(reader: &mut StreamReader, report: &mut ViewerReport) {
    loop {
        match reader.next_event() {
            Ok(Some(Event::ClusterStart { timecode, .. })) => {
                report.clusters.push((timecode, Instant::now()));
            }
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(error) => {
                report.parse_error = Some(error.to_string());
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One run: a server, N viewers, a measured window.

/// What one run needs to know.
struct RunConfig {
    viewers: usize,
    window: Duration,
    connect_concurrency: usize,
    /// This process's open-files limit.
    open_files: u64,
    /// Extra arguments for `lenscast serve`.
    server_args: Vec<String>,
}

/// Everything read at one edge of the window.
struct Snapshot {
    at: Instant,
    server_cpu_s: f64,
    client_cpu_s: f64,
    machine_busy_s: f64,
    server_rss_kib: u64,
    viewer_bytes: Vec<u64>,
    status: serde_json::Value,
}

impl Snapshot {
    async fn take(server: &Server, viewers: &Viewers) -> Result<Self> {
        let pid = server.pid();
        let snapshot = Snapshot {
            at: Instant::now(),
            server_cpu_s: cpu_seconds(&pid)?,
            client_cpu_s: cpu_seconds("self")?,
            machine_busy_s: machine_busy_seconds()?,
            server_rss_kib: status_kib(&pid, "VmRSS")?,
            viewer_bytes: viewers
                .bytes
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            status: serde_json::Value::Null,
        };
        Ok(Snapshot {
            status: server_status(server.addr).await?,
            ..snapshot
        })
    }

    fn counter(&self, key: &str) -> u64 {
        self.status[key].as_u64().unwrap_or(0)
    }
}

/// Starts a server, connects the viewers, measures the window, and stops everything again.
async fn run_one(
    run: &RunConfig,
    bin: &Path,
    source: &Source,
    bench_dir: &Path,
) -> Result<RunResult> {
    let n = run.viewers;
    ensure!(
        run.open_files >= n as u64 + SPARE_FILES,
        "{n} viewers need {} open files, but this process may open only {} \
         (raise the hard limit: `ulimit -Hn`)",
        n as u64 + SPARE_FILES,
        run.open_files
    );
    let log = bench_dir.join(format!("server-{n}.log"));
    let server = Server::start(bin, &source.path, &run.server_args, log)?;
    let server_open_files = open_files_limit(&server.pid())?;
    ensure!(
        server_open_files >= n as u64 + SPARE_FILES,
        "the server may open only {server_open_files} files, too few for {n} viewers"
    );
    println!(
        "\n{n} viewers: server at {} (pid {}, open files limit {server_open_files})",
        server.addr,
        server.pid()
    );

    let (stop, stop_rx) = watch::channel(false);
    let mut viewers = connect_viewers(server.addr, n, run.connect_concurrency, stop_rx).await;
    println!(
        "  connected {} of {n} in {:.2} s",
        n - viewers.failed,
        viewers.connect_time.as_secs_f64()
    );

    let start = Snapshot::take(&server, &viewers).await?;
    println!("  measuring {:.0} s", run.window.as_secs_f64());
    tokio::time::sleep(run.window).await;
    let end = Snapshot::take(&server, &viewers).await?;
    let peak_rss_kib = status_kib(&server.pid(), "VmHWM")?;

    tokio::time::sleep(GRACE).await;
    let _ = stop.send(true);
    let mut reports = Vec::with_capacity(n);
    for task in viewers.tasks.drain(..) {
        reports.push(task.await.context("a viewer task panicked")?);
    }
    let warnings = count_warnings(&server.log);
    drop(server);

    let result = summarize(n, &viewers, &start, &end, &reports, peak_rss_kib, warnings);
    print_problems(&reports);
    Ok(result)
}

/// WARN and ERROR lines in the server's log (e.g. "viewer lagged").
fn count_warnings(log: &Path) -> usize {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
        .count()
}

/// Lists the first few viewers that failed, ended early or received a stream we could not parse.
fn print_problems(reports: &[ViewerReport]) {
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
            Some(format!("viewer {i}: {problem}"))
        })
        .collect();
    for problem in problems.iter().take(5) {
        println!("  {problem}");
    }
    if problems.len() > 5 {
        println!(
            "  ... and {} more viewers with problems",
            problems.len() - 5
        );
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

/// One row of the table, and one entry of fanout.json.
#[derive(Debug, Serialize)]
struct RunResult {
    viewers: usize,
    connected: usize,
    connect_failed: usize,
    connect_s: f64,
    /// Each viewer's own connect time (TCP + WebSocket handshake), in milliseconds.
    connect_ms_per_viewer: Spread,
    window_s: f64,
    /// Bytes all viewers received inside the window.
    bytes_total: u64,
    bytes_per_viewer: Spread,
    mbit_s_per_viewer: Spread,
    /// Distinct Clusters that some viewer received inside the window.
    clusters_in_window: usize,
    clusters_lost_max: usize,
    clusters_lost_mean: f64,
    viewers_losing_clusters: usize,
    viewers_with_parse_errors: usize,
    viewers_ended_early: usize,
    init_notices: u64,
    /// Server counters from /api/status: increase during the window, and total at its end.
    lag_resyncs_window: u64,
    lag_resyncs_total: u64,
    slow_viewers_dropped_window: u64,
    slow_viewers_dropped_total: u64,
    server_warnings_logged: usize,
    server_cpu_s: f64,
    server_cpu_percent_of_core: f64,
    server_peak_rss_mib: f64,
    server_rss_end_mib: f64,
    client_cpu_s: f64,
    client_cpu_percent_of_core: f64,
    /// CPU that everything else on the machine used meanwhile (other builds, other servers):
    /// when it is high, the cores were shared and the numbers above are not clean.
    other_cpu_percent_of_core: f64,
}

fn summarize(
    n: usize,
    viewers: &Viewers,
    start: &Snapshot,
    end: &Snapshot,
    reports: &[ViewerReport],
    peak_rss_kib: u64,
    server_warnings_logged: usize,
) -> RunResult {
    let window_s = (end.at - start.at).as_secs_f64();
    let connected: Vec<usize> = (0..n)
        .filter(|&i| reports[i].connect_error.is_none())
        .collect();
    let window_bytes: Vec<u64> = connected
        .iter()
        .map(|&i| end.viewer_bytes[i] - start.viewer_bytes[i])
        .collect();
    let per_viewer =
        |scale: f64| Spread::of(window_bytes.iter().map(|&b| b as f64 * scale).collect());
    let connected_reports: Vec<&ViewerReport> = connected.iter().map(|&i| &reports[i]).collect();
    let (clusters_in_window, lost) = clusters_lost(&connected_reports, start.at, end.at);
    let server_cpu_s = end.server_cpu_s - start.server_cpu_s;
    let client_cpu_s = end.client_cpu_s - start.client_cpu_s;
    let count = |f: fn(&ViewerReport) -> bool| connected_reports.iter().filter(|r| f(r)).count();
    RunResult {
        viewers: n,
        connected: connected.len(),
        connect_failed: viewers.failed,
        connect_s: viewers.connect_time.as_secs_f64(),
        connect_ms_per_viewer: Spread::of(
            reports
                .iter()
                .map(|r| r.connect_time.as_secs_f64() * 1e3)
                .collect(),
        ),
        window_s,
        bytes_total: window_bytes.iter().sum(),
        bytes_per_viewer: per_viewer(1.0),
        mbit_s_per_viewer: per_viewer(8.0 / 1e6 / window_s),
        clusters_in_window,
        clusters_lost_max: lost.iter().copied().max().unwrap_or(0),
        clusters_lost_mean: lost.iter().sum::<usize>() as f64 / lost.len().max(1) as f64,
        viewers_losing_clusters: lost.iter().filter(|&&l| l > 0).count(),
        viewers_with_parse_errors: count(|r| r.parse_error.is_some()),
        viewers_ended_early: count(|r| r.ended_early.is_some()),
        init_notices: connected_reports.iter().map(|r| r.init_notices).sum(),
        lag_resyncs_window: end
            .counter("lag_resyncs")
            .saturating_sub(start.counter("lag_resyncs")),
        lag_resyncs_total: end.counter("lag_resyncs"),
        slow_viewers_dropped_window: end
            .counter("slow_viewers_dropped")
            .saturating_sub(start.counter("slow_viewers_dropped")),
        slow_viewers_dropped_total: end.counter("slow_viewers_dropped"),
        server_warnings_logged,
        server_cpu_s,
        server_cpu_percent_of_core: 100.0 * server_cpu_s / window_s,
        server_peak_rss_mib: peak_rss_kib as f64 / 1024.0,
        server_rss_end_mib: end.server_rss_kib as f64 / 1024.0,
        client_cpu_s,
        client_cpu_percent_of_core: 100.0 * client_cpu_s / window_s,
        other_cpu_percent_of_core: 100.0
            * (end.machine_busy_s - start.machine_busy_s - server_cpu_s - client_cpu_s).max(0.0)
            / window_s,
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

fn print_table(results: &[RunResult]) {
    println!();
    println!(
        "{:>7} | {:>9} | {:>7} | {:>23} | {:>9} | {:>18} | {:>7} | {:>5} | {:>16} | {:>15} | {:>10} | {:>9}",
        "viewers", "connected", "connect", "Mbit/s per viewer", "delivered", "clusters lost",
        "lag", "slow", "server CPU", "server RSS", "client CPU", "other CPU"
    );
    println!(
        "{:>7} | {:>9} | {:>7} | {:>23} | {:>9} | {:>18} | {:>7} | {:>5} | {:>16} | {:>15} | {:>10} | {:>9}",
        "", "", "s", "min / median / max", "MB", "max / mean of N", "resyncs", "drops",
        "s (% of a core)", "MiB peak / end", "% of core", "% of core"
    );
    for r in results {
        let mbit = r.mbit_s_per_viewer;
        println!(
            "{:>7} | {:>9} | {:>7.2} | {:>23} | {:>9.1} | {:>18} | {:>7} | {:>5} | {:>16} | {:>15} | {:>10.1} | {:>9.0}",
            r.viewers,
            format!("{}/{}", r.connected, r.viewers),
            r.connect_s,
            format!("{:.3} / {:.3} / {:.3}", mbit.min, mbit.median, mbit.max),
            r.bytes_total as f64 / 1e6,
            format!("{} / {:.2} of {}", r.clusters_lost_max, r.clusters_lost_mean, r.clusters_in_window),
            r.lag_resyncs_window,
            r.slow_viewers_dropped_window,
            format!("{:.2} ({:.0}%)", r.server_cpu_s, r.server_cpu_percent_of_core),
            format!("{:.1} / {:.1}", r.server_peak_rss_mib, r.server_rss_end_mib),
            r.client_cpu_percent_of_core,
            r.other_cpu_percent_of_core,
        );
    }
    for r in results {
        if r.viewers_with_parse_errors + r.viewers_ended_early + r.connect_failed > 0 {
            println!(
                "{} viewers: {} failed to connect, {} ended early, {} received a stream that did not parse",
                r.viewers, r.connect_failed, r.viewers_ended_early, r.viewers_with_parse_errors
            );
        }
        if r.other_cpu_percent_of_core > 25.0 {
            println!(
                "{} viewers: other processes used {:.0}% of a core during the window; \
                 the cores were shared, so CPU and delivery numbers are not clean",
                r.viewers, r.other_cpu_percent_of_core
            );
        }
    }
}

/// fanout.json: the source, the machine, one entry per run (fields in table order).
#[derive(Serialize)]
struct Report<'a> {
    source: &'a Source,
    cores: usize,
    runs: &'a [RunResult],
}

fn write_json(path: &Path, source: &Source, runs: &[RunResult]) -> Result<()> {
    let report = Report {
        source,
        cores: cores(),
        runs,
    };
    fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}
