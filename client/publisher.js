// lenscast's publisher: records a MediaStream as WebM and uploads it over /ws/publish
// (messages and close codes described in constants.js), one broadcast at a time. It knows
// nothing of the page, which learns what it does from `state` and `onChange`.
//
// The recorder is WebCodecs (codec-recorder.js) where the browser has it, as it uploads each
// frame as soon as it is encoded, and MediaRecorder otherwise. The server parses the upload as
// one continuous WebM byte stream, so chunks go out as they come, in order, wherever the
// recorder happened to cut them.

import {
  CLOSE,
  CLOSE_REASON_MAX,
  KEYFRAME_INTERVAL_MS,
  MAX_UNSENT_BYTES,
  MESSAGE,
  parseMessage,
  PUBLISH_PATH,
  PUBLISH_REFUSALS,
  RECORDER_MIMES,
  STOP_FLUSH_MS,
  TIMESLICE_MS,
  VIDEO_BITS_PER_SECOND,
} from './constants.js';
import { CodecRecorder, codecRecorderSupports } from './codec-recorder.js';
import { ServerClock } from './server-clock.js';

/** The recorders a page may ask for: `auto` takes WebCodecs where it works. */
export const RECORDERS = Object.freeze(['auto', 'webcodecs', 'mediarecorder']);

/** The recorder mime type to use: '' for the browser's default, null without MediaRecorder. */
function chooseMime(hasAudio) {
  if (!window.MediaRecorder) return null;
  const usable = RECORDER_MIMES.filter((mime) => hasAudio || !mime.includes('opus'));
  return usable.find((mime) => MediaRecorder.isTypeSupported(mime)) ?? '';
}

/**
 * Publishes with the publish `token`. `state` holds what the presenter is doing, and
 * `onChange(state)` runs whenever that may have changed:
 *   state: idle | connecting | live | stopping | refused | disconnected
 *   reason: why refused or disconnected
 *   bytesSent, lastStats (the server's last "stats" message), mime (what the recorder records),
 *   recorder (webcodecs | mediarecorder: which one records)
 * `recorder` (one of RECORDERS) chooses the recorder; `auto` falls back to MediaRecorder.
 */
export class Publisher {
  /** A publisher that has not started. */
  constructor(token, onChange = () => {}, { recorder = 'auto' } = {}) {
    this.token = token;
    this.onChange = onChange;
    this.recorderChoice = recorder;
    this.state = {
      state: 'idle',
      reason: null,
      bytesSent: 0,
      lastStats: null,
      mime: null,
      recorder: null,
    };
    this.broadcast = null; // the current { ws, recorder, ... }, or null when idle
  }

  /** True from `start()` until the broadcast has ended. */
  get busy() {
    return this.broadcast !== null;
  }

  /** True once Stop or a failure has begun ending the broadcast. */
  get stopping() {
    return this.broadcast?.stopping ?? false;
  }

  /**
   * Starts a broadcast, replacing the live presenter if `takeover`. The socket opens first;
   * once the server has accepted it, `record()` gives what to record: `{ stream, ownTracks }`,
   * where `ownTracks` were made for this broadcast alone and are stopped when it ends.
   */
  start({ takeover, record }) {
    if (this.broadcast) return;
    const session = {
      takeover,
      ws: null,
      recorder: null,
      tracks: [],
      opened: false,
      stopping: false,
      failure: null,
      clock: null,
      recordStart: null, // Date.now() when media time 0 was captured, about
    };
    const ws = new WebSocket(this.publishUrl(session, location.protocol === 'https:' ? 'wss:' : 'ws:'));
    session.ws = ws;
    session.clock = new ServerClock((text) => ws.readyState === WebSocket.OPEN && ws.send(text));
    session.clock.onChange = () => this.sendCaptureOrigin(session);
    this.broadcast = session;
    Object.assign(this.state, { bytesSent: 0, lastStats: null, reason: null });
    this.setState('connecting');
    // Events from a session we already left must not touch the next one.
    ws.onopen = () => {
      if (this.broadcast !== session) return;
      session.opened = true;
      session.clock.start();
      this.startRecording(session, record()).catch((err) =>
        this.fail(session, 'refused', `cannot record: ${err.message}`),
      );
    };
    ws.onmessage = (event) => {
      if (this.broadcast === session && typeof event.data === 'string') this.onText(session, event.data);
    };
    // An error is always followed by close, so close alone handles both.
    ws.onclose = (event) => this.broadcast === session && this.onClose(session, event);
  }

