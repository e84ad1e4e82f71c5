/**
 * JSON values that cannot be stored as sent: PostgreSQL's json and jsonb refuse U+0000 and lone UTF-16
 * surrogates (which `JSON.parse` accepts, written `"\u0000"` and `"\ud800"`), and a number beyond a
 * double would be stored as null. Shared by the ingest structural gate (which walks the resource
 * itself, collecting every issue) and the JSON APIs' body parser, so such input is refused with a 4xx
 * naming the place instead of failing in the store.
 */

/**
 * Deepest nesting accepted in JSON input (hooks and API bodies). FHIR resources stay far below it; the
 * limit keeps every recursive walk of a parsed value (and `JSON.parse` accepts hundreds of thousands
 * of levels) far from the call stack's end.
 */
export const MAX_JSON_DEPTH = 64;

/** The nesting depth of a parsed JSON value, counted up to just past `limit` (iterative: any depth is safe). */
export function jsonDepth(value: unknown, limit: number): number {
  let max = 0;
  const stack: Array<[unknown, number]> = [[value, 1]];
  while (stack.length > 0) {
    const [v, d] = stack.pop()!;
    if (d > max) max = d;
    if (max > limit) return max;
    if (typeof v === 'object' && v !== null) for (const child of Object.values(v)) stack.push([child, d + 1]);
  }
  return max;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * U+0000 or a lone UTF-16 surrogate: text that is not Unicode (a lone surrogate; JSON can escape one,
 * `"\ud800"`) or that PostgreSQL's json and jsonb cannot hold (NUL). FHIR strings are Unicode and should
 * not contain character points below 32 other than tab, CR and LF (R4 datatypes, `string`).
 */
// eslint-disable-next-line no-control-regex -- NUL is exactly what this looks for
export const UNSTORABLE_TEXT = /\u0000|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** Any NUL or surrogate at all: a cheap first test, since almost every string has neither. */
// eslint-disable-next-line no-control-regex -- NUL is exactly what this looks for
const SUSPECT = /[\u0000\ud800-\udfff]/;

/** What is wrong with a string that cannot be stored ({@link UNSTORABLE_TEXT}), or undefined. */
export function unstorable(text: string): string | undefined {
  if (!SUSPECT.test(text)) return undefined;
  const m = UNSTORABLE_TEXT.exec(text);
  if (!m) return undefined;
  return m[0] === '\u0000' ? 'contains U+0000 (NUL), which cannot be stored' : 'contains a lone UTF-16 surrogate (not Unicode text)';
}

/**
 * Why a number cannot be stored as it was sent, or undefined. `JSON.parse` turns a number beyond the
 * double range (`1e400`) into ±Infinity, which `JSON.stringify` writes as `null`: stored, the value
 * would silently become null.
 */
export function unrepresentableNumber(n: number): string | undefined {
  return Number.isFinite(n) ? undefined : 'number is out of range (beyond what a 64-bit double holds; it would be stored as null)';
}

/**
 * The first place in a JSON value where a string, key or number cannot be stored (see
 * {@link UNSTORABLE_TEXT}, {@link unrepresentableNumber}): `{ path, why }`, or undefined when all of it can.
 */
export function unstorableValue(value: unknown, path = ''): { path: string; why: string } | undefined {
  if (typeof value === 'string') {
    const why = unstorable(value);
    return why ? { path, why } : undefined;
  }
  if (typeof value === 'number') {
    const why = unrepresentableNumber(value);
    return why ? { path, why } : undefined;
  }
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const hit = unstorableValue(value[i], `${path}[${i}]`);
      if (hit) return hit;
    }
  } else if (isPlainObject(value)) {
    for (const key of Object.keys(value)) {
      const why = unstorable(key);
      if (why) return { path: `${path}.${key.replace(UNSTORABLE_TEXT, '?')}`, why: `property name ${why}` };
      const hit = unstorableValue(value[key], `${path}.${key}`);
      if (hit) return hit;
    }
  }
  return undefined;
}

