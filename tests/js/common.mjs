// Shared by the real-client scripts (browser_resume.mjs, eventsource_lib.mjs): the two
// scenarios, a publisher speaking the ingest protocol, and a TCP proxy in front of the
// engine that can drop every stream on demand and records each request's Last-Event-ID.
//
// A script hands `runScenario` an adapter for its client (open a stream, read what it
// received, close); everything else (what is published, when the stream is dropped, what
// counts as correct) is decided here once, so both clients are held to the same standard.
//
// Protocol with tests/real_clients.rs: one line `RESULT {...}` on stdout, a flat JSON
// object whose values are strings or null (what ringcast_tests::json reads). In restart
// mode the script first prints `READY`, then waits for `RESTARTED <new epoch>` on stdin.
// Any failure: a message on stderr and exit status 1. Every wait has a deadline; the whole
// script is bounded by OVERALL_MS.
import net from 'node:net';
import readline from 'node:readline';

/** Bound on the whole script, in milliseconds. */
export const OVERALL_MS = 40_000;
/** Bound on one awaited condition (an event arriving, a reconnect). */
export const WAIT_MS = 10_000;
/** Bound on the test's engine restart: its stop and its start are bounded at 10 s each
 * (tests/support/engine.rs), and a stop may use the engine's whole shutdown grace. */
export const RESTART_MS = 25_000;
/** How long to watch for a stray (duplicate) event after the last expected one. */
export const QUIET_MS = 400;
/** The topic every scenario uses. */
export const TOPIC = 'rc';

/** Payloads of the drop scenario: multi-line, an empty line inside, a leading space
 * (SSE strips exactly one after `data:`), non-ASCII, a trailing newline. */
export const DROP_PAYLOADS = [
  'a\nb',
  ' leading space',
  'unicode é ✓ 😀',
  'x\n\ny',
  '{"k":[1,2]}',
  'trailing newline\n',
  'live',
];

export class Failure extends Error {}

export function fail(message) {
  throw new Failure(message);
}

/** `node script.mjs <drop|restart> <host:port> <ingest socket path>` */
export function parseArgs(argv, modes) {
  const [mode, addr, ingest] = argv.slice(2);
  if (!modes.includes(mode) || !addr || !ingest) {
    console.error(`usage: node ${argv[1]} <${modes.join('|')}> <host:port> <ingest socket path>`);
    process.exit(64);
  }
  const at = addr.lastIndexOf(':');
  return { mode, host: addr.slice(0, at), port: Number(addr.slice(at + 1)), ingest };
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `probe` (sync or async) until it returns a truthy value; fails after `ms`. */
export async function waitFor(what, probe, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() >= deadline) fail(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(25);
  }
}

/** A publisher on the engine's ingest socket: `PUB <topic> <len>\n<data>\n` -> `+OK <id>\r\n`. */
export class Publisher {
  static async connect(path) {
    const socket = net.connect(path);
    await new Promise((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', (e) => reject(new Failure(`connect to ingest ${path}: ${e.message}`)));
    });
    return new Publisher(socket);
  }

  constructor(socket) {
    this.socket = socket;
    this.buf = '';
    this.waiting = [];
    socket.setEncoding('utf8');
    socket.on('data', (chunk) => {
      this.buf += chunk;
      let at;
      while ((at = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, at + 1);
        this.buf = this.buf.slice(at + 1);
        this.waiting.shift()?.(line);
      }
    });
    socket.on('error', () => {});
  }

  /** Publishes `data` on `topic`; returns the event id the engine assigned. */
  async publish(topic, data) {
    const bytes = Buffer.from(data, 'utf8');
    const reply = new Promise((resolve) => this.waiting.push(resolve));
    this.socket.write(`PUB ${topic} ${bytes.length}\n`);
    this.socket.write(bytes);
    this.socket.write('\n');
    const line = await Promise.race([reply, sleep(WAIT_MS).then(() => null)]);
    if (line === null) fail(`no reply to PUB ${topic} within ${WAIT_MS} ms`);
    const m = /^\+OK (\S+)\r\n$/.exec(line);
    if (!m) fail(`PUB ${topic} ${JSON.stringify(data)}: expected "+OK <id>\\r\\n", got ${JSON.stringify(line)}`);
    return m[1];
  }

