// Settings replay: every client keeps its own session settings on the one backend session.
//
// `applied` is what the backend session has beyond its baseline right now. When a client gets the backend
// after someone else, switchTo() resets the other client's settings and applies this one's (one Query).
// A client's SET/RESET, a statement of it that calls set_config(), and any change of a reported parameter
// (ParameterStatus, e.g. from inside a function) make the front end read its settings back from
// pg_settings after it ran (snapshot()), so they are replayed exactly; read inside a transaction, they are
// read again once it ended (SET LOCAL and a rollback undo settings). When a client leaves in a transaction
// that changed settings, the rollback makes the backend's settings unknown: the next switchTo() starts
// with RESET ALL. Settings changed in ways none of these see are not tracked (README).
//
// Startup settings (startup packet parameters and `options=-c ...`) are settings like any other. A new
// connection is answered by the front end without waiting for the backend: the ParameterStatus values for
// a set of startup settings are cached once the backend has reported them; a set never seen before is
// answered from the baseline at once when the backend is busy, applied on the client's first turn, and any
// value the backend reports differently then (e.g. DateStyle canonicalised) follows as ParameterStatus.
import * as P from './protocol.js';
import * as SQL from './sql.js';
import { ERROR, DATA_ROW } from './msgtypes.js';

const SETTINGS_SNAPSHOT = "SELECT name, setting FROM pg_settings WHERE source = 'session' AND name NOT LIKE 'transaction\\_%'";

function cacheKey(settings) {
  return JSON.stringify([...settings].sort());
}

export class SettingsReplay {
  constructor(sched) {
    this.sched = sched;
    this.applied = new Map(); // settings currently applied on the backend beyond its baseline
    this.unknown = false; // the backend may have settings `applied` does not know: RESET ALL first
    this.startupReports = new Map(); // startup settings (JSON) -> reported parameters
  }

  /** The backend session lost everything (restart, DISCARD ALL): nothing is applied. */
  forget() {
    this.applied = new Map();
    this.unknown = false;
  }

  /** Make the backend's session settings this client's: reset others' changes, apply its own. */
  async switchTo(s) {
    const resets = [];
    const sets = [];
    const unknown = this.unknown;
    for (const k of this.applied.keys()) if (!s.settings.has(k)) resets.push(k);
    for (const [k, v] of s.settings) if (unknown || this.applied.get(k) !== v) sets.push([k, v]);
    if (!resets.length && !sets.length && !unknown) return null;
    const stmts = unknown ? ['RESET ALL'] : resets.map((k) => `RESET ${SQL.quoteIdent(k)}`);
    if (sets.length) stmts.push(`SELECT ${sets.map(([k, v]) => `set_config(${SQL.quoteLiteral(k)}, ${SQL.quoteLiteral(v)}, false)`).join(', ')}`);
    const out = await this.sched.execInternal(s, P.query(stmts.join('; ')));
    const err = P.parseMessages(out).find((msg) => msg.type === ERROR);
    if (err) {
      // nothing was applied (the statements ran as one implicit transaction); the resets did not run either
      return err.fields;
    }
    this.applied = new Map(s.settings);
    this.unknown = false;
    return null;
  }

  /** Read back what the client changed with SET/RESET, so it can be re-applied on its next turn. */
  async snapshot(s) {
    const out = await this.sched.execInternal(s, P.query(SETTINGS_SNAPSHOT));
    const settings = new Map();
    for (const msg of P.parseMessages(out)) if (msg.type === DATA_ROW) settings.set(msg.values[0], msg.values[1]);
    s.settings = settings;
    s.settingsDirty = false;
    // inside a transaction this includes SET LOCAL and what a ROLLBACK undoes: read again once it ended
    s.settingsInTx = s.txStatus !== 'I';
    this.applied = new Map(settings);
    this.unknown = false;
  }

  /** Cached ParameterStatus values for a set of startup settings, if already known. */
  startupReport(settings) {
    if (!settings.size) return new Map(this.sched.backend.baseline);
    return this.startupReports.get(cacheKey(settings)) ?? null;
  }

  /** The best answer without the backend: the baseline, with the client's own values for reported names. */
  guessReport(settings) {
    const reported = new Map(this.sched.backend.baseline);
    const byLower = new Map([...reported.keys()].map((k) => [k.toLowerCase(), k]));
    for (const [k, v] of settings) {
      const name = byLower.get(k.toLowerCase());
      if (name) reported.set(name, v);
    }
    return reported;
  }

  async reportFor(s) {
    const names = [...this.sched.backend.baseline.keys()];
    const out = await this.sched.execInternal(s, P.query(`SELECT name, current_setting(name) FROM unnest(ARRAY[${names.map(SQL.quoteLiteral).join(',')}]) AS name`));
    const reported = new Map(this.sched.backend.baseline);
    for (const msg of P.parseMessages(out)) if (msg.type === DATA_ROW) reported.set(msg.values[0], msg.values[1]);
    this.startupReports.set(cacheKey(s.startupSettings), reported);
    return reported;
  }

  /** Startup while the backend is free: apply, read back, then answer the client. */
  async runStartup(s) {
    s.startupPending = false;
    const err = await this.switchTo(s);
    if (err) {
      s.fatal(err.C === '42704' || err.C === '22023' ? err.C : '22023', err.M);
      return;
    }
    s.completeStartup(await this.reportFor(s));
  }

  /**
   * First turn of a client that was answered before its startup settings reached the backend: an invalid
   * setting ends it now (as PostgreSQL would have at startup); reported values that differ are sent.
   * `err` is what switchTo() returned at the start of the turn.
   */
  async verifyStartup(s, err) {
    s.startupUnverified = false;
    if (err) {
      s.fatal(err.C === '42704' || err.C === '22023' ? err.C : '22023', err.M);
      return;
    }
    const reported = await this.reportFor(s);
    const parts = [];
    for (const [k, v] of reported) if (s.reported.get(k) !== v) parts.push(P.parameterStatus(k, v));
    s.reported = reported;
    if (parts.length) s.send(Buffer.concat(parts));
  }
}
