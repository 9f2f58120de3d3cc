// The one PostgreSQL backend: a PGlite instance in a worker thread, driven through a shared-memory channel.
//
// exec() hands PGlite a buffer of frontend protocol messages and resolves to every byte it wrote back.
// Only one exec is ever in flight (the scheduler guarantees it). interrupt() is the only way to stop a
// running query, since PGlite has no cancel API: terminate the worker and open the data dir again. Every
// (re)open bumps `generation`, which tells the front end that session state on the backend (prepared
// statements, settings, LISTENs, temp tables) is gone.
import { Worker } from 'node:worker_threads';
import { EventEmitter } from 'node:events';
import { Channel, OP_EXEC, OP_CLOSE } from './channel.js';
import { startupMessage, parseMessages } from './protocol.js';
import { Marks, OP_EXEC_MANY, OP_EXEC_IF, encodeMany, encodeIf } from './multi.js';

export class BackendError extends Error {
  constructor(message, { fatal = true } = {}) {
    super(message);
    this.name = 'BackendError';
    this.fatal = fatal;
  }
}

export class Backend extends EventEmitter {
  constructor({ dataDir, extensions, startParams, log }) {
    super();
    this.dataDir = dataDir;
    this.extensions = extensions;
    this.startParams = startParams;
    this.log = log;
    this.worker = null;
    this.channel = null;
    this.generation = 0;
    this.ready = false;
    this.busy = false;
    this.info = null;
    this.baseline = new Map(); // GUC_REPORT parameters as a fresh session reports them
    this.restarts = 0;
    this.execs = 0;
  }

  /**
   * Start the worker and open the data dir. `dataDirReady` (a promise): the data dir is still being
   * created; the worker imports PGlite and compiles its WASM meanwhile and opens the dir once it resolves.
   * If it rejects, the worker is stopped and open() rejects with that error.
   */
  async open({ dataDirReady = null } = {}) {
    this.marks = Marks.create();
    const started = Date.now();
    this.channel = Channel.create();
    const worker = new Worker(new URL('./pglite-worker.js', import.meta.url), {
      workerData: {
        channel: this.channel.shared,
        marks: this.marks.sab,
        dataDir: this.dataDir,
        extensions: this.extensions,
        startParams: this.startParams,
        waitForDataDir: dataDirReady !== null,
      },
      transferList: this.channel.transferList, // the port that brings the worker shrunk buffers
      stdout: false,
      stderr: false,
    });
    this.worker = worker;
    const info = await new Promise((resolve, reject) => {
      const onMessage = (msg) => {
        if (msg.type === 'opened') resolve(msg);
        else if (msg.type === 'failed') reject(new BackendError(msg.message));
      };
      worker.on('message', onMessage);
      worker.once('error', (err) => reject(new BackendError(String((err && err.stack) || err))));
      worker.once('exit', (code) => reject(new BackendError(`PGlite worker exited with code ${code} while opening`)));
      if (dataDirReady) {
        dataDirReady.then(() => worker.postMessage({ type: 'data-dir-ready' }), (err) => {
          reject(err);
          worker.terminate();
        });
      }
    });
    worker.removeAllListeners('message');
    worker.removeAllListeners('error');
    worker.removeAllListeners('exit');
    worker.on('error', (err) => this.onWorkerDeath(worker, `error: ${(err && err.stack) || err}`));
    worker.on('exit', (code) => this.onWorkerDeath(worker, `exit code ${code}`));
    this.info = { pglite_version: info.pglite_version, postgres_version: info.postgres_version, installed_extensions: info.installed_extensions };
    this.generation += 1;
    this.ready = true;
    // A startup packet makes PGlite report every GUC_REPORT parameter: that is the baseline each client
    // session starts from.
    const out = await this.exec(startupMessage({ user: 'postgres', database: 'postgres' }));
    this.baseline = new Map();
    for (const m of parseMessages(out)) {
      if (m.type === 0x53 /* S */) this.baseline.set(m.name, m.value);
    }
    const t = info.timings || {};
    this.log.debug(`backend generation ${this.generation} open in ${Date.now() - started} ms: worker up to PGlite ready ` +
      `${t.total_ms} ms (import ${t.import_ms} ms; in parallel: WASM read+compile ${t.wasm_compile_ms} ms; ` +
      `then backend start ${t.backend_start_ms} ms: fs bundle read+unpack, data dir, PostgreSQL)`);
    this.timings = t;
    return this.info;
  }

