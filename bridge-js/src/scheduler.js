// The scheduler hands the one PGlite backend to one client at a time, the way PgBouncer's transaction
// mode hands a server connection to a client.
//
// A client gets a *turn* when it has input. During its turn its messages run on the backend in batches
// (everything it has sent so far, up to a COPY or a message the front end must handle itself). The turn
// ends only when the backend reports ReadyForQuery 'I' after the client's last message and the client has
// nothing more pipelined: so an extended-protocol batch (Parse/Bind/Execute/Sync) or an explicit
// transaction never interleaves with another client's messages. While a client holds the backend inside a
// transaction and sends nothing, everyone else waits; the idle-in-transaction timeout bounds that.
//
// What a client changes in the one backend session is kept per client:
// - prepared statements: each client name maps to a backend name (__hbN); a statement the backend lost
//   (another generation after a restart) is prepared again on demand, before the Bind that needs it;
// - settings: SET/RESET by a client is read back and re-applied whenever that client gets the backend
//   after someone else; startup parameters likewise;
// - LISTEN: the backend listens for everyone; notifications are routed to the clients that listen.
import * as P from './protocol.js';
import { BackendError } from './backend.js';
import * as SQL from './sql.js';

const Q = 0x51;
const PARSE = 0x50;
const BIND = 0x42;
const DESCRIBE = 0x44;
const CLOSE = 0x43;
const SYNC = 0x53;
const FLUSH = 0x48;
const TERMINATE = 0x58;
const COPY_DATA = 0x64;
const COPY_DONE = 0x63;
const COPY_FAIL = 0x66;
const Z = 0x5a;
const ERR = 0x45;
const NOTIFY = 0x41;
const COPY_IN = 0x47;
const COMPLETE = 0x43;
const SUSPENDED = 0x73;
const EMPTY = 0x49;

const BATCH_BYTES = 8 << 20;
const SETTINGS_SNAPSHOT = "SELECT name, setting FROM pg_settings WHERE source = 'session'";

function querySql(m) {
  if (m.sql === undefined) m.sql = m.buf.toString('utf8', 5, m.buf.length - 1);
  return m.sql;
}

/** A query the front end may have to handle itself (cheap test on the first letter first). */
function mayIntercept(sql) {
  const c = sql.trimStart().slice(0, 1).toLowerCase();
  return c === 'c' || c === 'd' || c === 'u' || c === '/' || c === '-';
}

class Interrupted extends Error {}

export class Scheduler {
  constructor(server) {
    this.server = server;
    this.backend = server.backend;
    this.log = server.log;
    this.opts = server.opts;
    this.queue = [];
    this.holder = null;
    this.running = false;
    this.restarting = null; // promise while the backend reopens
    this.interruption = null; // { session, code, message } while a running query is being stopped
    this.applied = new Map(); // settings currently applied on the backend beyond its baseline
    this.unnamedOwner = null; // session whose unnamed statement the backend holds
    this.unnamedGen = 0;
    this.listeners = new Map(); // channel -> Set<Session>
    this.startupReports = new Map(); // startup settings (JSON) -> reported parameters
    this.draining = false; // shutting down: no new turns or batches
    this.backend.on('died', () => {
      if (!this.running) this.recover('the PGlite worker died while idle');
    });
  }

  // ---- queue -------------------------------------------------------------------------------------

  /** A session has work (input, startup, or cleanup after close). */
  want(s) {
    if (this.holder === s || s.queued || s.cleanedUp) return;
    s.queued = true;
    s.queuedSince = Date.now();
    if (!s.closed) s.queueTimer = s.timer(this.opts.queueTimeoutMs, () => this.queueTimeout(s));
    this.queue.push(s);
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
      const s = this.queue.shift();
      if (s.isJob) {
        this.holder = s;
        s.heldSince = Date.now();
        this.runJob(s);
        return;
      }
      s.queued = false;
      s.clearTimer(s.queueTimer);
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
    s.clearTimer(s.queueTimer);
  }

