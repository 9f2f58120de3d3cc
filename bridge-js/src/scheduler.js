// The scheduler hands the one PGlite backend to one client at a time, the way PgBouncer's transaction
// mode hands a server connection to a client: the queue and the turns live here; each other concern of
// sharing one backend session has its own module:
// - statements.js  statement renaming (each client its own prepared-statement namespace)
// - settings.js    settings replay (each client its own SET values; startup answered without a turn)
// - notify.js      LISTEN/NOTIFY routing
// - intercept.js   what the front end handles itself (COPY FROM STDIN, DEALLOCATE, DISCARD, UNLISTEN)
// - interrupt.js   stopping a running query (cancel, statement_timeout) by restarting the backend
// - parking.js     idle transactions that have not written give the backend up while others wait
// - batch.js       several waiting clients' self-contained requests in one hop to the worker
// - janitor.js     what a client leaves behind when it goes
//
// A client gets a *turn* when it has input. During its turn its messages run on the backend in batches
// (everything it has sent so far, up to a COPY or a message the front end must handle itself). The turn
// ends when the backend reports ReadyForQuery 'I' after the client's last message and the client has
// nothing more pipelined: so an extended-protocol batch (Parse/Bind/Execute/Sync) or an explicit
// transaction never interleaves with another client's messages. A client idle inside a transaction keeps
// its turn only while nobody waits or while its transaction cannot be parked (parking.js); the
// idle-in-transaction timeout bounds that.
import * as P from './protocol.js';
import * as SQL from './sql.js';
import { StatementNames } from './statements.js';
import { SettingsReplay } from './settings.js';
import { NotifyRouter } from './notify.js';
import { Intercepts, mayIntercept } from './intercept.js';
import { Interrupts, Interrupted } from './interrupt.js';
import { Parking } from './parking.js';
import { Janitor } from './janitor.js';
import * as Mem from './memlimits.js';
import { refuseEncodingIn } from './encoding.js';
import { shouldStream, streamTo, stopStream } from './outflow.js';
import { Batching } from './batch.js';
import {
  QUERY, PARSE, DESCRIBE, CLOSE, SYNC, FLUSH, TERMINATE, COPY_DATA, COPY_DONE, COPY_FAIL,
  READY, ERROR, NOTIFICATION, COPY_IN, COMPLETE, SUSPENDED, EMPTY, PARAMETER_STATUS,
} from './msgtypes.js';

const BATCH_BYTES = 8 << 20;
const REFUSED_SQL = '__hb_refused_client_encoding'; // a syntax error: see refuseEncoding()

function querySql(m) {
  if (m.sql === undefined) m.sql = m.buf.toString('utf8', 5, m.buf.length - 1);
  return m.sql;
}

// Command tags after which an open transaction cannot be parked (parking.js), and why.
const TAINTS = new Map([
  ['SET', 'it changed a setting'],
  ['RESET', 'it changed a setting'],
  ['SAVEPOINT', 'it has a savepoint'],
  ['DECLARE CURSOR', 'it has an open cursor'],
  ['LISTEN', 'LISTEN acts at its commit'],
  ['UNLISTEN', 'UNLISTEN acts at its commit'],
  ['NOTIFY', 'NOTIFY acts at its commit'],
  ['LOCK TABLE', 'it holds a lock'],
]);

export class Scheduler {
  constructor(server) {
    this.server = server;
    this.backend = server.backend;
    this.log = server.log;
    this.opts = server.opts;
    this.queue = [];
    this.queueTimer = null; // armQueueTimer()
    this.holder = null;
    this.running = false;
    this.runningSince = 0;
    this.restarting = null; // promise while the backend reopens
    this.unnamedOwner = null; // session whose unnamed statement the backend holds
    this.unnamedGen = 0;
    this.draining = false; // shutting down: no new turns or batches
    this.statements = new StatementNames(this);
    this.replay = new SettingsReplay(this);
    this.notify = new NotifyRouter(this);
    this.intercepts = new Intercepts(this);
    this.interrupts = new Interrupts(this);
    this.parking = new Parking(this);
    this.janitor = new Janitor(this);
    this.batching = new Batching(this);
    this.backend.on('died', () => {
      if (!this.running) this.interrupts.recover('the PGlite worker died while idle');
    });
  }

