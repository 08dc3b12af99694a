// clients/js (the ringcast client) in real Node against the real engine, driven by
// tests/js_client.rs. Node 20's WebSocket is undici's behind --experimental-websocket;
// it is passed to the client explicitly, as an app on Node would pass one.
//
//   node --experimental-websocket client_node.mjs <mode> <host:port> <ingest socket>
//
//   transports  one client per transport receives, gets a second topic by subscribe(),
//               and stays open across quiet heartbeats (the WebSocket answers pings)
//   restart     clients on websocket, sse and poll; READY; the test kills the engine with
//               SIGKILL and starts it again; RESTARTED <epoch>: each gets one reset
//               (unknown-epoch) and then exactly the new events
//   proxy       clients behind a TCP proxy that cuts every connection at a random byte or
//               moment: each gets every event once, in order
//   expiry      tokens that expire every 2 s (HS256, signed here): each transport asks for a
//               new token and delivers every event once
//   stall       behind a proxy that stops forwarding without closing: each transport notices
//               within the heartbeat plus the margin, reconnects and misses nothing
//   blocked     behind a proxy that swallows the answers to /ws and /sse: the client falls
//               back to polling and gets every event; a second client starts on polling
//   herd        1,000 clients (websocket and sse); READY; kill and restart; RESTARTED:
//               every client back, the reconnect times reported as a histogram
//
// Prints one `RESULT {...}` line (a flat JSON object of strings) and exits 0; any failure
// prints a message to stderr and exits 1. Bounded by OVERALL_MS.
import net from 'node:net';
import readline from 'node:readline';
import { RingcastClient } from '../../clients/js/ringcast.js';
import { Publisher, fail, Failure, sleep, waitFor } from './common.mjs';

const OVERALL_MS = 90_000;
const TOPIC = 'jc';
const PAYLOADS = ['a\nb', ' leading space', 'unicode é ✓ 😀', '{"k":[1,2]}', 'plain'];

const [mode, addr, ingest] = process.argv.slice(2);
const port = Number(addr.slice(addr.lastIndexOf(':') + 1));
const base = `http://127.0.0.1:${port}`;
const WS = globalThis.WebSocket;
if (typeof WS !== 'function') {
  console.error('no WebSocket in this Node: run it with --experimental-websocket (Node 20.10+)');
  process.exit(1);
}

/** A client plus a record of everything it emitted. */
function watch(url, options) {
  const c = new RingcastClient(url, { WebSocket: WS, ...options });
  const rec = { client: c, messages: [], resets: [], gaps: [], states: [] };
  c.addEventListener('message', (e) => rec.messages.push(e.detail));
  c.addEventListener('reset', (e) => rec.resets.push(e.detail));
  c.addEventListener('gap', (e) => rec.gaps.push(e.detail));
  c.addEventListener('state', (e) => rec.states.push({ ...e.detail, at: performance.now() }));
  return rec;
}

async function publishAll(pub, topic, payloads) {
  const out = [];
  for (const data of payloads) out.push({ id: await pub.publish(topic, data), topic, event: null, data });
  return out;
}

const pick = (m) => ({ id: m.id, topic: m.topic, event: m.event, data: m.data });

/** Waits for `rec` to hold `want.length` messages, then checks they are exactly `want`. */
async function expectMessages(rec, want, what, ms = 15_000) {
  try {
    await waitFor(`${want.length} messages at ${what}`, () => rec.messages.length >= want.length, ms);
  } catch (e) {
    const got = new Set(rec.messages.map((m) => m.id));
    const missing = want.filter((m) => !got.has(m.id)).map((m) => m.id);
    fail(`${e.message}: has ${rec.messages.length}, missing ${JSON.stringify(missing.slice(0, 10))}, last ${rec.messages.at(-1)?.id}`);
  }
  const got = JSON.stringify(rec.messages.map(pick));
  const exp = JSON.stringify(want.map(pick));
  if (got !== exp) fail(`${what} received\n${got}\nbut should have received exactly\n${exp}`);
}

