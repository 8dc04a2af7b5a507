// Shared pieces of the browser tests: start the real lenscast binary on a free port, launch the
// system Chromium through playwright-core, and watch playback from inside the page.

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

/** The repository root, so tests run the same from any working directory. */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** The server under test: `LENSCAST_BIN`, else the release build. */
export const LENSCAST_BIN = path.resolve(REPO_ROOT, process.env.LENSCAST_BIN || 'target/release/lenscast');

/** Flags verified on these machines (see PLATFORM.md); playwright adds its own headless flag. */
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--autoplay-policy=no-user-gesture-required',
];

// Whatever a test leaves behind when it is cut short is removed when node exits.
const leftovers = new Set();
process.on('exit', () => {
  for (const cleanup of leftovers) cleanup();
});

/** Milliseconds to wait, as a promise. */
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Starts `lenscast serve --passthrough --input <fixture>` on 127.0.0.1:0 and resolves once it
 * prints its viewer URL. `stop()` ends it; `log()` is its output so far, for failure messages;
 * `pid` is its process (to freeze it with SIGSTOP, say).
 */
export async function startServer(fixture, options = {}) {
  const input = path.resolve(REPO_ROOT, 'fixtures', fixture);
  return startLenscast(['--passthrough', '--input', input], options);
}

