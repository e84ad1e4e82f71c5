/**
 * Configuration compatibility with Microsoft FHIR Tools for Anonymization: its documented format,
 * methods, parameters and sample rules (docs/FHIR-anonymization.md), and the security labels it adds.
 */
import { ManualClock } from '../../src/platform/clock.js';
import {
  compileConfig,
  createDeidentifier,
  DeidConfigError,
  RuleNotApplicableError,
  type AnonymizerConfig,
} from '../../src/research/index.js';
import { Engine } from '../../src/research/deid/engine.js';
import { cryptoHash, dateShiftOffset } from '../../src/research/deid/algorithms.js';
import type { Bundle, Condition, Observation, Patient, Resource } from '@medplum/fhirtypes';

const KEYS = { cryptoHashKey: '123', dateShiftKey: 'dummy', encryptKey: '0123456789abcdef' };
const clock = new ManualClock(new Date('2025-06-01T00:00:00Z'));

/** The engine alone (no safety net: these minimal rule sets leave identifiers on purpose). */
function run<T extends Resource>(config: AnonymizerConfig, input: T): T {
  const engine = new Engine(compileConfig(config, KEYS));
  return engine.run(structuredClone(input) as unknown as Record<string, unknown>, { now: clock.now() }).output as unknown as T;
}

const rules = (...fhirPathRules: AnonymizerConfig['fhirPathRules']): AnonymizerConfig => ({ fhirVersion: 'R4', processingErrors: 'skip', fhirPathRules, parameters: {} });

const patient = (): Patient => ({
  resourceType: 'Patient',
  id: 'example',
  identifier: [{ system: 'urn:mrn', value: 'MRN-1' }],
  name: [{ use: 'official', family: 'Chalmers', given: ['Peter', 'James'] }],
  telecom: [
    { system: 'phone', value: '555-1234', use: 'home' },
    { system: 'email', value: 'p@example.org', use: 'work' },
  ],
  gender: 'male',
  birthDate: '1974-12-25',
  address: [{ use: 'home', line: ['534 Erewhon St'], city: 'PleasantVille', state: 'Vic', postalCode: '98052', country: 'AU' }],
  managingOrganization: { reference: 'Organization/1', display: 'Gastro clinic' },
});

