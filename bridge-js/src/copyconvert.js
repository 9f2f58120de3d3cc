// A text-format COPY ... FROM STDIN converted to binary COPY before PGlite runs it, when that is exact.
//
// In the WASM build float parsing goes through software long-double arithmetic: pgvector's vector_in
// (strtof per element) made a text COPY of vector(384) rows ~30x slower inside PGlite than the same rows
// in binary format, which it stores without parsing. Drivers send text COPY (psycopg's write_row), so the
// front end reads the rows here, in JS, and hands PGlite binary rows.
//
// "Impossible to lose data with": a COPY is converted only when every value of every row has one binary
// form that stores exactly what PostgreSQL's text input would store; at the first value where that is not
// certain (a type or option not listed, an escape, a float whose rounding could differ, a wrong field
// count, ...) the original bytes go to PGlite unchanged and PostgreSQL does what it always does, errors
// included. A conversion never raises an error of its own.
//
// - Which COPYs: `COPY table [(columns)] FROM STDIN` with no option but FORMAT text, ended by CopyDone,
//   client and server encoding UTF8.
// - Column types: one catalog query on the client's own turn (its search_path applies): the table through
//   to_regclass() of the statement's own text, its columns as COPY takes them (the listed ones in list
//   order, else attnum > 0, not dropped, not generated). Nothing is cached across COPYs (DDL). Which
//   types convert, and how exactly, is copyfields.js.
// - Text format: rows end with \n (a \r or a NUL anywhere keeps it as text), fields split on tab, \N is
//   NULL; a wrong field count keeps it as text (PostgreSQL reports it).
// - Errors PostgreSQL raises on the converted rows (a constraint, a vector's dimension against its
//   typmod, a varchar too long) have the same SQLSTATE and message; their CONTEXT line names the row and
//   column but not the value (binary COPY does not print it).
// - Memory: one pass over the collected bytes (a row that spans CopyData messages is joined alone) into
//   one growing output buffer; strings are made per field at most.
import * as P from './protocol.js';
import * as SQL from './sql.js';
import { Interrupted } from './interrupt.js';
import { QUERY, COPY_DATA, COPY_DONE, DATA_ROW, ERROR } from './msgtypes.js';
import { converterFor, HAS_BACKSLASH, HAS_HIGH } from './copyfields.js';
import { CopyBuffer } from './copybuf.js';

const CHUNK = 256 * 1024; // CopyData message size of the converted stream
const SLICE_MS = 50; // longest stretch of conversion without a turn of the event loop
const SIGNATURE = Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1');

// ---- the statement -----------------------------------------------------------------------------------

const IDENT = String.raw`(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)`;
const COPY_RE = new RegExp(
  String.raw`^(copy\s+(${IDENT}(?:\s*\.\s*${IDENT})?)(?:\s*\(\s*(${IDENT}(?:\s*,\s*${IDENT})*)\s*\)\s*|\s+)from\s+stdin)\b` +
    String.raw`(?:\s*(?:with\s*)?\(\s*format\s+(?:text|'text')\s*\))?\s*;?\s*$`,
  'i',
);
const IDENT_G = new RegExp(IDENT, 'g');

/** A column name as PostgreSQL folds it (ASCII only: the unquoted pattern above is ASCII). */
function identName(token) {
  return token.startsWith('"') ? token.slice(1, -1).replace(/""/g, '"') : token.toLowerCase();
}

/**
 * `COPY t [(cols)] FROM STDIN [[WITH] (FORMAT text)]` as { table, columns (names or null), binarySql },
 * or { reason } when it is any other COPY.
 */
export function parseCopy(sql) {
  const text = SQL.lead(sql);
  const m = COPY_RE.exec(text);
  if (!m) return { reason: 'it is not a plain text-format COPY table [(columns)] FROM STDIN' };
  const table = m[2];
  if (table.includes('\\')) return { reason: 'its table name has a backslash' };
  const columns = m[3] ? m[3].match(IDENT_G).map(identName) : null;
  if (columns && columns.some((c) => Buffer.byteLength(c) > 63)) return { reason: 'a column name is longer than 63 bytes' };
  if (columns && new Set(columns).size !== columns.length) return { reason: 'a column is listed twice' };
  // the statement as the client wrote it (comments before it included) up to STDIN, then binary
  const stdinEnd = sql.length - text.length + m[1].length;
  return { table, columns, binarySql: `${sql.slice(0, stdinEnd)} (FORMAT binary)` };
}

