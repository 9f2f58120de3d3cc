// A one-request-at-a-time channel between the main thread and the PGlite worker, in shared memory.
//
// ctrl[STATE] walks IDLE -> REQUEST (main wrote a request) -> RESPONSE | ERROR (worker answered) -> IDLE.
// The main thread waits with Atomics.waitAsync (never blocking its event loop); the worker blocks in
// Atomics.wait, which is what a dedicated thread is for. Both buffers are growable SharedArrayBuffers, so
// a large COPY or result grows them in place and both sides see the new size.
//
// A SharedArrayBuffer cannot shrink. After a peak (a buffer grown past SHRINK_ABOVE) the main thread, once
// the channel has been idle for SHRINK_IDLE_MS, makes new 1 MiB buffers, posts them over a MessagePort and
// sends OP_SWAP; the worker, blocked in Atomics.wait and never in its event loop, takes them with
// receiveMessageOnPort and answers. Both sides then drop the old buffers, which V8 frees with them.
import { MessageChannel, receiveMessageOnPort } from 'node:worker_threads';
import v8 from 'node:v8';
import vm from 'node:vm';

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
const OP_SWAP = 3; // handled inside the channel: new buffers are waiting on the port

const INITIAL = 1 << 20; // 1 MiB
export const SHRINK_ABOVE = 4 * INITIAL;
export const SHRINK_IDLE_MS = 2000;
export const MAX_MESSAGE = 1 << 30; // 1 GiB, PostgreSQL's own limit for one message

let gcFn;
/**
 * A full GC of this thread's heap, so the dropped buffers (and a bulk load's garbage) are returned to
 * the OS now: V8 frees a SharedArrayBuffer only once every thread's objects for it are collected, and
 * an idle thread would otherwise not collect for a long time. Only after a peak and an idle spell.
 */
export function collectGarbage() {
  if (gcFn === undefined) {
    try {
      v8.setFlagsFromString('--expose-gc');
      gcFn = vm.runInNewContext('gc');
    } catch {
      gcFn = null;
    }
  }
  if (gcFn) gcFn();
}

function newBuffer() {
  return new SharedArrayBuffer(INITIAL, { maxByteLength: MAX_MESSAGE });
}

function growTo(sab, needed) {
  if (needed <= sab.byteLength) return;
  if (needed > MAX_MESSAGE) throw new RangeError(`message of ${needed} bytes exceeds the 1 GiB limit`);
  sab.grow(Math.min(MAX_MESSAGE, Math.max(needed, sab.byteLength * 2)));
}

export class Channel {
  constructor(shared, port = shared.port) {
    this.shared = shared;
    this.port = port; // main thread: where new buffers are posted; worker: where they arrive
    this.ctrl = new Int32Array(shared.ctrl);
    this.adopt(shared.req, shared.resp);
    this.inFlight = null; // main thread: the call or swap under way
    this.shrinkTimer = null;
    this.swaps = 0;
  }

  static create() {
    const { port1, port2 } = new MessageChannel();
    port1.unref();
    const channel = new Channel({
      ctrl: new SharedArrayBuffer(16),
      req: newBuffer(),
      resp: newBuffer(),
      port: port2,
    }, port1);
    channel.transferList = [port2]; // pass with workerData: new Worker(url, { workerData, transferList })
    return channel;
  }

  static attach(shared) {
    return new Channel(shared);
  }

  adopt(req, resp) {
    this.shared.req = req;
    this.shared.resp = resp;
    this.req = new Uint8Array(req); // length-tracking views: follow grow()
    this.resp = new Uint8Array(resp);
  }

  /** Bytes held by the two buffers now (what shrinking gives back). */
  get bufferBytes() {
    return this.shared.req.byteLength + this.shared.resp.byteLength;
  }

  // ---- main thread side -------------------------------------------------------------------------

  /** Send one request; resolves to {ok, data} once the worker answered. */
  async call(op, bytes) {
    while (this.inFlight) await this.inFlight.catch(() => {});
    const done = this.roundTrip(op, bytes);
    this.inFlight = done;
    try {
      return await done;
    } finally {
      this.inFlight = null;
      this.scheduleShrink();
    }
  }

  async roundTrip(op, bytes) {
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

  /** After a peak, shrink the buffers once the channel has been idle for SHRINK_IDLE_MS. */
  scheduleShrink() {
    if (this.bufferBytes <= 2 * INITIAL || !this.port) return;
    if (this.shrinkTimer) this.shrinkTimer.refresh();
    else {
      this.shrinkTimer = setTimeout(() => this.shrinkNow(), SHRINK_IDLE_MS);
      this.shrinkTimer.unref();
    }
  }

  /** Replace grown buffers with new 1 MiB ones (no-op while a call is under way or nothing grew). */
  async shrinkNow() {
    this.shrinkTimer = null;
    if (this.inFlight || this.bufferBytes <= 2 * INITIAL || this.abandoned) return false;
    const req = newBuffer();
    const resp = newBuffer();
    this.port.postMessage({ req, resp });
    const done = this.roundTrip(OP_SWAP, null);
    this.inFlight = done;
    try {
      const r = await done;
      if (!r.ok) return false;
      this.adopt(req, resp);
      this.swaps += 1;
      collectGarbage();
      return true;
    } finally {
      this.inFlight = null;
    }
  }

  /** Wake a main thread waiting on a worker that will never answer (it was terminated). */
  abandon() {
    this.abandoned = true;
    if (this.shrinkTimer) clearTimeout(this.shrinkTimer);
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
      if (state === ST_REQUEST) {
        if (this.ctrl[OP] !== OP_SWAP) return;
        this.takeNewBuffers();
        continue;
      }
      Atomics.wait(this.ctrl, STATE, state);
    }
  }

  takeNewBuffers() {
    const msg = receiveMessageOnPort(this.port);
    if (!msg) {
      this.fail('no buffers arrived with OP_SWAP');
      return;
    }
    this.adopt(msg.message.req, msg.message.resp);
    collectGarbage();
    this.respond(0);
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
