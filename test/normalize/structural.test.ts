/** isStructurallyFhir, anchorId, and a property: normalizeResource never throws on JSON with a valid resourceType. */
import fc from 'fast-check';
import type { Resource } from '@medplum/fhirtypes';
import { ANCHOR_NAMESPACE, anchorId, isStructurallyFhir, loadNormalizationRules, normalizeResource, type NormalizationRules } from '../../src/normalize/index.js';
import { uuidV5 } from '../../src/normalize/anchor-id.js';

describe('isStructurallyFhir', () => {
  it.each<[string, unknown, RegExp]>([
    ['a string', 'Patient', /expected a JSON object, got string/],
    ['null', null, /got null/],
    ['an array', [{ resourceType: 'Patient' }], /got array/],
    ['no resourceType', { id: 'x' }, /missing resourceType/],
    ['a numeric resourceType', { resourceType: 7 }, /resourceType must be a string/],
    ['an unknown resourceType', { resourceType: 'Patientt' }, /unknown resourceType "Patientt"/],
    ['a prototype key as resourceType', { resourceType: 'constructor' }, /unknown resourceType "constructor"/],
    ['a __proto__ key', JSON.parse('{"resourceType":"Patient","name":[{"__proto__":{"polluted":true}}]}'), /forbidden property "__proto__".*\.name\[0\]\.__proto__|forbidden property "__proto__"/],
    ['a non-array where R4 has 0..*', { resourceType: 'Patient', name: { family: 'x' } }, /expected an array, got object/],
    ['an array where R4 has 0..1', { resourceType: 'Patient', gender: ['male'] }, /expected a single value/],
    ['a wrong primitive type', { resourceType: 'Patient', active: 'yes' }, /expected boolean, got string/],
    ['an object where a primitive belongs', { resourceType: 'Patient', birthDate: { y: 1 } }, /expected string, got object/],
    ['an unknown property', { resourceType: 'Observation', colour: 'red' }, /unknown property "colour"/],
    ['a bad id', { resourceType: 'Patient', id: 'has space' }, /id must match/],
    ['a contained non-resource', { resourceType: 'Patient', contained: [{ id: 'x' }] }, /contained entry must be a resource/],
    // PostgreSQL's json/jsonb cannot hold these; JSON.parse accepts them as \u escapes.
    ['a NUL in a string', JSON.parse('{"resourceType":"Patient","name":[{"text":"a\\u0000b"}]}'), /string contains U\+0000 \(NUL\)/],
    ['a NUL in a property name', JSON.parse('{"resourceType":"Patient","x\\u0000":1}'), /property name contains U\+0000/],
    ['a lone high surrogate', JSON.parse('{"resourceType":"Patient","name":[{"text":"a\\ud800b"}]}'), /lone UTF-16 surrogate/],
    ['a lone low surrogate at the end', JSON.parse('{"resourceType":"Patient","name":[{"family":"x\\udc00"}]}'), /lone UTF-16 surrogate/],
    // JSON.parse makes 1e400 Infinity, which JSON.stringify (and so the store) would turn into null.
    ['a number beyond a double', JSON.parse('{"resourceType":"Observation","valueQuantity":{"value":1e400}}'), /number is out of range/],
    ['a negative number beyond a double', JSON.parse('{"resourceType":"Observation","component":[{"valueQuantity":{"value":-1e400}}]}'), /number is out of range/],
  ])('rejects %s', (_name, value, message) => {
    const r = isStructurallyFhir(value);
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.outcome.resourceType).toBe('OperationOutcome');
      expect(r.outcome.issue?.map((i) => i.details?.text).join('\n')).toMatch(message);
    }
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('accepts astral characters (surrogate pairs), non-ASCII text, tabs and newlines', () => {
    const r = isStructurallyFhir({ resourceType: 'Patient', name: [{ text: 'J\u00fcrgen \u{1F600} \u6f22\u5b57\tline\nnext' }] });
    expect(r.ok).toBe(true);
  });

  it('names where unstorable text is', () => {
    const r = isStructurallyFhir(JSON.parse('{"resourceType":"Observation","status":"final","code":{"text":"x"},"note":[{"text":"ok"},{"text":"bad\\u0000"}]}'));
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.outcome.issue?.find((i) => /U\+0000/.test(i.details?.text ?? ''))?.expression).toEqual(['.note[1].text']);
  });

  it('accepts resources, choice types, primitive extensions and nulls in primitive arrays', () => {
    const value = {
      resourceType: 'Observation',
      id: 'o.1-x',
      status: 'final',
      code: { text: 'x' },
      valueQuantity: { value: 1 },
      _status: { extension: [{ url: 'http://example.org', valueString: 'y' }] },
    };
    const r = isStructurallyFhir(value);
    expect(r.ok).toBe(true);
    if (r.ok) expect(r.resource).toBe(value);
    expect(isStructurallyFhir({ resourceType: 'Patient', name: [{ given: ['a', null], _given: [null, { id: 'g' }] }] }).ok).toBe(true);
  });
});

