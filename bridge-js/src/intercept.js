// What the front end handles itself instead of passing it to the backend session that every client
// shares: COPY FROM STDIN (PGlite takes it only whole), DEALLOCATE of a client's protocol statements,
// DISCARD ALL and UNLISTEN (which would otherwise act on everyone), and the repair of the session after
// such a command reached the backend anyway (inside a multi-statement query or through the extended protocol).
import * as P from './protocol.js';
import * as SQL from './sql.js';
import { FLUSH, SYNC, COPY_DATA } from './msgtypes.js';
import { CopyBuffer } from './copybuf.js';
import { convertCopy } from './copyconvert.js';

/** A query the front end may have to handle itself (cheap test on the first letter first). */
export function mayIntercept(sql) {
  const c = sql.trimStart().slice(0, 1).toLowerCase();
  return c === 'c' || c === 'd' || c === 'u' || c === '/' || c === '-';
}

export class Intercepts {
  constructor(sched) {
    this.sched = sched;
  }

  async intercept(s, m, sql) {
    if (!mayIntercept(sql)) return false;
    const sched = this.sched;
    const head = SQL.lead(sql).slice(0, 10).toLowerCase();
    if (head.startsWith('copy')) {
      const copy = SQL.copyFromStdin(sql);
      // In a failed transaction the backend refuses it at once; after an extended-protocol error it
      // discards everything until Sync. Either way it never enters COPY mode: pass it through.
      if (!copy || s.txStatus === 'E' || s.skippingToSync) return false;
      s.takeInbox(1);
      // PGlite can only take a COPY FROM STDIN whole (query, data and CopyDone in one call), so the
      // front end answers CopyInResponse itself, buffers the data, then runs it all at once.
      s.copy = new CopyBuffer(m.buf, sched.opts.maxCopyBytes + 1);
      s.send(P.copyInResponse(copy.binary ? 1 : 0, 0));
      return true;
    }
    if (!head.startsWith('dealloc') && !head.startsWith('discard') && !head.startsWith('unlisten')) return false;
    const dealloc = SQL.deallocate(sql);
    if (dealloc) return sched.statements.deallocate(s, m, dealloc);
    if (SQL.isDiscardAll(sql) && s.txStatus === 'I') {
      s.takeInbox(1);
      await this.discardAll(s);
      return true;
    }
    const unlisten = SQL.unlistenChannel(sql);
    if (unlisten && s.txStatus !== 'E') {
      // The backend keeps listening (others may listen to the same channel); this client stops hearing it.
      s.takeInbox(1);
      sched.notify.unlisten(s, unlisten);
      s.send(Buffer.concat([P.commandComplete('UNLISTEN'), P.readyForQuery(s.txStatus)]));
      return true;
    }
    return false;
  }

  /** Collect a COPY FROM STDIN until CopyDone/CopyFail, then run it in one batch. */
  async stepCopy(s) {
    const sched = this.sched;
    let n = 0;
    let done = false;
    for (const m of s.inbox) {
      n += 1;
      if (m.type === FLUSH || m.type === SYNC) continue; // ignored during COPY, as PostgreSQL does
      if (m.type === 0x58 /* Terminate */) {
        // the client leaves in the middle of its COPY: PGlite would exit on a Terminate (crashing the
        // engine under everyone); the COPY never reached it, so there is nothing to undo
        s.takeInbox(n);
        s.copy = null;
        s.socket.end();
        s.close('Terminate during COPY FROM STDIN');
        return true;
      }
      s.copy.append(m.buf);
      if (m.type !== COPY_DATA) {
        done = true; // CopyDone, CopyFail, or anything else (which makes the backend fail the COPY)
        break;
      }
    }
    s.takeInbox(n);
    if (s.copy.bytes > sched.opts.maxCopyBytes) {
      s.copy = null;
      s.fatal('54000', `COPY FROM STDIN data exceeds ${sched.opts.maxCopyBytes} bytes`, 'hive-bridge buffers a COPY in memory before PGlite runs it; split the load into smaller COPYs.');
      return true;
    }
    if (!done) return n > 0;
    const collected = s.copy.take();
    s.copy = null;
    const ctx = sched.newContext({ boundaries: 1, unnamed: 'gone' });
    const data = await convertCopy(sched, s, collected, ctx); // binary when exact (copyconvert.js)
    if (data) await sched.runBatch(s, [data], ctx, { stripCopyIn: true });
    return true;
  }

  async discardAll(s) {
    const sched = this.sched;
    const gen = sched.backend.generation;
    const live = [...s.statements.values()].filter((st) => st.gen === gen);
    s.statements.clear();
    s.unnamedParse = null;
    sched.notify.unlistenAll(s);
    await sched.execInternal(s, Buffer.concat([...live.map((st) => P.closeStatement(st.bname)), P.sync(), P.query('RESET ALL')]));
    sched.replay.forget();
    s.settings = new Map(s.startupSettings);
    await sched.replay.switchTo(s);
    s.send(Buffer.concat([P.commandComplete('DISCARD ALL'), P.readyForQuery('I')]));
  }

  /**
   * A command that changes the whole backend session reached the backend (through the extended protocol,
   * or inside a multi-statement query such as asyncpg's pool reset "...; UNLISTEN *; RESET ALL;").
   * Restore what the other clients lost: their prepared statements are prepared again on demand, their
   * channels listened to again; the issuing client gets what the command means for its own session.
   */
  async repairSession(s, ctx) {
    const sched = this.sched;
    if (ctx.wiped === 'discard' || ctx.wiped === 'deallocate') {
      sched.statements.forgetAll();
      s.statements.clear();
      s.unnamedParse = null;
      sched.unnamedOwner = null;
    }
    if (ctx.wiped === 'discard') {
      sched.notify.unlistenAll(s);
      sched.replay.forget();
      s.settings = new Map(s.startupSettings);
      s.settingsDirty = false;
      await sched.replay.switchTo(s);
    } else {
      for (const ch of ctx.unlistens) sched.notify.unlisten(s, ch);
    }
    const relisten = sched.notify.relistenQuery();
    if (relisten && s.txStatus !== 'E') await sched.execInternal(s, relisten);
  }
}
