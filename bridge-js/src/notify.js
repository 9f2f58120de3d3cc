// LISTEN/NOTIFY routing. The one backend session listens for everyone: a channel stays LISTENed on the
// backend while any client listens to it, and each notification the backend reports is delivered to the
// clients that listen on its channel, with the sending client's pid (as PostgreSQL would).
import * as P from './protocol.js';
import * as SQL from './sql.js';

export class NotifyRouter {
  constructor(sched) {
    this.sched = sched;
    this.listeners = new Map(); // channel -> Set<Session>
  }

  listen(s, channel) {
    let set = this.listeners.get(channel);
    if (!set) this.listeners.set(channel, (set = new Set()));
    set.add(s);
    s.listening.add(channel);
  }

  unlisten(s, channel) {
    if (channel === '*') {
      this.unlistenAll(s);
      return;
    }
    this.listeners.get(channel)?.delete(s);
    s.listening.delete(channel);
  }

  unlistenAll(s) {
    for (const ch of s.listening) this.listeners.get(ch)?.delete(s);
    s.listening.clear();
  }

  /** Deliver a notification raised by `from` to every other client listening on its channel. */
  route(from, n) {
    const set = this.listeners.get(n.channel);
    if (!set) return;
    let msg = null;
    for (const t of set) {
      if (t === from || t.closed) continue;
      msg ??= P.notification(from.pid, n.channel, n.payload);
      t.send(msg);
    }
  }

  /** Channels some client listens to (the backend must listen to these). */
  channels() {
    return [...this.listeners].filter(([, set]) => set.size).map(([ch]) => ch);
  }

  /** The Query that makes a fresh (or wiped) backend session listen again, or null. */
  relistenQuery() {
    const channels = this.channels();
    return channels.length ? P.query(channels.map((c) => `LISTEN ${SQL.quoteIdent(c)}`).join('; ')) : null;
  }
}
