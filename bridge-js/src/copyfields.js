// The fields of a text COPY row in binary form (copyconvert.js reads the rows). Each converter writes
// one field (its length word included) and returns true, or returns false when its binary form is not
// certain to store what PostgreSQL's text input stores: then the whole COPY stays text.
//
// - text, varchar, bpchar, json: the bytes, unescaped (\b \f \n \r \t \v \\ only; octal and hex escapes
//   can make invalid UTF-8, \. is the end-of-data marker), valid UTF-8; their binary input runs the same
//   checks (length, padding, JSON syntax). jsonb: version byte 1, then the text.
// - int2/int4/int8: strict decimal, range-checked. bool: t, f, true, false. uuid: the canonical form.
// - float8: strict decimal through Number() (correctly rounded, as strtod); NaN, Infinity, -Infinity.
// - float4 and pgvector's vector elements: see readFloat4(). Overflow, underflow to zero and subnormals
//   are left to PostgreSQL (float4in and pgvector treat them specially), as are NaN and Infinity in a
//   vector (pgvector refuses them).
// - vector: the type named vector whose typreceive is vector_recv (pgvector); binary form int16 dim,
//   int16 0, dim float4s. vector_recv checks the dimension against the column's typmod as vector_in does
//   (same error, 22000 "expected N dimensions, not M").
// - Any other type, a domain included (by OID), keeps the COPY as text.
import { isUtf8 } from 'node:buffer';

const MAX_DIM = 16000; // pgvector's VECTOR_MAX_DIM
const OID = { bool: 16, int8: 20, int2: 21, int4: 23, text: 25, json: 114, float4: 700, float8: 701, bpchar: 1042, varchar: 1043, uuid: 2950, jsonb: 3802 };
const TEXT_LIKE = new Set([OID.text, OID.varchar, OID.bpchar, OID.json]);

/** The field converter for a column ({ oid, typname, recv }), or null: that type keeps the COPY text. */
export function converterFor(a) {
  if (TEXT_LIKE.has(a.oid)) return textField;
  const conv = BY_OID.get(a.oid);
  if (conv) return conv;
  return a.typname === 'vector' && a.recv === 'vector_recv' ? vectorField : null;
}

// ---- the fields: each writes its binary form (length word included) and returns true, or returns
// false (nothing usable written: the whole COPY stays text). `flags` says what the field's bytes hold.

export const HAS_BACKSLASH = 1;
export const HAS_HIGH = 2;
const UNESCAPE = new Map([[0x62, 8], [0x66, 12], [0x6e, 10], [0x72, 13], [0x74, 9], [0x76, 11], [0x5c, 0x5c]]);