function readLine() {
  const lines = readline.createInterface({ input: process.stdin });
  return new Promise((resolve) => lines.once('line', (l) => { lines.close(); resolve(l); }));
}

async function restarted() {
  console.log('READY');
  const line = await Promise.race([readLine(), sleep(30_000).then(() => null)]);
  const epoch = /^RESTARTED ([0-9a-f]+)$/.exec(line ?? '')?.[1];
  if (!epoch) fail(`expected "RESTARTED <epoch>" on stdin, got ${JSON.stringify(line)}`);
  return epoch;
}

// ----- transports ----------------------------------------------------------------------

async function transports(pub) {
  const out = {};
  const names = ['websocket', 'sse', 'ndjson', 'poll'];
  // Heartbeats every second (the engine runs with --heartbeat-ms 1000): a connection that
  // did not answer them would be taken for dead within 2 s and reconnected.
  const recs = names.map((t) => watch(base, { topics: [TOPIC], transports: [t], heartbeatMs: 1000, marginMs: 1000, pollWaitSecs: 2 }));
  await waitFor('every client open', () => recs.every((r) => r.client.state === 'open'));
  const first = await publishAll(pub, TOPIC, PAYLOADS);
  for (const [i, r] of recs.entries()) await expectMessages(r, first, names[i]);
  for (const r of recs) r.client.subscribe('jc2');
  await sleep(500);
  const second = await publishAll(pub, 'jc2', ['second topic']);
  const third = await publishAll(pub, TOPIC, ['first topic again']);
  for (const [i, r] of recs.entries()) {
    // Streams report the topic only where one topic is subscribed; polls and frames always.
    const want = [...first, ...second, ...third].map((m) => ({ ...m }));
    if (names[i] === 'sse') for (const m of want.slice(first.length)) m.topic = null;
    await expectMessages(r, want, `${names[i]} after subscribe()`);
  }
  // Quiet for 3.5 heartbeats: nothing may be reconnected.
  const opens = recs.map((r) => r.states.filter((s) => s.state === 'open').length);
  await sleep(3500);
  for (const [i, r] of recs.entries()) {
    const now = r.states.filter((s) => s.state === 'open').length;
    if (now !== opens[i] || r.client.state !== 'open') fail(`${names[i]} reconnected while quiet: ${JSON.stringify(r.states)}`);
    out[`${names[i]}.transport`] = r.client.transport;
    out[`${names[i]}.messages`] = String(r.messages.length);
    r.client.close();
  }
  out.ok = 'yes';
  return out;
}

// ----- restart -------------------------------------------------------------------------

async function restart(pub) {
  const names = ['websocket', 'sse', 'poll'];
  const recs = names.map((t) => watch(base, { topics: [TOPIC], transports: [t], retryMs: 300 }));
  await waitFor('every client open', () => recs.every((r) => r.client.state === 'open'));
  const before = await publishAll(pub, TOPIC, PAYLOADS.slice(0, 3));
  for (const [i, r] of recs.entries()) await expectMessages(r, before, names[i]);
  pub.close();
  const epoch = await restarted();
  await waitFor('every client reset', () => recs.every((r) => r.resets.length >= 1), 20_000);
  const fresh = await Publisher.connect(ingest);
  const after = await publishAll(fresh, TOPIC, PAYLOADS.slice(3));
  fresh.close();
  const out = {};
  for (const [i, r] of recs.entries()) {
    await expectMessages(r, [...before, ...after], `${names[i]} after the restart`);
    await sleep(300);
    if (r.messages.length !== before.length + after.length) fail(`${names[i]}: a duplicate after the restart`);
    if (r.resets.length !== 1) fail(`${names[i]}: ${r.resets.length} resets: ${JSON.stringify(r.resets)}`);
    const reset = r.resets[0];
    if (reset.reason !== 'unknown-epoch') fail(`${names[i]}: reset ${JSON.stringify(reset)}`);
    if (reset.last_event_id !== before.at(-1).id) fail(`${names[i]}: reset resumed from ${reset.last_event_id}`);
    if (!r.messages.slice(before.length).every((m) => m.id.startsWith(`${epoch}-`))) fail(`${names[i]}: ids not of ${epoch}`);
    out[`${names[i]}.reset`] = reset.reason;
    out[`${names[i]}.messages`] = String(r.messages.length);
    r.client.close();
  }
  out.epoch = epoch;
  out.ok = 'yes';
  return out;
}

