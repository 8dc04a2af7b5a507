// The presenter page in headless Chromium against the real server (annotating faces):
// `node --test tests/browser/`. The camera is Chromium's fake device playing a y4m made here
// from fixtures/face.webm. Needs target/release/lenscast (or LENSCAST_BIN) and ffmpeg.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { before, test } from 'node:test';
import {
  REPO_ROOT,
  consoleLines,
  describe,
  fakeCameraArgs,
  launchBrowser,
  openViewer,
  percentile,
  sleep,
  fetchStatus,
  startLenscast,
  withServerAndBrowser,
  waitForPlayback,
} from './helpers.mjs';

const TOKEN = 'presenter-test-token';
// The server's face boxes are about RGB(45, 255, 26); many such pixels mean a boxed face.
const MIN_GREEN_PIXELS = 500;
const CLOCK_WINDOW_MS = 10000;
const BENCH_FILE = path.join(REPO_ROOT, 'target/bench/glass-to-glass.json');

let cameraArgs;
before(() => {
  cameraArgs = fakeCameraArgs('face.webm', 6);
});

/** An annotating server with a known token and a browser with the fake camera. */
const withPresenterSetup = (body) =>
  withServerAndBrowser(() => startLenscast(['--publish-token', TOKEN]), body, {
    browserArgs: cameraArgs,
  });

/** The presenter's state and console, as text for assertion messages. */
async function describePresenter(page) {
  const state = await page
    .evaluate(() => ({
      presenter: window.lenscastPresenter,
      shown: document.getElementById('state').textContent,
      message: document.getElementById('message').textContent,
    }))
    .catch((err) => ({ evaluateFailed: err.message }));
  return `${JSON.stringify(state)}\nconsole:\n${consoleLines(page).join('\n')}`;
}

/** Opens the presenter page, waits for the camera, and clicks Start. */
async function startPresenting(context, server, query = '') {
  const page = await openViewer(context, `${server.url}present?token=${TOKEN}${query}`);
  await page.waitForSelector('#start:not([disabled])', { timeout: 10000 });
  await page.click('#start');
  return page;
}

/** Waits for `predicate(window.lenscastPresenter)` in the page (a function, or its source);
 *  throws with the page's state. */
async function waitForPresenter(page, predicate, what, timeoutMs = 20000) {
  try {
    await page.waitForFunction(`!!window.lenscastPresenter && !!(${predicate})(window.lenscastPresenter)`, null, {
      timeout: timeoutMs,
      polling: 100,
    });
  } catch {
    assert.fail(`presenter not ${what} within ${timeoutMs} ms: ${await describePresenter(page)}`);
  }
}

/**
 * Waits until the presenter is live and the server turns its upload into frames: the server has
 * bytes from it, names it as the input, and puts out more frames than when it took over. (The
 * first stats message comes as the socket opens, before any upload, and the frame counters
 * include the demo's frames from before.)
 */
async function waitForPresenterFrames(page) {
  await waitForPresenter(
    page,
    (p) => p.state === 'live' && p.lastStats?.received_bytes > 0 && /presenter/.test(p.lastStats.pipeline?.input),
    'live and received',
  );
  const { frames_out: before } = await page.evaluate(() => window.lenscastPresenter.lastStats.pipeline);
  await waitForPresenter(page, `(p) => p.lastStats.pipeline.frames_out > ${before}`, 'putting frames out');
}

/** Counts the server's box-green pixels in the viewer's current frame, at full size. */
function greenPixels(page) {
  return page.evaluate(() => {
    const video = document.getElementById('video');
    const canvas = document.createElement('canvas');
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    ctx.drawImage(video, 0, 0);
    const { data } = ctx.getImageData(0, 0, canvas.width, canvas.height);
    let green = 0;
    for (let i = 0; i < data.length; i += 4) {
      if (data[i + 1] > 200 && data[i] < 120 && data[i + 2] < 120) green++;
    }
    return green;
  });
}