  // ---- queue -------------------------------------------------------------------------------------

  /** A session has work (input, startup, or cleanup after close). */
  want(s) {
    if (this.holder === s || s.queued || s.cleanedUp) return;
    s.queued = true;
    s.queuedSince = Date.now();
    this.queue.push(s);
    if (!this.queueTimer) this.armQueueTimer();
    const h = this.holder;
    if (h && !h.isJob && h.txStatus !== 'I') h.wake(); // an idle holder in a transaction may park now (or say why not)
    this.pump();
  }

  /**
   * Run fn(job) with the backend to itself between client turns: nothing else runs until it finishes
   * (a consistent point for a backup). Resolves to fn's result.
   */
  exclusive(name, fn) {
    return new Promise((resolve, reject) => {
      const job = { isJob: true, name, fn, resolve, reject, txStatus: 'I', queued: true, queuedSince: Date.now(), describe: () => `the ${name} job` };
      this.queue.push(job);
      const h = this.holder;
      if (h && !h.isJob && h.txStatus !== 'I') h.wake();
      this.pump();
    });
  }

  async runJob(job) {
    try {
      job.resolve(await job.fn(job));
    } catch (err) {
      job.reject(err);
    } finally {
      this.holder = null;
      this.pump();
    }
  }

  pump() {
    while (!this.holder && !this.restarting && !this.draining && this.backend.ready && this.queue.length) {
      if (this.batching.tryRun()) return;
      const s = this.queue.shift();
      if (s.isJob) {
        this.holder = s;
        s.heldSince = Date.now();
        this.runJob(s);
        return;
      }
      s.queued = false;
      if (s.cleanedUp) continue;
      this.holder = s;
      s.heldSince = Date.now();
      if (s.socket.isPaused() && !s.closed) s.socket.resume();
      this.turn(s);
    }
  }

  unqueue(s) {
    const i = this.queue.indexOf(s);
    if (i >= 0) this.queue.splice(i, 1);
    s.queued = false;
  }

  /**
   * One timer for the whole queue rather than one per request: it fires when the longest waiting client's
   * --queue-timeout-ms is up, times out whoever waited that long, and is set again for the next one.
   */
  armQueueTimer() {
    const ms = this.opts.queueTimeoutMs;
    if (!(ms > 0)) return;
    let oldest = Infinity;
    for (const q of this.queue) if (!q.isJob && !q.closed && q.queuedSince < oldest) oldest = q.queuedSince;
    if (oldest === Infinity) return;
    this.queueTimer = setTimeout(() => {
      this.queueTimer = null;
      const now = Date.now();
      for (const q of this.queue.slice()) if (!q.isJob && !q.closed && now - q.queuedSince >= ms) this.queueTimeout(q);
      if (!this.queueTimer) this.armQueueTimer();
    }, Math.max(1, oldest + ms - Date.now()));
    this.queueTimer.unref();
  }

  /** Input arrived for a client that is not running: answer it without a turn if possible, else queue it. */
  input(s) {
    if (s.inBatch) return; // its batch wants it again when it ends
    if (s.discardToSync && !s.queued) {
      // skipping to Sync after an error the front end gave: needs no backend, so no wait in the queue
      this.discardToSync(s);
      if (!s.inbox.length) return;
    }
    if (this.statements.answerBarePrepare(s)) return;
    if (this.parking.answer(s)) return;
    this.want(s);
  }

  answerBarePrepare(s) {
    return this.statements.answerBarePrepare(s);
  }

  startupReport(settings) {
    return this.replay.startupReport(settings);
  }

  /** Whether a new client's startup can run on the backend at once (nobody holds it or waits). */
  idle() {
    return !this.holder && !this.queue.length && !this.restarting && this.backend.ready;
  }

  // ---- a turn -----------------------------------------------------------------------------------

