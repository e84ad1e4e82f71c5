/**
 * RFC 8785 JSON Canonicalization Scheme (JCS).
 *
 * The serialisation itself is delegated to the `canonicalize` npm package, the
 * reference implementation maintained by RFC 8785's co-author (Samuel Erdtman):
 * it sorts object members by UTF-16 code units, serialises numbers with the
 * ECMAScript `Number.prototype.toString` algorithm (RFC 8785 §3.2.2.3) and
 * escapes strings like ECMAScript `JSON.stringify` (§3.2.2.2). This wrapper
 * pins the contract the integrity stage relies on: the result is always a
 * string, and non-JSON input is an error rather than a silently different hash.
 *
 * @see https://www.rfc-editor.org/rfc/rfc8785
 * @packageDocumentation
 */
import canonicalizeImpl from 'canonicalize';
import { utf8Encode } from './encoding.js';

/** A JSON value as produced by `JSON.parse` (I-JSON subset, RFC 7493). */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** Raised when a value cannot be canonicalised (RFC 8785 §3.2.2 error cases). */
export class CanonicalizationError extends Error {
  override readonly name = 'CanonicalizationError';
}

/**
 * Canonicalises a JSON value per RFC 8785 (JCS).
 *
 * Input is typed `unknown` so that FHIR resource interfaces can be passed
 * directly; at run time it must be JSON data as `JSON.parse` returns it.
 * Like `JSON.stringify`, object members whose value is `undefined`, a function
 * or a symbol are omitted and objects with `toJSON` are unwrapped; everything
 * else that JSON cannot express is rejected.
 *
 * @param value - the JSON value (e.g. a FHIR resource).
 * @returns the canonical JSON text (a UTF-16 string; hash its UTF-8 bytes,
 *   see {@link canonicalizeToBytes}).
 * @throws CanonicalizationError for NaN/±Infinity, BigInt, lone surrogates
 *   (RFC 8785 §3.2.2.2 requires well-formed Unicode), cycles, or a top-level
 *   value with no JSON representation (`undefined`, function, symbol).
 */
export function canonicalize(value: unknown): string {
  let out: string | undefined;
  try {
    out = canonicalizeImpl(value);
  } catch (err) {
    throw new CanonicalizationError(`value is not canonicalizable JSON: ${(err as Error).message}`, { cause: err });
  }
  if (typeof out !== 'string') {
    throw new CanonicalizationError('value has no JSON representation');
  }
  return out;
}

/**
 * Canonicalises a JSON value per RFC 8785 and returns the UTF-8 bytes that
 * RFC 8785 §3.2.4 says are to be hashed or signed.
 *
 * @param value - the JSON value.
 * @returns the UTF-8 encoding of {@link canonicalize}(value).
 * @throws CanonicalizationError see {@link canonicalize}.
 */
export function canonicalizeToBytes(value: unknown): Uint8Array {
  return utf8Encode(canonicalize(value));
}