// WebCodecs is what Chromium uses; MediaRecorder is what browsers without it use.
for (const [recorder, shown] of [['webcodecs', 'WebCodecs'], ['mediarecorder', 'MediaRecorder']]) {
  test(`presenter (${shown}): the camera goes live, the server boxes the face, a viewer sees it; Stop, and a camera gone`, { timeout: 120000 }, async () => {
    await withPresenterSetup(async (server, context) => {
      const presenter = await startPresenting(context, server, `&recorder=${recorder}`);
      await waitForPresenterFrames(presenter);
      const { mime, bytesSent, recorder: used } = await presenter.evaluate(() => window.lenscastPresenter);
      assert.equal(used, recorder);
      assert.match(mime, /^video\/webm;codecs=vp8/i);
      assert.ok((await presenter.textContent('#mime')).endsWith(`(${shown})`));
      assert.ok(bytesSent > 0);
      assert.match(await presenter.textContent('#fps'), /^\d+\.\d \/ \d+\.\d$/);

      const viewer = await openViewer(context, server.url);
      await waitForPlayback(viewer, 1, 20000);
      let green = 0;
      for (let attempt = 0; attempt < 20 && green <= MIN_GREEN_PIXELS; attempt++) {
        green = await greenPixels(viewer);
        if (green <= MIN_GREEN_PIXELS) await sleep(250);
      }
      assert.ok(green > MIN_GREEN_PIXELS, `${green} box-green pixels\n${await describe(viewer)}`);

      // The faces are the presenter's: the count grows while the presenter is the input.
      const first = (await fetchStatus(server)).pipeline;
      assert.equal(first.presenter_connected, true, JSON.stringify(first));
      await sleep(2000);
      const later = (await fetchStatus(server)).pipeline;
      assert.equal(later.presenter_connected, true, JSON.stringify(later));
      assert.ok(later.faces_total > first.faces_total, `faces_total ${first.faces_total} -> ${later.faces_total}`);

      // Stop: the socket closes normally and the server goes back to its demo.
      await presenter.click('#stop');
      await waitForPresenter(presenter, (p) => p.state === 'idle', 'idle after Stop', 5000);
      let pipeline = later;
      for (let attempt = 0; attempt < 20 && pipeline.presenter_connected; attempt++) {
        await sleep(250);
        pipeline = (await fetchStatus(server)).pipeline;
      }
      assert.equal(pipeline.presenter_connected, false, JSON.stringify(pipeline));

      // Live again, then the camera goes away (unplugged, permission revoked): the page says so.
      await presenter.click('#start');
      await waitForPresenter(presenter, (p) => p.state === 'live' && p.bytesSent > 0, 'live again');
      await presenter.evaluate(() => {
        for (const track of document.getElementById('preview').srcObject.getTracks()) track.stop();
      });
      await waitForPresenter(presenter, (p) => p.state === 'disconnected', 'disconnected when the camera went', 10000);
      assert.match(await presenter.evaluate(() => window.lenscastPresenter.reason), /camera gone/);
    });
  });
}

test('presenter: a wrong token is refused, with the server\'s 401 reason', { timeout: 60000 }, async () => {
  await withPresenterSetup(async (server, context) => {
    const page = await openViewer(context, `${server.url}present?token=not-the-token`);
    await page.waitForSelector('#start:not([disabled])', { timeout: 10000 });
    await page.click('#start');
    await waitForPresenter(page, (p) => p.state === 'refused', 'refused', 10000);
    const { reason, bytesSent } = await page.evaluate(() => window.lenscastPresenter);
    assert.equal(bytesSent, 0);
    assert.match(reason, /^401 .*token/, await describePresenter(page));
    assert.match(await page.textContent('#state'), /^refused: 401/);
    assert.equal((await fetchStatus(server)).pipeline.presenter_connected, false);
  });
});

test('presenter: a second presenter gets 409, or takes over when asked', { timeout: 90000 }, async () => {
  await withPresenterSetup(async (server, context) => {
    const first = await startPresenting(context, server);
    await waitForPresenter(first, (p) => p.state === 'live', 'live');

    const second = await startPresenting(context, server);
    await waitForPresenter(second, (p) => p.state === 'refused', 'refused', 10000);
    const { reason } = await second.evaluate(() => window.lenscastPresenter);
    assert.match(reason, /^409 .*already live/, await describePresenter(second));
    assert.equal(await first.evaluate(() => window.lenscastPresenter.state), 'live');

    await second.check('#takeover');
    await second.click('#start');
    await waitForPresenter(second, (p) => p.state === 'live' && p.lastStats?.pipeline?.presenter_connected, 'live after take over');
    await waitForPresenter(first, (p) => p.state === 'disconnected', 'disconnected', 10000);
    assert.match(await first.evaluate(() => window.lenscastPresenter.reason), /took over/);
  });
});

/**
 * Presents with the stamp strip (?clock=1) and watches from a viewer page for CLOCK_WINDOW_MS
 * after the join has settled. Returns the truth (the strip's ages, ms), the page's own readout
 * (window.lenscast.glassToGlassMs, read every 500 ms), how far behind live it played, and the
 * server's figures.
 */
