// Parking: a transaction that is idle and has not written does not hold the backend while others wait.
//
// PGlite is one backend session, so a client inside a transaction holds it until COMMIT/ROLLBACK. When such
// a client is idle and someone else is waiting, its transaction is *parked* if rolling it back loses
// nothing the client could observe under READ COMMITTED (where every statement takes a new snapshot anyway):
// - READ COMMITTED isolation (REPEATABLE READ / SERIALIZABLE keep one snapshot: never parked);
// - nothing written: pg_current_xact_id_if_assigned() is NULL (this also covers SELECT FOR UPDATE/SHARE,
//   nextval(), temp tables: they all assign a transaction id);
// - no locks beyond AccessShareLock/virtualxid in pg_locks (LOCK TABLE, advisory transaction locks);
// - no open cursor or named portal (pg_cursors; a suspended *unnamed* portal, as asyncpg's fetchval()
//   leaves one with its row limit, is not kept: drivers never resume it after Sync);
// - no savepoint, no SET/RESET/set_config inside it (a ROLLBACK would undo them), no LISTEN/UNLISTEN/NOTIFY
//   (they act at COMMIT), not aborted.
// The front end rolls the backend transaction back; the client still sees status 'T'. Its next message first
// opens BEGIN again with the same options (READ ONLY, DEFERRABLE), then runs; a write then makes it a real
// transaction that holds the backend until it ends, as before. A COMMIT or ROLLBACK of a parked transaction
// that never resumed is answered here without the backend. With nobody waiting, nothing is parked.
import * as P from './protocol.js';
import * as SQL from './sql.js';
import { QUERY, DATA_ROW, ERROR, READY } from './msgtypes.js';

const END_RE = /^(commit|end|rollback|abort)(?:\s+(?:work|transaction))?\s*;?\s*$/i;

function checkQuery(appliedNames) {
  const names = appliedNames.map((n) => SQL.quoteLiteral(n.toLowerCase())).join(',');
  return [
    'SAVEPOINT __hb_park; SELECT CASE',
    " WHEN current_setting('transaction_isolation') <> 'read committed' THEN 'its isolation level is ' || current_setting('transaction_isolation')",
    " WHEN pg_current_xact_id_if_assigned() IS NOT NULL THEN 'it has written'",
    " WHEN EXISTS (SELECT FROM pg_locks WHERE pid = pg_backend_pid() AND locktype <> 'virtualxid' AND NOT (locktype = 'relation' AND mode = 'AccessShareLock')) THEN 'it holds locks'",
    " WHEN EXISTS (SELECT FROM pg_cursors WHERE name <> '') THEN 'it has an open cursor'",
    ` WHEN EXISTS (SELECT FROM pg_settings WHERE source = 'session' AND name NOT LIKE 'transaction\\_%' AND lower(name) <> ALL (ARRAY[${names}]::text[])) THEN 'it changed a setting'`,
    " ELSE '' END, current_setting('transaction_read_only'), current_setting('transaction_deferrable'); RELEASE __hb_park",
  ].join('');
}

export class Parking {
  constructor(sched) {
    this.sched = sched;
    this.stats = { parked: 0, resumed: 0, ended: 0, refused: 0 };
  }

  /** Why the front end alone knows this transaction cannot be parked, or null. */
  frontReason(s) {
    if (s.txStatus === 'E') return 'its transaction failed';
    if (s.txStatus !== 'T') return 'it is not in a transaction';
    if (!s.atSyncBoundary || s.copy || s.inbox.length || s.skippingToSync) return 'it is in the middle of a request';
    return s.txTaint;
  }

  /**
   * Called for the holder when it is idle inside a transaction and someone waits. Parks it if it can:
   * returns true (the caller ends the turn), or false with s.parkRefused saying why not.
   */
  async tryPark(s) {
    const sched = this.sched;
    if (sched.opts.parking === false || s.parkRefused) return false;
    const front = this.frontReason(s);
    if (front) {
      this.refuse(s, front);
      return false;
    }
    const out = await sched.execInternal(s, P.query(checkQuery([...sched.replay.applied.keys()])));
    let reason = null;
    let readOnly = false;
    let deferrable = false;
    for (const msg of P.parseMessages(out)) {
      if (msg.type === DATA_ROW) {
        reason = msg.values[0];
        readOnly = msg.values[1] === 'on';
        deferrable = msg.values[2] === 'on';
      } else if (msg.type === ERROR && reason === null) reason = `the check failed: ${msg.fields.M}`;
    }
    if (reason === null || reason.startsWith('the check failed')) {
      // the client's transaction must come out of our check as it went in
      await sched.execInternal(s, P.query('ROLLBACK TO SAVEPOINT __hb_park; RELEASE __hb_park'));
    }
    if (reason !== '') {
      this.refuse(s, reason ?? 'the check gave no answer');
      return false;
    }
    const done = P.parseMessages(await sched.execInternal(s, P.query('ROLLBACK')));
    const z = done.find((msg) => msg.type === READY);
    if (!z || z.status !== 'I') throw new Error('parking: ROLLBACK did not end the transaction');
    s.parked = { readOnly, deferrable, since: Date.now() };
    this.stats.parked += 1;
    sched.log.debug(`client ${s.id}: parked its idle transaction (nothing written; ${sched.queue.length} waiting)`);
    return true;
  }

  refuse(s, reason) {
    s.parkRefused = reason;
    this.stats.refused += 1;
    this.sched.log.debug(`client ${s.id}: idle transaction not parked: ${reason}`);
  }

  /** Open the parked transaction again on the backend before the client's next messages run. */
  async resume(s) {
    const p = s.parked;
    s.parked = null;
    const sql = `BEGIN ISOLATION LEVEL READ COMMITTED ${p.readOnly ? 'READ ONLY' : 'READ WRITE'}${p.deferrable ? ' DEFERRABLE' : ''}`;
    const out = P.parseMessages(await this.sched.execInternal(s, P.query(sql)));
    const err = out.find((msg) => msg.type === ERROR);
    if (err) throw new Error(`parking: could not open the transaction again: ${err.fields.M}`);
    this.stats.resumed += 1;
  }

  /**
   * COMMIT/ROLLBACK (END, ABORT) of a parked transaction that never resumed: answered by the front end,
   * with the command tag PostgreSQL gives and status 'I'. Returns true if nothing else is left to run.
   */
  answer(s) {
    const sched = this.sched;
    if (!s.parked || sched.holder === s || s.queued || !s.inbox.length) return false;
    const m = s.inbox[0];
    if (m.type !== QUERY) return false;
    const end = END_RE.exec(SQL.lead(m.buf.toString('utf8', 5, m.buf.length - 1)));
    if (!end) return false;
    s.takeInbox(1);
    const commit = /^(commit|end)$/i.test(end[1]);
    s.parked = null;
    s.txStatus = 'I';
    s.txTaint = null;
    s.parkRefused = null;
    this.stats.ended += 1;
    s.noteStatement(commit ? 'COMMIT' : 'ROLLBACK');
    s.send(Buffer.concat([P.commandComplete(commit ? 'COMMIT' : 'ROLLBACK'), P.readyForQuery('I')]));
    return s.inbox.length === 0;
  }
}