function textBytes(b, p, q, flags, out) {
  if (flags & HAS_HIGH && !isUtf8(b.subarray(p, q))) return false;
  if (!(flags & HAS_BACKSLASH)) {
    out.append(b, p, q);
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

/** int2 and int4: a length word, then the integer big-endian in `size` bytes. */
function fixedIntField(size, min, max) {
  return (b, p, q, flags, out) => {
    const n = intOf(b, p, q, flags, min, max);
    if (n === undefined) return false;
    out.ensure(4 + size);
    out.buf.writeInt32BE(size, out.pos);
    out.buf.writeIntBE(n, out.pos + 4, size);
    out.pos += 4 + size;
    return true;
  };
}

const int2Field = fixedIntField(2, -32768, 32767);
const int4Field = fixedIntField(4, -2147483648, 2147483647);

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

// Reading a float4 from bytes without a string (a vector(384) row has 384 of them). The decimal digits
// give an integer M (its first 19 significant digits) and a power of ten: x = M * 10^e.
// - M < 2^53, no digit dropped and |e| <= 22: M and 10^e are exact doubles, so one multiplication or
//   division gives the correctly rounded double (Clinger's fast path); from there as float4Of().
// - otherwise M as a double and the scaling are off by at most ~9 roundings of 2^-53 (relative, plus
//   1e-18 for dropped digits): under 20 units in the double's last place. Unless the double is within
//   64 such units of a float4 midpoint, x and the double round to the same float4; near one, or outside
//   |e| <= 22 or the normal float4 range, the digits go through Number() and float4Of() (exact).
const POW10 = Array.from({ length: 23 }, (_, k) => 10 ** k);
const MIDPOINT_MARGIN = 64;
let VALUE = 0; // readFloat4's result

/** Read a decimal number at b[i, z): its end (VALUE set), or -1 when it is not certain (or not one). */
function readFloat4(b, i, z) {
  let j = i;
  let neg = false;
  if (b[j] === 0x2d) {
    neg = true;
    j++;
  } else if (b[j] === 0x2b) j++;
  let m = 0;
  let nd = 0;
  let e = 0;
  let digits = 0;
  let dropped = false;
  let c;
  for (; j < z; j++) {
    c = b[j] - 48;
    if (c < 0 || c > 9) break;
    digits++;
    if (nd < 19) {
      if (m !== 0 || c !== 0) {
        m = m * 10 + c;
        nd++;
      }
    } else {
      e++;
      if (c !== 0) dropped = true;
    }
  }
  if (j < z && b[j] === 0x2e) {
    for (j++; j < z; j++) {
      c = b[j] - 48;
      if (c < 0 || c > 9) break;
      digits++;
      if (nd < 19) {
        if (m !== 0 || c !== 0) {
          m = m * 10 + c;
          nd++;
        }
        e--;
      } else if (c !== 0) dropped = true;
    }
  }
  if (digits === 0) return -1;
  if (j < z && (b[j] === 0x65 || b[j] === 0x45)) {
    j++;
    let eneg = false;
    if (b[j] === 0x2d && j < z) {
      eneg = true;
      j++;
    } else if (b[j] === 0x2b && j < z) j++;
    let ed = 0;
    let ev = 0;
    for (; j < z; j++) {
      c = b[j] - 48;
      if (c < 0 || c > 9) break;
      ed++;
      if (ev < 1e6) ev = ev * 10 + c;
    }
    if (ed === 0) return -1; // "1e": strtof stops before the e, the rest is PostgreSQL's error
    e += eneg ? -ev : ev;
  }
  if (m === 0) {
    VALUE = neg ? -0 : 0;
    return j;
  }
  if (e >= -22 && e <= 22) {
    const d = e < 0 ? m / POW10[-e] : m * POW10[e];
    if (d >= 2 * FLT_MIN && d <= 2 ** 127) {
      const f = Math.fround(d);
      BITS.setFloat64(0, d);
      const low = BITS.getUint32(4) & 0x1fffffff;
      if (m < 2 ** 53 && !dropped) {
        if (f !== d && low === 0x10000000) return -1; // exactly halfway: strtof's rounding may differ
        VALUE = neg ? -f : f;
        return j;
      }
      if (Math.abs(low - 0x10000000) > MIDPOINT_MARGIN) {
        VALUE = neg ? -f : f;
        return j;
      }
    }
  }
  const f = float4Of(b.toString('latin1', i, j));
  if (f === undefined) return -1;
  VALUE = f;
  return j;
}

/** readFloat4 of a whole string (for tests): the float4, or undefined. */
export function float4OfBytes(s) {
  const b = Buffer.from(s, 'latin1');
  return readFloat4(b, 0, b.length) === b.length ? VALUE : undefined;
}

function float4Field(b, p, q, flags, out) {
  if (flags) return false;
  let f;
  const c = b[p];
  if (c === 0x4e || c === 0x49 || (c === 0x2d && b[p + 1] === 0x49)) f = SPECIAL.get(b.toString('latin1', p, q));
  else if (readFloat4(b, p, q) === q) f = VALUE;
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

// pgvector's text form: [e1,e2,...] with blanks around anything (vector_isspace). Only ' ' is taken here:
// its other blanks (\v, \f; tab, \n and \r never reach a field) keep the COPY as text.
function vectorField(b, p, q, flags, out) {
  if (flags) return false;
  let i = p;
  let z = q;
  while (i < z && b[i] === 0x20) i++;
  while (z > i && b[z - 1] === 0x20) z--;
  if (z - i < 3 || b[i] !== 0x5b || b[z - 1] !== 0x5d) return false;
  i += 1;
  z -= 1; // the ']'
  out.ensure(8 + 4 * ((z - i + 2) >> 1)); // at most one element per two bytes
  const o = out.buf;
  const at = out.pos;
  let w = at + 8;
  for (;;) {
    while (i < z && b[i] === 0x20) i++;
    const end = readFloat4(b, i, z);
    if (end < 0) return false; // also an empty element: PostgreSQL's own error
    o.writeFloatBE(VALUE, w);
    w += 4;
    i = end;
    while (i < z && b[i] === 0x20) i++;
    if (i === z) break;
    if (b[i] !== 0x2c) return false;
    i += 1;
  }
  const dim = (w - at - 8) / 4;
  if (dim > MAX_DIM) return false;
  o.writeInt32BE(w - at - 4, at);
  o.writeInt16BE(dim, at + 4);
  o.writeInt16BE(0, at + 6);
  out.pos = w;
  return true;
}

// by type OID (function declarations above are hoisted; this map is built once the module has loaded)
const BY_OID = new Map([
  [OID.jsonb, jsonbField], [OID.int2, int2Field], [OID.int4, int4Field], [OID.int8, int8Field],
  [OID.float4, float4Field], [OID.float8, float8Field], [OID.bool, boolField], [OID.uuid, uuidField],
]);
