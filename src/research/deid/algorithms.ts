/**
 * The value transformations of the reference tool, as pure functions (same inputs → same outputs as
 * Microsoft FHIR Tools for Anonymization, except where noted).
 *
 * @see https://github.com/microsoft/Tools-for-Health-Data-Anonymization/blob/master/docs/FHIR-anonymization.md#data-anonymization-algorithms
 */
import { createCipheriv, createHmac, randomBytes, randomInt } from 'node:crypto';

/** HMAC-SHA256 of the UTF-8 input under the UTF-8 key, lower-case hex. Empty input stays empty. */
export function cryptoHash(input: string, key: string): string {
  if (input === '') return input;
  return createHmac('sha256', key).update(input, 'utf8').digest('hex');
}

/** Bound of {@link cachedHasher}'s memo: ids repeat across a patient's resources; 64k entries ≈ 10 MB. */
const HASH_CACHE_ENTRIES = 65_536;

/** {@link cryptoHash} under one key, memoised (references repeat the same ids many times). */
export function cachedHasher(key: string): (input: string) => string {
  const cache = new Map<string, string>();
  return (input) => {
    let h = cache.get(input);
    if (h === undefined) {
      h = cryptoHash(input, key);
      if (cache.size >= HASH_CACHE_ENTRIES) cache.clear();
      cache.set(input, h);
    }
    return h;
  };
}

let literalReferenceRe: RegExp | undefined;
const OID_RE = /^(urn:oid:)([0-2](?:\.(?:0|[1-9][0-9]*))+)()$/;
const UUID_RE = /^(urn:uuid:)([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})()$/;

/**
 * Applies `transform` to the id part of a reference string, keeping what identifies the target
 * type: `#id` (contained), `[base/]Type/id[/_history/v]`, `urn:oid:…`, `urn:uuid:…`. Anything else
 * is transformed whole (conditional references, for example).
 *
 * @param resourceTypes - the FHIR R4 resource type names (the literal-reference pattern lists them).
 */
export function transformReferenceId(reference: string, transform: (id: string) => string, resourceTypes: readonly string[]): string {
  if (reference === '') return reference;
  if (reference.startsWith('#')) return `#${transform(reference.slice(1))}`;
  if (!literalReferenceRe && resourceTypes.length > 0) literalReferenceRe = new RegExp(
    `^((?:(?:http|https)://(?:[A-Za-z0-9\\\\/.:%$])*)?(?:${resourceTypes.join('|')})/)([A-Za-z0-9\\-.]{1,64})(/_history/[A-Za-z0-9\\-.]{1,64})?$`,
  );
  for (const re of [literalReferenceRe, OID_RE, UUID_RE]) {
    const m = re?.exec(reference);
    if (m) return `${m[1]}${transform(m[2]!)}${m[3] ?? ''}`;
  }
  return transform(reference);
}

/** Date-shift range: offsets are in [-RANGE, RANGE] days. */
const DATE_SHIFT_RANGE = 50;
const DATE_SHIFT_SEED = 131;

/**
 * The day offset for `prefix + key`: a polynomial hash of the UTF-8 bytes (seed 131) modulo 101,
 * minus 50. Same prefix and key → same offset, so dates within one scope keep their intervals.
 */
export function dateShiftOffset(dateShiftKey: string, prefix: string): number {
  const bytes = Buffer.from(prefix + dateShiftKey, 'utf8');
  let offset = 0;
  for (const b of bytes) offset = (offset * DATE_SHIFT_SEED + b) % (2 * DATE_SHIFT_RANGE + 1);
  return offset - DATE_SHIFT_RANGE;
}

