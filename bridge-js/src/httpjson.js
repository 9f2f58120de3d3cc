// The admin endpoint's POST routes: bearer-token check, a small JSON body, one JSON answer.

export function reply(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

/** An error whose message is the answer, with its HTTP status (default 409: the request was refused). */
export class RouteError extends Error {
  constructor(status, message, extra = {}) {
    super(message);
    this.status = status;
    this.extra = extra;
  }
}

/** Whether the request carries the server password as a bearer token (or none is set); answers 401 if not. */
export function authorized(server, req, res, url) {
  const token = server.adminToken;
  if (token && req.headers.authorization !== `Bearer ${token}`) {
    reply(res, 401, { error: `${url} needs the server password as a bearer token` });
    return false;
  }
  return true;
}

/**
 * Read a JSON body of at most `limit` bytes, then answer `await run(body)` with 200, a RouteError with its
 * status, or any other error with 409.
 */
export function postJson(server, req, res, url, run, limit = 65536) {
  if (!authorized(server, req, res, url)) return;
  let text = '';
  req.setEncoding('utf8');
  req.on('data', (chunk) => {
    text += chunk;
    if (text.length > limit) req.destroy();
  });
  req.on('end', async () => {
    let body = null;
    try {
      body = JSON.parse(text);
    } catch {
      // run() says what it needed
    }
    try {
      reply(res, 200, await run(body && typeof body === 'object' ? body : {}));
    } catch (err) {
      reply(res, err instanceof RouteError ? err.status : 409, { error: err.message, ...(err.extra ?? {}) });
    }
  });
}

/** body.path, or a 400 saying what to send. */
export function pathOf(body, example) {
  const target = body.path;
  if (typeof target !== 'string' || !target) throw new RouteError(400, `send JSON {"path": "${example}"}`);
  return target;
}