  close() {
    this.socket.destroy();
  }
}

/**
 * A TCP proxy to the engine. Records each request head it reads (one per connection: an
 * event stream never ends to make room for another), its Last-Event-ID header, and
 * whether it reached the engine. `dropAll()` destroys every proxied stream,
 * as a server or middlebox dropping them would; while `down` is set, new connections
 * are closed right after their request head, as if the server were unreachable.
 */
export class Proxy {
  static async start(host, port) {
    const proxy = new Proxy(host, port);
    await new Promise((resolve) => proxy.server.listen(0, '127.0.0.1', resolve));
    proxy.port = proxy.server.address().port;
    return proxy;
  }

  constructor(host, port) {
    this.upstream = { host, port };
    this.requests = [];
    this.sockets = new Set();
    this.down = false;
    this.server = net.createServer((client) => this.accept(client));
  }

  accept(client) {
    const request = { head: null, lastEventId: null, reachedEngine: false };
    this.track(client);
    client.on('error', () => {});
    let head = Buffer.alloc(0);
    const onData = (chunk) => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) {
        if (head.length > 16384) client.destroy();
        return;
      }
      client.off('data', onData);
      client.pause();
      request.head = head.subarray(0, end).toString('latin1');
      request.lastEventId = headerValue(request.head, 'last-event-id');
      this.requests.push(request);
      if (this.down) {
        client.destroy();
        return;
      }
      this.connectUpstream(client, head, request);
    };
    client.on('data', onData);
  }

  connectUpstream(client, head, request) {
    const upstream = net.connect(this.upstream.port, this.upstream.host);
    this.track(upstream);
    upstream.on('error', () => client.destroy());
    upstream.once('connect', () => {
      request.reachedEngine = true;
      upstream.write(head);
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
    });
    upstream.on('close', () => client.destroy());
    client.on('close', () => upstream.destroy());
  }

  track(socket) {
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
  }

  /** Destroys every open connection, both sides. */
  dropAll() {
    for (const socket of this.sockets) socket.destroy();
  }

  openCount() {
    return this.sockets.size;
  }

  close() {
    this.dropAll();
    this.server.close();
  }
}

function headerValue(head, name) {
  for (const line of head.split('\r\n').slice(1)) {
    const at = line.indexOf(':');
    if (at > 0 && line.slice(0, at).trim().toLowerCase() === name) return line.slice(at + 1).trim();
  }
  return null;
}

const show = (events) => JSON.stringify(events, null, 1);

/** Checks `got` is exactly `want` (type, id, data of each), in order. */
function expectEvents(got, want, when) {
  const pick = (e) => ({ type: e.type, id: e.id, data: e.data });
  const a = JSON.stringify(got.map(pick));
  const b = JSON.stringify(want.map(pick));
  if (a !== b) fail(`${when}: the client received\n${show(got)}\nbut should have received exactly\n${show(want)}`);
}

/** Waits until the client holds `n` events, then checks they are `want`. */
async function expectReceived(client, want, when) {
  await waitFor(`${want.length} events at the client (${when})`, async () => (await client.events()).length >= want.length);
  expectEvents(await client.events(), want, when);
}

/** Checks that no further event arrives within QUIET_MS (a duplicate would). */
async function expectQuiet(client, want, when) {
  await sleep(QUIET_MS);
  expectEvents(await client.events(), want, `${when}, ${QUIET_MS} ms later`);
}

/** Publishes each payload; returns the events a subscriber should receive. */
async function publishAll(publisher, payloads) {
  const out = [];
  for (const data of payloads) out.push({ type: 'message', id: await publisher.publish(TOPIC, data), data });
  return out;
}

