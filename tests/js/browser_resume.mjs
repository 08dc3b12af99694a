// A real browser's EventSource against ringcast: headless Debian Chromium driven by
// playwright-core (no browser download). The page is served from its own loopback
// origin, so the stream is a cross-origin request that relies on the engine's
// `Access-Control-Allow-Origin: *`, as a web app's would.
//
//   node browser_resume.mjs drop    <host:port> <ingest socket>   dropped, resumes with Last-Event-ID
//   node browser_resume.mjs restart <host:port> <ingest socket>   engine restarted: ringcast.reset
//
// See common.mjs for the scenarios and the RESULT line. Chromium is /usr/bin/chromium
// (Debian's `chromium`), or $CHROMIUM.
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { parseArgs, runScenario } from './common.mjs';

const EXECUTABLE = process.env.CHROMIUM || '/usr/bin/chromium';
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Serves one blank HTML page: the origin the EventSource is opened from. */
async function pageServer() {
  const server = http.createServer((req, res) => {
    if (req.url === '/') {
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
      res.end('<!doctype html><meta charset="utf-8"><title>ringcast real client</title>');
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return server;
}

/** Runs in the page: opens the EventSource and records everything it dispatches. */
function openInPage(url) {
  const rc = { events: [], opens: 0, errors: 0, readyStates: [] };
  window.rc = rc;
  const es = new EventSource(url);
  window.rcSource = es;
  const record = (e) => rc.events.push({ type: e.type, id: e.lastEventId, data: e.data });
  es.onmessage = record;
  es.addEventListener('ringcast.reset', record);
  es.onopen = () => rc.opens++;
  es.onerror = () => {
    rc.errors++;
    rc.readyStates.push(es.readyState);
  };
}

async function openBrowserClient(url) {
  if (!fs.existsSync(EXECUTABLE)) {
    throw new Error(`no Chromium at ${EXECUTABLE}: install Debian's chromium (see .ci/run)`);
  }
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'ringcast-chromium-'));
  const server = await pageServer();
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: EXECUTABLE,
    headless: true,
    args: ARGS,
    timeout: 15_000,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(10_000);
  await page.goto(`http://127.0.0.1:${server.address().port}/`);
  await page.evaluate(openInPage, url);
  return {
    name: `chromium ${context.browser()?.version() ?? '(version unknown)'}`,
    events: () => page.evaluate(() => window.rc.events.slice()),
    opened: () => page.evaluate(() => window.rc.opens > 0),
    stats: () => page.evaluate(() => ({ opens: window.rc.opens, errors: window.rc.errors })),
    close: async () => {
      await page.evaluate(() => window.rcSource.close()).catch(() => {});
      await context.close();
      server.close();
      fs.rmSync(profile, { recursive: true, force: true });
    },
  };
}

await runScenario(parseArgs(process.argv, ['drop', 'restart']), openBrowserClient);
