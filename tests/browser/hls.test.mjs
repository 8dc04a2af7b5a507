// The HLS mirror in headless Chromium against the real server (annotating the built-in demo):
// hls.html with hls.js, the viewer page's HLS fallback, and how far behind live hls.js plays.
// `node --test tests/browser/`; needs target/release/lenscast (or LENSCAST_BIN) and hls.js from
// npm (node_modules/hls.js, which the server serves as /vendor/hls.min.js).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import {
  REPO_ROOT,
  countStalls,
  describe,
  launchBrowser,
  openViewer,
  percentile,
  sampleHlsBehindLive,
  sleep,
  fetchStatus,
  startLenscast,
  withServerAndBrowser,
  waitForPicture,
  waitForPlayback,
} from './helpers.mjs';

const BENCH_FILE = path.join(REPO_ROOT, 'target/bench/hls-latency.json');
const LATENCY_WINDOW_MS = 30000;
const LATENCY_SAMPLE_MS = 500;
const LATENCY_TARGET_S = 1.2; // the goal with LL-HLS parts (PART-HOLD-BACK ≈ 1 s): reported
const LOW_LATENCY_LIMIT_S = 1.5; // asserted on the p50 behind live (issue 11)
const LATENCY_LIMIT_S = 10; // asserted by the other tests: further behind is broken, not slow
const STALL_MS = 2500; // how long the stall test freezes the server: longer than the buffer
const LONG_STALL_MS = 7000; // ...and long enough to leave the player far behind
const RECOVERY_MS = 20000; // ...and how long it then gives the player to get back
const PLAYLIST_WINDOW = 6; // segments the server lists (HlsConfig's default window)
// Joining takes a first playlist (about a second after the server starts), hls.js and segments.
const START_TIMEOUT_MS = 30000;

/** The annotating server (demo input) and a browser, cleaned up after `body`. */
const withAnnotatingServer = (body) => withServerAndBrowser(() => startLenscast([]), body);

/** How long ago (s) the newest media in the playlist ended, by PROGRAM-DATE-TIME: the last
 *  dated segment's end, or with parts, the end of its newest part. */
