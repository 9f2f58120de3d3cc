// One client connection: the startup handshake, authentication, and the client's own view of the
// shared backend (its prepared statement names, its settings, its place in the queue).
//
// A session never talks to the backend itself. It cuts its input into messages, keeps them in `inbox`,
// and asks the scheduler for a turn; the scheduler runs its messages and writes the answers back through
// send(). See scheduler.js for what a turn is.
import { randomInt } from 'node:crypto';
import * as P from './protocol.js';
import { ScramExchange, ScramError } from './scram.js';
import { parseStartupOptions } from './sql.js';
import { refuseEncoding } from './encoding.js';
import { clampStartup } from './memlimits.js';

const AUTH_SASL_INITIAL = 'initial';
const AUTH_SASL_FINAL = 'final';

// Startup-packet keys that are not settings.
const NOT_SETTINGS = new Set(['user', 'database', 'options', 'replication']);

let nextStatementId = 1;

export class Session {
  constructor(server, socket, id, { unix = false } = {}) {
    this.server = server;
    this.scheduler = server.scheduler;
    this.log = server.log;
    this.socket = socket;
    this.id = id;
    this.pid = 10000 + id; // BackendKeyData process id: unique per client, used by CancelRequest
    this.secret = randomInt(0, 2 ** 32);
    this.unix = unix;
    this.reader = new P.FrameReader();
    this.phase = 'startup'; // startup -> auth -> starting -> ready -> closed
    this.params = {};
    this.startupSettings = new Map(); // settings asked for in the startup packet
    this.settings = new Map(); // this client's session settings beyond the server's baseline
    this.settingsDirty = false; // it ran SET/RESET since settings was last read back
    this.reported = null; // ParameterStatus values this client has been told
    this.startupPending = false;
    this.inbox = [];
    this.inboxBytes = 0;
    this.statements = new Map(); // client statement name -> { bname, parse (rewritten Parse message), gen }
    this.unnamedParse = null; // the client's last Parse of the unnamed statement
    this.txStatus = 'I';
    this.atSyncBoundary = true; // no extended-protocol message has been sent since the last ReadyForQuery
    this.skippingToSync = false; // an error left the backend discarding this client's messages until Sync
    this.statementOnly = false; // the unfinished batch holds only Parse/Describe/Close of statements
    this.copy = null; // COPY FROM STDIN being buffered: { parts, bytes }
    this.listening = new Set();
    this.parked = null; // { readOnly, deferrable, since }: its transaction was parked (see parking.js)
    this.parkRefused = null; // why its idle transaction could not be parked (until it runs something)
    this.txTaint = null; // something in the open transaction that a ROLLBACK would undo (see parking.js)
    this.startupUnverified = false; // answered before its startup settings reached the backend
    this.lastStatement = '';
    this.lastCalls = 0; // 1: lastStatement calls pg_notify(), 2: set_config() (noteStatement)
    this.lastStatementAt = 0;
    this.idleWarned = false;
    this.lastGap = null; // ms between its last answer and its next message inside a transaction
    this.graceUntil = 0; // while others wait: when an idle holder is parked (parking.js grace())
    this.closed = false;
    this.cleanedUp = false;
    this.queuedSince = 0;
    this.heldSince = 0;
    this.idleSince = 0;
    this.inputWaiter = null;
    this.timers = new Set();
    this.connectedAt = Date.now();

    if (!unix) socket.setNoDelay(true);
    socket.on('data', (chunk) => this.onData(chunk));
    socket.on('error', (err) => this.log.debug(`client ${this.id}: socket error: ${err.message}`));
    socket.on('close', () => this.close('socket closed'));
    this.startupTimer = this.timer(server.opts.startupTimeoutMs, () =>
      this.fatal('08P01', 'timeout while waiting for the startup packet and authentication'),
    );
  }

  get applicationName() {
    return this.settings.get('application_name') ?? this.startupSettings.get('application_name') ?? '';
  }

  /** The statement it ran last (for operators: who holds the database, doing what). */
  noteStatement(text) {
    // set_config() and pg_notify() inside an open transaction: a ROLLBACK would undo them. A prepared
    // statement runs the same text again and again: the text is looked at once.
    if (text !== this.lastStatement) {
      this.lastStatement = text;
      this.lastCalls = text.length < 65536 && /set_config|pg_notify/i.test(text) ? (/set_config/i.test(text) ? 2 : 1) : 0;
    }
    this.lastStatementAt = Date.now();
    if (this.lastCalls) {
      this.txTaint ??= 'it called set_config() or pg_notify()';
      if (this.lastCalls === 2) this.settingsDirty = true; // read back after it ran (settings.js)
    }
  }

