// lenscast in the browser: the wire between the pages and the server, and every tuning value,
// in one place so that the viewer and presenter pages cannot drift apart from each other or
// from the server.
//
// ## The wire (the server's side: src/http/view.rs, src/http/publish.rs, src/http/mod.rs)
//
// Text messages are JSON objects with a "type". A page ignores types it does not know (and text
// that is not JSON), so the server can add messages without breaking pages already open.
//
// GET /ws/view: the viewer's WebSocket. The server sends the stream; the page sends only the
// latency readout's messages (below).
//   text    {"type":"init","mime":"video/webm; codecs=\"vp8,opus\"","width":640,"height":480}
//           Sent before every init segment. `mime` is what MediaSource.isTypeSupported and
//           addSourceBuffer take; `width` and `height` are null when the stream has no video.
//   binary  The message right after an "init" message is that init segment (EBML header,
//           Segment, Info, Tracks). Every other binary message is media, appended as it is:
//           whatever was ready when the server woke for this viewer (one or more Cluster starts
//           and blocks, whole; never part of one).
//   A viewer's first media is a Cluster that starts with a video keyframe; one that falls
//   behind skips ahead to the next such Cluster, preceded by its init segment if it missed
//   that. Cluster timestamps only move forward, even across source changes.
//   close   1008 "viewer too slow": the socket took nothing for --viewer-timeout seconds
//           (best effort: a socket that takes nothing may not take this either).
//           1009 the page sent a message over 4 KiB; 1002 a frame that breaks RFC 6455.
//           1001 "server shutting down" (SIGTERM or Ctrl-C on the server).
//
// GET /ws/publish?token=…[&takeover=1]: the presenter's WebSocket.
//   Refused before the upgrade with a plain-text reason: 401 missing or wrong token, 403 an
//   Origin that may not publish, 409 a presenter is already live (unless takeover=1, which
//   ends the live presenter's socket instead). A browser sees only a failed WebSocket, so the
//   page sends the same URL as a plain GET, which gets the same answer.
//   binary  (page -> server) MediaRecorder's WebM, as one continuous byte stream cut anywhere:
//           a chunk may end mid-element, and the first may be a single byte.
//   text    (server -> page, every second)
//           {"type":"stats","received_bytes":N,"pipeline":{...} | null}
//           `pipeline` is null on a --passthrough server; otherwise the pipeline's figures:
//           input, presenter_connected, width, height (the output), input_codec,
//           input_width, input_height (the presenter's picture, letterboxed into the output
//           when its shape differs), decode_ms, detect_ms,
//           encode_ms, fps_in, fps_out, frames_in, frames_out, frames_dropped, decode_errors,
//           faces_last, faces_total, latency_ms_p50, latency_ms_p99.
//   close   (server -> page) always with a reason for the user:
//           1000 the upload ended normally: "presenter stopped", "presenter connection lost",
//                "another presenter took over".
//           1001 "the server is shutting down".
//           1003 the stream cannot be used: not valid live WebM (including a TimestampScale
//                outside 1 µs..1 s or a timestamp out of range), a codec error, no video track.
//           1008 policy: "no media for N s" (--presenter-idle),
//                publishing faster than real time, timestamps that jump back over 1 s or
//                ahead over 10 s, or a presenter already live (a race the check before the
//                upgrade lost).
//           (page -> server) 1000 with "presenter stopped" or why the page gave up.
//
// PUT|POST /publish?token=…[&takeover=1] takes the same WebM as a chunked body (ffmpeg, gst) and
// answers when it ends: 200 done, 400 refused (the reason), 408 no media for --presenter-idle
// seconds, 409 taken over, 503 the server is shutting down.
// GET /api/status is JSON; the viewer page reads `viewers` and `source.state` from it, and
// `latency` holds the server's part of the latency budget and the viewers' median readout.
//
// The latency readout (src/latency.rs), on both WebSockets:
//   text    (page -> server) {"type":"ping","t":<the page's Date.now()>}
//   text    (server -> page) {"type":"pong","t":<the same t>,"server_ms":<the server's clock>}
//           answered at once: the page estimates its clock's offset from the server's.
//   text    (presenter -> server) {"type":"capture","origin_ms":<server clock>}: when media
//           time 0 of the recording was captured. Sent again when the offset estimate improves.
//   text    (server -> viewer, on /ws/view?stamps=1 only: a client written before stamps may take
//           any text for an "init")
//           {"type":"stamp","media_ms":M,"capture_ms":C,"sent_ms":S} before each keyframe Cluster: media time M was captured at C (server clock; for the demo or a
//           file, when the server received it), and the server broadcast it at S.
//   text    (viewer -> server) {"type":"latency","ms":N} every few seconds: the page's estimate.
//   The presenter's "stats" message adds "viewers": {"glass_to_glass_ms_p50", "viewers_reporting"}.
//   A page may send 20 text messages a second; more are not answered.

