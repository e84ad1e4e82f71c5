/** AES-256-GCM envelopes for secrets at rest (src/platform/seal.ts). */
import { SEALED_PREFIX, SealError, createSealer, isSealed } from '../../src/platform/seal.js';

const KEY = 'unit-test-secrets-key-0123456789abcdef';

describe('sealer', () => {
  const sealer = createSealer(KEY);

  it('opens what it sealed, for the same context only', () => {
    const secret = 'hmac-secret-Zoë-🔑-0123456789';
    const sealed = sealer.seal(secret, 'source:a:hookAuth.hmacSecret');
    expect(isSealed(sealed)).toBe(true);
    expect(sealed.startsWith(SEALED_PREFIX)).toBe(true);
    expect(sealed).not.toContain('hmac-secret');
    expect(sealer.open(sealed, 'source:a:hookAuth.hmacSecret')).toBe(secret);
    // Bound to where it is stored: another source or field does not open it.
    expect(() => sealer.open(sealed, 'source:b:hookAuth.hmacSecret')).toThrow(SealError);
    expect(() => sealer.open(sealed, 'source:a:hookAuth.bearerToken')).toThrow(SealError);
  });

  it('uses a fresh IV every time', () => {
    const a = sealer.seal('same', 'ctx');
    const b = sealer.seal('same', 'ctx');
    expect(a).not.toBe(b);
    expect(sealer.open(a, 'ctx')).toBe(sealer.open(b, 'ctx'));
  });

  it('refuses another key, any altered byte and malformed envelopes, saying nothing of the secret', () => {
    const sealed = sealer.seal('top-secret-value', 'ctx');
    expect(() => createSealer('another-key-0123456789abcdef0123456789').open(sealed, 'ctx')).toThrow(/does not open/);
    const body = sealed.slice(SEALED_PREFIX.length);
    const [iv, ct] = body.split(':') as [string, string];
    const flipped = Buffer.from(ct, 'base64url');
    flipped[0] = flipped[0]! ^ 1;
    expect(() => sealer.open(`${SEALED_PREFIX}${iv}:${flipped.toString('base64url')}`, 'ctx')).toThrow(SealError);
    for (const bad of ['top-secret-value', `${SEALED_PREFIX}`, `${SEALED_PREFIX}abc:def`, `${SEALED_PREFIX}${iv}:${ct}:extra`]) {
      expect(() => sealer.open(bad, 'ctx')).toThrow(SealError);
    }
    try {
      sealer.open(`${SEALED_PREFIX}${iv}:${flipped.toString('base64url')}`, 'ctx');
    } catch (err) {
      expect(String(err)).not.toContain('top-secret');
    }
  });

  it('needs a key of at least 32 characters', () => {
    expect(() => createSealer('short')).toThrow(RangeError);
    expect(isSealed('plain')).toBe(false);
    expect(isSealed(42)).toBe(false);
  });
});
