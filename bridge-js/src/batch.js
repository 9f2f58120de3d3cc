// Batched hops: several waiting clients' self-contained requests go to the PGlite worker in one hop.
//
// With one request per hop, the worker idles while the main thread sends replies and picks the next
// client, and the main thread idles while PGlite runs (measured: the worker idle 62 % of the time under 8
// pgbench clients). When the backend is free and the client at the head of the queue has a request that
// runs on its own, every other queued client with such a request joins it, and the worker runs them one
// after another in one hop (backend.execMany), recording where each one's output ends as it finishes.
//
// A request runs on its own when it cannot leave anything behind on the session that the next request
// of the batch would see: the client is idle (status 'I', no COPY, not parked, settings equal to what the
// backend has applied, no statement_timeout), its input ends in Sync or Query, every statement starts with
// SELECT/INSERT/UPDATE/DELETE/WITH/VALUES/TABLE and has no second statement and no set_config(), and every
// prepared statement it uses is on the backend (nothing to prepare again first). Anything else takes a
// normal turn. The worker also stops a batch after any request that leaves a transaction open.
//
// A cancel of a request that has not started yet skips it (it is answered with 57014 and never runs); a
// cancel of the one running stops the worker as always: the requests that finished before it keep their
// answers (their output was recorded), the rest run again on the new backend.
import * as P from './protocol.js';
import * as SQL from './sql.js';
import { mayIntercept } from './intercept.js';
import { QUERY, PARSE, BIND, DESCRIBE, EXECUTE, CLOSE, SYNC, FLUSH } from './msgtypes.js';

export const MAX_BATCH = 32;
const MAX_REQUEST_BYTES = 1 << 20;
const ALONE_TYPES = new Set([QUERY, PARSE, BIND, DESCRIBE, EXECUTE, CLOSE, SYNC, FLUSH]);
const KEYWORD = /^(select|insert|update|delete|with|values|table)\b/i;

/** A statement text that cannot change the session or leave a transaction open. */
function selfContained(text) {
  if (text === undefined || text.length > 65536) return false;
  const t = SQL.lead(text);
  if (!KEYWORD.test(t)) return false;
  const semi = t.indexOf(';');
  if (semi >= 0 && t.slice(semi + 1).trim() !== '') return false; // a second statement
  return !/set_config/i.test(t);
}

/** Whether a Query's or a Parse's statement text can run in a batch (cached in the message's memo). */
function aloneText(m, memo) {
  const buf = m.buf;
  if (m.type === QUERY) {
    const sql = buf.toString('utf8', 5, buf.length - 1);
    return !mayIntercept(sql) && selfContained(sql);
  }
  const f = P.parseNameAt(buf, 5);
  memo.unnamedParse = f.name === '';
  return selfContained(buf.toString('utf8', f.end + 1, buf.indexOf(0, f.end + 1)));
}

function sameSettings(a, b) {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) if (b.get(k) !== v) return false;
  return true;
}

export class Batching {
  constructor(sched) {
    this.sched = sched;
    this.current = null; // { sessions, started } while a batch runs
    this.stats = { batches: 0, batched_requests: 0, skipped: 0, rerun: 0 };
  }

  /** Whether this session's whole input is one request that can run in a batch. */
  eligible(s) {
    const sched = this.sched;
    if (s.isJob || s.closed || s.cleanedUp || s.phase !== 'ready' || s.startupPending || s.startupUnverified) return false;
    if (s.txStatus !== 'I' || !s.atSyncBoundary || s.copy || s.parked || s.skippingToSync) return false;
    if (sched.replay.unknown || !sameSettings(s.settings, sched.replay.applied)) return false;
    if (SQL.durationMs(s.settings.get('statement_timeout')) > 0) return false;
    const msgs = s.inbox;
    const n = msgs.length;
    if (!n || (msgs[n - 1].type !== SYNC && msgs[n - 1].type !== QUERY)) return false;
    const gen = sched.backend.generation;
    let bytes = 0;
    let unnamedParsed = false;
    for (const m of msgs) {
      const type = m.type;
      if (!ALONE_TYPES.has(type)) return false;
      bytes += m.buf.length;
      if (bytes > MAX_REQUEST_BYTES) return false;
      if (type === QUERY || type === PARSE) {
        const memo = P.memoOf(m);
        if (memo.alone === undefined) memo.alone = aloneText(m, memo);
        if (!memo.alone) return false;
        if (memo.unnamedParse) unnamedParsed = true;
      } else if (type === BIND || (type === DESCRIBE && m.buf[5] === 0x53)) {
        const name = P.statementOf(m).name;
        if (name === '') {
          if (!unnamedParsed) return false; // someone else's Parse in the batch could replace it
        } else {
          const st = s.statements.get(name);
          if (!st || st.gen !== gen) return false;
          if (st.aloneOf !== st.text) {
            st.aloneOf = st.text;
            st.alone = selfContained(st.text);
          }
          if (!st.alone) return false;
        }
      }
    }
    return true;
  }

  /** Called by pump() with the backend free: run a batch if the queue allows one. Returns true if it did. */
  tryRun() {
    const sched = this.sched;
    const q = sched.queue;
    if (sched.opts.batching === false || q.length < 2 || !this.eligible(q[0])) return false;
    const picked = [q[0]];
    for (let i = 1; i < q.length && picked.length < MAX_BATCH; i++) if (this.eligible(q[i])) picked.push(q[i]);
    if (picked.length < 2) return false;
    for (const s of picked) sched.unqueue(s);
    this.run(picked);
    return true;
  }

