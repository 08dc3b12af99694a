// The console page: watches topics with the ringcast JavaScript client (served beside it
// from clients/js) and publishes test events through the admin's POST /publish.
import { RingcastClient } from '/_console/ringcast.js';

const $ = (id) => document.getElementById(id);
const body = document.body.dataset;
const ROWS_MAX = 500;

/** The client listener as this browser reaches it: an unspecified address (0.0.0.0, ::)
 * means the host the page came from. */
function clientBase() {
  const listen = body.listen;
  const at = listen.lastIndexOf(':');
  let host = listen.slice(0, at);
  const port = listen.slice(at + 1);
  if (host === '0.0.0.0' || host === '[::]') host = location.hostname.includes(':') ? `[${location.hostname}]` : location.hostname;
  return `${location.protocol}//${host}:${port}`;
}

let client = null;
let topics = [];
let count = 0;

function row(kind, cells) {
  const tr = document.createElement('tr');
  tr.className = kind;
  const time = new Date().toISOString().slice(11, 23);
  for (const [i, text] of [time, kind, ...cells].entries()) {
    const td = document.createElement('td');
    td.textContent = text ?? '';
    if (i === 5) td.className = 'data';
    tr.append(td);
  }
  const tbody = $('events');
  tbody.prepend(tr);
  while (tbody.rows.length > ROWS_MAX) tbody.lastElementChild.remove();
}

function start() {
  const lastEventId = client?.lastEventId ?? undefined;
  client?.close();
  client = new RingcastClient(clientBase(), {
    topics,
    transports: $('transport').value.split(','),
    heartbeatMs: Number(body.heartbeatMs) || 15000,
    lastEventId,
  });
  client.addEventListener('message', (e) => {
    const m = e.detail;
    count += 1;
    $('count').textContent = `${count} received`;
    row('message', [m.id, m.topic, m.event, m.data]);
  });
  client.addEventListener('reset', (e) => row('reset', [e.detail.id, '', 'ringcast.reset', JSON.stringify(e.detail)]));
  client.addEventListener('gap', (e) => row('gap', ['', e.detail?.topic, 'ringcast.gap', JSON.stringify(e.detail)]));
  client.addEventListener('expired', (e) => row('gap', ['', '', 'ringcast.expired', JSON.stringify(e.detail)]));
  client.addEventListener('state', (e) => {
    const { state, transport } = e.detail;
    $('state').textContent = state;
    $('state').className = state;
    $('where').textContent = `${transport ?? ''} to ${clientBase()}`;
    row('state', ['', '', state, transport ?? '']);
  });
}

function renderTopics() {
  const ul = $('topics');
  ul.replaceChildren();
  for (const t of topics) {
    const li = document.createElement('li');
    li.textContent = t;
    const x = document.createElement('button');
    x.textContent = '×';
    x.title = `stop watching ${t}`;
    x.onclick = () => {
      topics = topics.filter((o) => o !== t);
      client.unsubscribe(t);
      renderTopics();
    };
    li.append(x);
    ul.append(li);
  }
}

$('subscribe').addEventListener('submit', (e) => {
  e.preventDefault();
  const t = $('topic').value.trim();
  if (t && !topics.includes(t)) {
    topics.push(t);
    client.subscribe(t);
    if (!$('pub-topic').value) $('pub-topic').value = t;
  }
  $('topic').value = '';
  renderTopics();
});
$('transport').addEventListener('change', start);

if (body.publish !== 'token') {
  for (const el of $('publish').elements) el.disabled = true;
  $('publish-status').textContent = 'publishing from the console needs the engine started with --admin-token or --admin-token-file';
}
$('publish').addEventListener('submit', async (e) => {
  e.preventDefault();
  const q = new URLSearchParams({ topic: $('pub-topic').value.trim() });
  if ($('pub-event').value.trim()) q.set('event', $('pub-event').value.trim());
  const status = $('publish-status');
  status.textContent = 'publishing...';
  try {
    const res = await fetch(`/publish?${q}`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${$('pub-token').value}` },
      body: $('pub-data').value,
    });
    const text = await res.text();
    status.textContent = res.ok ? `published ${JSON.parse(text).id}` : `${res.status}: ${text.trim()}`;
  } catch (err) {
    status.textContent = `failed: ${err.message}`;
  }
});

const initial = new URLSearchParams(location.search).getAll('topic');
topics = [...new Set(initial)];
renderTopics();
start();
window.rcConsole = { get client() { return client; } };