// ---- the columns -------------------------------------------------------------------------------------

function lookupQuery(table) {
  return P.query(
    'SELECT c.relkind::text, pg_catalog.current_setting(\'client_encoding\'), pg_catalog.current_setting(\'server_encoding\'),' +
      ' a.attname::text, a.atttypid::int, t.typname::text, t.typreceive::text, (a.attgenerated <> \'\')::text' +
      ' FROM pg_catalog.pg_class c' +
      ' LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped' +
      ' LEFT JOIN pg_catalog.pg_type t ON t.oid = a.atttypid' +
      ` WHERE c.oid = pg_catalog.to_regclass(${SQL.quoteLiteral(table)}) ORDER BY a.attnum`,
  );
}

/** The converter of each column in COPY's order, or { reason }. */
function planColumns(rows, listed) {
  if (!rows.length) return { reason: 'the table was not found' };
  const [relkind, clientEnc, serverEnc] = rows[0];
  if (relkind !== 'r' && relkind !== 'p') return { reason: `it is not a table (relkind ${relkind})` };
  if (clientEnc !== 'UTF8' || serverEnc !== 'UTF8') return { reason: `client_encoding ${clientEnc}, server_encoding ${serverEnc}` };
  const attrs = rows.filter((r) => r[3] !== null).map((r) => ({ name: r[3], oid: Number(r[4]), typname: r[5], recv: r[6], generated: r[7] === 'true' }));
  let cols;
  if (listed) {
    cols = [];
    for (const name of listed) {
      const a = attrs.find((x) => x.name === name);
      if (!a) return { reason: `column ${name} was not found` };
      if (a.generated) return { reason: `column ${name} is generated` };
      cols.push(a);
    }
  } else cols = attrs.filter((a) => !a.generated);
  if (!cols.length) return { reason: 'it has no columns' };
  const convs = [];
  for (const a of cols) {
    const conv = converterFor(a);
    if (!conv) return { reason: `column ${a.name} is type ${a.typname}` };
    convs.push(conv);
  }
  return { convs, names: cols.map((a) => a.name) };
}

// ---- the rows ----------------------------------------------------------------------------------------

class RowWriter {
  constructor(convs, out) {
    this.convs = convs;
    this.out = out;
    this.rows = 0;
    this.failure = null;
  }

  /** One text row b[s, e) (without its \n) as a binary tuple; false when the COPY must stay text. */
  row(b, s, e) {
    const convs = this.convs;
    const n = convs.length;
    const out = this.out;
    this.rows += 1;
    out.ensure(2);
    out.buf.writeInt16BE(n, out.pos);
    out.pos += 2;
    let p = s;
    for (let c = 0; c < n; c++) {
      let q = p;
      let flags = 0;
      for (; q < e; q++) {
        const ch = b[q];
        if (ch === 9) break;
        if (ch === 0x5c) flags |= HAS_BACKSLASH;
        else if (ch >= 0x80) flags |= HAS_HIGH;
        else if (ch === 13 || ch === 0) return this.fail(c, ch === 13 ? 'a carriage return' : 'a NUL byte');
      }
      if (c < n - 1 ? q >= e : q < e) return this.fail(c, 'a wrong number of fields');
      if (flags === HAS_BACKSLASH && q - p === 2 && b[p + 1] === 0x4e) {
        out.ensure(4);
        out.buf.writeInt32BE(-1, out.pos);
        out.pos += 4;
      } else if (!convs[c](b, p, q, flags, out)) return this.fail(c, 'a value binary input cannot take exactly');
      p = q + 1;
    }
    return true;
  }

  fail(column, what) {
    this.failure = { row: this.rows, column, what };
    return false;
  }
}

/**
 * Convert the CopyData payloads of data[from, end) (ended by CopyDone) into `out`, framed as CopyData
 * messages. Resolves to the row count, or { failure }. Gives the event loop a turn every SLICE_MS: a
 * 1 GiB COPY takes tens of seconds to read, and /health must answer meanwhile.
 */
