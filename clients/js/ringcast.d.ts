// Types for ringcast.js (ringcast-client).

/** A transport the client can use, tried in the order given. */
export type Transport = 'websocket' | 'sse' | 'ndjson' | 'poll';

/** The client's connection state. */
export type State = 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface RingcastOptions {
  /** Topics to subscribe to (1-200 bytes of [A-Za-z0-9._~:/-] each, at most 64). */
  topics?: string[];
  /** A subscriber token (JWT), sent as `token=` in the query. */
  token?: string | null;
  /** Called when the engine says the token expired (or answers 401): resolves to a new
   * token, and the client resumes with it from its last event id. */
  refreshToken?: (() => string | Promise<string>) | null;
  /** Transports in order of preference. Default ['websocket', 'sse', 'poll']. */
  transports?: Transport[];
  /** Paths under the base URL. Default {websocket: '/ws', sse: '/sse', ndjson: '/stream', poll: '/poll'}. */
  paths?: Partial<Record<Transport, string>>;
  /** Resume from this id (for example one the app stored). */
  lastEventId?: string;
  /** Backoff base before the server's `retry:` says otherwise, ms. Default 3000. */
  retryMs?: number;
  /** Backoff cap, ms. Default 30000. */
  maxDelayMs?: number;
  /** The engine's --heartbeat-ms (SSE and NDJSON heartbeats; the WebSocket ping period).
   * Default 15000; 0 turns liveness checks off (for an engine run with --heartbeat-ms 0). */
  heartbeatMs?: number;
  /** Silence beyond heartbeatMs after which a connection is taken for dead, ms. Default 5000. */
  marginMs?: number;
  /** A transport that carries nothing this long after it was opened is taken as blocked
   * and the next is tried, ms. Default 8000. */
  openTimeoutMs?: number;
  /** How long a long-poll is held, seconds. Default 25. */
  pollWaitSecs?: number;
  /** Remember the transport that worked, per base URL (and in localStorage). Default true. */
  remember?: boolean;
  /** A WebSocket constructor, where there is no global one (Node 20: npm `ws`, or undici's). */
  WebSocket?: { new (url: string): WebSocket };
  /** A fetch function, in place of the global one. */
  fetch?: typeof fetch;
}

/** One event as published. `topic` is null on SSE with several topics (SSE does not carry it). */
export interface RingcastMessage {
  id: string;
  topic: string | null;
  event: string | null;
  data: string;
}

/** The resume could not be served exactly: replay starts from `oldest_id`. */
export interface RingcastReset {
  /** The reset's own id (the new resume point), null on polls. */
  id: string | null;
  reason: 'expired' | 'unknown-epoch' | 'malformed-id' | string;
  last_event_id: string | null;
  oldest_id: string | null;
}

/** Events were dropped for this (slow) client. */
export interface RingcastGap {
  topic: string | null;
  dropped: number | null;
  first_id: string | null;
  last_id: string | null;
}

export interface RingcastEventMap {
  message: CustomEvent<RingcastMessage>;
  reset: CustomEvent<RingcastReset>;
  gap: CustomEvent<RingcastGap>;
  expired: CustomEvent<unknown>;
  upstream: CustomEvent<{ data: string | ArrayBuffer | Blob }>;
  state: CustomEvent<{ state: State; transport: Transport | null }>;
}

export declare class RingcastClient extends EventTarget {
  constructor(url: string | URL, options?: RingcastOptions);
  /** The transport in use or being tried. */
  readonly transport: Transport | null;
  readonly state: State;
  /** Where a resume starts: the last event delivered, or the last reset. */
  readonly lastEventId: string | null;
  readonly topics: string[];
  subscribe(topic: string): void;
  unsubscribe(topic: string): void;
  /** Sends a message to a backend over an open WebSocket; false when none is open. */
  send(data: string | ArrayBufferLike | Blob | ArrayBufferView): boolean;
  close(): void;
  addEventListener<K extends keyof RingcastEventMap>(
    type: K,
    listener: (this: RingcastClient, ev: RingcastEventMap[K]) => unknown,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof RingcastEventMap>(
    type: K,
    listener: (this: RingcastClient, ev: RingcastEventMap[K]) => unknown,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
}

export default RingcastClient;