  async turn(s) {
    try {
      if (!s.closed && !s.startupPending) {
        const err = await this.replay.switchTo(s);
        if (s.startupUnverified) await this.replay.verifyStartup(s, err);
      }
      for (;;) {
        if (s.closed) {
          await this.janitor.cleanup(s);
          break;
        }
        if (s.startupPending) {
          await this.replay.runStartup(s);
          continue;
        }
        if (await this.step(s)) {
          if (s.idleSince) s.lastGap = Date.now() - s.idleSince; // its think time inside the transaction
          s.idleSince = 0;
          s.graceUntil = 0;
          s.parkRefused = null; // it ran something: whether it can park may have changed
          continue;
        }
        if (s.txStatus === 'I' && s.atSyncBoundary && !s.copy) break;
        if (s.txStatus === 'I' && s.statementOnly && !s.skippingToSync && !s.copy) {
          // Parse/Describe with no Sync yet (asyncpg's prepare() waits right there): nothing of this
          // client needs the backend held, only PostgreSQL's implicit transaction is open. Close it with
          // our own Sync and let others in; the client's own Sync later gets its ReadyForQuery as usual.
          await this.exec(s, P.sync());
          s.atSyncBoundary = true;
          break;
        }
        // Idle inside a transaction, an unfinished extended-protocol batch, or a COPY.
        if (!s.idleSince) {
          s.idleSince = Date.now();
          s.idleWarned = false;
        }
        if (this.queue.length && !s.parkRefused) {
          // A client that runs its statements back to back is not parked between them: wait a moment
          // (twice its last think time, at most PARK_GRACE_MAX_MS) for its next one first.
          if (!s.graceUntil) s.graceUntil = s.idleSince + this.parking.grace(s);
          const left = s.graceUntil - Date.now();
          if (left > 0) {
            await s.waitForInput(left);
            continue;
          }
          if (await this.parking.tryPark(s)) break;
        }
        if (await this.waitIdle(s)) continue;
        if (s.closed) continue;
        const what = s.txStatus === 'I' ? 'held the database idle in an unfinished request' : 'was idle in transaction';
        this.log.warn(`client ${s.id}: ${s.describe()} ${what} too long; terminating it`);
        s.fatal('25P03', 'terminating connection due to idle-in-transaction timeout',
          `hive-bridge shares one PGlite session; a client idle inside a transaction blocks every other client (--idle-in-transaction-timeout-ms ${this.idleTimeoutFor(s)}).`);
      }
    } catch (err) {
      if (err instanceof Interrupted) await this.interrupts.afterInternalInterrupt(s);
      else await this.interrupts.turnFailed(s, err);
    } finally {
      this.holder = null;
      if (s.closed && !s.cleanedUp) {
        s.cleanedUp = true;
        this.notify.unlistenAll(s);
      }
      if (s.inbox.length && !s.closed) this.want(s);
      this.pump();
    }
  }

  /**
   * Wait while the holder is idle. Returns true when it should look again (input, a waiter arrived, or the
   * idle-writer warning is due), false when the idle-in-transaction timeout passed.
   */
  async waitIdle(s) {
    if (s.inbox.length || s.closed) return true; // arrived while we were busy (a parking check)
    const limit = this.idleTimeoutFor(s);
    const now = Date.now();
    let ms = limit > 0 ? s.idleSince + limit - now : 0;
    if (limit > 0 && ms <= 0) return false;
    const warnMs = this.opts.idleWriterWarnMs ?? 5000;
    const warnAt = s.idleSince + warnMs;
    const warnDue = warnMs > 0 && !s.idleWarned && s.txStatus !== 'I';
    if (warnDue && (ms <= 0 || warnAt - now < ms)) ms = Math.max(1, warnAt - now);
    const why = await s.waitForInput(ms);
    if (why !== 'timeout') return true;
    if (warnDue && Date.now() >= warnAt) {
      s.idleWarned = true;
      await this.warnIdleHolder(s);
      return true;
    }
    return false;
  }

  /** A holder idle in a transaction that cannot be parked (it has written, ...) is worth a WARNING. */
  async warnIdleHolder(s) {
    const why = s.parkRefused ?? (s.txStatus === 'T' ? await this.parking.whyNot(s) : 'its transaction failed');
    const held = ((Date.now() - s.idleSince) / 1000).toFixed(1);
    if (!why) {
      this.log.debug(`client ${s.id}: idle in a read-only transaction for ${held} s (parked as soon as someone waits)`);
      return;
    }
    this.log.warn(`client ${s.id}: ${s.describe()} has held the database idle in transaction for ${held} s` +
      ` and cannot give it up (${why}); ${this.queue.length} waiting; last statement: ${s.lastStatementText(120)}`);
  }

