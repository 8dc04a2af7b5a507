// The presenter's WebCodecs recorder (client/codec-recorder.js + webm-writer.js) in headless
// Chromium with the fake camera and microphone: what it writes is read back by parsers we did
// not write (ffprobe, mkvinfo, and ffmpeg decoding every frame). The same recorder against the
// real server is in presenter.test.mjs.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { before, test } from 'node:test';
import { KEYFRAME_INTERVAL_MS } from '../../client/constants.js';
import { consoleLines, fakeCameraArgs, openViewer, startLenscast, withServerAndBrowser } from './helpers.mjs';

const RECORD_MS = 4000;

let cameraArgs;
before(() => {
  cameraArgs = fakeCameraArgs('face.webm', 6);
});

/** Records RECORD_MS of the fake camera and microphone with the page's CodecRecorder; returns
 *  the bytes and what the recorder said. */
async function recordInPage(page) {
  return page.evaluate(async ({ ms, keyFrameIntervalMs }) => {
    const { CodecRecorder, codecRecorderSupports } = await import('/codec-recorder.js');
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: true });
    if (!(await codecRecorderSupports(stream))) throw new Error('codecRecorderSupports says no');
    const recorder = new CodecRecorder(stream, { videoBitsPerSecond: 1_500_000, keyFrameIntervalMs });
    const parts = [];
    let origin = null;
    recorder.ondataavailable = (event) => parts.push(event.data);
    recorder.onorigin = (dateMs) => {
      origin = dateMs;
    };
    const stopped = new Promise((resolve, reject) => {
      recorder.onstop = resolve;
      recorder.onerror = (event) => reject(event.error);
    });
    const startedAt = Date.now();
    recorder.start();
    await new Promise((resolve) => setTimeout(resolve, ms));
    recorder.stop();
    await stopped;
    for (const track of stream.getTracks()) track.stop();
    let binary = '';
    for (const part of parts) {
      for (let i = 0; i < part.length; i += 0x8000) {
        binary += String.fromCharCode(...part.subarray(i, i + 0x8000));
      }
    }
    return {
      base64: btoa(binary),
      parts: parts.length,
      mime: recorder.mimeType,
      originAfterStartMs: origin === null ? null : origin - startedAt,
      framesRead: recorder.framesRead,
      framesDropped: recorder.framesDropped,
    };
  }, { ms: RECORD_MS, keyFrameIntervalMs: KEYFRAME_INTERVAL_MS });
}

