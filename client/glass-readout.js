// The viewer's glass-to-glass latency estimate: from the presenter's camera (or, for the demo or
// a file, the server's receipt of the frame) to this page's screen, whatever the three clocks.
//
// The server sends a "stamp" with every keyframe Cluster: the capture time of one media time, on
// the server's clock (see src/latency.rs). Media time and capture time advance together, so any
// frame's capture time follows from the latest stamp. When the page presents a frame it knows the
// frame's media time and when it is shown, so the age of the picture on screen, on the server's
// clock (ServerClock), can be worked out at any moment: `glassToGlassMs` does so when read, so it
// never lags a player that is catching up (a median over the last half second would: while
// latency falls slowly and rises in jumps, a figure that lags reads high). What the page reports
// to the server for the presenter's figure is steadier: `smoothedMs`, the median of samples
// taken every GLASS_SAMPLE_EVERY_MS over the last GLASS_READOUT_EVERY_MS.

import { GLASS_READOUT_EVERY_MS, GLASS_SAMPLE_EVERY_MS, GLASS_STAMPS_KEPT } from './constants.js';

/** The median of a non-empty array of numbers. */
function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** Measures one video element's glass-to-glass latency against `clock` (a ServerClock). */
export class GlassReadout {
  constructor(video, clock) {
    this.video = video;
    this.clock = clock;
    this.stamps = []; // { media, capture } in ms, by media time
    this.samples = []; // ages of the picture on screen since the last update
    this.onScreen = null; // { capture, at }: the frame on screen (at: performance.now() ms)
    this.upcoming = null; // the frame presented next, until its display time comes
    /** The median of the samples over the last update period (ms); null when unknown. */
    this.smoothedMs = null;
    /** From the server's broadcast to this page's socket, ms (the latest stamp's). */
    this.deliveryMs = null;
    this.onChange = () => {};
  }

  /** Starts watching presented frames; updates `smoothedMs` every GLASS_READOUT_EVERY_MS. */
  start() {
    const video = this.video;
    if ('requestVideoFrameCallback' in video) {
      const onFrame = (_now, frame) => {
        // Until its display time comes, the frame before is still the one on screen.
        this.advance();
        this.upcoming = { capture: this.captureOf(frame.mediaTime), at: frame.expectedDisplayTime };
        video.requestVideoFrameCallback(onFrame);
      };
      video.requestVideoFrameCallback(onFrame);
    }
    setInterval(() => this.sample(), GLASS_SAMPLE_EVERY_MS);
    setInterval(() => this.update(), GLASS_READOUT_EVERY_MS);
  }

  /** The upcoming frame is on screen once its display time has come. */
  advance() {
    if (this.upcoming && this.upcoming.at <= performance.now()) {
      this.onScreen = this.upcoming;
      this.upcoming = null;
    }
  }

  /** When media time `mediaSeconds` was captured (server clock, ms); null without a stamp. */
  captureOf(mediaSeconds) {
    if (!this.stamps.length) return null;
    const media = mediaSeconds * 1000;
    // The latest stamp at or before the frame; before the first, the first (same arithmetic).
    let stamp = this.stamps[0];
    for (const s of this.stamps) if (s.media <= media) stamp = s;
    return stamp.capture + (media - stamp.media);
  }

  /** The latency readout: the age of the picture on screen now (ms, rounded), or null when
   *  unknown. A picture that stays on screen (a stall) grows older, as the viewer sees it; a
   *  paused player is old for a reason that is not latency, so it has no figure. */
  get glassToGlassMs() {
    const age = this.ageNow();
    return age === null ? null : Math.round(age);
  }

  /** The same, unrounded (ms); null when unknown. */
  ageNow() {
    const video = this.video;
    if (video.paused || video.readyState < HTMLMediaElement.HAVE_CURRENT_DATA) return null;
    const now = this.clock?.toServer(Date.now()) ?? null;
    if (now === null) return null;
    let capture = null;
    if ('requestVideoFrameCallback' in video) {
      this.advance();
      capture = this.onScreen?.capture ?? null;
    } else {
      // Without frame callbacks, the playhead is the frame on screen, give or take one.
      capture = this.captureOf(video.currentTime);
    }
    return capture === null ? null : now - capture;
  }

  /** Takes one sample for `smoothedMs`. */
  sample() {
    const age = this.ageNow();
    if (age !== null) this.samples.push(age);
  }

  /** A stamp from the server: `media_ms` was captured at `capture_ms` (server clock). */
  onStamp({ media_ms: media, capture_ms: capture, sent_ms: sent }) {
    if (typeof media !== 'number' || typeof capture !== 'number') return;
    const now = this.clock?.toServer(Date.now()) ?? null;
    if (typeof sent === 'number' && now !== null) this.deliveryMs = Math.round(now - sent);
    this.stamps.push({ media, capture });
    this.stamps.sort((a, b) => a.media - b.media);
    if (this.stamps.length > GLASS_STAMPS_KEPT) this.stamps.shift();
  }

  /** The stream is gone (reconnecting): its stamps mean nothing for the next. */
  reset() {
    this.stamps = [];
    this.samples = [];
    this.onScreen = null;
    this.upcoming = null;
    this.smoothedMs = null;
    this.deliveryMs = null;
    this.onChange(this);
  }

  update() {
    const before = this.smoothedMs;
    // No frame presented for a whole period (paused, stalled): no figure rather than an old one.
    this.smoothedMs = this.samples.length ? Math.round(median(this.samples)) : null;
    this.samples = [];
    if (this.smoothedMs !== before) this.onChange(this);
  }
}