  idleTimeoutFor(s) {
    const own = SQL.durationMs(s.settings.get('idle_in_transaction_session_timeout'));
    const max = this.opts.idleInTransactionTimeoutMs;
    if (own > 0 && (max <= 0 || own < max)) return own;
    return max;
  }

  /** What running one client's messages needs to know about them (every field declared: one shape). */
  newContext(over = null) {
    const ctx = {
      pre: [], parsed: null, unnamed: null, boundaries: 0, listens: [], unlistens: [], extended: false, statementOnly: true,
      wiped: null, flush: false, open: false, resume: null, hideBegin: false, refused: null,
    };
    return over ? Object.assign(ctx, over) : ctx;
  }

  /** Run the next piece of the holder's input. Returns false when there is nothing to run. */
  async step(s) {
    if (this.draining) return false; // shutting down: run nothing new
    if (s.copy) return this.intercepts.stepCopy(s);
    if (!s.inbox.length) return false;
    if (s.discardToSync) return this.discardToSync(s);
    const first = s.inbox[0];
    if (first.type === TERMINATE) {
      s.takeInbox(1);
      s.socket.end();
      s.close('Terminate');
      return true;
    }
    if (s.parked && (s.abortPending || (first.type === QUERY && mayIntercept(querySql(first))))) await this.parking.resume(s);
    if (s.abortPending) {
      // its statement was cancelled while its answer was written (outflow.js): fail the transaction
      s.abortPending = false;
      await this.execInternal(s, P.query('SELECT 1/0'));
    }
    if (first.type === QUERY && (await this.intercepts.intercept(s, first, querySql(first)))) return true;
    const gen = this.backend.generation;
    const ctx = this.newContext();
    if (s.parked) {
      // BEGIN again in the same hop as its messages; its answer is hidden (deliver()). Being a Query it
      // drops the unnamed statement: the client's own is sent again before use if needed.
      ctx.resume = this.parking.resumeQuery(s);
      ctx.unnamed = 'gone';
      this.unnamedOwner = null;
    }
    const parts = [];
    let n = 0;
    let bytes = 0;
    for (const m of s.inbox) {
      if (n > 0 && (m.type === TERMINATE || (m.type === QUERY && mayIntercept(querySql(m))))) break;
      if (m.type === TERMINATE) break;
      n += 1;
      if (m.type === COPY_DATA || m.type === COPY_DONE || m.type === COPY_FAIL) continue; // outside COPY: ignored, as PostgreSQL does
      if (!(m.type === PARSE || m.type === FLUSH || ((m.type === DESCRIBE || m.type === CLOSE) && m.buf[5] === 0x53))) ctx.statementOnly = false;
      let sql;
      if (m.type === QUERY || m.type === PARSE) this.refuseEncoding(m, ctx);
      if (m.type === QUERY) {
        sql = querySql(m);
        if (Mem.mayClamp(sql)) sql = this.clampMemory(s, m, sql);
        s.noteStatement(sql);
      } else if (m.type === PARSE) this.clampParse(s, m);
      const out = this.statements.rewrite(s, m, ctx, gen, sql);
      ctx.open = m.type !== SYNC && m.type !== QUERY; // messages after the last Sync/Query
      parts.push(out);
      bytes += out.length;
      if (bytes > BATCH_BYTES) break;
    }
    s.takeInbox(n);
    if (parts.length) await this.runBatch(s, parts, ctx);
    return true;
  }

  /**
   * A client_encoding the backend cannot convert to would crash it (encoding.js): the statement is replaced
   * by one that fails on the backend, so the protocol flow and the transaction state are PostgreSQL's, and
   * its error by PostgreSQL's own refusal (deliver()).
   */
  refuseEncoding(m, ctx) {
    let f = null;
    let text;
    if (m.type === QUERY) text = querySql(m);
    else {
      if (m.buf.length > 65536) return;
      f = P.parseNameAt(m.buf, 5);
      text = m.buf.toString('utf8', f.end + 1, m.buf.indexOf(0, f.end + 1));
    }
    const refused = refuseEncodingIn(text);
    if (!refused) return;
    (ctx.refused ??= []).push(refused);
    if (m.type === QUERY) {
      m.buf = P.query(REFUSED_SQL);
      m.sql = REFUSED_SQL;
    } else m.buf = P.replaceRange(m.buf, f.end + 1, m.buf.indexOf(0, f.end + 1), REFUSED_SQL);
  }

