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

// One query, cheap checks first (CASE stops at the first that holds). pg_settings is not consulted (it costs
// ~15 SELECT 1s in WASM): SET/RESET are seen in command tags and set_config() in statement texts.
const CHECK = P.query([
  'SELECT CASE',
  " WHEN current_setting('transaction_isolation') <> 'read committed' THEN 'its isolation level is ' || current_setting('transaction_isolation')",
  " WHEN pg_current_xact_id_if_assigned() IS NOT NULL THEN 'it has written'",
  " WHEN EXISTS (SELECT FROM pg_cursors WHERE name <> '') THEN 'it has an open cursor'",
  " WHEN EXISTS (SELECT FROM pg_locks WHERE pid = pg_backend_pid() AND locktype <> 'virtualxid' AND NOT (locktype = 'relation' AND mode = 'AccessShareLock')) THEN 'it holds locks'",
  " ELSE '' END, current_setting('transaction_read_only'), current_setting('transaction_deferrable')",
].join(''));
const ROLLBACK = P.query('ROLLBACK');

// How long a holder that just went idle may keep the backend while others wait, by its last think time
// inside the transaction: a client running statements back to back keeps it (parking it between every two
// statements made a chatty transaction 10x slower); one that thinks longer is parked at once.
const GRACE_MIN_MS = 1;
const GRACE_MAX_MS = 10;
const QUICK_GAP_MS = 5;

export class Parking {
  constructor(sched) {
    this.sched = sched;
    this.stats = { parked: 0, resumed: 0, ended: 0, refused: 0 };
  }

  /** Milliseconds to wait for the holder's next statement before parking it. */
  grace(s) {
    const gap = s.lastGap;
    if (gap === undefined || gap === null) return GRACE_MIN_MS;
    if (gap >= QUICK_GAP_MS) return 0;
    return Math.min(GRACE_MAX_MS, Math.max(GRACE_MIN_MS, 2 * gap));
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
    // the check, and in the same hop (worker-side) the ROLLBACK if the check found nothing
    const { reason, readOnly, deferrable, out } = await this.check(s, ROLLBACK);
    if (reason !== '') {
      this.refuse(s, reason);
      return false;
    }
    const z = out.filter((msg) => msg.type === READY).pop();
    if (!z || z.status !== 'I') throw new Error('parking: ROLLBACK did not end the transaction');
    s.parked = { readOnly, deferrable, since: Date.now() };
    this.stats.parked += 1;
    sched.log.debug(`client ${s.id}: parked its idle transaction (nothing written; ${sched.queue.length} waiting)`);
    return true;
  }

  /** Why this idle transaction could not be parked ('' if it could), without parking it. */
  async whyNot(s) {
    return this.frontReason(s) ?? (await this.check(s, null)).reason;
  }

  /**
   * Run the check (and `then` in the same hop if it finds nothing): { reason, readOnly, deferrable, out },
   * reason '' when the transaction can be parked.
   */
  async check(s, then) {
    const out = P.parseMessages(await this.sched.execInternal(s, CHECK, then));
    const row = out.find((msg) => msg.type === DATA_ROW);
    const err = out.find((msg) => msg.type === ERROR);
    if (err) {
      // cannot happen short of a bug or no memory; the client's transaction is aborted now: say so
      this.sched.log.error(`client ${s.id}: parking check failed: ${err.fields.M}`);
      s.txStatus = 'E';
      return { reason: `the parking check failed: ${err.fields.M}`, out };
    }
    if (!row) return { reason: 'the parking check gave no answer', out };
    return { reason: row.values[0], readOnly: row.values[1] === 'on', deferrable: row.values[2] === 'on', out };
  }

  refuse(s, reason) {
    s.parkRefused = reason;
    this.stats.refused += 1;
    this.sched.log.debug(`client ${s.id}: idle transaction not parked: ${reason}`);
  }

  /**
   * The Query that opens the parked transaction again, with its options; the client is no longer parked.
   * The scheduler sends it in the same hop as the client's next messages and hides its answer.
   */
  resumeQuery(s) {
    const p = s.parked;
    s.parked = null;
    this.stats.resumed += 1;
    return P.query(`BEGIN ISOLATION LEVEL READ COMMITTED ${p.readOnly ? 'READ ONLY' : 'READ WRITE'}${p.deferrable ? ' DEFERRABLE' : ''}`);
  }

  /** Open the parked transaction again, in a hop of its own (before what the front end answers itself). */
  async resume(s) {
    const out = P.parseMessages(await this.sched.execInternal(s, this.resumeQuery(s)));
    const err = out.find((msg) => msg.type === ERROR);
    if (err) throw new Error(`parking: could not open the transaction again: ${err.fields.M}`);
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