  lastStatementText(max) {
    const t = this.lastStatement.replace(/\s+/g, ' ').trim();
    if (!t) return '(none)';
    return JSON.stringify(t.length > max ? `${t.slice(0, max)}...` : t);
  }

  /** One line of `hive-bridge clients` / the admin endpoint. */
  info(now = Date.now()) {
    const sched = this.scheduler;
    const holding = sched.holder === this;
    const inTx = this.txStatus === 'E' ? 'idle in transaction (aborted)' : 'idle in transaction';
    let state = 'idle';
    if (this.phase !== 'ready') state = 'starting';
    else if (holding) state = sched.running ? 'active' : this.txStatus === 'I' ? 'holding' : inTx;
    else if (this.queued) state = 'waiting';
    else if (this.parked) state = 'idle in transaction (parked)';
    else if (this.txStatus !== 'I') state = inTx;
    const since = holding ? this.heldSince : this.queued ? this.queuedSince : this.parked ? this.parked.since : null;
    const last = this.lastStatement;
    return {
      pid: this.pid,
      application_name: this.applicationName,
      user: this.params.user ?? null,
      address: this.unix ? 'unix' : `${this.socket.remoteAddress}:${this.socket.remotePort}`,
      state,
      tx_status: this.txStatus,
      holding,
      parked: !!this.parked,
      park_refused: this.parkRefused,
      waiting: !!this.queued,
      connected_at: new Date(this.connectedAt).toISOString(),
      connected_ms: now - this.connectedAt,
      since: since ? new Date(since).toISOString() : null,
      since_ms: since ? now - since : null,
      last_statement: last.length > 1000 ? `${last.slice(0, 1000)}...` : last,
      last_statement_ms: this.lastStatementAt ? now - this.lastStatementAt : null,
    };
  }


  describe() {
    const app = this.applicationName;
    return `connection ${this.pid}${app ? ` (application_name "${app}")` : ''}`;
  }

  timer(ms, fn) {
    if (!ms || ms <= 0) return null;
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
    return t;
  }

  clearTimer(t) {
    if (t) {
      clearTimeout(t);
      this.timers.delete(t);
    }
  }

  // ---- output ----------------------------------------------------------------------------------------

  send(buf) {
    if (this.closed) return;
    if (this.held) {
      buf = Buffer.concat([...this.held, buf]);
      this.held = null;
      this.heldBytes = 0;
    }
    if (!buf.length) return;
    if (this.stream) this.stream.after.push(buf); // behind a COPY answer still being written (outflow.js)
    else this.socket.write(buf);
  }

  /**
   * Answers to extended-protocol messages with no Sync or Flush after them yet: PostgreSQL keeps those in
   * its send buffer until the client's Sync/Flush (or 8 kB), so a pipeline gets its replies in one flight.
   * They go out with the next send().
   */
  hold(buf) {
    if (this.closed || !buf.length) return;
    (this.held ??= []).push(buf);
    this.heldBytes = (this.heldBytes ?? 0) + buf.length;
    if (this.heldBytes >= 8192) this.send(Buffer.alloc(0));
  }

  /** Send a FATAL error and end the connection. */
  fatal(code, message, detail) {
    if (this.closed) return;
    this.stream = null; // the rest of a COPY answer still being written is dropped (outflow.js)
    this.send(P.errorResponse({ severity: 'FATAL', code, message, detail }));
    this.socket.end();
    this.close(message);
  }

  // ---- input -----------------------------------------------------------------------------------------

