// The HLS mirror's audio in headless Chromium: a source that sends a 440 Hz Opus sine, played
// through hls.html (hls.js), must reach the page as sound that really decodes. A WebAudio
// analyser on the <video> element listens to what the player outputs.
// `node --test tests/browser/`; needs target/release/lenscast (or LENSCAST_BIN).

import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import {
  REPO_ROOT,
  countStalls,
  describe,
  openViewer,
  percentile,
  sampleHlsBehindLive,
  startLenscast,
  withServerAndBrowser,
  waitForPlayback,
} from './helpers.mjs';

const START_TIMEOUT_MS = 30000;
const SINE_HZ = 440;

/**
 * Listens to the page's <video> for `seconds` through an AnalyserNode (unmuted: a muted
 * element gives the graph silence). Returns the RMS of each 100 ms look and the frequency of
 * the loudest FFT bin in the last look.
 */
async function listen(page, seconds) {
  return page.evaluate(async (seconds) => {
    const video = document.getElementById('video');
    video.muted = false;
    video.volume = 1;
    const context = new AudioContext();
    await context.resume();
    const analyser = context.createAnalyser();
    analyser.fftSize = 8192;
    context.createMediaElementSource(video).connect(analyser);
    analyser.connect(context.destination);
    const wave = new Float32Array(analyser.fftSize);
    const spectrum = new Float32Array(analyser.frequencyBinCount);
    const levels = [];
    for (let look = 0; look < seconds * 10; look++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      analyser.getFloatTimeDomainData(wave);
      levels.push(Math.sqrt(wave.reduce((sum, x) => sum + x * x, 0) / wave.length));
    }
    analyser.getFloatFrequencyData(spectrum);
    let loudest = 0;
    for (let bin = 1; bin < spectrum.length; bin++) if (spectrum[bin] > spectrum[loudest]) loudest = bin;
    return {
      levels,
      peakHz: (loudest * context.sampleRate) / analyser.fftSize,
      state: context.state,
      paused: video.paused,
    };
  }, seconds);
}

test('hls.html: the source\'s Opus plays as audio (an analyser hears the 440 Hz sine)', { timeout: 120000 }, async () => {
  const input = path.resolve(REPO_ROOT, 'fixtures/face-opus.webm');
  await withServerAndBrowser(
    () => startLenscast(['--input', input]),
    async (server, context) => {
      const page = await openViewer(context, `${server.url}hls.html`);
      await waitForPlayback(page, 1, START_TIMEOUT_MS);
      const heard = await listen(page, 4);
      const sorted = [...heard.levels].sort((a, b) => a - b);
      const median = sorted[Math.floor(sorted.length / 2)];
      console.log(
        `hls.js audio: median RMS ${median.toFixed(3)}, loudest ${heard.peakHz.toFixed(0)} Hz, ` +
          `context ${heard.state}, paused ${heard.paused}`,
      );
      assert.equal(heard.state, 'running');
      assert.ok(median > 0.02, `silence: ${JSON.stringify(heard)}\n${await describe(page)}`);
      // One FFT bin is 48000 / 8192 = 5.9 Hz wide.
      assert.ok(Math.abs(heard.peakHz - SINE_HZ) < 15, `loudest at ${heard.peakHz} Hz, not the sine`);

      // Audio must not cost the low-latency playback: pictures wait for the audio of their
      // time before they are muxed, so measure how far behind live the player stays.
      // Over 30 s, as the issue measures it; stalls are counted to tell a busy machine apart.
      const stallCount = await countStalls(page);
      const behind = await sampleHlsBehindLive(page, 30000, 500);
      const stalls = await stallCount();
      const p50 = percentile(behind, 50);
      const p90 = percentile(behind, 90);
      console.log(
        `hls.js with audio: behind live p50=${p50?.toFixed(2)} s p90=${p90?.toFixed(2)} s ` +
          `over ${behind.length} samples; stalls ${stalls}`,
      );
      assert.ok(behind.length >= 40, `only ${behind.length} samples while playing`);
      assert.ok(p50 <= 1.5, `behind live p50 ${p50} s with audio\n${await describe(page)}`);
    },
  );
});