async function playlistAge(server) {
  const response = await fetch(new URL('/hls/live.m3u8', server.url));
  const text = await response.text();
  let date = null;
  let parts = 0;
  let whole = null;
  for (const line of text.split('\n')) {
    const dated = line.match(/^#EXT-X-PROGRAM-DATE-TIME:(\S+)/);
    const part = line.match(/^#EXT-X-PART:DURATION=([\d.]+)/);
    const extinf = line.match(/^#EXTINF:([\d.]+)/);
    if (dated) [date, parts, whole] = [Date.parse(dated[1]), 0, null];
    else if (part) parts += Number(part[1]);
    else if (extinf) whole = Number(extinf[1]);
  }
  if (date === null) return null;
  return (Date.now() - (date + (whole ?? parts) * 1000)) / 1000;
}

/** Waits until the playlist lists as many segments as it ever will (its sliding window).
 *  It polls the playlist as a player would: with nobody fetching HLS or watching, the server
 *  pauses its demo, and the playlist would never fill. */
async function waitForFullPlaylist(server, timeoutMs = 20000) {
  let mirror;
  for (let waited = 0; waited < timeoutMs; waited += 250) {
    await fetch(new URL('/hls/live.m3u8', server.url));
    mirror = (await fetchStatus(server)).hls;
    if (mirror.segments >= PLAYLIST_WINDOW) return;
    await sleep(250);
  }
  assert.fail(`the playlist never filled up: ${JSON.stringify(mirror)}`);
}

test('hls.html: hls.js plays the mirror from the server\'s own copy', { timeout: 90000 }, async () => {
  await withAnnotatingServer(async (server, context) => {
    const page = await openViewer(context, `${server.url}hls.html`);
    await waitForPlayback(page, 2, START_TIMEOUT_MS);
    await waitForPicture(page);

    const hls = await page.evaluate(() => window.lenscastHls);
    assert.equal(hls.engine, 'hls.js', await describe(page));
    assert.equal(hls.state, 'playing', await describe(page));
    assert.ok(hls.behindLive > 0 && hls.behindLive < LATENCY_LIMIT_S, await describe(page));
    assert.match(await page.textContent('#status'), /^playing · hls\.js · \d+\.\d s behind live/);
    // hls.js came from lenscast, not a CDN, and the picture is the mirror's H.264.
    assert.equal(await page.evaluate(() => typeof window.Hls?.isSupported), 'function');
    const mirror = (await fetchStatus(server)).hls;
    assert.equal(mirror.error, null, JSON.stringify(mirror));
    assert.ok(mirror.segments > 0, JSON.stringify(mirror));
  });
});

test('hls.html: starts once the playlist loads, after failed loads', { timeout: 90000 }, async () => {
  await withAnnotatingServer(async (server, context) => {
    // The first playlist requests fail, as when the mirror has not written one yet.
    let refused = 0;
    await context.route('**/hls/live.m3u8', (route) =>
      refused++ < 3 ? route.fulfill({ status: 404, body: 'not found' }) : route.continue(),
    );
    const page = await openViewer(context, `${server.url}hls.html`);
    await waitForPlayback(page, 2, START_TIMEOUT_MS);
    await waitForPicture(page);
    const hls = await page.evaluate(() => window.lenscastHls);
    assert.ok(refused > 3, `only ${refused} playlist requests`);
    assert.ok(hls.recoveries >= 1, await describe(page));
    assert.equal(hls.state, 'playing', await describe(page));
    assert.equal(hls.error, null, await describe(page));
  });
});

test('viewer: /?hls plays the HLS mirror instead of the WebM stream', { timeout: 90000 }, async () => {
  await withAnnotatingServer(async (server, context) => {
    const page = await openViewer(context, `${server.url}?hls`);
    await waitForPlayback(page, 2, START_TIMEOUT_MS);
    await waitForPicture(page);

    const state = await page.evaluate(() => window.lenscast);
    assert.equal(state.engine, 'hls', await describe(page));
    assert.equal(state.hls.engine, 'hls.js', await describe(page));
    assert.equal(state.state, 'playing', await describe(page));
    assert.ok(state.behindLive > 0 && state.behindLive < LATENCY_LIMIT_S, await describe(page));
    assert.match(await page.textContent('#status'), /^playing · HLS \(hls\.js\) · .*s behind live/);
    // The page never opened the WebM stream: the server counts no viewer.
    assert.equal((await fetchStatus(server)).viewers, 0);
  });
});

test('viewer: falls back to HLS by itself when MSE cannot take WebM', { timeout: 90000 }, async () => {
  await withAnnotatingServer(async (server, context) => {
    // A browser whose MSE plays MP4 (as Safari's did) but no WebM.
    await context.addInitScript(() => {
      const isTypeSupported = MediaSource.isTypeSupported.bind(MediaSource);
      MediaSource.isTypeSupported = (type) => !/webm/i.test(type) && isTypeSupported(type);
    });
    const page = await openViewer(context, server.url);
    await waitForPlayback(page, 2, START_TIMEOUT_MS);
    await waitForPicture(page);

    const state = await page.evaluate(() => window.lenscast);
    assert.equal(state.engine, 'hls', await describe(page));
    assert.equal(state.hls.engine, 'hls.js', await describe(page));
    assert.equal((await fetchStatus(server)).viewers, 0);
  });
});

test('hls.js: how far behind live it plays with LL-HLS parts', { timeout: 150000 }, async () => {
  await withAnnotatingServer(async (server, context) => {
    // A viewer who joins a full playlist, as most do, not one that is still growing.
    await waitForFullPlaylist(server);
    const page = await openViewer(context, `${server.url}hls.html`);
    await waitForPlayback(page, 1, START_TIMEOUT_MS);
    // Stalls while measuring: each one adds to how far behind the player is.
    const stallCount = await countStalls(page);

    const edge = [];
    const playlistAges = [];
    const sorted = await sampleHlsBehindLive(page, LATENCY_WINDOW_MS, LATENCY_SAMPLE_MS, async (hls) => {
      if (hls.edgeLatency !== null) edge.push(hls.edgeLatency);
      const age = await playlistAge(server);
      if (age !== null) playlistAges.push(age);
    });
    const stalls = await stallCount();
    const mirror = (await fetchStatus(server)).hls;

    const p50 = percentile(sorted, 50);
    const p90 = percentile(sorted, 90);
    const edgeP50 = percentile([...edge].sort((a, b) => a - b), 50);
    const ageP50 = percentile([...playlistAges].sort((a, b) => a - b), 50);
    const within = p50 <= LATENCY_TARGET_S ? 'within' : 'OVER';
    console.log(`hls.js behind live p50=${p50?.toFixed(2)} s p90=${p90?.toFixed(2)} s n=${sorted.length}`);
    console.log(
      `  ${within} the ${LATENCY_TARGET_S} s target; behind the playlist's edge p50=${edgeP50?.toFixed(2)} s; ` +
        `newest media ended p50=${ageP50?.toFixed(2)} s before a playlist fetch; stalls ${stalls}; ` +
        `mirror encode ${mirror.encode_ms?.toFixed(1)} ms/frame, ${mirror.frames_dropped} frames dropped`,
    );
    fs.mkdirSync(path.dirname(BENCH_FILE), { recursive: true });
    fs.writeFileSync(
      BENCH_FILE,
      `${JSON.stringify(
        {
          measured_at: new Date().toISOString(),
          player: 'hls.js',
          segment_duration_s: mirror.segment_duration_s,
          part_duration_s: mirror.part_duration_s,
          window_ms: LATENCY_WINDOW_MS,
          n: sorted.length,
          p50_s: p50 ?? null,
          p90_s: p90 ?? null,
          min_s: sorted[0] ?? null,
          max_s: sorted[sorted.length - 1] ?? null,
          target_s: LATENCY_TARGET_S,
          behind_playlist_edge_p50_s: edgeP50 ?? null,
          playlist_age_p50_s: ageP50 ?? null,
          stalls,
          mirror_encode_ms: mirror.encode_ms,
          mirror_frames_dropped: mirror.frames_dropped,
          samples_s: sorted,
        },
        null,
        2,
      )}\n`,
    );

    // Most of the window playing (a sample every 0.5 s), and at the limit.
    assert.ok(sorted.length >= 40, `only ${sorted.length} samples while playing\n${await describe(page)}`);
    assert.ok(p50 <= LOW_LATENCY_LIMIT_S, `behind live p50 ${p50} s\n${await describe(page)}`);
  });
});

// A short freeze: hls.js catches up by playing faster. A long one: the player is then
// further behind than hls.js catches up from, and jumps to the live edge.
for (const freezeMs of [STALL_MS, LONG_STALL_MS]) {
  test(`hls.js: after a ${freezeMs} ms stall it gets back to low latency`, { timeout: 150000 }, async () => {
    // hls.js on its own adds a second to its target latency on every stall and keeps it for
    // good: one hiccup of a busy server and every viewer sits 2 s behind from then on. Freeze
    // the server (SIGSTOP) long enough for the player to run dry, then see where it settles.
    await withAnnotatingServer(async (server, context) => {
      await waitForFullPlaylist(server);
      const page = await openViewer(context, `${server.url}hls.html`);
      await waitForPlayback(page, 1, START_TIMEOUT_MS);
      const stallCount = await countStalls(page);
      await sleep(3000);
      process.kill(server.pid, 'SIGSTOP');
      try {
        await sleep(freezeMs);
      } finally {
        process.kill(server.pid, 'SIGCONT');
      }
      const stalls = await stallCount();
      // Forgiving the stall (HLS_STALL_FORGIVE_MS, 10 s) and catching up at up to 1.2x.
      await sleep(RECOVERY_MS);
      const behind = await sampleHlsBehindLive(page, 10000, LATENCY_SAMPLE_MS);
      const p50 = percentile(behind, 50);
      console.log(`after a ${freezeMs} ms freeze (${stalls} stalls): behind live p50=${p50?.toFixed(2)} s`);
      assert.ok(stalls >= 1, `the freeze did not stall the player\n${await describe(page)}`);
      assert.ok(behind.length >= 15, `only ${behind.length} samples while playing\n${await describe(page)}`);
      assert.ok(p50 <= LOW_LATENCY_LIMIT_S, `behind live p50 ${p50} s after the stall\n${await describe(page)}`);
    });
  });
}

test('hls.js: the latency readout holds when the page\'s clock is 5 s off', { timeout: 120000 }, async () => {
  await withAnnotatingServer(async (server, context) => {
    // The page's Date.now() runs 5 s fast, as on a machine with a wrong clock.
    await context.addInitScript(() => {
      const realNow = Date.now.bind(Date);
      Date.now = () => realNow() + 5000;
      window.lenscastTestRealNow = realNow;
    });
    await waitForFullPlaylist(server);
    const page = await openViewer(context, `${server.url}hls.html`);
    await waitForPlayback(page, 1, START_TIMEOUT_MS);
    const pairs = [];
    for (let waited = 0; waited < 6000; waited += 500) {
      await sleep(500);
      // The truth: the age of the picture on screen by the real clock (this machine runs the
      // server too), plus what the server says came before the mirror.
      const sample = await page.evaluate(() => ({
        readout: window.lenscastHls.glassToGlassMs,
        age: window.lenscastTestRealNow() - window.lenscastHls.shownDateMs,
        naive: window.lenscastHls.behindLive,
      }));
      if (sample.readout !== null) pairs.push(sample);
    }
    const latency = (await fetchStatus(server)).latency;
    const upstream = (latency.capture_to_arrival_ms_p50 ?? 0) + (latency.arrival_to_broadcast_ms_p50 ?? 0);
    const readout = percentile(pairs.map((p) => p.readout).sort((a, b) => a - b), 50);
    const truth = percentile(pairs.map((p) => p.age + upstream).sort((a, b) => a - b), 50);
    const naive = percentile(pairs.map((p) => p.naive).sort((a, b) => a - b), 50);
    console.log(`hls readout p50 ${readout} ms, truth ${truth?.toFixed(0)} ms, the page's own clock says ${naive?.toFixed(1)} s`);
    assert.ok(pairs.length >= 8, `only ${pairs.length} readouts\n${await describe(page)}`);
    // The skew is in force (the page's own figure is 5 s off), and the readout is not fooled.
    assert.ok(naive > 4.5, `the page's clock is not skewed: ${naive} s`);
    assert.ok(Math.abs(readout - truth) <= 100, `readout ${readout} ms, truth ${truth} ms`);
    assert.match(await page.textContent('#status'), /\d+ ms glass to glass/);
  });
});