async function convertStream(data, from, convs, out) {
  const rw = new RowWriter(convs, out);
  let msgAt = out.pos;
  const openMessage = () => {
    out.ensure(5);
    msgAt = out.pos;
    out.buf[msgAt] = COPY_DATA;
    out.pos += 5;
  };
  const closeMessage = () => out.buf.writeInt32BE(out.pos - msgAt - 1, msgAt + 1);
  openMessage();
  out.append(SIGNATURE);
  out.ensure(8);
  out.buf.fill(0, out.pos, out.pos + 8); // flags, header extension length
  out.pos += 8;

  let slice = performance.now();
  let carry = null; // pieces of a row that spans CopyData messages
  let carryBytes = 0;
  let pos = from;
  for (;;) {
    const type = data[pos];
    const len = data.readInt32BE(pos + 1);
    const a = pos + 5;
    const z = pos + 1 + len;
    if (type === COPY_DONE && z === data.length) break;
    if (type !== COPY_DATA) return { failure: { what: 'a message other than CopyData before CopyDone' } };
    let p = a;
    while (p < z) {
      let nl = data.indexOf(10, p);
      if (nl < 0 || nl >= z) nl = -1;
      if (nl < 0) {
        (carry ??= []).push(data.subarray(p, z));
        carryBytes += z - p;
        break;
      }
      let ok;
      if (carry) {
        carry.push(data.subarray(p, nl));
        const line = Buffer.concat(carry, carryBytes + nl - p);
        carry = null;
        carryBytes = 0;
        ok = rw.row(line, 0, line.length);
      } else ok = rw.row(data, p, nl);
      if (!ok) return { failure: rw.failure };
      p = nl + 1;
      if (out.pos - msgAt >= CHUNK) {
        closeMessage();
        openMessage();
        if (performance.now() - slice > SLICE_MS) {
          await new Promise(setImmediate);
          slice = performance.now();
        }
      }
    }
    pos = z;
  }
  if (carry) {
    // the last row without its \n, as PostgreSQL reads it
    const line = Buffer.concat(carry, carryBytes);
    if (!rw.row(line, 0, line.length)) return { failure: rw.failure };
  }
  out.ensure(2);
  out.buf.writeInt16BE(-1, out.pos); // trailer
  out.pos += 2;
  closeMessage();
  out.ensure(5);
  out.buf[out.pos] = COPY_DONE;
  out.buf.writeInt32BE(4, out.pos + 1);
  out.pos += 5;
  return rw.rows;
}

// ---- the hook ----------------------------------------------------------------------------------------

/**
 * The bytes to run for a collected COPY FROM STDIN (`data`: Query, CopyData..., CopyDone/CopyFail): a
 * binary COPY of the same rows when that is exact, else `data` unchanged. Runs the catalog query on the
 * client's turn; null when a cancel stopped that query (the client then has its answer: 57014).
 */
export async function convertCopy(sched, s, data, ctx) {
  if (sched.opts.copyConvert === false || data[0] !== QUERY) return data;
  const qlen = data.readInt32BE(1);
  const sql = data.toString('utf8', 5, qlen); // without the terminating NUL
  const stmt = parseCopy(sql);
  const name = stmt.table ?? 'FROM STDIN';
  const keep = (why) => {
    sched.log.debug(`COPY ${name}: kept as text (${why})`);
    return data;
  };
  if (stmt.reason) return keep(stmt.reason);
  const last = data.length - 5;
  if (data[last] !== COPY_DONE || data.readInt32BE(last + 1) !== 4) return keep('it did not end with CopyDone');
  if (qlen + 1 >= last) return keep('it has no rows');

  const before = s.txStatus;
  let reply;
  try {
    reply = P.parseMessages(await sched.execInternal(s, lookupQuery(stmt.table)));
  } catch (err) {
    if (!(err instanceof Interrupted)) throw err;
    await sched.interrupts.afterInterrupt(s, before, ctx, err);
    return null;
  }
  const err = reply.find((m) => m.type === ERROR);
  if (err) return keep(`the column lookup failed: ${err.fields.M}`);
  const plan = planColumns(reply.filter((m) => m.type === DATA_ROW).map((m) => m.values), stmt.columns);
  if (plan.reason) return keep(plan.reason);

  const started = performance.now();
  const query = P.query(stmt.binarySql);
  const out = new CopyBuffer(query, Infinity, query.length + Math.max(64 * 1024, Math.ceil((data.length - qlen) * 0.4)));
  const rows = await convertStream(data, qlen + 1, plan.convs, out);
  if (rows.failure) {
    const f = rows.failure;
    return keep(f.row ? `row ${f.row}, column ${plan.names[f.column]}: ${f.what}` : f.what);
  }
  sched.log.debug(`COPY ${name}: ${rows} rows converted to binary in ${Math.round(performance.now() - started)} ms`);
  return out.take();
}
