// lenscast's HLS player: the server's H.264 mirror (1 s MPEG-TS segments of ~200 ms Low-Latency
// HLS parts, a sliding playlist with PROGRAM-DATE-TIME), for browsers whose MSE cannot take
// WebM, for /?hls and for hls.html.
// hls.js where it works, the browser's own HLS where only that does.

import {
  HLS_JS,
  HLS_JS_CONFIG,
  HLS_MEDIA_RETRY_MS,
  HLS_MIME,
  HLS_PLAYLIST,
  HLS_RETRY_MAX_MS,
  HLS_RETRY_MIN_MS,
  HLS_STALL_FORGIVE_MS,
  HLS_JUMP_BEHIND_S,
  HLS_JUMP_EVERY_MS,
  CLOCK_SYNC_EVERY_MS,
  STATUS_PATH,
  TICK_MS,
} from './constants.js';
import { ServerClock } from './server-clock.js';

/**
 * Plays the HLS mirror in `video`: with hls.js where it works, natively where only that does.
 * Returns the player's state, kept up to date, and calls `onChange(state)` whenever it may have
 * changed (a few times a second while playing):
 *   engine: 'hls.js' | 'native' | null while choosing
 *   state: loading | waiting | playing | recovering | unsupported
 *   behindLive: seconds from the picture on screen to now, from the playlist's
 *     PROGRAM-DATE-TIME (the server's clock: exact when both run on one machine); falls back to
 *     edgeLatency without dates
 *   edgeLatency: seconds behind the newest end of the playlist, as the player estimates it
 *   buffered: seconds of media ahead of the playhead
 *   shownDateMs: the PROGRAM-DATE-TIME of the picture on screen (ms; server clock), or null
 *   glassToGlassMs: the latency readout: the age of the picture on screen on the server's clock
 *     (synced over /api/status, so right whatever this machine's clock says), plus the part
 *     before the mirror (capture to arrival, arrival to broadcast, from /api/status); or null
 *   recoveries, error, autoplayRefused
 */
