// The server's clock, as seen from this page: NTP-style over the WebSocket the page already has
// (messages in constants.js). Presenter, server and viewers may be three machines whose clocks
// disagree by seconds, so the latency readout puts every time on the server's clock.
//
// The page's clock is Date.now() on purpose: that is the clock a machine with a wrong time gets
// wrong, and the one the skewed-clock tests shift.

import {
  CLOCK_SYNC_BURST,
  CLOCK_SYNC_BURST_MS,
  CLOCK_SYNC_EVERY_MS,
  CLOCK_SYNC_KEPT,
  MESSAGE,
} from './constants.js';

/** One page's estimate of (server clock − page clock). */
export class ServerClock {
  /** `send(text)` sends a text message to the server over the page's socket. */
  constructor(send) {
    this.send = send;
    /** Milliseconds to add to Date.now() for the server's clock; null until the first pong. */
    this.offsetMs = null;
    /** The round trip of the sample the offset comes from. */
    this.rttMs = null;
    this.samples = []; // { offset, rtt }, newest last
    this.timers = [];
    this.onChange = () => {};
  }

  /** Pings a few times at once (one answer may be slow), then now and then. */
  start() {
    for (let i = 0; i < CLOCK_SYNC_BURST; i++) {
      this.timers.push(setTimeout(() => this.ping(), i * CLOCK_SYNC_BURST_MS));
    }
    this.timers.push(setInterval(() => this.ping(), CLOCK_SYNC_EVERY_MS));
  }

  stop() {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers = [];
  }

  ping() {
    this.send(JSON.stringify({ type: MESSAGE.PING, t: Date.now() }));
  }

  /** Takes a pong: the sample with the shortest round trip among the latest wins, since a
   *  slow answer may have waited on either leg, and the offset's error is at most rtt / 2. */
  onPong({ t, server_ms: serverMs }) {
    const now = Date.now();
    if (typeof t !== 'number' || typeof serverMs !== 'number' || t > now) return;
    this.samples.push({ offset: serverMs - (t + now) / 2, rtt: now - t });
    if (this.samples.length > CLOCK_SYNC_KEPT) this.samples.shift();
    const best = this.samples.reduce((a, b) => (b.rtt < a.rtt ? b : a));
    const changed = best.offset !== this.offsetMs;
    this.offsetMs = best.offset;
    this.rttMs = best.rtt;
    if (changed) this.onChange(this);
  }

  /** `localMs` (a Date.now() time on this page) on the server's clock; null before a pong. */
  toServer(localMs) {
    return this.offsetMs === null ? null : localMs + this.offsetMs;
  }
}
