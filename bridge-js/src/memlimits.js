// Memory settings from 64-bit PostgreSQL in 32-bit PGlite. PGlite's WebAssembly memory is at most 2 GB
// (32768 pages), and its memory GUCs stop just below 2 GB: `SET maintenance_work_mem = '2GB'` (Agno's HNSW
// helper, many tuning guides) fails with 22023 where PostgreSQL accepts it. The front end lowers such a
// value to MAX_KB, the largest that leaves room in the WASM heap for everything else, and sends a WARNING
// instead of the error. Only plain `SET [SESSION|LOCAL] name = value` is rewritten (simple or extended
// protocol, and startup options); anything else reaches PGlite unchanged.
import * as P from './protocol.js';

export const MAX_KB = 1024 * 1024; // 1 GB: see the README ("Memory settings")
const MAX_TEXT = '1GB';
// GUCs measured in kB whose PGlite maximum is below what 64-bit PostgreSQL allows
const KB_SETTINGS = new Set(['maintenance_work_mem', 'work_mem', 'logical_decoding_work_mem', 'autovacuum_work_mem']);
const UNITS = { b: 1 / 1024, kb: 1, mb: 1024, gb: 1024 * 1024, tb: 1024 * 1024 * 1024 };
const SET_RE = /^(\s*set\s+(?:session\s+|local\s+)?)([a-z_]+)(\s*(?:=|\s+to)\s*)('(?:[^']|'')*'|[0-9][0-9a-z.]*)(\s*;?\s*)$/i;

/** A memory value in kB ('2GB', '2048 MB', 2097152), or null if it is not one. */
export function memoryKb(raw) {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(raw);
  if (!m) return null;
  const unit = m[2] ? UNITS[m[2].toLowerCase()] : 1;
  if (unit === undefined) return null;
  return Number(m[1]) * unit;
}

function tooBig(name, value) {
  if (!KB_SETTINGS.has(name.toLowerCase())) return false;
  const kb = memoryKb(value);
  return kb !== null && kb > MAX_KB;
}

function warning(name, value) {
  return P.errorResponse({
    severity: 'WARNING',
    code: '01000',
    message: `${name} = '${value}' is more than PGlite's 32-bit WebAssembly memory can give one operation; using ${MAX_TEXT}`,
  }, true);
}

/** Cheap pre-test, so that only candidate statements are parsed. */
export function mayClamp(sql) {
  return sql.length < 200 && /_mem\b/i.test(sql) && /^\s*set\s/i.test(sql);
}

/** For a SET statement over the limit: { sql, notice } with the lowered value; otherwise null. */
export function clampSet(sql) {
  const m = SET_RE.exec(sql);
  if (!m) return null;
  const value = m[4].startsWith("'") ? m[4].slice(1, -1).replace(/''/g, "'") : m[4];
  if (!tooBig(m[2], value)) return null;
  return { sql: `${m[1]}${m[2]}${m[3]}'${MAX_TEXT}'${m[5]}`, notice: warning(m[2], value) };
}

/** Startup settings over the limit are lowered too (with a log line: startup has no place for a WARNING). */
export function clampStartup(settings, log) {
  for (const [k, v] of settings) {
    if (tooBig(k, v)) {
      log.info(`startup setting ${k}=${v} lowered to ${MAX_TEXT} (PGlite's 32-bit memory)`);
      settings.set(k, MAX_TEXT);
    }
  }
}
