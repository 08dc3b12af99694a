// uWebSockets.js (npm `uwebsockets`, pinned in package-lock.json) as a ringcast benchmark
// peer: one process, one event loop thread, so one core (pin it with taskset).
//   node server.js PORT
// Subscribers: ws://127.0.0.1:PORT/ws?topic=T (every message published to T arrives as
// one text frame, the payload as published). Publisher: ws://127.0.0.1:PORT/pub?topic=T;
// each message it sends is published to T with app.publish and answered with a one-byte
// text frame "+" once app.publish returned (uWS writes to every subscriber inside it), so
// a client that keeps W messages unanswered keeps W publishes in flight.
// UWS_MAX_BACKPRESSURE (bytes, default 1 MiB): what uWS buffers per subscriber beyond the
// socket; past it uWS drops the subscriber's messages (it does not close it).
// idleTimeout 0: no pings, so the idle figure is the connection alone.
'use strict';
const uWS = require('uwebsockets');
const port = Number(process.argv[2] || 9001);
const maxBackpressure = Number(process.env.UWS_MAX_BACKPRESSURE || (1 << 20));
const topicOf = (req) => new URLSearchParams(req.getQuery() || '').get('topic') || 'cmp';
const upgrade = (res, req, context) => {
  res.upgrade({ topic: topicOf(req) },
    req.getHeader('sec-websocket-key'), req.getHeader('sec-websocket-protocol'),
    req.getHeader('sec-websocket-extensions'), context);
};
let published = 0;
const app = uWS.App();
app.ws('/ws', {
  compression: uWS.DISABLED, maxPayloadLength: 64 * 1024, idleTimeout: 0, maxBackpressure,
  upgrade,
  open: (ws) => { ws.subscribe(ws.getUserData().topic); },
});
app.ws('/pub', {
  compression: uWS.DISABLED, maxPayloadLength: 64 * 1024, idleTimeout: 0,
  maxBackpressure: 64 << 20, upgrade,
  message: (ws, message, isBinary) => {
    app.publish(ws.getUserData().topic, message, isBinary);
    published += 1;
    ws.send('+', false);
  },
});
app.get('/stats', (res) => { res.end(JSON.stringify({ published, node: process.version })); });
app.listen('127.0.0.1', port, (token) => {
  if (!token) { console.error(`uws: cannot listen on 127.0.0.1:${port}`); process.exit(1); }
  console.log(`uws listening 127.0.0.1:${port} pid ${process.pid} node ${process.version} maxBackpressure ${maxBackpressure}`);
});
