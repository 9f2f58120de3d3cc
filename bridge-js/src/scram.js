// Server side of SCRAM-SHA-256 (RFC 5802 / RFC 7677), as PostgreSQL speaks it: no channel binding,
// the user name in the SCRAM message is ignored (the startup packet's user counts).
import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';

const ITERATIONS = 4096;

const hmac = (key, data) => createHmac('sha256', key).update(data).digest();
const sha256 = (data) => createHash('sha256').update(data).digest();

export class ScramVerifier {
  /** Derive the stored keys once; the password itself is not kept. */
  constructor(password) {
    this.salt = randomBytes(16);
    this.iterations = ITERATIONS;
    const salted = pbkdf2Sync(password.normalize('NFKC'), this.salt, this.iterations, 32, 'sha256');
    this.storedKey = sha256(hmac(salted, 'Client Key'));
    this.serverKey = hmac(salted, 'Server Key');
  }
}

export class ScramError extends Error {}

/** One authentication exchange. */
export class ScramExchange {
  constructor(verifier) {
    this.verifier = verifier;
    this.clientFirstBare = null;
    this.serverFirst = null;
    this.nonce = null;
  }

  /** SASLInitialResponse payload (client-first-message) → server-first-message. */
  start(clientFirst) {
    // gs2-header: "n,," (no channel binding) or "y,," (client supports it, we do not offer it).
    const m = /^([ny]),(?:a=[^,]*)?,(.*)$/.exec(clientFirst);
    if (!m) throw new ScramError('malformed SCRAM message (channel binding is not supported)');
    this.clientFirstBare = m[2];
    const attrs = Object.fromEntries(this.clientFirstBare.split(',').map((kv) => [kv[0], kv.slice(2)]));
    if (!attrs.r) throw new ScramError('malformed SCRAM message (no nonce)');
    this.nonce = attrs.r + randomBytes(18).toString('base64');
    this.serverFirst = `r=${this.nonce},s=${this.verifier.salt.toString('base64')},i=${this.verifier.iterations}`;
    return this.serverFirst;
  }

  /** SASLResponse payload (client-final-message) → server-final-message; throws ScramError on a bad proof. */
  finish(clientFinal) {
    const i = clientFinal.lastIndexOf(',p=');
    if (i < 0) throw new ScramError('malformed SCRAM message (no proof)');
    const withoutProof = clientFinal.slice(0, i);
    const proof = Buffer.from(clientFinal.slice(i + 3), 'base64');
    const attrs = Object.fromEntries(withoutProof.split(',').map((kv) => [kv[0], kv.slice(2)]));
    if (attrs.r !== this.nonce) throw new ScramError('SCRAM nonce mismatch');
    const authMessage = `${this.clientFirstBare},${this.serverFirst},${withoutProof}`;
    const clientSignature = hmac(this.verifier.storedKey, authMessage);
    if (proof.length !== clientSignature.length) throw new ScramError('bad proof');
    const clientKey = Buffer.alloc(proof.length);
    for (let k = 0; k < proof.length; k++) clientKey[k] = proof[k] ^ clientSignature[k];
    if (!timingSafeEqual(sha256(clientKey), this.verifier.storedKey)) throw new ScramError('bad proof');
    return `v=${hmac(this.verifier.serverKey, authMessage).toString('base64')}`;
  }
}
