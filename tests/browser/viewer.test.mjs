// The viewer page in headless Chromium against the real server: `node --test tests/browser/`.
// Needs target/release/lenscast (or LENSCAST_BIN) and fixtures/*.webm.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  describe,
  launchBrowser,
  openViewer,
  sleep,
  waitForPicture,
  startServer,
  withServerAndBrowser,
  waitForPlayback,
} from './helpers.mjs';

// Frames with a mean luma above this and some spread are real pictures, not black or blank.

/** A passthrough server on `fixture` and a browser, cleaned up after `body`. */
const withFixture = (fixture, body) => withServerAndBrowser(() => startServer(fixture), body);

async function assertNearLive(page) {
  const behind = await page.evaluate(() => window.lenscast.behindLive);
  assert.ok(behind !== null && behind < 3, `behindLive = ${behind}\n${await describe(page)}`);
}

test('video: two viewers, one joining later, both play real frames near live', { timeout: 90000 }, async () => {
  await withFixture('face.webm', async (server, context) => {
    const first = await openViewer(context, server.url);
    await waitForPlayback(first, 1, 20000);
    await waitForPicture(first);
    await assertNearLive(first);

    // The second viewer joins mid-stream: it must start at a keyframe Cluster and seek into it.
    await sleep(3000);
    const second = await openViewer(context, server.url);
    await waitForPlayback(second, 1, 20000);
    await waitForPicture(second);
    await assertNearLive(second);

    const state = await second.evaluate(() => window.lenscast);
    assert.match(state.mime, /^video\/webm/);
    assert.equal(state.audioOnly, false);
    assert.ok(state.appendedBytes > 0);

    // The first viewer kept playing while the second joined.
    await assertNearLive(first);
    assert.ok(await first.evaluate(() => window.__played > 3), await describe(first));
  });
});

test('audio only: an Opus stream plays in the same page', { timeout: 60000 }, async () => {
  await withFixture('opus.webm', async (server, context) => {
    const page = await openViewer(context, server.url);
    await waitForPlayback(page, 1, 20000);
    const state = await page.evaluate(() => window.lenscast);
    assert.match(state.mime, /^audio\/webm/);
    assert.equal(state.audioOnly, true);
    assert.match(await page.textContent('#status'), /audio only/);
    await assertNearLive(page);
  });
});
