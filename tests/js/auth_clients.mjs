// Real clients presenting ringcast subscriber tokens (tests/auth.rs):
//
//   node auth_clients.mjs lib-header     <url> <token> <n>              npm eventsource, Authorization: Bearer
//   node auth_clients.mjs chromium-query <url-with-token> <n> <page-port>   Chromium EventSource, token= in the query
//   node auth_clients.mjs chromium-cookie <url> <token> <n> <page-port>     Chromium EventSource withCredentials, cookie rc_token
//
// Prints `OPEN` once the stream is open, then `RESULT <JSON array of the ids of n message
// events>`; a refused or failed stream prints `ERROR <what>` and exits 1. Bounded at 30 s.
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { EventSource } from 'eventsource';
import { chromium } from 'playwright-core';

const EXECUTABLE = process.env.CHROMIUM || '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
setTimeout(() => { console.log('ERROR timed out'); process.exit(1); }, 30_000).unref();

const [mode, ...rest] = process.argv.slice(2);

async function untilN(getIds, n) {
  for (;;) {
    const ids = await getIds();
    if (ids.length >= n) return ids.slice(0, n);
    await new Promise((r) => setTimeout(r, 50));
  }
}

if (mode === 'lib-header') {
  const [url, token, n] = rest;
  const ids = [];
  const es = new EventSource(url, {
    fetch: (input, init) => fetch(input, { ...init, headers: { ...init.headers, Authorization: `Bearer ${token}` } }),
  });
  es.onopen = () => console.log('OPEN');
  es.onmessage = (e) => ids.push(e.lastEventId);
  es.onerror = (e) => { if (es.readyState === EventSource.CLOSED) { console.log(`ERROR closed: ${e.message ?? e.code}`); process.exit(1); } };
  const got = await untilN(async () => ids, Number(n));
  console.log(`RESULT ${JSON.stringify(got)}`);
  es.close();
  process.exit(0);
}

// Chromium: the page is served on its own port of 127.0.0.1, so the stream is cross-origin.
const [url, second, third, fourth] = rest;
const cookieToken = mode === 'chromium-cookie' ? second : null;
const n = Number(mode === 'chromium-cookie' ? third : second);
const pagePort = Number(mode === 'chromium-cookie' ? fourth : third);
const server = http.createServer((_, res) => { res.writeHead(200, { 'Content-Type': 'text/html' }); res.end('<!doctype html><title>rc</title>'); });
await new Promise((r) => server.listen(pagePort, '127.0.0.1', r));
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'ringcast-auth-chromium-'));
const context = await chromium.launchPersistentContext(profile, { executablePath: EXECUTABLE, headless: true, args: ARGS, timeout: 15_000 });
try {
  if (cookieToken) {
    // Cookies belong to a host, not a port: the engine's port on 127.0.0.1 gets it.
    await context.addCookies([{ name: 'rc_token', value: cookieToken, domain: '127.0.0.1', path: '/', sameSite: 'Lax' }]);
  }
  const page = context.pages()[0] ?? (await context.newPage());
  await page.goto(`http://127.0.0.1:${pagePort}/`);
  await page.evaluate(([u, credentials]) => {
    window.ids = []; window.opened = false; window.failed = false;
    const es = new EventSource(u, { withCredentials: credentials });
    es.onopen = () => { window.opened = true; };
    es.onmessage = (e) => window.ids.push(e.lastEventId);
    es.onerror = () => { if (es.readyState === 2) window.failed = true; };
  }, [url, cookieToken !== null]);
  for (;;) {
    const [opened, failed] = await page.evaluate(() => [window.opened, window.failed]);
    if (failed) { console.log('ERROR the browser gave the stream up'); process.exit(1); }
    if (opened) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  console.log('OPEN');
  const got = await untilN(() => page.evaluate(() => window.ids.slice()), n);
  console.log(`RESULT ${JSON.stringify(got)}`);
} finally {
  await context.close();
  server.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
process.exit(0);
