// One growing buffer for COPY data: the data of a COPY FROM STDIN collected until CopyDone, and the binary
// stream copyconvert.js writes from it.
//
// PGlite takes a COPY only whole (query, every CopyData and CopyDone in one call), so the front end has to
// hold it. Kept as one Buffer per CopyData message (pgbench and many drivers send one per row), a 1M-row
// load was two million small JS objects alive until CopyDone plus a Buffer.concat of all of them: the V8
// heap grew by ~150 MB and V8 kept it. Here the bytes are copied into one buffer that doubles when full
// (outside the V8 heap, freed as a whole once the COPY ran), and the received chunks can be collected at
// once. take() hands the filled part over without another copy. Writers that fill it in place call
// ensure(n), write at `pos`, and advance `pos`.

const INITIAL = 64 * 1024;

export class CopyBuffer {
  /**
   * Start with the first message (the COPY query itself), or null; `limit` caps the doubling (not the
   * data); `size`: the first allocation when the final size can be guessed.
   */
  constructor(first, limit = Infinity, size = INITIAL) {
    this.limit = limit;
    this.buf = Buffer.allocUnsafe(Math.max(size, first ? first.length : 0));
    this.pos = 0;
    if (first) this.append(first);
  }

  /** Bytes collected so far. */
  get bytes() {
    return this.pos;
  }

  /** Room for n more bytes at `pos`. */
  ensure(n) {
    const need = this.pos + n;
    if (need <= this.buf.length) return;
    const grown = Buffer.allocUnsafe(Math.max(need, Math.min(this.buf.length * 2, this.limit)));
    this.buf.copy(grown, 0, 0, this.pos);
    this.buf = grown;
  }

  /** Append chunk[start, end). */
  append(chunk, start = 0, end = chunk.length) {
    this.ensure(end - start);
    this.pos += chunk.copy(this.buf, this.pos, start, end);
  }

  /** Everything collected, as one Buffer (a view: no copy); the CopyBuffer is empty afterwards. */
  take() {
    const out = this.buf.subarray(0, this.pos);
    this.buf = Buffer.alloc(0);
    this.pos = 0;
    return out;
  }
}
