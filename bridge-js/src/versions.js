// Versions of installed packages, read from their package.json (their exports do not expose it).
import { readFileSync } from 'node:fs';

export function packageVersion(name) {
  const entry = new URL(import.meta.resolve(name));
  let dir = new URL('.', entry);
  for (let i = 0; i < 5; i++) {
    try {
      const pkg = JSON.parse(readFileSync(new URL('package.json', dir), 'utf8'));
      if (pkg.name === name) return pkg.version;
    } catch {
      // not here; go up
    }
    dir = new URL('..', dir);
  }
  return 'unknown';
}