  /** Stop: the recorder hands over its last chunk, then the socket closes normally. */
  stop() {
    const session = this.broadcast;
    if (!session || session.stopping) return;
    session.stopping = true;
    this.setState('stopping');
    if (session.recorder?.state === 'recording') {
      session.recorder.stop();
      // Should the recorder never say it stopped, close anyway.
      setTimeout(() => session.ws.close(CLOSE.NORMAL, 'presenter stopped'), STOP_FLUSH_MS);
    } else {
      session.ws.close(CLOSE.NORMAL, 'presenter stopped');
    }
  }

  publishUrl(session, scheme) {
    const url = new URL(PUBLISH_PATH, location.href);
    url.protocol = scheme;
    url.searchParams.set('token', this.token);
    if (session.takeover) url.searchParams.set('takeover', '1');
    return url.href;
  }

  async startRecording(session, { stream, ownTracks }) {
    session.tracks = ownTracks;
    const useCodecs =
      this.recorderChoice !== 'mediarecorder' && (await codecRecorderSupports(stream));
    // Stop may have been pressed, or the socket lost, while the browser answered.
    if (this.broadcast !== session || session.stopping) {
      for (const track of ownTracks) track.stop();
      return;
    }
    if (useCodecs) {
      this.startCodecRecorder(session, stream);
      return;
    }
    if (this.recorderChoice === 'webcodecs') {
      this.fail(session, 'refused', 'this browser cannot record with WebCodecs (VP8 and Opus)');
      return;
    }
    const mime = chooseMime(stream.getAudioTracks().length > 0);
    if (mime === null) {
      this.fail(session, 'refused', 'this browser has no MediaRecorder');
      return;
    }
    // A video-only mime type cannot take the microphone's track as well.
    const tracks = /opus/.test(mime) || !/codecs=/.test(mime) ? stream.getTracks() : stream.getVideoTracks();
    let recorder;
    try {
      recorder = new MediaRecorder(new MediaStream(tracks), {
        mimeType: mime,
        videoBitsPerSecond: VIDEO_BITS_PER_SECOND,
        videoKeyFrameIntervalDuration: KEYFRAME_INTERVAL_MS,
      });
      this.wireRecorder(session, recorder, 'recorder');
      recorder.start(TIMESLICE_MS);
      // The recording's timestamps count from its first frame: the first the track delivers
      // after start(), on average half a frame interval from now (measured against the ?clock=1
      // strip at 30 fps: 4-41 ms later, 19 ms on average). That is the best the page can know
      // of when media time 0 was captured.
      const fps = tracks.find((track) => track.kind === 'video')?.getSettings().frameRate || 30;
      session.recordStart = Date.now() + 500 / fps;
      this.sendCaptureOrigin(session);
    } catch (err) {
      this.fail(session, 'refused', `cannot record ${mime || 'WebM'}: ${err.message}`);
      return;
    }
    session.recorder = recorder;
    this.state.mime = recorder.mimeType || mime;
    this.state.recorder = 'mediarecorder';
    this.setState('live');
  }

  /** Sends what `recorder` (either kind) hands over; its end or error ends the session. */
  wireRecorder(session, recorder, what) {
    recorder.ondataavailable = (event) => this.send(session, event.data);
    recorder.onerror = (event) => this.fail(session, 'disconnected', `${what} error: ${event.error?.message}`);
    // After Stop the last chunk has been handed over by now; otherwise the camera went away.
    recorder.onstop = () => {
      if (session.stopping) session.ws.close(CLOSE.NORMAL, 'presenter stopped');
      else this.fail(session, 'disconnected', 'the recorder stopped (camera gone?)');
    };
  }

  startCodecRecorder(session, stream) {
    const recorder = new CodecRecorder(stream, {
      videoBitsPerSecond: VIDEO_BITS_PER_SECOND,
      keyFrameIntervalMs: KEYFRAME_INTERVAL_MS,
    });
    this.wireRecorder(session, recorder, 'encoder');
    // Media time 0 is the first frame's capture, known once it is in.
    recorder.onorigin = (dateMs) => {
      session.recordStart = dateMs;
      this.sendCaptureOrigin(session);
    };
    recorder.start();
    session.recorder = recorder;
    this.state.mime = recorder.mimeType;
    this.state.recorder = 'webcodecs';
    this.setState('live');
  }

