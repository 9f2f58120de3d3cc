// PostgreSQL wire protocol v3: framing, the few messages the front end builds, and cheap parsers.
// Reference: https://www.postgresql.org/docs/current/protocol-message-formats.html

export const SSL_REQUEST = 80877103;
export const GSSENC_REQUEST = 80877104;
export const CANCEL_REQUEST = 80877102;
export const PROTOCOL_3_0 = 196608;

export const MAX_STARTUP_PACKET = 10000; // PostgreSQL's own limit
export const MAX_MESSAGE_LEN = 1 << 30; // 1 GiB, PostgreSQL's PQ_LARGE_MESSAGE_LIMIT
export const SMALL_MESSAGE_LEN = 10000; // PQ_SMALL_MESSAGE_LIMIT: every other message type
export const MAX_AUTH_MESSAGE_LEN = 65535; // PG_MAX_AUTH_TOKEN_LENGTH

const LARGE_TYPES = new Set([...'QPBFdcf'].map((c) => c.charCodeAt(0)));
const SMALL_TYPES = new Set([...'DECSHX'].map((c) => c.charCodeAt(0)));

/** What a ready session may send, as PostgreSQL's SocketBackend decides it: type -> max length, -1 refused. */
export function clientMessageLimit(type) {
  if (LARGE_TYPES.has(type)) return MAX_MESSAGE_LEN;
  if (SMALL_TYPES.has(type)) return SMALL_MESSAGE_LEN;
  return -1;
}

/** During authentication only SASL responses ('p') are expected. */
export function authMessageLimit(type) {
  return type === 0x70 ? MAX_AUTH_MESSAGE_LEN : -1;
}

export class ProtocolError extends Error {
  constructor(message, code = '08P01') {
    super(message);
    this.name = 'ProtocolError';
    this.code = code;
  }
}

// ---- framing ---------------------------------------------------------------------------------------

/**
 * Accumulates socket chunks and cuts them into messages. Before the startup packet is done, messages
 * have no type byte (`startup` mode). Each message is { type, buf, sql, memo } where buf is the whole
 * message including its 5-byte header (type 0 and a 4-byte header for startup packets); sql (a Query's
 * text) and memo (batch.js) are filled in later, declared here so every message has one shape.
 */
export class FrameReader {
  constructor(maxMessage = MAX_MESSAGE_LEN) {
    this.chunks = []; // received and not yet consumed; joined only when a whole message is there
    this.total = 0;
    this.startup = true;
    this.maxMessage = maxMessage;
    this.limitFor = null; // type byte -> largest allowed length, or -1 for a type that is not allowed
  }

  /** Check each message's type and length from its header, before waiting for its body. */
  setLimits(limitFor) {
    this.limitFor = limitFor;
  }

  push(chunk) {
    this.chunks.push(chunk);
    this.total += chunk.length;
  }

  /** The first chunk, joined with the next ones until it holds at least n bytes (total >= n). */
  head(n) {
    if (this.chunks[0].length >= n) return this.chunks[0];
    let have = 0;
    let k = 0;
    while (have < n) have += this.chunks[k++].length;
    const joined = Buffer.concat(this.chunks.slice(0, k), have);
    this.chunks.splice(0, k, joined);
    return joined;
  }

  take(n) {
    const first = this.head(n);
    const out = first.subarray(0, n);
    if (first.length === n) this.chunks.shift();
    else this.chunks[0] = first.subarray(n);
    this.total -= n;
    return out;
  }

  /** Next complete message, or null. Throws ProtocolError on a malformed header. */
  next() {
    if (this.startup) {
      if (this.total < 4) return null;
      const len = this.head(4).readInt32BE(0);
      if (len < 8 || len > MAX_STARTUP_PACKET) throw new ProtocolError(`invalid length of startup packet (${len})`);
      if (this.total < len) return null;
      return { type: 0, buf: this.take(len), sql: undefined, memo: null };
    }
    if (this.total < 1) return null;
    const type = this.head(1)[0];
    const limit = this.limitFor ? this.limitFor(type) : this.maxMessage;
    if (limit < 0) throw new ProtocolError(`invalid frontend message type ${type} ("${String.fromCharCode(type)}")`);
    if (this.total < 5) return null;
    const len = this.head(5).readInt32BE(1);
    if (len < 4 || len > limit) {
      throw new ProtocolError(`invalid message length ${len} for message type "${String.fromCharCode(type)}"`);
    }
    if (this.total < len + 1) return null;
    return { type, buf: this.take(len + 1), sql: undefined, memo: null };
  }

  /** Bytes received and not yet cut into messages. */
  pending() {
    return this.total;
  }
}

// ---- builders ----------------------------------------------------------------------------------------

