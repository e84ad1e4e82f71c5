/**
 * The built-in HIPAA Safe Harbor policy on Synthea patients (test/fixtures/research, see its README):
 * an independent scanner takes every identifying value from the input and searches the output for it.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Bundle, Patient, Resource } from '@medplum/fhirtypes';
import { ManualClock } from '../../src/platform/clock.js';
import { createDeidentifier } from '../../src/research/index.js';

const DIR = fileURLToPath(new URL('../fixtures/research/', import.meta.url));
const bundles = readdirSync(DIR)
  .filter((f) => f.endsWith('.json'))
  .map((f) => ({ file: f, bundle: JSON.parse(readFileSync(DIR + f, 'utf8').replace(/^\uFEFF/, '')) as Bundle }));
const clock = new ManualClock(new Date('2025-06-01T00:00:00Z'));
const deid = createDeidentifier({ keys: { cryptoHashKey: 'test-hash-key' }, clock });

/** Every string in a JSON value, with the key it sits under. */
function* strings(v: unknown, key = ''): Generator<[string, string]> {
  if (typeof v === 'string') yield [key, v];
  else if (Array.isArray(v)) for (const x of v) yield* strings(x, key);
  else if (typeof v === 'object' && v !== null) for (const [k, x] of Object.entries(v)) yield* strings(x, k);
}

const PEOPLE_AND_PLACES = /^(Patient|Practitioner|PractitionerRole|RelatedPerson|Organization|Location)\b/;

/** Reference.display values naming people and places (not the clinical titles of Observations). */
function* referenceDisplays(v: unknown, typeOf: Map<string, string>): Generator<string> {
  if (Array.isArray(v)) for (const x of v) yield* referenceDisplays(x, typeOf);
  else if (typeof v === 'object' && v !== null) {
    const o = v as Record<string, unknown>;
    if (typeof o.display === 'string' && typeof o.reference === 'string' && PEOPLE_AND_PLACES.test(typeOf.get(o.reference) ?? o.reference)) yield o.display;
    for (const x of Object.values(o)) yield* referenceDisplays(x, typeOf);
  }
}

/** Identifying values taken from the input, independently of the policy. */
function identifyingValues(bundle: Bundle): Map<string, string> {
  const found = new Map<string, string>(); // value → what it is
  const typeOf = new Map((bundle.entry ?? []).map((e) => [e.fullUrl ?? '', e.resource?.resourceType ?? '']));
  const add = (what: string, v: unknown): void => {
    if (typeof v === 'string' && v.length >= 3) found.set(v, what);
  };
  for (const e of bundle.entry ?? []) {
    const r = e.resource as Resource & Record<string, unknown>;
    if (r.resourceType === 'Patient') {
      const p = r as Patient;
      add('patient id', p.id);
      for (const n of p.name ?? []) {
        add('family name', n.family);
        for (const g of n.given ?? []) add('given name', g);
        for (const x of [...(n.prefix ?? []), ...(n.suffix ?? [])]) add('name affix', x);
      }
      for (const a of p.address ?? []) {
        for (const l of a.line ?? []) add('street', l);
        add('city', a.city);
        add('district', a.district);
        if (a.postalCode && a.postalCode.length > 3) add('full postal code', a.postalCode);
      }
      for (const t of p.telecom ?? []) add(`telecom ${t.system}`, t.value);
      for (const id of p.identifier ?? []) add(`identifier ${id.type?.coding?.[0]?.code ?? id.system}`, id.value);
      add('birth date', p.birthDate);
      const states = new Set((p.address ?? []).map((a) => a.state));
      for (const ex of p.extension ?? []) for (const [k, s] of strings(ex)) if (k !== 'url' && k !== 'system' && k !== 'code' && !states.has(s)) add('extension value', s);
    }
    if (r.resourceType === 'Practitioner') for (const [k, s] of strings((r as { name?: unknown }).name)) if (k !== 'use') add('practitioner name', s);
    for (const d of referenceDisplays(r, typeOf)) add('reference display', d);
    for (const [k, s] of strings(r)) {
      if (/^\d{4}-\d{2}-\d{2}/.test(s)) add('full date', s.slice(0, 10));
      if (k === 'div') add('narrative', s);
      if (k === 'data') add('attachment data', s);
      if (k === 'reference' && s.startsWith('urn:uuid:')) add('resource uuid', s.slice('urn:uuid:'.length));
    }
  }
  return found;
}