  /** SET of a memory setting above PGlite's 32-bit limit: lower it, warn instead of failing (memlimits.js). */
  clampMemory(s, m, sql) {
    const c = Mem.clampSet(sql);
    if (!c) return sql;
    s.send(c.notice);
    m.buf = P.query(c.sql);
    m.sql = c.sql;
    return c.sql;
  }

  clampParse(s, m) {
    const buf = m.buf;
    const f = P.parseNameAt(buf, 5);
    const end = buf.indexOf(0, f.end + 1);
    if (end - f.end > 200) return;
    const text = buf.toString('utf8', f.end + 1, end);
    if (!Mem.mayClamp(text)) return;
    const c = Mem.clampSet(text);
    if (!c) return;
    s.send(c.notice);
    m.buf = P.replaceRange(buf, f.end + 1, end, c.sql);
  }

  /** After an error the backend never saw (a stopped batch, a wait that timed out): skip to Sync. */
  discardToSync(s) {
    const i = s.inbox.findIndex((m) => m.type === SYNC);
    s.takeInbox(i < 0 ? s.inbox.length : i + 1);
    if (i >= 0) {
      s.discardToSync = false;
      s.atSyncBoundary = true;
      s.send(P.readyForQuery(s.txStatus));
    }
    return true;
  }

  async runBatch(s, parts, ctx, { stripCopyIn = false } = {}) {
    const before = s.txStatus;
    const wasAtBoundary = s.atSyncBoundary;
    let prefix = null;
    try {
      if (ctx.resume && ctx.pre.length) ctx.pre.unshift(ctx.resume); // BEGIN, then re-prepare, then the batch
      else if (ctx.resume) {
        parts.unshift(ctx.resume);
        ctx.hideBegin = true;
      }
      if (ctx.pre.length) {
        // Re-prepare what this client needs; the answers are ours, except an error, which is the client's.
        const out = await this.exec(s, Buffer.concat([...ctx.pre, P.flush()]));
        P.eachMessage(out, (type, start, end) => {
          if (type === ERROR) prefix = out.subarray(start, end);
        });
      }
      const timeout = SQL.durationMs(s.settings.get('statement_timeout'));
      const timer = timeout > 0 ? s.timer(timeout, () => this.interrupts.interrupt(s, '57014', 'canceling statement due to statement timeout')) : null;
      let out;
      try {
        out = await this.exec(s, parts.length === 1 ? parts[0] : Buffer.concat(parts));
      } finally {
        s.clearTimer(timer);
      }
      if (prefix) s.send(prefix);
      this.deliver(s, out, ctx, stripCopyIn);
      // Still inside an unfinished batch: was everything since the last Sync statement-level only?
      s.statementOnly = !s.atSyncBoundary && (wasAtBoundary || s.statementOnly) && ctx.statementOnly === true;
    } catch (err) {
      if (!(err instanceof Interrupted)) throw err;
      await this.interrupts.afterInterrupt(s, before, ctx, err);
      return;
    }
    if (ctx.unnamed === 'mine') {
      this.unnamedOwner = s;
      this.unnamedGen = this.backend.generation;
    } else if (ctx.unnamed === 'gone') this.unnamedOwner = null;
    if (ctx.wiped) await this.intercepts.repairSession(s, ctx);
    if ((s.settingsDirty && s.txStatus !== 'E') || (s.settingsInTx && s.txStatus === 'I')) await this.replay.snapshot(s);
  }