/** Where the viewer's WebSocket is. */
export const VIEW_PATH = '/ws/view';
/** Where the presenter's WebSocket is (a plain GET there says why an upgrade was refused). */
export const PUBLISH_PATH = '/ws/publish';
/** The server's figures, as JSON. */
export const STATUS_PATH = '/api/status';
/** The HLS mirror's playlist. */
export const HLS_PLAYLIST = '/hls/live.m3u8';
/** hls.js from npm, served by lenscast (no CDN). */
export const HLS_JS = '/vendor/hls.min.js';

/** The "type" of each text message. */
export const MESSAGE = Object.freeze({
  INIT: 'init',
  STATS: 'stats',
  PING: 'ping',
  PONG: 'pong',
  CAPTURE: 'capture',
  STAMP: 'stamp',
  LATENCY: 'latency',
});

/** A text message as an object; null for text that is not a JSON object, which pages ignore. */
export function parseMessage(text) {
  try {
    const msg = JSON.parse(text);
    return msg !== null && typeof msg === 'object' ? msg : null;
  } catch {
    return null;
  }
}

/** WebSocket close codes both sides use (1006 comes from browsers, never the server). */
export const CLOSE = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  UNSUPPORTED_DATA: 1003,
  ABNORMAL: 1006,
  POLICY: 1008,
});
/** A close reason must fit in 123 bytes; the page cuts its own shorter, by characters. */
export const CLOSE_REASON_MAX = 120;
/** HTTP statuses of the publish rules; any other answer to the plain GET is about the GET. */
export const PUBLISH_REFUSALS = Object.freeze([401, 403, 409]);

// ## The viewer: both players

/** How often a player checks playback (MSE: gaps, live edge, autoplay; HLS: its figures). */
export const TICK_MS = 250;

// ## The viewer: MSE player

/** Every stream the server sends starts as VP8 (the demo, the annotated output), so this is
 *  the least a browser's MSE must take for the WebM stream. */
export const BASELINE_WEBM_MIME = 'video/webm; codecs="vp8"';
/** Seconds of played media kept, so hours of playback fit the SourceBuffer's quota. */
export const KEEP_PLAYED = 10;
/** How often played media is removed. */
export const TRIM_EVERY_MS = 5000;
/** QuotaExceededError retries before starting over. */
export const QUOTA_RETRIES = 10;
/** Wait between QuotaExceededError retries when nothing played can be removed. */
export const QUOTA_RETRY_MS = 500;
/** A viewer this far behind should rejoin at a keyframe. */
export const MAX_QUEUED_BYTES = 8 * 1024 * 1024;
/** First wait before reconnecting; doubles on every failure... */
export const BACKOFF_MIN_MS = 500;
/** ...up to this. */
export const BACKOFF_MAX_MS = 10000;

// ## The viewer: latency clock (live-edge policy)

/** Seconds behind the live edge after which the player jumps instead of catching up (at 10%
 *  faster, 1.5 s takes 15 s to make up). */