/** Waits until the proxy has passed `n` requests to the engine. */
function waitForEngineRequests(proxy, n, when) {
  return waitFor(`request ${n} to reach the engine (${when})`, () => proxy.requests.filter((r) => r.reachedEngine).length >= n);
}

/**
 * Drop scenario: 3 events live; every stream dropped; 3 events published while the
 * client cannot reach the engine; the client reconnects with Last-Event-ID and must
 * receive exactly the 3 it missed, then 1 live event, with no duplicate.
 */
async function dropScenario(client, proxy, publisher) {
  await waitForEngineRequests(proxy, 1, 'first connection');
  await waitFor('the client to report the stream open', () => client.opened());
  const first = await publishAll(publisher, DROP_PAYLOADS.slice(0, 3));
  await expectReceived(client, first, 'before the drop');

  proxy.down = true;
  proxy.dropAll();
  await waitFor('the proxy to close every connection', () => proxy.openCount() === 0);
  const missed = await publishAll(publisher, DROP_PAYLOADS.slice(3, 6));
  if (proxy.requests.some((r, i) => i > 0 && r.reachedEngine)) {
    fail('the client reached the engine again while the proxy was down');
  }
  proxy.down = false;

  await waitForEngineRequests(proxy, 2, 'reconnect after the drop');
  await expectReceived(client, [...first, ...missed], 'after the reconnect');
  const live = await publishAll(publisher, DROP_PAYLOADS.slice(6));
  const all = [...first, ...missed, ...live];
  await expectReceived(client, all, 'live after the reconnect');
  await expectQuiet(client, all, 'after the live event');

  const reconnect = proxy.requests.filter((r) => r.reachedEngine)[1];
  if (reconnect.lastEventId !== first[2].id) {
    fail(`the reconnect carried Last-Event-ID ${JSON.stringify(reconnect.lastEventId)}, not ${first[2].id}; its head:\n${reconnect.head}`);
  }
  return all;
}

/**
 * Restart scenario: 2 events live; READY; the test restarts the engine (new epoch) and
 * says RESTARTED <epoch>; the client reconnects with an id of the old epoch and must get
 * a `ringcast.reset` (reason unknown-epoch), nothing retained, then 1 live event.
 */
async function restartScenario(client, proxy, publisher, ingest) {
  await waitForEngineRequests(proxy, 1, 'first connection');
  await waitFor('the client to report the stream open', () => client.opened());
  const before = await publishAll(publisher, ['before restart 1', 'before\nrestart 2']);
  await expectReceived(client, before, 'before the restart');
  publisher.close();

  const lines = readline.createInterface({ input: process.stdin });
  const restarted = new Promise((resolve) => lines.once('line', resolve));
  console.log('READY');
  const line = await Promise.race([restarted, sleep(RESTART_MS).then(() => null)]);
  lines.close();
  const epoch = /^RESTARTED ([0-9a-f]+)$/.exec(line ?? '')?.[1];
  if (!epoch) fail(`expected "RESTARTED <epoch>" on stdin within ${RESTART_MS} ms, got ${JSON.stringify(line)}`);

  await waitFor('a ringcast.reset event after the restart', async () => (await client.events()).length >= 3);
  const reset = (await client.events())[2];
  if (reset.type !== 'ringcast.reset') fail(`after the restart the first event was not a reset:\n${show(await client.events())}`);
  if (!reset.id.startsWith(`${epoch}-`)) fail(`the reset's id ${reset.id} is not of the new epoch ${epoch}`);
  let json;
  try {
    json = JSON.parse(reset.data);
  } catch (e) {
    fail(`the reset's data is not JSON: ${JSON.stringify(reset.data)}: ${e.message}`);
  }
  if (json.reason !== 'unknown-epoch') fail(`the reset's reason is ${JSON.stringify(json.reason)}: ${reset.data}`);
  if (json.last_event_id !== before[1].id) fail(`the reset echoes last_event_id ${JSON.stringify(json.last_event_id)}, not ${before[1].id}`);

  const fresh = await Publisher.connect(ingest);
  const live = await publishAll(fresh, ['after restart']);
  fresh.close();
  if (!live[0].id.startsWith(`${epoch}-`)) fail(`the live event's id ${live[0].id} is not of the new epoch ${epoch}`);
  const all = [...before, reset, ...live];
  await expectReceived(client, all, 'live after the reset');
  await expectQuiet(client, all, 'after the live event');

  // While the engine restarts, the client may try several times; every try must carry
  // the last id it received before the restart.
  for (const request of proxy.requests.slice(1)) {
    if (request.lastEventId !== before[1].id) {
      fail(`a reconnect carried Last-Event-ID ${JSON.stringify(request.lastEventId)}, not ${before[1].id}; its head:\n${request.head}`);
    }
  }
  return all;
}