function run(command, args) {
  const result = spawnSync(command, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  if (result.error) throw result.error;
  return result;
}

test('codec recorder: ffprobe, mkvinfo and ffmpeg read its live WebM: VP8 and Opus, a keyframe a second, every frame on its own', { timeout: 90000 }, async () => {
  await withServerAndBrowser(
    () => startLenscast([]),
    async (server, context) => {
      const page = await openViewer(context, `${server.url}present`);
      let recorded;
      try {
        recorded = await recordInPage(page);
      } catch (err) {
        throw new Error(`${err.message}\nconsole:\n${consoleLines(page).join('\n')}`);
      }
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lenscast-codec-recorder-'));
      const file = path.join(dir, 'presenter.webm');
      try {
        fs.writeFileSync(file, Buffer.from(recorded.base64, 'base64'));
        assert.equal(recorded.mime, 'video/webm;codecs=vp8,opus');
        // Media time 0 is the first picture's capture: about when start() was called (the
        // first picture read may have been captured up to a frame before it).
        assert.ok(
          recorded.originAfterStartMs !== null && recorded.originAfterStartMs >= -100 && recorded.originAfterStartMs < 1000,
          `capture origin ${recorded.originAfterStartMs} ms after start()`,
        );

        const probe = run('ffprobe', ['-v', 'error', '-show_streams', '-show_packets', '-of', 'json', file]);
        assert.equal(probe.status, 0, `ffprobe: ${probe.stderr}`);
        assert.equal(probe.stderr, '', 'ffprobe reports no errors');
        const { streams, packets } = JSON.parse(probe.stdout);
        const video = streams.find((s) => s.codec_type === 'video');
        const audio = streams.find((s) => s.codec_type === 'audio');
        assert.equal(video?.codec_name, 'vp8', JSON.stringify(streams));
        assert.equal(`${video.width}x${video.height}`, '640x480');
        assert.equal(audio?.codec_name, 'opus', JSON.stringify(streams));
        assert.equal(audio.sample_rate, '48000');

        const of = (stream) => packets.filter((p) => p.stream_index === stream.index);
        const videoPackets = of(video);
        const audioPackets = of(audio);
        const seconds = RECORD_MS / 1000;
        // Every picture read from the camera is in the file, but for the few the recorder drops
        // when its encoder falls behind (and any the encoder itself skips to keep its rate).
        // How many the camera gives is the fake camera's business (30 fps; under a heavy load it
        // slows to a third of that); a recording must still move.
        const { framesRead, framesDropped } = recorded;
        const frames = `${videoPackets.length} video frames in ${seconds} s (read ${framesRead} from the camera, dropped ${framesDropped})`;
        assert.ok(framesRead >= 5 * seconds, frames);
        assert.ok(framesDropped <= 0.2 * framesRead, frames);
        assert.ok(videoPackets.length <= framesRead - framesDropped, frames);
        assert.ok(videoPackets.length >= 0.9 * (framesRead - framesDropped), frames);
        console.log(frames);
        // Opus in 20 ms packets (MediaRecorder's are 60 ms): about 50 a second.
        assert.ok(audioPackets.length >= 40 * seconds, `${audioPackets.length} audio packets in ${seconds} s`);
        const audioGaps = audioPackets.slice(1).map((p, i) => Math.round((p.pts - audioPackets[i].pts)));
        const gapCounts = {};
        for (const gap of audioGaps) gapCounts[gap] = (gapCounts[gap] ?? 0) + 1;
        const usual = Number(Object.entries(gapCounts).sort((a, b) => b[1] - a[1])[0][0]);
        assert.ok(usual >= 19 && usual <= 21, `audio packets usually ${usual} ms apart: ${JSON.stringify(gapCounts)}`);
        for (const list of [videoPackets, audioPackets]) {
          for (let i = 1; i < list.length; i++) {
            assert.ok(list[i].pts > list[i - 1].pts, `pts go forward: ${list[i - 1].pts} then ${list[i].pts}`);
          }
        }
        // Both tracks start together, at media time 0, give or take a frame.
        assert.ok(videoPackets[0].pts <= 100 && audioPackets[0].pts <= 100, `first pts ${videoPackets[0].pts} / ${audioPackets[0].pts} ms`);

        const keyframes = videoPackets.filter((p) => p.flags.startsWith('K')).map((p) => p.pts);
        assert.ok(videoPackets[0].flags.startsWith('K'), 'the first frame is a keyframe');
        const expected = RECORD_MS / KEYFRAME_INTERVAL_MS;
        assert.ok(
          keyframes.length >= expected - 1 && keyframes.length <= expected + 1,
          `${keyframes.length} keyframes in ${RECORD_MS} ms at one per ${KEYFRAME_INTERVAL_MS} ms: ${keyframes}`,
        );

        // Each frame was handed over on its own (plus the header), not held for the next one.
        assert.ok(
          recorded.parts >= packets.length,
          `${recorded.parts} chunks handed over for ${packets.length} packets`,
        );

        const info = run('mkvinfo', ['-v', file]); // -v: every Cluster, not only the first
        assert.equal(info.status, 0, `mkvinfo: ${info.stdout}${info.stderr}`);
        assert.match(info.stdout, /Codec ID: V_VP8/);
        assert.match(info.stdout, /Codec ID: A_OPUS/);
        assert.doesNotMatch(info.stdout, /error/i);
        // Every video keyframe opens a Cluster, so each can be decoded on its own; only the
        // first Cluster may start with the audio encoded before the first picture.
        const clusters = [];
        for (const line of info.stdout.split('\n')) {
          if (/^\|\+ Cluster$/.test(line)) clusters.push([]);
          const block = /Simple block: (key, )?track number (\d+)/.exec(line);
          if (block) clusters.at(-1).push({ key: !!block[1], track: Number(block[2]) });
        }
        const shapes = clusters.map((blocks) => blocks.map((b) => `${b.track}${b.key ? 'K' : ''}`).join(' '));
        assert.ok(clusters.length >= keyframes.length, `${clusters.length} Clusters, ${keyframes.length} keyframes`);
        clusters.forEach((blocks, i) => {
          const video = blocks.filter((b) => b.track === 1);
          const keys = video.filter((b) => b.key).length;
          const opensWithKey = video[0]?.key && blocks.indexOf(video[0]) === 0;
          const ok = keys <= 1 && (i === 0 ? video.length === 0 || video[0].key : opensWithKey);
          assert.ok(ok, `Cluster ${i}: ${shapes[i]}`);
        });

        // passthrough: the output keeps the camera's own frame times (not a constant rate, as
        // a live camera's are not), so the null muxer sees them as they are. enc_time_base -1
        // keeps them in the file's milliseconds: by default ffmpeg 5.1 rounds them to 1/fps,
        // and two frames a few ms apart (a loaded machine delivers them in bursts) land in one
        // tick, which the null muxer reports as non-monotonic though the file's are not.
        const decode = run('ffmpeg', [
          '-v', 'error', '-xerror', '-i', file,
          '-fps_mode', 'passthrough', '-enc_time_base:v', '-1', '-f', 'null', '-',
        ]);
        assert.equal(decode.status, 0, `ffmpeg: ${decode.stderr}`);
        assert.equal(decode.stderr, '', 'ffmpeg decodes every frame without a complaint');
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
    { browserArgs: cameraArgs },
  );
});
