#!/usr/bin/env node
// hive-bridge server: PGlite behind our own PostgreSQL wire-protocol front end. See README.md for the
// contract with the Python supervisor (arguments, the JSON ready/error line, lifetime, admin endpoint).
import net from 'node:net';
import v8 from 'node:v8';
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { execFile } from 'node:child_process';
import { Backend } from './src/backend.js';
import { Scheduler } from './src/scheduler.js';
import { Session } from './src/session.js';
import { ScramVerifier } from './src/scram.js';
import { startAdmin } from './src/admin.js';
import { Maintenance } from './src/maintenance.js';
import { createLogger, LOG_LEVELS } from './src/log.js';
import * as DataDir from './src/datadir.js';
import * as Extensions from './src/extensions.js';
import { packageVersion } from './src/versions.js';
import { query, parseMessages } from './src/protocol.js';

const { StartError } = DataDir;

const POSTGRES_MAJOR = 18;
const SHUTDOWN_GRACE_MS = 5000;

function emit(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

function fail(code, message, hint, exitCode = 1) {
  emit({ event: 'error', code, message, hint: hint ?? null });
  process.exit(exitCode);
}

function intArg(values, name, dflt, min = -1) {
  const raw = values[name];
  if (raw === undefined) return dflt;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) throw new StartError('bad_args', `--${name} must be an integer >= ${min}, got "${raw}"`);
  return n;
}

function numArg(values, name, dflt) {
  const raw = values[name];
  if (raw === undefined) return dflt;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < 0) throw new StartError('bad_args', `--${name} must be a number >= 0, got "${raw}"`);
  return n;
}

