// A text-format COPY ... FROM STDIN converted to binary COPY before PGlite runs it, when that is exact.
//
// In the WASM build float parsing goes through software long-double arithmetic: pgvector's vector_in
// (strtof per element) made a text COPY of vector(384) rows ~30x slower than the same rows in binary
// format, which PGlite stores without parsing. Drivers send text COPY (psycopg's write_row), so the
// front end does the parsing here, in JS, and hands PGlite binary rows.
//
// "Impossible to lose data with": a COPY is converted only when every value of every row has exactly one
// binary form that stores what PostgreSQL's text input would store; at the first value where that is not
// certain (a type not listed below, an option, an escape, a float whose rounding could differ, a wrong
// field count, ...) the original bytes go to PGlite unchanged and PostgreSQL does what it always does,
// errors included. A conversion never raises an error of its own.
//
// - Which COPYs: `COPY table [(columns)] FROM STDIN` with no option but FORMAT text, ended by CopyDone,
//   client and server encoding UTF8.
// - Column types: one catalog query on the client's own turn (its search_path applies): the table through
//   to_regclass() of the statement's own text, its columns as COPY takes them (the listed ones in list
//   order, else attnum > 0, not dropped, not generated). Nothing is cached across COPYs (DDL).
// - Types (by OID; domains and every other type keep the COPY as text): int2/int4/int8 (strict decimal,
//   range-checked), float4/float8 (strict decimal; NaN, Infinity, -Infinity), bool (t, f, true, false),
//   text/varchar/bpchar (their binary input runs the same length check and padding), uuid (canonical
//   form), json/jsonb, and pgvector's vector (typreceive vector_recv: int16 dim, int16 0, float4s).
// - float4 and vector elements: Math.fround(Number(s)) rounds twice (decimal to double to float), which
//   can differ from strtof only when the double is exactly halfway between two floats: kept as text then,
//   and on overflow, underflow to zero and subnormals (float4in and pgvector treat those specially).
// - Text format: rows end with \n (a \r anywhere keeps it as text), fields split on tab, \N is NULL,
//   escapes \b \f \n \r \t \v \\ in text-like fields; any other backslash keeps it as text (octal and hex
//   escapes can make invalid UTF-8; \. is the end-of-data marker). Text fields must be valid UTF-8
//   without NUL (else PostgreSQL's own encoding error, from the text COPY).
// - Errors PostgreSQL raises on the converted rows (a constraint, a vector's dimension against its
//   typmod, a varchar too long) have the same SQLSTATE and message; their CONTEXT line names the row and
//   column but not the value (binary COPY does not print it).
// - Memory: one pass over the collected bytes (a row that spans CopyData messages is joined alone) into
//   one growing output buffer; decoded strings are per field.
import { isUtf8 } from 'node:buffer';
import * as P from './protocol.js';
import * as SQL from './sql.js';
import { Interrupted } from './interrupt.js';
import { QUERY, COPY_DATA, COPY_DONE, DATA_ROW, ERROR } from './msgtypes.js';

const CHUNK = 256 * 1024; // CopyData message size of the converted stream
const SIGNATURE = Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1');
const MAX_DIM = 16000; // pgvector's VECTOR_MAX_DIM

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

const OID = { bool: 16, int8: 20, int2: 21, int4: 23, text: 25, json: 114, float4: 700, float8: 701, bpchar: 1042, varchar: 1043, uuid: 2950, jsonb: 3802 };
const TEXT_LIKE = new Set([OID.text, OID.varchar, OID.bpchar, OID.json]);

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
  if (clientEnc !== 'UTF8' || serverEnc !== 'UTF8') return { reason: `client_encoding is ${clientEnc}` };
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

function converterFor(a) {
  if (TEXT_LIKE.has(a.oid)) return textField;
  switch (a.oid) {
    case OID.jsonb:
      return jsonbField;
    case OID.int2:
      return int2Field;
    case OID.int4:
      return int4Field;
    case OID.int8:
      return int8Field;
    case OID.float4:
      return float4Field;
    case OID.float8:
      return float8Field;
    case OID.bool:
      return boolField;
    case OID.uuid:
      return uuidField;
    default:
      return a.typname === 'vector' && a.recv === 'vector_recv' ? vectorField : null;
  }
}

// ---- the output --------------------------------------------------------------------------------------

class Out {
  constructor(size) {
    this.buf = Buffer.allocUnsafe(size);
    this.pos = 0;
  }

  ensure(n) {
    if (this.pos + n <= this.buf.length) return;
    const grown = Buffer.allocUnsafe(Math.max(this.pos + n, this.buf.length * 2));
    this.buf.copy(grown, 0, 0, this.pos);
    this.buf = grown;
  }

  bytes(src, start, end) {
    this.ensure(end - start);
    this.pos += src.copy(this.buf, this.pos, start, end);
  }
}