  onWorkerDeath(worker, why) {
    if (worker !== this.worker) return; // an old, deliberately terminated worker
    this.ready = false;
    this.log.error(`PGlite worker died unexpectedly (${why})`);
    if (this.channel) this.channel.abandon();
    this.emit('died', why);
  }

  /** Run frontend messages; resolves to the backend's output. Throws BackendError if PGlite failed. */
  exec(bytes) {
    return this.call(OP_EXEC, bytes);
  }

  /** Run `first`; run `then` in the same hop only if first's first DataRow starts with an empty value. */
  execIf(first, then) {
    return this.call(OP_EXEC_IF, encodeIf(first, then));
  }

  async call(op, bytes) {
    if (!this.ready) throw new BackendError('the database backend is not open');
    if (this.busy) throw new Error('backend exec while busy (scheduler bug)');
    this.busy = true;
    try {
      const channel = this.channel;
      const r = await channel.call(op, bytes);
      this.execs += 1;
      if (!r.ok) {
        if (channel === this.channel) this.ready = false;
        throw new BackendError(r.data.length ? r.data.toString('utf8') : 'PGlite worker stopped');
      }
      return r.data;
    } finally {
      this.busy = false;
    }
  }

  /**
   * Run several requests in one hop (batch.js, multi.js); each segment is one request's message buffers.
   * Resolves to { outs, error }: the output of each
   * request that finished, in order, and a BackendError if PGlite failed or the worker was stopped before
   * the last one finished (the requests after outs.length did not complete).
   */
  async execMany(segments) {
    if (!this.ready) throw new BackendError('the database backend is not open');
    if (this.busy) throw new Error('backend exec while busy (scheduler bug)');
    this.busy = true;
    const marks = this.marks;
    const channel = this.channel;
    marks.reset(segments.length);
    try {
      const r = await channel.call(OP_EXEC_MANY, encodeMany(segments));
      this.execs += 1;
      // a stopped worker's answers are still in shared memory: copied out; else the answer is ours already
      const outs = [];
      for (let i = 0, n = marks.done(); i < n; i++) {
        const [start, end] = marks.range(i);
        outs.push(r.ok ? r.data.subarray(start, end) : Buffer.from(channel.resp.subarray(start, end)));
      }
      const failure = marks.failure();
      if (r.ok && !failure) return { outs, error: null };
      if (channel === this.channel) this.ready = false;
      const source = r.ok ? r.data : channel.resp;
      const text = failure ? Buffer.from(source.subarray(failure[0], failure[1])).toString('utf8') : 'PGlite worker stopped';
      return { outs, error: new BackendError(text) };
    } finally {
      this.busy = false;
    }
  }

  /** How many requests of the running batch have finished. */
  batchProgress() {
    return this.marks ? this.marks.done() : 0;
  }

  /** Skip request i of the running batch if it has not started; true if it will not run. */
  skipInBatch(i) {
    return this.marks ? this.marks.skip(i) : false;
  }

  /** Stop whatever runs (terminating the worker) and open the data dir again. */
  async restart(reason) {
    this.log.warn(`restarting the database backend: ${reason}`);
    this.restarts += 1;
    await this.kill();
    return this.open();
  }

  async kill() {
    const worker = this.worker;
    this.worker = null;
    this.ready = false;
    if (this.channel) this.channel.abandon();
    if (worker) await worker.terminate();
  }

  async close() {
    const worker = this.worker;
    if (!worker) return;
    if (this.ready && !this.busy) {
      this.ready = false;
      const exited = new Promise((resolve) => worker.once('exit', resolve));
      this.worker = null;
      const r = await Promise.race([
        this.channel.call(OP_CLOSE, null),
        new Promise((resolve) => setTimeout(() => resolve({ ok: false, data: Buffer.from('timeout') }), 5000)),
      ]);
      if (!r.ok) this.log.warn(`PGlite did not close cleanly: ${r.data.toString()}`);
      await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 2000))]);
      await worker.terminate();
    } else {
      await this.kill();
    }
  }
}