function parseOptions(argv) {
  // "--admin-port -1": node's parser would take "-1" for an option; attach negative numbers to their flag.
  const args = [];
  for (const a of argv) {
    if (/^-\d+$/.test(a) && args.length && args[args.length - 1].startsWith('--') && !args[args.length - 1].includes('=')) {
      args[args.length - 1] += `=${a}`;
    } else args.push(a);
  }
  const { values } = parseArgs({
    args,
    options: {
      'data-dir': { type: 'string' },
      memory: { type: 'boolean', default: false },
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '0' },
      extensions: { type: 'string', default: 'all' },
      'log-level': { type: 'string', default: 'info' },
      'lock-fd': { type: 'string' },
      'no-lock': { type: 'boolean', default: false },
      'password-file': { type: 'string' },
      'admin-port': { type: 'string', default: '0' },
      'max-connections': { type: 'string' },
      'queue-timeout-ms': { type: 'string' },
      'idle-in-transaction-timeout-ms': { type: 'string' },
      'startup-timeout-ms': { type: 'string' },
      'allow-remote': { type: 'boolean', default: false },
      'pg-option': { type: 'string', multiple: true, default: [] },
      'cache-dir': { type: 'string' },
      'socket-dir': { type: 'string' },
      'no-template': { type: 'boolean', default: false },
      'prepare-template': { type: 'boolean', default: false },
      'fast-wasm': { type: 'boolean', default: false },
      'checkpoint-interval-ms': { type: 'string' },
      'no-parking': { type: 'boolean', default: false },
      'no-batching': { type: 'boolean', default: false },
      'no-copy-convert': { type: 'boolean', default: false },
      'idle-writer-warn-ms': { type: 'string' },
      'vacuum-interval-ms': { type: 'string' },
      'vacuum-threshold': { type: 'string' },
      'vacuum-scale-factor': { type: 'string' },
    },
    strict: true,
  });
  if (!values.memory && !values['data-dir'] && !values['prepare-template']) throw new StartError('bad_args', 'one of --data-dir PATH or --memory is required');
  if (values.memory && values['data-dir']) throw new StartError('bad_args', '--data-dir and --memory exclude each other');
  if (!LOG_LEVELS.includes(values['log-level'])) throw new StartError('bad_args', `--log-level must be one of ${LOG_LEVELS.join(', ')}`);
  const host = values.host;
  const loopback = host === 'localhost' || host === '::1' || /^127\./.test(host);
  if (!loopback && !values['allow-remote']) {
    throw new StartError('bad_args', `refusing to listen on non-loopback host ${host}`, 'pass --allow-remote (HIVE_BRIDGE_ALLOW_REMOTE=1) if you really mean to expose the database');
  }
  const opts = {
    dataDir: values['data-dir'] ? path.resolve(values['data-dir']) : undefined,
    memory: values.memory,
    host,
    port: intArg(values, 'port', 0, 0),
    adminPort: intArg(values, 'admin-port', 0),
    extensions: values.extensions.split(',').map((e) => e.trim()).filter(Boolean),
    logLevel: values['log-level'],
    lockFd: values['lock-fd'] === undefined ? null : intArg(values, 'lock-fd', null, 0),
    noLock: values['no-lock'],
    passwordFile: values['password-file'],
    maxConnections: intArg(values, 'max-connections', 100, 1),
    queueTimeoutMs: intArg(values, 'queue-timeout-ms', 30000, 0),
    idleInTransactionTimeoutMs: intArg(values, 'idle-in-transaction-timeout-ms', 60000, 0),
    startupTimeoutMs: intArg(values, 'startup-timeout-ms', 10000, 0),
    maxQueuedBytes: 16 << 20,
    maxCopyBytes: 1 << 30,
    pgOptions: values['pg-option'],
    cacheDir: values['cache-dir'],
    socketDir: values['socket-dir'] ? path.resolve(values['socket-dir']) : undefined,
    useTemplate: !values['no-template'],
    prepareTemplate: values['prepare-template'],
    fastWasm: values['fast-wasm'],
    checkpointIntervalMs: intArg(values, 'checkpoint-interval-ms', 30000, 0),
    parking: !values['no-parking'],
    batching: !values['no-batching'],
    copyConvert: !values['no-copy-convert'],
    idleWriterWarnMs: intArg(values, 'idle-writer-warn-ms', 5000, 0),
    vacuumIntervalMs: intArg(values, 'vacuum-interval-ms', 10000, 0),
    vacuumThreshold: intArg(values, 'vacuum-threshold', 50, 0),
    vacuumScaleFactor: numArg(values, 'vacuum-scale-factor', 0.2),
  };
  if (opts.port > 65535) throw new StartError('bad_args', `--port ${opts.port} is out of range`);
  for (const o of opts.pgOptions) if (!/^[a-z_.]+=.+$/i.test(o)) throw new StartError('bad_args', `--pg-option must look like name=value, got "${o}"`);
  return opts;
}

class Server {
  constructor(opts, log) {
    this.opts = opts;
    this.log = log;
    this.state = 'starting';
    this.startedAt = Date.now();
    this.sessions = new Map(); // pid -> Session
    this.pendingSockets = [];
    this.nextId = 1;
    this.stats = { connections: 0, messages: 0, queries: 0 };
    this.verifier = null;
    this.adminToken = null;
    this.backend = null;
    this.scheduler = null;
    this.info = null;
  }

  async start() {
    const { opts, log } = this;
    if (opts.passwordFile) {
      let pw;
      try {
        pw = fs.readFileSync(opts.passwordFile, 'utf8').trim();
      } catch (err) {
        throw new StartError('bad_args', `cannot read --password-file ${opts.passwordFile}: ${err.message}`);
      }
      if (!pw) throw new StartError('bad_args', `--password-file ${opts.passwordFile} is empty`);
      this.verifier = new ScramVerifier(pw);
      this.adminToken = pw;
    }
    const pgliteVersion = packageVersion('@electric-sql/pglite');
    let dataDirReady = null; // a copy of the template, still running while PGlite's worker starts
    if (opts.dataDir) {
      if (opts.lockFd !== null) DataDir.verifyLock(opts.lockFd);
      else if (!opts.noLock) {
        throw new StartError('lock_required', `refusing to open ${opts.dataDir} without the data-dir lock`, 'start it with hive-bridge (which passes --lock-fd), or pass --no-lock if you are sure nothing else uses it');
      }
      const { initialised } = DataDir.checkDataDir(opts.dataDir, POSTGRES_MAJOR);
      if (initialised) {
        this.stamp = DataDir.checkStamp(opts.dataDir, pgliteVersion); // refuse a foreign dir untouched
        DataDir.clearCrashLeftovers(opts.dataDir, log);
      } else if (opts.useTemplate) {
        ({ copying: dataDirReady } = await this.createDataDir(pgliteVersion));
      }
    }
    try {
      await this.listenAndOpen(dataDirReady);
    } catch (err) {
      if (dataDirReady) await dataDirReady.catch(() => {}); // never exit with the copy half done
      throw err;
    }
  }