  /** Uploads a recorder's chunk: MediaRecorder's Blob or the WebCodecs recorder's bytes. */
  send(session, data) {
    const { ws } = session;
    const size = data.size ?? data.byteLength;
    if (!size || ws.readyState !== WebSocket.OPEN) return;
    // Unsent data only grows on a link slower than the recording: better to stop than to lag.
    if (ws.bufferedAmount > MAX_UNSENT_BYTES) {
      const waiting = (ws.bufferedAmount / 1024 / 1024).toFixed(1);
      this.fail(session, 'disconnected', `upload too slow (${waiting} MB not yet sent)`);
      return;
    }
    ws.send(data);
    this.state.bytesSent += size;
    this.changed();
  }

  /** Ends a session on our side with a state and a reason for the user. */
  fail(session, state, reason) {
    if (this.broadcast !== session || session.failure) return;
    session.failure = { state, reason };
    session.stopping = true;
    stopRecorder(session);
    session.ws.close(CLOSE.NORMAL, reason.slice(0, CLOSE_REASON_MAX));
    // Show it at once; the close event, when it comes, keeps what was shown.
    this.state.reason = reason;
    this.setState(state);
  }

  async onClose(session, event) {
    stopRecorder(session);
    let state = 'disconnected';
    let reason = null;
    if (session.failure) {
      ({ state, reason } = session.failure);
    } else if (session.stopping) {
      state = 'idle';
    } else if (!session.opened) {
      // A refusal before the upgrade reaches the page only as a failed connection: ask again
      // over plain HTTP to learn the status code and the server's reason.
      state = 'refused';
      reason = await this.whyRefused(session);
    } else if (event.code === CLOSE.NORMAL || event.code === CLOSE.GOING_AWAY) {
      reason = event.reason || 'the server ended the broadcast';
    } else if (event.code === CLOSE.ABNORMAL) {
      reason = 'connection lost';
    } else {
      state = 'refused';
      reason = `${event.reason || 'no reason given'} (close code ${event.code})`;
    }
    this.broadcast = null;
    this.state.reason = reason;
    this.setState(state);
  }

  async whyRefused(session) {
    try {
      const response = await fetch(this.publishUrl(session, location.protocol), { cache: 'no-store' });
      // Only these statuses come from the publish rules; anything else is about the plain GET.
      if (PUBLISH_REFUSALS.includes(response.status)) {
        return `${response.status} ${(await response.text()).trim()}`;
      }
      return 'refused or unreachable';
    } catch {
      return 'refused or unreachable (no answer from the server)';
    }
  }

  onText(session, text) {
    const msg = parseMessage(text);
    if (msg?.type === MESSAGE.PONG) session.clock.onPong(msg);
    // Other message types are for newer pages; ignoring them keeps old pages working.
    if (msg?.type !== MESSAGE.STATS) return;
    this.state.lastStats = msg;
    this.changed();
  }

  /** Tells the server when media time 0 was captured, on its clock (for the latency readout),
   *  once both are known, and again whenever the clock estimate improves. */
  sendCaptureOrigin(session) {
    const origin = session.recordStart === null ? null : session.clock.toServer(session.recordStart);
    if (origin === null || session.ws.readyState !== WebSocket.OPEN) return;
    session.ws.send(JSON.stringify({ type: MESSAGE.CAPTURE, origin_ms: origin }));
  }

  setState(state) {
    this.state.state = state;
    this.changed();
  }

  changed() {
    this.onChange(this.state);
  }
}

/** Stops the recorder without the usual end-of-recording handling, and the session's own tracks. */
function stopRecorder(session) {
  session.clock?.stop();
  const { recorder } = session;
  if (recorder instanceof CodecRecorder) {
    recorder.abort();
  } else if (recorder && recorder.state !== 'inactive') {
    recorder.onstop = null;
    recorder.ondataavailable = null;
    recorder.stop();
  }
  for (const track of session.tracks) track.stop();
}
