// ringcast-client: a push client for ringcast that resumes, backs off with full jitter,
// drops duplicates and falls back between transports. One ES module, no dependencies, no
// build step; runs in browsers and in Node 20+ (pass `WebSocket` where there is no global).
//
// What the engine sends, per transport (see the engine's README and engine/src/shard):
//   websocket  GET /ws?topic=..&last_event_id=..[&token=..] (RFC 6455). One JSON text
//              frame per event {"id","topic","event"|null,"data"}; notices
//              {"id"?,"event":"ringcast.reset"|"ringcast.gap"|"ringcast.expired",
//              "data":{..}}; answers to ops {"event":"ringcast.subscribed", "topic"}, ...;
//              {"op":"ping"} is answered {"event":"ringcast.pong"} (the liveness probe).
//   sse        GET /sse?topic=..&last_event_id=..: text/event-stream opening with
//              `retry:`, `: ` comment heartbeats every --heartbeat-ms of quiet, notices as
//              `event: ringcast.*` with JSON data (the reset carries an `id:`). Read with
//              fetch, not EventSource, so heartbeats are visible and no preflight is needed.
//   ndjson     GET /stream?topic=..&last_event_id=..: one JSON object a line, as on the
//              WebSocket, plus {"event":"ringcast.heartbeat"} lines.
//   poll       GET /poll?topic=..&after=..&wait=S: {"events":[..],"next":"<id>",
//              "reset"?:{..}}, held up to S seconds when there is nothing newer.
// Ids are `<epoch>-<seq>`, increasing within an epoch; the epoch changes when the engine
// restarts, and a resume from another epoch (or from before the history) starts with a
// reset. Every parameter goes in the query so a browser sends simple requests (no CORS
// preflight, which the engine's error answers would not pass).

const DEFAULTS = {
  topics: [],
  token: null,
  refreshToken: null,
  transports: ['websocket', 'sse', 'poll'],
  paths: { websocket: '/ws', sse: '/sse', ndjson: '/stream', poll: '/poll' },
  retryMs: 3000,
  maxDelayMs: 30000,
  heartbeatMs: 15000,
  marginMs: 5000,
  openTimeoutMs: 8000,
  pollWaitSecs: 25,
  remember: true,
  WebSocket: undefined,
  fetch: undefined,
};

const TRANSPORTS = ['websocket', 'sse', 'ndjson', 'poll'];
/** Transports remembered per base URL, for this process (and localStorage in a browser). */
const REMEMBERED = new Map();
const STORAGE_PREFIX = 'ringcast-client:transport:';

/** Splits `<epoch>-<seq>` at its last `-`; null for anything else. */
function parseId(id) {
  if (typeof id !== 'string') return null;
  const at = id.lastIndexOf('-');
  if (at <= 0 || !/^[0-9]+$/.test(id.slice(at + 1))) return null;
  return { epoch: id.slice(0, at), seq: Number(id.slice(at + 1)) };
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** A `Retry-After` header in milliseconds (seconds or an HTTP date), or null. */
function retryAfterMs(value) {
  if (!value) return null;
  if (/^\s*\d+\s*$/.test(value)) return Number(value) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, at - Date.now());
}

/** Incremental text/event-stream parser (WHATWG HTML §9.2.6), fed decoded text. */
class SseParser {
  constructor(onEvent, onRetry) {
    this.onEvent = onEvent;
    this.onRetry = onRetry;
    this.buf = '';
    this.reset();
  }

  reset() {
    this.id = null;
    this.event = null;
    this.data = null;
  }

  feed(text) {
    this.buf += text;
    for (;;) {
      const m = /\r\n|\r|\n/.exec(this.buf);
      // A CR at the very end may be the first half of a CRLF: wait for the next byte.
      if (!m || (m[0] === '\r' && m.index === this.buf.length - 1)) return;
      const line = this.buf.slice(0, m.index);
      this.buf = this.buf.slice(m.index + m[0].length);
      this.line(line);
    }
  }