  async listenAndOpen(dataDirReady) {
    const { opts, log } = this;

    // Listen first, so a taken port fails in milliseconds, not after PGlite opened; connections that
    // arrive before the backend is ready wait, paused.
    this.net = net.createServer({ noDelay: true }, (socket) => this.accept(socket));
    await new Promise((resolve, reject) => {
      this.net.once('error', (err) => {
        if (err.code === 'EADDRINUSE') reject(new StartError('port_in_use', `port ${opts.port} on ${opts.host} is already in use`, 'stop what uses it, or use port 0 to let hive-bridge pick a free one'));
        else if (err.code === 'EADDRNOTAVAIL' || err.code === 'ENOTFOUND') reject(new StartError('bad_args', `cannot listen on host ${opts.host}: ${err.code}`));
        else reject(err);
      });
      this.net.listen(opts.port, opts.host, resolve);
    });
    this.net.on('error', (err) => log.error(`listener error: ${err.message}`));
    if (opts.socketDir) await this.listenUnix(this.net.address().port);

    const t0 = Date.now();
    const startParams = [...BASE_START_PARAMS, ...opts.pgOptions.flatMap((o) => ['-c', o])];
    const extensions = this.extensionPlan();
    this.backend = new Backend({ dataDir: opts.dataDir, extensions, startParams, log });
    try {
      this.info = await this.backend.open({ dataDirReady });
    } catch (err) {
      if (err instanceof StartError) throw err;
      throw new StartError('open_failed', `PGlite could not open ${opts.dataDir ?? 'the in-memory database'}: ${String(err.message).split('\n')[0]}`,
        'see the server log above; the data dir was not modified or deleted');
    }
    log.info(`PGlite ${this.info.pglite_version} (PostgreSQL ${this.info.postgres_version}) open in ${Date.now() - t0} ms`);
    const missing = this.info.installed_extensions.filter((e) => !extensions.offered.includes(e));
    if (missing.length) {
      await this.backend.close();
      throw new StartError('extension_missing', `data dir ${opts.dataDir} uses extension(s) ${missing.join(', ')}, which this server does not offer (--extensions ${opts.extensions.join(',') || 'none'}); its tables would fail with "could not access file"`,
        `start it with every extension (the default, --extensions all), or at least --extensions ${[...new Set([...extensions.offered, ...missing])].join(',')}`);
    }
    if (opts.dataDir && !DataDir.stampIsCurrent(this.stamp, extensions.offered)) DataDir.writeStamp(opts.dataDir, this.info, extensions.offered);
    this.scheduler = new Scheduler(this);
    this.startMaintenance();
    this.admin = opts.adminPort >= 0 ? await startAdmin(this, opts.adminPort) : null;
    this.state = 'ready';
    for (const socket of this.pendingSockets.splice(0)) this.attach(socket);
    const addr = this.net.address();
    emit({
      event: 'ready',
      pid: process.pid,
      host: opts.host,
      port: addr.port,
      admin_port: this.admin ? this.admin.address().port : null,
      data_dir: opts.dataDir ?? 'memory://',
      socket_dir: opts.socketDir ?? null,
      socket_path: this.socketPath ?? null,
      pglite_version: this.info.pglite_version,
      postgres_version: this.info.postgres_version,
      extensions: extensions.offered,
      startup_ms: Date.now() - this.startedAt,
    });
  }

