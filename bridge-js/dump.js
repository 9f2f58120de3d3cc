#!/usr/bin/env node
// hive-bridge dump helper: a logical dump of a data dir that no server has open, by PGlite's own pg_dump
// (WASM, @electric-sql/pglite-tools) in a PGlite instance of its own, never the serving one.
//
// The caller (hive_bridge/dump.py) points it at a snapshot copy the running server made (POST /snapshot)
// or at a stopped data dir whose lock it holds. After pg_dump, the caller's fingerprint queries (plain
// SELECTs, --queries FILE: {"name": "SQL", ...}) run on the same instance, so the dump and the fingerprint
// describe one point in time.
//
//   node dump.js --data-dir DIR --out FILE [--extensions all] [--queries FILE] [--pg-dump-arg ARG]...
//
// stdout: one JSON line, {"event":"dumped","bytes":N,"ms":N,"pg_dump_version":"…","fingerprint":{name: rows}}
// or {"event":"error","code":"…","message":"…","hint":"…"|null} (exit 1). Rows are arrays of text (or null).
import fs from 'node:fs';
import v8 from 'node:v8';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { packageVersion } from './src/versions.js';
import * as Extensions from './src/extensions.js';
import { checkStamp } from './src/datadir.js';

function emit(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

function fail(code, message, hint = null) {
  emit({ event: 'error', code, message, hint });
  process.exit(1);
}

/** Quiet unless something is wrong: stdout carries only the JSON result line. */
const log = {
  error: (m) => process.stderr.write(`ERROR ${m}\n`),
  warn: (m) => process.stderr.write(`WARN ${m}\n`),
  info: () => {},
  debug: () => {},
};

async function main() {
  // V8's baseline compiler only, as the server does: measured on a loaded 2-core machine, opening the
  // copy and dumping 55k rows took 3 s + 5 s instead of 6.5 s + 16 s with TurboFan tiering up the two
  // WASM modules (PostgreSQL and pg_dump) in the background. Must run before they are compiled.
  v8.setFlagsFromString('--liftoff-only');
  const { values } = parseArgs({
    options: {
      'data-dir': { type: 'string' },
      out: { type: 'string' },
      extensions: { type: 'string', default: 'all' },
      queries: { type: 'string' },
      'pg-dump-arg': { type: 'string', multiple: true, default: [] },
    },
    strict: true,
  });
  if (!values['data-dir'] || !values.out) fail('bad_args', '--data-dir DIR and --out FILE are required');
  const dataDir = path.resolve(values['data-dir']);
  if (!fs.existsSync(path.join(dataDir, 'PG_VERSION'))) fail('not_a_data_dir', `${dataDir} is not a data dir (no PG_VERSION)`);
  try {
    checkStamp(dataDir, packageVersion('@electric-sql/pglite')); // a foreign PGlite version: refused untouched
  } catch (err) {
    fail(err.code || 'version_mismatch', err.message, err.hint);
  }
  const queries = values.queries ? JSON.parse(fs.readFileSync(values.queries, 'utf8')) : {};
  const t0 = Date.now();
  const { PGlite } = await import('@electric-sql/pglite');
  const { pgDump } = await import('@electric-sql/pglite-tools/pg_dump');
  const names = values.extensions.split(',').map((e) => e.trim()).filter(Boolean);
  let db;
  try {
    // the same extensions as the server offers (src/extensions.js: linked in, loaded only when used)
    const plan = Extensions.plan(names, { cacheDir: process.env.HIVE_BRIDGE_CACHE_DIR, log });
    db = await PGlite.create({ dataDir, extensions: Extensions.pgliteExtensions(plan) });
  } catch (err) {
    fail('open_failed', `PGlite could not open ${dataDir}: ${String(err && err.message).split('\n')[0]}`);
  }
  let file;
  try {
    file = await pgDump({ pg: db, args: values['pg-dump-arg'] });
  } catch (err) {
    fail('pg_dump_failed', `pg_dump failed: ${String(err && err.message).trim()}`);
  }
  const text = await file.text();
  fs.writeFileSync(values.out, text, { flag: 'wx', mode: 0o600 });
  const fingerprint = {};
  for (const [name, sql] of Object.entries(queries)) {
    try {
      fingerprint[name] = (await db.query(sql, [], { rowMode: 'array' })).rows;
    } catch (err) {
      fail('query_failed', `fingerprint query "${name}" failed: ${err.message}`);
    }
  }
  await db.close();
  const version = /^-- Dumped by pg_dump version (.+)$/m.exec(text);
  emit({
    event: 'dumped',
    bytes: Buffer.byteLength(text),
    ms: Date.now() - t0,
    pg_dump_version: version ? version[1] : null,
    pglite_version: packageVersion('@electric-sql/pglite'),
    pglite_tools_version: packageVersion('@electric-sql/pglite-tools'),
    fingerprint,
  });
}

process.on('uncaughtException', (err) => fail('crashed', String((err && err.stack) || err)));
main().catch((err) => fail('crashed', String((err && err.stack) || err)));
