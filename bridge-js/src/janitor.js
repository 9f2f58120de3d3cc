// A client that leaves must leave nothing behind on the shared backend session: its open transaction is
// rolled back and its prepared statements closed, whatever way it left (Terminate, socket drop, FATAL).
import * as P from './protocol.js';

export class Janitor {
  constructor(sched) {
    this.sched = sched;
  }

  /** A closed client's leftovers on the backend: its transaction and its prepared statements. */
  async cleanup(s) {
    const sched = this.sched;
    s.cleanedUp = true;
    sched.notify.unlistenAll(s);
    if (!sched.backend.ready) return;
    const gen = sched.backend.generation;
    const parts = [];
    // a parked transaction has nothing on the backend to roll back
    const rollback = !s.parked && (s.txStatus !== 'I' || !s.atSyncBoundary);
    // ROLLBACK before the Sync: a Sync would commit an unfinished batch's implicit transaction, which
    // PostgreSQL rolls back when its client goes. (While the backend skips to Sync after an error the
    // first ROLLBACK is ignored; the second ends an explicit transaction.)
    if (rollback) parts.push(P.query('ROLLBACK'), P.sync(), P.query('ROLLBACK'));
    for (const st of s.statements.values()) if (st.gen === gen) parts.push(P.closeStatement(st.bname));
    if (parts.length) {
      parts.push(P.sync());
      await sched.exec(s, Buffer.concat(parts));
      if (rollback || sched.unnamedOwner === s) sched.unnamedOwner = null; // a Query drops the unnamed statement
      // the rollback undid settings changed in that transaction: what the backend has is no longer known
      if (rollback && (s.settingsDirty || s.settingsInTx)) sched.replay.unknown = true;
    }
  }

  /** A session closed: clean up now, or in a turn if it left state on the backend. */
  closed(s) {
    const sched = this.sched;
    if (sched.holder === s) return; // its turn notices and cleans up
    const gen = sched.backend.generation;
    const hasState = [...s.statements.values()].some((st) => st.gen === gen);
    if (s.queued) return; // its turn comes and cleans up
    if (hasState) sched.want(s);
    else {
      s.cleanedUp = true;
      sched.notify.unlistenAll(s);
    }
  }
}
