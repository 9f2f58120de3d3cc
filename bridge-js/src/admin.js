// Loopback-only HTTP admin endpoint: /health, /stats (JSON), /metrics (Prometheus text). No secrets.
import http from 'node:http';
import { snapshotRoute } from './snapshot.js';
import { postJson, pathOf } from './httpjson.js';
import { clientsRoute } from './clients.js';

/**
 * What the backend is doing, answered by the main thread without a backend turn (scheduler.activity()).
 * backend: idle | running (a statement is inside PGlite) | holding (a client owns the backend between
 * statements, e.g. in a transaction) | restarting (the engine reopens after a cancel, timeout or failure).
 */
export function activity(server) {
  const sched = server.scheduler;
  if (!sched) return { backend: server.state === 'ready' ? 'idle' : 'starting', running_ms: null, held_ms: null, holder: null, job: null, waiting: 0, parked: 0 };
  return sched.activity();
}

export function snapshot(server) {
  const mem = process.memoryUsage();
  const sched = server.scheduler;
  let queued = 0;
  for (const s of server.sessions.values()) queued += s.inbox.length;
  return {
    pid: process.pid,
    state: server.state,
    uptime_s: Math.round((Date.now() - server.startedAt) / 100) / 10,
    connections: server.sessions.size,
    connections_total: server.stats.connections,
    waiting: sched ? sched.waitingClients() : 0, // clients, not maintenance jobs
    holder: sched && sched.holder && !sched.holder.isJob ? sched.holder.pid : null, // a client; a job: activity.job
    queued_messages: queued,
    messages: server.stats.messages,
    queries_served: server.stats.queries,
    backend_restarts: server.backend ? server.backend.restarts : 0,
    backend_generation: server.backend ? server.backend.generation : 0,
    channel_buffer_bytes: server.backend?.channel?.bufferBytes ?? 0,
    channel_shrinks: server.backend?.channel?.swaps ?? 0,
    rss_bytes: mem.rss,
    heap_used_bytes: mem.heapUsed,
    pglite_version: server.info?.pglite_version ?? null,
    postgres_version: server.info?.postgres_version ?? null,
    data_dir: server.opts.dataDir ?? 'memory://',
    activity: activity(server),
    maintenance: server.maintenance ? server.maintenance.stats : null,
  };
}

function metrics(s) {
  const lines = [];
  const add = (name, type, help, value) => {
    lines.push(`# HELP hive_bridge_${name} ${help}`, `# TYPE hive_bridge_${name} ${type}`, `hive_bridge_${name} ${value}`);
  };
  add('up', 'gauge', '1 when the server is ready.', s.state === 'ready' ? 1 : 0);
  add('uptime_seconds', 'gauge', 'Seconds since the server started.', s.uptime_s);
  add('connections', 'gauge', 'Open client connections.', s.connections);
  add('connections_total', 'counter', 'Client connections accepted.', s.connections_total);
  add('waiting_clients', 'gauge', 'Clients waiting for the backend.', s.waiting);
  add('queued_messages', 'gauge', 'Protocol messages received and not yet run.', s.queued_messages);
  add('queries_total', 'counter', 'Statements completed by the backend.', s.queries_served);
  add('backend_restarts_total', 'counter', 'Times the PGlite backend was restarted (cancel, timeout, failure).', s.backend_restarts);
  add('backend_busy_seconds', 'gauge', 'How long the backend has been running the current statement (0 when idle).', (s.activity.running_ms ?? 0) / 1000);
  if (s.maintenance) {
    add('vacuums_total', 'counter', 'Tables vacuumed by the built-in autovacuum.', s.maintenance.vacuums);
    add('checkpoints_total', 'counter', 'Periodic checkpoints run.', s.maintenance.checkpoints);
  }
  add('rss_bytes', 'gauge', 'Resident set size of the server process.', s.rss_bytes);
  add('heap_used_bytes', 'gauge', 'V8 heap in use.', s.heap_used_bytes);
  return `${lines.join('\n')}\n`;
}

/** POST /backup {"path": "/abs/file.tar.gz"}; needs "Authorization: Bearer <password>" when one is set. */
function backup(server, req, res) {
  postJson(server, req, res, '/backup', (body) => server.backup(pathOf(body, '/where/backup.tar.gz')));
}

export function startAdmin(server, port) {
  const httpServer = http.createServer((req, res) => {
    const url = (req.url || '/').split('?')[0];
    if (req.method === 'POST' && url === '/backup') {
      backup(server, req, res);
      return;
    }
    if (req.method === 'POST' && url === '/snapshot') {
      snapshotRoute(server, req, res); // a copy for a logical dump (hive-bridge dump/migrate)
      return;
    }
    if (clientsRoute(server, req, res, url)) return; // GET /clients, POST /terminate (clients.js)
    if (req.method !== 'GET') {
      res.writeHead(405).end();
      return;
    }
    if (url === '/health') {
      // Answered by the front end itself (the main thread), never queued behind clients: it says
      // whether Node is alive, and what the backend is doing and for how long. A busy backend is
      // healthy; only a front end that stops answering this is hung.
      const ok = server.state === 'ready';
      res.writeHead(ok ? 200 : 503, { 'content-type': 'application/json' });
      res.end(JSON.stringify({
        status: ok ? 'ok' : server.state,
        uptime_s: Math.round((Date.now() - server.startedAt) / 100) / 10,
        pid: process.pid,
        ...activity(server),
      }));
      return;
    }
    const s = snapshot(server);
    if (url === '/stats') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(s));
    } else if (url === '/metrics') {
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' });
      res.end(metrics(s));
    } else {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: 'not found', endpoints: ['/health', '/stats', '/metrics'] }));
    }
  });
  return new Promise((resolve, reject) => {
    httpServer.once('error', reject);
    httpServer.listen(port, '127.0.0.1', () => {
      httpServer.removeListener('error', reject);
      httpServer.unref();
      resolve(httpServer);
    });
  });
}