export const JUMP_BEHIND = 1.5;
/** When playback starts (a join, a reconnect), more than this behind (seconds) jumps at once. */
export const START_BEHIND = 0.4;
/** Where a jump lands, in seconds behind the live edge. */
export const JUMP_TARGET = 0.2;
/** Seconds the player keeps in hand at its lowest (just before the latest arrival of the last
 *  SLACK_WINDOW_MS, see latency-clock.js): room for what Chrome's renderer keeps (it underflows
 *  with 30-90 ms in hand) and for jitter beyond the window's. Measured when the window was 3 s: a
 *  presenter's stream (then in 100 ms recorder chunks, video and audio) in headless Chromium,
 *  60 s after the join, 3 runs each: 0.06 stalled twice a minute (p50 402-486 ms, p90 760-784
 *  ms glass to glass), 0.16 at most once (p50 380-444 ms, p90 394-458 ms); 0.12 stalled in 2 of
 *  4 20 s runs. A stall costs more than the slack it saves: Chrome rebuffers for 200-500 ms. */
export const LIVE_SLACK = 0.16;
/** Slack above (below) the target that is tolerated before speeding up (slowing down), so the
 *  rate does not flip. */
export const LIVE_SLACK_HYSTERESIS = 0.04;
/** The slack allows for the latest arrival over this long (ms): late media comes in bursts (a
 *  busy presenter, a congested network) seconds apart, and room made for one burst should last
 *  until the next. */
export const SLACK_WINDOW_MS = 20000;
/** The slack is taken as known, and acted on, once arrivals span this long (ms). */
export const SLACK_FIRST_MS = 1500;
/** Arrivals over this long (ms) after playback starts are the join's, not the stream's: the page
 *  decodes its way from the keyframe to the edge, and on a shared machine the presenter catches
 *  up on what the join's burst of work held back. Measured in headless Chromium with presenter,
 *  server and viewer on one 2-core machine, in the first 1.7 s: arrivals up to 140 ms later than
 *  any in the next 10 s (24-36 ms in three other joins). Allowed for, the worst of them held one
 *  viewer 130 ms further behind (p50 450 ms glass to glass, then 310 ms) for SLACK_WINDOW_MS.
 *  They count until SLACK_FIRST_MS of later arrivals replace them. */
export const JOIN_SETTLE_MS = 2000;
/** Gentle enough that the change in audio pitch is barely audible. */
export const CATCH_UP_RATE = 1.1;
/** Played this much slower while the slack is short of the target (less the hysteresis): room
 *  is made before a stall makes it, 100 ms a second, and at the same pitch (browsers keep it). */
export const BUILD_UP_RATE = 0.9;
/** More than this (seconds) over the target in hand is caught up faster... */
export const FAST_CATCH_UP_ABOVE = 0.3;
/** ...at this rate (browsers keep the pitch, so speech stays natural, only quicker). */
export const FAST_CATCH_UP_RATE = 1.25;

// ## The viewer: page

/** How often the page asks the server for its figures. */
export const STATUS_POLL_MS = 2000;

// ## The viewer: HLS player

/** The HLS mime type, for the native player's canPlayType. */
export const HLS_MIME = 'application/vnd.apple.mpegurl';
/** hls.js settings for the mirror's Low-Latency HLS playlist (1 s segments, ~200 ms parts). */
export const HLS_JS_CONFIG = Object.freeze({
  enableWorker: true, // demux TS off the main thread
  // Load parts and reload with blocking requests (_HLS_msn/_HLS_part). No liveSync* setting
  // here on purpose: without one, hls.js keeps the playlist's PART-HOLD-BACK (3 × PART-TARGET,
  // about 1 s) behind the newest part, which the server sizes to its parts.
  lowLatencyMode: true,
  maxLiveSyncPlaybackRate: 1.2, // play up to 20 % faster to get back to that after a stall
  // hls.js adds 1 s to its target latency on every stall (up to one segment) and never takes it
  // back: one stall on a busy machine and the player sits 2 s behind for good. Add one part
  // instead, and see HLS_STALL_FORGIVE_MS for taking it back.
  liveSyncOnStallIncrease: 0.2,
  backBufferLength: 10, // seconds of played media kept, so the buffer never fills up
});
/**
 * After this long playing without a stall, the player goes back to the playlist's hold-back
 * (hls.js then plays up to maxLiveSyncPlaybackRate until it is there again).
 */