/** Starts `lenscast serve --listen 127.0.0.1:0 <args>`; otherwise as `startServer`. */
export async function startLenscast(args, { timeoutMs = 15000 } = {}) {
  if (!fs.existsSync(LENSCAST_BIN)) {
    throw new Error(`no server binary at ${LENSCAST_BIN} (build it, or set LENSCAST_BIN)`);
  }
  const child = spawn(LENSCAST_BIN, ['serve', '--listen', '127.0.0.1:0', ...args], {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (data) => (output += data));
  child.stderr.on('data', (data) => (output += data));
  const kill = () => child.exitCode === null && child.signalCode === null && child.kill('SIGKILL');
  leftovers.add(kill);

  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGINT'); // the server shuts down gracefully on Ctrl-C
      await Promise.race([exited, sleep(3000)]);
      kill();
    }
    leftovers.delete(kill);
  };
  const log = () => output.slice(-4000);

  try {
    const url = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no viewer URL after ${timeoutMs} ms`)), timeoutMs);
      const onData = () => {
        const match = /https?:\/\/127\.0\.0\.1:\d+\//.exec(output);
        if (match) {
          clearTimeout(timer);
          resolve(match[0]);
        }
      };
      child.stdout.on('data', onData);
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`server exited early (code ${code}, signal ${signal})`));
      });
      child.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
    return { url, stop, log, pid: child.pid };
  } catch (err) {
    await stop();
    err.message += `\n--- server output ---\n${log()}`;
    throw err;
  }
}

/**
 * Launches /usr/bin/chromium headless with a fresh profile in a temp dir, with `args` added to
 * the standard flags. Every page gets a playback meter (see `installPlaybackMeter`) before its
 * own scripts run.
 */
export async function launchBrowser({ args = [] } = {}) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'lenscast-chromium-'));
  const removeProfile = () => fs.rmSync(profile, { recursive: true, force: true });
  leftovers.add(removeProfile);
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: '/usr/bin/chromium',
      headless: true,
      args: [...CHROMIUM_ARGS, ...args],
      timeout: 30000,
    });
    await context.addInitScript(installPlaybackMeter);
  } catch (err) {
    removeProfile();
    leftovers.delete(removeProfile);
    throw err;
  }
  const close = async () => {
    await context.close().catch(() => {});
    removeProfile();
    leftovers.delete(removeProfile);
  };
  return { context, close };
}

/**
 * Runs in the page: adds up the media time that really played, in `window.__played`. Seeks
 * (joining mid-stream, jumping to the live edge) do not count, so "played > 1 s" means frames or
 * samples were actually rendered for about a second.
 */
function installPlaybackMeter() {
  window.__played = 0;
  let last = null;
  // Media events do not bubble, but they pass the document in the capture phase.
  document.addEventListener('seeking', () => (last = null), true);
  document.addEventListener('emptied', () => (last = null), true);
  document.addEventListener('timeupdate', (event) => {
    const now = event.target.currentTime;
    if (last !== null && now > last && now - last < 1) window.__played += now - last;
    last = now;
  }, true);
}

// Each page's console output, for failure messages.
const consoleLog = new WeakMap();

/** Opens the viewer page and keeps its console output for failure messages. */
export async function openViewer(context, url) {
  const page = await context.newPage();
  const lines = [];
  consoleLog.set(page, lines);
  page.on('console', (msg) => lines.push(`${msg.type()}: ${msg.text()}`));
  page.on('pageerror', (err) => lines.push(`pageerror: ${err.message}`));
  await page.goto(url, { timeout: 15000 });
  return page;
}

/** A page's console output so far (pages opened with `openViewer`), for failure messages. */
export function consoleLines(page) {
  return consoleLog.get(page) ?? [];
}

/** Waits until the page has played `seconds` of media; throws with the page's state if not. */
export async function waitForPlayback(page, seconds, timeoutMs) {
  try {
    await page.waitForFunction((s) => window.__played > s, seconds, { timeout: timeoutMs, polling: 200 });
  } catch (err) {
    throw new Error(`page did not play ${seconds} s within ${timeoutMs} ms: ${await describe(page)}`);
  }
}

/** The viewer's state, video element and console, as one line for assertion messages. */
export async function describe(page) {
  const state = await page
    .evaluate(() => {
      const v = document.getElementById('video');
      const ranges = [];
      for (let i = 0; i < v.buffered.length; i++) ranges.push([v.buffered.start(i), v.buffered.end(i)]);
      return {
        lenscast: window.lenscast,
        lenscastHls: window.lenscastHls,
        played: window.__played,
        currentTime: v.currentTime,
        paused: v.paused,
        readyState: v.readyState,
        error: v.error?.message ?? v.error?.code ?? null,
        buffered: ranges,
        status: document.getElementById('status').textContent,
      };
    })
    .catch((err) => ({ evaluateFailed: err.message }));
  return `${JSON.stringify(state)}\nconsole:\n${(consoleLog.get(page) ?? []).join('\n')}`;
}

/**
 * Draws the current video frame small onto a canvas and returns its mean luma (0-255) and the
 * standard deviation: a black or flat frame means nothing really decoded.
 */
export async function frameStats(page) {
  return page.evaluate(() => {
    const video = document.getElementById('video');
    const canvas = document.createElement('canvas');
    canvas.width = 160;
    canvas.height = 120;
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    ctx.drawImage(video, 0, 0, canvas.width, canvas.height);
    const { data } = ctx.getImageData(0, 0, canvas.width, canvas.height);
    let sum = 0;
    let sumSquares = 0;
    const pixels = data.length / 4;
    for (let i = 0; i < data.length; i += 4) {
      const luma = 0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2];
      sum += luma;
      sumSquares += luma * luma;
    }
    const mean = sum / pixels;
    return {
      width: video.videoWidth,
      height: video.videoHeight,
      mean,
      stddev: Math.sqrt(Math.max(0, sumSquares / pixels - mean * mean)),
    };
  });
}

/**
 * Waits until the page shows a real picture (mean luma above `minMean`, spread above
 * `minStddev`) and returns its `frameStats`; a few tries, since one frame may be a dark one.
 * Throws with the page's state if it never does.
 */
export async function waitForPicture(page, { minMean = 20, minStddev = 5, tries = 10 } = {}) {
  let stats;
  for (let attempt = 0; attempt < tries; attempt++) {
    stats = await frameStats(page);
    if (stats.mean > minMean && stats.stddev > minStddev) return stats;
    await sleep(300);
  }
  throw new Error(`frame looks black: ${JSON.stringify(stats)}\n${await describe(page)}`);
}

/**
 * Starts counting the page's stalls (`waiting` events of its #video); the returned function
 * reads the count so far.
 */
export async function countStalls(page) {
  await page.evaluate(() => {
    window.__stalls = 0;
    document.getElementById('video').addEventListener('waiting', () => window.__stalls++);
  });
  return () => page.evaluate(() => window.__stalls);
}

/**
 * Samples how far behind live hls.html plays (`window.lenscastHls.behindLive`, s) every
 * `everyMs` for `forMs`, keeping samples taken while playing; returns them ascending.
 * `onSample(hls)` sees every state read.
 */
export async function sampleHlsBehindLive(page, forMs, everyMs, onSample = async () => {}) {
  const behind = [];
  for (let waited = 0; waited < forMs; waited += everyMs) {
    await sleep(everyMs);
    const hls = await page.evaluate(() => window.lenscastHls);
    if (hls.state === 'playing' && hls.behindLive !== null) behind.push(hls.behindLive);
    await onSample(hls);
  }
  return behind.sort((a, b) => a - b);
}

/** The `p`th percentile (0-100) of an ascending array; undefined when it is empty. */
export function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/**
 * Makes a y4m file of the first `seconds` of `fixtures/<fixture>` (in a temp dir, removed at exit)
 * and returns the Chromium flags for a fake camera that plays it in a loop, at the file's own rate.
 */
export function fakeCameraArgs(fixture, seconds) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lenscast-camera-'));
  const removeDir = () => fs.rmSync(dir, { recursive: true, force: true });
  leftovers.add(removeDir);
  const y4m = path.join(dir, 'camera.y4m');
  const input = path.resolve(REPO_ROOT, 'fixtures', fixture);
  const ffmpeg = spawnSync(
    'ffmpeg',
    ['-v', 'error', '-i', input, '-pix_fmt', 'yuv420p', '-t', String(seconds), '-y', y4m],
    { encoding: 'utf8' },
  );
  if (ffmpeg.status !== 0) throw new Error(`ffmpeg could not make ${y4m}: ${ffmpeg.error ?? ffmpeg.stderr}`);
  return [
    '--use-fake-device-for-media-stream',
    '--use-fake-ui-for-media-stream',
    `--use-file-for-fake-video-capture=${y4m}`,
  ];
}

/**
 * Starts a server with `start()` and a browser with `browserArgs`, runs `body(server, context)`,
 * and always cleans both up; a failure carries the server's output.
 */
export async function withServerAndBrowser(start, body, { browserArgs = [] } = {}) {
  const server = await start();
  let browser;
  try {
    browser = await launchBrowser({ args: browserArgs });
    await body(server, browser.context);
  } catch (err) {
    err.message += `\n--- server output ---\n${server.log()}`;
    throw err;
  } finally {
    await browser?.close();
    await server.stop();
  }
}

/** `GET /api/status` as JSON (throws on a non-200 answer). */
export async function fetchStatus(server) {
  const response = await fetch(new URL('/api/status', server.url));
  if (response.status !== 200) throw new Error(`/api/status answered ${response.status}`);
  return response.json();
}
