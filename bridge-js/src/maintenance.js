// Background maintenance PostgreSQL's own processes would do, which PGlite (single-user, no checkpointer,
// no autovacuum launcher) does not: periodic CHECKPOINT and autovacuum-like VACUUM (ANALYZE).
// Without CHECKPOINT the WAL grows without bound and every crash recovery replays all of it (measured:
// 400 MB of WAL, 4.7 s to restart); without VACUUM an update-heavy table only grows (measured: 401k dead
// tuples after 3 minutes of updates, the table 1.8x the size PostgreSQL 15 keeps it at).
//
// Everything runs as scheduler jobs (`scheduler.exclusive`), i.e. between client turns, never inside a
// client's transaction, and one small step at a time: one CHECKPOINT, one look at pg_stat_user_tables,
// one table's VACUUM. Clients queue behind a step only for as long as that step takes.
import { query, parseMessages } from './protocol.js';

const ERROR = 0x45;
const DATA_ROW = 0x44;

// autovacuum's rule: a table is vacuumed once n_dead_tup > threshold + scale_factor * reltuples.
const CANDIDATES = (threshold, scale) => `
SELECT format('%I.%I', s.schemaname, s.relname), s.n_dead_tup, greatest(c.reltuples, 0)::bigint
  FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
 WHERE s.n_dead_tup > ${Number(threshold)} + ${Number(scale)} * greatest(c.reltuples, 0)
 ORDER BY s.n_dead_tup DESC
 LIMIT 20`;

function firstError(buf) {
  const err = parseMessages(buf).find((m) => m.type === ERROR);
  return err ? err.fields.M : null;
}

export class Maintenance {
  /**
   * opts: checkpointIntervalMs (0 = off; only for a data dir), vacuumIntervalMs (0 = off),
   * vacuumThreshold, vacuumScaleFactor.
   */
  constructor(server, opts) {
    this.server = server;
    this.log = server.log;
    this.opts = opts;
    this.timers = [];
    this.stats = {
      checkpoints: 0,
      last_checkpoint_at: null,
      vacuum_checks: 0,
      vacuums: 0,
      vacuum_failures: 0,
      last_vacuum: null, // { table, n_dead_tup, reltuples, ms, at }
    };
    this.busy = { checkpoint: false, vacuum: false };
  }

  start() {
    const { checkpointIntervalMs, vacuumIntervalMs } = this.opts;
    if (checkpointIntervalMs > 0 && this.server.opts.dataDir) this.every(checkpointIntervalMs, 'checkpoint', () => this.checkpoint());
    if (vacuumIntervalMs > 0) this.every(vacuumIntervalMs, 'vacuum', () => this.vacuum());
  }

  stop() {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
  }

  /** Run `fn` every `ms` when clients ran anything since its last run, never two at once. */
  every(ms, name, fn) {
    let seen = this.server.stats.messages;
    const t = setInterval(() => {
      if (this.server.state !== 'ready' || this.busy[name]) return;
      if (this.server.stats.messages === seen) return;
      seen = this.server.stats.messages;
      this.busy[name] = true;
      fn()
        .catch((err) => this.log.warn(`${name} failed: ${err.message}`))
        .finally(() => {
          this.busy[name] = false;
        });
    }, ms);
    t.unref();
    this.timers.push(t);
  }

  job(name, sql) {
    const sched = this.server.scheduler;
    return sched.exclusive(name, (job) => sched.exec(job, query(sql)));
  }

  async checkpoint() {
    const err = firstError(await this.job('checkpoint', 'CHECKPOINT'));
    if (err) throw new Error(err);
    this.stats.checkpoints += 1;
    this.stats.last_checkpoint_at = new Date().toISOString();
    this.log.debug('checkpoint done');
  }

  /**
   * One look at the statistics (a job of a few milliseconds), then one job per table over the
   * threshold, so clients get turns between the tables.
   */
  async vacuum() {
    const { vacuumThreshold, vacuumScaleFactor } = this.opts;
    // the backend publishes its table statistics at most once a second (and PGlite has no idle timer
    // to do it later): ask for the next flush, which happens at the end of that tiny transaction
    await this.job('vacuum check', 'SELECT pg_stat_force_next_flush()');
    const out = await this.job('vacuum check', CANDIDATES(vacuumThreshold, vacuumScaleFactor));
    const err = firstError(out);
    if (err) throw new Error(err);
    this.stats.vacuum_checks += 1;
    const tables = parseMessages(out)
      .filter((m) => m.type === DATA_ROW)
      .map((m) => ({ table: m.values[0], dead: Number(m.values[1]), reltuples: Number(m.values[2]) }));
    for (const t of tables) {
      if (this.server.state !== 'ready') return;
      const t0 = Date.now();
      const failed = firstError(await this.job(`vacuum ${t.table}`, `VACUUM (ANALYZE) ${t.table}`));
      const ms = Date.now() - t0;
      if (failed) {
        // a table dropped meanwhile, or a client left a setting that forbids it: try again next time
        this.stats.vacuum_failures += 1;
        this.log.debug(`vacuum ${t.table} failed: ${failed}`);
        continue;
      }
      this.stats.vacuums += 1;
      this.stats.last_vacuum = { table: t.table, n_dead_tup: t.dead, reltuples: t.reltuples, ms, at: new Date().toISOString() };
      this.log.debug(`vacuum (analyze) ${t.table}: ${t.dead} dead tuples > ${vacuumThreshold} + ${vacuumScaleFactor} * ${t.reltuples} rows; ${ms} ms`);
    }
  }
}
