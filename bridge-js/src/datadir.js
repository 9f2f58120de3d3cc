// The data directory: checks before PGlite opens it, the lock that keeps a second server out, and what a
// crash leaves behind.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

export class StartError extends Error {
  constructor(code, message, hint) {
    super(message);
    this.code = code;
    this.hint = hint;
  }
}

/**
 * The parent holds an exclusive flock on the lock file and passes the descriptor down; a flock belongs to
 * the open file description, so it stays held while this process lives. Check that it really is held.
 */
export function verifyLock(fd) {
  let info;
  try {
    info = fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
  } catch {
    if (process.platform !== 'linux') return; // no fdinfo to check: trust the parent
    throw new StartError('lock_required', `--lock-fd ${fd} is not an open file descriptor`, 'start the server through hive-bridge, which takes the data-dir lock');
  }
  if (!/^lock:.*\bFLOCK\s+ADVISORY\s+WRITE\b/m.test(info)) {
    throw new StartError('lock_required', `file descriptor ${fd} does not hold an exclusive lock`, 'start the server through hive-bridge, which takes the data-dir lock');
  }
}

/** Refuse what PGlite would fail on obscurely, before it tries. */
export function checkDataDir(dir, expectedMajor) {
  const parent = path.dirname(dir);
  let st = null;
  try {
    st = fs.statSync(dir);
  } catch {
    // does not exist yet: its parent must
  }
  if (st && !st.isDirectory()) {
    throw new StartError('data_dir_invalid', `data dir ${dir} exists but is not a directory`, 'point HIVE_DATABASE_URL at a directory (it is created if missing)');
  }
  if (!st) {
    let pst = null;
    try {
      pst = fs.statSync(parent);
    } catch {
      throw new StartError('data_dir_invalid', `the parent directory of data dir ${dir} does not exist`, `mkdir -p ${parent}`);
    }
    if (!pst.isDirectory()) throw new StartError('data_dir_invalid', `${parent} is not a directory`, 'choose another data dir path');
  }
  try {
    fs.accessSync(st ? dir : parent, fs.constants.W_OK);
  } catch {
    throw new StartError('data_dir_invalid', `${st ? dir : parent} is not writable`, `check its owner and permissions (ls -ld ${st ? dir : parent})`);
  }
  if (st) {
    const versionFile = path.join(dir, 'PG_VERSION');
    if (fs.existsSync(versionFile)) {
      const major = fs.readFileSync(versionFile, 'utf8').trim();
      if (major !== String(expectedMajor)) {
        throw new StartError('version_mismatch', `data dir ${dir} was created by PostgreSQL ${major}; this PGlite runs PostgreSQL ${expectedMajor}`,
          'open it with the PGlite version that created it, dump it (pg_dump), and restore into a new data dir');
      }
    } else if (fs.readdirSync(dir).length) {
      throw new StartError('data_dir_invalid', `data dir ${dir} is not empty but holds no PostgreSQL database (no PG_VERSION)`,
        'point HIVE_DATABASE_URL at an empty or new directory; nothing in this one was changed');
    }
  }
  return { exists: Boolean(st), initialised: Boolean(st) && fs.existsSync(path.join(dir, 'PG_VERSION')) };
}

/** Under the lock: remove the pid file a killed PGlite leaves (it holds a fake pid and is never valid). */
export function clearCrashLeftovers(dir, log) {
  const pidFile = path.join(dir, 'postmaster.pid');
  try {
    fs.unlinkSync(pidFile);
    log.info(`removed stale ${pidFile} left by a previous run`);
  } catch (err) {
    if (err.code !== 'ENOENT') throw err;
  }
}

// ---- pristine template: a cold start is a copy, not an initdb ----------------------------------------

/** The cache directory: --cache-dir, else $HIVE_BRIDGE_CACHE_DIR, else $XDG_CACHE_HOME/hive-bridge or ~/.cache/hive-bridge. */
export function cacheRoot(cacheDir) {
  return cacheDir || process.env.HIVE_BRIDGE_CACHE_DIR || path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'hive-bridge');
}

/**
 * Where the initialised template is cached, keyed by PGlite version only: its content does not depend on
 * the extensions a server offers (PGlite runs initdb without extensions, and offering one installs
 * nothing: only CREATE EXTENSION does, in a data dir made from the template).
 */
