// TLS in headless Chromium: a presenter on "another machine" (the name lenscast.test, mapped to
// 127.0.0.1) opens https://lenscast.test:PORT/present, gets its (fake) camera because the page
// is a secure context, and goes live over wss; a viewer plays it over https and wss.
// The certificate is made here with the openssl CLI and trusted by Chromium for its key only
// (--ignore-certificate-errors-spki-list), as an enterprise policy would pin it.
// `node --test tests/browser/`; needs target/release/lenscast (or LENSCAST_BIN) and openssl.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import {
  consoleLines,
  describe,
  fakeCameraArgs,
  openViewer,
  startLenscast,
  withServerAndBrowser,
  waitForPlayback,
} from './helpers.mjs';

const TOKEN = 'tls-test-token';
const NAME = 'lenscast.test';

let dir;
let cert;
let key;
let spki;
let cameraArgs;

before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lenscast-tls-'));
  cert = path.join(dir, 'cert.pem');
  key = path.join(dir, 'key.pem');
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', key, '-out', cert, '-days', '2', '-subj', `/CN=${NAME}`,
    '-addext', `subjectAltName=DNS:${NAME}`,
  ], { stdio: 'pipe' });
  // Chromium pins a certificate by the SHA-256 of its public key (SPKI), base64.
  const publicKey = new crypto.X509Certificate(fs.readFileSync(cert)).publicKey;
  spki = crypto.createHash('sha256').update(publicKey.export({ type: 'spki', format: 'der' })).digest('base64');
  cameraArgs = fakeCameraArgs('face.webm', 6);
});

after(() => fs.rmSync(dir, { recursive: true, force: true }));

test('tls: a presenter on https gets its camera and goes live over wss; a viewer watches on https', { timeout: 120000 }, async () => {
  await withServerAndBrowser(
    () => startLenscast(['--publish-token', TOKEN, '--tls-cert', cert, '--tls-key', key, '--allow-host', NAME]),
    async (server, context) => {
      // The server prints https URLs.
      assert.match(server.url, /^https:\/\/127\.0\.0\.1:\d+\/$/);
      const base = server.url.replace('127.0.0.1', NAME);

      const presenter = await openViewer(context, `${base}present?token=${TOKEN}`);
      assert.equal(await presenter.evaluate(() => window.isSecureContext), true);
      await presenter.waitForSelector('#start:not([disabled])', { timeout: 10000 });
      await presenter.click('#start');
      try {
        await presenter.waitForFunction(
          () => window.lenscastPresenter?.state === 'live' && window.lenscastPresenter.lastStats?.received_bytes > 0,
          null,
          { timeout: 20000, polling: 100 },
        );
      } catch {
        const state = await presenter.evaluate(() => window.lenscastPresenter).catch(() => null);
        assert.fail(`presenter not live over wss: ${JSON.stringify(state)}\n${consoleLines(presenter).join('\n')}`);
      }

      const viewer = await openViewer(context, base);
      await waitForPlayback(viewer, 2, 30000);
      const source = await viewer.evaluate(async () => (await (await fetch('/api/status')).json()).source);
      assert.equal(source.name, 'presenter:ws', await describe(viewer));
      assert.equal(new URL(viewer.url()).protocol, 'https:');
    },
    {
      browserArgs: [
        ...cameraArgs,
        `--host-resolver-rules=MAP ${NAME} 127.0.0.1`,
        `--ignore-certificate-errors-spki-list=${spki}`,
      ],
    },
  );
});
