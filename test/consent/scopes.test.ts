/**
 * SMART App Launch scopes: v1 and v2 parsing, malformed scopes, and `scopesAllow` with granular
 * constraints. Examples follow SMART App Launch 2.0 "Scopes and Launch Context".
 */
import type { AllergyIntolerance, Condition, Observation } from '@medplum/fhirtypes';
import { parseScope, parseScopes, scopesAllow, searchConstraints, type SmartScope } from '../../src/consent/index.js';

const OBS_CAT = 'http://terminology.hl7.org/CodeSystem/observation-category';

function scopes(s: string): SmartScope[] {
  const parsed = parseScopes(s);
  expect(parsed.rejected).toEqual([]);
  return [...parsed.scopes];
}

const lab: Observation = {
  resourceType: 'Observation',
  id: 'lab',
  status: 'final',
  category: [{ coding: [{ system: OBS_CAT, code: 'laboratory' }] }],
  code: { coding: [{ system: 'http://loinc.org', code: '2339-0' }] },
};
const vitals: Observation = { ...lab, id: 'vitals', category: [{ coding: [{ system: OBS_CAT, code: 'vital-signs' }] }], code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] } };

describe('parseScope: valid', () => {
  const valid: [string, Partial<SmartScope>][] = [
    ['patient/Observation.read', { version: 1, context: 'patient', resourceType: 'Observation', permissions: ['r', 's'] }],
    ['user/*.write', { version: 1, context: 'user', resourceType: '*', permissions: ['c', 'u', 'd'] }],
    ['system/*.*', { version: 1, context: 'system', resourceType: '*', permissions: ['c', 'r', 'u', 'd', 's'] }],
    ['patient/Observation.rs', { version: 2, permissions: ['r', 's'], constraints: [] }],
    ['user/*.cruds', { version: 2, resourceType: '*', permissions: ['c', 'r', 'u', 'd', 's'] }],
    ['system/Patient.r', { version: 2, context: 'system', permissions: ['r'] }],
    ['patient/Condition.cud', { version: 2, permissions: ['c', 'u', 'd'] }],
    [
      `patient/Observation.rs?category=${OBS_CAT}|laboratory`,
      { version: 2, constraints: [{ parameter: 'category', values: [{ system: OBS_CAT, code: 'laboratory' }] }] },
    ],
    [
      'patient/Observation.rs?category=http%3A%2F%2Fterminology.hl7.org%2FCodeSystem%2Fobservation-category%7Cvital-signs',
      { constraints: [{ parameter: 'category', values: [{ system: OBS_CAT, code: 'vital-signs' }] }] },
    ],
    ['patient/Observation.rs?code=http://loinc.org|2339-0,http://loinc.org|718-7', { constraints: [{ parameter: 'code', values: [{ system: 'http://loinc.org', code: '2339-0' }, { system: 'http://loinc.org', code: '718-7' }] }] }],
    ['user/Condition.rs?category=problem-list-item', { constraints: [{ parameter: 'category', values: [{ code: 'problem-list-item' }] }] }],
  ];
  it.each(valid)('%s', (raw, expected) => {
    const r = parseScope(raw);
    expect(r).toMatchObject({ ok: true, scope: { raw, ...expected } });
  });
});

describe('parseScope: malformed, with a readable reason', () => {
  const invalid: [string, RegExp][] = [
    ['Observation.read', /not a resource scope/],
    ['practitioner/Observation.read', /unknown context "practitioner"/],
    ['patient/Observation', /missing "\.permissions"/],
    ['patient/observation.rs', /not a FHIR resource type/],
    ['patient/.rs', /not a FHIR resource type/],
    ['patient/Observation.', /empty permissions/],
    ['patient/Observation.sr', /order c, r, u, d, s/],
    ['patient/Observation.rr', /repeated/],
    ['patient/Observation.rx', /neither v1/],
    ['patient/Observation.readwrite', /neither v1/],
    ['patient/Observation.rsread', /neither v1/],
    ['patient/Observation.read?category=laboratory', /only defined for SMART v2/],
    ['patient/Observation.rs?', /empty query/],
    ['patient/Observation.rs?category', /not param=value/],
    ['patient/Observation.rs?status=final', /unsupported constraint parameter "status"/],
    ['patient/Observation.rs?category:not=laboratory', /modifiers are not supported/],
    ['patient/Observation.rs?category=', /not a token/],
    ['patient/Observation.rs?category=sys|', /not a token/],
    ['patient/Observation.rs?category=%E0%A4%A', /URL encoding/],
  ];
  it.each(invalid)('%s', (raw, reason) => {
    const r = parseScope(raw);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.reason).toMatch(reason);
  });
});

