// Client encodings. The backend's database encoding is UTF8, and PGlite's encoding conversion functions
// do not work: a client_encoding of LATIN1, LATIN9, WIN1252, EUC_JP ... makes the first converted text
// crash the WASM backend (`TypeError: _ is not a function`) or hang it, which restarts the engine under
// every client. So the front end lets only the encodings that need no conversion reach the backend (UTF8,
// and SQL_ASCII, which passes bytes through as PostgreSQL does) and refuses every other one with the error
// PostgreSQL itself gives for a conversion it does not have: at startup FATAL 0A000 "conversion between
// LATIN9 and UTF8 is not supported"; for SET client_encoding / SET NAMES / set_config('client_encoding')
// ERROR 0A000 'invalid value for parameter "client_encoding"' with that detail; an unknown name 22023.

// PostgreSQL's client encoding names (pg_enc2name_tbl) and aliases (pg_encname_tbl), as
// clean_encoding_name() compares them: lower case, letters and digits only.
const CANONICAL = {
  sqlascii: 'SQL_ASCII', utf8: 'UTF8', unicode: 'UTF8',
  eucjp: 'EUC_JP', euccn: 'EUC_CN', euckr: 'EUC_KR', euctw: 'EUC_TW', eucjis2004: 'EUC_JIS_2004',
  muleinternal: 'MULE_INTERNAL',
  latin1: 'LATIN1', latin2: 'LATIN2', latin3: 'LATIN3', latin4: 'LATIN4', latin5: 'LATIN5',
  latin6: 'LATIN6', latin7: 'LATIN7', latin8: 'LATIN8', latin9: 'LATIN9', latin10: 'LATIN10',
  iso88591: 'LATIN1', iso88592: 'LATIN2', iso88593: 'LATIN3', iso88594: 'LATIN4', iso88599: 'LATIN5',
  iso885910: 'LATIN6', iso885913: 'LATIN7', iso885914: 'LATIN8', iso885915: 'LATIN9', iso885916: 'LATIN10',
  iso88595: 'ISO_8859_5', iso88596: 'ISO_8859_6', iso88597: 'ISO_8859_7', iso88598: 'ISO_8859_8',
  win1250: 'WIN1250', win1251: 'WIN1251', win1252: 'WIN1252', win1253: 'WIN1253', win1254: 'WIN1254',
  win1255: 'WIN1255', win1256: 'WIN1256', win1257: 'WIN1257', win1258: 'WIN1258', win866: 'WIN866',
  win874: 'WIN874', win: 'WIN1251', alt: 'WIN866', abc: 'WIN1258', tcvn: 'WIN1258', tcvn5712: 'WIN1258',
  vscii: 'WIN1258', windows1250: 'WIN1250', windows1251: 'WIN1251', windows1252: 'WIN1252',
  windows1253: 'WIN1253', windows1254: 'WIN1254', windows1255: 'WIN1255', windows1256: 'WIN1256',
  windows1257: 'WIN1257', windows1258: 'WIN1258', windows866: 'WIN866', windows874: 'WIN874',
  koi8: 'KOI8R', koi8r: 'KOI8R', koi8u: 'KOI8U',
  sjis: 'SJIS', shiftjis: 'SJIS', mskanji: 'SJIS', shiftjis2004: 'SHIFT_JIS_2004',
  big5: 'BIG5', gbk: 'GBK', cp936: 'GBK', uhc: 'UHC', gb18030: 'GB18030', johab: 'JOHAB',
};

/** Encodings the backend can serve as they are: no conversion runs. */
const SERVED = new Set(['UTF8', 'SQL_ASCII']);

function clean(name) {
  return String(name).toLowerCase().replace(/[^a-z0-9]/g, '');
}

/**
 * Why a client_encoding value cannot be used: null if it can (UTF8, SQL_ASCII, DEFAULT), else
 * { code, message, detail } as PostgreSQL words it at SET time, or with `startup` at connection time.
 */
export function refuseEncoding(value, { startup = false } = {}) {
  if (value === undefined || value === null) return null;
  const raw = String(value);
  if (!startup && /^default$/i.test(raw.trim())) return null;
  const canonical = CANONICAL[clean(raw)];
  if (!canonical) return { code: '22023', message: `invalid value for parameter "client_encoding": "${raw}"` };
  if (SERVED.has(canonical)) return null;
  const conversion = `conversion between ${canonical} and UTF8 is not supported`;
  if (startup) return { code: '0A000', message: conversion, hint: 'hive-bridge serves UTF8 (or SQL_ASCII) clients only.' };
  return {
    code: '0A000',
    message: `invalid value for parameter "client_encoding": "${raw}"`,
    detail: `${conversion[0].toUpperCase()}${conversion.slice(1)}.`,
    hint: 'hive-bridge serves UTF8 (or SQL_ASCII) clients only: convert text in the application.',
  };
}

const VALUE = String.raw`('(?:[^']|'')*'|"(?:[^"]|"")*"|[A-Za-z0-9_.\-]+)`;
const SET_RE = new RegExp(String.raw`\bset\s+(?:session\s+|local\s+)?client_encoding\s*(?:to\b|=)\s*${VALUE}`, 'gi');
const NAMES_RE = new RegExp(String.raw`\bset\s+names\s+${VALUE}`, 'gi');
const SET_CONFIG_RE = /\bset_config\s*\(\s*'client_encoding'\s*,\s*'((?:[^']|'')*)'/gi;

function unquote(token) {
  if (token.startsWith("'")) return token.slice(1, -1).replace(/''/g, "'");
  if (token.startsWith('"')) return token.slice(1, -1).replace(/""/g, '"');
  return token;
}

/** The first client_encoding an SQL text asks for that must be refused (see refuseEncoding), or null. */
export function refuseEncodingIn(sql) {
  if (sql.length > 100000 || !/client_encoding|names/i.test(sql)) return null;
  for (const re of [SET_RE, NAMES_RE, SET_CONFIG_RE]) {
    re.lastIndex = 0;
    for (const m of sql.matchAll(re)) {
      const value = re === SET_CONFIG_RE ? m[1].replace(/''/g, "'") : unquote(m[1]);
      const refused = refuseEncoding(value);
      if (refused) return refused;
    }
  }
  return null;
}
