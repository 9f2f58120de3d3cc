// Several requests in one hop to the PGlite worker (see batch.js for which requests and why).
//
// The request is [u32 count] then count times [u32 length][frontend messages]. The worker runs them in
// order and records, in a small shared Int32Array (the marks), where each one's output ends and how many
// have finished, as it goes: if the worker is stopped in the middle (a cancel), the main thread still has
// the answers of the requests that finished. Before running request i the worker claims it; the main thread
// may skip a request that is not claimed yet (a cancel that arrived first).

export const OP_EXEC_MANY = 4;
export const OP_EXEC_IF = 5;
export const MAX_MANY = 32;

const DONE = 0; // requests finished (or skipped)
const FAILED = 1; // 1 when PGlite threw; the text is at [ERR_START, ERR_END) of the response
const ERR_START = 2;
const ERR_END = 3;
const CLAIM = 4; // CLAIM + i: 0 free, 1 skipped by the main thread, 2 taken by the worker
const OFFSET = CLAIM + MAX_MANY; // OFFSET + i: where request i's output starts; OFFSET + count: the end
const SIZE = OFFSET + MAX_MANY + 1;

/**
 * The request for segments (each an array of message buffers), in one buffer. (Written part by part
 * straight into the shared buffer instead, it cost more: a set() into a growable SharedArrayBuffer's view
 * takes V8's slow path, measured 3 % of the main thread.)
 */
export function encodeMany(segments) {
  let total = 4;
  for (const parts of segments) {
    total += 4;
    for (const p of parts) total += p.length;
  }
  const out = Buffer.allocUnsafe(total);
  putU32(out, 0, segments.length);
  let pos = 4;
  for (const parts of segments) {
    const at = pos;
    pos += 4;
    for (const p of parts) {
      out.set(p, pos);
      pos += p.length;
    }
    putU32(out, at, pos - at - 4);
  }
  return out;
}

function putU32(dst, at, n) {
  dst[at] = n >>> 24;
  dst[at + 1] = (n >>> 16) & 0xff;
  dst[at + 2] = (n >>> 8) & 0xff;
  dst[at + 3] = n & 0xff;
}

function getU32(src, at) {
  return ((src[at] << 24) | (src[at + 1] << 16) | (src[at + 2] << 8) | src[at + 3]) >>> 0;
}

export class Marks {
  constructor(sab) {
    this.sab = sab;
    this.a = new Int32Array(sab);
  }

  static create() {
    return new Marks(new SharedArrayBuffer(SIZE * 4));
  }

  // ---- main thread ----

  reset(count) {
    if (count > MAX_MANY) throw new RangeError(`at most ${MAX_MANY} requests in one hop`);
    this.a.fill(0);
  }

  done() {
    return Atomics.load(this.a, DONE);
  }

  /** Skip request i if the worker has not taken it yet; true if skipped. */
  skip(i) {
    return Atomics.compareExchange(this.a, CLAIM + i, 0, 1) === 0;
  }

  /** [start, end) of request i's output in the response buffer. */
  range(i) {
    return [Atomics.load(this.a, OFFSET + i), Atomics.load(this.a, OFFSET + i + 1)];
  }

  failure() {
    return Atomics.load(this.a, FAILED) ? [this.a[ERR_START], this.a[ERR_END]] : null;
  }

  // ---- worker ----

  /** Take request i to run it; false if the main thread skipped it. */
  claim(i) {
    return Atomics.compareExchange(this.a, CLAIM + i, 0, 2) === 0;
  }

  finish(i, end) {
    Atomics.store(this.a, OFFSET + i + 1, end);
    Atomics.store(this.a, DONE, i + 1);
  }

  fail(start, end) {
    this.a[ERR_START] = start;
    this.a[ERR_END] = end;
    Atomics.store(this.a, FAILED, 1);
  }
}

/** The transaction status of the ReadyForQuery that ends out[0, end), or null if it does not end with one. */
function lastStatus(out, end) {
  if (end < 6 || out[end - 6] !== 0x5a) return null;
  return String.fromCharCode(out[end - 1]);
}

/**
 * Worker side: run every request of the current channel request. `exec(bytes)` runs one (output goes to
 * the response buffer through PGlite's callback); `outLen()` is the response length so far.
 */
export function runMany(channel, marks, exec, outLen) {
  const req = channel.request();
  const count = getU32(req, 0);
  let pos = 4;
  for (let i = 0; i < count; i++) {
    const len = getU32(req, pos);
    pos += 4;
    if (marks.claim(i)) {
      try {
        exec(req.subarray(pos, pos + len));
      } catch (err) {
        const start = outLen();
        const end = channel.writeResponse(Buffer.from(String((err && err.stack) || err), 'utf8'), start);
        marks.fail(start, end);
        return end;
      }
    }
    pos += len;
    const end = outLen();
    marks.finish(i, end);
    const status = lastStatus(channel.resp, end);
    if (status !== null && status !== 'I') break; // a transaction is open: the rest must not run inside it
  }
  return outLen();
}

/** [u32 length][first][then]: run `then` only if the first DataRow of `first`'s output starts with ''. */
export function encodeIf(first, then) {
  const out = Buffer.allocUnsafe(4 + first.length + then.length);
  out.writeUInt32BE(first.length, 0);
  first.copy(out, 4);
  then.copy(out, 4 + first.length);
  return out;
}

/** The first column of the first DataRow in out[from, to), or null (no row, or NULL). */
function firstValue(out, from, to) {
  let pos = from;
  while (pos + 5 <= to) {
    const len = (out[pos + 1] << 24) | (out[pos + 2] << 16) | (out[pos + 3] << 8) | out[pos + 4];
    if (out[pos] === 0x44 /* DataRow */) {
      const vlen = (out[pos + 7] << 24) | (out[pos + 8] << 16) | (out[pos + 9] << 8) | out[pos + 10];
      return vlen < 0 ? null : Buffer.from(out.subarray(pos + 11, pos + 11 + vlen)).toString('utf8');
    }
    pos += 1 + len;
  }
  return null;
}

/**
 * Worker side of a conditional request (parking.js: check, and roll back only if nothing forbids it):
 * one hop instead of two.
 */
export function runIf(channel, exec, outLen) {
  const req = channel.request();
  const n = getU32(req, 0);
  exec(req.subarray(4, 4 + n));
  if (firstValue(channel.resp, 0, outLen()) === '') exec(req.subarray(4 + n));
  return outLen();
}