export const HLS_STALL_FORGIVE_MS = 10000;
/** Further than this behind hls.js's target latency, the player jumps to the live edge. */
export const HLS_JUMP_BEHIND_S = 1;
/** ...at most once this often (ms), so a player that cannot keep up does not jump in a loop. */
export const HLS_JUMP_EVERY_MS = 10000;
/** First wait before the HLS player retries; doubles on every failure... */
export const HLS_RETRY_MIN_MS = 1000;
/** ...up to this. */
export const HLS_RETRY_MAX_MS = 10000;
/** A second media error sooner than this after the last: start over. */
export const HLS_MEDIA_RETRY_MS = 5000;

// ## The latency readout

/** Clock pings when a socket opens (one answer may be slow)... */
export const CLOCK_SYNC_BURST = 5;
/** ...this far apart... */
export const CLOCK_SYNC_BURST_MS = 200;
/** ...then one this often, to follow drift and find a faster round trip. */
export const CLOCK_SYNC_EVERY_MS = 5000;
/** Clock samples kept; the fastest round trip among them sets the offset. */
export const CLOCK_SYNC_KEPT = 12;
/** How often the page takes the age of the picture on screen for its report to the server
 *  (window.lenscast.glassToGlassMs needs no sampling: it is worked out when read)... */
export const GLASS_SAMPLE_EVERY_MS = 100;
/** ...and how often the figure it reports is updated, to the median of the samples since. */
export const GLASS_READOUT_EVERY_MS = 500;
/** How often a viewer page sends that figure to the server (for the presenter's figure). */
export const GLASS_REPORT_EVERY_MS = 2000;
/** Capture stamps a viewer keeps (one per keyframe Cluster). */
export const GLASS_STAMPS_KEPT = 16;

// ## The presenter: recorder and upload

/** How often MediaRecorder (the fallback; the WebCodecs recorder hands over every frame as it
 *  is encoded) hands over a chunk: an encoded frame waits up to this long in the recorder
 *  before it can be uploaded, so less than a frame interval. `make bench-latency`,
 *  5 runs each, 2026-12-03: 100 ms gave capture to server p50 130-147 ms and glass to glass
 *  p50 404-497 ms; 20 ms gave 83-113 ms and 350-448 ms (the floor moved as much). */
export const TIMESLICE_MS = 20;
/** Viewers join at keyframes and the server follows the presenter's, so this bounds a join. */
export const KEYFRAME_INTERVAL_MS = 1000;
/** The recorder's video bitrate. */
export const VIDEO_BITS_PER_SECOND = 1_500_000;
/** More than this waiting to be sent: the link is too slow for the recording. */
export const MAX_UNSENT_BYTES = 8 * 1024 * 1024;
/** How long Stop waits for the recorder's last chunk. */
export const STOP_FLUSH_MS = 1000;
/** Recorder mime types, first supported wins. The server decodes VP8 fastest; the opus
 *  variants only with a microphone. */
export const RECORDER_MIMES = Object.freeze([
  'video/webm;codecs=vp8,opus',
  'video/webm;codecs=vp8',
  'video/webm;codecs=vp9,opus',
  'video/webm;codecs=vp9',
  'video/webm;codecs=h264,opus',
  'video/webm;codecs=h264',
  'video/webm',
]);

// ## Glass-to-glass clock (?clock=1 on both pages)
//
// The presenter stamps every frame with the wall clock (ms since midnight UTC, in 32 bits; see
// clock-stamp.js for which clock) as a strip of 16 x 4 cells of 16 x 16 px at the bottom-left,
// away from the face boxes. Rows 0-1 hold the bits, most significant first; rows 2-3 the same
// bits inverted, so a reader can tell a clean frame from one that compression smeared. Cells are
// whole 16 x 16 macroblocks in pure black or white, which survives two VP8 encodes.

/** A cell's side, in pixels. */
export const CLOCK_CELL = 16;
/** Cells in a row of the strip. */
export const CLOCK_COLUMNS = 16;
/** Bits in a stamp. */
export const CLOCK_BITS = 32;
/** The rate the presenter draws stamped frames at (and records them). */
export const CLOCK_FPS = 30;
/** How often the viewer reads a stamp off the picture. */
export const CLOCK_READ_MS = 200;
/** Readings the viewer keeps. */
export const CLOCK_SAMPLES_KEPT = 200;
/** An age above this is a misread, not latency. */
export const CLOCK_MAX_MS = 60000;
