/**
 * createValidator: the US Core 6.1.0 package's own examples, normalised Synthea resources, and
 * deliberately broken resources.
 */
import type { Observation, Patient, Resource } from '@medplum/fhirtypes';
import { createValidator, loadNormalizationRules, normalizeResource, type Validator } from '../../src/normalize/index.js';
import { singletonSafeExpression } from '../../src/normalize/validate.js';
import { BASE, LEGACY, RUN1, SOURCE, bundle, resolveBundle, resources, usCoreExamples } from './helpers.js';

const US_CORE = 'http://hl7.org/fhir/us/core/StructureDefinition/';
let validator: Validator;

beforeAll(async () => {
  validator = await createValidator();
});

const texts = (r: { outcome: { issue?: { details?: { text?: string }; expression?: string[] }[] } }): string =>
  (r.outcome.issue ?? []).map((i) => `${i.details?.text ?? ''} @${(i.expression ?? []).join(',')}`).join('\n');

describe('createValidator', () => {
  it('loads every US Core 6.1.0 resource profile except the ones @medplum/core cannot parse', () => {
    expect(validator.profiles.size).toBeGreaterThanOrEqual(48);
    // @medplum/core 4.5.2 rejects us-core-provenance's slicing of Provenance.agent (see docs/decisions-normalize.md).
    expect([...validator.unloadable.keys()]).toEqual(['StructureDefinition-us-core-provenance.json']);
  });

  it('validates every US Core example against the profile it claims', () => {
    const examples = usCoreExamples();
    expect(examples.length).toBe(183);
    const failures = examples
      .map(({ file, resource }) => ({ file, result: validator.validate(resource) }))
      .filter(({ result }) => !result.valid)
      .map(({ file, result }) => `${file}: ${texts(result)}`);
    expect(failures).toEqual([]);
  });

  it('reports that a profile it could not load was replaced by base R4', () => {
    const ex = usCoreExamples().find((e) => e.resource.resourceType === 'Provenance')!;
    const r = validator.validate(ex.resource, `${US_CORE}us-core-provenance`);
    expect(r.valid).toBe(true);
    expect(texts(r)).toMatch(/cannot be loaded by @medplum\/core.*base R4 only/);
  });

  it.each([RUN1, LEGACY])('validates the normalised resources of %s', (file) => {
    const rules = loadNormalizationRules(undefined, SOURCE);
    return rules.then((rules) => {
      const b = bundle(file);
      const resolved = resolveBundle(b);
      const invalid: string[] = [];
      for (const r of resources(b)) {
        const n = normalizeResource(r, { sourceId: SOURCE, sourceBaseUrl: BASE, rules, resolvedReferences: resolved });
        const v = validator.validate(n.resource, n.targetProfile);
        if (!v.valid) invalid.push(`${r.resourceType} ${n.targetProfile?.replace(US_CORE, '')}: ${texts(v).split('\n')[0]}`);
      }
      // The 2019 bundle predates US Core's required categories: nothing in the resource says which
      // US Core CarePlan or Condition category applies, so these stay invalid (and are stored flagged).
      const allowed = [
        /^CarePlan us-core-careplan: Incorrect number of values provided for slice 'AssessPlan'/,
        /^Condition us-core-condition-problems-health-concerns: Missing required property @Condition.category/,
      ];
      expect(invalid.filter((line) => !allowed.some((a) => a.test(line)))).toEqual([]);
      if (file === RUN1) expect(invalid).toEqual([]);
    });
  });
});

