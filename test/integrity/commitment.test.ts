import { describe, expect, it } from '@jest/globals';
import { sha256 } from '@noble/hashes/sha2.js';
import { canonicalize, canonicalizeToBytes } from '../../src/integrity/canonical.js';
import {
  COMMITMENT_LENGTH,
  SALT_LENGTH,
  computeCommitment,
  newSalt,
  randomBytes,
  verifyCommitment,
} from '../../src/integrity/commitment.js';
import { toHex } from '../../src/integrity/encoding.js';

const patient = {
  resourceType: 'Patient',
  id: 'example',
  meta: { versionId: '1' },
  name: [{ family: 'Chalmers', given: ['Peter', 'James'] }],
  birthDate: '1974-12-25',
};

const fixedSalt = Uint8Array.from({ length: 32 }, (_, i) => i);

describe('commitment', () => {
  it('newSalt returns 32 fresh random bytes', () => {
    const a = newSalt();
    const b = newSalt();
    expect(a.length).toBe(SALT_LENGTH);
    expect(toHex(a)).not.toBe(toHex(b));
  });

  it('newSalt uses the injected randomness', () => {
    expect(newSalt(() => fixedSalt)).toBe(fixedSalt);
    expect(() => newSalt(() => new Uint8Array(16))).toThrow(RangeError);
  });

  it('is SHA-256(salt ‖ JCS(resource)) (cross-checked with @noble/hashes)', () => {
    const expected = toHex(sha256.create().update(fixedSalt).update(canonicalizeToBytes(patient)).digest());
    const c = computeCommitment(patient, fixedSalt);
    expect(c.length).toBe(COMMITMENT_LENGTH);
    expect(c).toBeInstanceOf(Uint8Array);
    expect(toHex(c)).toBe(expected);
    // Non-ASCII text is hashed as UTF-8, exactly as a verifier's JCS bytes.
    const named = { ...patient, name: [{ family: 'Muñoz', given: ['Zoë'] }] };
    expect(toHex(computeCommitment(named, fixedSalt))).toBe(toHex(sha256.create().update(fixedSalt).update(canonicalizeToBytes(named)).digest()));
    expect(canonicalize(named)).toContain('Muñoz');
  });

  it('cuts every salt from the pool once: fresh, independent copies across refills', () => {
    const seen = new Set<string>();
    const salts: Uint8Array[] = [];
    for (let i = 0; i < 600; i++) {
      const s = randomBytes(SALT_LENGTH);
      expect(s.length).toBe(SALT_LENGTH);
      salts.push(s);
      seen.add(toHex(s));
    }
    expect(seen.size).toBe(600); // more than two refills, no repeat
    const first = toHex(salts[0]!);
    salts[1]!.fill(0); // a copy: changing one salt changes no other
    expect(toHex(salts[0]!)).toBe(first);
    expect(randomBytes(100_000).length).toBe(100_000);
  });

  it('does not depend on key order or whitespace of the source JSON', () => {
    const reordered = JSON.parse(
      '{ "birthDate":"1974-12-25", "name":[{"given":["Peter","James"],"family":"Chalmers"}], "meta":{"versionId":"1"}, "id":"example", "resourceType":"Patient" }',
    ) as unknown;
    expect(toHex(computeCommitment(reordered, fixedSalt))).toBe(toHex(computeCommitment(patient, fixedSalt)));
  });

  it('verifies the right opening and rejects any change', () => {
    const c = computeCommitment(patient, fixedSalt);
    expect(verifyCommitment(patient, fixedSalt, c)).toBe(true);
    expect(verifyCommitment({ ...patient, birthDate: '1974-12-26' }, fixedSalt, c)).toBe(false);
    const otherSalt = fixedSalt.slice();
    otherSalt[0] = (otherSalt[0] as number) ^ 1;
    expect(verifyCommitment(patient, otherSalt, c)).toBe(false);
    const flipped = c.slice();
    flipped[31] = (flipped[31] as number) ^ 0x80;
    expect(verifyCommitment(patient, fixedSalt, flipped)).toBe(false);
    expect(verifyCommitment(patient, fixedSalt.subarray(1), c)).toBe(false);
    expect(verifyCommitment(patient, fixedSalt, c.subarray(1))).toBe(false);
    expect(verifyCommitment({ x: Number.NaN }, fixedSalt, c)).toBe(false);
  });

  it('salts hide equal resources', () => {
    expect(toHex(computeCommitment(patient, newSalt()))).not.toBe(toHex(computeCommitment(patient, newSalt())));
  });

  it('rejects bad salts', () => {
    expect(() => computeCommitment(patient, new Uint8Array(31))).toThrow(RangeError);
  });
});