export function playHls(video, onChange = () => {}) {
  const state = {
    engine: null,
    state: 'loading',
    behindLive: null,
    edgeLatency: null,
    buffered: null,
    // These two are worked out when read, so that they are as fresh as the clock they read.
    get shownDateMs() {
      return shownDate();
    },
    get glassToGlassMs() {
      const now = clock.toServer(Date.now());
      const shown = shownDate();
      return now === null || shown === null || video.paused ? null : Math.round(now - shown + upstreamMs);
    },
    recoveries: 0,
    error: null,
    autoplayRefused: false,
  };
  const changed = () => onChange(state);
  let hls = null;
  let retryMs = HLS_RETRY_MIN_MS;
  let lastMediaRecovery = 0;
  let lastTime = null;
  let lastStall = null; // when hls.js last ran dry and raised its target latency
  let lastJump = 0; // when the player last jumped to the live edge

  function tryPlay() {
    video.play().then(
      () => (state.autoplayRefused = false),
      (err) => {
        if (err.name === 'NotAllowedError') state.autoplayRefused = true;
        changed();
      },
    );
  }

  /** Something went wrong that waiting and `retry` can fix: say so, then retry with backoff. */
  function recover(why, retry) {
    console.warn(`lenscast: HLS ${why}; retrying in ${retryMs} ms`);
    state.state = 'recovering';
    state.error = why;
    state.recoveries++;
    changed();
    setTimeout(retry, retryMs);
    retryMs = Math.min(retryMs * 2, HLS_RETRY_MAX_MS);
  }

  function startHlsJs() {
    const Hls = window.Hls;
    const instance = new Hls(HLS_JS_CONFIG);
    hls = instance;
    instance.on(Hls.Events.MANIFEST_PARSED, tryPlay);
    instance.on(Hls.Events.ERROR, (_event, data) => {
      if (data.details === Hls.ErrorDetails.BUFFER_STALLED_ERROR) lastStall = Date.now();
      if (!data.fatal || hls !== instance) return; // hls.js retries non-fatal errors itself
      const why = `${data.type} ${data.details}`;
      const now = Date.now();
      if (data.type === Hls.ErrorTypes.MEDIA_ERROR && now - lastMediaRecovery > HLS_MEDIA_RETRY_MS) {
        // A decode or append error: a fresh MediaSource usually plays on.
        lastMediaRecovery = now;
        console.warn(`lenscast: HLS ${why}; recovering the media element`);
        state.recoveries++;
        instance.recoverMediaError();
      } else if (data.type === Hls.ErrorTypes.NETWORK_ERROR && instance.levels.length) {
        // The server is away or a segment is gone: load again from the playlist.
        recover(why, () => hls === instance && instance.startLoad());
      } else {
        // No playlist yet (the mirror writes its first one a second after starting), repeated
        // media errors or anything else: start over with a new player.
        instance.destroy();
        hls = null;
        recover(why, startHlsJs);
      }
    });
    instance.loadSource(HLS_PLAYLIST);
    instance.attachMedia(video);
  }

  function startNative() {
    video.addEventListener('loadedmetadata', tryPlay);
    video.addEventListener('error', () => {
      // Setting src again loads the playlist afresh, at its live edge.
      recover(`media error ${video.error?.code} ${video.error?.message ?? ''}`.trim(), () => {
        video.src = HLS_PLAYLIST;
      });
    });
    video.src = HLS_PLAYLIST;
  }

  // The server's clock, from /api/status (HLS has no socket to ping over), and the latency
  // before the mirror that the playlist's dates do not see.
  const clock = new ServerClock(() => {});
  let upstreamMs = 0;
  async function syncClock() {
    const sent = Date.now();
    try {
      const response = await fetch(STATUS_PATH, { cache: 'no-store' });
      const status = await response.json();
      clock.onPong({ t: sent, server_ms: status.server_ms });
      const latency = status.latency ?? {};
      upstreamMs = (latency.capture_to_arrival_ms_p50 ?? 0) + (latency.arrival_to_broadcast_ms_p50 ?? 0);
    } catch {
      // The server is away: keep the last estimate.
    }
  }

  /** The PROGRAM-DATE-TIME of the picture on screen, ms; null without dates. */
  function shownDate() {
    let shown = null;
    if (hls) {
      shown = hls.playingDate?.getTime() ?? null;
    } else if (video.getStartDate) {
      // Safari: the date at media time 0 (NaN when the playlist has no dates).
      const start = video.getStartDate().getTime();
      if (Number.isFinite(start)) shown = start + video.currentTime * 1000;
    }
    return shown;
  }

  /** Seconds from the picture on screen to now, by PROGRAM-DATE-TIME; null without dates. */
  function secondsSinceShown() {
    const shown = shownDate();
    return shown === null ? null : Math.max(0, (Date.now() - shown) / 1000);
  }

  /** After a calm spell, undoes the target latency that hls.js added for past stalls. */
  function forgiveStalls() {
    if (!hls || lastStall === null || video.paused || Date.now() - lastStall < HLS_STALL_FORGIVE_MS) return;
    const holdBack = hls.latestLevelDetails?.partHoldBack;
    // Setting the target resets hls.js's stall count; it then catches up by playing faster.
    if (holdBack) hls.targetLatency = holdBack;
    lastStall = null;
  }

  /**
   * Jumps to the live edge when far behind it. hls.js speeds up only within one target
   * duration of its target latency; further behind it takes for a viewer who chose to watch
   * the past, and stays there (its own jump, liveMaxLatencyDurationCount, cannot be had
   * without liveSyncDurationCount, which would replace the playlist's PART-HOLD-BACK).
   */
  function jumpWhenFarBehind() {
    if (!hls || video.paused || Date.now() - lastJump < HLS_JUMP_EVERY_MS) return;
    const target = hls.targetLatency;
    const sync = hls.liveSyncPosition;
    if (!target || sync === null || !(hls.latency > target + HLS_JUMP_BEHIND_S)) return;
    console.warn(`hls: ${hls.latency.toFixed(1)} s behind the live edge; jumping to it`);
    lastJump = Date.now();
    video.currentTime = sync;
  }

  function measure() {
    forgiveStalls();
    jumpWhenFarBehind();
    const t = video.currentTime;
    const seekable = video.seekable;
    if (hls) state.edgeLatency = hls.latency || null;
    else if (seekable.length) state.edgeLatency = Math.max(0, seekable.end(seekable.length - 1) - t);
    state.behindLive = secondsSinceShown() ?? state.edgeLatency;
    state.buffered = null;
    for (let i = 0; i < video.buffered.length; i++) {
      if (video.buffered.start(i) <= t + 0.1 && t < video.buffered.end(i)) state.buffered = video.buffered.end(i) - t;
    }
    if (!video.paused && lastTime !== null && t > lastTime) {
      // Pictures are moving again: whatever went wrong is over.
      state.state = 'playing';
      state.error = null;
      state.autoplayRefused = false;
      retryMs = HLS_RETRY_MIN_MS;
    } else if (state.state === 'playing') {
      state.state = 'waiting';
    }
    lastTime = t;
    changed();
  }

  (async () => {
    state.engine = await chooseHlsEngine(video);
    if (state.engine === 'hls.js') startHlsJs();
    else if (state.engine === 'native') startNative();
    else {
      state.state = 'unsupported';
      state.error = window.Hls
        ? 'This browser can play neither the WebM stream nor HLS (no Media Source Extensions).'
        : `This browser has no HLS of its own, and hls.js did not load from ${HLS_JS}.`;
      changed();
      return;
    }
    setInterval(measure, TICK_MS);
    syncClock();
    setInterval(syncClock, CLOCK_SYNC_EVERY_MS);
  })();
  return state;
}

/**
 * 'hls.js' or 'native' for the HLS mirror, or null if neither can play it. Chrome answers
 * "maybe" for HLS too but its own player fails on some streams (hls.js issue #7827), so native
 * is first only where Safari's ManagedMediaSource says this is Safari, and otherwise the last
 * resort (an iPhone without MSE). Loads hls.js when the page has not.
 */
async function chooseHlsEngine(video) {
  const native = video.canPlayType(HLS_MIME) !== '';
  if (native && 'ManagedMediaSource' in window) return 'native';
  if (!window.Hls) {
    try {
      await loadScript(HLS_JS);
    } catch (err) {
      console.warn(`lenscast: ${err.message}`);
    }
  }
  if (window.Hls?.isSupported()) return 'hls.js';
  return native ? 'native' : null;
}

/** Runs a classic script (hls.js is a UMD build that defines window.Hls). */
function loadScript(src) {
  return new Promise((resolve, reject) => {
    const script = document.createElement('script');
    script.src = src;
    script.onload = resolve;
    script.onerror = () => reject(new Error(`cannot load ${src}`));
    document.head.append(script);
  });
}