describe.each(bundles)('Safe Harbor on $file', ({ bundle }) => {
  const result = deid.deidentify(bundle);

  it('releases the bundle with every entry', () => {
    expect(result.kind).toBe('deidentified');
    if (result.kind !== 'deidentified') return;
    expect(result.droppedEntries).toEqual([]);
    expect(result.resource.entry?.length).toBe(bundle.entry?.length);
  });

  it('leaves no identifying value of the input in the output', () => {
    if (result.kind !== 'deidentified') throw new Error('dropped');
    // Organizations and Locations are not about the patient; the policy keeps their identifiers/addresses.
    const out = JSON.stringify(result.resource.entry?.filter((e) => !['Organization', 'Location'].includes(e.resource?.resourceType ?? '')));
    const leaks = [...identifyingValues(bundle)].filter(([v]) => out.includes(v)).map(([v, what]) => `${what}: ${v.slice(0, 40)}`);
    expect(leaks).toEqual([]);
  });

  it('keeps no date finer than a year, no extension, no identifier, no narrative', () => {
    if (result.kind !== 'deidentified') throw new Error('dropped');
    for (const e of result.resource.entry ?? []) {
      const r = e.resource!;
      if (r.resourceType === 'Organization' || r.resourceType === 'Location') continue;
      for (const [k, s] of strings(r)) {
        expect(/^\d{4}-\d{2}/.test(s) ? `${k}=${s}` : '').toBe('');
      }
      const text = JSON.stringify(r);
      expect(text).not.toMatch(/"extension"|"identifier"|"div"|"data"|"telecom"/);
    }
  });

  it('labels resources like the reference tool', () => {
    if (result.kind !== 'deidentified') throw new Error('dropped');
    const patient = result.resource.entry?.find((e) => e.resource?.resourceType === 'Patient')?.resource as Patient;
    const codes = patient.meta?.security?.map((s) => s.code);
    expect(codes).toEqual(expect.arrayContaining(['REDACTED', 'CRYTOHASH']));
  });

  it('is deterministic and key-dependent', () => {
    const again = deid.deidentify(bundle);
    const other = createDeidentifier({ keys: { cryptoHashKey: 'another-key' }, clock }).deidentify(bundle);
    if (result.kind !== 'deidentified' || again.kind !== 'deidentified' || other.kind !== 'deidentified') throw new Error('dropped');
    expect(JSON.stringify(again.resource)).toBe(JSON.stringify(result.resource));
    expect(result.resource.entry?.[0]?.resource?.id).not.toBe(other.resource.entry?.[0]?.resource?.id);
  });
});

describe('Safe Harbor: ages over 89', () => {
  it('drops the birth date (year included) of a patient over 89, keeps the year otherwise', () => {
    const old = deid.deidentify({ resourceType: 'Patient', id: 'p', birthDate: '1930-01-02', deceasedDateTime: '2020-05-06T10:00:00Z' } as Patient);
    const young = deid.deidentify({ resourceType: 'Patient', id: 'q', birthDate: '1950-01-02' } as Patient);
    if (old.kind !== 'deidentified' || young.kind !== 'deidentified') throw new Error('dropped');
    expect(old.resource.birthDate).toBeUndefined();
    expect((old.resource as Patient).deceasedDateTime).toBe('2020');
    expect(young.resource.birthDate).toBe('1950');
  });
});

describe('Safe Harbor and the precision of decimals', () => {
  const PRECISION = 'http://hl7.org/fhir/StructureDefinition/quantity-precision';
  const observation = (extension: unknown[]): Resource =>
    ({
      resourceType: 'Observation',
      id: 'o-prec',
      status: 'final',
      code: { text: 'glucose' },
      subject: { reference: 'Patient/p' },
      valueQuantity: { value: 72.5, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL', _value: { extension } },
    }) as unknown as Resource;
  const valueOf = (r: Resource): unknown => {
    const out = deid.deidentify(r);
    if (out.kind !== 'deidentified') throw new Error('dropped');
    return (out.resource as unknown as { valueQuantity: unknown }).valueQuantity;
  };

  it('keeps the written precision of a value (ingest adds it for 72.50): a count of decimal places, not PHI', () => {
    expect(valueOf(observation([{ url: PRECISION, valueInteger: 2 }]))).toEqual({
      value: 72.5,
      unit: 'mg/dL',
      system: 'http://unitsofmeasure.org',
      code: 'mg/dL',
      _value: { extension: [{ url: PRECISION, valueInteger: 2 }] },
    });
  });

  it('redacts an extension under that URL that carries anything else', () => {
    const v = valueOf(observation([{ url: PRECISION, valueString: 'John Smith' }, { url: PRECISION, valueInteger: 2, extension: [{ url: 'http://x', valueString: 'Jane Roe' }] }]));
    expect(JSON.stringify(v)).not.toMatch(/John|Jane|extension/);
  });
});
