/**
 * The duplicate property-name scan (src/platform/json-duplicates.ts) against hand-built cases and the
 * real Synthea bundles of the fixtures, which have none.
 */
import { readFileSync, readdirSync } from 'node:fs';
import fc from 'fast-check';
import { duplicateKeys, pathText, scanJsonText } from '../../src/platform/json-duplicates.js';
import { jsonDepth } from '../../src/platform/json-text.js';

describe('duplicateKeys', () => {
  it('finds a name repeated within one object, with its place, and only there', () => {
    expect(duplicateKeys('{"id":"a","status":"final","id":"b"}')).toEqual([{ path: [], key: 'id' }]);
    expect(duplicateKeys('{"code":{"coding":[{"system":"s","code":"1"},{"code":"2","code":"3"}]}}')).toEqual([{ path: ['code', 'coding', 1], key: 'code' }]);
    // The same name in sibling or nested objects is not a duplicate.
    expect(duplicateKeys('{"a":{"a":1},"b":[{"a":1},{"a":2}],"c":{"b":{"a":{}}}}')).toEqual([]);
    expect(duplicateKeys('{}')).toEqual([]);
    expect(duplicateKeys('[]')).toEqual([]);
    expect(duplicateKeys('"x"')).toEqual([]);
  });

  it('compares names after unescaping, and is not fooled by quotes, braces or colons inside strings', () => {
    expect(duplicateKeys('{"id":1, "\\u0069d" :2}')).toEqual([{ path: [], key: 'id' }]);
    expect(duplicateKeys('{"a":"\\"}{\\":\\"a\\":","b":"\\\\","a\\"":1}')).toEqual([]);
    expect(duplicateKeys('{"a":"\\\\","a":"x"}')).toEqual([{ path: [], key: 'a' }]);
    expect(duplicateKeys(' { "a" : [ 1 , -2.5e3 , true , null , { } ] , "b" : "c" , "a" : false } ')).toEqual([{ path: [], key: 'a' }]);
  });

  it('stops at the limit', () => {
    expect(duplicateKeys('{"a":1,"a":2,"a":3,"a":4}', 2)).toHaveLength(2);
  });

  it('agrees with JSON.parse about what a duplicate is, on any JSON object (property)', () => {
    // Build objects from entries that may repeat names; the text has a duplicate exactly when the entry names repeat.
    const entries = fc.array(fc.tuple(fc.constantFrom('a', 'b', 'id', 'é', '"q"', '\\', '\u2028'), fc.jsonValue()), { maxLength: 6 });
    fc.assert(
      fc.property(entries, (list) => {
        const text = `{${list.map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`).join(',')}}`;
        const names = list.map(([k]) => k);
        const repeated = names.some((k, i) => names.indexOf(k) !== i);
        const found = duplicateKeys(text).filter((d) => d.path.length === 0);
        expect(found.length > 0).toBe(repeated);
      }),
    );
  });

  it('finds none in the Synthea bundles of the fixtures', () => {
    const dir = new URL('../fixtures/normalize/', import.meta.url);
    const files = readdirSync(dir).filter((f) => f.endsWith('.json'));
    expect(files.length).toBeGreaterThan(0);
    for (const f of files) expect(duplicateKeys(readFileSync(new URL(f, dir), 'utf8').replace(/^\uFEFF/, ''))).toEqual([]);
  });

  it('finds the numbers whose written precision JSON.parse drops (trailing zeros after the point), with their places', () => {
    const { precisions } = scanJsonText('{"a":72.50,"b":[1.0,2,3.10e2,0.0,10],"c":{"value":100,"v":-4.000,"w":0.05},"d":"7.50"}');
    expect(precisions).toEqual([
      { path: ['a'], decimals: 2 },
      { path: ['b', 0], decimals: 1 },
      { path: ['b', 3], decimals: 1 },
      { path: ['c', 'v'], decimals: 3 },
    ]);
  });

  it('measures the nesting as jsonDepth does, and stops past the limit without recursing further (property)', () => {
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 6 }), fc.integer({ min: 1, max: 6 }), (v, max) => {
        expect(scanJsonText(JSON.stringify(v, null, 1), 20, max).tooDeep).toBe(jsonDepth(v, max) > max);
      }),
    );
    const deep = `{"a":${'['.repeat(300_000)}${']'.repeat(300_000)}}`;
    expect(scanJsonText(deep).tooDeep).toBe(true);
    expect(scanJsonText('{"a":[[1]]}', 20, 4).tooDeep).toBe(false);
    expect(scanJsonText('{"a":[[1]]}', 20, 3).tooDeep).toBe(true);
  });

  it('writes a place as a FHIRPath-like location', () => {
    expect(pathText('Bundle', ['entry', 3, 'resource', 'code'])).toBe('Bundle.entry[3].resource.code');
  });
});