  /**
   * Also listen on a Unix socket, libpq style (DIR/.s.PGSQL.PORT), in a directory only this user can
   * enter (0700): clients there are trusted without a password, as PostgreSQL's local "peer" setups do.
   * A socket file left by a killed server is removed first; we hold the data-dir lock, so it is stale.
   */
  async listenUnix(port) {
    const dir = this.opts.socketDir;
    const file = path.join(dir, `.s.PGSQL.${port}`);
    if (Buffer.byteLength(file) > 107) {
      throw new StartError('bad_args', `Unix socket path ${file} is longer than the 107 bytes the platform allows`, 'choose a shorter socket directory (HIVE_BRIDGE_SOCKET_DIR)');
    }
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const st = fs.statSync(dir);
    if ((st.mode & 0o077) !== 0 || (typeof process.getuid === 'function' && st.uid !== process.getuid())) {
      throw new StartError('bad_args', `socket directory ${dir} must be owned by this user with mode 0700 (it is ${(st.mode & 0o777).toString(8)})`, `chmod 700 ${dir}`);
    }
    try {
      fs.unlinkSync(file);
      this.log.info(`removed stale Unix socket ${file}`);
    } catch (err) {
      if (err.code !== 'ENOENT') throw err;
    }
    this.unix = net.createServer((socket) => this.accept(socket, { unix: true }));
    await new Promise((resolve, reject) => {
      this.unix.once('error', reject);
      this.unix.listen(file, resolve);
    });
    fs.chmodSync(file, 0o600);
    this.socketPath = file;
  }

  /** CHECKPOINT and autovacuum between client turns: see src/maintenance.js. */
  startMaintenance() {
    const { checkpointIntervalMs, vacuumIntervalMs, vacuumThreshold, vacuumScaleFactor } = this.opts;
    this.maintenance = new Maintenance(this, { checkpointIntervalMs, vacuumIntervalMs, vacuumThreshold, vacuumScaleFactor });
    this.maintenance.start();
  }

  /**
   * A consistent snapshot of the live data dir as a .tar.gz. Between client turns (no transaction open,
   * nothing writes) a CHECKPOINT runs and the directory is copied beside the target (cp -a: seconds, not
   * the minutes compressing can take); clients then go on while the copy is archived and linked into
   * place. The target is never overwritten.
   */
  async backup(target) {
    const dir = this.opts.dataDir;
    if (!dir) throw new Error('an in-memory database has no data dir to back up');
    const file = path.resolve(target);
    if (!fs.existsSync(path.dirname(file))) throw new Error(`directory ${path.dirname(file)} does not exist`);
    if (file === dir || file.startsWith(`${dir}${path.sep}`)) throw new Error('the backup file cannot be inside the data dir');
    if (fs.existsSync(file)) throw new Error(`${file} already exists; choose another path (a backup is never overwritten)`);
    const t0 = Date.now();
    const staging = `${file}.staging-${process.pid}`;
    const tmp = `${file}.tmp-${process.pid}`;
    try {
      const held = await this.scheduler.exclusive('backup', async (job) => {
        const t1 = Date.now();
        const out = parseMessages(await this.scheduler.exec(job, query('CHECKPOINT')));
        const err = out.find((m) => m.type === 0x45);
        if (err) throw new Error(`CHECKPOINT failed before the backup: ${err.fields.M}`);
        await promisify(execFile)('cp', ['-a', dir, staging]);
        return Date.now() - t1;
      });
      fs.rmSync(path.join(staging, 'postmaster.pid'), { force: true });
      await promisify(execFile)('tar', ['-czf', tmp, '-C', staging, '.']);
      try {
        fs.linkSync(tmp, file); // never overwrites: fails if the file appeared meanwhile
      } catch (err) {
        if (err.code === 'EEXIST') throw new Error(`${file} already exists; choose another path (a backup is never overwritten)`);
        throw err;
      }
      const result = { path: file, bytes: fs.statSync(file).size, ms: Date.now() - t0, clients_held_ms: held, pglite_version: this.info.pglite_version };
      this.log.info(`backup of ${dir} written to ${file} (${result.bytes} bytes, ${result.ms} ms; clients held ${held} ms)`);
      return result;
    } finally {
      fs.rmSync(tmp, { force: true });
      fs.rmSync(staging, { recursive: true, force: true });
    }
  }

