// The few things the front end must recognise in SQL text, because the one shared backend session would
// otherwise let one client's command affect every other client. Each classifier only matches a query that
// is a single statement of that kind; anything else goes to the backend untouched.

/** Strip leading whitespace and -- / block comments. */
export function lead(sql) {
  let s = sql;
  for (;;) {
    const t = s.replace(/^\s+/, '');
    if (t.startsWith('--')) {
      const nl = t.indexOf('\n');
      s = nl < 0 ? '' : t.slice(nl + 1);
    } else if (t.startsWith('/*')) {
      const end = t.indexOf('*/');
      s = end < 0 ? '' : t.slice(end + 2);
    } else return t;
  }
}

const IDENT = String.raw`("(?:[^"]|"")+"|[A-Za-z_\u0080-\uffff][A-Za-z0-9_$\u0080-\uffff]*)`;

/** An SQL identifier as PostgreSQL folds it: quoted kept as is, unquoted lower-cased. */
export function identValue(token) {
  if (token.startsWith('"')) return token.slice(1, -1).replace(/""/g, '"');
  return token.toLowerCase();
}

export function quoteIdent(name) {
  return `"${name.replace(/"/g, '""')}"`;
}

export function quoteLiteral(value) {
  return `'${String(value).replace(/'/g, "''")}'`;
}

/** COPY ... FROM STDIN: returns { binary } or null. */
export function copyFromStdin(sql) {
  const s = lead(sql);
  if (!/^copy\b/i.test(s)) return null;
  if (!/\bfrom\s+stdin\b/i.test(s)) return null;
  const binary = /\bformat\s*'?binary'?/i.test(s) || /\bstdin\s+(with\s+)?(\(\s*)?binary\b/i.test(s) || /^copy\s+binary\b/i.test(s);
  return { binary };
}

const LISTEN_RE = new RegExp(String.raw`^listen\s+${IDENT}\s*;?\s*$`, 'i');
const UNLISTEN_RE = new RegExp(String.raw`^unlisten\s+(\*|${IDENT})\s*;?\s*$`, 'i');
const DEALLOCATE_RE = new RegExp(String.raw`^deallocate\s+(?:prepare\s+)?(all|${IDENT})\s*;?\s*$`, 'i');

/** LISTEN channel: the channel name, or null. */
export function listenChannel(sql) {
  const m = LISTEN_RE.exec(lead(sql));
  return m ? identValue(m[1]) : null;
}

/** UNLISTEN channel | *: '*' or the channel name, or null. */
export function unlistenChannel(sql) {
  const m = UNLISTEN_RE.exec(lead(sql));
  if (!m) return null;
  return m[1] === '*' ? '*' : identValue(m[1]);
}

const UNLISTEN_ALL_RE = new RegExp(String.raw`\bunlisten\s+(\*|${IDENT})`, 'gi');

/** Whether a query may contain a command that changes the whole backend session for everyone. */
export function mayAffectSession(sql) {
  return /unlisten|discard|deallocate/i.test(sql);
}

/** Every UNLISTEN target in a (possibly multi-statement) query: '*' or channel names. */
export function unlistenTargets(sql) {
  return [...sql.matchAll(UNLISTEN_ALL_RE)].map((m) => (m[1] === '*' ? '*' : identValue(m[1])));
}

/** DEALLOCATE [PREPARE] name | ALL: { all: true } or { name }, or null. */
export function deallocate(sql) {
  const m = DEALLOCATE_RE.exec(lead(sql));
  if (!m) return null;
  if (/^all$/i.test(m[1])) return { all: true };
  return { name: identValue(m[1]) };
}

export function isDiscardAll(sql) {
  return /^discard\s+all\s*;?\s*$/i.test(lead(sql));
}

/**
 * Settings from a startup packet's `options` (libpq PGOPTIONS): "-c name=value" and "--name=value",
 * separated by spaces, a backslash escaping the next character.
 */
export function parseStartupOptions(options) {
  const tokens = [];
  let cur = '';
  let has = false;
  for (let i = 0; i < options.length; i++) {
    const ch = options[i];
    if (ch === '\\' && i + 1 < options.length) {
      cur += options[++i];
      has = true;
    } else if (/\s/.test(ch)) {
      if (has) tokens.push(cur);
      cur = '';
      has = false;
    } else {
      cur += ch;
      has = true;
    }
  }
  if (has) tokens.push(cur);
  const settings = [];
  for (let i = 0; i < tokens.length; i++) {
    let kv = null;
    if (tokens[i] === '-c' && i + 1 < tokens.length) kv = tokens[++i];
    else if (tokens[i].startsWith('-c')) kv = tokens[i].slice(2);
    else if (tokens[i].startsWith('--')) kv = tokens[i].slice(2);
    if (kv === null) throw new Error(`invalid command-line argument for server process: ${tokens[i]}`);
    const eq = kv.indexOf('=');
    if (eq <= 0) throw new Error(`-c ${kv} requires a value`);
    settings.push([kv.slice(0, eq).replace(/-/g, '_'), kv.slice(eq + 1)]);
  }
  return settings;
}

/** A duration setting (statement_timeout etc.) in milliseconds; bare numbers are milliseconds. */
export function durationMs(value) {
  if (value === undefined || value === null) return 0;
  const m = /^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|min|h|d)?\s*$/i.exec(String(value));
  if (!m) return 0;
  const n = Number(m[1]);
  const unit = (m[2] || 'ms').toLowerCase();
  const mult = { us: 0.001, ms: 1, s: 1000, min: 60000, h: 3600000, d: 86400000 }[unit];
  return Math.round(n * mult);
}