describe('anchorId', () => {
  it('implements RFC 9562 UUIDv5 (the RFC example: DNS namespace, www.example.com)', () => {
    expect(uuidV5('6ba7b810-9dad-11d1-80b4-00c04fd430c8', 'www.example.com')).toBe('2ed6657d-e927-568b-95e1-2665a8aea6a2');
    expect(uuidV5('6ba7b811-9dad-11d1-80b4-00c04fd430c8', 'urn:fhir-anchor:resource-id')).toBe(ANCHOR_NAMESPACE);
  });

  it('is deterministic, a valid FHIR id, and separates its inputs', () => {
    fc.assert(
      fc.property(fc.string(), fc.string(), fc.string(), (s, t, i) => {
        const id = anchorId(s, t, i);
        expect(id).toMatch(/^[A-Za-z0-9\-.]{1,64}$/);
        expect(anchorId(s, t, i)).toBe(id);
      }),
    );
    expect(anchorId('a', 'Patient', '1')).not.toBe(anchorId('a', 'Patient', '2'));
    expect(anchorId('a', 'Patient', '1')).not.toBe(anchorId('b', 'Patient', '1'));
    expect(anchorId('a', 'Patient', '1')).not.toBe(anchorId('a', 'Group', '1'));
    expect(anchorId('a|b', 'c', 'd')).not.toBe(anchorId('a', 'b|c', 'd'));
    expect(anchorId('ehr-a', 'Patient', '123')).toBe(anchorId('ehr-a', 'Patient', '123'));
  });
});

describe('normalizeResource on arbitrary JSON', () => {
  let rules: NormalizationRules;
  beforeAll(async () => {
    rules = await loadNormalizationRules(undefined, 'ehr-a');
  });

  const TYPES = ['Patient', 'Observation', 'Condition', 'Encounter', 'Bundle', 'Basic', 'ExplanationOfBenefit', 'Provenance'];
  const interesting = fc.oneof(
    fc.constantFrom('reference', 'identifier', 'coding', 'valueQuantity', 'low', 'meta', 'id', 'contained', 'category', 'code', 'system', 'unit', 'profile', '__proto__', 'constructor'),
    fc.string(),
  );
  const json = fc.letrec((tie) => ({
    value: fc.oneof({ depthSize: 'small' }, fc.jsonValue({ maxDepth: 2 }), tie('object'), fc.array(tie('value'), { maxLength: 4 })),
    object: fc.dictionary(interesting, tie('value'), { maxKeys: 6 }),
  })).object;

  it('never throws, never mutates its input, and always returns the resourceType', () => {
    fc.assert(
      fc.property(fc.constantFrom(...TYPES), json, fc.option(fc.string(), { nil: undefined }), (resourceType, body, base) => {
        const input = { ...(body as Record<string, unknown>), resourceType } as unknown as Resource;
        const before = JSON.stringify(input);
        const r = normalizeResource(input, {
          sourceId: 'ehr-a',
          sourceBaseUrl: base ?? 'https://ehr-a.example/fhir',
          rules,
          resolvedReferences: new Map([['Patient/1', 'Patient/x']]),
        });
        expect(r.resource.resourceType).toBe(resourceType);
        expect(Array.isArray(r.notes)).toBe(true);
        expect(JSON.stringify(input)).toBe(before);
      }),
      { numRuns: 500 },
    );
  });
});
