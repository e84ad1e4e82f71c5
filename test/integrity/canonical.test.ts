import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { CanonicalizationError, canonicalize, canonicalizeToBytes } from '../../src/integrity/canonical.js';
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