// ----- the dropping proxy --------------------------------------------------------------

/** A TCP proxy that, once `stats.cutting` is set, cuts each new connection after a random
 * time (20 to 400 ms) or, for half of them, after a random number of bytes from the
 * engine (1 to 3,000) if that comes first; connections made before pass everything until
 * they are cut. */
async function chaosProxy() {
  const stats = { conns: 0, cuts: 0, cutting: false };
  const pipe = (client, upstream) => {
    client.on('error', () => {});
    upstream.on('error', () => client.destroy());
    client.pipe(upstream);
    upstream.pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  };
  const server = net.createServer((client) => {
    stats.conns += 1;
    const upstream = net.connect(port, '127.0.0.1');
    // Half the connections are cut by bytes, half by time alone: a poll answer longer
    // than every byte budget would never get through.
    let budget = Math.random() < 0.5 ? 1 + Math.floor(Math.random() * 3000) : Infinity;
    const cut = () => {
      if (client.destroyed && upstream.destroyed) return;
      stats.cuts += 1;
      client.destroy();
      upstream.destroy();
    };
    if (!stats.cutting) return pipe(client, upstream);
    const timer = setTimeout(cut, 20 + Math.random() * 380);
    client.on('error', () => {});
    upstream.on('error', () => client.destroy());
    client.on('data', (d) => upstream.write(d));
    upstream.on('data', (d) => {
      if (d.length >= budget) {
        client.write(d.subarray(0, budget), cut);
        budget = 0;
        return;
      }
      budget -= d.length;
      client.write(d);
    });
    const close = () => {
      clearTimeout(timer);
      client.destroy();
      upstream.destroy();
    };
    client.on('close', close);
    upstream.on('close', close);
  });
  const sockets = new Set();
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, stats, sockets, url: `http://127.0.0.1:${server.address().port}` };
}

async function proxy(pub) {
  const chaos = await chaosProxy();
  const names = ['websocket', 'sse', 'ndjson', 'poll'];
  const recs = names.map((t) => watch(chaos.url, { topics: [TOPIC], transports: [t], retryMs: 50, maxDelayMs: 400, pollWaitSecs: 1 }));
  // A client that has delivered nothing has no id to resume from: first one event each.
  await waitFor(`every client open`, () => recs.every((r) => r.client.state === 'open')).catch((e) => fail(`${e.message}: ${recs.map((r) => r.client.state)}`));
  const want = await publishAll(pub, TOPIC, ['primer']);
  await waitFor('the primer at every client', () => recs.every((r) => r.messages.length === 1));
  chaos.stats.cutting = true;
  for (const socket of chaos.sockets) socket.destroy();
  for (let i = 0; i < 300; i++) {
    want.push(...(await publishAll(pub, TOPIC, [`event ${i}${i % 7 === 0 ? '\nsecond line' : ''}`])));
    await sleep(10);
  }
  const out = {};
  for (const [i, r] of recs.entries()) {
    await expectMessages(r, want, `${names[i]} behind the dropping proxy`, 30_000);
    out[`${names[i]}.messages`] = String(r.messages.length);
    out[`${names[i]}.opens`] = String(r.states.filter((s) => s.state === 'open').length);
  }
  await sleep(300);
  for (const [i, r] of recs.entries()) {
    if (r.messages.length !== want.length) fail(`${names[i]}: ${r.messages.length - want.length} duplicates`);
    if (r.resets.length !== 0) fail(`${names[i]}: resets ${JSON.stringify(r.resets)}`);
    r.client.close();
  }
  chaos.server.close();
  out.conns = String(chaos.stats.conns);
  out.cuts = String(chaos.stats.cuts);
  out.ok = 'yes';
  return out;
}

