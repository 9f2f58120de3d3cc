#!/usr/bin/env node
// The in-process floor for scripts/bench.py: PGlite opened in this process, no socket, no worker thread,
// no front end. What is left is PostgreSQL (wasm) itself plus the JS call, so the gap between this and a
// server's SELECT 1 latency is what the wire front end, the socket and the client cost.
//
//   node bridge-js/bench/floor.js [--data-dir DIR] [--iterations 5000] [--warmup 500] [--inserts 2000]
//
// Prints one JSON line on stdout: open time, SELECT 1 p50/p99 via execProtocolRaw and execProtocolRawSync
// (a prebuilt simple-Query message) and via db.query, the time for N autocommit INSERTs (Query messages
// through execProtocolRaw), RSS. Uses only the pinned @electric-sql/pglite from bridge-js/node_modules.
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { readFileSync } from 'node:fs';

const { values } = parseArgs({
  options: {
    'data-dir': { type: 'string' },
    iterations: { type: 'string', default: '5000' },
    warmup: { type: 'string', default: '500' },
    inserts: { type: 'string', default: '2000' },
  },
  strict: true,
});
const N = Number(values.iterations);
const WARMUP = Number(values.warmup);
const INSERTS = Number(values.inserts);

/** A simple-protocol Query ('Q') message for `sql`. */
function queryMessage(sql) {
  const body = Buffer.from(`${sql}\0`, 'utf8');
  const msg = Buffer.alloc(5 + body.length);
  msg[0] = 0x51;
  msg.writeInt32BE(4 + body.length, 1);
  body.copy(msg, 5);
  return new Uint8Array(msg.buffer, msg.byteOffset, msg.length);
}

/** True if the backend output holds an ErrorResponse ('E') message. */
function hasError(out) {
  let i = 0;
  while (i + 5 <= out.length) {
    if (out[i] === 0x45) return true;
    const len = (out[i + 1] << 24) | (out[i + 2] << 16) | (out[i + 3] << 8) | out[i + 4];
    i += 1 + len;
  }
  return false;
}

function stats(samples) {
  const s = Float64Array.from(samples).sort();
  const at = (q) => s[Math.min(s.length - 1, Math.floor(q * s.length))];
  const mean = s.reduce((a, b) => a + b, 0) / s.length;
  return { n: s.length, p50_us: at(0.5) * 1000, p99_us: at(0.99) * 1000, mean_us: mean * 1000 };
}

async function timeLoop(fn) {
  for (let i = 0; i < WARMUP; i++) await fn();
  const samples = new Array(N);
  for (let i = 0; i < N; i++) {
    const t0 = performance.now();
    await fn();
    samples[i] = performance.now() - t0;
  }
  return stats(samples);
}

const pgliteVersion = (() => {
  try {
    const url = new URL(import.meta.resolve('@electric-sql/pglite'));
    for (let dir = new URL('.', url), i = 0; i < 5; i++, dir = new URL('..', dir)) {
      try {
        const pkg = JSON.parse(readFileSync(new URL('package.json', dir), 'utf8'));
        if (pkg.name === '@electric-sql/pglite') return pkg.version;
      } catch { /* go up */ }
    }
  } catch { /* unknown */ }
  return 'unknown';
})();

const result = { pglite_version: pgliteVersion, data_dir: values['data-dir'] ?? 'memory://', iterations: N, warmup: WARMUP };
const { PGlite } = await import('@electric-sql/pglite');
let t0 = performance.now();
const db = await PGlite.create(values['data-dir'] ? { dataDir: values['data-dir'] } : {});
await db.query('SELECT 1');
result.open_ms = performance.now() - t0;
result.postgres_version = (await db.query('SHOW server_version')).rows[0].server_version;

const select1 = queryMessage('SELECT 1');
result.raw_select1 = await timeLoop(() => db.execProtocolRaw(select1));
if (typeof db.execProtocolRawSync === 'function') {
  result.raw_sync_select1 = await timeLoop(() => db.execProtocolRawSync(select1));
} else {
  result.raw_sync_select1 = null;
}
result.query_select1 = await timeLoop(() => db.query('SELECT 1'));

let out = await db.execProtocolRaw(queryMessage('CREATE TABLE floor_ins (id int, v text)'));
if (hasError(out)) throw new Error('CREATE TABLE failed');
const inserts = [];
for (let i = 0; i < INSERTS; i++) inserts.push(queryMessage(`INSERT INTO floor_ins VALUES (${i}, 'row ${i}')`));
t0 = performance.now();
for (const m of inserts) {
  out = await db.execProtocolRaw(m);
  if (hasError(out)) throw new Error('INSERT failed');
}
const insMs = performance.now() - t0;
result.inserts = { rows: INSERTS, ms: insMs, rows_per_s: (INSERTS / insMs) * 1000 };
const count = (await db.query('SELECT count(*)::int AS n FROM floor_ins')).rows[0].n;
if (count !== INSERTS) throw new Error(`expected ${INSERTS} rows, found ${count}`);
result.rss_bytes = process.memoryUsage().rss;
await db.close();
process.stdout.write(`${JSON.stringify(result)}\n`);
