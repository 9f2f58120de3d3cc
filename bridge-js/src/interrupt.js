// Stopping a running query and restarting the backend. PGlite cannot interrupt a query, so a cancel or a
// statement_timeout terminates the worker thread and opens the data dir again (Backend.restart). The client
// whose query was stopped gets its error; everyone else goes on with a fresh backend session, whose lost
// state (settings, prepared statements, LISTENs) the front end replays on demand.
import * as P from './protocol.js';
import { BackendError } from './backend.js';

export class Interrupted extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
}

export class Interrupts {
  constructor(sched) {
    this.sched = sched;
    this.interruption = null; // { session, code, message } while a running query is being stopped
  }

  /** The error an exec of `s` failed with: an Interrupted one if we stopped it on purpose. */
  explain(s, err) {
    const intr = this.interruption;
    if (intr && intr.session === s) {
      this.interruption = null;
      return new Interrupted(intr.message, intr.code);
    }
    return err;
  }

  /** Stop the holder's running query: PGlite cannot be interrupted, so its worker is restarted. */
  interrupt(s, code, message) {
    const sched = this.sched;
    if (sched.holder !== s || !sched.running || this.interruption) return;
    if (sched.server.opts.memory) {
      sched.log.warn(`client ${s.id}: cannot stop a running query on an in-memory database (a restart would lose the data)`);
      return;
    }
    sched.log.info(`client ${s.id}: ${message}`);
    this.interruption = { session: s, code, message };
    sched.restarting = sched.backend.restart(`stopping a query of ${s.describe()} (${message})`);
  }

  /** Answer the interrupted batch: one error and ReadyForQuery per Sync/Query it contained. */
  async afterInterrupt(s, before, ctx, err) {
    const sched = this.sched;
    await this.awaitRestart();
    const parts = [];
    const e = P.errorResponse({ code: err.code, message: err.message });
    if (before === 'T' || before === 'E') {
      await this.recreateAborted(s);
    } else s.txStatus = 'I';
    for (let i = 0; i < ctx.boundaries; i++) parts.push(e, P.readyForQuery(s.txStatus));
    // Messages after the last Sync (or a batch with none yet) get the error alone; as PostgreSQL does after
    // an error, the front end then discards the client's messages up to its Sync, which gets the one
    // ReadyForQuery (the new backend knows nothing of that batch).
    const open = ctx.open || !ctx.boundaries;
    if (open) parts.push(e);
    s.send(Buffer.concat(parts));
    s.atSyncBoundary = !open;
    s.discardToSync = open;
    s.skippingToSync = false;
  }

  /**
   * A query of our own (settings replay, a parking check) was stopped by a cancel that arrived for the
   * client meanwhile. Its messages have not run: they stay queued and run on the new backend. An open
   * transaction is lost with the old backend, so it is recreated as aborted (25P02 until ROLLBACK).
   */
  async afterInternalInterrupt(s) {
    await this.awaitRestart();
    if (!s.closed && !s.parked && s.txStatus !== 'I') await this.recreateAborted(s);
  }

  /**
   * PostgreSQL leaves a transaction whose statement was stopped aborted, not gone: recreate that on the
   * new backend so the client's next statements fail (25P02) until it rolls back, as they would there.
   */
  async recreateAborted(s) {
    await this.sched.replay.switchTo(s);
    await this.sched.execInternal(s, P.query('BEGIN; SELECT 1/0'));
    s.txStatus = 'E';
  }

  async awaitRestart() {
    const sched = this.sched;
    const r = sched.restarting;
    if (!r) return;
    try {
      await r;
    } catch (err) {
      sched.server.die(`the database engine could not be reopened: ${err.message}`);
      throw err;
    } finally {
      if (sched.restarting === r) sched.restarting = null;
    }
    await this.afterRestart();
  }

  /** The backend is a new session: nothing of the old one is applied, and it must listen again. */
  async afterRestart() {
    const sched = this.sched;
    sched.replay.forget();
    sched.unnamedOwner = null;
    const relisten = sched.notify.relistenQuery();
    if (relisten) await sched.backend.exec(relisten);
  }

  async turnFailed(s, err) {
    const sched = this.sched;
    if (err instanceof P.ProtocolError) {
      sched.log.info(`client ${s.id}: protocol violation: ${err.message}`);
      s.fatal(err.code, err.message);
      return;
    }
    if (sched.draining) {
      // shutdown stopped the engine under this request: it was not committed
      s.fatal('57P01', 'terminating connection due to administrator command');
      return;
    }
    if (!(err instanceof BackendError)) {
      sched.log.error(`client ${s.id}: internal error: ${(err && err.stack) || err}`);
      s.fatal('XX000', `internal error in hive-bridge: ${err.message}`);
      return;
    }
    // PGlite itself failed: this client's work is lost; everyone else goes on with a fresh backend.
    sched.log.error(`client ${s.id}: the database engine failed: ${err.message.split('\n')[0]}`);
    s.fatal('XX000', `the database engine failed while running this connection's request: ${err.message.split('\n')[0]}`,
      'The engine was restarted; any open transaction of this connection was rolled back.');
    if (!sched.restarting) sched.restarting = sched.backend.restart('the engine failed');
    await this.awaitRestart().catch(() => {});
  }

  recover(why) {
    const sched = this.sched;
    if (sched.restarting) return;
    sched.log.error(why);
    sched.restarting = sched.backend.restart(why);
    this.awaitRestart()
      .catch(() => {})
      .finally(() => sched.pump());
  }
}