// ----- a connection that goes silent ---------------------------------------------------

/** A TCP proxy whose `freeze()` stops forwarding on every connection it holds, in both
 * directions, without closing any (a peer vanished, a NAT entry dropped); connections made
 * after it pass normally. */
async function freezingProxy() {
  const held = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(port, '127.0.0.1');
    const conn = { frozen: false, client, upstream };
    held.add(conn);
    client.on('error', () => {});
    upstream.on('error', () => client.destroy());
    client.on('data', (d) => conn.frozen || upstream.write(d));
    upstream.on('data', (d) => conn.frozen || client.write(d));
    const close = () => {
      held.delete(conn);
      client.destroy();
      upstream.destroy();
    };
    client.on('close', close);
    upstream.on('close', close);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    server,
    url: `http://127.0.0.1:${server.address().port}`,
    freeze: () => { for (const c of held) c.frozen = true; },
    close: () => { for (const c of held) { c.client.destroy(); c.upstream.destroy(); } server.close(); },
  };
}

async function stall(pub) {
  const proxy = await freezingProxy();
  const names = ['websocket', 'sse', 'ndjson', 'poll'];
  // The engine runs with --heartbeat-ms 1000; the client is told so, with a 1 s margin.
  const HEARTBEAT = 1000;
  const MARGIN = 1000;
  const recs = names.map((t) => watch(proxy.url, { topics: [TOPIC], transports: [t], heartbeatMs: HEARTBEAT, marginMs: MARGIN, pollWaitSecs: 1, retryMs: 100 }));
  await waitFor('every client open', () => recs.every((r) => r.client.state === 'open'));
  const want = await publishAll(pub, TOPIC, ['before the silence']);
  for (const [i, r] of recs.entries()) await expectMessages(r, want, names[i]);
  proxy.freeze();
  const frozen = performance.now();
  want.push(...(await publishAll(pub, TOPIC, ['during the silence'])));
  const out = {};
  for (const [i, r] of recs.entries()) {
    await waitFor(`${names[i]} to notice`, () => r.states.some((s) => s.state === 'reconnecting' && s.at > frozen), 10_000);
    const noticed = r.states.find((s) => s.state === 'reconnecting' && s.at > frozen).at - frozen;
    out[`${names[i]}.noticed_ms`] = noticed.toFixed(0);
  }
  for (const [i, r] of recs.entries()) {
    await expectMessages(r, want, `${names[i]} after the silence`);
    r.client.close();
  }
  proxy.close();
  out.bound_ms = String(HEARTBEAT + MARGIN);
  out.ok = 'yes';
  return out;
}

// ----- blocked transports --------------------------------------------------------------

/** A TCP proxy that swallows every byte the engine answers a `/ws` or `/sse` request with
 * (as a proxy that completes nothing of an upgrade, or buffers a stream, would), and
 * passes everything else. */