  /**
   * A new data dir is a copy of a cached, pristine one: ~0.2 s instead of initdb's ~3.5 s. Returns
   * `{ copying }`: the running copy (a promise), null when there is no template (PGlite runs initdb in place).
   */
  async createDataDir(pgliteVersion) {
    const tdir = DataDir.templateDir(this.opts.cacheDir, pgliteVersion);
    try {
      await this.buildTemplate(tdir);
    } catch (err) {
      this.log.warn(`cannot use a template at ${tdir} (${err.message}); running initdb in place`);
      return { copying: null };
    }
    const dir = this.opts.dataDir;
    const copying = DataDir.createFromTemplate(tdir, dir, this.log).catch((err) => {
      throw new StartError('data_dir_invalid', `cannot create the data dir ${dir} from the template ${tdir}: ${err.message}`,
        'check that the parent directory is writable and has space; nothing was written to the data dir');
    });
    copying.catch(() => {}); // awaited by the backend's open (or on a failed start); never unhandled
    return { copying };
  }

  /** What --extensions offers (see src/extensions.js): resolved once, the bundles extracted on first use. */
  extensionPlan() {
    if (!this.extensions) this.extensions = Extensions.plan(this.opts.extensions, { cacheDir: this.opts.cacheDir, log: this.log });
    return this.extensions;
  }

  buildTemplate(tdir) {
    const extensions = this.extensionPlan();
    return DataDir.ensureTemplate(tdir, async (dir) => {
      const b = new Backend({ dataDir: dir, extensions, startParams: BASE_START_PARAMS, log: this.log });
      await b.open();
      await b.close();
    }, this.log);
  }

  accept(socket, { unix = false } = {}) {
    this.stats.connections += 1;
    if (this.state === 'ready') this.attach(socket, unix);
    else if (this.state === 'starting') {
      socket.pause();
      socket.hbUnix = unix;
      this.pendingSockets.push(socket);
    } else socket.destroy();
  }

  attach(socket, unix = socket.hbUnix ?? false) {
    if (socket.destroyed) return;
    const id = this.nextId++;
    const s = new Session(this, socket, id, { unix });
    this.sessions.set(s.pid, s);
    socket.resume();
  }

  cancel(pid, secret) {
    const s = this.sessions.get(pid);
    if (!s || s.secret !== secret) {
      this.log.debug(`cancel request for unknown pid ${pid} ignored`);
      return;
    }
    this.log.debug(`cancel request for client ${s.id}`);
    this.scheduler.cancel(s);
  }

  sessionClosed(s) {
    this.sessions.delete(s.pid);
    if (this.scheduler) this.scheduler.closed(s);
  }

  /** Unrecoverable: say why and exit non-zero so the supervisor restarts us. */
  die(why) {
    this.log.error(`fatal: ${why}`);
    process.exit(70);
  }

