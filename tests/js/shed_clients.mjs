// EventSource clients shed by `--max-conns` (tests/admission.rs):
//
//   node shed_clients.mjs chromium <url> <page-port>   Chromium's EventSource
//   node shed_clients.mjs lib <url>                     npm eventsource
//
// Opens the stream and waits for one message event. A shed stream is a `200` that ends at
// once with a `retry:`, so the client must reconnect by itself rather than give up.
// Prints `RESULT {"errors": n, "opens": n, "data": "..."}` once a message arrives, or
// `ERROR <what>` and exits 1 if the client gives the stream up. Bounded at 40 s.
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { EventSource } from 'eventsource';
import { chromium } from 'playwright-core';

const EXECUTABLE = process.env.CHROMIUM || '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
setTimeout(() => { console.log('ERROR timed out'); process.exit(1); }, 40_000).unref();

const [mode, url, pagePort] = process.argv.slice(2);

function watch(es, state) {
  es.onopen = () => { state.opens += 1; };
  es.onerror = () => { state.errors += 1; if (es.readyState === 2) state.failed = true; };
  es.onmessage = (e) => { state.data = e.data; };
}

async function until(read) {
  for (;;) {
    const s = await read();
    if (s.failed) { console.log(`ERROR the client gave the stream up after ${s.errors} errors`); process.exit(1); }
    if (s.data !== null) return s;
    await new Promise((r) => setTimeout(r, 50));
  }
}

function report(s) {
  console.log(`RESULT ${JSON.stringify({ errors: s.errors, opens: s.opens, data: s.data })}`);
}

if (mode === 'lib') {
  const state = { errors: 0, opens: 0, failed: false, data: null };
  const es = new EventSource(url);
  watch(es, state);
  report(await until(async () => state));
  es.close();
  process.exit(0);
}

const server = http.createServer((_, res) => { res.writeHead(200, { 'Content-Type': 'text/html' }); res.end('<!doctype html><title>rc</title>'); });
await new Promise((r) => server.listen(Number(pagePort), '127.0.0.1', r));
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'ringcast-shed-chromium-'));
const context = await chromium.launchPersistentContext(profile, { executablePath: EXECUTABLE, headless: true, args: ARGS, timeout: 15_000 });
try {
  const page = context.pages()[0] ?? (await context.newPage());
  await page.goto(`http://127.0.0.1:${pagePort}/`);
  // The same handlers as watch(), in the page.
  await page.evaluate((u) => {
    const state = { errors: 0, opens: 0, failed: false, data: null };
    window.state = state;
    const es = new EventSource(u);
    es.onopen = () => { state.opens += 1; };
    es.onerror = () => { state.errors += 1; if (es.readyState === 2) state.failed = true; };
    es.onmessage = (e) => { state.data = e.data; };
  }, url);
  report(await until(() => page.evaluate(() => window.state)));
} finally {
  await context.close();
  server.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
process.exit(0);
