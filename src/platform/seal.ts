/**
 * Secrets at rest: AES-256-GCM envelopes for the few secret values fhir-anchor must store (a source's
 * hook bearer token and HMAC secret, its callback bearer token and private JWK), so that a database
 * dump or backup does not hand out the credentials of every connected EHR.
 *
 * The key is derived with HKDF-SHA256 from `SECRETS_KEY` (embedded mode generates one under DATA_DIR).
 * Each value gets a fresh 96-bit IV, and the GCM additional data binds it to where it belongs (e.g.
 * `source:epic-east:hookAuth.hmacSecret`), so a sealed value copied to another row or field does not
 * open. Envelope: `fa-sealed:v1:<iv b64url>:<ciphertext+tag b64url>`.
 *
 * node:crypto only (OpenSSL's AES-GCM and HKDF); no hand-written cryptography.
 */
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';

/** Prefix of every sealed value. */
export const SEALED_PREFIX = 'fa-sealed:v1:';

/** A sealed value that does not open: wrong key, wrong context, or tampered. */
export class SealError extends Error {
  override readonly name = 'SealError';
}

export interface Sealer {
  /** Encrypts `plaintext` for `context` (where it is stored). */
  seal(plaintext: string, context: string): string;
  /** Decrypts a value {@link seal} made for the same context; throws {@link SealError} otherwise. */
  open(sealed: string, context: string): string;
}

/** Whether a stored value is a sealed envelope. */
export function isSealed(value: unknown): value is string {
  return typeof value === 'string' && value.startsWith(SEALED_PREFIX);
}

/**
 * A sealer for a secret of at least 32 characters (config `SECRETS_KEY`).
 *
 * @throws RangeError for a shorter secret
 */
export function createSealer(secret: string): Sealer {
  if (secret.length < 32) throw new RangeError('the secrets key must be at least 32 characters');
  const key = Buffer.from(hkdfSync('sha256', Buffer.from(secret, 'utf8'), Buffer.from('fhir-anchor/seal', 'utf8'), Buffer.from('v1', 'utf8'), 32));
  return {
    seal(plaintext, context) {
      const iv = randomBytes(12);
      const cipher = createCipheriv('aes-256-gcm', key, iv);
      cipher.setAAD(Buffer.from(context, 'utf8'));
      const body = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final(), cipher.getAuthTag()]);
      return `${SEALED_PREFIX}${iv.toString('base64url')}:${body.toString('base64url')}`;
    },
    open(sealed, context) {
      if (!isSealed(sealed)) throw new SealError('not a sealed value');
      const [ivText, bodyText, ...rest] = sealed.slice(SEALED_PREFIX.length).split(':');
      const iv = Buffer.from(ivText ?? '', 'base64url');
      const body = Buffer.from(bodyText ?? '', 'base64url');
      if (rest.length > 0 || iv.length !== 12 || body.length < 16) throw new SealError('malformed sealed value');
      try {
        const decipher = createDecipheriv('aes-256-gcm', key, iv);
        decipher.setAAD(Buffer.from(context, 'utf8'));
        decipher.setAuthTag(body.subarray(body.length - 16));
        return Buffer.concat([decipher.update(body.subarray(0, body.length - 16)), decipher.final()]).toString('utf8');
      } catch {
        // Never say more: a wrong key and a tampered value look the same.
        throw new SealError(`sealed value for ${context} does not open (wrong SECRETS_KEY, or altered)`);
      }
    },
  };
}