// ---- the fields: each writes its binary form (length word included) and returns true, or returns
// false (nothing usable written: the whole COPY stays text). `flags` says what the field's bytes hold.

const HAS_BACKSLASH = 1;
const HAS_HIGH = 2;
const UNESCAPE = new Map([[0x62, 8], [0x66, 12], [0x6e, 10], [0x72, 13], [0x74, 9], [0x76, 11], [0x5c, 0x5c]]);

function textBytes(b, p, q, flags, out) {
  if (flags & HAS_HIGH && !isUtf8(b.subarray(p, q))) return false;
  if (!(flags & HAS_BACKSLASH)) {
    out.bytes(b, p, q);
    return true;
  }
  out.ensure(q - p);
  const o = out.buf;
  let w = out.pos;
  for (let i = p; i < q; i++) {
    const c = b[i];
    if (c !== 0x5c) {
      o[w++] = c;
      continue;
    }
    const u = i + 1 < q ? UNESCAPE.get(b[i + 1]) : undefined;
    if (u === undefined) return false; // octal, hex, \., \X: PostgreSQL's own reading
    o[w++] = u;
    i += 1;
  }
  out.pos = w;
  return true;
}

function textField(b, p, q, flags, out) {
  out.ensure(4);
  const at = out.pos;
  out.pos += 4;
  if (!textBytes(b, p, q, flags, out)) return false;
  out.buf.writeInt32BE(out.pos - at - 4, at);
  return true;
}

function jsonbField(b, p, q, flags, out) {
  out.ensure(5);
  const at = out.pos;
  out.buf[at + 4] = 1; // jsonb binary format version
  out.pos += 5;
  if (!textBytes(b, p, q, flags, out)) return false;
  out.buf.writeInt32BE(out.pos - at - 4, at);
  return true;
}

const INT_RE = /^[+-]?[0-9]+$/;

function intOf(b, p, q, flags, min, max) {
  if (flags || q - p > 12) return undefined;
  const s = b.toString('latin1', p, q);
  if (!INT_RE.test(s)) return undefined;
  const n = Number(s);
  return n >= min && n <= max ? n : undefined;
}

function int2Field(b, p, q, flags, out) {
  const n = intOf(b, p, q, flags, -32768, 32767);
  if (n === undefined) return false;
  out.ensure(6);
  out.buf.writeInt32BE(2, out.pos);
  out.buf.writeInt16BE(n, out.pos + 4);
  out.pos += 6;
  return true;
}

function int4Field(b, p, q, flags, out) {
  const n = intOf(b, p, q, flags, -2147483648, 2147483647);
  if (n === undefined) return false;
  out.ensure(8);
  out.buf.writeInt32BE(4, out.pos);
  out.buf.writeInt32BE(n, out.pos + 4);
  out.pos += 8;
  return true;
}

const INT8_MIN = -(2n ** 63n);
const INT8_MAX = 2n ** 63n - 1n;

function int8Field(b, p, q, flags, out) {
  if (flags || q - p > 40) return false;
  const s = b.toString('latin1', p, q);
  if (!INT_RE.test(s)) return false;
  const n = BigInt(s);
  if (n < INT8_MIN || n > INT8_MAX) return false;
  out.ensure(12);
  out.buf.writeInt32BE(8, out.pos);
  out.buf.writeBigInt64BE(n, out.pos + 4);
  out.pos += 12;
  return true;
}

// Decimal numbers as strtof/strtod read them, without the spellings left to PostgreSQL (whitespace,
// hex floats, inf/nan in other cases). Unambiguous, so a failed match does not backtrack.
const DEC_RE = /^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$/;
const NONZERO_MANTISSA = /^[^eE]*[1-9]/;
const SPECIAL = new Map([['NaN', NaN], ['Infinity', Infinity], ['-Infinity', -Infinity]]);
const FLT_MIN = 2 ** -126;
const DBL_MIN = 2 ** -1022;
const BITS = new DataView(new ArrayBuffer(8));

/**
 * The float4 strtof gives for a decimal string, or undefined when it is not certain: Math.fround of the
 * correctly rounded double equals strtof's result unless the double is exactly halfway between two
 * floats (its 29 bits below float precision are 1000...0); underflow and overflow are left to PostgreSQL.
 */
export function float4Of(s) {
  if (!DEC_RE.test(s)) return undefined;
  const d = Number(s);
  const a = Math.abs(d);
  if (a === 0) return NONZERO_MANTISSA.test(s) ? undefined : d;
  if (a < FLT_MIN) return undefined;
  const f = Math.fround(d);
  if (f === Infinity || f === -Infinity) return undefined;
  if (f !== d) {
    BITS.setFloat64(0, d);
    if ((BITS.getUint32(4) & 0x1fffffff) === 0x10000000) return undefined;
  }
  return f;
}

