// Glass-to-glass latency of lenscast against the browser's own floor, in one run (issue 8):
// `make bench-latency` or `node tests/browser/latency-bench.mjs [--runs 5] [--seconds 10]`.
//
// Each run measures, one after the other in the same headless Chromium with the fake camera and
// microphone (`--no-audio`: no microphone, so both record video alone):
//   floor     tests/browser/floor.html: camera -> stamped canvas -> MediaRecorder -> MSE -> <video>
//             in one page, with the presenter's recorder settings and the viewer's live-edge
//             policy (the real client modules), served from a static server in this script;
//   lenscast  the real server, the presenter page and the viewer page, both with ?clock=1. The
//             presenter records as the product does (WebCodecs in Chromium); `--recorder
//             mediarecorder` makes it record with MediaRecorder, as the floor does.
// For both: the first --warmup-seconds (3) after playback starts are dropped, then the stamp ages
// (clock-stamp.js) and the presented frame rate (requestVideoFrameCallback) are measured for
// --seconds. The goal is lenscast p50 <= floor + 60 ms, p90 <= floor + 150 ms and fps >= 90 %
// of the floor's. Figures go to target/bench/latency.json.
//
// `--soak-minutes N` (`make soak-latency`): lenscast only, one presenter and one viewer for N
// minutes after a 30 s warm-up, p50 per minute; fails if the last minute's p50 is over 50 ms
// from the first's. Figures go to target/bench/latency-soak.json.
//
// Exit status: 0 once measured (whether or not the goal is met: it is a benchmark), 1 when the
// soak drifted, 2 when it could not measure. Needs target/release/lenscast (or LENSCAST_BIN).

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import {
  REPO_ROOT,
  consoleLines,
  describe,
  fakeCameraArgs,
  fetchStatus,
  launchBrowser,
  openViewer,
  percentile,
  sleep,
  startLenscast,
  waitForPlayback,
} from './helpers.mjs';

const TOKEN = 'latency-bench-token';
const GOAL = { p50Ms: 60, p90Ms: 150, fpsRatio: 0.9 };
const SOAK_MAX_DRIFT_MS = 50;
/** How often the pages are read during a window (their sample arrays are emptied each time). */
const POLL_MS = 500;
const BENCH_DIR = path.join(REPO_ROOT, 'target/bench');
/** The only paths the floor's server answers: its page and the client modules it imports. */
const FLOOR_FILES = /^\/(tests\/browser\/floor\.(html|mjs)|client\/[a-z0-9-]+\.js)$/;
const FLOOR_PAGE = '/tests/browser/floor.html';

class CouldNotMeasure extends Error {}

/** Extra flags for the lenscast server (--server-arg), set once the options are parsed. */
let SERVER_ARGS = [];
/** The presenter page's recorder (--recorder), set once the options are parsed. */
let RECORDER = 'auto';
const RECORDERS = ['auto', 'webcodecs', 'mediarecorder'];