  async shutdown(why) {
    if (this.state === 'stopping') return;
    const wasReady = this.state === 'ready';
    this.state = 'stopping';
    this.log.info(`shutting down: ${why}`);
    if (this.net) this.net.close();
    if (this.unix) {
      this.unix.close();
      try {
        fs.unlinkSync(this.socketPath);
      } catch {
        // already gone
      }
    }
    for (const socket of this.pendingSockets.splice(0)) socket.destroy();
    if (this.maintenance) this.maintenance.stop();
    if (wasReady && this.scheduler) {
      // A statement already running finishes and its client gets the answer; only then are clients told
      // 57P01. One that overruns the deadline is aborted with the engine, so it really did not commit:
      // a client may safely retry whatever ended with 57P01.
      this.scheduler.draining = true;
      const deadline = Date.now() + SHUTDOWN_GRACE_MS;
      while (this.scheduler.running && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      if (this.scheduler.running) {
        this.log.warn(`a statement still running after ${SHUTDOWN_GRACE_MS} ms is aborted`);
        await this.backend.kill();
      }
    }
    for (const s of [...this.sessions.values()]) s.fatal('57P01', 'terminating connection due to administrator command');
    if (this.backend) await this.backend.close();
    this.log.info('stopped');
    process.exit(0);
  }
}

// PGlite's defaults, plus a smaller shared_buffers: 16 MB instead of 128 MB takes a warm server from
// ~330 MB to ~170 MB RSS with no measurable loss (the OS page cache sits under it anyway). Durability is
// untouched: synchronous_commit stays on, so a commit is written before it is acknowledged.
// --pg-option appends "-c name=value" (last one wins).
const BASE_START_PARAMS = [
  '--single', '-F', '-O', '-j',
  '-c', 'search_path=public', '-c', 'exit_on_error=false', '-c', 'log_checkpoints=false',
  '-c', 'max_worker_processes=0', '-c', 'max_parallel_workers=0', '-c', 'max_parallel_workers_per_gather=0',
  '-c', 'io_method=sync', '-c', 'max_parallel_maintenance_workers=0',
  '-c', 'shared_buffers=16MB',
];

async function main() {
  let opts;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (err) {
    fail('bad_args', err.message, err.hint, 2);
  }
  const log = createLogger(opts.logLevel);
  // PostgreSQL is a 9 MB WASM module. By default V8 compiles it with its baseline compiler (Liftoff)
  // only. Measured in one `make bench` run (README, Benchmarks), V8's default tiering cost +62 MB RSS
  // right after start (205 vs 143 MB) and +39 MB after `pgbench -i -s 10` (260 vs 221 MB), and made
  // CPU-heavy pgvector work faster (HNSW build 0.61x the time, text COPY of vectors 1.6x the rate); small
  // queries were within noise. Every app pays memory all the time, so Liftoff-only stays the default;
  // --fast-wasm lets hot functions tier up to TurboFan. (hive_bridge also passes --liftoff-only on node's
  // command line: Node 24 ignores it set here.)
  // Process-wide, so it must be set before the worker compiles the module.
  if (!opts.fastWasm) v8.setFlagsFromString('--liftoff-only');
  const server = new Server(opts, log);

  // The parent's lifeline: stdin is a pipe it holds open; EOF means it is gone.
  try {
    const st = fs.fstatSync(0);
    if (st.isFIFO() || st.isSocket()) {
      process.stdin.on('data', () => {});
      process.stdin.on('end', () => server.shutdown('stdin closed (the supervising process exited)'));
      process.stdin.on('error', () => server.shutdown('stdin error'));
    }
  } catch {
    // no stdin at all: nothing to watch
  }
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.on(sig, () => server.shutdown(`received ${sig}`));

  if (opts.prepareTemplate) {
    const tdir = DataDir.templateDir(opts.cacheDir, packageVersion('@electric-sql/pglite'));
    try {
      const built = await server.buildTemplate(tdir);
      emit({ event: 'template', path: tdir, built });
      process.exit(0);
    } catch (err) {
      fail('template_failed', `cannot build the data-dir template at ${tdir}: ${err.message}`, 'check that the cache dir is writable (HIVE_BRIDGE_CACHE_DIR)');
    }
  }
  try {
    await server.start();
  } catch (err) {
    if (err instanceof StartError) fail(err.code, err.message, err.hint, err.code === 'bad_args' ? 2 : 1);
    fail('open_failed', String((err && err.stack) || err));
  }
}

process.on('uncaughtException', (err) => {
  process.stderr.write(`ERROR uncaught exception: ${(err && err.stack) || err}\n`);
  process.exit(70);
});

main();