  /** Write the backend's answer to the client: route notifications, fix names in errors, note state. */
  deliver(s, out, ctx, stripCopyIn) {
    let pieces = null;
    let last = 0;
    let lastType = 0;
    let listened = false;
    const cut = (start, end, replacement) => {
      if (!pieces) pieces = [];
      if (start > last) pieces.push(out.subarray(last, start));
      if (replacement) pieces.push(replacement);
      last = end;
    };
    let hiding = ctx.hideBegin === true; // the BEGIN that resumed a parked transaction: not the client's
    P.eachMessage(out, (type, start, end) => {
      if (hiding) {
        if (type === ERROR) throw new Error(`parking: could not open the transaction again: ${P.errorFields(out, start, end).M}`);
        cut(start, end, null);
        if (type === READY) hiding = false;
        return;
      }
      lastType = type;
      if (type === READY) {
        s.txStatus = String.fromCharCode(out[start + 5]);
        s.skippingToSync = false;
        if (s.txStatus === 'I') s.txTaint = null;
      } else if (type === SUSPENDED || type === EMPTY) {
        this.server.stats.queries += 1; // Execute with a row limit (asyncpg fetchval), or an empty query
      } else if (type === COMPLETE) {
        this.server.stats.queries += 1;
        const c = out[start + 5];
        if (c === 0x53 && out[start + 6] === 0x45 && out[start + 7] === 0x4c) return; // SELECT n: nothing to note
        if (c === 0x53 /* S */ || c === 0x52 /* R */ || c === 0x44 /* D */ || c === 0x4c /* L */ || c === 0x55 /* U */ || c === 0x4e /* N */) {
          const [tag] = P.readCString(out, start + 5);
          const taint = TAINTS.get(tag);
          if (taint) s.txTaint ??= taint;
          if (tag === 'SET' || tag === 'RESET') s.settingsDirty = true;
          else if (tag === 'LISTEN') listened = true;
          else if (tag === 'UNLISTEN') ctx.wiped ??= 'unlisten';
          else if (tag === 'DISCARD ALL') ctx.wiped = 'discard';
          else if (tag === 'DEALLOCATE ALL' && ctx.wiped !== 'discard') ctx.wiped = 'deallocate';
        }
      } else if (type === NOTIFICATION) {
        const n = P.parseNotification(out, start);
        this.notify.route(s, n);
        // Keep it for the issuing client only if it listens too, with its own pid (as PostgreSQL would).
        cut(start, end, s.listening.has(n.channel) ? P.notification(s.pid, n.channel, n.payload) : null);
      } else if (type === ERROR) {
        s.skippingToSync = true; // until the ReadyForQuery that ends this batch, if any
        const fields = P.errorFields(out, start, end);
        if (ctx.refused?.length && fields.M && fields.M.includes(REFUSED_SQL)) {
          cut(start, end, P.errorResponse(ctx.refused.shift())); // a client_encoding refused (refuseEncoding)
        } else if (fields.M && fields.M.includes('__hb')) {
          fields.M = s.clientNames(fields.M).split('"?"').join(`"${s.missingName ?? ''}"`);
          cut(start, end, P.rebuildError(ERROR, fields));
        }
      } else if (type === PARAMETER_STATUS) {
        const [name, pos] = P.readCString(out, start + 5);
        const [value] = P.readCString(out, pos);
        if (s.reported && s.reported.get(name) === value) cut(start, end, null); // a new backend's first report
        else {
          s.reported?.set(name, value);
          s.settingsDirty = true; // a reported setting changed, however (set_config(), inside a function)
        }
      } else if (type === COPY_IN && stripCopyIn) {
        stripCopyIn = false; // the client already got our CopyInResponse
        cut(start, end, null);
      }
    });
    if (pieces) {
      if (last < out.length) pieces.push(out.subarray(last));
      out = Buffer.concat(pieces);
    }
    // no Sync, Flush or Query in this batch and no error: PostgreSQL would not have flushed this yet
    if (ctx.extended && !ctx.flush && !ctx.boundaries && !s.skippingToSync && lastType !== READY) s.hold(out);
    else if (shouldStream(out, ctx, s.txStatus)) {
      s.send(Buffer.alloc(0)); // what was held goes first
      streamTo(s, out); // a cancel can still stop it while the client reads (outflow.js)
    } else s.send(out);
    if (lastType) s.atSyncBoundary = lastType === READY;
    else if (ctx.extended) s.atSyncBoundary = false; // e.g. Bind+Execute with no Sync yet: no answer so far
    if (listened) for (const ch of ctx.listens) this.notify.listen(s, ch);
  }

  // ---- the backend -------------------------------------------------------------------------------

  async exec(s, bytes, then = null) {
    this.running = true;
    this.runningSince = Date.now();
    try {
      return await (then ? this.backend.execIf(bytes, then) : this.backend.exec(bytes));
    } catch (err) {
      throw this.interrupts.explain(s, err);
    } finally {
      this.running = false;
      this.runningSince = 0;
    }
  }