/** The float8 strtod gives (the correctly rounded double), or undefined (range limits: PostgreSQL's). */
export function float8Of(s) {
  if (!DEC_RE.test(s)) return undefined;
  const d = Number(s);
  const a = Math.abs(d);
  if (a === 0) return NONZERO_MANTISSA.test(s) ? undefined : d;
  if (a < DBL_MIN || a === Infinity) return undefined;
  return d;
}

function float4Field(b, p, q, flags, out) {
  if (flags) return false;
  const s = b.toString('latin1', p, q);
  const f = SPECIAL.has(s) ? SPECIAL.get(s) : float4Of(s);
  if (f === undefined) return false;
  out.ensure(8);
  out.buf.writeInt32BE(4, out.pos);
  if (Number.isNaN(f)) out.buf.writeUInt32BE(0x7fc00000, out.pos + 4); // PostgreSQL's NaN
  else out.buf.writeFloatBE(f, out.pos + 4);
  out.pos += 8;
  return true;
}

function float8Field(b, p, q, flags, out) {
  if (flags) return false;
  const s = b.toString('latin1', p, q);
  const d = SPECIAL.has(s) ? SPECIAL.get(s) : float8Of(s);
  if (d === undefined) return false;
  out.ensure(12);
  out.buf.writeInt32BE(8, out.pos);
  if (Number.isNaN(d)) {
    out.buf.writeUInt32BE(0x7ff80000, out.pos + 4);
    out.buf.writeUInt32BE(0, out.pos + 8);
  } else out.buf.writeDoubleBE(d, out.pos + 4);
  out.pos += 12;
  return true;
}

function boolField(b, p, q, flags, out) {
  if (flags) return false;
  const s = b.toString('latin1', p, q);
  const v = s === 't' || s === 'true' ? 1 : s === 'f' || s === 'false' ? 0 : -1;
  if (v < 0) return false;
  out.ensure(5);
  out.buf.writeInt32BE(1, out.pos);
  out.buf[out.pos + 4] = v;
  out.pos += 5;
  return true;
}

const UUID_RE = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

function uuidField(b, p, q, flags, out) {
  if (flags || q - p !== 36) return false;
  const s = b.toString('latin1', p, q);
  if (!UUID_RE.test(s)) return false;
  out.ensure(20);
  out.buf.writeInt32BE(16, out.pos);
  out.buf.write(s.replace(/-/g, ''), out.pos + 4, 16, 'hex');
  out.pos += 20;
  return true;
}

// pgvector's text form: [e1,e2,...] with blanks around anything. trim() removes what pgvector's
// vector_isspace() skips around the brackets (tab, \n, \r and bytes >= 0x80 never reach here); inside,
// only ' ' is taken (a \v or \f keeps the COPY as text).
function vectorField(b, p, q, flags, out) {
  if (flags) return false;
  const s = b.toString('latin1', p, q).trim();
  if (s.length < 3 || s.charCodeAt(0) !== 0x5b || s.charCodeAt(s.length - 1) !== 0x5d) return false;
  const parts = s.slice(1, -1).split(',');
  const dim = parts.length;
  if (dim > MAX_DIM) return false;
  out.ensure(8 + 4 * dim);
  const o = out.buf;
  let w = out.pos;
  o.writeInt32BE(4 + 4 * dim, w);
  o.writeInt16BE(dim, w + 4);
  o.writeInt16BE(0, w + 6);
  w += 8;
  for (let i = 0; i < dim; i++) {
    let e = parts[i];
    if (e.charCodeAt(0) === 0x20 || e.charCodeAt(e.length - 1) === 0x20) e = e.replace(/^ +| +$/g, '');
    const f = float4Of(e);
    if (f === undefined) return false; // also NaN, Infinity, empty elements: PostgreSQL's own error
    o.writeFloatBE(f, w);
    w += 4;
  }
  out.pos = w;
  return true;
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
 * messages. Returns the row count, or { failure }.
 */
function convertStream(data, from, convs, out) {
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
  out.bytes(SIGNATURE, 0, SIGNATURE.length);
  out.ensure(8);
  out.buf.fill(0, out.pos, out.pos + 8); // flags, header extension length
  out.pos += 8;

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
  const out = new Out(query.length + Math.max(64 * 1024, Math.ceil((data.length - qlen) * 0.6)));
  out.bytes(query, 0, query.length);
  const rows = convertStream(data, qlen + 1, plan.convs, out);
  if (rows.failure) {
    const f = rows.failure;
    return keep(f.row ? `row ${f.row}, column ${plan.names[f.column]}: ${f.what}` : f.what);
  }
  sched.log.debug(`COPY ${name}: ${rows} rows converted to binary in ${Math.round(performance.now() - started)} ms`);
  return out.buf.subarray(0, out.pos);
}
