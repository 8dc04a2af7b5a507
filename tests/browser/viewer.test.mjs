// The viewer page in headless Chromium against the real server: `node --test tests/browser/`.
// Needs target/release/lenscast (or LENSCAST_BIN) and fixtures/*.webm.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { TICK_MS } from '../../client/constants.js';
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

test('video: the player asks where its buffer ends a few times a second, not at every append', { timeout: 60000 }, async () => {
  await withFixture('face-opus.webm', async (server, context) => {
    // Counts every read of `buffered` (SourceBuffer's and the element's) and every append.
    // Chromium's `buffered` costs more the longer a session runs (see client/block-times.js).
    await context.addInitScript(() => {
      const calls = (window.__mseCalls = { buffered: 0, appends: 0 });
      for (const proto of [SourceBuffer.prototype, HTMLMediaElement.prototype]) {
        const property = Object.getOwnPropertyDescriptor(proto, 'buffered');
        Object.defineProperty(proto, 'buffered', {
          ...property,
          get() {
            calls.buffered++;
            return property.get.call(this);
          },
        });
      }
      const appendBuffer = SourceBuffer.prototype.appendBuffer;
      SourceBuffer.prototype.appendBuffer = function (...args) {
        calls.appends++;
        return appendBuffer.apply(this, args);
      };
    });
    const page = await openViewer(context, server.url);
    await waitForPlayback(page, 1, 20000);
    const calls = () => page.evaluate(() => ({ ...window.__mseCalls, at: performance.now() }));
    const before = await calls();
    await sleep(5000);
    const after = await calls();
    const seconds = (after.at - before.at) / 1000;
    const appends = (after.appends - before.appends) / seconds;
    const reads = (after.buffered - before.buffered) / seconds;
    const shown = `${appends.toFixed(1)} appends/s, ${reads.toFixed(1)} reads of buffered/s\n${await describe(page)}`;
    // Video and audio blocks arrive one by one, so the player appends many times a second...
    assert.ok(appends >= 15, shown);
    // ...and its tick, twice at most, reads how much is buffered (plus a rare trim or stall).
    assert.ok(reads <= (2 * 1000) / TICK_MS, shown);
    // The live-edge policy still had arrivals to go by.
    assert.ok(await page.evaluate(() => window.lenscast.jitterMs !== null), shown);
  });
});
