// Human-readable log lines on stderr ("LEVEL message"); stdout is reserved for the JSON ready/error line.
const LEVELS = { debug: 10, info: 20, warn: 30, error: 40 };

export function createLogger(level = 'info') {
  const min = LEVELS[level] ?? LEVELS.info;
  const out = (lvl) => (msg) => {
    if (LEVELS[lvl] >= min) process.stderr.write(`${lvl.toUpperCase()} ${msg}\n`);
  };
  return {
    level,
    isDebug: min <= LEVELS.debug,
    debug: out('debug'),
    info: out('info'),
    warn: out('warn'),
    error: out('error'),
  };
}

export const LOG_LEVELS = Object.keys(LEVELS);
