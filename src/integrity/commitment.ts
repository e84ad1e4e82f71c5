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
 * Every stored version (and every AuditEvent) is committed to, so this is a hot path: hashing uses
 * node:crypto's SHA-256 (OpenSSL; several times faster than the pure-JS `@noble/hashes`, which the
 * tests keep as an independent cross-check) and salts are cut from a pooled CSPRNG buffer, like the
 * Merkle path in `merkle.ts`. docs/decisions.md ("Commitment hot path") has the measurements.
 *
 * @see https://www.rfc-editor.org/rfc/rfc8785
 * @packageDocumentation
 */
import { createHash, randomFillSync } from 'node:crypto';
import { canonicalize } from './canonical.js';
import { bytesEqual } from './encoding.js';
import { committedValue } from './record.js';
import type { VersionCommitter } from '../store/types.js';

/** Salt length in bytes (256 bits). */
export const SALT_LENGTH = 32;
/** Commitment length in bytes (SHA-256 output). */
export const COMMITMENT_LENGTH = 32;

/** Source of cryptographically secure random bytes; injectable for deterministic tests. */
export type RandomBytes = (length: number) => Uint8Array;

/** Salts per refill of the CSPRNG pool. */
const POOLED_SALTS = 256;
let pool = new Uint8Array(0);
let poolOffset = 0;

/**
 * `length` fresh bytes from node:crypto's CSPRNG, cut from a pool refilled {@link POOLED_SALTS}
 * salts at a time (one system call per refill instead of one per version). Each byte is handed out
 * once, as a copy.
 */
export function randomBytes(length: number): Uint8Array {
  if (length > SALT_LENGTH * POOLED_SALTS) return randomFillSync(new Uint8Array(length));
  if (poolOffset + length > pool.length) {
    pool = randomFillSync(new Uint8Array(SALT_LENGTH * POOLED_SALTS));
    poolOffset = 0;
  }
  const out = pool.slice(poolOffset, poolOffset + length);
  pool.fill(0, poolOffset, poolOffset + length);
  poolOffset += length;
  return out;
}

/**
 * Generates a fresh per-version salt.
 *
 * @param random - CSPRNG (defaults to node:crypto's, pooled: {@link randomBytes}).
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
  const digest = createHash('sha256').update(salt).update(canonicalize(resource), 'utf8').digest();
  return new Uint8Array(digest.buffer, digest.byteOffset, digest.length);
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