function parseOptions() {
  const { values } = parseArgs({
    options: {
      runs: { type: 'string', default: '5' },
      seconds: { type: 'string', default: '10' },
      'warmup-seconds': { type: 'string' },
      'soak-minutes': { type: 'string' },
      'no-audio': { type: 'boolean', default: false },
      recorder: { type: 'string', default: 'auto' },
      // Extra flags for the lenscast server, e.g. --server-arg=--detect-fps=0 (repeatable).
      'server-arg': { type: 'string', multiple: true, default: [] },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(
      'usage: node tests/browser/latency-bench.mjs [--runs 5] [--seconds 10] [--warmup-seconds 3] [--no-audio]\n' +
        '         [--recorder auto|webcodecs|mediarecorder] (the presenter page\'s; auto: as the product)\n' +
        '         [--server-arg=--detect-fps=0]... (flags for the lenscast server)\n' +
        '       node tests/browser/latency-bench.mjs --soak-minutes M [--warmup-seconds 30] [--no-audio]',
    );
    process.exit(0);
  }
  // The soak's first minute is its yardstick, so it starts only once the viewer has settled at
  // the live edge after joining (catching up at 1.1x speed takes seconds to tens of seconds).
  values['warmup-seconds'] ??= values['soak-minutes'] === undefined ? '3' : '30';
  const positive = (name) => {
    const n = Number(values[name]);
    if (!(n > 0)) throw new CouldNotMeasure(`--${name} must be a positive number, not ${values[name]}`);
    return n;
  };
  if (!RECORDERS.includes(values.recorder)) {
    throw new CouldNotMeasure(`--recorder must be one of ${RECORDERS.join(', ')}, not ${values.recorder}`);
  }
  return {
    recorder: values.recorder,
    runs: Math.round(positive('runs')),
    seconds: positive('seconds'),
    warmupSeconds: positive('warmup-seconds'),
    soakMinutes: values['soak-minutes'] === undefined ? null : positive('soak-minutes'),
    noAudio: values['no-audio'],
    serverArgs: values['server-arg'],
  };
}

/** Serves the floor page and the client modules on 127.0.0.1 (a secure context, so the page
 *  may open the camera) and nothing else. `modules` are the client modules it served. */
async function serveFloor() {
  const types = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript' };
  const modules = new Set();
  const server = http.createServer(async (req, res) => {
    const { pathname } = new URL(req.url, 'http://127.0.0.1');
    try {
      if (req.method !== 'GET' || !FLOOR_FILES.test(pathname)) throw new Error('not served');
      const body = await fs.promises.readFile(path.join(REPO_ROOT, pathname));
      res.writeHead(200, { 'content-type': types[path.extname(pathname)], 'cache-control': 'no-store' });
      res.end(body);
      if (pathname.startsWith('/client/')) modules.add(path.basename(pathname));
    } catch {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found\n');
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}${FLOOR_PAGE}`,
    modules,
    close: () => {
      server.closeAllConnections(); // Chromium's idle keep-alive sockets would hold close() up
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

/**
 * Runs in the page: counts the frames `#video` presents, in `window.__frames`. `presentedFrames`
 * is the compositor's own count (a callback may stand for several frames); `at` is when the last
 * one was presented, so a rate taken between two readings does not include the wait for them.
 */
function countFrames() {
  const video = document.getElementById('video');
  const frames = { callbacks: 0, presentedFrames: null, at: null };
  window.__frames = frames;
  const onFrame = (now, metadata) => {
    frames.callbacks++;
    frames.presentedFrames = metadata.presentedFrames ?? null;
    frames.at = now;
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}

/** Frames per second between two `window.__frames` readings; null if none were presented. */
function framesPerSecond(first, last) {
  if (first.at === null || last.at === null || last.at <= first.at) return null;
  let frames = last.presentedFrames - first.presentedFrames;
  // Without presentedFrames, or if it started over (a new source), count the callbacks.
  if (first.presentedFrames === null || last.presentedFrames === null || frames < 0) {
    frames = last.callbacks - first.callbacks;
  }
  return (frames * 1000) / (last.at - first.at);
}

/** Reads and empties a page's stamp ages; `state` is `window.floor` or `window.lenscast`. */
function readPage(page, state) {
  return page.evaluate((name) => {
    const s = window[name];
    // Viewer pages built before db4716e kept the stamp ages in glassToGlassMs, which now names
    // lenscast's own latency readout (a number): so older binaries can be measured too.
    const ages = s.stampAgesMs ?? (Array.isArray(s.glassToGlassMs) ? s.glassToGlassMs : []);
    return {
      ages: ages.splice(0),
      behindLive: s.behindLive ?? null,
      readout: typeof s.glassToGlassMs === 'number' ? s.glassToGlassMs : null,
      reconnects: s.reconnects ?? 0,
      catchingUp: document.getElementById('video').playbackRate > 1,
      frames: { ...window.__frames },
    };
  }, state);
}

const median = (values) => percentile([...values].sort((a, b) => a - b), 50) ?? null;

/** Clock ticks per second in /proc/<pid>/stat. */
const CLOCK_TICKS = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout) || 100;

/** CPU ms used so far by this process and everything it started (Chromium, lenscast), from
 *  /proc; null without it. */
function ownCpuMs() {
  const children = new Map();
  const ticks = new Map();
  try {
    for (const entry of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      let stat;
      try {
        stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      } catch {
        continue; // it ended meanwhile
      }
      // The command name may hold spaces and parentheses: count the fields after its ')'.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const [ppid, utime, stime] = [fields[1], fields[11], fields[12]].map(Number);
      ticks.set(Number(entry), utime + stime);
      if (!children.has(ppid)) children.set(ppid, []);
      children.get(ppid).push(Number(entry));
    }
  } catch {
    return null;
  }
  let total = 0;
  const stack = [process.pid];
  while (stack.length) {
    const pid = stack.pop();
    total += ticks.get(pid) ?? 0;
    stack.push(...(children.get(pid) ?? []));
  }
  return (total * 1000) / CLOCK_TICKS;
}

/** CPU time so far (ms): the whole machine's, busy and idle (all cores), and this bench's. */
function cpuTimes() {
  let busy = 0;
  let idle = 0;
  for (const { times } of os.cpus()) {
    busy += times.user + times.nice + times.sys + times.irq;
    idle += times.idle;
  }
  return { busy, idle, own: ownCpuMs() };
}

/** Since `before` (a `cpuTimes()`): the shares of the machine's CPU time that were busy, and
 *  that this bench used (null if unknown). The rest of the busy share is someone else's. */
function cpuSince(before) {
  const now = cpuTimes();
  const total = now.busy - before.busy + now.idle - before.idle;
  return {
    busy: (now.busy - before.busy) / total,
    ours: now.own === null || before.own === null ? null : (now.own - before.own) / total,
  };
}

/** The stamp ages' percentiles and the rest of a window's figures. */
function summarize(ages, { seconds, fps, behindLive, catchingUp, readouts, reconnects, cpu }) {
  const sorted = [...ages].sort((a, b) => a - b);
  return {
    seconds,
    n: ages.length,
    p50_ms: percentile(sorted, 50) ?? null,
    p90_ms: percentile(sorted, 90) ?? null,
    min_ms: sorted[0] ?? null,
    max_ms: sorted[sorted.length - 1] ?? null,
    fps,
    behind_live_p50_s: median(behindLive.filter((b) => b !== null)),
    // The share of the window the player spent playing faster to catch up with the live edge.
    catching_up: catchingUp.filter(Boolean).length / Math.max(1, catchingUp.length),
    readout_p50_ms: readouts.length ? median(readouts) : null,
    reconnects,
    // The machine is shared: how busy it was, and how much of that was this bench.
    cpu_busy: cpu.busy,
    cpu_ours: cpu.ours,
    samples_ms: ages,
  };
}

/** Measures a playing page for `seconds`: what it held before is thrown away first. */
async function measureWindow(page, state, seconds) {
  const cpuBefore = cpuTimes();
  const first = await readPage(page, state);
  const ages = [];
  const behindLive = [];
  const catchingUp = [];
  const readouts = [];
  let last = first;
  const started = Date.now();
  while (Date.now() - started < seconds * 1000) {
    await sleep(Math.min(POLL_MS, started + seconds * 1000 - Date.now()));
    last = await readPage(page, state);
    ages.push(...last.ages);
    behindLive.push(last.behindLive);
    catchingUp.push(last.catchingUp);
    if (last.readout !== null) readouts.push(last.readout);
  }
  return summarize(ages, {
    seconds,
    fps: framesPerSecond(first.frames, last.frames),
    behindLive,
    catchingUp,
    readouts,
    reconnects: last.reconnects - first.reconnects,
    cpu: cpuSince(cpuBefore),
  });
}

/** Runs in every page with --no-audio: the browser has no microphone, so the presenter page and
 *  the floor record video alone, as for a presenter without one. */
function withoutMicrophone() {
  const getUserMedia = navigator.mediaDevices?.getUserMedia?.bind(navigator.mediaDevices);
  if (!getUserMedia) return;
  navigator.mediaDevices.getUserMedia = (constraints) =>
    constraints?.audio
      ? Promise.reject(new DOMException('no microphone (--no-audio)', 'NotFoundError'))
      : getUserMedia(constraints);
}

/** Chromium with the fake camera (and, unless --no-audio, its fake microphone). */
async function launch(cameraArgs, options) {
  const browser = await launchBrowser({ args: cameraArgs });
  if (options.noAudio) await browser.context.addInitScript(withoutMicrophone);
  return browser;
}

/** Waits for playback, counts frames from then on, and lets the warm-up pass. */
async function warmUp(page, warmupSeconds) {
  await waitForPlayback(page, 0, 30000);
  await page.evaluate(countFrames);
  await sleep(warmupSeconds * 1000);
}

/** The floor: one page, no server. */
async function measureFloor(context, floorUrl, options) {
  const page = await openViewer(context, floorUrl);
  try {
    await page.waitForFunction(() => ['recording', 'playing', 'failed'].includes(window.floor?.state), null, {
      timeout: 20000,
    });
    const failed = await page.evaluate(() => window.floor.error);
    if (failed) throw new CouldNotMeasure(`floor page: ${failed}`);
    await warmUp(page, options.warmupSeconds);
    const result = await measureWindow(page, 'floor', options.seconds);
    const floor = await page.evaluate(() => window.floor);
    return {
      ...result,
      mime: floor.mime,
      error: floor.error,
      arrival_jitter_ms: floor.jitterMs,
      stalls: floor.stalls,
    };
  } catch (err) {
    err.message += `\n--- floor page ---\n${await describe(page)}`;
    throw err;
  } finally {
    await page.close();
  }
}

/** A lenscast server with a live presenter (?clock=1) and a viewer playing; `close()` ends all. */
async function startBroadcast(context, warmupSeconds) {
  const server = await startLenscast(['--publish-token', TOKEN, ...SERVER_ARGS]);
  const pages = [];
  const close = async () => {
    for (const page of pages) await page.close().catch(() => {});
    await server.stop();
  };
  try {
    const presenter = await openViewer(context, `${server.url}present?token=${TOKEN}&clock=1&recorder=${RECORDER}`);
    pages.push(presenter);
    await presenter.waitForSelector('#start:not([disabled])', { timeout: 10000 });
    await presenter.click('#start');
    // Live, and the server has taken the upload as its input and puts frames out from it: a
    // viewer that joined before would start on the demo and switch sources while measured.
    await presenter.waitForFunction(
      () => {
        const p = window.lenscastPresenter;
        return p?.state === 'live' && p.lastStats?.received_bytes > 0 && /presenter/.test(p.lastStats.pipeline?.input);
      },
      null,
      { timeout: 20000, polling: 100 },
    );
    const framesOut = await presenter.evaluate(() => window.lenscastPresenter.lastStats.pipeline.frames_out);
    await presenter.waitForFunction(
      (before) => window.lenscastPresenter.lastStats.pipeline.frames_out > before,
      framesOut,
      { timeout: 20000, polling: 100 },
    );
    const viewer = await openViewer(context, `${server.url}?clock=1`);
    pages.push(viewer);
    await warmUp(viewer, warmupSeconds);
    return { server, presenter, viewer, close };
  } catch (err) {
    err.message += `\n--- server output ---\n${server.log()}`;
    await close();
    throw err;
  }
}

/** What the presenter, the viewer and the server say about the broadcast, beside the clock. */
async function broadcastFigures({ server, presenter, viewer }) {
  const status = await fetchStatus(server);
  const pipeline = status.pipeline;
  const page = await viewer.evaluate(() => ({
    delivery: window.lenscast.deliveryMs ?? null,
    slackTarget: window.lenscast.slackTargetMs ?? null,
    stalls: window.lenscast.stalls ?? null,
    jitter: window.lenscast.jitterMs ?? null,
  }));
  return {
    // The budget, stage by stage: camera to server, server, server to page, page.
    capture_to_arrival_ms_p50: status.latency?.capture_to_arrival_ms_p50 ?? null,
    capture_to_arrival_ms_p99: status.latency?.capture_to_arrival_ms_p99 ?? null,
    delivery_ms: page.delivery,
    slack_target_ms: page.slackTarget,
    arrival_jitter_ms: page.jitter,
    stalls: page.stalls,
    presenter_state: await presenter.evaluate(() => window.lenscastPresenter.state),
    presenter_mime: await presenter.evaluate(() => window.lenscastPresenter.mime),
    presenter_recorder: await presenter.evaluate(() => window.lenscastPresenter.recorder),
    viewer_mime: await viewer.evaluate(() => window.lenscast.mime),
    server_fps_in: pipeline?.fps_in ?? null,
    server_fps_out: pipeline?.fps_out ?? null,
    server_latency_ms_p50: pipeline?.latency_ms_p50 ?? null,
    server_latency_ms_p99: pipeline?.latency_ms_p99 ?? null,
    server_frames_dropped: pipeline?.frames_dropped ?? null,
  };
}

/**
 * The floor page's client modules (`modules`, from the working tree) that the lenscast binary
 * serves otherwise: it embeds client/ when it is built, so an older build runs other code than
 * the floor, and the comparison is not like for like.
 */
async function modulesDifferingFrom(server, modules) {
  const differing = [];
  for (const name of modules) {
    const response = await fetch(new URL(name, server.url));
    const served = response.ok ? await response.text() : null;
    if (served !== fs.readFileSync(path.join(REPO_ROOT, 'client', name), 'utf8')) differing.push(name);
  }
  return differing;
}

/** The viewer's state and the server's output, for a failure message. */
async function describeBroadcast({ viewer, server }) {
  return `\n--- viewer ---\n${await describe(viewer)}\n--- server output ---\n${server.log()}`;
}

/** lenscast: the real server, presenter and viewer. */
async function measureLenscast(context, options, floorModules) {
  const broadcast = await startBroadcast(context, options.warmupSeconds);
  try {
    const result = await measureWindow(broadcast.viewer, 'lenscast', options.seconds);
    const differing = await modulesDifferingFrom(broadcast.server, floorModules);
    return {
      ...result,
      ...(await broadcastFigures(broadcast)),
      client_differs_from_floor: differing,
      player_said: playerSaid(broadcast.viewer),
    };
  } catch (err) {
    err.message += await describeBroadcast(broadcast);
    throw err;
  } finally {
    await broadcast.close();
  }
}

/** What the viewer's player said it did (stalls and how much it had in hand, jumps), from
 *  warm-up on: for reading a bad run. */
function playerSaid(viewer) {
  return consoleLines(viewer).filter((line) => line.includes('lenscast: '));
}

/** lenscast minus the floor, and whether that meets the goal. */
function compare(floor, lenscast) {
  const p50 = lenscast.p50_ms - floor.p50_ms;
  const p90 = lenscast.p90_ms - floor.p90_ms;
  const fpsRatio = floor.fps && lenscast.fps !== null ? lenscast.fps / floor.fps : null;
  return {
    p50_ms: p50,
    p90_ms: p90,
    fps_ratio: fpsRatio,
    goal: {
      p50: p50 <= GOAL.p50Ms,
      p90: p90 <= GOAL.p90Ms,
      fps: fpsRatio !== null && fpsRatio >= GOAL.fpsRatio,
    },
  };
}

const loadavg = () => os.loadavg().map((l) => Number(l.toFixed(2)));
const ms = (v) => (v === null || v === undefined ? '–' : String(Math.round(v)));
const signed = (v) => (v > 0 ? `+${Math.round(v)}` : String(Math.round(v)));
const fps = (v) => (v === null ? '–' : v.toFixed(1));
const pct = (v) => (v === null ? '–' : `${Math.round(v * 100)}%`);
const cells = (widths, values) => values.map((v, i) => String(v).padEnd(widths[i])).join(' ').trimEnd();

function writeJson(name, figures) {
  fs.mkdirSync(BENCH_DIR, { recursive: true });
  const file = path.join(BENCH_DIR, name);
  fs.writeFileSync(file, `${JSON.stringify(figures, null, 2)}\n`);
  console.log(`figures in ${path.relative(REPO_ROOT, file)}`);
}

function checkSamples(what, result) {
  if (!result.n) throw new CouldNotMeasure(`no stamp read off the ${what} in ${result.seconds} s`);
}

async function bench(options, cameraArgs) {
  const loadStart = loadavg();
  console.log(
    `latency bench: ${options.runs} run(s), ${options.warmupSeconds} s warm-up + ${options.seconds} s window ` +
      `each; ${os.cpus().length} CPUs, load ${loadStart.join(' ')}`,
  );
  const floorServer = await serveFloor();
  const runs = [];
  try {
    for (let run = 1; run <= options.runs; run++) {
      // Alternate the order, so whatever the first measurement of a run pays is shared.
      const order = run % 2 ? ['floor', 'lenscast'] : ['lenscast', 'floor'];
      const load = loadavg();
      const browser = await launch(cameraArgs, options);
      const result = { run, order, load_at_start: load };
      try {
        for (const what of order) {
          result[what] =
            what === 'floor'
              ? await measureFloor(browser.context, floorServer.url, options)
              : await measureLenscast(browser.context, options, floorServer.modules);
          checkSamples(what, result[what]);
        }
      } finally {
        await browser.close();
      }
      result.diff = compare(result.floor, result.lenscast);
      runs.push(result);
      printRun(result);
    }
  } finally {
    await floorServer.close();
  }
  const loadEnd = loadavg();
  printSummary(runs, loadStart, loadEnd);
  writeJson('latency.json', {
    measured_at: new Date().toISOString(),
    options,
    goal: GOAL,
    cpus: os.cpus().length,
    load_start: loadStart,
    load_end: loadEnd,
    runs,
  });
}

const RUN_WIDTHS = [4, 9, 18, 21, 14, 7, 16];

function printRun({ run, order, floor, lenscast, diff, load_at_start: load }) {
  if (run === 1) {
    console.log(
      cells(RUN_WIDTHS, ['run', 'first', 'floor p50/p90/fps', 'lenscast p50/p90/fps', 'diff p50/p90', 'fps x', 'goal']),
    );
  }
  const figures = (r) => `${ms(r.p50_ms)}/${ms(r.p90_ms)}/${fps(r.fps)}`;
  const goal = Object.entries(diff.goal)
    .map(([name, met]) => `${name} ${met ? 'ok' : 'NO'}`)
    .join(' ');
  console.log(
    cells(RUN_WIDTHS, [
      run,
      order[0],
      figures(floor),
      figures(lenscast),
      `${signed(diff.p50_ms)}/${signed(diff.p90_ms)}`,
      diff.fps_ratio === null ? '–' : diff.fps_ratio.toFixed(2),
      goal,
    ]),
  );
  // The rest, floor / lenscast: enough to tell a slow run from a noisy machine.
  const both = (f) => `${f(floor)}/${f(lenscast)}`;
  // The stamp age less what the player holds: how old the newest buffered media is, which
  // tells the path to the buffer (recorder, upload, server, parser) from the player's slack.
  const ageAtEnd = (r) =>
    r.p50_ms === null || r.behind_live_p50_s === null ? null : r.p50_ms - r.behind_live_p50_s * 1000;
  console.log(
    `     n ${both((r) => r.n)}; behind live ${both((r) => r.behind_live_p50_s?.toFixed(2))} s; age at the ` +
      `buffered end ${both((r) => ms(ageAtEnd(r)))} ms; catching up ` +
      `${both((r) => pct(r.catching_up))}; CPU busy ${both((r) => pct(r.cpu_busy))} (ours ` +
      `${both((r) => pct(r.cpu_ours))}); load ${load.join(' ')}`,
  );
  console.log(
    `     lenscast: readout p50 ${ms(lenscast.readout_p50_ms)} ms; server fps in/out ` +
      `${fps(lenscast.server_fps_in)}/${fps(lenscast.server_fps_out)}, latency p50 ` +
      `${ms(lenscast.server_latency_ms_p50)} ms; recorded ${lenscast.presenter_mime} with ` +
      `${lenscast.presenter_recorder} (floor ${floor.mime} with mediarecorder)`,
  );
  console.log(
    `     lenscast budget: capture to server ${ms(lenscast.capture_to_arrival_ms_p50)} ms ` +
      `(p99 ${ms(lenscast.capture_to_arrival_ms_p99)}), server ${ms(lenscast.server_latency_ms_p50)} ms ` +
      `(p99 ${ms(lenscast.server_latency_ms_p99)}), server to page ${ms(lenscast.delivery_ms)} ms, player in hand ` +
      `${lenscast.behind_live_p50_s?.toFixed(2)} s (keeps >= ${ms(lenscast.slack_target_ms)} ms at the latest arrival)`,
  );
  // The player keeps room for the latest arrival of the last 20 s: jitter the path adds over the
  // recorder's own is paid for in latency.
  console.log(
    `     arrival jitter ${both((r) => ms(r.arrival_jitter_ms))} ms; stalls ${both((r) => r.stalls)}`,
  );
  for (const line of lenscast.player_said ?? []) console.log(`     viewer ${line}`);
  if (floor.mime !== lenscast.presenter_mime) {
    console.log(`     WARNING: the floor recorded ${floor.mime}, the presenter ${lenscast.presenter_mime}`);
  }
  const differing = lenscast.client_differs_from_floor;
  if (differing.length) {
    console.log(`     WARNING: the binary serves another ${differing.join(', ')} than the floor's (rebuild it)`);
  }
}

function printSummary(runs, loadStart, loadEnd) {
  const extremes = (key, better) => {
    const sorted = [...runs].filter((r) => r.diff[key] !== null).sort((a, b) => better(a.diff[key], b.diff[key]));
    return { best: sorted[0], worst: sorted[sorted.length - 1] };
  };
  const lower = (a, b) => a - b;
  const higher = (a, b) => b - a;
  for (const [key, label, order, show] of [
    ['p50_ms', 'p50 lenscast - floor', lower, (v) => `${signed(v)} ms`],
    ['p90_ms', 'p90 lenscast - floor', lower, (v) => `${signed(v)} ms`],
    ['fps_ratio', 'fps lenscast / floor', higher, (v) => v.toFixed(2)],
  ]) {
    const { best, worst } = extremes(key, order);
    if (!best) continue;
    console.log(
      `${label}: best ${show(best.diff[key])} (run ${best.run}), worst ${show(worst.diff[key])} (run ${worst.run})`,
    );
  }
  const met = runs.filter((r) => Object.values(r.diff.goal).every(Boolean)).length;
  console.log(
    `goal (p50 <= floor+${GOAL.p50Ms} ms, p90 <= floor+${GOAL.p90Ms} ms, fps >= ${GOAL.fpsRatio * 100} % of ` +
      `floor's) met in ${met} of ${runs.length} run(s); load ${loadStart.join(' ')} -> ${loadEnd.join(' ')}`,
  );
}

async function soak(options, cameraArgs) {
  const loadStart = loadavg();
  console.log(
    `latency soak: lenscast for ${options.soakMinutes} min after ${options.warmupSeconds} s warm-up; ` +
      `${os.cpus().length} CPUs, load ${loadStart.join(' ')}`,
  );
  const browser = await launch(cameraArgs, options);
  const minutes = [];
  try {
    const broadcast = await startBroadcast(browser.context, options.warmupSeconds);
    try {
      // A last part shorter than a minute, for a fractional --soak-minutes.
      const total = options.soakMinutes * 60;
      let seen = 0; // the viewer's console lines printed so far
      for (let at = 0; at < total - 0.5; at += 60) {
        const result = await measureWindow(broadcast.viewer, 'lenscast', Math.min(60, total - at));
        const figures = await broadcastFigures(broadcast);
        const minute = { minute: minutes.length + 1, load: loadavg(), ...result, ...figures };
        minutes.push(minute);
        // What the player said it did this minute (stalls, jumps), for reading a bad minute.
        const said = playerSaid(broadcast.viewer);
        for (const line of said.slice(seen)) console.log(`  viewer ${line}`);
        seen = said.length;
        console.log(
          `minute ${minute.minute}: p50 ${ms(minute.p50_ms)} ms p90 ${ms(minute.p90_ms)} ms n ${minute.n}; ` +
            `fps ${fps(minute.fps)}; readout p50 ${ms(minute.readout_p50_ms)} ms; behind live ` +
            `${minute.behind_live_p50_s?.toFixed(2)} s; jitter ${ms(minute.arrival_jitter_ms)} ms; stalls ${minute.stalls}; upload p99 ` +
            `${ms(minute.capture_to_arrival_ms_p99)} ms; reconnects ${minute.reconnects}; presenter ` +
            `${minute.presenter_state}; CPU busy ${pct(minute.cpu_busy)} (ours ${pct(minute.cpu_ours)}); load ` +
            `${minute.load.join(' ')}`,
        );
      }
    } catch (err) {
      err.message += await describeBroadcast(broadcast);
      throw err;
    } finally {
      await broadcast.close();
    }
  } finally {
    await browser.close();
  }
  const first = minutes[0];
  const last = minutes[minutes.length - 1];
  const loadEnd = loadavg();
  const drift = last.p50_ms !== null && first.p50_ms !== null ? last.p50_ms - first.p50_ms : null;
  writeJson('latency-soak.json', {
    measured_at: new Date().toISOString(),
    options,
    max_drift_ms: SOAK_MAX_DRIFT_MS,
    drift_ms: drift,
    cpus: os.cpus().length,
    load_start: loadStart,
    load_end: loadEnd,
    minutes,
  });
  if (drift === null) throw new CouldNotMeasure('no stamp read off the viewer in the first or the last minute');
  const ok = Math.abs(drift) <= SOAK_MAX_DRIFT_MS;
  console.log(
    `p50 first minute ${ms(first.p50_ms)} ms, last ${ms(last.p50_ms)} ms: ${signed(drift)} ms ` +
      `(${ok ? 'within' : 'OVER'} ${SOAK_MAX_DRIFT_MS} ms); load ${loadStart.join(' ')} -> ${loadEnd.join(' ')}`,
  );
  return ok;
}

async function main() {
  // Ctrl-C on a long soak: exit through 'exit', where helpers.mjs ends the server it started.
  process.on('SIGINT', () => process.exit(130));
  const options = parseOptions();
  SERVER_ARGS = options.serverArgs;
  RECORDER = options.recorder;
  // The fake camera loops the first 6 s of the fixture, as in the presenter tests.
  const cameraArgs = fakeCameraArgs('face.webm', 6);
  if (options.soakMinutes === null) {
    await bench(options, cameraArgs);
  } else if (!(await soak(options, cameraArgs))) {
    process.exitCode = 1;
  }
}

main().catch((err) => {
  console.error(err instanceof CouldNotMeasure ? `could not measure: ${err.message}` : err);
  process.exitCode = 2;
});