export function templateDir(cacheDir, pgliteVersion) {
  return path.join(cacheRoot(cacheDir), 'templates', `pglite-${pgliteVersion}`);
}

/** Copy a directory tree: cp -a where available (about twice as fast as fs.cpSync here). */
async function copyTree(src, dst) {
  try {
    await execFileAsync('cp', ['-a', src, dst]);
  } catch {
    await fs.promises.rm(dst, { recursive: true, force: true });
    await fs.promises.cp(src, dst, { recursive: true });
  }
}

/**
 * Build the template once: PGlite runs initdb into a temporary directory and closes it cleanly, then it
 * is renamed into place (atomic; a concurrent builder's result is kept and ours dropped).
 * `initdb(dir)` opens and closes a database at dir.
 */
export async function ensureTemplate(dir, initdb, log) {
  if (fs.existsSync(path.join(dir, 'PG_VERSION'))) return false;
  fs.mkdirSync(path.dirname(dir), { recursive: true });
  const tmp = `${dir}.tmp-${process.pid}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  const t0 = Date.now();
  await initdb(tmp);
  try {
    fs.renameSync(tmp, dir);
  } catch (err) {
    fs.rmSync(tmp, { recursive: true, force: true });
    if (!fs.existsSync(path.join(dir, 'PG_VERSION'))) throw err;
  }
  log.info(`built the data-dir template ${dir} in ${Date.now() - t0} ms (once per PGlite version)`);
  return true;
}

/**
 * Create a new data dir as a copy of the template: copied beside it, then renamed into place. Async (a
 * `cp -a` child process): the server starts PGlite's worker meanwhile, which imports PGlite and compiles
 * its WASM before it needs the data dir.
 */
export async function createFromTemplate(template, dir, log) {
  const t0 = Date.now();
  const tmp = `${dir}.tmp-${process.pid}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  await copyTree(template, tmp);
  if (fs.existsSync(dir)) fs.rmdirSync(dir); // an empty directory (checkDataDir refused anything else)
  fs.renameSync(tmp, dir);
  log.debug(`data dir ${dir} created from template in ${Date.now() - t0} ms (while PGlite's worker started)`);
}

// ---- stamp: which PGlite a data dir belongs to ---------------------------------------------------------

const STAMP = 'hive-bridge.json';

/** PGlite data dirs are not compatible across minor versions (0.4 -> 0.5): refuse a foreign one. */
export function checkStamp(dir, pgliteVersion) {
  let stamp;
  try {
    stamp = JSON.parse(fs.readFileSync(path.join(dir, STAMP), 'utf8'));
  } catch {
    return null; // not stamped yet (new, or made by another tool): stamped after a successful open
  }
  const minor = (v) => String(v).split('.').slice(0, 2).join('.');
  if (stamp.pglite_version && minor(stamp.pglite_version) !== minor(pgliteVersion)) {
    throw new StartError('version_mismatch', `data dir ${dir} was created by PGlite ${stamp.pglite_version}; this server runs PGlite ${pgliteVersion}, and data dirs are not compatible across PGlite minor versions`,
      `open it with the hive-bridge version that has PGlite ${minor(stamp.pglite_version)}.x, dump it with pg_dump (PostgreSQL 18 or newer) while it runs, and load the dump into a new data dir; a file-level backup cannot cross PGlite versions`);
  }
  return stamp;
}

/**
 * The stamp's `extensions` are those the server that last opened the data dir offered. That server
 * refused to open it unless every extension installed in it was among them, and it cannot install one it
 * does not offer, so every extension the data dir uses is listed (old stamps list only `vector`, which
 * was all those servers could offer). Rewritten after an open whenever the offered set differs.
 */
export function stampIsCurrent(stamp, extensions) {
  if (!stamp || !Array.isArray(stamp.extensions)) return false;
  const a = [...stamp.extensions].sort();
  const b = [...extensions].sort();
  return a.length === b.length && a.every((e, i) => e === b[i]);
}

export function writeStamp(dir, info, extensions) {
  const stamp = { pglite_version: info.pglite_version, postgres_version: info.postgres_version, extensions, stamped_at: new Date().toISOString() };
  const tmp = path.join(dir, `${STAMP}.tmp`);
  fs.writeFileSync(tmp, `${JSON.stringify(stamp, null, 2)}\n`);
  fs.renameSync(tmp, path.join(dir, STAMP));
}