  async run(sessions) {
    const sched = this.sched;
    const gen = sched.backend.generation;
    const now = Date.now();
    const batch = { isJob: true, isBatch: true, name: `batch of ${sessions.length} requests`, heldSince: now, describe: () => `a batch of ${sessions.length} requests` };
    sched.holder = batch;
    const items = sessions.map((s) => {
      s.inBatch = true;
      s.heldSince = now;
      const msgs = s.takeInbox(s.inbox.length);
      const ctx = sched.newContext();
      const parts = msgs.map((m) => {
        let sql;
        if (m.type === QUERY) {
          sql = m.buf.toString('utf8', 5, m.buf.length - 1);
          s.noteStatement(sql);
        }
        return sched.statements.rewrite(s, m, ctx, gen, sql);
      });
      return { s, msgs, ctx, parts, skipped: false };
    });
    this.current = { items };
    this.stats.batches += 1;
    this.stats.batched_requests += items.length;
    let result;
    sched.running = true;
    sched.runningSince = now;
    try {
      result = await sched.backend.execMany(items.map((it) => it.parts));
    } catch (err) {
      result = { outs: [], error: err };
    } finally {
      sched.running = false;
      sched.runningSince = 0;
      this.current = null;
    }
    const { outs, error } = result;
    const failedAt = error ? outs.length : -1;
    const interruption = sched.interrupts.interruption;
    // The replies are written once the next hop is under way (see the end): the worker runs the next batch
    // while this thread makes the system calls. Corked, a socket keeps every write in order until uncork(),
    // whoever makes it (a turn the pump starts, a FATAL); end() writes what it kept first.
    const corked = [];
    for (const it of items) {
      if (!it.s.closed) {
        it.s.socket.cork();
        corked.push(it.s.socket);
      }
    }
    const uncork = () => {
      for (const sock of corked) sock.uncork();
      corked.length = 0;
    };
    try {
      items.forEach((it, i) => {
        const { s, ctx } = it;
        s.inBatch = false;
        if (it.skipped) {
          this.answerError(it, '57014', 'canceling statement due to user request');
        } else if (i < outs.length) {
          if (!s.closed) sched.deliver(s, outs[i], ctx, false);
          if (ctx.unnamed === 'mine') {
            sched.unnamedOwner = s;
            sched.unnamedGen = gen;
          } else if (ctx.unnamed === 'gone') sched.unnamedOwner = null;
        } else if (i === failedAt) {
          if (interruption && interruption.session === s) {
            sched.interrupts.interruption = null;
            this.answerError(it, interruption.code, interruption.message);
          } else if (sched.draining) {
            s.fatal('57P01', 'terminating connection due to administrator command');
          } else {
            const why = String(error && error.message).split('\n')[0];
            sched.log.error(`client ${s.id}: the database engine failed in a batch: ${why}`);
            s.fatal('XX000', `the database engine failed while running this connection's request: ${why}`);
          }
        } else {
          // never ran: its messages go back, unchanged, to run again
          s.inbox.unshift(...it.msgs);
          for (const m of it.msgs) s.inboxBytes += m.buf.length;
          this.stats.rerun += 1;
        }
      });
      if (error && !sched.draining) {
        uncork(); // not held while the engine restarts
        if (!sched.restarting) sched.restarting = sched.backend.restart('the engine failed in a batch');
        await sched.interrupts.awaitRestart().catch(() => {});
      }
      sched.holder = null;
      // Not expected (see eligible()), but never let others run inside a transaction a request left open:
      // that client keeps the backend, as after any turn of its own.
      const open = error ? null : items.find((it) => !it.s.closed && it.s.txStatus !== 'I');
      for (const it of items) {
        const s = it.s;
        if (s.closed && !s.cleanedUp) sched.janitor.closed(s);
        else if (s.inbox.length && !s.closed && s !== open?.s) sched.want(s);
      }
      if (open) {
        sched.log.warn(`client ${open.s.id}: a batched request left a transaction open; it keeps the backend`);
        sched.holder = open.s;
        open.s.heldSince = Date.now();
        sched.turn(open.s);
        return;
      }
      sched.pump(); // the next hop starts here, synchronously (Channel.call hands it to the worker)...
    } finally {
      uncork(); // ...and these replies go out while it runs (and, whatever happened, nothing stays corked)
    }
  }

  /** One error and ReadyForQuery for each Sync/Query of a request that did not run to its end. */
  answerError(it, code, message) {
    const e = P.errorResponse({ code, message });
    const parts = [];
    for (let k = 0; k < it.ctx.boundaries; k++) parts.push(e, P.readyForQuery('I'));
    it.s.send(Buffer.concat(parts));
  }

  /** A cancel for a client whose request is in the running batch. */
  cancel(s) {
    const cur = this.current;
    if (!cur) return;
    const i = cur.items.findIndex((it) => it.s === s);
    if (i < 0) return;
    const done = this.sched.backend.batchProgress();
    if (i < done) return; // finished already: nothing to cancel, as in PostgreSQL
    if (i > done && this.sched.backend.skipInBatch(i)) {
      cur.items[i].skipped = true;
      this.stats.skipped += 1;
      return;
    }
    // it is running now: stop the worker (interrupt.js); the others are answered or run again
    const sched = this.sched;
    if (sched.interrupts.interruption || sched.server.opts.memory) return;
    sched.log.info(`client ${s.id}: canceling statement due to user request (in a batch)`);
    sched.interrupts.interruption = { session: s, code: '57014', message: 'canceling statement due to user request' };
    sched.restarting = sched.backend.restart(`stopping a query of ${s.describe()} (canceled)`);
  }
}
