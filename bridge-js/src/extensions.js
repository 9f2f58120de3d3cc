// Every extension PGlite ships, offered by every server, and loaded only when it is used.
//
// PGlite's own way to add an extension (an object whose setup() returns a bundlePath) gunzips the bundle
// into its in-memory file system and compiles every .so in it at each start: for all of them that
// measured about +2 s and +60 MB RSS per start (scripts/extension_cost.py). Instead, each bundle is
// extracted once per PGlite version into the cache directory (like the data-dir template), that directory
// is mounted into PGlite's file system (NODEFS), and each of its files is symlinked into PostgreSQL's
// share/ and lib/ directories before PostgreSQL starts. PostgreSQL reads a control or script file only
// for CREATE EXTENSION (or the pg_available_extensions views), and compiles a library (dlopen) only when
// one of its functions is first called, so an unused extension costs a symlink.
//
// This module runs on both sides: plan() in the main thread (finds the bundles, extracts them, decides
// what is offered), pgliteExtensions() in the PGlite worker (turns the plan into PGlite's `extensions`).
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import crypto from 'node:crypto';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { packageVersion } from './versions.js';
import { StartError, cacheRoot } from './datadir.js';

/** The packages whose dist/ directory holds extension bundles (NAME.tar.gz). */
const BUNDLE_PACKAGES = ['@electric-sql/pglite', '@electric-sql/pglite-pgvector'];
/** Where the extracted bundles appear inside PGlite's file system. */
const MOUNT = '/hive-bridge-extensions';
const MANIFEST = 'manifest.json';
const MANIFEST_FORMAT = 2; // part of the cache key: a new format extracts afresh
/** Names users know from elsewhere (the stock pglite-server's `-e pgvector`). */
const ALIASES = { pgvector: 'vector' };

/** The installed bundles: [{ bundle: 'citext', file: '/…/dist/citext.tar.gz', pkg, version }], sorted. */
export function findBundles() {
  const found = [];
  for (const pkg of BUNDLE_PACKAGES) {
    let dist;
    try {
      dist = path.dirname(fileURLToPath(import.meta.resolve(pkg)));
    } catch {
      continue; // not installed: it ships no extensions then
    }
    const version = packageVersion(pkg);
    for (const f of fs.readdirSync(dist)) {
      if (f.endsWith('.tar.gz')) found.push({ bundle: f.slice(0, -'.tar.gz'.length), file: path.join(dist, f), pkg, version });
    }
  }
  return found.sort((a, b) => (a.bundle < b.bundle ? -1 : a.bundle > b.bundle ? 1 : 0));
}

/**
 * The regular files of a (GNU or POSIX) tar archive: [{ name, data }]. Bundles hold only regular files;
 * anything else (links, devices) is skipped, and a name that would leave the target directory is refused.
 */
export function untar(buf) {
  const files = [];
  let off = 0;
  let longName = null;
  const field = (h, a, b) => {
    const s = h.subarray(a, b);
    const z = s.indexOf(0);
    return s.subarray(0, z < 0 ? s.length : z).toString('utf8');
  };
  while (off + 512 <= buf.length) {
    const h = buf.subarray(off, off + 512);
    if (h.every((b) => b === 0)) break; // end-of-archive block
    const size = parseInt(field(h, 124, 136).trim() || '0', 8);
    const type = String.fromCharCode(h[156] || 0x30);
    const data = buf.subarray(off + 512, off + 512 + size);
    off += 512 + Math.ceil(size / 512) * 512;
    if (type === 'L') {
      longName = field(data, 0, data.length);
      continue;
    }
    if (type === 'x') {
      const m = /\d+ path=([^\n]*)\n/.exec(data.toString('utf8'));
      if (m) longName = m[1];
      continue;
    }
    const prefix = h.subarray(257, 263).toString('latin1') === 'ustar\u0000' ? field(h, 345, 500) : ''; // POSIX only
    const name = longName ?? (prefix ? `${prefix}/${field(h, 0, 100)}` : field(h, 0, 100));
    longName = null;
    if (type !== '0' && type !== '\0' && type !== '7') continue;
    const norm = path.posix.normalize(name);
    if (norm.startsWith('/') || norm === '..' || norm.startsWith('../')) throw new Error(`unsafe path ${JSON.stringify(name)} in extension bundle`);
    files.push({ name: norm, data });
  }
  return files;
}