describe('parseScopes', () => {
  it('separates resource scopes, rejected scopes and the rest', () => {
    const r = parseScopes('openid fhirUser launch/patient offline_access patient/Observation.rs patient/Observation.sr user/*.read');
    expect(r.scopes.map((s) => s.raw)).toEqual(['patient/Observation.rs', 'user/*.read']);
    expect(r.rejected).toEqual([{ raw: 'patient/Observation.sr', reason: expect.stringMatching(/order/) }]);
    expect(r.other).toEqual(['openid', 'fhirUser', 'launch/patient', 'offline_access']);
  });
});

describe('scopesAllow', () => {
  const cases: [string, string, Parameters<typeof scopesAllow>[1], boolean][] = [
    ['v1 read = v2 rs: read', 'patient/Observation.read', { context: 'patient', resourceType: 'Observation', interaction: 'read' }, true],
    ['v1 read = v2 rs: search', 'patient/Observation.read', { context: 'patient', resourceType: 'Observation', interaction: 'search' }, true],
    ['v1 read does not create', 'patient/Observation.read', { context: 'patient', resourceType: 'Observation', interaction: 'create' }, false],
    ['v1 write = cud: update', 'patient/Observation.write', { context: 'patient', resourceType: 'Observation', interaction: 'update' }, true],
    ['v1 write does not read', 'patient/Observation.write', { context: 'patient', resourceType: 'Observation', interaction: 'read' }, false],
    ['v1 * = cruds: delete', 'user/*.*', { context: 'user', resourceType: 'Condition', interaction: 'delete' }, true],
    ['v2 r does not search', 'patient/Observation.r', { context: 'patient', resourceType: 'Observation', interaction: 'search' }, false],
    ['wildcard type', 'system/*.rs', { context: 'system', resourceType: 'Encounter', interaction: 'read' }, true],
    ['other type', 'patient/Observation.rs', { context: 'patient', resourceType: 'Condition', interaction: 'read' }, false],
    ['context must match', 'patient/Observation.rs', { context: 'user', resourceType: 'Observation', interaction: 'read' }, false],
    ['granular: matching category', `patient/Observation.rs?category=${OBS_CAT}|laboratory`, { context: 'patient', resourceType: 'Observation', interaction: 'read', resource: lab }, true],
    ['granular: other category', `patient/Observation.rs?category=${OBS_CAT}|laboratory`, { context: 'patient', resourceType: 'Observation', interaction: 'read', resource: vitals }, false],
    ['granular: no resource, fail closed', `patient/Observation.rs?category=${OBS_CAT}|laboratory`, { context: 'patient', resourceType: 'Observation', interaction: 'search' }, false],
    ['granular: code without system', 'patient/Observation.rs?category=laboratory', { context: 'patient', resourceType: 'Observation', interaction: 'read', resource: lab }, true],
    ['granular: |code needs no system', 'patient/Observation.rs?category=|laboratory', { context: 'patient', resourceType: 'Observation', interaction: 'read', resource: lab }, false],
    ['granular: AND across parameters', `patient/Observation.rs?category=${OBS_CAT}|laboratory&code=http://loinc.org|718-7`, { context: 'patient', resourceType: 'Observation', interaction: 'read', resource: lab }, false],
    ['granular: OR across scopes', `patient/Observation.rs?category=${OBS_CAT}|vital-signs patient/Observation.rs?code=http://loinc.org|2339-0`, { context: 'patient', resourceType: 'Observation', interaction: 'read', resource: lab }, true],
    ['granular: resource type must agree', 'patient/*.rs', { context: 'patient', resourceType: 'Observation', interaction: 'read', resource: { resourceType: 'Condition', subject: { reference: 'Patient/p' } } as Condition as unknown as Observation }, false],
  ];
  it.each(cases)('%s', (_name, granted, check, expected) => {
    expect(scopesAllow(scopes(granted), check)).toBe(expected);
  });

  it('searchConstraints narrows a search by the granular scopes', () => {
    expect(searchConstraints(scopes('patient/Observation.rs'), { context: 'patient', resourceType: 'Observation' })).toBe('all');
    expect(searchConstraints(scopes('patient/Observation.r'), { context: 'patient', resourceType: 'Observation' })).toBe('none');
    expect(searchConstraints(scopes(`patient/Observation.rs?category=${OBS_CAT}|laboratory`), { context: 'patient', resourceType: 'Observation' })).toEqual([
      [{ parameter: 'category', values: [{ system: OBS_CAT, code: 'laboratory' }] }],
    ]);
  });

  it('AllergyIntolerance.category plain codes match a bare code constraint', () => {
    const allergy: AllergyIntolerance = { resourceType: 'AllergyIntolerance', patient: { reference: 'Patient/p' }, category: ['food'] };
    expect(scopesAllow(scopes('patient/AllergyIntolerance.rs?category=food'), { context: 'patient', resourceType: 'AllergyIntolerance', interaction: 'read', resource: allergy })).toBe(true);
  });
});
