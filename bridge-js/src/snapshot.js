// POST /snapshot: a consistent copy of the live data dir, for a logical dump taken outside the server.
//
// Between client turns (no transaction open, nothing writing) a CHECKPOINT runs and the directory is
// copied with cp -a; clients are held only for that. The copy is then opened by a separate PGlite instance
// (dump.js) and dumped at leisure, so the serving instance never runs pg_dump.
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { execFile } from 'node:child_process';
import { query, parseMessages } from './protocol.js';
import { postJson, pathOf } from './httpjson.js';

/** Copy the data dir to `target` (absolute, not existing, its parent existing, outside the data dir). */
export async function snapshot(server, target) {
  const dir = server.opts.dataDir;
  if (!dir) throw new Error('an in-memory database has no data dir to snapshot');
  if (!path.isAbsolute(target)) throw new Error(`the snapshot path must be absolute, got ${target}`);
  const dest = path.resolve(target);
  if (!fs.existsSync(path.dirname(dest))) throw new Error(`directory ${path.dirname(dest)} does not exist`);
  if (dest === dir || dest.startsWith(`${dir}${path.sep}`)) throw new Error('the snapshot cannot be inside the data dir');
  if (fs.existsSync(dest)) throw new Error(`${dest} already exists (a snapshot never overwrites anything)`);
  let held;
  try {
    held = await server.scheduler.exclusive('snapshot', async (job) => {
      const t0 = Date.now(); // clients wait from here: the turn is ours
      const out = parseMessages(await server.scheduler.exec(job, query('CHECKPOINT')));
      const err = out.find((m) => m.type === 0x45);
      if (err) throw new Error(`CHECKPOINT failed before the snapshot: ${err.fields.M}`);
      // a reflink copy is instant where the file system can share blocks (btrfs, XFS); else a plain copy
      const reflink = process.platform === 'linux' ? ['--reflink=auto'] : [];
      await promisify(execFile)('cp', ['-a', ...reflink, dir, dest]);
      return Date.now() - t0;
    });
  } catch (err) {
    fs.rmSync(dest, { recursive: true, force: true });
    throw err;
  }
  fs.rmSync(path.join(dest, 'postmaster.pid'), { force: true });
  server.log.info(`snapshot of ${dir} copied to ${dest} for a dump (clients held ${held} ms)`);
  return { path: dest, clients_held_ms: held, pglite_version: server.info.pglite_version, extensions: server.opts.extensions };
}

/** The admin route: JSON {"path": "/abs/dir"}; needs "Authorization: Bearer <password>" when one is set. */
export function snapshotRoute(server, req, res) {
  postJson(server, req, res, '/snapshot', (body) => snapshot(server, pathOf(body, '/where/snapshot-dir')));
}
