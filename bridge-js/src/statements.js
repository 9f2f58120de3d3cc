// Statement renaming: every client has its own prepared-statement namespace on the one backend session.
//
// A client's statement name maps to a backend name (__hbN, see Session.statementFor). Parse, Bind,
// Describe and Close are rewritten to the backend name on their way in; error texts are rewritten back on
// their way out (scheduler deliver()). A statement the backend lost (a restart bumped the generation) is
// prepared again on demand, before the Bind that needs it. The unnamed statement belongs to whichever
// client parsed it last: the scheduler tracks its owner, and a client whose unnamed statement was replaced
// by someone else's gets its last unnamed Parse sent again first.
import * as P from './protocol.js';
import * as SQL from './sql.js';
import { QUERY, PARSE, BIND, DESCRIBE, CLOSE, SYNC, FLUSH } from './msgtypes.js';

function listenOf(buf, from, sqlEnd) {
  if (sqlEnd - from < 300 && /^\s*listen\s/i.test(buf.toString('latin1', from + 1, Math.min(sqlEnd, from + 16)))) {
    return SQL.listenChannel(buf.toString('utf8', from + 1, sqlEnd));
  }
  return null;
}

export class StatementNames {
  constructor(sched) {
    this.sched = sched;
  }

  /** Rename statement references of P/B/D/C messages into the client's own namespace. */
  rewrite(s, m, ctx, gen, sql) {
    const buf = m.buf;
    switch (m.type) {
      case QUERY: {
        ctx.boundaries += 1;
        ctx.unnamed = 'gone'; // a simple query drops the unnamed statement
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
        ctx.flush = true;
        return buf; // asks for output; opens nothing
      case PARSE: {
        ctx.extended = true;
        const f = P.parseNameAt(buf, 5);
        // A LISTEN may be prepared now and executed later: remember its channel with the statement.
        const sqlEnd = buf.indexOf(0, f.end + 1);
        const listen = listenOf(buf, f.end, sqlEnd);
        const text = buf.toString('utf8', f.end + 1, sqlEnd);
        const unlistens = SQL.mayAffectSession(text) ? SQL.unlistenTargets(text) : null;
        s.noteStatement(text);
        if (f.name === '') {
          s.unnamedParse = buf;
          s.unnamedListen = listen;
          s.unnamedUnlistens = unlistens;
          s.unnamedText = text;
          ctx.unnamed = 'mine';
          return buf;
        }
        const st = s.statementFor(f.name);
        st.parse = P.replaceRange(buf, f.start, f.end, st.bnameBytes);
        st.gen = gen;
        st.listen = listen;
        st.unlistens = unlistens;
        st.text = text;
        (ctx.parsed ??= new Set()).add(f.name);
        return st.parse;
      }
      case BIND:
        ctx.extended = true;
        return this.statementRef(s, buf, P.statementOf(m), ctx, gen, true);
      case DESCRIBE:
        ctx.extended = true;
        if (buf[5] === 0x53 /* S */) return this.statementRef(s, buf, P.statementOf(m), ctx, gen, false);
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

  statementRef(s, buf, f, ctx, gen, bind) {
    const sched = this.sched;
    if (f.name === '') {
      const mine = ctx.unnamed === 'mine' || (ctx.unnamed === null && sched.unnamedOwner === s && sched.unnamedGen === gen);
      if (!mine && s.unnamedParse) {
        ctx.pre.push(s.unnamedParse);
        ctx.unnamed = 'mine';
      }
      if (s.unnamedListen) ctx.listens.push(s.unnamedListen);
      if (s.unnamedUnlistens) ctx.unlistens.push(...s.unnamedUnlistens);
      if (bind && s.unnamedText !== undefined) s.noteStatement(s.unnamedText);
      return buf;
    }
    const st = s.statements.get(f.name);
    if (!st) {
      s.missingName = f.name;
      return P.replaceRange(buf, f.start, f.end, '__hb_missing');
    }
    if (bind && st.text !== undefined) s.noteStatement(st.text);
    if (st.listen) ctx.listens.push(st.listen);
    if (st.unlistens) ctx.unlistens.push(...st.unlistens);
    if (st.gen !== gen && !ctx.parsed?.has(f.name)) {
      ctx.pre.push(st.parse); // the backend lost it (restarted): prepare it again first
      st.gen = gen;
      (ctx.parsed ??= new Set()).add(f.name);
    }
    return P.replaceRange(buf, f.start, f.end, st.bnameBytes);
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
    const sched = this.sched;
    if (sched.holder === s || s.queued || s.startupPending || s.discardToSync || (!sched.holder && !sched.queue.length)) return false;
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
      st.parse = P.replaceRange(buf, f.start, f.end, st.bnameBytes);
      st.gen = 0; // not on the backend yet
      const sqlEnd = buf.indexOf(0, f.end + 1);
      st.listen = listenOf(buf, f.end, sqlEnd);
      st.text = buf.toString('utf8', f.end + 1, sqlEnd);
      out.push(P.parseComplete());
    }
    out.push(P.readyForQuery(s.txStatus));
    s.takeInbox(n);
    s.send(Buffer.concat(out));
    return true;
  }

  /** DEALLOCATE of a protocol-level statement: close the client's backend statement instead. */
  async deallocate(s, m, what) {
    const sched = this.sched;
    const gen = sched.backend.generation;
    if (what.all) {
      s.takeInbox(1);
      const live = [...s.statements.values()].filter((st) => st.gen === gen);
      s.statements.clear();
      if (live.length) await sched.exec(s, Buffer.concat([...live.map((st) => P.closeStatement(st.bname)), P.flush()]));
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

  /** Every statement of every client must be prepared again before its next use (DISCARD/DEALLOCATE ALL ran). */
  forgetAll() {
    for (const t of this.sched.server.sessions.values()) for (const st of t.statements.values()) st.gen = 0;
  }
}
