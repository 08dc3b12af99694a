// The npm `eventsource` package (4.x, WHATWG EventSource for Node, on Node's fetch)
// against ringcast: the client server-side code and tools use. It reconnects by itself
// after a drop, sending Last-Event-ID.
//
//   node eventsource_lib.mjs drop    <host:port> <ingest socket>   dropped, resumes with Last-Event-ID
//   node eventsource_lib.mjs restart <host:port> <ingest socket>   engine restarted: ringcast.reset
//
// See common.mjs for the scenarios and the RESULT line.
import { createRequire } from 'node:module';
import { EventSource } from 'eventsource';
import { parseArgs, runScenario } from './common.mjs';

const { version } = createRequire(import.meta.url)('eventsource/package.json');

async function openLibraryClient(url) {
  const rc = { events: [], opens: 0, errors: 0 };
  const es = new EventSource(url);
  const record = (e) => rc.events.push({ type: e.type, id: e.lastEventId, data: e.data });
  es.onmessage = record;
  es.addEventListener('ringcast.reset', record);
  es.onopen = () => rc.opens++;
  es.onerror = () => rc.errors++;
  return {
    name: `eventsource ${version}`,
    events: async () => rc.events.slice(),
    opened: async () => rc.opens > 0,
    stats: async () => ({ opens: rc.opens, errors: rc.errors }),
    close: async () => es.close(),
  };
}

await runScenario(parseArgs(process.argv, ['drop', 'restart']), openLibraryClient);