function msg(type, body) {
  const out = Buffer.allocUnsafe(body.length + 5);
  out[0] = type;
  out.writeInt32BE(body.length + 4, 1);
  body.copy(out, 5);
  return out;
}

function cstr(s) {
  return Buffer.from(`${s}\0`, 'utf8');
}

function int32(n) {
  const b = Buffer.allocUnsafe(4);
  b.writeInt32BE(n, 0);
  return b;
}

function int16(n) {
  const b = Buffer.allocUnsafe(2);
  b.writeInt16BE(n, 0);
  return b;
}

export const authOk = () => msg(0x52, int32(0));
export const authSASL = (mechanisms) => msg(0x52, Buffer.concat([int32(10), ...mechanisms.map(cstr), Buffer.from([0])]));
export const authSASLContinue = (data) => msg(0x52, Buffer.concat([int32(11), Buffer.from(data, 'utf8')]));
export const authSASLFinal = (data) => msg(0x52, Buffer.concat([int32(12), Buffer.from(data, 'utf8')]));
export const parameterStatus = (name, value) => msg(0x53, Buffer.concat([cstr(name), cstr(value)]));
export function backendKeyData(pid, secret) {
  const body = Buffer.allocUnsafe(8);
  body.writeInt32BE(pid, 0);
  body.writeUInt32BE(secret, 4);
  return msg(0x4b, body);
}
export const readyForQuery = (status) => msg(0x5a, Buffer.from(status, 'latin1'));
export const commandComplete = (tag) => msg(0x43, cstr(tag));
export const parseComplete = () => msg(0x31, Buffer.alloc(0));
export const negotiateProtocolVersion = (minor, unsupported) =>
  msg(0x76, Buffer.concat([int32(minor), int32(unsupported.length), ...unsupported.map(cstr)]));

/** CopyInResponse: overall format (0 text, 1 binary) and per-column formats. */
export function copyInResponse(format, columns = 0) {
  const parts = [Buffer.from([format]), int16(columns)];
  for (let i = 0; i < columns; i++) parts.push(int16(format));
  return msg(0x47, Buffer.concat(parts));
}

/** ErrorResponse ('E') or, with notice=true, NoticeResponse ('N'). */
export function errorResponse({ severity = 'ERROR', code, message, detail, hint }, notice = false) {
  const parts = [cstr(`S${severity}`), cstr(`V${severity}`), cstr(`C${code}`), cstr(`M${message}`)];
  if (detail) parts.push(cstr(`D${detail}`));
  if (hint) parts.push(cstr(`H${hint}`));
  parts.push(Buffer.from([0]));
  return msg(notice ? 0x4e : 0x45, Buffer.concat(parts));
}

export const query = (sql) => msg(0x51, cstr(sql));
export const sync = () => msg(0x53, Buffer.alloc(0));
export const flush = () => msg(0x48, Buffer.alloc(0));
export const closeStatement = (name) => msg(0x43, Buffer.concat([Buffer.from('S'), cstr(name)]));

export function startupMessage(params) {
  const parts = [int32(PROTOCOL_3_0)];
  for (const [k, v] of Object.entries(params)) parts.push(cstr(k), cstr(v));
  parts.push(Buffer.from([0]));
  const body = Buffer.concat(parts);
  return Buffer.concat([int32(body.length + 4), body]);
}

// ---- parsers: frontend messages --------------------------------------------------------------------

/** Read a NUL-terminated string at `pos`; returns [string, next position]. */
export function readCString(buf, pos) {
  const end = buf.indexOf(0, pos);
  if (end < 0) throw new ProtocolError('invalid string in message');
  return [buf.toString('utf8', pos, end), end + 1];
}

/** Parse a startup packet (length + code + key/value pairs) into { code, params } or { code, pid, secret }. */
export function parseStartup(buf) {
  const code = buf.readInt32BE(4);
  if (code === CANCEL_REQUEST) {
    if (buf.length < 16) throw new ProtocolError('invalid cancel request');
    return { code, pid: buf.readInt32BE(8), secret: buf.readUInt32BE(12) };
  }
  const params = {};
  let pos = 8;
  if (code !== SSL_REQUEST && code !== GSSENC_REQUEST) {
    while (pos < buf.length && buf[pos] !== 0) {
      let key;
      let value;
      [key, pos] = readCString(buf, pos);
      if (pos >= buf.length) throw new ProtocolError(`invalid startup packet layout: missing value for "${key}"`);
      [value, pos] = readCString(buf, pos);
      params[key] = value;
    }
  }
  return { code, params };
}

/** Statement or portal name fields of P/B/D/C/E messages, with their byte ranges for rewriting. */
export function parseNameAt(buf, pos) {
  const end = buf.indexOf(0, pos);
  if (end < 0 || end >= buf.length) throw new ProtocolError('invalid string in message');
  return { name: buf.toString('utf8', pos, end), start: pos, end };
}