/** What a bundle provides: its files, the extensions (control files) among them and what they require. */
function describe(entries) {
  const files = entries.map((e) => e.name).sort();
  const extensions = [];
  const requires = {};
  for (const e of entries) {
    if (!e.name.startsWith('share/postgresql/extension/') || !e.name.endsWith('.control')) continue;
    const ext = path.posix.basename(e.name, '.control');
    extensions.push(ext);
    const m = /^\s*requires\s*=\s*'([^']*)'/m.exec(e.data.toString('utf8'));
    requires[ext] = m ? m[1].split(',').map((r) => r.trim()).filter(Boolean) : [];
  }
  return { files, extensions: extensions.sort(), requires };
}

/** The extracted bundles are valid for exactly this set of bundle files. */
function cacheKey(bundles) {
  const h = crypto.createHash('sha256');
  h.update(`manifest ${MANIFEST_FORMAT}\n`);
  for (const b of bundles) h.update(`${b.pkg}@${b.version}/${b.bundle}:${fs.statSync(b.file).size}\n`);
  return h.digest('hex').slice(0, 12);
}

/**
 * Extract every bundle once into CACHE/extensions/pglite-VERSION-KEY/BUNDLE/… (into a temporary directory,
 * renamed into place: a concurrent extractor's result is kept and ours dropped). Returns { root, manifest }.
 */
