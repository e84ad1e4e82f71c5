/**
 * normalizeResource over two Synthea patients (a 2021 US Core run with conditional references and a
 * 2019 bundle without profiles) and hand-built resources for each rule.
 */
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Observation, Patient, Quantity, Resource } from '@medplum/fhirtypes';
import {
  anchorId,
  loadNormalizationRules,
  normalizeResource,
  RulesError,
  sourceIdentifierSystem,
  type NormalizationRules,
  type NormalizeContext,
  type NormalizeResult,
} from '../../src/normalize/index.js';
import { BASE, LEGACY, RUN1, SOURCE, bundle, referencesIn, resolveBundle, resources } from './helpers.js';

const PROFILES_DIR = path.resolve('fhir-profiles');
const US_CORE = 'http://hl7.org/fhir/us/core/StructureDefinition/';
const LOINC = 'http://loinc.org';
const UCUM = 'http://unitsofmeasure.org';
const ANCHORED = /^[A-Z][A-Za-z]+\/[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

let rules: NormalizationRules;
let ehrA: NormalizationRules;
const ctx = (extra: Partial<NormalizeContext> = {}): NormalizeContext => ({ sourceId: SOURCE, sourceBaseUrl: BASE, rules, ...extra });

beforeAll(async () => {
  rules = await loadNormalizationRules(undefined, SOURCE); // no sources/synthea.json → default.json
  ehrA = await loadNormalizationRules(undefined, 'ehr-a');
});

describe.each([RUN1, LEGACY])('Synthea patient %s', (file) => {
  const b = bundle(file);
  const resolved = resolveBundle(b);
  let results: ({ input: Resource } & NormalizeResult)[] = [];
  beforeAll(() => {
    results = resources(b).map((r) => ({ input: r, ...normalizeResource(r, ctx({ resolvedReferences: resolved })) }));
  });

  it('normalises every resource without throwing and without touching the input', () => {
    expect(results.length).toBe(b.entry!.length);
    expect(bundle(file)).toEqual(b);
  });

  it('anchors ids and keeps the source id as an identifier and in meta.source', () => {
    for (const { input, resource } of results) {
      expect(resource.id).toBe(anchorId(SOURCE, input.resourceType, input.id!));
      expect(resource.meta?.source).toBe(`${BASE}/${input.resourceType}/${input.id}`);
      expect(resource.meta?.versionId).toBeUndefined();
      expect(resource.meta?.lastUpdated).toBeUndefined();
      if (!rules.identifierArrayTypes.has(input.resourceType)) continue; // e.g. Provenance has no identifier: meta.source carries it
      const ids = (resource as { identifier?: { system?: string; value?: string }[] }).identifier ?? [];
      expect(ids).toContainEqual(expect.objectContaining({ system: sourceIdentifierSystem(SOURCE, input.resourceType), value: input.id }));
    }
  });

  it('rewrites every reference to Type/anchorId (contained #refs untouched, display kept)', () => {
    let count = 0;
    for (const { input, resource } of results) {
      const before = referencesIn(input);
      const after = referencesIn(resource);
      expect(after.map((r) => r.path)).toEqual(before.map((r) => r.path));
      for (const [i, { reference }] of after.entries()) {
        count++;
        if (before[i]!.reference.startsWith('#')) expect(reference).toBe(before[i]!.reference);
        else expect(reference).toMatch(ANCHORED);
      }
    }
    expect(count).toBeGreaterThan(200);
    const enc = results.find((r) => r.input.resourceType === 'Encounter')!;
    expect((enc.resource as { serviceProvider?: { display?: string } }).serviceProvider?.display).toBe(
      (enc.input as { serviceProvider?: { display?: string } }).serviceProvider?.display,
    );
  });

  it('sets a US Core 6.1.0 meta.profile on every type that has one, and none on Claim/EOB', () => {
    for (const { input, resource, targetProfile } of results) {
      if (['Claim', 'ExplanationOfBenefit'].includes(input.resourceType)) {
        expect(targetProfile).toBeUndefined();
        expect(resource.meta?.profile).toBeUndefined();
      } else {
        expect(targetProfile).toMatch(new RegExp(`^${US_CORE}`));
        expect(resource.meta?.profile?.[0]).toBe(targetProfile);
        expect(resource.meta?.profile?.filter((p) => p.startsWith(US_CORE))).toEqual([targetProfile]);
      }
    }
  });

  it('gives every UCUM quantity a code from the units table', () => {
    const codes = new Set(rules.ucumExact.keys());
    for (const { resource } of results) {
      if (resource.resourceType !== 'Observation') continue;
      for (const q of [resource.valueQuantity, ...(resource.component ?? []).map((c) => c.valueQuantity)].filter((x): x is Quantity => !!x)) {
        if (q.code === undefined && q.unit === undefined) continue;
        expect(q.system).toBe(UCUM);
        expect(codes.has(q.code!)).toBe(true);
      }
    }
  });
});

describe('rules on the 2021 US Core run', () => {
  const b = bundle(RUN1);
  let out: NormalizeResult[] = [];
  beforeAll(() => {
    out = resources(b).map((r) => normalizeResource(r, { sourceId: SOURCE, sourceBaseUrl: BASE, rules, resolvedReferences: resolveBundle(b) }));
  });

  it('replaces the 3.1.1 us-core-condition claim by the 6.1.0 encounter-diagnosis profile', () => {
    const cond = out.find((r) => r.resource.resourceType === 'Condition')!;
    expect(cond.resource.meta?.profile).toEqual([`${US_CORE}us-core-condition-encounter-diagnosis`]);
    expect(cond.notes.join()).toMatch(/retired profile .*us-core-condition /);
  });

  it('normalises the units Synthea sends as "C" and "mmHg"', () => {
    const values = out.flatMap((r) => (r.resource.resourceType === 'Observation' && r.resource.valueQuantity ? [r.resource.valueQuantity] : []));
    expect(values).toContainEqual(expect.objectContaining({ unit: 'C', code: 'Cel', system: UCUM }));
    expect(values).toContainEqual(expect.objectContaining({ unit: 'mmHg', code: 'mm[Hg]', system: UCUM }));
  });
});

describe('hand-built resources', () => {
  const heartRate = (extra: Partial<Observation> = {}): Observation => ({
    resourceType: 'Observation',
    id: 'hr-1',
    meta: { versionId: '7', lastUpdated: '2024-05-01T10:00:00Z', profile: [`${US_CORE}us-core-observation-lab`, 'http://example.org/other-profile'] },
    status: 'final',
    code: { coding: [{ system: LOINC, code: '8867-4', display: 'Heart rate' }] },
    subject: { reference: 'Patient/p1', display: 'Pat' },
    effectiveDateTime: '2024-05-01T09:00:00Z',
    valueQuantity: { value: 72, unit: 'beats/minute' },
    ...extra,
  });

  it('adds the vital-signs category, the specific vital-sign profile and UCUM /min', () => {
    const r = normalizeResource(heartRate(), ctx());
    const obs = r.resource as Observation;
    expect(obs.category).toEqual([{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'vital-signs', display: 'Vital Signs' }] }]);
    expect(r.targetProfile).toBe(`${US_CORE}us-core-heart-rate`);
    expect(obs.meta?.profile).toEqual([`${US_CORE}us-core-heart-rate`, 'http://example.org/other-profile']);
    expect(obs.valueQuantity).toEqual({ value: 72, unit: 'beats/minute', system: UCUM, code: '/min' });
  });

  it('keeps the source version in meta.source and returns lastUpdated as sourceLastUpdated', () => {
    const r = normalizeResource(heartRate(), ctx({ sourceBaseUrl: `${BASE}/` }));
    expect(r.resource.meta?.source).toBe(`${BASE}/Observation/hr-1/_history/7`);
    expect(r.resource.meta?.versionId).toBeUndefined();
    expect(r.resource.meta?.lastUpdated).toBeUndefined();
    expect(r.sourceLastUpdated).toBe('2024-05-01T10:00:00Z');
  });

  it.each([
    ['mg/dl', 'mg/dL'],
    ['MG/DL', 'mg/dL'],
    ['mmhg', 'mm[Hg]'],
    ['mm Hg', 'mm[Hg]'],
    ['degC', 'Cel'],
    ['Cel', 'Cel'],
    ['kg', 'kg'],
    ['cm', 'cm'],
    ['/min', '/min'],
    ['lbs', '[lb_av]'],
  ])('unit %s → UCUM %s', (unit, code) => {
    const obs = normalizeResource(heartRate({ valueQuantity: { value: 1, unit } }), ctx()).resource as Observation;
    expect(obs.valueQuantity).toEqual({ value: 1, unit, system: UCUM, code });
  });

  it('leaves quantities in other unit systems alone and notes unknown units', () => {
    const other = { value: 1, unit: 'tab', system: 'http://example.org/units', code: 'TAB' };
    expect((normalizeResource(heartRate({ valueQuantity: other }), ctx()).resource as Observation).valueQuantity).toEqual(other);
    const r = normalizeResource(heartRate({ valueQuantity: { value: 1, unit: 'furlongs' } }), ctx());
    expect((r.resource as Observation).valueQuantity).toEqual({ value: 1, unit: 'furlongs' });
    expect(r.notes.join()).toMatch(/furlongs/);
  });

  it('rewrites relative, own-base absolute and caller-resolved references; leaves other bases, #contained and unresolved urns', () => {
    const resolved = new Map([['urn:uuid:9d4b3b2e-0000-4000-8000-000000000001', 'Patient/resolved-by-caller']]);
    const obs = heartRate({
      subject: { reference: 'urn:uuid:9d4b3b2e-0000-4000-8000-000000000001', display: 'Pat' },
      performer: [
        { reference: `${BASE}/Practitioner/dr-1`, display: 'Dr One' },
        { reference: 'https://elsewhere.example/fhir/Practitioner/dr-2' },
        { reference: '#org' },
        { reference: 'Organization/org-9/_history/3' },
      ],
      focus: [{ reference: 'urn:uuid:00000000-0000-4000-8000-00000000dead' }],
      contained: [{ resourceType: 'Organization', id: 'org', partOf: { reference: 'Organization/parent' } }],
      extension: [{ url: 'http://example.org/ext', valueReference: { reference: 'Device/d1' } }],
    });
    const r = normalizeResource(obs, ctx({ resolvedReferences: resolved }));
    const out = r.resource as Observation;
    expect(out.subject).toEqual({ reference: 'Patient/resolved-by-caller', display: 'Pat' });
    expect(out.performer).toEqual([
      { reference: `Practitioner/${anchorId(SOURCE, 'Practitioner', 'dr-1')}`, display: 'Dr One' },
      { reference: 'https://elsewhere.example/fhir/Practitioner/dr-2' },
      { reference: '#org' },
      { reference: `Organization/${anchorId(SOURCE, 'Organization', 'org-9')}` },
    ]);
    expect(out.focus).toEqual([{ reference: 'urn:uuid:00000000-0000-4000-8000-00000000dead' }]);
    expect(out.contained?.[0]).toMatchObject({ id: 'org', partOf: { reference: `Organization/${anchorId(SOURCE, 'Organization', 'parent')}` } });
    expect(out.extension?.[0]?.valueReference?.reference).toBe(`Device/${anchorId(SOURCE, 'Device', 'd1')}`);
    expect(r.notes.join('\n')).toMatch(/unresolved reference urn:uuid:00000000/);
    expect(r.notes.join('\n')).toMatch(/version-specific reference Organization\/org-9\/_history\/3/);
  });

  it('namespaces identifiers without a system (context first, then the source rules file), values unchanged', () => {
    const patient: Patient = {
      resourceType: 'Patient',
      id: 'p1',
      identifier: [{ value: 'MRN-001' }, { system: 'http://hl7.org/fhir/sid/us-ssn', value: '999-00-1234' }],
      name: [{ family: 'Doe' }],
      gender: 'female',
      generalPractitioner: [{ identifier: { value: 'GP-7' } }],
    };
    const viaCtx = normalizeResource(patient, ctx({ identifierSystem: 'https://hospital.example/mrn' })).resource as Patient;
    expect(viaCtx.identifier).toEqual([
      { system: 'https://hospital.example/mrn', value: 'MRN-001' },
      { system: 'http://hl7.org/fhir/sid/us-ssn', value: '999-00-1234' },
      { use: 'secondary', system: 'urn:fhir-anchor:source:synthea:Patient', value: 'p1' },
    ]);
    expect(viaCtx.generalPractitioner?.[0]?.identifier).toEqual({ system: 'https://hospital.example/mrn', value: 'GP-7' });
    const viaRules = normalizeResource(patient, { sourceId: 'ehr-a', sourceBaseUrl: 'https://ehr-a.example/fhir', rules: ehrA }).resource as Patient;
    expect(viaRules.identifier?.[0]).toEqual({ system: 'https://ehr-a.example/fhir/sid/mrn', value: 'MRN-001' });
    const none = normalizeResource(patient, ctx()).resource as Patient;
    expect(none.identifier?.[0]).toEqual({ value: 'MRN-001' });
    expect(patient.identifier?.[0]).toEqual({ value: 'MRN-001' });
    // An empty system (as in a real transaction bundle of the Microsoft FHIR server's tests) is no system.
    const empty = normalizeResource({ ...patient, identifier: [{ system: '', value: 'MRN-002' }] }, ctx({ identifierSystem: 'https://hospital.example/mrn' })).resource as Patient;
    expect(empty.identifier?.[0]).toEqual({ system: 'https://hospital.example/mrn', value: 'MRN-002' });
  });

  it('adds LOINC / SNOMED / RxNorm codings from the ConceptMaps and keeps the original coding', () => {
    const lab = normalizeResource(
      { resourceType: 'Observation', id: 'l1', status: 'final', code: { coding: [{ system: 'https://ehr-a.example/fhir/CodeSystem/local-lab', code: 'GLU' }] }, subject: { reference: 'Patient/p1' } },
      { sourceId: 'ehr-a', sourceBaseUrl: 'https://ehr-a.example/fhir', rules: ehrA },
    );
    const obs = lab.resource as Observation;
    expect(obs.code.coding).toEqual([
      { system: 'https://ehr-a.example/fhir/CodeSystem/local-lab', code: 'GLU' },
      { system: LOINC, code: '2345-7', display: 'Glucose [Mass/volume] in Serum or Plasma' },
    ]);
    expect(obs.category?.[0]?.coding?.[0]?.code).toBe('laboratory');
    expect(lab.targetProfile).toBe(`${US_CORE}us-core-observation-lab`);

    const cond = normalizeResource(
      { resourceType: 'Condition', id: 'c1', subject: { reference: 'Patient/p1' }, code: { coding: [{ system: 'https://ehr-a.example/fhir/CodeSystem/local-problem', code: 'DM2' }, { system: 'https://ehr-a.example/fhir/CodeSystem/local-problem', code: 'XYZ' }] } },
      { sourceId: 'ehr-a', sourceBaseUrl: 'https://ehr-a.example/fhir', rules: ehrA },
    );
    expect((cond.resource as { code: { coding: unknown[] } }).code.coding).toContainEqual({ system: 'http://snomed.info/sct', code: '44054006', display: 'Diabetes mellitus type 2 (disorder)' });
    expect(cond.notes.join()).toMatch(/no mapping for local code .*XYZ/);

    // The source-specific map does not apply to other sources.
    const dm2: Resource = { resourceType: 'Condition', id: 'c1', subject: { reference: 'Patient/p1' }, code: { coding: [{ system: 'https://ehr-a.example/fhir/CodeSystem/local-problem', code: 'DM2' }] } };
    const elsewhere = normalizeResource(dm2, ctx());
    expect((elsewhere.resource as { code: { coding: unknown[] } }).code.coding).toHaveLength(1);
  });

  it('selects Condition profiles by category and gives types without a US Core profile none', () => {
    const cond = (code: string): Resource => ({ resourceType: 'Condition', id: 'c', subject: { reference: 'Patient/p' }, category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-category', code }] }] });
    expect(normalizeResource(cond('encounter-diagnosis'), ctx()).targetProfile).toBe(`${US_CORE}us-core-condition-encounter-diagnosis`);
    expect(normalizeResource(cond('problem-list-item'), ctx()).targetProfile).toBe(`${US_CORE}us-core-condition-problems-health-concerns`);
    const claim = normalizeResource({ resourceType: 'Basic', id: 'b', code: { text: 'x' }, meta: { profile: [`${US_CORE}us-core-patient`] } }, ctx());
    expect(claim.targetProfile).toBeUndefined();
    expect(claim.resource.meta?.profile).toBeUndefined();
  });
});

describe('loadNormalizationRules', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'fhir-profiles-'));
    cpSync(PROFILES_DIR, dir, { recursive: true });
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('compiles the shipped rules', () => {
    expect(rules.files).toEqual(['profile-selection.json', 'ucum-units.json', 'sources/default.json', 'conceptmaps/ConceptMap-ehr-a-lab-to-loinc.json']);
    expect(ehrA.files).toContain('sources/ehr-a/ConceptMap-ehr-a-problems-to-snomed.json');
  });

  it('rejects broken files with a list of every problem', async () => {
    writeFileSync(path.join(dir, 'ucum-units.json'), JSON.stringify({ system: 'http://unitsofmeasure.org', quantityKeys: [], units: [{ code: 5 }] }));
    writeFileSync(path.join(dir, 'sources', 'default.json'), '{ not json');
    const err = await loadNormalizationRules(dir).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RulesError);
    const problems = (err as RulesError).problems.join('\n');
    expect(problems).toMatch(/ucum-units\.json: quantityKeys/);
    expect(problems).toMatch(/ucum-units\.json: units\.0\.code/);
    expect(problems).toMatch(/sources\/default\.json: .*JSON/);
  });

  it('rejects rules that name a profile that is not shipped, and unsafe source ids', async () => {
    const file = path.join(dir, 'profile-selection.json');
    const sel = JSON.parse((await import('node:fs')).readFileSync(file, 'utf8')) as { rules: { profile: string }[] };
    sel.rules[0]!.profile = 'us-core-nonexistent';
    writeFileSync(file, JSON.stringify(sel));
    await expect(loadNormalizationRules(dir)).rejects.toThrow(/us-core-nonexistent/);
    await expect(loadNormalizationRules(PROFILES_DIR, '../etc/passwd')).rejects.toThrow(RulesError);
  });
});
