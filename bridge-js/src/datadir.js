// The data directory: checks before PGlite opens it, the lock that keeps a second server out, and what a
// crash leaves behind.
import fs from 'node:fs';
import path from 'node:path';

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
  return { exists: Boolean(st) };
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
