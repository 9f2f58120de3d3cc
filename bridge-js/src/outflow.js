// A large COPY TO STDOUT answer is written as the client reads it, so a cancel can still stop it.
//
// PGlite produces a statement's whole answer before the front end sees any of it; PostgreSQL sends a COPY
// TO STDOUT as it runs, and a cancel that arrives while the client is still reading stops it: the client
// gets 57014 and its transaction is failed (psycopg cancels a COPY this way when the code reading it
// raises). So such an answer is written in pieces that end on message boundaries, each after the previous
// one drained; a cancel that arrives before the last piece drops the rest and ends the statement with the
// error, as PostgreSQL would. Only a batch with one Query/Sync inside an explicit transaction is streamed:
// there the statement's effects can still be undone (its transaction is failed on the backend before the
// client's next statement runs: Scheduler.step). In autocommit it has committed, and the cancel comes too
// late, as it can on PostgreSQL.
import * as P from './protocol.js';

const STREAM_MIN = 256 * 1024; // smaller answers fit the socket buffers anyway
const PIECE = 64 * 1024;
const COPY_OUT = 0x48; // H

/** Whether deliver() should stream this answer (see above). */
export function shouldStream(out, ctx, finalStatus) {
  if (out.length < STREAM_MIN || ctx.boundaries !== 1 || finalStatus !== 'T') return false;
  let copy = false;
  P.eachMessage(out.subarray(0, Math.min(out.length, 4096)), (type) => {
    if (type === COPY_OUT) copy = true;
  });
  return copy;
}

/** Start writing `buf` to the client in pieces; later send()s queue behind it. */
export function streamTo(s, buf) {
  const cuts = [0];
  let next = PIECE;
  P.eachMessage(buf, (type, start, end) => {
    if (end >= next) {
      cuts.push(end);
      next = end + PIECE;
    }
  });
  if (cuts[cuts.length - 1] !== buf.length) cuts.push(buf.length);
  s.stream = { buf, cuts, i: 0, after: [] };
  pump(s);
}

function pump(s) {
  const st = s.stream;
  if (!st || s.closed) return;
  while (st.i < st.cuts.length - 1) {
    const piece = st.buf.subarray(st.cuts[st.i], st.cuts[st.i + 1]);
    st.i += 1;
    if (!s.socket.write(piece) && st.i < st.cuts.length - 1) {
      s.socket.once('drain', () => pump(s));
      return;
    }
  }
  s.stream = null;
  for (const b of st.after) s.socket.write(b);
}

/**
 * A cancel for a client whose answer is still being written: drop the rest, end the statement with 57014
 * and fail its transaction. Returns false when there is nothing left to stop.
 */
export function stopStream(s) {
  const st = s.stream;
  if (!st || st.i >= st.cuts.length - 1) return false;
  s.stream = null;
  s.txStatus = 'E';
  s.abortPending = true; // the backend's transaction is failed before the client's next statement runs
  s.skippingToSync = false;
  s.atSyncBoundary = true;
  const err = P.errorResponse({ code: '57014', message: 'canceling statement due to user request' });
  s.socket.write(Buffer.concat([err, P.readyForQuery('E'), ...st.after]));
  return true;
}