  /**
   * A bare prepare (named Parse messages, then Sync) from a client that would have to wait is answered at
   * once; the statement is prepared on the backend before its first use, like one the backend lost.
   * Without this, a client that runs many connections in one thread and prepares synchronously (pgbench
   * -M prepared calls PQprepare) deadlocks: it blocks waiting for the backend while the connection holding
   * it, inside a transaction, waits for that same thread. The price: an error in such a statement is
   * reported when it is first executed rather than when it is prepared.
   */
  answerBarePrepare(s) {
    if (this.holder === s || s.queued || s.startupPending || (!this.holder && !this.queue.length)) return false;
    const msgs = s.inbox;
    const n = msgs.length;
    if (n < 2 || msgs[n - 1].type !== SYNC) return false;
    const names = [];
    for (let i = 0; i < n - 1; i++) {
      if (msgs[i].type !== PARSE) return false;
      let f;
      try {
        f = P.parseNameAt(msgs[i].buf, 5);
        P.parseNameAt(msgs[i].buf, f.end + 1); // the query text must be terminated too
      } catch {
        return false; // malformed: the normal path reports it to this client
      }
      if (f.name === '') return false;
      names.push(f);
    }
    const out = [];
    for (let i = 0; i < names.length; i++) {
      const f = names[i];
      if (s.statements.has(f.name)) {
        out.push(P.errorResponse({ code: '42P05', message: `prepared statement "${f.name}" already exists` }));
        break;
      }
      const buf = msgs[i].buf;
      const st = s.statementFor(f.name);
      st.parse = P.replaceRange(buf, f.start, f.end, st.bname);
      st.gen = 0; // not on the backend yet
      const sqlEnd = buf.indexOf(0, f.end + 1);
      st.listen = /^\s*listen\s/i.test(buf.toString('latin1', f.end + 1, Math.min(sqlEnd, f.end + 16)))
        ? SQL.listenChannel(buf.toString('utf8', f.end + 1, sqlEnd))
        : null;
      out.push(P.parseComplete());
    }
    out.push(P.readyForQuery(s.txStatus));
    s.takeInbox(n);
    s.send(Buffer.concat(out));
    return true;
  }

  // ---- a turn -----------------------------------------------------------------------------------

  async turn(s) {
    try {
      if (!s.closed && !s.startupPending) await this.switchTo(s);
      for (;;) {
        if (s.closed) {
          await this.cleanup(s);
          break;
        }
        if (s.startupPending) {
          await this.runStartup(s);
          continue;
        }
        if (await this.step(s)) continue;
        if (s.txStatus === 'I' && s.atSyncBoundary && !s.copy) break;
        if (s.txStatus === 'I' && s.statementOnly && !s.skippingToSync && !s.copy) {
          // Parse/Describe with no Sync yet (asyncpg's prepare() waits right there): nothing of this
          // client needs the backend held, only PostgreSQL's implicit transaction is open. Close it with
          // our own Sync and let others in; the client's own Sync later gets its ReadyForQuery as usual.
          await this.exec(s, P.sync());
          s.atSyncBoundary = true;
          break;
        }
        // Pinned: inside a transaction, an unfinished extended-protocol batch, or a COPY.
        s.idleSince = Date.now();
        const why = await s.waitForInput(this.idleTimeoutFor(s));
        if (why === 'timeout' && !s.closed) {
          const what = s.txStatus === 'I' ? 'held the database idle in an unfinished request' : 'was idle in transaction';
          this.log.warn(`client ${s.id}: ${s.describe()} ${what} too long; terminating it`);
          s.fatal('25P03', 'terminating connection due to idle-in-transaction timeout',
            `hive-bridge shares one PGlite session; a client idle inside a transaction blocks every other client (--idle-in-transaction-timeout-ms ${this.idleTimeoutFor(s)}).`);
        }
      }
    } catch (err) {
      await this.turnFailed(s, err);
    } finally {
      this.holder = null;
      if (s.closed && !s.cleanedUp) {
        s.cleanedUp = true;
        this.unlistenAll(s);
      }
      if (s.inbox.length && !s.closed) this.want(s);
      this.pump();
    }
  }

  idleTimeoutFor(s) {
    const own = SQL.durationMs(s.settings.get('idle_in_transaction_session_timeout'));
    const max = this.opts.idleInTransactionTimeoutMs;
    if (own > 0 && (max <= 0 || own < max)) return own;
    return max;
  }