describe('invariants that rely on FHIRPath singleton evaluation', () => {
  // US Core PractitionerRole pd-1 is `telecom or endpoint`; @medplum/core 4.5 throws on a non-boolean
  // operand, which made every PractitionerRole invalid (all 33 of Synthea's). The HL7 validator reads a
  // non-empty operand as true: so do we.
  const role = (extra: Record<string, unknown>): Resource =>
    ({ resourceType: 'PractitionerRole', id: 'pr1', practitioner: { reference: 'Practitioner/p1' }, organization: { reference: 'Organization/o1' }, ...extra }) as Resource;

  it('passes pd-1 with one or several telecoms, or an endpoint', () => {
    for (const extra of [
      { telecom: [{ system: 'phone', value: '555-0100' }] },
      { telecom: [{ system: 'phone', value: '555-0100' }, { system: 'email', value: 'a@example.org' }] },
      { endpoint: [{ reference: 'Endpoint/e1' }] },
    ]) {
      const r = validator.validate(role(extra), `${US_CORE}us-core-practitionerrole`);
      expect(texts(r)).not.toMatch(/pd-1|Error evaluating/);
      expect(r.valid).toBe(true);
    }
  });

  it('still fails pd-1 with neither', () => {
    const r = validator.validate(role({}), `${US_CORE}us-core-practitionerrole`);
    expect(r.valid).toBe(false);
    expect(texts(r)).toMatch(/pd-1/);
  });

  it('rewrites only expressions made of element names joined by or', () => {
    expect(singletonSafeExpression('telecom or endpoint')).toBe('telecom.exists() or endpoint.exists()');
    expect(singletonSafeExpression('practitioner or organization or healthcareService or location')).toBe(
      'practitioner.exists() or organization.exists() or healthcareService.exists() or location.exists()',
    );
    for (const untouched of ['name.exists() or telecom.exists()', 'hasValue() or (children().count() > id.count())', 'active', 'a and b']) {
      expect(singletonSafeExpression(untouched)).toBe(untouched);
    }
  });
});

