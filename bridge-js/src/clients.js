// Clients for operators: who is connected, what each is doing, and a way to end one.
//
// PGlite is one backend session, so pg_backend_pid(), pg_stat_activity and pg_terminate_backend() all see
// that one session. Each client's identity is instead the process id the front end gave it in its
// BackendKeyData (the pid libpq's PQbackendPID(), psycopg's `conn.info.backend_pid` and asyncpg's
// `conn.get_server_pid()` report, and the one a CancelRequest names). The admin endpoint lists clients by
// that pid (GET /clients) and terminates one (POST /terminate {"pid": N}), as PostgreSQL's
// pg_terminate_backend() would: the client gets FATAL 57P01 and its connection is closed; its open
// transaction is rolled back (a running statement is stopped first, which restarts the PGlite worker as a
// cancel does); every other client goes on.

import { reply, authorized, postJson, RouteError } from './httpjson.js';
export const TERMINATE_MESSAGE = 'terminating connection due to administrator command';

export function listClients(server) {
  const now = Date.now();
  const out = [];
  for (const s of server.sessions.values()) if (!s.closed) out.push(s.info(now)); // session.js
  out.sort((a, b) => a.pid - b.pid);
  return out;
}

/**
 * End one client as pg_terminate_backend() does. Returns false if no such client is connected.
 * The FATAL goes out first; closing the session makes the scheduler roll back what it left on the
 * backend (its turn notices the close, or the janitor runs a turn for it).
 */
export function terminateClient(server, pid, log) {
  const s = server.sessions.get(pid);
  if (!s || s.closed) return false;
  const sched = server.scheduler;
  log.info(`client ${s.id}: ${s.describe()} terminated by the administrator (hive-bridge terminate)`);
  const running = sched && sched.holder === s && sched.running;
  s.fatal('57P01', TERMINATE_MESSAGE);
  // A statement of its still inside PGlite cannot be interrupted otherwise: restart the worker, as a
  // cancel does, so what it was doing is rolled back instead of finishing after its client is gone.
  if (running) sched.interrupts.interrupt(s, '57P01', TERMINATE_MESSAGE);
  else if (s.inBatch) sched.batching.cancel(s);
  return true;
}

/**
 * GET /clients and POST /terminate {"pid": N} of the admin endpoint. Both need the server password as a
 * bearer token (client addresses and statements are not for everyone on the machine). Returns false for
 * any other request.
 */
export function clientsRoute(server, req, res, url) {
  const isList = url === '/clients';
  if (!isList && url !== '/terminate') return false;
  if (!isList && req.method !== 'POST') {
    reply(res, 405, { error: 'use POST /terminate {"pid": N}' });
    return true;
  }
  if (isList) {
    if (!authorized(server, req, res, url)) return true;
    if (req.method !== 'GET') reply(res, 405, { error: 'use GET /clients' });
    else reply(res, 200, { clients: listClients(server) });
    return true;
  }
  postJson(server, req, res, url, (body) => {
    const pid = body.pid;
    if (!Number.isInteger(pid)) throw new RouteError(400, 'send JSON {"pid": N} with the client pid from GET /clients');
    if (!server.scheduler || !terminateClient(server, pid, server.log)) throw new RouteError(404, `no client with pid ${pid} is connected`, { pid });
    return { terminated: pid };
  }, 4096);
  return true;
}