export function extractBundles(bundles, root, log) {
  const manifestPath = path.join(root, MANIFEST);
  let manifest = null;
  try {
    manifest = JSON.parse(fs.readFileSync(manifestPath, 'utf8'));
  } catch {
    // not extracted yet (or cut short): extract
  }
  if (manifest) {
    repair(bundles, root, manifest, log);
    return { root, manifest };
  }
  const t0 = Date.now();
  fs.mkdirSync(path.dirname(root), { recursive: true });
  const tmp = `${root}.tmp-${process.pid}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  manifest = { pglite_version: packageVersion('@electric-sql/pglite'), bundles: {} };
  try {
    for (const b of bundles) {
      const entries = untar(zlib.gunzipSync(fs.readFileSync(b.file)));
      for (const e of entries) {
        const dst = path.join(tmp, b.bundle, e.name);
        fs.mkdirSync(path.dirname(dst), { recursive: true });
        fs.writeFileSync(dst, e.data);
      }
      manifest.bundles[b.bundle] = describe(entries);
    }
    fs.writeFileSync(path.join(tmp, MANIFEST), `${JSON.stringify(manifest)}\n`);
    fs.renameSync(tmp, root);
  } catch (err) {
    fs.rmSync(tmp, { recursive: true, force: true });
    if (!fs.existsSync(manifestPath)) throw err;
    return { root, manifest: JSON.parse(fs.readFileSync(manifestPath, 'utf8')) };
  }
  log.info(`extracted ${bundles.length} extension bundles into ${root} in ${Date.now() - t0} ms (once per PGlite version)`);
  return { root, manifest };
}

/**
 * A file someone removed from the cache (a cache cleaner, a partial copy) would only fail at the first
 * CREATE EXTENSION that needs it: check them all (a few hundred stat calls) and extract a damaged bundle
 * again, file by file, in place (running servers may be reading the others).
 */
function repair(bundles, root, manifest, log) {
  for (const b of bundles) {
    const desc = manifest.bundles[b.bundle];
    if (!desc) throw new Error(`the extracted bundles in ${root} lack ${b.bundle}`);
    if (desc.files.every((f) => fs.existsSync(path.join(root, b.bundle, f)))) continue;
    for (const e of untar(zlib.gunzipSync(fs.readFileSync(b.file)))) {
      const dst = path.join(root, b.bundle, e.name);
      if (fs.existsSync(dst)) continue;
      fs.mkdirSync(path.dirname(dst), { recursive: true });
      const tmp = `${dst}.tmp-${process.pid}`;
      fs.writeFileSync(tmp, e.data);
      fs.renameSync(tmp, dst);
    }
    log.warn(`files of extension bundle ${b.bundle} were missing from ${root}: extracted them again`);
  }
}

/** Only describe the bundles (in memory), for when nothing can be written to the cache. */
function describeBundles(bundles) {
  const manifest = { pglite_version: packageVersion('@electric-sql/pglite'), bundles: {} };
  for (const b of bundles) manifest.bundles[b.bundle] = describe(untar(zlib.gunzipSync(fs.readFileSync(b.file))));
  return manifest;
}

/**
 * Which bundles serve the requested extensions: `all` (the default) is every bundle, including the
 * libraries without a control file that are only LOADed (auto_explain, …); `none` or nothing is none;
 * otherwise each name is an extension (citext, uuid-ossp, vector, …) or a bundle name.
 */
export function select(requested, manifest) {
  const byExtension = new Map();
  for (const [bundle, desc] of Object.entries(manifest.bundles)) {
    byExtension.set(bundle, bundle);
    for (const ext of desc.extensions) byExtension.set(ext, bundle);
  }
  const names = requested.map((n) => ALIASES[n] ?? n).filter((n) => n !== 'none');
  let bundles;
  if (names.includes('all')) bundles = Object.keys(manifest.bundles);
  else {
    const unknown = names.filter((n) => !byExtension.has(n));
    if (unknown.length) {
      const known = [...new Set(Object.values(manifest.bundles).flatMap((d) => d.extensions))].sort();
      throw new StartError('bad_args', `unknown extension(s) ${unknown.join(', ')}: PGlite ${manifest.pglite_version} ships ${known.join(', ')}`,
        'leave --extensions at its default (all), or name extensions from that list');
    }
    // and what they require (earthdistance needs cube), so CREATE EXTENSION … CASCADE works
    const wanted = [...names];
    for (let i = 0; i < wanted.length; i++) {
      const desc = manifest.bundles[byExtension.get(wanted[i])];
      for (const r of desc.requires?.[wanted[i]] ?? []) if (byExtension.has(r) && !wanted.includes(r)) wanted.push(r);
    }
    bundles = [...new Set(wanted.map((n) => byExtension.get(n)))];
  }
  bundles.sort();
  const offered = [...new Set(bundles.flatMap((b) => manifest.bundles[b].extensions))].sort();
  return { bundles, offered };
}

/**
 * Main thread: what the PGlite worker should offer, as a plain (structured-cloneable) object:
 * { offered: [extension names], mode: 'linked', root, links: [[bundle, relative path], …] }, or, when
 * the cache directory cannot be written, { mode: 'bundles', files: [bundle .tar.gz paths] }, which is
 * PGlite's own eager loading (correct, slower).
 */
export function plan(requested, { cacheDir, log }) {
  const bundles = findBundles();
  const root = path.join(cacheRoot(cacheDir), 'extensions', `pglite-${packageVersion('@electric-sql/pglite')}-${cacheKey(bundles)}`);
  let extracted = null;
  try {
    extracted = extractBundles(bundles, root, log);
  } catch (err) {
    log.warn(`cannot extract the extension bundles into ${root} (${err.message}); loading the requested ones eagerly at each start instead (slower; set HIVE_BRIDGE_CACHE_DIR to a writable directory)`);
  }
  const manifest = extracted ? extracted.manifest : describeBundles(bundles);
  const chosen = select(requested, manifest);
  if (!extracted) {
    const files = bundles.filter((b) => chosen.bundles.includes(b.bundle)).map((b) => b.file);
    return { offered: chosen.offered, mode: 'bundles', files };
  }
  const links = chosen.bundles.flatMap((b) => manifest.bundles[b].files.map((f) => [b, f]));
  return { offered: chosen.offered, mode: 'linked', root, links };
}

/** Worker: mount the extracted bundles and symlink their files into place (an emscripten preRun hook). */
function linkInto(mod, prefix, { root, links }) {
  const { FS } = mod;
  FS.mkdirTree(MOUNT);
  FS.mount(FS.filesystems.NODEFS, { root }, MOUNT);
  const dirs = new Set();
  for (const [bundle, rel] of links) {
    const target = `${prefix}/${rel}`;
    const dir = path.posix.dirname(target);
    if (!dirs.has(dir)) {
      FS.mkdirTree(dir);
      dirs.add(dir);
    }
    try {
      FS.symlink(`${MOUNT}/${bundle}/${rel}`, target);
    } catch (err) {
      if (err.errno !== 20) throw err; // EEXIST: PGlite's own file of that name stays
    }
  }
}

/** Worker: the `extensions` option of PGlite.create() for a plan made by plan(). */
export function pgliteExtensions(p) {
  if (!p) return {};
  if (p.mode === 'bundles') {
    return Object.fromEntries(p.files.map((f) => [path.basename(f, '.tar.gz'), pathToFileURL(f)]));
  }
  if (!p.links.length) return {};
  return {
    hive_bridge_extensions: {
      name: 'hive-bridge-extensions',
      setup: async (_pg, emscriptenOpts) => ({
        emscriptenOpts: {
          ...emscriptenOpts,
          preRun: [...(emscriptenOpts.preRun ?? []), (mod) => linkInto(mod, emscriptenOpts.WASM_PREFIX ?? mod.WASM_PREFIX, p)],
        },
      }),
    },
  };
}
