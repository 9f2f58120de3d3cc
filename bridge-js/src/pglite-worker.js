// The PGlite worker thread. PGlite runs one PostgreSQL backend in single-user mode and blocks its thread
// while a query runs, so it lives here, off the main thread: the front end stays responsive, timers fire,
// and a runaway query can be stopped by terminating this worker.
//
// Requests and responses travel through shared memory (see channel.js), not postMessage: the main thread
// writes a request and wakes us with Atomics.notify; we answer in place. postMessage is used only for the
// one-time "open"/"opened"/"failed" handshake and for log lines.
import { workerData, parentPort } from 'node:worker_threads';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { packageVersion } from './versions.js';
import { Channel, OP_EXEC, OP_CLOSE } from './channel.js';
import { pgliteExtensions } from './extensions.js';
import { Marks, OP_EXEC_MANY, OP_EXEC_IF, runMany, runIf } from './multi.js';


/** Milliseconds since `t0`, rounded. */
const since = (t0) => Math.round(performance.now() - t0);

/**
 * PostgreSQL's WASM module, compiled here rather than inside PGlite.create() so that its cost is known
 * (the `opened` message reports it; the server logs it at debug) and so that the compile overlaps with
 * importing PGlite's JS. The fs bundle (pglite.data) is left to PGlite: handed over as a Blob it stayed
 * referenced, 6 MB more RSS for good (measured); its read and unpack are part of "backend start".
 */
function compileWasm() {
  const dist = path.dirname(createRequire(import.meta.url).resolve('@electric-sql/pglite'));
  const t0 = performance.now();
  return fs.promises.readFile(path.join(dist, 'pglite.wasm'))
    .then((bytes) => WebAssembly.compile(bytes))
    .then((module) => ({ module, ms: since(t0) }));
}

async function open() {
  const t0 = performance.now();
  const compiling = compileWasm();
  const { PGlite } = await import('@electric-sql/pglite');
  const importMs = since(t0);
  // `extensions` is a plan from extensions.js: every shipped extension is linked in, none is loaded yet.
  const { dataDir, extensions: plan, startParams } = workerData;
  const options = { extensions: pgliteExtensions(plan) };
  if (dataDir) options.dataDir = dataDir;
  if (startParams && startParams.length) options.startParams = startParams;
  const wasm = await compiling;
  options.pgliteWasmModule = wasm.module;
  // A new data dir is still being copied from the template: the import and the compile above overlap
  // with the copy; PGlite itself must not look at the directory before the main thread says it is there.
  if (workerData.waitForDataDir) await new Promise((resolve) => parentPort.once('message', resolve));
  const tCreate = performance.now();
  const db = await PGlite.create(options);
  const timings = {
    import_ms: importMs,
    wasm_compile_ms: wasm.ms,
    backend_start_ms: since(tCreate),
    total_ms: since(t0),
  };
  const ver = await db.query('SHOW server_version');
  const ext = await db.query("SELECT extname FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1");
  return {
    db,
    info: {
      pglite_version: packageVersion('@electric-sql/pglite'),
      postgres_version: ver.rows[0].server_version,
      installed_extensions: ext.rows.map((r) => r.extname),
      timings,
    },
  };
}

async function main() {
  const channel = Channel.attach(workerData.channel);
  const marks = new Marks(workerData.marks);
  let db;
  try {
    const opened = await open();
    db = opened.db;
    parentPort.postMessage({ type: 'opened', ...opened.info });
  } catch (err) {
    parentPort.postMessage({ type: 'failed', message: String((err && err.stack) || err) });
    return;
  }

  // The response is copied straight from PGlite's output callback into shared memory; this also keeps
  // PGlite from running its own protocol parser over every byte (what execProtocolRaw does). The callback
  // installed by execProtocolRawStream stays in place, so from here on execProtocolRawSync uses it and
  // throws synchronously (execProtocolRawStream is async: its errors would only reject a promise).
  // syncToFs is a no-op for NodeFS, which writes through; never call db.query() after this point.
  let outLen = 0;
  const onRawData = (chunk) => {
    outLen = channel.writeResponse(chunk, outLen);
  };
  await db.execProtocolRawStream(new Uint8Array(0), { syncToFs: false, onRawData });

  for (;;) {
    channel.waitForRequest();
    const op = channel.op();
    if (op === OP_CLOSE) {
      try {
        await db.close();
        channel.respond(0);
      } catch (err) {
        channel.fail(String(err));
      }
      return;
    }
    if (op === OP_EXEC_IF) {
      outLen = 0;
      try {
        channel.respond(runIf(channel, (bytes) => db.execProtocolRawSync(bytes), () => outLen));
      } catch (err) {
        channel.fail(String((err && err.stack) || err));
      }
      continue;
    }
    if (op === OP_EXEC_MANY) {
      outLen = 0;
      channel.respond(runMany(channel, marks, (bytes) => db.execProtocolRawSync(bytes), () => outLen));
      continue;
    }
    if (op !== OP_EXEC) {
      channel.fail(`unknown op ${op}`);
      continue;
    }
    outLen = 0;
    try {
      db.execProtocolRawSync(channel.request());
      channel.respond(outLen);
    } catch (err) {
      channel.fail(String((err && err.stack) || err));
    }
  }
}

main().catch((err) => {
  parentPort.postMessage({ type: 'failed', message: String((err && err.stack) || err) });
});
