// What Chromium's MSE makes of the viewer stream's framing, against the real server: a bare
// MediaSource page fed straight from /ws/view (not the viewer page, whose live-edge policy
// would blur what the SourceBuffer itself does). Needs target/release/lenscast (or LENSCAST_BIN)
// and ffmpeg.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { startLenscast, withServerAndBrowser } from './helpers.mjs';

/** Writes a 5 fps VP8 file whose frames pause for 1.2 s after the 15th (a camera that stalled),
 *  with the real ffmpeg; returns its path. */
function slowFileWithPause(dir) {
  const file = path.join(dir, 'slow-pause.webm');
  const args = ['-v', 'error', '-y', '-f', 'lavfi', '-i', 'testsrc=size=320x240:rate=5', '-t', '6'];
  args.push('-vf', 'setpts=PTS+gte(N\\,15)*1/TB', '-fps_mode', 'passthrough');
  args.push('-c:v', 'libvpx', '-b:v', '300k', file);
  const ffmpeg = spawnSync('ffmpeg', args);
  assert.equal(ffmpeg.status, 0, `ffmpeg: ${ffmpeg.stderr}`);
  return file;
}

/**
 * In the page: plays nothing, only appends every /ws/view message to a SourceBuffer for
 * `seconds`. For each message that carries video it notes the latest video frame's time and,
 * once appended, the end of what is buffered (both in ms).
 */
async function appendFromViewSocket(seconds) {
  // The player's own reader of the stream's block times (its messages are whole elements).
  const { BlockTimes } = await import('/block-times.js');
  const blockTimes = new BlockTimes();
  const VIDEO_TRACK = 1;

  const source = new MediaSource();
  const video = document.createElement('video');
  video.muted = true;
  video.src = URL.createObjectURL(source);
  document.body.append(video);
  await new Promise((resolve) => source.addEventListener('sourceopen', resolve, { once: true }));
  const ws = new WebSocket(new URL('/ws/view', location.href).href.replace(/^http/, 'ws'));
  ws.binaryType = 'arraybuffer';
  const appends = [];
  let buffer = null;
  let chain = Promise.resolve();
  const append = (bytes, videoAt) =>
    new Promise((resolve, reject) => {
      buffer.addEventListener(
        'updateend',
        () => {
          const ranges = buffer.buffered;
          const end = ranges.length ? ranges.end(ranges.length - 1) * 1000 : null;
          if (videoAt !== null) appends.push({ videoAt, end });
          resolve();
        },
        { once: true },
      );
      buffer.addEventListener('error', () => reject(new Error('append failed')), { once: true });
      buffer.appendBuffer(bytes);
    });
  ws.onmessage = ({ data }) => {
    if (typeof data === 'string') {
      const message = JSON.parse(data);
      if (message.type === 'init' && !buffer) buffer = source.addSourceBuffer(message.mime);
      return;
    }
    const bytes = new Uint8Array(data);
    const times = blockTimes.blocks(bytes).filter((block) => block.track === VIDEO_TRACK);
    const videoAt = times.length ? Math.max(...times.map((block) => block.seconds * 1000)) : null;
    chain = chain.then(() => append(bytes, videoAt));
  };
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  ws.close();
  await chain;
  return appends;
}

test('framing: each video frame is in the buffer as soon as it is appended, gaps too', { timeout: 90000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lenscast-framing-'));
  try {
    const file = slowFileWithPause(dir);
    await withServerAndBrowser(
      () => startLenscast(['--input', file, '--keyframe-interval', '30']),
      async (server, context) => {
        const page = await context.newPage();
        await page.goto(new URL('/healthz', server.url).href);
        const appends = await page.evaluate(appendFromViewSocket, 10);
        const shown = JSON.stringify(appends);
        assert.ok(appends.length >= 25, `video appends: ${shown}`);
        // A frame without a duration is held back by Chromium's WebM parser until the next
        // one arrives (200 ms here): the buffer would end at the new frame's start.
        const held = appends.filter((a) => a.end === null || a.end <= a.videoAt + 0.5);
        assert.deepEqual(held, [], `frames not yet buffered once appended: ${shown}`);
        // The pause is in the stream, and the frames after it were taken at once too (Chromium
        // drops frames after a discontinuity up to the next keyframe, 30 s away here).
        const pause = appends.findIndex((a, i) => i > 0 && a.videoAt > appends[i - 1].videoAt + 1000);
        assert.ok(pause > 0, `no 1.2 s pause among the appends: ${shown}`);
      },
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