async function swallowingProxy() {
  const seen = { ws: 0, sse: 0, poll: 0 };
  const server = net.createServer((client) => {
    const upstream = net.connect(port, '127.0.0.1');
    let swallow = null;
    client.on('error', () => {});
    upstream.on('error', () => client.destroy());
    client.on('data', (d) => {
      if (swallow === null) {
        const line = d.toString('latin1', 0, 64);
        swallow = /^GET \/(ws|sse)\?/.test(line);
        const path = /^GET \/(\w+)/.exec(line)?.[1];
        if (path in seen) seen[path] += 1;
      }
      upstream.write(d);
    });
    upstream.on('data', (d) => {
      if (!swallow) client.write(d);
    });
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, seen, url: `http://127.0.0.1:${server.address().port}` };
}

async function blocked(pub) {
  const proxy = await swallowingProxy();
  const options = { topics: [TOPIC], openTimeoutMs: 1500, pollWaitSecs: 2 };
  const first = watch(proxy.url, options);
  await waitFor('the first client open', () => first.client.state === 'open', 20_000);
  const want = [];
  for (let i = 0; i < 20; i++) want.push(...(await publishAll(pub, TOPIC, [`polled ${i}`])));
  await expectMessages(first, want, 'the client behind the swallowing proxy');
  const tried = { ...proxy.seen };
  const second = watch(proxy.url, options);
  await waitFor('the second client open', () => second.client.state === 'open', 20_000);
  const out = {
    transport: first.client.transport,
    messages: String(first.messages.length),
    tried_ws: String(tried.ws),
    tried_sse: String(tried.sse),
    'second.transport': second.client.transport,
    'second.tried_ws': String(proxy.seen.ws - tried.ws),
    'second.tried_sse': String(proxy.seen.sse - tried.sse),
    ok: 'yes',
  };
  first.client.close();
  second.client.close();
  proxy.server.close();
  return out;
}

// ----- the herd ------------------------------------------------------------------------

async function herd(pub) {
  const N = 1000;
  // Every connection attempt the clients make, by the clock: WebSocket constructions and
  // HTTP requests (streams and the WebSocket's reachability probes alike).
  const attempts = [];
  class CountingWebSocket extends WS {
    constructor(...args) {
      attempts.push(performance.now());
      super(...args);
    }
  }
  const countingFetch = (...args) => {
    attempts.push(performance.now());
    return fetch(...args);
  };
  const recs = [];
  for (let i = 0; i < N; i++) {
    recs.push(watch(base, { topics: [TOPIC], transports: [i % 2 ? 'sse' : 'websocket'], WebSocket: CountingWebSocket, fetch: countingFetch }));
    if (i % 100 === 99) await sleep(50);
  }
  await waitFor('every client open', () => recs.every((r) => r.client.state === 'open'), 30_000);
  const before = await publishAll(pub, TOPIC, ['before']);
  await waitFor('every client has the event', () => recs.every((r) => r.messages.length === 1), 20_000);
  pub.close();
  attempts.length = 0;
  const mark = performance.now();
  const epoch = await restarted();
  await waitFor('every client reset and open', () => recs.every((r) => r.resets.length === 1 && r.client.state === 'open'), 45_000);
  const fresh = await Publisher.connect(ingest);
  const after = await publishAll(fresh, TOPIC, ['after']);
  fresh.close();
  await waitFor('every client has the new event', () => recs.every((r) => r.messages.length === 2), 20_000);
  for (const r of recs) {
    if (JSON.stringify(r.messages.map(pick)) !== JSON.stringify([...before, ...after].map(pick))) fail(`a client got ${JSON.stringify(r.messages)}`);
  }
  // The moment the clients saw the connection go: the first 'reconnecting'.
  const drops = recs.map((r) => r.states.find((s) => s.state === 'reconnecting' && s.at >= mark)?.at).filter((t) => t !== undefined);
  if (drops.length !== N) fail(`${N - drops.length} clients never reported reconnecting`);
  const t0 = Math.min(...drops);
  const times = attempts.map((t) => t - t0).sort((a, b) => a - b);
  let worst = 0;
  let worstAt = 0;
  for (let i = 0, j = 0; i < times.length; i++) {
    while (times[j] < times[i] - 100) j++;
    if (i - j + 1 > worst) {
      worst = i - j + 1;
      worstAt = times[j];
    }
  }
  const bins = [];
  for (const t of times) {
    const b = Math.floor(t / 250);
    bins[b] = (bins[b] ?? 0) + 1;
  }
  const reopened = recs.map((r) => r.states.filter((s) => s.state === 'open').at(-1).at - t0);
  for (const r of recs) r.client.close();
  return {
    clients: String(N),
    attempts: String(times.length),
    worst_100ms: String(worst),
    worst_100ms_from_ms: worstAt.toFixed(0),
    histogram_250ms: Array.from(bins, (v) => v ?? 0).join(','),
    last_attempt_ms: times.at(-1).toFixed(0),
    reopened_p50_ms: reopened.sort((a, b) => a - b)[N >> 1].toFixed(0),
    reopened_max_ms: reopened.at(-1).toFixed(0),
    epoch,
    ok: 'yes',
  };
}

// ----- token expiry --------------------------------------------------------------------

/** The HS256 key of the test's JWKS (tests/js_client.rs writes the same one). */
const SECRET = 'ringcast-js-client-test-secret-0123456789';

async function token(secs) {
  const { createHmac } = await import('node:crypto');
  const b64 = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');
  const head = b64({ alg: 'HS256', typ: 'JWT', kid: 'hs' });
  const claims = b64({ exp: Math.floor(Date.now() / 1000) + secs, sub: 'js', ringcast: { subscribe: [TOPIC] } });
  const sig = createHmac('sha256', SECRET).update(`${head}.${claims}`).digest('base64url');
  return `${head}.${claims}.${sig}`;
}

async function expiry(pub) {
  const names = ['websocket', 'sse', 'poll'];
  const refreshes = names.map(() => 0);
  const expired = names.map(() => 0);
  const first = await token(2);
  const recs = names.map((t, i) => {
    const r = watch(base, {
      topics: [TOPIC], transports: [t], token: first, pollWaitSecs: 1,
      refreshToken: async () => { refreshes[i] += 1; return token(2); },
    });
    r.client.addEventListener('expired', () => { expired[i] += 1; });
    if (process.env.DEBUG) for (const k of ['expired', 'state', 'message']) r.client.addEventListener(k, (e) => console.error(t, performance.now().toFixed(0), k, JSON.stringify(e.detail)));
    return r;
  });
  await waitFor('every client open', () => recs.every((r) => r.client.state === 'open'));
  // Events published every 200 ms for 5 s: across two expiries of every client's token.
  const want = [];
  for (let i = 0; i < 25; i++) {
    want.push(...(await publishAll(pub, TOPIC, [`tick ${i}`])));
    await sleep(200);
  }
  const out = {};
  for (const [i, r] of recs.entries()) {
    await expectMessages(r, want, `${names[i]} across token expiries`);
    out[`${names[i]}.refreshes`] = String(refreshes[i]);
    out[`${names[i]}.expired`] = String(expired[i]);
    out[`${names[i]}.messages`] = String(r.messages.length);
    r.client.close();
  }
  out.ok = 'yes';
  return out;
}

// ----- main ----------------------------------------------------------------------------

const timer = setTimeout(() => {
  console.error(`FAIL: ${mode} did not finish within ${OVERALL_MS} ms`);
  process.exit(1);
}, OVERALL_MS);
timer.unref();
const modes = { transports, restart, proxy, herd, expiry, blocked, stall };
if (!modes[mode]) {
  console.error(`usage: node client_node.mjs <${Object.keys(modes).join('|')}> <host:port> <ingest socket>`);
  process.exit(64);
}
let code = 0;
try {
  const pub = await Publisher.connect(ingest);
  const out = await modes[mode](pub);
  pub.close();
  console.log(`RESULT ${JSON.stringify(out)}`);
} catch (e) {
  console.error(`FAIL (${mode}): ${e instanceof Failure ? e.message : e.stack}`);
  code = 1;
}
process.exit(code);
