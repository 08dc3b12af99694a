// clients/js in headless Chromium (Debian's, driven by playwright-core), driven by
// tests/js_client.rs. The page, the client module and the engine share one origin: nginx.
//
//   node client_browser.mjs fallback <nginx host:port> <ingest socket>
//
// fallback: nginx passes /ws without its upgrade, so the client's WebSocket fails; it
// must fall back to SSE, receive 50 events exactly once and in order, and a second client
// on the page must start with SSE at once (what worked is remembered).
//
// Prints one `RESULT {...}` line; a failure prints to stderr and exits 1.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { Publisher, fail, Failure, sleep, waitFor } from './common.mjs';

const OVERALL_MS = 60_000;
const EXECUTABLE = process.env.CHROMIUM || '/usr/bin/chromium';
const ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
const TOPIC = 'jb';

/** Launches Chromium on a fresh profile and opens `url`. */
export async function openPage(url, extraArgs = []) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'ringcast-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: EXECUTABLE, headless: true, args: [...ARGS, ...extraArgs], timeout: 20_000,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(15_000);
  const logs = [];
  page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
  await page.goto(url);
  await page.waitForFunction(() => window.rcReady === true);
  return {
    page,
    logs,
    version: context.browser()?.version() ?? 'unknown',
    close: async () => {
      await context.close().catch(() => {});
      fs.rmSync(profile, { recursive: true, force: true });
    },
  };
}

const view = (page, name) => page.evaluate((n) => {
  const r = window.rc[n];
  return {
    messages: r.messages, resets: r.resets, states: r.states,
    transport: r.client.transport, state: r.client.state, ws: window.rcWsAttempts - r.wsBefore,
  };
}, name);

async function fallback(addr, ingest) {
  const browser = await openPage(`http://${addr}/page/client.html`);
  const { page } = browser;
  try {
    const options = { topics: [TOPIC], transports: ['websocket', 'sse', 'poll'] };
    await page.evaluate((o) => window.rcStart('first', o), options);
    await waitFor('the first client open', async () => (await view(page, 'first')).state === 'open', 20_000);
    const pub = await Publisher.connect(ingest);
    const want = [];
    for (let i = 0; i < 50; i++) {
      const data = i % 5 === 0 ? `event ${i}\nline two` : `event ${i}`;
      want.push({ id: await pub.publish(TOPIC, data), topic: TOPIC, event: null, data });
    }
    pub.close();
    await waitFor('50 events in the page', async () => (await view(page, 'first')).messages.length >= 50, 20_000);
    await sleep(400);
    const first = await view(page, 'first');
    const got = JSON.stringify(first.messages);
    if (got !== JSON.stringify(want)) fail(`the page received\n${got}\nbut should have received exactly\n${JSON.stringify(want)}`);
    await page.evaluate((o) => window.rcStart('second', o), options);
    await waitFor('the second client open', async () => (await view(page, 'second')).state === 'open', 20_000);
    const second = await view(page, 'second');
    return {
      browser: browser.version,
      transport: first.transport,
      messages: String(first.messages.length),
      ws_attempts: String(first.ws),
      states: first.states.map((s) => `${s.state}/${s.transport}`).join(','),
      'second.transport': second.transport,
      'second.ws_attempts': String(second.ws),
      ok: 'yes',
    };
  } catch (e) {
    console.error(`page console:\n${browser.logs.join('\n')}`);
    throw e;
  } finally {
    await browser.close();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [mode, addr, ingest] = process.argv.slice(2);
  const timer = setTimeout(() => {
    console.error(`FAIL: ${mode} did not finish within ${OVERALL_MS} ms`);
    process.exit(1);
  }, OVERALL_MS);
  timer.unref();
  let code = 0;
  try {
    if (mode !== 'fallback') fail(`unknown mode ${mode}`);
    console.log(`RESULT ${JSON.stringify(await fallback(addr, ingest))}`);
  } catch (e) {
    console.error(`FAIL (${mode}): ${e instanceof Failure ? e.message : e.stack}`);
    code = 1;
  }
  process.exit(code);
}
