/**
 * Salted hash commitments to FHIR resource versions.
 *
 * `commitment = SHA-256(salt ‖ JCS(resource))` where `salt` is 32 random bytes
 * chosen per resource version and `JCS` is RFC 8785 canonical JSON (UTF-8).
 *
 * Why salted: the commitment (not the resource) is what goes into the public
 * Merkle log and onto ledgers. Clinical resources have low entropy (a code, a
 * date, a patient reference), so an unsalted hash could be confirmed by
 * brute-force guessing. The 256-bit salt makes the commitment hiding; it is
 * stored next to the resource and disclosed only to parties allowed to see the
 * resource. SHA-256's collision resistance makes it binding.
 *
 * Hashing uses `@noble/hashes` (audited, pure JS) as the design specifies; the
 * hot Merkle path in `merkle.ts` uses node:crypto instead.
 *
 * @see https://www.rfc-editor.org/rfc/rfc8785
 * @packageDocumentation
 */
import { sha256 } from '@noble/hashes/sha2.js';
import { randomBytes } from '@noble/hashes/utils.js';
import { canonicalizeToBytes } from './canonical.js';
import { bytesEqual } from './encoding.js';
import { committedValue } from './record.js';
import type { VersionCommitter } from '../store/types.js';

/** Salt length in bytes (256 bits). */
export const SALT_LENGTH = 32;
/** Commitment length in bytes (SHA-256 output). */
export const COMMITMENT_LENGTH = 32;

/** Source of cryptographically secure random bytes; injectable for deterministic tests. */
export type RandomBytes = (length: number) => Uint8Array;

/**
 * Generates a fresh per-version salt.
 *
 * @param random - CSPRNG (defaults to `crypto.getRandomValues` via @noble/hashes).
 *   Inject a fixed source only in tests: reusing a salt across versions leaks
 *   equality of resources.
 * @returns {@link SALT_LENGTH} (32) random bytes.
 * @throws RangeError when `random` returns the wrong number of bytes.
 */
export function newSalt(random: RandomBytes = randomBytes): Uint8Array {
  const salt = random(SALT_LENGTH);
  if (salt.length !== SALT_LENGTH) throw new RangeError(`salt must be ${SALT_LENGTH} bytes`);
  return salt;
}

/**
 * Computes `SHA-256(salt ‖ JCS(resource))`.
 *
 * @param resource - the FHIR resource version as JSON data (see `canonicalize`).
 * @param salt - the version's {@link SALT_LENGTH}-byte salt.
 * @returns the 32-byte commitment.
 * @throws RangeError when the salt is not 32 bytes.
 * @throws CanonicalizationError when the resource is not JSON data.
 */
export function computeCommitment(resource: unknown, salt: Uint8Array): Uint8Array {
  if (salt.length !== SALT_LENGTH) throw new RangeError(`salt must be ${SALT_LENGTH} bytes`);
  // Fixed-length salt first: the concatenation is unambiguous without a length prefix.
  return sha256.create().update(salt).update(canonicalizeToBytes(resource)).digest();
}

/**
 * Checks that `commitment` opens to `resource` under `salt`.
 *
 * @param resource - the claimed FHIR resource version.
 * @param salt - the claimed 32-byte salt.
 * @param commitment - the 32-byte commitment (e.g. a Merkle leaf's data).
 * @returns true when they match; false for any mismatch, wrong lengths, or a
 *   resource that is not canonicalizable JSON (never throws).
 */
export function verifyCommitment(resource: unknown, salt: Uint8Array, commitment: Uint8Array): boolean {
  if (salt.length !== SALT_LENGTH || commitment.length !== COMMITMENT_LENGTH) return false;
  let expected: Uint8Array;
  try {
    expected = computeCommitment(resource, salt);
  } catch {
    return false;
  }
  return bytesEqual(expected, commitment);
}

/**
 * The store's {@link VersionCommitter}: a fresh salt and the commitment to the version exactly as
 * stored (its served body, or the delete marker). Handed to `openDatabase`, it makes the store write
 * each new version's pending commitment in the same transaction as the version.
 *
 * @param random - CSPRNG (injectable for tests only).
 */
export function versionCommitter(random: RandomBytes = randomBytes): VersionCommitter {
  return (version) => {
    const salt = newSalt(random);
    return { salt, commitment: computeCommitment(committedValue(version), salt) };
  };
}
