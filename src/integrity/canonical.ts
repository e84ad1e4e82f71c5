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
 * Speed: every stored version (and every AuditEvent) is canonicalised once for its commitment, and
 * the library spends most of its time checking each string for lone surrogates one code unit at a
 * time and building strings member by member. {@link canonicalize} therefore first tries a fast
 * path for plain JSON data (what `JSON.parse` returns, or plain objects built like it): a copy with
 * members in sorted order, serialised by the native `JSON.stringify`, which escapes strings and
 * writes numbers exactly as RFC 8785 and the library do. Anything the fast path does not handle
 * identically (integer-like member names, which engines order numerically; `toJSON`; non-plain
 * objects; non-finite numbers; strings with surrogates; functions, symbols, bigints; very deep
 * nesting) goes to the library, so the result is the library's in every case: a property test
 * checks the two agree on arbitrary JSON. docs/decisions.md ("JCS fast path") gives the measurements.
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
  const fast = fastCanonicalize(value);
  if (fast !== undefined) return fast;
  return libraryCanonicalize(value);
}

/** The `canonicalize` library's result for `value` (exported for the equivalence test). */
export function libraryCanonicalize(value: unknown): string {
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

/** Thrown inside the fast path when the value needs the library. */
const NOT_PLAIN: unique symbol = Symbol('not plain JSON');
/** Member names engines order before all others, numerically (array-index-like keys). */
const INDEX_LIKE = /^(?:0|[1-9][0-9]*)$/;
/**
 * Any surrogate code unit in the output, raw (a pair) or as the escape JSON.stringify writes for a
 * lone one: the library decides those (a false alarm, e.g. an escaped backslash before `ud800`, only
 * costs the slow path).
 */
const SURROGATE = /[\uD800-\uDFFF]|\\u[dD][89a-fA-F]/;
/** Nesting beyond this goes to the library (which also detects cycles). */
const FAST_MAX_DEPTH = 200;

function sortedCopy(value: unknown, depth: number): unknown {
  switch (typeof value) {
    case 'string':
      return value;
    case 'number':
      if (!Number.isFinite(value)) throw NOT_PLAIN;
      return value;
    case 'boolean':
      return value;
    case 'object': {
      if (value === null) return null;
      if (depth >= FAST_MAX_DEPTH) throw NOT_PLAIN;
      if (Array.isArray(value)) {
        const out = new Array<unknown>(value.length);
        for (let i = 0; i < value.length; i++) {
          const item: unknown = value[i];
          if (item === undefined) throw NOT_PLAIN;
          out[i] = sortedCopy(item, depth + 1);
        }
        return out;
      }
      const proto: unknown = Object.getPrototypeOf(value);
      if (proto !== Object.prototype && proto !== null) throw NOT_PLAIN;
      const record = value as Record<string, unknown>;
      if (typeof record.toJSON === 'function') throw NOT_PLAIN;
      const keys = Object.keys(record).sort();
      const out: Record<string, unknown> = {};
      for (const key of keys) {
        const first = key.charCodeAt(0);
        if (first >= 0x30 && first <= 0x39 && INDEX_LIKE.test(key)) throw NOT_PLAIN;
        const member = record[key];
        // The library and JSON.stringify both leave out members whose value is undefined.
        if (member === undefined) continue;
        const copy = sortedCopy(member, depth + 1);
        // `out.__proto__ = …` would set the prototype; JSON.parse makes `__proto__` an own member.
        if (key === '__proto__') Object.defineProperty(out, key, { value: copy, enumerable: true, writable: true, configurable: true });
        else out[key] = copy;
      }
      return out;
    }
    default:
      throw NOT_PLAIN;
  }
}

/**
 * RFC 8785 for plain JSON data through the native serialiser, or `undefined` when `value` needs the
 * library (see the module comment). Exported for the equivalence test.
 */
export function fastCanonicalize(value: unknown): string | undefined {
  let copy: unknown;
  try {
    copy = sortedCopy(value, 0);
  } catch (err) {
    if (err === NOT_PLAIN) return undefined;
    throw err;
  }
  const out = JSON.stringify(copy);
  return SURROGATE.test(out) ? undefined : out;
}