/** A message's cache (batch.js, statements.js), valid while its buf is the same. */
export function memoOf(m) {
  let memo = m.memo;
  if (!memo || memo.buf !== m.buf) memo = m.memo = { buf: m.buf, ref: null, alone: undefined, unnamedParse: false };
  return memo;
}

/** The statement name of a Bind, or of a Describe/Close of a statement: { name, start, end }, cached. */
export function statementOf(m) {
  const memo = memoOf(m);
  if (memo.ref === null) memo.ref = parseNameAt(m.buf, m.type === 0x42 ? m.buf.indexOf(0, 5) + 1 : 6);
  return memo.ref;
}

/** Check the NUL-terminated name fields of Parse/Bind/Describe/Close (what the front end rewrites). */
export function checkNames(m) {
  const buf = m.buf;
  switch (m.type) {
    case 0x50: // Parse: name, query
    case 0x42: { // Bind: portal, statement
      const first = buf.indexOf(0, 5);
      if (first < 0 || buf.indexOf(0, first + 1) < 0) throw new ProtocolError('invalid string in message');
      break;
    }
    case 0x44: // Describe, Close: kind, name
    case 0x43:
      if (buf.length < 7 || (buf[5] !== 0x53 && buf[5] !== 0x50)) throw new ProtocolError(`invalid ${m.type === 0x44 ? 'DESCRIBE' : 'CLOSE'} message subtype ${buf[5]}`);
      if (buf.indexOf(0, 6) < 0) throw new ProtocolError('invalid string in message');
      break;
    default:
  }
}

/** Replace the byte range [start, end) of a message with `name` (a string or its bytes) and fix the length header. */
export function replaceRange(buf, start, end, name) {
  const rep = typeof name === 'string' ? Buffer.from(name, 'utf8') : name;
  const out = Buffer.allocUnsafe(buf.length - (end - start) + rep.length);
  buf.copy(out, 0, 0, start);
  rep.copy(out, start);
  buf.copy(out, start + rep.length, end);
  out.writeInt32BE(out.length - 1, 1);
  return out;
}

// ---- parsers: backend messages ---------------------------------------------------------------------

/** Call fn(type, start, end) for each backend message in buf (end exclusive, start at the type byte). */
export function eachMessage(buf, fn) {
  let pos = 0;
  while (pos + 5 <= buf.length) {
    const end = pos + 1 + buf.readInt32BE(pos + 1);
    if (end > buf.length) break;
    if (fn(buf[pos], pos, end) === false) return;
    pos = end;
  }
}

/** Decode backend messages into small objects (for internal, non-hot-path use). */
export function parseMessages(buf) {
  const out = [];
  eachMessage(buf, (type, start, end) => {
    const m = { type, start, end };
    if (type === 0x53) {
      const [name, p] = readCString(buf, start + 5);
      [m.value] = readCString(buf, p);
      m.name = name;
    } else if (type === 0x5a) {
      m.status = String.fromCharCode(buf[start + 5]);
    } else if (type === 0x45 || type === 0x4e) {
      m.fields = errorFields(buf, start, end);
    } else if (type === 0x43) {
      [m.tag] = readCString(buf, start + 5);
    } else if (type === 0x44) {
      m.values = dataRowValues(buf, start, end);
    }
    out.push(m);
  });
  return out;
}

export function errorFields(buf, start, end) {
  const fields = {};
  let pos = start + 5;
  while (pos < end && buf[pos] !== 0) {
    const key = String.fromCharCode(buf[pos]);
    const [value, next] = readCString(buf, pos + 1);
    fields[key] = value;
    pos = next;
  }
  return fields;
}

export function dataRowValues(buf, start) {
  const n = buf.readInt16BE(start + 5);
  const values = [];
  let pos = start + 7;
  for (let i = 0; i < n; i++) {
    const len = buf.readInt32BE(pos);
    pos += 4;
    if (len < 0) values.push(null);
    else {
      values.push(buf.toString('utf8', pos, pos + len));
      pos += len;
    }
  }
  return values;
}

/** Notification ('A'): { pid, channel, payload }. */
export function parseNotification(buf, start) {
  const pid = buf.readInt32BE(start + 5);
  const [channel, p] = readCString(buf, start + 9);
  const [payload] = readCString(buf, p);
  return { pid, channel, payload };
}

export function notification(pid, channel, payload) {
  return msg(0x41, Buffer.concat([int32(pid), cstr(channel), cstr(payload)]));
}

export function rebuildError(type, fields) {
  const parts = [];
  for (const [k, v] of Object.entries(fields)) parts.push(Buffer.from(k, 'latin1'), cstr(v));
  parts.push(Buffer.from([0]));
  return msg(type, Buffer.concat(parts));
}