async function measureGlassToGlass(server, context) {
  const presenter = await startPresenting(context, server, '&clock=1');
  await waitForPresenterFrames(presenter);
  const viewer = await openViewer(context, `${server.url}?clock=1`);
  await waitForPlayback(viewer, 1, 20000);
  // Joining and catching up to the live edge is not the steady state: measure after it.
  await sleep(2000);
  await viewer.evaluate(() => window.lenscast.stampAgesMs.splice(0));
  const behindLive = [];
  const readout = [];
  for (let waited = 0; waited < CLOCK_WINDOW_MS; waited += 500) {
    await sleep(500);
    const { behind, glass } = await viewer.evaluate(() => ({
      behind: window.lenscast.behindLive,
      glass: window.lenscast.glassToGlassMs,
    }));
    behindLive.push(behind);
    if (glass !== null) readout.push(glass);
  }
  const truth = await viewer.evaluate(() => [...window.lenscast.stampAgesMs]);
  const status = await fetchStatus(server);
  const presenterSees = await presenter.evaluate(() => window.lenscastPresenter.lastStats?.viewers);
  const shown = await viewer.textContent('#status');
  const sorted = (values) => [...values].sort((a, b) => a - b);
  return {
    presenter,
    viewer,
    truth: sorted(truth),
    readout: sorted(readout),
    behind: sorted(behindLive.filter((b) => b !== null)),
    status,
    presenterSees,
    shown,
  };
}

/** Asserts that the readout agrees with the stamp strip within 100 ms (p50 of each). */
async function assertReadoutMatchesTruth(m) {
  const truth = percentile(m.truth, 50);
  const readout = percentile(m.readout, 50);
  const context = `truth p50 ${truth} ms (n=${m.truth.length}), readout p50 ${readout} ms ` +
    `(n=${m.readout.length}: ${m.readout.join(' ')})\n${await describe(m.viewer)}`;
  assert.ok(m.truth.length > 10, `only ${m.truth.length} clock samples; ${context}`);
  assert.ok(m.readout.length >= 10, `the readout was missing; ${context}`);
  assert.ok(Math.abs(readout - truth) <= 100, `readout and truth disagree: ${context}`);
  assert.match(m.shown, /\d+ ms glass to glass/, 'the page shows the readout');
  // The presenter page shows what viewers see: the median of their reports (one viewer here).
  assert.equal(m.presenterSees?.viewers_reporting, 1, JSON.stringify(m.presenterSees));
  // It is one of the viewer's recent readouts, so within what the viewer showed meanwhile.
  const shownByPresenter = m.presenterSees.glass_to_glass_ms_p50;
  assert.ok(
    shownByPresenter >= m.readout[0] - 50 && shownByPresenter <= m.readout[m.readout.length - 1] + 50,
    `presenter shows ${JSON.stringify(m.presenterSees)}; the viewer's readouts: ${m.readout.join(' ')}`,
  );
  assert.match(await m.presenter.textContent('#glass'), /^\d+ ms \(1 viewer\)$/);
}

test('glass-to-glass: the presenter\'s clock read back on the viewer, and the readout agrees', { timeout: 120000 }, async () => {
  await withPresenterSetup(async (server, context) => {
    const m = await measureGlassToGlass(server, context);
    const p50 = percentile(m.truth, 50);
    const p90 = percentile(m.truth, 90);
    const pipeline = m.status.pipeline;
    const visibility = await m.presenter.evaluate(() => document.visibilityState);
    console.log(`glass-to-glass p50=${p50} ms p90=${p90} ms n=${m.truth.length}; readout p50=${percentile(m.readout, 50)} ms`);
    console.log(
      `  viewer behind live p50=${percentile(m.behind, 50)?.toFixed(2)} s; server latency p50=` +
        `${pipeline.latency_ms_p50?.toFixed(1)} ms p99=${pipeline.latency_ms_p99?.toFixed(1)} ms; ` +
        `capture to arrival p50=${m.status.latency.capture_to_arrival_ms_p50?.toFixed(1)} ms; ` +
        `fps in/out ${pipeline.fps_in?.toFixed(1)}/${pipeline.fps_out?.toFixed(1)}; presenter tab ${visibility}`,
    );
    fs.mkdirSync(path.dirname(BENCH_FILE), { recursive: true });
    fs.writeFileSync(
      BENCH_FILE,
      `${JSON.stringify(
        {
          measured_at: new Date().toISOString(),
          window_ms: CLOCK_WINDOW_MS,
          n: m.truth.length,
          p50_ms: p50 ?? null,
          p90_ms: p90 ?? null,
          min_ms: m.truth[0] ?? null,
          max_ms: m.truth[m.truth.length - 1] ?? null,
          readout_p50_ms: percentile(m.readout, 50) ?? null,
          viewer_behind_live_p50_s: percentile(m.behind, 50) ?? null,
          latency: m.status.latency,
          samples_ms: m.truth,
        },
        null,
        2,
      )}\n`,
    );

    await assertReadoutMatchesTruth(m);
    // The server's part of the budget: the presenter said when it captured, so the upload leg
    // is measured too.
    assert.ok(m.status.latency.capture_to_arrival_ms_p50 > 0, JSON.stringify(m.status.latency));
    assert.ok(m.status.latency.arrival_to_broadcast_ms_p50 > 0, JSON.stringify(m.status.latency));
    assert.ok(p50 < 5000, `glass-to-glass p50 ${p50} ms`);
  });
});

