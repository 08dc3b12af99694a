// clients/js in headless Chromium (Debian's, driven by playwright-core), driven by
// tests/js_client.rs. The page, the client module and the engine share one origin: nginx.
//
//   node client_browser.mjs fallback <nginx host:port> <ingest socket>
//   node client_browser.mjs h2 <haproxy host:port> <ingest socket>
//   node client_browser.mjs console <admin host:port> <ingest socket> <admin token> <screenshot.png>
//
// fallback: nginx passes /ws without its upgrade, so the client's WebSocket fails; it
// must fall back to SSE, receive 50 events exactly once and in order, and a second client
// on the page must start with SSE at once (what worked is remembered).
//
// h2: through HAProxy (TLS, HTTP/2 to the browser, tuning/haproxy.cfg): 20 EventSources
// and a WebSocket (clients/js) from one page all receive; READY, the test reloads HAProxy
// (its old worker cuts the streams), RELOADED: all resume with exactly the events missed.
//
// console: the engine's --console page, loaded from the admin address with ?topic=cs:
// events published on the ingest socket appear with their ids; the page's form publishes
// with the admin token (and is refused with a wrong one); READY, the test kills and
// restarts the engine, RESTARTED <epoch>: the page shows the reset and the next event.
// A screenshot of the page is written to the given path.
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
export async function openPage(url, extraArgs = [], ready = () => window.rcReady === true) {
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
  await page.waitForFunction(ready);
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

/** The rows of the console's event table: [time, kind, id, topic, event, data]. */
const rows = (page) => page.evaluate(() => [...document.querySelectorAll('#events tr')].reverse()
  .map((tr) => [...tr.cells].map((td) => td.textContent)));

async function readLine() {
  const readline = await import('node:readline');
  const lines = readline.createInterface({ input: process.stdin });
  return new Promise((resolve) => lines.once('line', (l) => { lines.close(); resolve(l); }));
}

async function consolePage(addr, ingest, token, screenshot) {
  const browser = await openPage(`http://${addr}/_console?topic=cs`, [], () => window.rcConsole?.client?.state === 'open');
  const { page } = browser;
  const messages = async () => (await rows(page)).filter((r) => r[1] === 'message');
  try {
    const pub = await Publisher.connect(ingest);
    const want = [];
    for (const data of ['first', 'two\nlines', 'third']) want.push([await pub.publish('cs', data), data]);
    pub.close();
    await waitFor('3 events in the console', async () => (await messages()).length >= 3);
    const shown = (await messages()).map((r) => [r[2], r[5]]);
    if (JSON.stringify(shown) !== JSON.stringify(want)) fail(`the console shows ${JSON.stringify(shown)}, not ${JSON.stringify(want)}`);

    // The publish form: a wrong token is refused, the right one publishes.
    await page.fill('#pub-topic', 'cs');
    await page.fill('#pub-data', 'from the console');
    await page.fill('#pub-token', 'wrong');
    await page.click('#pub-button');
    await waitFor('the refusal', async () => (await page.textContent('#publish-status')).startsWith('401'));
    await page.fill('#pub-token', token);
    await page.click('#pub-button');
    await waitFor('the published id', async () => (await page.textContent('#publish-status')).startsWith('published '));
    const published = (await page.textContent('#publish-status')).slice('published '.length);
    await waitFor('the console event in the table', async () => (await messages()).some((r) => r[2] === published));
    if ((await messages()).length !== 4) fail(`the wrong token published something: ${JSON.stringify(await messages())}`);

    console.log('READY');
    const epoch = /^RESTARTED ([0-9a-f]+)$/.exec((await Promise.race([readLine(), sleep(30_000)])) ?? '')?.[1];
    if (!epoch) fail('no RESTARTED line');
    await waitFor('the reset in the console', async () => (await rows(page)).some((r) => r[1] === 'reset'), 20_000);
    const reset = (await rows(page)).find((r) => r[1] === 'reset');
    if (!reset[2].startsWith(`${epoch}-`) || !reset[5].includes('unknown-epoch')) fail(`the reset row: ${JSON.stringify(reset)}`);
    const fresh = await Publisher.connect(ingest);
    const after = await fresh.publish('cs', 'after the restart');
    fresh.close();
    await waitFor('the event after the restart', async () => (await messages()).some((r) => r[2] === after));
    await page.fill('#topic', 'news');
    await page.click('#subscribe button');
    await page.setViewportSize({ width: 1100, height: 560 });
    await sleep(300);
    await page.screenshot({ path: screenshot });
    return {
      browser: browser.version,
      messages: String((await messages()).length),
      resets: String((await rows(page)).filter((r) => r[1] === 'reset').length),
      published,
      epoch,
      ok: 'yes',
    };
  } catch (e) {
    console.error(`page console:\n${browser.logs.join('\n')}`);
    throw e;
  } finally {
    await browser.close();
  }
}

/** Runs in the page (served by the engine through HAProxy, so same-origin): 20
 * EventSources and a RingcastClient on a WebSocket, each recording what it receives. */
function openStreams(n) {
  const h2 = { es: [], ws: { messages: [], opens: 0, resets: 0 } };
  window.h2 = h2;
  for (let i = 0; i < n; i++) {
    const rec = { messages: [], opens: 0, errors: 0 };
    const es = new EventSource('/sse?topic=h2');
    es.onmessage = (e) => rec.messages.push({ id: e.lastEventId, data: e.data });
    es.onopen = () => rec.opens++;
    es.onerror = () => rec.errors++;
    h2.es.push(rec);
  }
  const c = new window.RingcastClient(location.origin, { topics: ['h2'], transports: ['websocket'], retryMs: 500 });
  c.addEventListener('message', (e) => h2.ws.messages.push({ id: e.detail.id, data: e.detail.data }));
  c.addEventListener('reset', () => h2.ws.resets++);
  c.addEventListener('state', (e) => { if (e.detail.state === 'open') h2.ws.opens++; });
}

async function http2(addr, ingest) {
  const browser = await openPage(`https://${addr}/`, ['--ignore-certificate-errors'], () => true);
  const { page } = browser;
  const client = fs.readFileSync(new URL('../../clients/js/ringcast.js', import.meta.url), 'utf8');
  await page.addScriptTag({ type: 'module', content: `${client}\nwindow.RingcastClient = RingcastClient;` });
  await page.waitForFunction(() => typeof window.RingcastClient === 'function');
  const N = 20;
  const state = () => page.evaluate(() => ({
    es: window.h2.es.map((r) => ({ n: r.messages.length, opens: r.opens, m: r.messages })),
    ws: { n: window.h2.ws.messages.length, opens: window.h2.ws.opens, resets: window.h2.ws.resets, m: window.h2.ws.messages },
  }));
  const all = (s, n) => s.es.every((r) => r.n >= n) && s.ws.n >= n;
  try {
    await page.evaluate(openStreams, N);
    await waitFor('20 EventSources and the WebSocket open', async () => {
      const s = await state();
      return s.es.every((r) => r.opens >= 1) && s.ws.opens >= 1;
    }, 20_000);
    const protocol = await page.evaluate(async () => {
      await fetch('/poll?topic=h2&wait=0');
      return performance.getEntriesByType('resource').map((e) => e.nextHopProtocol).filter(Boolean).at(-1);
    });
    const pub = await Publisher.connect(ingest);
    const want = [];
    for (let i = 0; i < 5; i++) want.push({ id: await pub.publish('h2', `before ${i}`), data: `before ${i}` });
    await waitFor('5 events on all 21', async () => all(await state(), 5), 15_000);

    console.log('READY');
    if (!/^RELOADED$/.test((await Promise.race([readLine(), sleep(30_000)])) ?? '')) fail('no RELOADED line');
    const reloaded = performance.now();
    // Spread over 1.5 s, across the moment the old worker cuts the streams.
    for (let i = 0; i < 5; i++) {
      want.push({ id: await pub.publish('h2', `after ${i}`), data: `after ${i}` });
      await sleep(300);
    }
    pub.close();
    await waitFor('10 events on all 21 after the reload', async () => all(await state(), 10), 20_000);
    const resumedMs = performance.now() - reloaded;
    await sleep(400);
    const s = await state();
    const exact = JSON.stringify(want);
    s.es.forEach((r, i) => {
      if (JSON.stringify(r.m) !== exact) fail(`EventSource ${i} received ${JSON.stringify(r.m)}`);
    });
    if (JSON.stringify(s.ws.m) !== exact) fail(`the WebSocket received ${JSON.stringify(s.ws.m)}`);
    return {
      browser: browser.version,
      protocol: String(protocol),
      eventsources: String(N),
      es_min_opens: String(Math.min(...s.es.map((r) => r.opens))),
      ws_opens: String(s.ws.opens),
      ws_resets: String(s.ws.resets),
      resumed_ms: resumedMs.toFixed(0),
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
    let out;
    if (mode === 'fallback') out = await fallback(addr, ingest);
    else if (mode === 'h2') out = await http2(addr, ingest);
    else if (mode === 'console') out = await consolePage(addr, ingest, ...process.argv.slice(5));
    else fail(`unknown mode ${mode}`);
    console.log(`RESULT ${JSON.stringify(out)}`);
  } catch (e) {
    console.error(`FAIL (${mode}): ${e instanceof Failure ? e.message : e.stack}`);
    code = 1;
  }
  process.exit(code);
}