  /** Run the next piece of the holder's input. Returns false when there is nothing to run. */
  async step(s) {
    if (this.draining) return false; // shutting down: run nothing new
    if (s.copy) return this.stepCopy(s);
    if (!s.inbox.length) return false;
    const first = s.inbox[0];
    if (first.type === Q && (await this.intercept(s, first))) return true;
    if (first.type === TERMINATE) {
      s.takeInbox(1);
      s.socket.end();
      s.close('Terminate');
      return true;
    }
    const gen = this.backend.generation;
    const ctx = { pre: [], parsed: new Set(), unnamed: null, boundaries: 0, listens: [], unlistens: [], extended: false, statementOnly: true, wiped: null };
    const parts = [];
    let n = 0;
    let bytes = 0;
    for (const m of s.inbox) {
      if (n > 0 && (m.type === TERMINATE || (m.type === Q && mayIntercept(querySql(m))))) break;
      if (m.type === TERMINATE) break;
      n += 1;
      if (m.type === COPY_DATA || m.type === COPY_DONE || m.type === COPY_FAIL) continue; // outside COPY: ignored, as PostgreSQL does
      if (!(m.type === PARSE || m.type === FLUSH || ((m.type === DESCRIBE || m.type === CLOSE) && m.buf[5] === 0x53))) ctx.statementOnly = false;
      const out = this.rewrite(s, m, ctx, gen);
      parts.push(out);
      bytes += out.length;
      if (bytes > BATCH_BYTES) break;
    }
    s.takeInbox(n);
    if (parts.length) await this.runBatch(s, parts, ctx);
    return true;
  }

  /** Rename statement references of P/B/D/C messages into the client's own namespace. */
  rewrite(s, m, ctx, gen) {
    const buf = m.buf;
    switch (m.type) {
      case Q: {
        ctx.boundaries += 1;
        ctx.unnamed = 'gone'; // a simple query drops the unnamed statement
        const sql = querySql(m);
        if (SQL.mayAffectSession(sql)) ctx.unlistens.push(...SQL.unlistenTargets(sql));
        if (sql.length < 300 && /^\s*listen\s/i.test(sql)) {
          const ch = SQL.listenChannel(sql);
          if (ch) ctx.listens.push(ch);
        }
        return buf;
      }
      case SYNC:
        ctx.boundaries += 1;
        return buf;
      case FLUSH:
        return buf; // asks for output; opens nothing
      case PARSE: {
        ctx.extended = true;
        const f = P.parseNameAt(buf, 5);
        // A LISTEN may be prepared now and executed later: remember its channel with the statement.
        const sqlEnd = buf.indexOf(0, f.end + 1);
        let listen = null;
        if (sqlEnd - f.end < 300 && /^\s*listen\s/i.test(buf.toString('latin1', f.end + 1, Math.min(sqlEnd, f.end + 16)))) {
          listen = SQL.listenChannel(buf.toString('utf8', f.end + 1, sqlEnd));
        }
        const text = buf.toString('utf8', f.end + 1, sqlEnd);
        const unlistens = SQL.mayAffectSession(text) ? SQL.unlistenTargets(text) : null;
        if (f.name === '') {
          s.unnamedParse = buf;
          s.unnamedListen = listen;
          s.unnamedUnlistens = unlistens;
          ctx.unnamed = 'mine';
          return buf;
        }
        const st = s.statementFor(f.name);
        st.parse = P.replaceRange(buf, f.start, f.end, st.bname);
        st.gen = gen;
        st.listen = listen;
        st.unlistens = unlistens;
        ctx.parsed.add(f.name);
        return st.parse;
      }
      case BIND: {
        ctx.extended = true;
        const portal = P.parseNameAt(buf, 5);
        return this.statementRef(s, buf, P.parseNameAt(buf, portal.end + 1), ctx, gen);
      }
      case DESCRIBE:
        ctx.extended = true;
        if (buf[5] === 0x53 /* S */) return this.statementRef(s, buf, P.parseNameAt(buf, 6), ctx, gen);
        return buf;
      case CLOSE: {
        ctx.extended = true;
        if (buf[5] !== 0x53) return buf;
        const f = P.parseNameAt(buf, 6);
        if (f.name === '') return buf;
        const st = s.statements.get(f.name);
        s.statements.delete(f.name);
        // Closing a statement that does not exist is not an error; a name never prepared is such a name.
        return P.replaceRange(buf, f.start, f.end, st ? st.bname : '__hb_missing');
      }
      default:
        ctx.extended = true;
        return buf;
    }
  }

