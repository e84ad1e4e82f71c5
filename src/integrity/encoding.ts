/**
 * Small, strict byte/text encoding helpers shared by the integrity modules.
 *
 * Security note: every parser in this folder must reject non-canonical input,
 * because the signed-note, checkpoint and tlog-proof formats are compared and
 * hashed byte-for-byte. Node's `Buffer.from(s, 'base64')` silently skips
 * invalid characters and accepts missing padding, so it is never used on
 * untrusted text without {@link decodeBase64Strict}.
 *
 * @packageDocumentation
 */

const BASE64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/**
 * Encodes bytes as standard, padded base64 (RFC 4648 §4), the encoding used by
 * C2SP signed-note, tlog-checkpoint and tlog-proof.
 *
 * @param bytes - the bytes to encode.
 * @returns the base64 text.
 */
export function encodeBase64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
}

/**
 * Decodes standard, padded base64 (RFC 4648 §4) and rejects anything that is
 * not the canonical encoding of its bytes: wrong alphabet, missing or extra
 * padding, whitespace, or non-zero padding bits.
 *
 * @param text - base64 text.
 * @returns the decoded bytes, or `undefined` when `text` is not canonical base64.
 */
export function decodeBase64Strict(text: string): Uint8Array | undefined {
  if (!BASE64_RE.test(text)) return undefined;
  const buf = Buffer.from(text, 'base64');
  // Round trip to reject non-zero trailing bits (e.g. "AB==" vs "AA==").
  if (buf.toString('base64') !== text) return undefined;
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

/**
 * Lower-case hexadecimal encoding.
 *
 * @param bytes - the bytes to encode.
 * @returns `2 × bytes.length` lower-case hex digits.
 */
export function toHex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex');
}

/**
 * Decodes an even-length hexadecimal string (either case).
 *
 * @param hex - hex digits.
 * @returns the bytes.
 * @throws TypeError when `hex` is not valid hexadecimal.
 */
export function fromHex(hex: string): Uint8Array {
  if (hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) {
    throw new TypeError('invalid hex string');
  }
  const buf = Buffer.from(hex, 'hex');
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

const utf8Encoder = new TextEncoder();
/** In `u` mode surrogate pairs are single code points, so `\p{Cs}` only matches lone surrogates. */
const LONE_SURROGATE_RE = /\p{Cs}/u;

/**
 * Whether a string is well-formed UTF-16 (no lone surrogates), i.e. encodable
 * as UTF-8 without loss. Equivalent to ES2024 `String.prototype.isWellFormed`.
 *
 * @param text - any string.
 * @returns true when `text` has no lone surrogate.
 */
export function isWellFormedString(text: string): boolean {
  return !LONE_SURROGATE_RE.test(text);
}
const utf8Decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * UTF-8 encodes a string. Lone surrogates are rejected rather than replaced by
 * U+FFFD, so that two different strings can never encode to the same bytes.
 *
 * @param text - a well-formed UTF-16 string.
 * @returns the UTF-8 bytes.
 * @throws TypeError when `text` contains a lone surrogate.
 */
export function utf8Encode(text: string): Uint8Array {
  if (LONE_SURROGATE_RE.test(text)) throw new TypeError('string contains a lone surrogate');
  return utf8Encoder.encode(text);
}

/**
 * Strictly decodes UTF-8 (no replacement characters, BOM kept as U+FEFF).
 *
 * @param bytes - UTF-8 bytes.
 * @returns the decoded string, or `undefined` when `bytes` is not valid UTF-8.
 */
export function utf8DecodeStrict(bytes: Uint8Array): string | undefined {
  try {
    return utf8Decoder.decode(bytes);
  } catch {
    return undefined;
  }
}

/**
 * Constant-time equality of two byte arrays (length is not secret).
 *
 * @param a - first array.
 * @param b - second array.
 * @returns true when both have the same length and content.
 */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= (a[i] as number) ^ (b[i] as number);
  return diff === 0;
}