  onData(chunk) {
    if (this.closed) return;
    this.reader.push(chunk);
    let added = false;
    try {
      for (let m = this.reader.next(); m; m = this.reader.next()) {
        if (this.phase === 'ready') {
          P.checkNames(m); // malformed names fail now, not when this client's turn comes
          this.inbox.push(m);
          this.inboxBytes += m.buf.length;
          added = true;
        } else if (this.phase === 'startup') {
          this.onStartupPacket(m);
        } else if (this.phase === 'auth') {
          this.onAuthMessage(m);
        } else if (this.phase === 'starting') {
          this.fatal('08P01', 'unexpected message before the startup handshake completed');
        }
        if (this.closed) return;
      }
    } catch (err) {
      if (err instanceof P.ProtocolError) {
        this.fatal(err.code, err.message);
        return;
      }
      throw err;
    }
    if (added) {
      this.server.stats.messages += 1;
      // A client that is not running may not pile up unbounded input while it waits for its turn.
      if (this.scheduler.holder !== this && this.inboxBytes > this.server.opts.maxQueuedBytes) this.socket.pause();
      this.wake();
      if (this.scheduler.holder !== this) this.scheduler.input(this);
    }
  }

  /** Resolve a turn that waits for this client's next message. */
  wake() {
    const w = this.inputWaiter;
    if (w) {
      this.inputWaiter = null;
      w();
    }
  }

  /** Wait (while holding the backend) until input arrives, the client closes, or ms pass. */
  waitForInput(ms) {
    return new Promise((resolve) => {
      let t = null;
      this.inputWaiter = () => {
        this.clearTimer(t);
        resolve('input');
      };
      t = this.timer(ms, () => {
        this.inputWaiter = null;
        resolve('timeout');
      });
    });
  }

  takeInbox(n) {
    const taken = this.inbox.splice(0, n);
    for (const m of taken) this.inboxBytes -= m.buf.length;
    if (this.socket.isPaused() && this.inboxBytes <= this.server.opts.maxQueuedBytes) this.socket.resume();
    return taken;
  }

  // ---- startup ---------------------------------------------------------------------------------------

  onStartupPacket(m) {
    const pkt = P.parseStartup(m.buf);
    if (pkt.code === P.SSL_REQUEST || pkt.code === P.GSSENC_REQUEST) {
      this.socket.write('N'); // no TLS, no GSSAPI encryption: the client goes on in plain text
      return;
    }
    if (pkt.code === P.CANCEL_REQUEST) {
      this.server.cancel(pkt.pid, pkt.secret);
      this.socket.end();
      this.close('cancel request');
      return;
    }
    const major = pkt.code >> 16;
    const minor = pkt.code & 0xffff;
    if (major !== 3) {
      this.fatal('0A000', `unsupported frontend protocol ${major}.${minor}: server supports 3.0 to 3.0`);
      return;
    }
    this.reader.startup = false;
    // Types and sizes are checked from each header, as PostgreSQL does: a message type it would refuse
    // (with FATAL, which in PGlite's one session would end the backend for everyone) or a length beyond
    // its limit ends this connection at once instead of waiting for a body that may never come.
    this.reader.setLimits(P.authMessageLimit);
    this.params = pkt.params;
    const unsupported = Object.keys(pkt.params).filter((k) => k.startsWith('_pq_.'));
    if (minor > 0 || unsupported.length) this.send(P.negotiateProtocolVersion(0, unsupported));
    const user = pkt.params.user;
    if (!user) {
      this.fatal('28000', 'no PostgreSQL user name specified in startup packet');
      return;
    }
    if (pkt.params.replication && pkt.params.replication !== 'false' && pkt.params.replication !== '0') {
      this.fatal('0A000', 'replication connections are not supported by hive-bridge');
      return;
    }
    const database = pkt.params.database || user;
    if (database !== 'postgres') {
      this.fatal('3D000', `database "${database}" does not exist`, 'hive-bridge serves one database, "postgres".');
      return;
    }
    if (this.server.sessions.size > this.server.opts.maxConnections) {
      this.fatal('53300', 'sorry, too many clients already', `hive-bridge allows ${this.server.opts.maxConnections} connections (--max-connections).`);
      return;
    }
    try {
      for (const [k, v] of Object.entries(pkt.params)) {
        if (!NOT_SETTINGS.has(k) && !k.startsWith('_pq_.')) this.startupSettings.set(k, v);
      }
      if (pkt.params.options) for (const [k, v] of parseStartupOptions(pkt.params.options)) this.startupSettings.set(k, v);
      clampStartup(this.startupSettings, this.log);
    } catch (err) {
      this.fatal('42601', err.message);
      return;
    }
    if (this.server.verifier && !this.unix) {
      this.phase = 'auth';
      this.authStep = AUTH_SASL_INITIAL;
      this.scram = new ScramExchange(this.server.verifier);
      this.send(P.authSASL(['SCRAM-SHA-256']));
      return;
    }
    this.send(P.authOk());
    this.beginSession();
  }