  statementRef(s, buf, f, ctx, gen) {
    if (f.name === '') {
      const mine = ctx.unnamed === 'mine' || (ctx.unnamed === null && this.unnamedOwner === s && this.unnamedGen === gen);
      if (!mine && s.unnamedParse) {
        ctx.pre.push(s.unnamedParse);
        ctx.unnamed = 'mine';
      }
      if (s.unnamedListen) ctx.listens.push(s.unnamedListen);
      if (s.unnamedUnlistens) ctx.unlistens.push(...s.unnamedUnlistens);
      return buf;
    }
    const st = s.statements.get(f.name);
    if (!st) {
      s.missingName = f.name;
      return P.replaceRange(buf, f.start, f.end, '__hb_missing');
    }
    if (st.listen) ctx.listens.push(st.listen);
    if (st.unlistens) ctx.unlistens.push(...st.unlistens);
    if (st.gen !== gen && !ctx.parsed.has(f.name)) {
      ctx.pre.push(st.parse); // the backend lost it (restarted): prepare it again first
      st.gen = gen;
      ctx.parsed.add(f.name);
    }
    return P.replaceRange(buf, f.start, f.end, st.bname);
  }

  async runBatch(s, parts, ctx, { stripCopyIn = false } = {}) {
    const before = s.txStatus;
    const wasAtBoundary = s.atSyncBoundary;
    let prefix = null;
    try {
      if (ctx.pre.length) {
        // Re-prepare what this client needs; the answers are ours, except an error, which is the client's.
        const out = await this.exec(s, Buffer.concat([...ctx.pre, P.flush()]));
        P.eachMessage(out, (type, start, end) => {
          if (type === ERR) prefix = out.subarray(start, end);
        });
      }
      const timeout = SQL.durationMs(s.settings.get('statement_timeout'));
      const timer = timeout > 0 ? s.timer(timeout, () => this.interrupt(s, '57014', 'canceling statement due to statement timeout')) : null;
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
      await this.afterInterrupt(s, before, ctx, err);
      return;
    }
    if (ctx.unnamed === 'mine') {
      this.unnamedOwner = s;
      this.unnamedGen = this.backend.generation;
    } else if (ctx.unnamed === 'gone') this.unnamedOwner = null;
    if (ctx.wiped) await this.repairSession(s, ctx);
    if (s.settingsDirty && s.txStatus !== 'E') await this.snapshotSettings(s);
  }

