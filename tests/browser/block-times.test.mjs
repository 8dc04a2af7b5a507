// The player's reader of block times (client/block-times.js) against parsers we did not write:
// what it reads off the real server's /ws/view messages, and off a file with another timescale
// and BlockGroups, must be what mkvinfo reads. Needs target/release/lenscast (or LENSCAST_BIN)
// and MKVToolNix (mkvinfo, mkvmerge).

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import { BlockTimes } from '../../client/block-times.js';
import { REPO_ROOT, startServer, withServerAndBrowser } from './helpers.mjs';

/** Seconds as whole µs (what is left of a time in ns once float arithmetic has had it). */
const micros = (seconds) => Math.round(seconds * 1e6);

/** mkvinfo's blocks of `file` (SimpleBlocks and Blocks in BlockGroups), in file order, as
 *  "track@µs". (Not ffprobe: it moves Opus packets back by the track's CodecDelay.) */
function mkvinfoBlocks(file) {
  const info = spawnSync('mkvinfo', ['-v', file], { encoding: 'utf8', maxBuffer: 64 << 20 });
  assert.equal(info.status, 0, `mkvinfo: ${info.stdout}${info.stderr}`);
  const blocks = [];
  for (const match of info.stdout.matchAll(/\+ (?:Simple block|Block): .*track number (\d+), .*timestamp (\d+):(\d+):(\d+)\.(\d{9})/g)) {
    const [, track, hours, minutes, seconds, nanos] = match;
    const ns = ((Number(hours) * 60 + Number(minutes)) * 60 + Number(seconds)) * 1e9 + Number(nanos);
    blocks.push(`${track}@${Math.round(ns / 1000)}`);
  }
  return blocks;
}

/** Ours as mkvinfo's are shown. */
const shown = (blocks) => blocks.map((block) => `${block.track}@${micros(block.seconds)}`);

/** In the page: every /ws/view message for `seconds`, each as base64. */
async function viewMessages(seconds) {
  const ws = new WebSocket(new URL('/ws/view', location.href).href.replace(/^http/, 'ws'));
  ws.binaryType = 'arraybuffer';
  const messages = [];
  ws.onmessage = ({ data }) => {
    if (typeof data === 'string') return;
    const bytes = new Uint8Array(data);
    let text = '';
    for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    messages.push(btoa(text));
  };
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  ws.close();
  return messages;
}

test("block times: what the player reads off the server's messages is what mkvinfo reads", { timeout: 90000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lenscast-block-times-'));
  try {
    await withServerAndBrowser(
      () => startServer('face-opus.webm'),
      async (server, context) => {
        const page = await context.newPage();
        await page.goto(new URL('/healthz', server.url).href);
        const messages = (await page.evaluate(viewMessages, 4)).map((b64) => Buffer.from(b64, 'base64'));
        const file = path.join(dir, 'view.webm');
        fs.writeFileSync(file, Buffer.concat(messages));

        // Two readers over the same messages: the player's call (earliest) against every block.
        const reader = new BlockTimes();
        const player = new BlockTimes();
        const ours = [];
        for (const message of messages) {
          const blocks = reader.blocks(message);
          ours.push(...shown(blocks));
          const earliest = blocks.length ? Math.min(...blocks.map((block) => block.seconds)) : null;
          assert.equal(player.earliest(message), earliest);
        }
        const theirs = mkvinfoBlocks(file);
        assert.ok(theirs.length > 100, `mkvinfo read ${theirs.length} blocks in 4 s of video and audio`);
        assert.deepEqual(ours, theirs);
      },
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('block times: a file with a 100 µs timescale and BlockGroups, whole or cut anywhere, as mkvinfo reads it', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lenscast-block-times-'));
  try {
    const file = path.join(dir, 'scaled.mkv');
    const source = path.join(REPO_ROOT, 'fixtures', 'vp8-opus.webm');
    // mkvmerge writes the last block of each track as a BlockGroup with a BlockDuration.
    const mkvmerge = spawnSync('mkvmerge', ['-q', '-o', file, '--timestamp-scale', '100000', source], { encoding: 'utf8' });
    assert.ok(mkvmerge.status === 0 || mkvmerge.status === 1, `mkvmerge: ${mkvmerge.stdout}${mkvmerge.stderr}`);
    const bytes = fs.readFileSync(file);
    const theirs = mkvinfoBlocks(file);
    assert.ok(theirs.length > 30, `mkvinfo read ${theirs.length} blocks`);
    assert.ok(/Timestamp scale: 100000\n/.test(spawnSync('mkvinfo', [file], { encoding: 'utf8' }).stdout), 'the timescale was set');
    assert.deepEqual(shown(new BlockTimes().blocks(bytes)), theirs);
    // As MediaRecorder's chunks or any byte stream come: cut every n bytes, headers too.
    for (const n of [1, 2, 3, 7, 64, 1000]) {
      const reader = new BlockTimes();
      const ours = [];
      for (let at = 0; at < bytes.length; at += n) ours.push(...shown(reader.blocks(bytes.subarray(at, at + n))));
      assert.deepEqual(ours, theirs, `cut every ${n} bytes`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('block times: after bytes it cannot follow it reads nothing until a new stream starts', () => {
  const bytes = fs.readFileSync(path.join(REPO_ROOT, 'fixtures', 'vp8-opus.webm'));
  const whole = shown(new BlockTimes().blocks(bytes));
  const reader = new BlockTimes();
  // A zero byte starts no EBML number: what follows is not read as blocks, however it looks.
  assert.deepEqual(reader.blocks(Buffer.concat([Buffer.from([0, 0xa3, 0x84, 0x81, 0, 5, 0x80]), bytes.subarray(0, 2000)])), []);
  assert.deepEqual(reader.blocks(bytes.subarray(2000)), []);
  // A chunk that starts with an EBML header starts a new stream, read from its start.
  assert.deepEqual(shown(reader.blocks(bytes)), whole);
});