/** The flat RESULT object: every value a string or null. */
function report(clientName, mode, proxy, events, published, stats) {
  const out = { client: clientName, mode, events: String(events.length), published: String(published.length) };
  out.opens = String(stats.opens);
  out.errors = String(stats.errors);
  events.forEach((e, i) => {
    out[`event.${i + 1}.type`] = e.type;
    out[`event.${i + 1}.id`] = e.id;
    out[`event.${i + 1}.data`] = e.data;
  });
  published.forEach((e, i) => {
    out[`published.${i + 1}.id`] = e.id;
    out[`published.${i + 1}.data`] = e.data;
  });
  out.requests = String(proxy.requests.length);
  proxy.requests.forEach((r, i) => {
    out[`request.${i + 1}.last_event_id`] = r.lastEventId;
    out[`request.${i + 1}.reached_engine`] = r.reachedEngine ? 'yes' : 'no';
  });
  return out;
}

/**
 * Runs `mode` against the engine at host:port through a fresh proxy, with a client made
 * by `openClient(url)`: an object with `events()` (each {type, id, data}; may be
 * async), `opened()`, `stats()` ({opens, errors}), `close()`, and `name`.
 */
export async function runScenario({ mode, host, port, ingest }, openClient) {
  let client;
  const timer = setTimeout(() => {
    console.error(`FAIL: the ${mode} scenario did not finish within ${OVERALL_MS} ms`);
    // Close the client (the browser and its profile directory), bounded, then exit.
    Promise.race([client?.close(), sleep(3_000)]).finally(() => process.exit(1));
  }, OVERALL_MS);
  timer.unref();
  const proxy = await Proxy.start(host, port);
  let publisher;
  let code = 0;
  try {
    publisher = await Publisher.connect(ingest);
    client = await openClient(`http://127.0.0.1:${proxy.port}/sse?topic=${TOPIC}`);
    const all = mode === 'drop'
      ? await dropScenario(client, proxy, publisher)
      : await restartScenario(client, proxy, publisher, ingest);
    const events = await client.events();
    const published = all.filter((e) => e.type === 'message');
    console.log(`RESULT ${JSON.stringify(report(client.name, mode, proxy, events, published, await client.stats()))}`);
  } catch (e) {
    const requests = proxy.requests.map((r) => ({ lastEventId: r.lastEventId, reachedEngine: r.reachedEngine }));
    console.error(`FAIL (${mode}, ${client?.name ?? 'client not started'}): ${e instanceof Failure ? e.message : e.stack}`);
    console.error(`requests seen by the proxy: ${JSON.stringify(requests)}`);
    if (client) console.error(`client stats: ${JSON.stringify(await client.stats().catch(() => null))}`);
    code = 1;
  } finally {
    publisher?.close();
    proxy.close();
    await client?.close().catch(() => {});
    clearTimeout(timer);
  }
  process.exit(code);
}
