// A one-request-at-a-time channel between the main thread and the PGlite worker, in shared memory.
//
// ctrl[STATE] walks IDLE -> REQUEST (main wrote a request) -> RESPONSE | ERROR (worker answered) -> IDLE.
// The main thread waits with Atomics.waitAsync (never blocking its event loop); the worker blocks in
// Atomics.wait, which is what a dedicated thread is for. Both buffers are growable SharedArrayBuffers, so
// a large COPY or result grows them in place and both sides see the new size.

const STATE = 0;
const OP = 1;
const REQ_LEN = 2;
const RESP_LEN = 3;

export const ST_IDLE = 0;
export const ST_REQUEST = 1;
export const ST_RESPONSE = 2;
export const ST_ERROR = 3;

export const OP_EXEC = 1;
export const OP_CLOSE = 2;

const INITIAL = 1 << 20; // 1 MiB
export const MAX_MESSAGE = 1 << 30; // 1 GiB, PostgreSQL's own limit for one message

function growTo(sab, needed) {
  if (needed <= sab.byteLength) return;
  if (needed > MAX_MESSAGE) throw new RangeError(`message of ${needed} bytes exceeds the 1 GiB limit`);
  sab.grow(Math.min(MAX_MESSAGE, Math.max(needed, sab.byteLength * 2)));
}

export class Channel {
  constructor(shared) {
    this.shared = shared;
    this.ctrl = new Int32Array(shared.ctrl);
    this.req = new Uint8Array(shared.req); // length-tracking views: follow grow()
    this.resp = new Uint8Array(shared.resp);
  }

  static create() {
    return new Channel({
      ctrl: new SharedArrayBuffer(16),
      req: new SharedArrayBuffer(INITIAL, { maxByteLength: MAX_MESSAGE }),
      resp: new SharedArrayBuffer(INITIAL, { maxByteLength: MAX_MESSAGE }),
    });
  }

  static attach(shared) {
    return new Channel(shared);
  }

  // ---- main thread side -------------------------------------------------------------------------

  /** Send one request; resolves to {ok, data} once the worker answered. */
  async call(op, bytes) {
    const ctrl = this.ctrl;
    if (Atomics.load(ctrl, STATE) !== ST_IDLE) throw new Error('backend channel is busy');
    const len = bytes ? bytes.length : 0;
    if (len) {
      growTo(this.shared.req, len);
      this.req.set(bytes, 0);
    }
    ctrl[OP] = op;
    ctrl[REQ_LEN] = len;
    Atomics.store(ctrl, STATE, ST_REQUEST);
    Atomics.notify(ctrl, STATE);
    // Wait until the worker has answered. A wake-up can arrive with the request still pending (a late
    // notification from the previous answer was seen to resolve the wait): check and wait again.
    while (Atomics.load(ctrl, STATE) === ST_REQUEST) {
      const wait = Atomics.waitAsync(ctrl, STATE, ST_REQUEST);
      if (wait.async) await wait.value;
    }
    const state = Atomics.load(ctrl, STATE);
    const n = ctrl[RESP_LEN];
    const data = Buffer.allocUnsafe(n);
    data.set(this.resp.subarray(0, n));
    Atomics.store(ctrl, STATE, ST_IDLE);
    if (state === ST_RESPONSE) return { ok: true, data };
    return { ok: false, data };
  }

  /** Wake a main thread waiting on a worker that will never answer (it was terminated). */
  abandon() {
    this.ctrl[RESP_LEN] = 0;
    Atomics.store(this.ctrl, STATE, ST_ERROR);
    Atomics.notify(this.ctrl, STATE);
  }

  // ---- worker side ------------------------------------------------------------------------------

  /**
   * Block until a request arrives. The worker thread does nothing else, so it never returns to its event
   * loop; measured, that also keeps the process ~40 MB smaller than waiting with the loop free
   * (Atomics.waitAsync when idle), at the same throughput.
   */
  waitForRequest() {
    for (;;) {
      const state = Atomics.load(this.ctrl, STATE);
      if (state === ST_REQUEST) return;
      Atomics.wait(this.ctrl, STATE, state);
    }
  }

  op() {
    return this.ctrl[OP];
  }

  request() {
    return this.req.subarray(0, this.ctrl[REQ_LEN]);
  }

  /** Append a chunk of output at offset `off`; returns the new length. */
  writeResponse(chunk, off) {
    growTo(this.shared.resp, off + chunk.length);
    this.resp.set(chunk, off);
    return off + chunk.length;
  }

  respond(len) {
    this.ctrl[RESP_LEN] = len;
    Atomics.store(this.ctrl, STATE, ST_RESPONSE);
    Atomics.notify(this.ctrl, STATE);
  }

  fail(message) {
    const bytes = Buffer.from(message, 'utf8');
    const n = this.writeResponse(bytes, 0);
    this.ctrl[RESP_LEN] = n;
    Atomics.store(this.ctrl, STATE, ST_ERROR);
    Atomics.notify(this.ctrl, STATE);
  }
}