describe('configuration format', () => {
  it('accepts the README sample unchanged (including its singular "processingError")', () => {
    const sample = {
      fhirVersion: 'R4',
      processingError: 'raise',
      fhirPathRules: [
        { path: "nodesByType('Extension')", method: 'redact' },
        { path: 'Organization.identifier', method: 'keep' },
        { path: "nodesByType('Address').country", method: 'keep' },
        { path: 'Resource.id', method: 'cryptoHash' },
        { path: "nodesByType('Reference').reference", method: 'cryptoHash' },
        { path: 'Group.name', method: 'redact' },
      ],
      parameters: { dateShiftKey: '', cryptoHashKey: '', encryptKey: '', enablePartialAgesForRedact: true },
    };
    const c = compileConfig(sample, { cryptoHashKey: 'k' });
    expect(c.rules).toHaveLength(6);
    expect(c.processingErrors).toBe('raise');
    expect(c.dateShiftScope).toBe('resource');
  });

  it('lists every problem: unknown method, bad path, bad version, missing keys, bad AES key size', () => {
    const bad = {
      fhirVersion: 'Stu3',
      fhirPathRules: [
        { path: 'Patient.name', method: 'cryptoHash' },
        { path: 'Patient.birthDate', method: 'dateShift' },
        { path: 'Patient.address.city', method: 'encrypt' },
        { path: 'Patient.name.foo(', method: 'redact' },
        { path: 'Patient.gender', method: 'perturb' },
        { path: 'Patient.gender', method: 'substitute' },
      ],
      parameters: { encryptKey: 'short' },
    };
    let err: DeidConfigError | undefined;
    try {
      compileConfig(bad);
    } catch (e) {
      err = e as DeidConfigError;
    }
    expect(err).toBeInstanceOf(DeidConfigError);
    const text = err!.problems.join('\n');
    expect(text).toMatch(/fhirVersion/);
    expect(text).toMatch(/cryptoHashKey/);
    expect(text).toMatch(/dateShiftKey/);
    expect(text).not.toMatch(/encryptKey \(needed/); // given, but the wrong size:
    expect(text).toMatch(/encryptKey: 40 bits/);
    expect(text).toMatch(/fhirPathRules\[3\]/);
    expect(text).toMatch(/span/);
    expect(text).toMatch(/replaceWith/);
    expect(() => compileConfig({ fhirPathRules: [{ path: 'Patient', method: 'scramble' }] })).toThrow(/must be one of/);
  });

  it('never falls back to a random key', () => {
    expect(() => createDeidentifier({}, { policy: 'safe-harbor' })).toThrow(/missing keys: cryptoHashKey/);
    expect(() => createDeidentifier({ keys: { cryptoHashKey: '' } }, {})).toThrow(DeidConfigError);
  });

  it('rejects unknown built-in policy names', () => {
    expect(() => createDeidentifier({ keys: KEYS }, { policy: '../etc/passwd' })).toThrow(/unknown policy/);
    expect(() => createDeidentifier({ keys: KEYS }, { policy: 'nope' })).toThrow(/unknown policy/);
  });
});

describe('methods', () => {
  it('redact removes values; keep wins when it comes first; rules apply in order', () => {
    const out = run(
      rules(
        { path: "nodesByType('HumanName').use", method: 'keep' },
        { path: "nodesByType('Address').state", method: 'keep' },
        { path: "nodesByType('HumanName')", method: 'redact' },
        { path: 'Patient.address', method: 'redact' },
      ),
      patient(),
    );
    expect(out.name).toEqual([{ use: 'official' }]);
    expect(out.address).toEqual([{ state: 'Vic' }]);
    expect(out.meta?.security).toEqual([{ system: 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue', code: 'REDACTED', display: 'redacted' }]);
  });

  it('cryptoHash hashes Resource.id and reference ids (keeping Type/)', () => {
    const out = run(rules({ path: 'Resource.id', method: 'cryptoHash' }, { path: "nodesByType('Reference').reference", method: 'cryptoHash' }), patient());
    expect(out.id).toBe(cryptoHash('example', '123'));
    expect(out.managingOrganization?.reference).toBe(`Organization/${cryptoHash('1', '123')}`);
    expect(out.meta?.security?.map((s) => s.code)).toEqual(['CRYTOHASH']);
  });

  it('encrypt replaces values with base64 ciphertext and labels MASKED', () => {
    const out = run(rules({ path: "nodesByType('Address').city", method: 'encrypt' }), patient());
    expect(out.address?.[0]?.city).toMatch(/^[A-Za-z0-9+/]+=*$/);
    expect(out.address?.[0]?.city).not.toBe('PleasantVille');
    expect(out.meta?.security?.map((s) => s.code)).toEqual(['MASKED']);
  });

  it('dateShift (scope resource: keyed by the root id) shifts with the published offset', () => {
    const out = run(rules({ path: "nodesByType('date')", method: 'dateshift' }), patient());
    const o = dateShiftOffset('dummy', 'example');
    const expected = new Date(Date.UTC(1974, 11, 25 + o)).toISOString().slice(0, 10);
    expect(out.birthDate).toBe(expected);
    expect(out.meta?.security).toEqual([{ code: 'PERTURBED', display: 'exact value is replaced with another exact value' }]);
  });

  it('dateShift scope file/folder uses the given prefix', () => {
    const cfg: AnonymizerConfig = { ...rules({ path: "nodesByType('date')", method: 'dateShift' }), parameters: { dateShiftScope: 'file' } };
    const engine = new Engine(compileConfig(cfg, KEYS));
    const a = engine.run(structuredClone(patient()) as never, { now: clock.now(), dateShiftKeyPrefix: 'a.ndjson' }).output as unknown as Patient;
    const b = engine.run({ ...structuredClone(patient()), id: 'other' } as never, { now: clock.now(), dateShiftKeyPrefix: 'a.ndjson' }).output as unknown as Patient;
    expect(a.birthDate).toBe(b.birthDate);
    const o = dateShiftOffset('dummy', 'a.ndjson');
    expect(a.birthDate).toBe(new Date(Date.UTC(1974, 11, 25 + o)).toISOString().slice(0, 10));
  });

  it('substitute replaces a primitive or a complex element (documented Address example)', () => {
    const out = run(
      rules(
        { path: "nodesByType('HumanName').family", method: 'substitute', replaceWith: 'Doe' },
        {
          path: "nodesByType('Address')",
          method: 'substitute',
          replaceWith: { use: 'home', city: 'example city', state: 'example state', period: { start: '2000-01-01' } },
        },
      ),
      patient(),
    );
    expect(out.name?.[0]?.family).toBe('Doe');
    expect(out.address).toEqual([{ use: 'home', city: 'example city', state: 'example state', period: { start: '2000-01-01' } }]);
    expect(out.meta?.security?.map((s) => s.code)).toEqual(['SUBSTITUTED']);
  });

  it('perturb (documented age examples) stays within span and labels PERTURBED', () => {
    const condition: Condition = { resourceType: 'Condition', subject: { reference: 'Patient/p' }, onsetAge: { value: 50, unit: 'a' }, abatementAge: { value: 60 } };
    const out = run(rules({ path: 'Condition.onset | Condition.abatement as Age', method: 'perturb', span: 6, rangeType: 'fixed', roundTo: 0 }), condition);
    expect(Math.abs(out.onsetAge!.value! - 50)).toBeLessThanOrEqual(3);
    expect(Math.abs(out.abatementAge!.value! - 60)).toBeLessThanOrEqual(3);
    expect(out.meta?.security?.map((s) => s.code)).toEqual(['PERTURBED']);
  });

  it('generalize (documented numeric, string, masking and date cases)', () => {
    const obs: Observation = { resourceType: 'Observation', status: 'final', code: { text: 'x' }, valueQuantity: { value: 18, unit: 'kg' } };
    const numeric = run(
      rules({
        path: "nodesByType('Quantity').value",
        method: 'generalize',
        cases: { '$this>=0 and $this<20': '20', '$this>=20 and $this<40': '40' },
        otherValues: 'redact',
      }),
      obs,
    );
    expect(numeric.valueQuantity?.value).toBe(20);
    expect(numeric.meta?.security?.map((s) => s.code)).toEqual(['GENERALIZED']);

    const p: Patient = { ...patient(), communication: [{ language: { coding: [{ code: 'en-GB' }, { code: 'fr-FR' }] } }] };
    const lang = run(
      rules({
        path: 'Patient.communication.language.coding.code',
        method: 'generalize',
        cases: { "$this in ('en-AU' | 'en-CA' | 'en-GB' |'en-IN' | 'en-NZ' | 'en-SG' | 'en-US')": "'en'", "$this in ('es-AR' | 'es-ES' | 'es-UY')": "'es'" },
        otherValues: 'redact',
      }),
      p,
    );
    expect(lang.communication?.[0]?.language.coding).toEqual([{ code: 'en' }, {}].filter((c) => Object.keys(c).length > 0));

    const masked = run(
      rules({ path: 'Patient.address.postalCode', method: 'generalize', cases: { "$this.startsWith('980') or $this.startsWith('234')": "$this.substring(0,2)+'****'" }, otherValues: 'redact' }),
      patient(),
    );
    expect(masked.address?.[0]?.postalCode).toBe('98****');

    const birth = run(
      rules({ path: 'Patient.birthDate', method: 'generalize', cases: { '$this >= @1970-01-01 and $this <= @1980-01-01': '@1970', '$this >= @2010-01-01': '@2010-01-01' }, otherValues: 'redact' }),
      patient(),
    );
    expect(birth.birthDate).toBe('1970');
  });

  it('generalize on a complex element is a policy error, raised even with skip', () => {
    const d = createDeidentifier({ keys: KEYS }, { policy: rules({ path: 'Patient.name', method: 'generalize', cases: { 'true': "'x'" } }) });
    expect(() => d.deidentify(patient())).toThrow(RuleNotApplicableError);
  });

  it('nodesByType(...).where(...) (documented home ContactPoint example) and nodesByName', () => {
    const out = run(rules({ path: "nodesByType('ContactPoint').where(use='home')", method: 'redact' }), patient());
    expect(out.telecom).toEqual([{ system: 'email', value: 'p@example.org', use: 'work' }]);
    const byName = run(rules({ path: "nodesByName('telecom')", method: 'redact' }), patient());
    expect(byName.telecom).toBeUndefined();
  });

  it('redact with partial parameters: ages, dates, zip codes (ABSTRED)', () => {
    const cfg: AnonymizerConfig = {
      fhirPathRules: [
        { path: "nodesByType('date')", method: 'redact' },
        { path: "nodesByType('Address')", method: 'redact' },
        { path: "nodesByType('Age')", method: 'redact' },
      ],
      parameters: { enablePartialAgesForRedact: true, enablePartialDatesForRedact: true, enablePartialZipCodesForRedact: true, restrictedZipCodeTabulationAreas: ['980'] },
    };
    const young = run(cfg, patient());
    expect(young.birthDate).toBe('1974');
    expect(young.address).toEqual([{ postalCode: '00000' }]);
    expect(young.meta?.security?.map((s) => s.code)).toEqual(['REDACTED', 'ABSTRED']);
    const old = run(cfg, { ...patient(), birthDate: '1920-03-04' });
    expect(old.birthDate).toBeUndefined();
    const c = run(cfg, { resourceType: 'Condition', subject: { reference: 'Patient/p' }, onsetAge: { value: 95, unit: 'a' }, abatementAge: { value: 45, unit: 'a' } } as Condition);
    expect(c.onsetAge).toBeUndefined();
    expect(c.abatementAge).toEqual({ value: 45 });
  });

  it('processes a Bundle in pre-order: entries and contained resources each get rules; contained resources get no labels', () => {
    const bundle: Bundle = {
      resourceType: 'Bundle',
      id: 'b1',
      type: 'collection',
      entry: [
        { fullUrl: 'urn:uuid:1', resource: patient() },
        {
          resource: {
            resourceType: 'Observation',
            id: 'o1',
            status: 'final',
            code: { text: 'secret' },
            subject: { reference: 'Patient/example' },
            contained: [{ resourceType: 'Patient', id: 'c1', name: [{ family: 'Hidden' }] }],
          } as Observation,
        },
      ],
    };
    const out = run(rules({ path: 'Resource.id', method: 'cryptoHash' }, { path: "nodesByType('HumanName')", method: 'redact' }, { path: 'Bundle.entry.fullUrl', method: 'redact' }), bundle);
    expect(out.id).toBe(cryptoHash('b1', '123'));
    expect(out.entry?.[0]?.fullUrl).toBeUndefined();
    const obs = out.entry?.[1]?.resource as Observation;
    expect(obs.id).toBe(cryptoHash('o1', '123'));
    expect(obs.contained?.[0]).toEqual({ resourceType: 'Patient', id: cryptoHash('c1', '123') });
    expect(obs.contained?.[0]?.meta).toBeUndefined();
    expect(obs.meta?.security?.map((s) => s.code)).toEqual(['REDACTED', 'CRYTOHASH']);
    expect(out.meta?.security?.map((s) => s.code)).toEqual(['REDACTED', 'CRYTOHASH']);
  });
});

describe('per-patient date shift (dateShiftScope patient)', () => {
  it('keeps intervals across one patient’s resources and differs between patients', () => {
    const d = createDeidentifier({ keys: KEYS, clock }, { policy: 'safe-harbor-dateshift' });
    const enc = (patientRef: string, start: string) => ({ resourceType: 'Encounter', status: 'finished', class: { code: 'AMB' }, subject: { reference: patientRef }, period: { start } }) as Resource;
    const shifted = (r: Resource): string => {
      const out = d.deidentify(r);
      if (out.kind !== 'deidentified') throw new Error(out.reason);
      return ((out.resource as unknown as { period: { start: string } }).period.start);
    };
    const a1 = shifted(enc('Patient/A', '2020-01-10'));
    const a2 = shifted(enc('Patient/A', '2020-03-01'));
    const days = (x: string, y: string): number => (Date.parse(y) - Date.parse(x)) / 86_400_000;
    expect(days(a1, a2)).toBe(days('2020-01-10', '2020-03-01'));
    const patientOut = d.deidentify({ resourceType: 'Patient', id: 'A', birthDate: '2000-01-10' } as Patient);
    expect(patientOut.kind === 'deidentified' && days((patientOut.resource as Patient).birthDate!, a1)).toBe(days('2000-01-10', '2020-01-10'));
    const uuid = '3d195286-ce77-f5b3-b64f-3eacfb9c273e';
    const u1 = shifted(enc(`urn:uuid:${uuid}`, '2020-01-10'));
    const uPatient = d.deidentify({ resourceType: 'Patient', id: uuid, birthDate: '2000-01-10' } as Patient);
    expect(uPatient.kind === 'deidentified' && days((uPatient.resource as Patient).birthDate!, u1)).toBe(days('2000-01-10', '2020-01-10'));
    const others = new Set(['B', 'C', 'D', 'E', 'F', 'G'].map((p) => days('2020-01-10', shifted(enc(`Patient/${p}`, '2020-01-10')))));
    expect(others.size).toBeGreaterThan(1);
  });
});
