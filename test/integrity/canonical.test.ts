import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { CanonicalizationError, canonicalize, canonicalizeToBytes, fastCanonicalize, libraryCanonicalize } from '../../src/integrity/canonical.js';
import { toHex } from '../../src/integrity/encoding.js';
import {
  INVALID_NUMBER_SAMPLES,
  MAIN_EXAMPLE_INPUT,
  MAIN_EXAMPLE_OUTPUT,
  NUMBER_SAMPLES,
  SORTING_EXPECTED_VALUES,
  SORTING_INPUT,
} from '../fixtures/integrity/rfc8785.js';

function numberFromBits(hex: string): number {
  return Buffer.from(hex, 'hex').readDoubleBE(0);
}

describe('canonicalize (RFC 8785 JCS)', () => {
  it.each(NUMBER_SAMPLES)('serialises IEEE-754 %s as %s (Appendix B)', (bits, expected) => {
    expect(canonicalize(numberFromBits(bits))).toBe(expected);
    expect(canonicalize([numberFromBits(bits)])).toBe(`[${expected}]`);
  });

  it.each(INVALID_NUMBER_SAMPLES)('rejects non-finite number %s', (bits) => {
    expect(() => canonicalize({ x: numberFromBits(bits) })).toThrow(CanonicalizationError);
  });

  it('reproduces the §3.2.2 example', () => {
    expect(canonicalize(JSON.parse(MAIN_EXAMPLE_INPUT))).toBe(MAIN_EXAMPLE_OUTPUT);
    // UTF-8 output: the euro sign is e2 82 ac, escapes stay ASCII.
    expect(toHex(canonicalizeToBytes(JSON.parse(MAIN_EXAMPLE_INPUT)))).toContain('22e282ac245c7530303066');
  });

  it('sorts keys by UTF-16 code units (§3.2.3)', () => {
    const out = canonicalize(JSON.parse(SORTING_INPUT));
    const reparsed = JSON.parse(out) as Record<string, string>;
    expect(Object.values(reparsed).length).toBe(7);
    const order = [...out.matchAll(/":"([^"]+)"/g)].map((m) => m[1]);
    expect(order).toEqual([...SORTING_EXPECTED_VALUES]);
    // The emoji (surrogate pair D83D DE00) sorts before U+FB33 by code unit, not code point.
    expect(out.indexOf('\u{1F600}')).toBeLessThan(out.indexOf('\ufb33'));
  });

  it('escapes only what JSON requires, lower-case \\u00XX for controls', () => {
    expect(canonicalize('\u0000\u001f"\\/\u007f\u00e9')).toBe('"\\u0000\\u001f\\"\\\\/\u007f\u00e9"');
    expect(canonicalize('\b\f\n\r\t')).toBe('"\\b\\f\\n\\r\\t"');
  });

  it('has no whitespace and orders nested members', () => {
    expect(canonicalize({ b: [1, { d: 1, c: 2 }], a: { z: null, y: true } })).toBe(
      '{"a":{"y":true,"z":null},"b":[1,{"c":2,"d":1}]}',
    );
  });

  it('rejects values JSON cannot represent', () => {
    expect(() => canonicalize(undefined)).toThrow(CanonicalizationError);
    expect(() => canonicalize(() => 1)).toThrow(CanonicalizationError);
    expect(() => canonicalize({ n: 10n })).toThrow(CanonicalizationError);
    expect(() => canonicalize({ s: 'a\ud800b' })).toThrow(CanonicalizationError);
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    expect(() => canonicalize(cyclic)).toThrow(CanonicalizationError);
  });

  it('is idempotent and independent of key insertion order (property)', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (value) => {
        const once = canonicalize(value);
        expect(canonicalize(JSON.parse(once))).toBe(once);
        // Re-inserting keys in reverse order must not change the output.
        const reversed = JSON.parse(JSON.stringify(value), (_k, v: unknown) =>
          v !== null && typeof v === 'object' && !Array.isArray(v)
            ? Object.fromEntries(Object.entries(v as Record<string, unknown>).reverse())
            : v,
        ) as unknown;
        expect(canonicalize(reversed)).toBe(once);
      }),
      { numRuns: 300 },
    );
  });
});

describe('canonicalize fast path', () => {
  // Strings and keys with every kind of code unit, including surrogates (paired and lone), controls
  // and integer-like names: the fast path must give the library's answer or hand over to it.
  const unit = fc.oneof(
    fc.constantFrom('0', '1', '10', '9', '01', '-1', '1.5', '__proto__', 'constructor', 'toJSON', 'a', 'b', '\u20ac', '\ud83d\ude00', '\ud800', '\udc00', '\u0000', '"', '\\', '\u2028'),
    fc.string({ unit: 'binary', maxLength: 4 }),
  );
  const text = fc.array(unit, { maxLength: 4 }).map((parts) => parts.join(''));
  const json = fc.letrec((tie) => ({
    value: fc.oneof(
      { depthSize: 'small' },
      fc.constant(null),
      fc.boolean(),
      fc.double(),
      fc.integer(),
      text,
      fc.array(tie('value'), { maxLength: 4 }),
      fc.dictionary(text, tie('value'), { maxKeys: 5 }),
    ),
  })).value;

  it('agrees with the library on arbitrary JSON data, or hands over to it', () => {
    let fastHits = 0;
    fc.assert(
      fc.property(json, (value) => {
        let expected: string | Error;
        try {
          expected = libraryCanonicalize(value);
        } catch (err) {
          expected = err as Error;
        }
        const fast = fastCanonicalize(value);
        if (fast !== undefined) {
          fastHits += 1;
          expect(fast).toBe(expected);
        }
        if (typeof expected === 'string') expect(canonicalize(value)).toBe(expected);
        else expect(() => canonicalize(value)).toThrow(CanonicalizationError);
      }),
      { numRuns: 3000 },
    );
    // The property exercises both paths (not only the hand-over).
    expect(fastHits).toBeGreaterThan(1000);
    expect(fastHits).toBeLessThan(3000);
  });

  it('takes the fast path for FHIR-shaped data and keeps a `__proto__` member as data', () => {
    const parsed = JSON.parse('{"resourceType":"Patient","name":[{"given":["Zoë"],"family":"O\'Brien"}],"__proto__":{"x":1},"active":true,"n":1e21}') as unknown;
    const fast = fastCanonicalize(parsed);
    expect(fast).toBe(libraryCanonicalize(parsed));
    expect(fast).toBe('{"__proto__":{"x":1},"active":true,"n":1e+21,"name":[{"family":"O\'Brien","given":["Zoë"]}],"resourceType":"Patient"}');
  });

  it('hands integer-like names, toJSON, class instances and surrogates to the library', () => {
    expect(fastCanonicalize({ 10: 'a', 9: 'b' })).toBeUndefined();
    expect(canonicalize({ 10: 'a', 9: 'b' })).toBe('{"10":"a","9":"b"}');
    expect(fastCanonicalize({ d: new Date(0) })).toBeUndefined();
    expect(canonicalize({ d: new Date(0) })).toBe('{"d":"1970-01-01T00:00:00.000Z"}');
    expect(fastCanonicalize({ s: '\ud83d\ude00' })).toBeUndefined();
    expect(canonicalize({ s: '\ud83d\ude00' })).toBe('{"s":"\ud83d\ude00"}');
    expect(fastCanonicalize([undefined])).toBeUndefined();
    expect(canonicalize([undefined])).toBe('[null]');
    expect(canonicalize({ a: undefined, b: 1 })).toBe('{"b":1}');
  });
});