// FHIR R4 date / dateTime / time regular expressions (https://hl7.org/fhir/R4/datatypes.html), unanchored
// like the tool's, with the groups it reads: 1 year, 2 month, 3 day, 4 the time part.
const DATE_RE = /([0-9](?:[0-9](?:[0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(?:-(0[1-9]|1[0-2])(?:-(0[1-9]|[1-2][0-9]|3[0-1]))?)?/;
const DATETIME_RE =
  /([0-9](?:[0-9](?:[0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(?:-(0[1-9]|1[0-2])(?:-(0[1-9]|[1-2][0-9]|3[0-1])(T(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\.[0-9]+)?(?:Z|(?:\+|-)(?:(?:0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?/;
const TIME_RE = /(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\.[0-9]+)?/;

/** Ages above this many years are identifying under HIPAA Safe Harbor. */
export const AGE_THRESHOLD = 89;

function overThreshold(m: RegExpExecArray, now: Date): boolean {
  const year = Number(m[1]);
  const month = m[2] ? Number(m[2]) : 1;
  const day = m[3] ? Number(m[3]) : 1;
  const nm = now.getUTCMonth() + 1;
  const nd = now.getUTCDate();
  const age = now.getUTCFullYear() - year - (nm < month || (nm === month && nd < day) ? 1 : 0);
  return age > AGE_THRESHOLD;
}

function addDays(year: number, month: number, day: number, days: number): string {
  const d = new Date(Date.UTC(2000, month - 1, day));
  d.setUTCFullYear(year); // years < 100 would otherwise be read as 19xx
  d.setUTCDate(d.getUTCDate() + days);
  const y = d.getUTCFullYear();
  return `${String(y).padStart(4, '0')}-${String(d.getUTCMonth() + 1).padStart(2, '0')}-${String(d.getUTCDate()).padStart(2, '0')}`;
}

/** What a date operation did: `redact` (value may be the year, or null) or `perturb` (shifted). */
export interface DateResult {
  readonly value: string | null;
  readonly op: 'redact' | 'perturb';
}

/**
 * Redacts a date, dateTime or instant. With `partial`, the year survives unless the date is more
 * than 89 years before `now`; without, the value goes.
 */
export function redactDate(value: string, kind: 'date' | 'dateTime' | 'instant', partial: boolean, now: Date): DateResult {
  if (!partial) return { value: null, op: 'redact' };
  const m = (kind === 'date' ? DATE_RE : DATETIME_RE).exec(value);
  if (!m) return { value, op: 'redact' }; // the tool leaves a value it cannot read, and records a redaction
  return { value: overThreshold(m, now) ? null : m[1]!, op: 'redact' };
}

/**
 * Shifts a date, dateTime or instant by `offsetDays`. The time of day becomes 00:00:00 (digits of
 * fractional seconds zeroed, the zone kept). Values without a day, more than 89 years before `now`,
 * or that the shift would carry outside years 0001–9999, are redacted instead (partially when `partial`).
 */
export function shiftDate(value: string, kind: 'date' | 'dateTime' | 'instant', offsetDays: number, partial: boolean, now: Date): DateResult {
  const m = (kind === 'date' ? DATE_RE : DATETIME_RE).exec(value);
  if (!m || !m[3] || overThreshold(m, now)) return redactDate(value, kind, partial, now);
  const shifted = addDays(Number(m[1]), Number(m[2]), Number(m[3]), offsetDays);
  // A shift past FHIR's four-digit years ("9999-12-31", the usual "no end date", plus 40 days) would be
  // no FHIR date at all: redacted instead, as the tool's .NET DateTime would refuse it.
  if (!/^\d{4}-/.test(shifted) || shifted.startsWith('0000')) return redactDate(value, kind, partial, now);
  const timePart = kind === 'date' ? undefined : m[4];
  if (!timePart) return { value: shifted, op: 'perturb' };
  const t = TIME_RE.exec(timePart);
  const zeroed = t ? timePart.split(t[0]).join(t[0].replace(/\d/g, '0')) : timePart;
  return { value: `${shifted}${zeroed}`, op: 'perturb' };
}

/** Redacts an Age value: with `partial`, only ages over 89 go. */
export function redactAge(value: number | string, partial: boolean): number | string | null {
  if (!partial) return null;
  return Number(value) > AGE_THRESHOLD ? null : value;
}

/**
 * HIPAA Safe Harbor postal code: keep the first 3 digits and zero the rest; a code starting with a
 * restricted 3-digit zone (population under 20,000) has every digit zeroed.
 */
export function redactPostalCode(value: string, restricted: readonly string[]): string {
  if (restricted.some((z) => value.startsWith(z))) return value.replace(/\d/g, '0');
  if (value.length >= 3) return value.slice(0, 3) + value.slice(3).replace(/\d/g, '0');
  return value;
}

/**
 * AES-CBC (PKCS#7) with a random 16-byte IV, returned as base64(IV ‖ ciphertext), as the tool does.
 * Not deterministic by design.
 *
 * @param key - the key string; its UTF-8 bytes (16, 24 or 32) are the AES key.
 */
export function encrypt(plain: string, key: string): string {
  if (plain === '') return plain;
  const k = Buffer.from(key, 'utf8');
  const iv = randomBytes(16);
  const cipher = createCipheriv(`aes-${k.length * 8}-cbc`, k, iv);
  return Buffer.concat([iv, cipher.update(plain, 'utf8'), cipher.final()]).toString('base64');
}

/** Uniform sample in [-half, half] from the OS CSPRNG (53 bits). */
function uniform(half: number): number {
  const u = (randomInt(0, 2 ** 26) * 2 ** 27 + randomInt(0, 2 ** 27)) / 2 ** 53;
  return -half + u * 2 * half;
}

/** Rounds half to even (.NET decimal.Round's default) to `digits` decimal places. */
export function roundHalfEven(x: number, digits: number): number {
  const f = 10 ** digits;
  const y = x * f;
  const r = Math.round(y);
  const isHalf = Math.abs(y - Math.trunc(y)) === 0.5;
  const v = isHalf && r % 2 !== 0 ? r - 1 : r;
  return v / f;
}

/**
 * Adds uniform noise: `fixed` → [-span/2, span/2]; `proportional` → [-span/2·v, span/2·v]; then
 * rounds (0 places for integer types, `roundTo` or 2 otherwise) and clamps positiveInt ≥ 1,
 * unsignedInt ≥ 0.
 */
export function perturb(value: number, type: string, span: number, rangeType: 'fixed' | 'proportional', roundTo: number | undefined): number {
  const integer = type === 'integer' || type === 'positiveInt' || type === 'unsignedInt';
  const digits = integer ? 0 : (roundTo ?? 2);
  const width = rangeType === 'proportional' ? value * span : span;
  let out = roundHalfEven(value + uniform(Math.abs(width) / 2), digits);
  if (type === 'positiveInt' && out <= 0) out = 1;
  if (type === 'unsignedInt' && out < 0) out = 0;
  return out;
}