describe('broken resources', () => {
  const patient = (extra: Record<string, unknown> = {}): Patient =>
    ({ resourceType: 'Patient', id: 'p1', identifier: [{ system: 'urn:x', value: '1' }], name: [{ family: 'Doe' }], gender: 'female', ...extra }) as Patient;

  it('a valid US Core patient passes', () => {
    expect(validator.validate(patient(), `${US_CORE}us-core-patient`).valid).toBe(true);
  });

  it('a well-formed us-core-race extension passes, and references of allowed types, absolute or conditional, pass', () => {
    const race = {
      url: 'http://hl7.org/fhir/us/core/StructureDefinition/us-core-race',
      extension: [
        { url: 'ombCategory', valueCoding: { system: 'urn:oid:2.16.840.1.113883.6.238', code: '2106-3', display: 'White' } },
        { url: 'text', valueString: 'White' },
      ],
    };
    expect(validator.validate(patient({ extension: [race] }), `${US_CORE}us-core-patient`).valid).toBe(true);
    for (const subject of ['Patient/p1', 'https://ehr.example/fhir/Patient/p1/_history/2', 'Patient?identifier=urn:x|1', 'urn:uuid:0b1d0a2e-3b3e-4c1a-9f3a-1a2b3c4d5e6f']) {
      const obs = { resourceType: 'Observation', status: 'final', category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'laboratory' }] }], code: { coding: [{ system: 'http://loinc.org', code: '2339-0' }] }, subject: { reference: subject }, effectiveDateTime: '2024-01-01T00:00:00Z', valueString: 'a' } as Observation;
      expect(texts(validator.validate(obs, `${US_CORE}us-core-observation-lab`))).not.toMatch(/not a valid target/);
    }
  });

  it('accepts codes nested in their code system (Observation.status corrected under amended); refuses a required concept given as text only', () => {
    const obs = (status: string) => ({ resourceType: 'Observation', status, code: { text: 'x' }, valueString: 'a' }) as unknown as Observation;
    for (const status of ['final', 'corrected', 'entered-in-error']) expect(texts(validator.validate(obs(status)))).not.toMatch(/value set/);
    const condition = { resourceType: 'Condition', clinicalStatus: { text: 'active' }, code: { text: 'x' }, subject: { reference: 'Patient/p1' } } as Resource;
    const r = validator.validate(condition);
    expect(r.valid).toBe(false);
    expect(texts(r)).toMatch(/No code provided, and a code from the value set .*condition-clinical is required @Condition.clinicalStatus/);
  });

  it.each<[string, Resource, string | undefined, RegExp]>([
    ['missing identifier (US Core 1..*)', { resourceType: 'Patient', name: [{ family: 'Doe' }], gender: 'male' } as Patient, `${US_CORE}us-core-patient`, /Missing required property.*@Patient.identifier/],
    ['bad gender code format', patient({ gender: 'not a code ' }), undefined, /Invalid code format.*@Patient.gender/],
    ['wrong JSON type', patient({ birthDate: 19800101 }), undefined, /expected string.*Patient.birthDate/],
    ['bad date', patient({ birthDate: '1980-13-45' }), undefined, /Invalid date format.*@Patient.birthDate/],
    ['unknown property', patient({ favouriteColour: 'blue' }), undefined, /unknown property "favouriteColour"/],
    [
      'vital sign without its category',
      { resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] }, subject: { reference: 'Patient/p1' }, effectiveDateTime: '2024-01-01', valueQuantity: { value: 70, unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' } } as Observation,
      `${US_CORE}us-core-heart-rate`,
      /Missing required property @Observation.category/,
    ],
    ['invariant failure (obs-6: dataAbsentReason with a value)', { resourceType: 'Observation', status: 'final', code: { text: 'x' }, valueString: 'a', dataAbsentReason: { text: 'unknown' } } as Observation, undefined, /obs-6/],
    ['profile for another type', patient(), `${US_CORE}us-core-encounter`, /constrains Encounter, not Patient/],
    // Reference targets (medplum did not check targetProfile) and US Core extension profiles (checked as plain Extension).
    [
      'a lab Observation whose subject is a Practitioner',
      { resourceType: 'Observation', status: 'final', category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'laboratory' }] }], code: { coding: [{ system: 'http://loinc.org', code: '2339-0' }] }, subject: { reference: 'Practitioner/x' }, effectiveDateTime: '2024-01-01T00:00:00Z', valueString: 'a' } as Observation,
      `${US_CORE}us-core-observation-lab`,
      /The type 'Practitioner' implied by the reference Practitioner\/x is not a valid target for this element \(must be one of Patient\) @Observation.subject/,
    ],
    [
      'a us-core-race extension with a plain value',
      patient({ extension: [{ url: 'http://hl7.org/fhir/us/core/StructureDefinition/us-core-race', valueString: 'white' }] }),
      `${US_CORE}us-core-patient`,
      /Missing required property @Patient.extension\[0\].extension/,
    ],
    // FHIR JSON: no empty arrays, objects or strings (@medplum/core passed the first two).
    ['an empty array', patient({ telecom: [] }), undefined, /Empty array.*@Patient.telecom/],
    ['an empty object', patient({ maritalStatus: {} }), undefined, /Empty object.*@Patient.maritalStatus/],
    ['an empty string', patient({ identifier: [{ system: '', value: '1' }] }), undefined, /Empty string.*@Patient.identifier\[0\].system/],
    // Required bindings (@medplum/core does not expand value sets; src/normalize/bindings.ts does).
    ['a gender outside administrative-gender', patient({ gender: 'woman' }), `${US_CORE}us-core-patient`, /'woman' is not in the value set http:\/\/hl7.org\/fhir\/ValueSet\/administrative-gender.*@Patient.gender/],
    ['an identifier use outside identifier-use', patient({ identifier: [{ use: 'Official', system: 'urn:x', value: '1' }] }), undefined, /'Official' is not in the value set .*identifier-use.*@Patient.identifier\[0\].use/],
    ['a contact gender (backbone element) outside the value set', patient({ contact: [{ name: { family: 'Roe' }, gender: 'F' }] }), undefined, /'F' is not in .*@Patient.contact\[0\].gender/],
    [
      'an Observation status outside observation-status',
      { resourceType: 'Observation', status: 'finished', code: { text: 'x' }, valueString: 'a' } as unknown as Observation,
      undefined,
      /'finished' is not in the value set .*observation-status.*@Observation.status/,
    ],
    [
      'a Condition clinicalStatus coded outside condition-clinical',
      { resourceType: 'Condition', clinicalStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'Active' }] }, code: { text: 'x' }, subject: { reference: 'Patient/p1' } } as Resource,
      undefined,
      /None of the codes provided \(http:\/\/terminology.hl7.org\/CodeSystem\/condition-clinical#Active\) are in the value set .*condition-clinical.*@Condition.clinicalStatus/,
    ],
    ['not a resource at all', { resourceType: 'NotAType' } as unknown as Resource, undefined, /unknown resourceType "NotAType"/],
  ])('%s → invalid with a meaningful OperationOutcome', (_name, resource, profile, message) => {
    const r = validator.validate(resource, profile);
    expect(r.valid).toBe(false);
    expect(r.outcome.resourceType).toBe('OperationOutcome');
    expect(r.outcome.issue?.some((i) => i.severity === 'error')).toBe(true);
    expect(texts(r)).toMatch(message);
  });
});