  line(line) {
    if (line === '') {
      if (this.data !== null) this.onEvent({ id: this.id, event: this.event, data: this.data });
      this.reset();
      return;
    }
    if (line.startsWith(':')) return;
    const at = line.indexOf(':');
    const field = at < 0 ? line : line.slice(0, at);
    let value = at < 0 ? '' : line.slice(at + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') this.data = this.data === null ? value : `${this.data}\n${value}`;
    else if (field === 'id') this.id = value;
    else if (field === 'event') this.event = value;
    else if (field === 'retry' && /^\d+$/.test(value)) this.onRetry(Number(value));
  }
}

/**
 * A ringcast subscriber. Emits `message` ({id, topic, event, data}), `reset`, `gap`,
 * `expired`, `upstream` (a backend's reply on the WebSocket) and `state`
 * ({state, transport}), all as CustomEvents with the payload in `detail`.
 */
export class RingcastClient extends EventTarget {
  #base;
  #opt;
  #topics;
  #token;
  #order;
  #ti = 0;
  #failedInRow = 0;
  #attempt = 0;
  #retryMs;
  #state = 'idle';
  #everOpen = false;
  #retryOnce = false;
  #conn = null;
  #gen = 0;
  #timer = null;
  #lastId = null;
  #last = null;
  #transport = null;