/** Runs in every page before its scripts: shifts the clock the pages can read (Date.now() and
 *  `new Date()`), the presenter's 3 s back and the viewer's 5 s ahead, as on three machines with
 *  wrong clocks. The real clock stays reachable for the test's own check. */
function skewClocks() {
  const shift = location.pathname.startsWith('/present') ? -3000 : 5000;
  const RealDate = Date;
  const realNow = RealDate.now.bind(RealDate);
  globalThis.Date = class extends RealDate {
    constructor(...args) {
      super(...(args.length ? args : [realNow() + shift]));
    }

    static now() {
      return realNow() + shift;
    }
  };
  globalThis.lenscastTestRealNow = realNow;
}

test('glass-to-glass: the readout holds when the pages\' clocks are off by seconds', { timeout: 120000 }, async () => {
  await withPresenterSetup(async (server, context) => {
    await context.addInitScript(skewClocks);
    const m = await measureGlassToGlass(server, context);
    console.log(`skewed clocks: truth p50=${percentile(m.truth, 50)} ms; readout p50=${percentile(m.readout, 50)} ms`);
    // The shift is really in force on the pages (else this test would prove nothing).
    const shift = (page) =>
      page.evaluate(() => new Date().getTime() - window.lenscastTestRealNow());
    const viewerShift = await shift(m.viewer);
    const presenterShift = await shift(m.presenter);
    assert.ok(Math.abs(viewerShift - 5000) < 20, `viewer clock shift ${viewerShift} ms`);
    assert.ok(Math.abs(presenterShift + 3000) < 20, `presenter clock shift ${presenterShift} ms`);
    await assertReadoutMatchesTruth(m);
  });
});

test('presenter: a stream the server refuses, and a link too slow, are shown', { timeout: 90000 }, async () => {
  await withPresenterSetup(async (server, context) => {
    // Bytes that are not WebM: the server closes with 1003 and says why.
    const garbled = await openViewer(context, `${server.url}present?token=${TOKEN}`);
    await garbled.waitForSelector('#start:not([disabled])', { timeout: 10000 });
    await garbled.evaluate(() => {
      const send = WebSocket.prototype.send;
      WebSocket.prototype.send = function () {
        return send.call(this, new TextEncoder().encode('this is not a WebM stream at all'));
      };
    });
    await garbled.click('#start');
    await waitForPresenter(garbled, (p) => p.state === 'refused', 'refused', 10000);
    const refused = await garbled.evaluate(() => window.lenscastPresenter.reason);
    assert.match(refused, /not valid live WebM.*\(close code 1003\)$/, await describePresenter(garbled));
    assert.match(await garbled.textContent('#state'), /^refused: .*1003/);

    // A socket that never drains: the page stops rather than buffering without end.
    const slow = await openViewer(context, `${server.url}present?token=${TOKEN}`);
    await slow.waitForSelector('#start:not([disabled])', { timeout: 10000 });
    await slow.evaluate(() => {
      Object.defineProperty(WebSocket.prototype, 'bufferedAmount', { get: () => 9 * 1024 * 1024 });
    });
    await slow.click('#start');
    await waitForPresenter(slow, (p) => p.state === 'disconnected', 'disconnected', 10000);
    assert.match(await slow.evaluate(() => window.lenscastPresenter.reason), /^upload too slow/);
    assert.equal(await slow.isDisabled('#start'), false, 'Start is usable again');
  });
});