  /** Write the backend's answer to the client: route notifications, fix names in errors. */
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
    P.eachMessage(out, (type, start, end) => {
      lastType = type;
      if (type === Z) {
        s.txStatus = String.fromCharCode(out[start + 5]);
        s.skippingToSync = false;
      } else if (type === SUSPENDED || type === EMPTY) {
        this.server.stats.queries += 1; // Execute with a row limit (asyncpg fetchval), or an empty query
      } else if (type === COMPLETE) {
        this.server.stats.queries += 1;
        const c = out[start + 5];
        if (c === 0x53 /* S */ || c === 0x52 /* R */ || c === 0x44 /* D */ || c === 0x4c /* L */ || c === 0x55 /* U */) {
          const [tag] = P.readCString(out, start + 5);
          if (tag === 'SET' || tag === 'RESET') s.settingsDirty = true;
          else if (tag === 'LISTEN') listened = true;
          else if (tag === 'UNLISTEN') ctx.wiped ??= 'unlisten';
          else if (tag === 'DISCARD ALL') ctx.wiped = 'discard';
          else if (tag === 'DEALLOCATE ALL' && ctx.wiped !== 'discard') ctx.wiped = 'deallocate';
        }
      } else if (type === NOTIFY) {
        const n = P.parseNotification(out, start);
        this.route(s, n);
        // Keep it for the issuing client only if it listens too, with its own pid (as PostgreSQL would).
        cut(start, end, s.listening.has(n.channel) ? P.notification(s.pid, n.channel, n.payload) : null);
      } else if (type === ERR) {
        s.skippingToSync = true; // until the ReadyForQuery that ends this batch, if any
        const fields = P.errorFields(out, start, end);
        if (fields.M && fields.M.includes('__hb')) {
          fields.M = s.clientNames(fields.M).split('"?"').join(`"${s.missingName ?? ''}"`);
          cut(start, end, P.rebuildError(ERR, fields));
        }
      } else if (type === COPY_IN && stripCopyIn) {
        stripCopyIn = false; // the client already got our CopyInResponse
        cut(start, end, null);
      }
    });
    if (pieces) {
      if (last < out.length) pieces.push(out.subarray(last));
      s.send(Buffer.concat(pieces));
    } else s.send(out);
    if (lastType) s.atSyncBoundary = lastType === Z;
    else if (ctx.extended) s.atSyncBoundary = false; // e.g. Bind+Execute with no Sync yet: no answer so far
    if (listened) for (const ch of ctx.listens) this.listen(s, ch);
  }

  // ---- what the front end handles itself ----------------------------------------------------------

  async intercept(s, m) {
    const sql = querySql(m);
    if (!mayIntercept(sql)) return false;
    const head = SQL.lead(sql).slice(0, 10).toLowerCase();
    if (head.startsWith('copy')) {
      const copy = SQL.copyFromStdin(sql);
      // In a failed transaction the backend refuses it at once; after an extended-protocol error it
      // discards everything until Sync. Either way it never enters COPY mode: pass it through.
      if (!copy || s.txStatus === 'E' || s.skippingToSync) return false;
      s.takeInbox(1);
      // PGlite can only take a COPY FROM STDIN whole (query, data and CopyDone in one call), so the
      // front end answers CopyInResponse itself, buffers the data, then runs it all at once.
      s.copy = { parts: [m.buf], bytes: m.buf.length };
      s.send(P.copyInResponse(copy.binary ? 1 : 0, 0));
      return true;
    }
    if (!head.startsWith('dealloc') && !head.startsWith('discard') && !head.startsWith('unlisten')) return false;
    const dealloc = SQL.deallocate(sql);
    if (dealloc) return this.deallocate(s, m, dealloc);
    if (SQL.isDiscardAll(sql) && s.txStatus === 'I') {
      s.takeInbox(1);
      await this.discardAll(s);
      return true;
    }
    const unlisten = SQL.unlistenChannel(sql);
    if (unlisten && s.txStatus !== 'E') {
      // The backend keeps listening (others may listen to the same channel); this client stops hearing it.
      s.takeInbox(1);
      if (unlisten === '*') this.unlistenAll(s);
      else this.unlisten(s, unlisten);
      s.send(Buffer.concat([P.commandComplete('UNLISTEN'), P.readyForQuery(s.txStatus)]));
      return true;
    }
    return false;
  }

  async stepCopy(s) {
    let n = 0;
    let done = false;
    for (const m of s.inbox) {
      n += 1;
      if (m.type === FLUSH || m.type === SYNC) continue; // ignored during COPY, as PostgreSQL does
      s.copy.parts.push(m.buf);
      s.copy.bytes += m.buf.length;
      if (m.type !== COPY_DATA) {
        done = true; // CopyDone, CopyFail, or anything else (which makes the backend fail the COPY)
        break;
      }
    }
    s.takeInbox(n);
    if (s.copy.bytes > this.opts.maxCopyBytes) {
      s.copy = null;
      s.fatal('54000', `COPY FROM STDIN data exceeds ${this.opts.maxCopyBytes} bytes`, 'hive-bridge buffers a COPY in memory before PGlite runs it; split the load into smaller COPYs.');
      return true;
    }
    if (!done) return n > 0;
    const parts = s.copy.parts;
    s.copy = null;
    await this.runBatch(s, [Buffer.concat(parts)], { pre: [], boundaries: 1, listens: [], unlistens: [], unnamed: 'gone', extended: false, wiped: null }, { stripCopyIn: true });
    return true;
  }

  async deallocate(s, m, what) {
    const gen = this.backend.generation;
    if (what.all) {
      s.takeInbox(1);
      const live = [...s.statements.values()].filter((st) => st.gen === gen);
      s.statements.clear();
      if (live.length) await this.exec(s, Buffer.concat([...live.map((st) => P.closeStatement(st.bname)), P.flush()]));
      s.send(Buffer.concat([P.commandComplete('DEALLOCATE ALL'), P.readyForQuery(s.txStatus)]));
      return true;
    }
    const st = s.statements.get(what.name);
    if (!st) return false; // not a protocol-level statement of this client: an SQL PREPAREd one, or an error
    s.statements.delete(what.name);
    if (st.gen !== gen) {
      s.takeInbox(1);
      s.send(Buffer.concat([P.commandComplete('DEALLOCATE'), P.readyForQuery(s.txStatus)]));
      return true;
    }
    m.buf = P.query(`DEALLOCATE ${SQL.quoteIdent(st.bname)}`);
    m.sql = undefined;
    return false;
  }

  async discardAll(s) {
    const gen = this.backend.generation;
    const live = [...s.statements.values()].filter((st) => st.gen === gen);
    s.statements.clear();
    s.unnamedParse = null;
    this.unlistenAll(s);
    await this.exec(s, Buffer.concat([...live.map((st) => P.closeStatement(st.bname)), P.sync(), P.query('RESET ALL')]));
    this.applied = new Map();
    this.unnamedOwner = null;
    s.settings = new Map(s.startupSettings);
    await this.switchTo(s);
    s.send(Buffer.concat([P.commandComplete('DISCARD ALL'), P.readyForQuery('I')]));
  }

  /**
   * A command that changes the whole backend session reached the backend (through the extended protocol,
   * or inside a multi-statement query such as asyncpg's pool reset "...; UNLISTEN *; RESET ALL;").
   * Restore what the other clients lost: their prepared statements are prepared again on demand, their
   * channels listened to again; the issuing client gets what the command means for its own session.
   */
  async repairSession(s, ctx) {
    if (ctx.wiped === 'discard' || ctx.wiped === 'deallocate') {
      for (const t of this.server.sessions.values()) for (const st of t.statements.values()) st.gen = 0;
      s.statements.clear();
      s.unnamedParse = null;
      this.unnamedOwner = null;
    }
    if (ctx.wiped === 'discard') {
      this.unlistenAll(s);
      this.applied = new Map();
      s.settings = new Map(s.startupSettings);
      s.settingsDirty = false;
      await this.switchTo(s);
    } else {
      for (const ch of ctx.unlistens) {
        if (ch === '*') this.unlistenAll(s);
        else this.unlisten(s, ch);
      }
    }
    const channels = [...this.listeners].filter(([, set]) => set.size).map(([ch]) => ch);
    if (channels.length && s.txStatus !== 'E') {
      await this.exec(s, P.query(channels.map((c) => `LISTEN ${SQL.quoteIdent(c)}`).join('; ')));
      this.unnamedOwner = null;
    }
  }

  // ---- settings ------------------------------------------------------------------------------------

  /** Make the backend's session settings this client's: reset others' changes, apply its own. */
  async switchTo(s) {
    const resets = [];
    const sets = [];
    for (const k of this.applied.keys()) if (!s.settings.has(k)) resets.push(k);
    for (const [k, v] of s.settings) if (this.applied.get(k) !== v) sets.push([k, v]);
    if (!resets.length && !sets.length) return null;
    const stmts = resets.map((k) => `RESET ${SQL.quoteIdent(k)}`);
    if (sets.length) stmts.push(`SELECT ${sets.map(([k, v]) => `set_config(${SQL.quoteLiteral(k)}, ${SQL.quoteLiteral(v)}, false)`).join(', ')}`);
    const out = await this.exec(s, P.query(stmts.join('; ')));
    this.unnamedOwner = null;
    const err = P.parseMessages(out).find((msg) => msg.type === ERR);
    if (err) return err.fields; // nothing was applied: the statements ran as one implicit transaction
    this.applied = new Map(s.settings);
    return null;
  }

  /** Read back what the client changed with SET/RESET, so it can be re-applied on its next turn. */
  async snapshotSettings(s) {
    const out = await this.exec(s, P.query(SETTINGS_SNAPSHOT));
    this.unnamedOwner = null;
    const settings = new Map();
    for (const msg of P.parseMessages(out)) if (msg.type === 0x44) settings.set(msg.values[0], msg.values[1]);
    s.settings = settings;
    s.settingsDirty = false;
    this.applied = new Map(settings);
  }

  /** Cached ParameterStatus values for a set of startup settings, if already known. */
  startupReport(settings) {
    if (!settings.size) return new Map(this.backend.baseline);
    return this.startupReports.get(JSON.stringify([...settings].sort())) ?? null;
  }

  async runStartup(s) {
    s.startupPending = false;
    const err = await this.switchTo(s);
    if (err) {
      s.fatal(err.C === '42704' || err.C === '22023' ? err.C : '22023', err.M);
      return;
    }
    const names = [...this.backend.baseline.keys()];
    const out = await this.exec(s, P.query(`SELECT name, current_setting(name) FROM unnest(ARRAY[${names.map(SQL.quoteLiteral).join(',')}]) AS name`));
    this.unnamedOwner = null;
    const reported = new Map(this.backend.baseline);
    for (const msg of P.parseMessages(out)) if (msg.type === 0x44) reported.set(msg.values[0], msg.values[1]);
    this.startupReports.set(JSON.stringify([...s.startupSettings].sort()), reported);
    s.completeStartup(reported);
  }

  // ---- LISTEN / NOTIFY -----------------------------------------------------------------------------

  listen(s, channel) {
    let set = this.listeners.get(channel);
    if (!set) this.listeners.set(channel, (set = new Set()));
    set.add(s);
    s.listening.add(channel);
  }

  unlisten(s, channel) {
    this.listeners.get(channel)?.delete(s);
    s.listening.delete(channel);
  }

  unlistenAll(s) {
    for (const ch of s.listening) this.listeners.get(ch)?.delete(s);
    s.listening.clear();
  }

  /** Deliver a notification raised by `from` to every other client listening on its channel. */
  route(from, n) {
    const set = this.listeners.get(n.channel);
    if (!set) return;
    let msg = null;
    for (const t of set) {
      if (t === from || t.closed) continue;
      msg ??= P.notification(from.pid, n.channel, n.payload);
      t.send(msg);
    }
  }

  // ---- limits, cancel, failures --------------------------------------------------------------------

  queueTimeout(s) {
    if (!s.queued || this.holder === s) return;
    this.unqueue(s);
    const h = this.holder;
    const waited = ((Date.now() - s.queuedSince) / 1000).toFixed(1);
    let who = 'nobody: the database engine is restarting';
    if (h) {
      const held = ((Date.now() - h.heldSince) / 1000).toFixed(1);
      const doing = this.running ? 'running a query' : h.txStatus === 'I' ? 'in an unfinished request' : 'idle in transaction';
      who = `${h.describe()}, ${doing}, holding it for ${held} s`;
    }
    this.log.warn(`client ${s.id}: waited ${waited} s for the database; it is held by ${who}`);
    if (s.startupPending) {
      s.fatal('53300', `timed out after ${waited} s waiting for the database during connection startup; it is held by ${who}`);
      return;
    }
    this.failPending(s, {
      code: '57014',
      message: `canceling statement: waited ${waited} s for the database, which is held by ${who}`,
      hint: 'PGlite runs one session at a time: keep transactions short, or raise --queue-timeout-ms.',
    });
  }

  /** Answer everything a waiting client sent with an error (one per Sync / Query). */
  failPending(s, error) {
    const msgs = s.takeInbox(s.inbox.length);
    let boundaries = 0;
    for (const m of msgs) if (m.type === Q || m.type === SYNC) boundaries += 1;
    if (msgs.some((m) => m.type === TERMINATE)) {
      s.socket.end();
      s.close('Terminate');
      return;
    }
    const err = P.errorResponse(error);
    const parts = [];
    for (let i = 0; i < Math.max(1, boundaries); i++) parts.push(err, P.readyForQuery(s.txStatus));
    if (!boundaries) parts.pop();
    s.send(Buffer.concat(parts));
  }

  cancel(s) {
    if (this.holder === s) {
      if (this.running) this.interrupt(s, '57014', 'canceling statement due to user request');
      return;
    }
    if (s.queued && !s.startupPending) {
      this.unqueue(s);
      this.failPending(s, { code: '57014', message: 'canceling statement due to user request' });
    }
  }

  /** Stop the holder's running query: PGlite cannot be interrupted, so its worker is restarted. */
  interrupt(s, code, message) {
    if (this.holder !== s || !this.running || this.interruption) return;
    if (this.server.opts.memory) {
      this.log.warn(`client ${s.id}: cannot stop a running query on an in-memory database (a restart would lose the data)`);
      return;
    }
    this.log.info(`client ${s.id}: ${message}`);
    this.interruption = { session: s, code, message };
    this.restarting = this.backend.restart(`stopping a query of ${s.describe()} (${message})`);
  }

  async afterInterrupt(s, before, ctx, err) {
    await this.awaitRestart();
    const parts = [];
    const e = P.errorResponse({ code: err.code, message: err.message });
    if (before === 'T' || before === 'E') {
      // PostgreSQL leaves the transaction aborted, not gone: recreate that on the new backend so the
      // client's next statements fail until it rolls back, as they would there.
      await this.switchTo(s);
      await this.exec(s, P.query('BEGIN; SELECT 1/0'));
      this.unnamedOwner = null;
      s.txStatus = 'E';
    } else s.txStatus = 'I';
    for (let i = 0; i < Math.max(1, ctx.boundaries); i++) parts.push(e, P.readyForQuery(s.txStatus));
    s.send(Buffer.concat(parts));
    s.atSyncBoundary = true;
  }

  async exec(s, bytes) {
    this.running = true;
    try {
      return await this.backend.exec(bytes);
    } catch (err) {
      const intr = this.interruption;
      if (intr && intr.session === s) {
        this.interruption = null;
        const e = new Interrupted(intr.message);
        e.code = intr.code;
        throw e;
      }
      throw err;
    } finally {
      this.running = false;
    }
  }

  async awaitRestart() {
    const r = this.restarting;
    if (!r) return;
    try {
      await r;
    } catch (err) {
      this.server.die(`the database engine could not be reopened: ${err.message}`);
      throw err;
    } finally {
      if (this.restarting === r) this.restarting = null;
    }
    await this.afterRestart();
  }

  /** The backend is a new session: nothing of the old one is applied, and it must listen again. */
  async afterRestart() {
    this.applied = new Map();
    this.unnamedOwner = null;
    const channels = [...this.listeners].filter(([, set]) => set.size).map(([ch]) => ch);
    if (channels.length) await this.backend.exec(P.query(channels.map((c) => `LISTEN ${SQL.quoteIdent(c)}`).join('; ')));
  }

  async turnFailed(s, err) {
    if (err instanceof P.ProtocolError) {
      this.log.info(`client ${s.id}: protocol violation: ${err.message}`);
      s.fatal(err.code, err.message);
      return;
    }
    if (this.draining) {
      // shutdown stopped the engine under this request: it was not committed
      s.fatal('57P01', 'terminating connection due to administrator command');
      return;
    }
    if (!(err instanceof BackendError)) {
      this.log.error(`client ${s.id}: internal error: ${(err && err.stack) || err}`);
      s.fatal('XX000', `internal error in hive-bridge: ${err.message}`);
      return;
    }
    // PGlite itself failed: this client's work is lost; everyone else goes on with a fresh backend.
    this.log.error(`client ${s.id}: the database engine failed: ${err.message.split('\n')[0]}`);
    s.fatal('XX000', `the database engine failed while running this connection's request: ${err.message.split('\n')[0]}`,
      'The engine was restarted; any open transaction of this connection was rolled back.');
    if (!this.restarting) this.restarting = this.backend.restart('the engine failed');
    await this.awaitRestart().catch(() => {});
  }

  recover(why) {
    if (this.restarting) return;
    this.log.error(why);
    this.restarting = this.backend.restart(why);
    this.awaitRestart()
      .catch(() => {})
      .finally(() => this.pump());
  }

  /** A closed client's leftovers on the backend: its transaction and its prepared statements. */
  async cleanup(s) {
    s.cleanedUp = true;
    this.unlistenAll(s);
    if (!this.backend.ready) return;
    const gen = this.backend.generation;
    const parts = [];
    if (s.txStatus !== 'I' || !s.atSyncBoundary) parts.push(P.sync(), P.query('ROLLBACK'));
    for (const st of s.statements.values()) if (st.gen === gen) parts.push(P.closeStatement(st.bname));
    if (parts.length) {
      parts.push(P.sync());
      await this.exec(s, Buffer.concat(parts));
      if (this.unnamedOwner === s) this.unnamedOwner = null;
    }
  }

  /** A session closed: clean up now, or in a turn if it left state on the backend. */
  closed(s) {
    if (this.holder === s) return; // its turn notices and cleans up
    const gen = this.backend.generation;
    const hasState = [...s.statements.values()].some((st) => st.gen === gen);
    if (s.queued) return; // its turn comes and cleans up
    if (hasState) this.want(s);
    else {
      s.cleanedUp = true;
      this.unlistenAll(s);
    }
  }
}