  /**
   * @param {string} url base URL of the engine (or of the proxy in front of it)
   * @param {object} options see ringcast.d.ts
   */
  constructor(url, options = {}) {
    super();
    this.#base = new URL(url, globalThis.location?.href);
    this.#opt = { ...DEFAULTS, ...options, paths: { ...DEFAULTS.paths, ...options.paths } };
    this.#topics = [...new Set(this.#opt.topics)];
    this.#token = this.#opt.token;
    this.#retryMs = this.#opt.retryMs;
    this.#order = this.#opt.transports.filter((t) => TRANSPORTS.includes(t));
    if (this.#order.length === 0) throw new TypeError(`no known transport in ${JSON.stringify(this.#opt.transports)}`);
    if (this.#opt.lastEventId) this.#adopt(this.#opt.lastEventId);
    const remembered = this.#opt.remember ? this.#recall() : null;
    this.#ti = Math.max(0, this.#order.indexOf(remembered));
    this.#setState('connecting');
    // Connect after the caller's listeners are attached.
    this.#schedule(0);
  }

  /** The transport in use (or being tried): 'websocket', 'sse', 'ndjson' or 'poll'. */
  get transport() { return this.#transport; }
  /** 'connecting', 'open', 'reconnecting' or 'closed'. */
  get state() { return this.#state; }
  /** The id of the last event delivered (or of the last reset): where a resume starts. */
  get lastEventId() { return this.#lastId; }
  /** The topics subscribed. */
  get topics() { return [...this.#topics]; }

  /** Adds a topic: a WebSocket subscribes in place; streams and polls reconnect. */
  subscribe(topic) {
    if (this.#topics.includes(topic)) return;
    this.#topics.push(topic);
    this.#topicsChanged({ op: 'subscribe', topic });
  }

  /** Removes a topic. */
  unsubscribe(topic) {
    if (!this.#topics.includes(topic)) return;
    this.#topics = this.#topics.filter((t) => t !== topic);
    this.#topicsChanged({ op: 'unsubscribe', topic });
  }

  /** Sends a message upstream to a backend. Only an open WebSocket can: false otherwise. */
  send(data) {
    if (this.#state !== 'open' || !this.#conn?.send) return false;
    return this.#conn.send(data);
  }

  /** Closes the connection for good. */
  close() {
    if (this.#state === 'closed') return;
    clearTimeout(this.#timer);
    this.#drop();
    this.#setState('closed');
  }

  // ----- connection lifecycle ------------------------------------------------------------

  #topicsChanged(op) {
    if (this.#state === 'closed') return;
    if (this.#conn?.op && this.#state === 'open') {
      this.#conn.op(op);
    } else if (this.#conn) {
      this.#drop();
      this.#schedule(0);
    } else if (this.#timer === null) {
      this.#schedule(0);
    }
  }

  #schedule(ms) {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#connect();
    }, ms);
  }

  #connect() {
    if (this.#state === 'closed') return;
    const name = this.#order[this.#ti];
    if (this.#topics.length === 0 && name !== 'websocket') return; // wait for subscribe()
    this.#transport = name;
    const gen = ++this.#gen;
    const on = {
      live: () => gen === this.#gen,
      verified: () => gen === this.#gen && this.#verified(),
      event: (e) => gen === this.#gen && this.#deliver(e),
      notice: (name, data, id) => gen === this.#gen && this.#notice(name, data, id),
      end: (why, info) => gen === this.#gen && this.#end(why, info),
    };
    if (name === 'websocket') this.#conn = this.#openWebSocket(on);
    else if (name === 'poll') this.#conn = this.#openPoll(on);
    else this.#conn = this.#openStream(name, on);
  }

  /** The connection carries data: it is open, and its transport is remembered. */
  #verified() {
    this.#attempt = 0;
    this.#failedInRow = 0;
    this.#everOpen = true;
    this.#store(this.#transport);
    this.#setState('open');
  }

  /**
   * Why a connection ended: 'lost' (it was open), 'down' (the server is unreachable),
   * 'refused' (the transport is refused or blocked: try the next), 'retry-after' (info:
   * ms), 'expired' (the token expired: refresh, then resume).
   */
  #end(why, info) {
    this.#drop();
    if (this.#state === 'closed') return;
    // A request right after a connection ended may go out on a kept-alive socket the
    // server is closing (fetch pools them) and fail at once: that once is retried at once.
    const retryNow = why === 'down' && this.#retryOnce;
    this.#retryOnce = this.#state === 'open';
    this.#setState(this.#everOpen ? 'reconnecting' : 'connecting');
    if (retryNow) return this.#schedule(0);
    if (why === 'expired') {
      // A fresh token is tried at once, but only once in a row: a refresher that keeps
      // handing out refused tokens is backed off like any failure.
      this.#refresh().then((ok) => {
        if (this.#state !== 'closed') this.#schedule(ok && this.#attempt++ === 0 ? 0 : this.#backoff());
      });
      return;
    }
    if (why === 'refused') {
      this.#ti = (this.#ti + 1) % this.#order.length;
      this.#failedInRow += 1;
      // Every transport refused in a row: wait before going round again.
      if (this.#failedInRow < this.#order.length) return this.#schedule(0);
      this.#failedInRow = 0;
      const remembered = this.#order.indexOf(this.#recall());
      if (remembered >= 0) this.#ti = remembered;
    }
    const extra = why === 'retry-after' ? info : 0;
    this.#schedule(extra + this.#backoff());
  }

  /** Full jitter (Brooker, "Exponential Backoff And Jitter", AWS 2015): a uniform delay
   * in [0, min(cap, base * 2^attempt)), base being the server's `retry:`. */
  #backoff() {
    const ceiling = Math.min(this.#opt.maxDelayMs, this.#retryMs * 2 ** Math.min(this.#attempt, 20));
    this.#attempt += 1;
    return Math.floor(Math.random() * ceiling);
  }

  async #refresh() {
    if (typeof this.#opt.refreshToken !== 'function') return false;
    try {
      const token = await this.#opt.refreshToken();
      if (typeof token !== 'string' || token === '') return false;
      this.#token = token;
      return true;
    } catch {
      return false;
    }
  }

  #drop() {
    this.#gen += 1;
    const conn = this.#conn;
    this.#conn = null;
    conn?.close();
  }

  #setState(state) {
    if (state === this.#state) return;
    this.#state = state;
    this.#emit('state', { state, transport: this.#transport });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  // ----- events, dedupe, notices ---------------------------------------------------------

  /** Adopts `id` as the resume point and the dedupe mark. */
  #adopt(id) {
    this.#lastId = id;
    this.#last = parseId(id);
  }

  /** Whether an event with this id was delivered already (same epoch, not newer). */
  #seen(id) {
    const p = parseId(id);
    if (p === null) return false;
    return this.#last !== null && p.epoch === this.#last.epoch && p.seq <= this.#last.seq;
  }

  #deliver({ id, topic, event, data }) {
    if (id == null || this.#seen(id)) return;
    this.#adopt(id);
    this.#emit('message', { id, topic: topic ?? (this.#topics.length === 1 ? this.#topics[0] : null), event: event ?? null, data });
  }

  #notice(name, data, id) {
    if (name === 'ringcast.reset') {
      if (id) this.#adopt(id);
      this.#emit('reset', { id: id ?? null, ...(typeof data === 'object' && data ? data : { data }) });
    } else if (name === 'ringcast.gap') {
      this.#emit('gap', data);
    } else if (name === 'ringcast.expired') {
      this.#emit('expired', data);
    }
  }

  // ----- URLs ----------------------------------------------------------------------------

  #url(name, params) {
    const url = new URL(this.#base.href);
    url.pathname = url.pathname.replace(/\/+$/, '') + this.#opt.paths[name];
    if (name === 'websocket') url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    url.search = '';
    for (const t of this.#topics) url.searchParams.append('topic', t);
    for (const [k, v] of Object.entries(params)) if (v != null) url.searchParams.set(k, v);
    if (this.#token) url.searchParams.set('token', this.#token);
    return url.href;
  }

  #fetch(url, init) {
    const f = this.#opt.fetch ?? globalThis.fetch;
    return f(url, { cache: 'no-store', credentials: 'omit', ...init });
  }

  /** A failure answer: why, and any Retry-After. */
  #status(res) {
    if (res.status === 401) {
      this.#emit('expired', { status: 401, reason: res.headers.get('www-authenticate') });
      return ['expired'];
    }
    const after = retryAfterMs(res.headers.get('retry-after'));
    if (res.status === 429 || res.status === 503) return ['retry-after', after ?? 0];
    return ['refused'];
  }

  // ----- WebSocket -----------------------------------------------------------------------

  #openWebSocket(on) {
    const WS = this.#opt.WebSocket ?? globalThis.WebSocket;
    if (typeof WS !== 'function') {
      queueMicrotask(() => on.end('refused'));
      return { close() {} };
    }
    const url = this.#url('websocket', { last_event_id: this.#lastId });
    const opt = this.#opt;
    let ws;
    try {
      ws = new WS(url);
    } catch {
      queueMicrotask(() => on.end('refused'));
      return { close() {} };
    }
    let opened = false;
    let verified = false;
    let timer = null;
    const arm = (ms, fn) => {
      clearTimeout(timer);
      timer = setTimeout(fn, ms);
    };
    const ping = () => {
      try {
        ws.send('{"op":"ping"}');
      } catch { /* closing */ }
    };
    // Quiet for a heartbeat: ask for a pong; nothing within the margin: dead.
    const alive = () => {
      if (opt.heartbeatMs <= 0) return clearTimeout(timer);
      arm(opt.heartbeatMs, () => {
        ping();
        arm(opt.marginMs, () => fail('lost'));
      });
    };
    const fail = (why) => {
      clearTimeout(timer);
      if (on.live()) on.end(why);
    };
    arm(opt.openTimeoutMs, () => fail('refused'));
    ws.onopen = () => {
      opened = true;
      // The first frame proves data flows (a proxy can complete an upgrade and pass nothing).
      ping();
      arm(opt.openTimeoutMs, () => fail(verified ? 'lost' : 'refused'));
    };
    ws.onmessage = (m) => {
      if (!on.live()) return;
      if (!verified) {
        verified = true;
        on.verified();
      }
      alive();
      if (typeof m.data !== 'string') return this.#emit('upstream', { data: m.data });
      this.#wsFrame(ws, m.data, on);
    };
    let handshakeFailed = false;
    // The handshake failed: refused by a proxy or the engine, or nobody is there. (Some
    // implementations, undici's in Node 20 among them, report it by `error` alone.)
    const failedHandshake = () => {
      clearTimeout(timer);
      if (handshakeFailed || !on.live()) return;
      handshakeFailed = true;
      this.#probe().then((reachable) => on.live() && on.end(reachable ? 'refused' : 'down'));
    };
    ws.onerror = () => {
      if (!opened) failedHandshake();
    };
    ws.onclose = (c) => {
      clearTimeout(timer);
      if (!on.live()) return;
      if (!opened) return failedHandshake();
      if (c.code === 4001) return on.end('expired');
      on.end(verified ? 'lost' : 'refused');
    };
    return {
      close() {
        clearTimeout(timer);
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        try {
          ws.close();
        } catch { /* never opened */ }
      },
      send(data) {
        ws.send(data);
        return true;
      },
      op(o) {
        ws.send(JSON.stringify(o));
      },
    };
  }

  #wsFrame(ws, text, on) {
    const obj = parseJson(text);
    if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) return this.#emit('upstream', { data: text });
    const name = obj.event;
    if (typeof name === 'string' && name.startsWith('ringcast.')) {
      if (name === 'ringcast.expired') {
        on.notice(name, obj.data, null);
        this.#refresh().then((ok) => {
          if (!on.live()) return;
          if (ok) ws.send(JSON.stringify({ op: 'refresh', token: this.#token }));
        });
        return;
      }
      return on.notice(name, obj.data, obj.id ?? null);
    }
    if (typeof obj.id === 'string' && 'data' in obj) return on.event(obj);
    this.#emit('upstream', { data: text });
  }

  /** Whether the server answers plain HTTP at the WebSocket's address: a failed handshake
   * with a server there is a refusal (a proxy without upgrades, a 4xx), not an outage. */
  async #probe() {
    const url = this.#url('websocket', {}).replace(/^ws/, 'http');
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), this.#opt.openTimeoutMs);
    try {
      const res = await this.#fetch(url, { mode: 'no-cors', signal: ctl.signal });
      res.body?.cancel().catch(() => {});
      return true;
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  // ----- SSE and NDJSON streams ----------------------------------------------------------

  #openStream(name, on) {
    const ctl = new AbortController();
    const opt = this.#opt;
    let verified = false;
    let timer = null;
    let done = false;
    const fail = (why, info) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      ctl.abort();
      if (on.live()) on.end(why, info);
    };
    const arm = (ms, why) => {
      clearTimeout(timer);
      timer = setTimeout(() => fail(why), ms);
    };
    // Nothing at all within the open timeout (a buffering proxy): try the next transport.
    // Later, silence past a heartbeat and the margin means the connection is dead.
    arm(opt.openTimeoutMs, 'refused');
    const alive = () => {
      if (!verified) {
        verified = true;
        on.verified();
      }
      if (opt.heartbeatMs > 0) arm(opt.heartbeatMs + opt.marginMs, 'lost');
      else clearTimeout(timer);
    };
    const parse = name === 'sse' ? this.#sseSink(on) : this.#ndjsonSink(on);
    const url = this.#url(name, { last_event_id: this.#lastId });
    const accept = name === 'sse' ? 'text/event-stream' : 'application/x-ndjson';
    (async () => {
      let res;
      try {
        res = await this.#fetch(url, { signal: ctl.signal, headers: { Accept: accept } });
      } catch {
        return fail('down');
      }
      const type = res.headers.get('content-type') ?? '';
      if (res.status !== 200 || !type.startsWith(accept) || !res.body) {
        res.body?.cancel().catch(() => {});
        return fail(...(res.status !== 200 ? this.#status(res) : ['refused']));
      }
      // An SSE stream opens with `retry:`: its first bytes show nothing buffers them. An
      // NDJSON stream sends nothing before its first event or heartbeat: the answer counts.
      if (name === 'ndjson') alive();
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      try {
        for (;;) {
          const { value, done: end } = await reader.read();
          if (end || !on.live()) break;
          alive();
          parse(decoder.decode(value, { stream: true }));
          if (done) return;
        }
      } catch { /* cut off */ }
      // A stream that ends after an expiry notice wants a new token.
      fail(parse.expired ? 'expired' : verified ? 'lost' : 'refused');
    })();
    return { close: () => { done = true; clearTimeout(timer); ctl.abort(); } };
  }

  #sseSink(on) {
    const sink = (text) => parser.feed(text);
    const parser = new SseParser((e) => {
      if (e.event && e.event.startsWith('ringcast.')) {
        if (e.event === 'ringcast.expired') sink.expired = true;
        return on.notice(e.event, parseJson(e.data), e.id);
      }
      on.event({ id: e.id, topic: null, event: e.event, data: e.data });
    }, (ms) => { this.#retryMs = ms; });
    return sink;
  }

  #ndjsonSink(on) {
    let buf = '';
    const sink = (text) => {
      buf += text;
      let at;
      while ((at = buf.indexOf('\n')) >= 0) {
        const obj = parseJson(buf.slice(0, at));
        buf = buf.slice(at + 1);
        if (obj === null || typeof obj !== 'object') continue;
        if (typeof obj.event === 'string' && obj.event.startsWith('ringcast.')) {
          if (obj.event === 'ringcast.expired') sink.expired = true;
          on.notice(obj.event, obj.data, obj.id ?? null);
        } else if (typeof obj.id === 'string') {
          on.event(obj);
        }
      }
    };
    return sink;
  }

  // ----- polling -------------------------------------------------------------------------

  #openPoll(on) {
    const opt = this.#opt;
    let ctl = null;
    let timer = null;
    let closed = false;
    let verified = false;
    let cursor = this.#lastId;
    const fail = (why, info) => {
      if (closed) return;
      closed = true;
      clearTimeout(timer);
      ctl?.abort();
      if (on.live()) on.end(why, info);
    };
    const once = async () => {
      ctl = new AbortController();
      // The first poll of a connection answers at once (it shows the transport works);
      // the next are held up to `wait`. Past that and the margin the connection is dead.
      const wait = verified ? opt.pollWaitSecs : 0;
      timer = setTimeout(() => ctl.abort(), wait * 1000 + opt.marginMs + (verified ? 0 : opt.openTimeoutMs));
      let res;
      let body;
      try {
        res = await this.#fetch(this.#url('poll', { after: cursor, wait }), { signal: ctl.signal });
        if (res.status === 200) body = await res.json();
      } catch {
        return fail(verified ? 'lost' : 'down');
      } finally {
        clearTimeout(timer);
      }
      if (closed || !on.live()) return;
      if (res.status !== 200) {
        res.body?.cancel().catch(() => {});
        return fail(...this.#status(res));
      }
      if (!body || !Array.isArray(body.events)) return fail('refused');
      if (!verified) {
        verified = true;
        on.verified();
      }
      if (body.reset) on.notice('ringcast.reset', body.reset, null);
      for (const e of body.events) {
        if (typeof e.event === 'string' && e.event.startsWith('ringcast.')) on.notice(e.event, e.data, e.id ?? null);
        else on.event(e);
      }
      if (typeof body.next === 'string') cursor = body.next;
      if (body.reset && typeof body.next === 'string' && body.events.length === 0) this.#adopt(body.next);
      if (!closed && on.live()) once();
    };
    once();
    return { close: () => { closed = true; clearTimeout(timer); ctl?.abort(); } };
  }

  // ----- what worked ---------------------------------------------------------------------

  #key() {
    return this.#base.origin + this.#base.pathname;
  }

  #recall() {
    try {
      const stored = globalThis.localStorage?.getItem(STORAGE_PREFIX + this.#key());
      if (stored) return stored;
    } catch { /* storage refused */ }
    return REMEMBERED.get(this.#key()) ?? null;
  }

  #store(name) {
    if (!this.#opt.remember) return;
    REMEMBERED.set(this.#key(), name);
    try {
      globalThis.localStorage?.setItem(STORAGE_PREFIX + this.#key(), name);
    } catch { /* storage refused */ }
  }
}

export default RingcastClient;
