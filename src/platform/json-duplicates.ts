/**
 * What `JSON.parse` loses from JSON text: duplicated property names and written decimal precision.
 *
 * Duplicate property names in JSON text. RFC 8259 (§4) says the names within an object SHOULD be
 * unique and that software receiving an object whose names are not behaves unpredictably: `JSON.parse`
 * keeps the last value, other parsers the first or both. For a health record that is an ambiguity two
 * systems can resolve differently (which `id`, which `status`, which consent `provision`), so FHIR's
 * validator reports a duplicated property as an error; fhir-anchor refuses what carries one instead of
 * silently keeping the last value.
 *
 * `JSON.parse` cannot report them (it overwrites), so this scans the text itself. It is meant for text
 * that `JSON.parse` has already accepted (it does not validate). One pass, no value is built: keys are
 * compared within their object on a shared stack. The same pass measures the nesting, and stops past
 * `maxDepth` (it recurses, and `JSON.parse` accepts hundreds of thousands of levels), so callers need
 * no separate walk of the parsed value for the depth limit.
 */
import { MAX_JSON_DEPTH } from './json-text.js';

/**
 * A number written with trailing zeros after its decimal point (`72.50`, `1.0`): `JSON.parse` keeps only
 * its value (72.5, 1), and FHIR counts a decimal's written precision as part of it. `path` ends with the
 * number's own key or index; `decimals` is how many digits follow the point as written.
 */
export interface WrittenPrecision {
  readonly path: ReadonlyArray<string | number>;
  readonly decimals: number;
}

/** One duplicated name: where its object is (keys and array indices from the root) and the name. */
export interface DuplicateKey {
  readonly path: ReadonlyArray<string | number>;
  readonly key: string;
}

const QUOTE = 34;
const BACKSLASH = 92;

/**
 * The duplicated property names in `text` (valid JSON), at most `limit`, in document order.
 * Names are compared after unescaping (`"id"` and `"\u0069d"` are the same name).
 */
export function duplicateKeys(text: string, limit = 20): DuplicateKey[] {
  return scanJsonText(text, limit).duplicates;
}

/**
 * One pass over `text` (valid JSON) for both: the duplicated names (at most `limit`) and the numbers
 * written with trailing zeros after their decimal point (at most 10,000), in document order. With
 * `tooDeep`, the text nests deeper than `maxDepth` (counted as `jsonDepth` in json-text.ts counts: the root is
 * level 1, every value inside a container one level more) and the scan stopped there.
 */
export function scanJsonText(text: string, limit = 20, maxDepth = MAX_JSON_DEPTH): { duplicates: DuplicateKey[]; precisions: WrittenPrecision[]; tooDeep: boolean } {
  const out: DuplicateKey[] = [];
  const precisions: WrittenPrecision[] = [];
  const path: Array<string | number> = [];
  // Keys of every open object, innermost last; each object remembers where its own keys start.
  const keys: string[] = [];
  const n = text.length;
  let i = 0;
  let depth = 0;
  let tooDeep = false;

  const skipSpace = (): void => {
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c === 32 || c === 10 || c === 13 || c === 9) i++;
      else return;
    }
  };
  /** From an opening quote to past its closing quote; the string's value when `keep`. */
  const string = (keep: boolean): string => {
    const start = i + 1;
    let j = start;
    for (;;) {
      j = text.indexOf('"', j);
      if (j < 0) {
        i = n;
        return '';
      }
      let k = j - 1;
      while (k >= start && text.charCodeAt(k) === BACKSLASH) k--;
      // An odd number of backslashes before the quote escapes it.
      if ((j - 1 - k) % 2 === 0) break;
      j++;
    }
    i = j + 1;
    if (!keep) return '';
    const raw = text.slice(start, j);
    return raw.includes('\\') ? (JSON.parse(`"${raw}"`) as string) : raw;
  };
  /** After a member or element: past a comma (true: another follows) or past the closing bracket (false). */
  const more = (): boolean => {
    skipSpace();
    const comma = text.charCodeAt(i) === 44;
    i++;
    return comma;
  };
  const value = (): void => {
    if (++depth > maxDepth) {
      tooDeep = true;
      i = n;
      depth--;
      return;
    }
    skipSpace();
    const c = text.charCodeAt(i);
    if (c === 123) {
      // {
      i++;
      const from = keys.length;
      skipSpace();
      if (text.charCodeAt(i) === 125) i++;
      else {
        do {
          skipSpace();
          const key = string(true);
          let seen = false;
          for (let k = from; k < keys.length; k++) {
            if (keys[k] === key) {
              seen = true;
              break;
            }
          }
          if (!seen) keys.push(key);
          else if (out.length < limit) out.push({ path: [...path], key });
          skipSpace();
          i++; // ':'
          path.push(key);
          value();
          path.pop();
        } while (more());
        keys.length = from;
      }
    } else if (c === 91) {
      // [
      i++;
      skipSpace();
      if (text.charCodeAt(i) === 93) i++;
      else {
        let index = 0;
        do {
          path.push(index++);
          value();
          path.pop();
        } while (more());
      }
    } else if (c === QUOTE) {
      string(false);
    } else {
      // A number, true, false or null.
      const start = i;
      while (i < n) {
        const d = text.charCodeAt(i);
        if (d === 44 || d === 125 || d === 93 || d === 32 || d === 10 || d === 13 || d === 9) break;
        i++;
      }
      // Ends in 0 after a decimal point, with no exponent: precision JSON.parse drops.
      if (text.charCodeAt(i - 1) === 48 && precisions.length < 10_000) {
        const raw = text.slice(start, i);
        const point = raw.indexOf('.');
        if (point >= 0 && !/[eE]/.test(raw)) precisions.push({ path: [...path], decimals: raw.length - point - 1 });
      }
    }
    depth--;
  };
  value();
  return { duplicates: out, precisions, tooDeep };
}

/** A FHIRPath-like location: `root` then `.name` and `[index]` segments. */
export function pathText(root: string, path: ReadonlyArray<string | number>): string {
  let s = root;
  for (const p of path) s += typeof p === 'number' ? `[${p}]` : `.${p}`;
  return s;
}