  onAuthMessage(m) {
    if (m.type !== 0x70 /* p */) {
      this.fatal('08P01', `expected SASL response, got message type "${String.fromCharCode(m.type)}"`);
      return;
    }
    const user = this.params.user;
    try {
      if (this.authStep === AUTH_SASL_INITIAL) {
        const [mech, pos] = P.readCString(m.buf, 5);
        if (mech !== 'SCRAM-SHA-256') throw new ScramError(`unsupported SASL mechanism "${mech}"`);
        const len = m.buf.readInt32BE(pos);
        const data = m.buf.toString('utf8', pos + 4, pos + 4 + Math.max(0, len));
        this.send(P.authSASLContinue(this.scram.start(data)));
        this.authStep = AUTH_SASL_FINAL;
      } else {
        const final = this.scram.finish(m.buf.toString('utf8', 5));
        this.send(P.authSASLFinal(final));
        this.send(P.authOk());
        this.scram = null;
        this.beginSession();
      }
    } catch (err) {
      if (!(err instanceof ScramError)) throw err;
      this.log.info(`client ${this.id}: password authentication failed for user "${user}": ${err.message}`);
      this.fatal('28P01', `password authentication failed for user "${user}"`);
    }
  }

  /**
   * Authenticated: say hello without waiting for the backend. Startup settings whose reported values are
   * known (or none) are answered at once; new ones are applied on the backend first if it is free, and
   * otherwise answered from the baseline now and applied on the client's first turn (settings.js).
   */
  beginSession() {
    this.phase = 'starting';
    this.reader.setLimits(P.clientMessageLimit);
    for (const [k, v] of this.startupSettings) {
      const refused = k.toLowerCase() === 'client_encoding' && refuseEncoding(v, { startup: true });
      if (refused) {
        this.fatal(refused.code, refused.message); // one PGlite cannot convert to would crash it (encoding.js)
        return;
      }
    }
    this.settings = new Map(this.startupSettings);
    const known = this.scheduler.startupReport(this.startupSettings);
    if (known) {
      this.completeStartup(known);
      return;
    }
    if (!this.scheduler.idle()) {
      this.startupUnverified = true;
      this.completeStartup(this.scheduler.replay.guessReport(this.startupSettings));
      return;
    }
    this.startupPending = true;
    this.scheduler.want(this);
  }

  /** `reported`: Map of every ParameterStatus value this client starts with. */
  completeStartup(reported) {
    this.clearTimer(this.startupTimer);
    this.reported = reported;
    const parts = [];
    for (const [k, v] of reported) parts.push(P.parameterStatus(k, v));
    parts.push(P.backendKeyData(this.pid, this.secret), P.readyForQuery('I'));
    this.send(Buffer.concat(parts));
    this.phase = 'ready';
    this.log.debug(`client ${this.id}: ready (pid ${this.pid}, user ${this.params.user})`);
  }

  // ---- prepared statement names ---------------------------------------------------------------------

  /** The backend name for a client statement name, creating the mapping if new. */
  statementFor(name) {
    let st = this.statements.get(name);
    if (!st) {
      const bname = `__hb${nextStatementId++}`;
      // one shape for every statement (batch.js caches whether its text can run in a batch: alone/aloneOf)
      st = { bname, bnameBytes: Buffer.from(bname, 'utf8'), parse: null, gen: 0, listen: null, unlistens: null, text: undefined, alone: false, aloneOf: undefined };
      this.statements.set(name, st);
    }
    return st;
  }

  /** Replace backend statement names with this client's names in an error message. */
  clientNames(text) {
    if (!text.includes('__hb')) return text;
    let out = text;
    for (const [name, st] of this.statements) out = out.split(`"${st.bname}"`).join(`"${name}"`);
    return out.split('"__hb_missing"').join('"?"');
  }

  // ---- end -------------------------------------------------------------------------------------------

  close(why) {
    if (this.closed) return;
    this.closed = true;
    this.phase = 'closed';
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    if (!this.socket.destroyed) this.socket.destroy();
    this.log.debug(`client ${this.id}: closed (${why})`);
    this.wake();
    this.server.sessionClosed(this);
  }
}
