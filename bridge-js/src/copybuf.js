// The data of one COPY FROM STDIN, collected into one growing buffer until CopyDone.
//
// PGlite takes a COPY only whole (query, every CopyData and CopyDone in one call), so the front end has to
// hold it. Kept as one Buffer per CopyData message (pgbench and many drivers send one per row), a 1M-row
// load was two million small JS objects alive until CopyDone plus a Buffer.concat of all of them: the V8
// heap grew by ~150 MB and V8 kept it. Here the bytes are copied into one buffer that doubles when full
// (outside the V8 heap, freed as a whole once the COPY ran), and the received chunks can be collected at
// once. take() hands the filled part over without another copy.

const INITIAL = 64 * 1024;

export class CopyBuffer {
  /** Start with the first message (the COPY query itself); `limit` caps the doubling (not the data). */
  constructor(first, limit = Infinity) {
    this.limit = limit;
    this.buf = Buffer.allocUnsafe(Math.max(INITIAL, first ? first.length : 0));
    this.bytes = 0;
    if (first) this.append(first);
  }

  append(chunk) {
    const need = this.bytes + chunk.length;
    if (need > this.buf.length) {
      const grown = Buffer.allocUnsafe(Math.max(need, Math.min(this.buf.length * 2, this.limit)));
      this.buf.copy(grown, 0, 0, this.bytes);
      this.buf = grown;
    }
    chunk.copy(this.buf, this.bytes);
    this.bytes = need;
  }

  /** Everything collected, as one Buffer (a view: no copy); the CopyBuffer is empty afterwards. */
  take() {
    const out = this.buf.subarray(0, this.bytes);
    this.buf = Buffer.alloc(0);
    this.bytes = 0;
    return out;
  }
}