  /** exec() of a simple Query of our own: it drops the unnamed statement, whoever owned it. */
  async execInternal(s, bytes, then = null) {
    try {
      return await this.exec(s, bytes, then);
    } finally {
      this.unnamedOwner = null;
    }
  }

  /** Clients in the queue (not maintenance jobs). */
  waitingClients() {
    let n = 0;
    for (const q of this.queue) if (!q.isJob) n += 1;
    return n;
  }

  /** What the backend is doing right now, for /health, /stats and `hive-bridge status`. */
  activity() {
    const now = Date.now();
    const h = this.holder;
    let backend = 'idle';
    if (this.restarting) backend = 'restarting';
    else if (this.running) backend = 'running';
    else if (h) backend = 'holding';
    let parked = 0;
    for (const t of this.server.sessions.values()) if (t.parked) parked += 1;
    return {
      backend,
      running_ms: this.running ? now - this.runningSince : null,
      held_ms: h ? now - h.heldSince : null,
      holder: h && !h.isJob ? h.info(now) : null,
      job: h && h.isJob ? h.name : null,
      waiting: this.waitingClients(),
      parked,
      parking: { ...this.parking.stats },
      batching: { ...this.batching.stats },
    };
  }

  // ---- limits, cancel --------------------------------------------------------------------------------

  queueTimeout(s) {
    if (!s.queued || this.holder === s) return;
    this.unqueue(s);
    const h = this.holder;
    const waited = ((Date.now() - s.queuedSince) / 1000).toFixed(1);
    let who = 'nobody: the database engine is restarting';
    if (h && h.isJob) who = h.describe();
    else if (h) {
      const held = ((Date.now() - h.heldSince) / 1000).toFixed(1);
      const doing = this.running ? 'running a query' : h.txStatus === 'I' ? 'in an unfinished request' : 'idle in transaction';
      const why = h.parkRefused && !this.running ? ` (not parked: ${h.parkRefused})` : '';
      who = `${h.describe()}, ${doing}${why}, holding it for ${held} s; its last statement: ${h.lastStatementText(200)}`;
    }
    this.log.warn(`client ${s.id}: waited ${waited} s for the database; it is held by ${who}`);
    if (s.startupPending) {
      s.fatal('53300', `timed out after ${waited} s waiting for the database during connection startup; it is held by ${who}`);
      return;
    }
    this.failPending(s, {
      code: '57014',
      message: `canceling statement: waited ${waited} s for the database, which is held by ${who}`,
      hint: 'PGlite runs one session at a time and a transaction that has written holds it until it ends: commit sooner, or raise --queue-timeout-ms.',
    });
  }

  /** Answer everything a waiting client sent with an error (one per Sync / Query). */
  failPending(s, error) {
    if (s.discardToSync) this.discardToSync(s); // the rest of an already failed batch: only its Sync answers
    if (!s.inbox.length) return;
    const msgs = s.takeInbox(s.inbox.length);
    let boundaries = 0;
    for (const m of msgs) if (m.type === QUERY || m.type === SYNC) boundaries += 1;
    if (msgs.some((m) => m.type === TERMINATE)) {
      s.socket.end();
      s.close('Terminate');
      return;
    }
    const err = P.errorResponse(error);
    const parts = [];
    for (let i = 0; i < boundaries; i++) parts.push(err, P.readyForQuery(s.txStatus));
    const last = msgs[msgs.length - 1];
    if (last && last.type !== SYNC && last.type !== QUERY) {
      parts.push(err); // messages after its last Sync: the rest of that batch is discarded up to its Sync
      s.discardToSync = true;
      s.atSyncBoundary = false; // (and it may not join a batched hop meanwhile: batch.js)
    }
    s.send(Buffer.concat(parts));
  }

  cancel(s) {
    if (stopStream(s)) return; // its COPY answer was still being written: stopped, as PostgreSQL would
    if (s.inBatch) {
      this.batching.cancel(s);
      return;
    }
    if (this.holder === s) {
      if (this.running) this.interrupts.interrupt(s, '57014', 'canceling statement due to user request');
      return;
    }
    if (s.queued && !s.startupPending) {
      this.unqueue(s);
      this.failPending(s, { code: '57014', message: 'canceling statement due to user request' });
    }
  }

  closed(s) {
    this.janitor.closed(s);
  }
}
