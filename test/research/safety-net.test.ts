/** The safety net: a policy that forgets a field fails the resource (raise) or drops it (skip). */
import type { Bundle, Observation, Patient } from '@medplum/fhirtypes';
import { createDeidentifier, DeidSafetyError, loadPolicy, type AnonymizerConfig } from '../../src/research/index.js';

const KEYS = { cryptoHashKey: 'k' };

function safeHarborWithout(path: string, processingErrors: 'raise' | 'skip'): AnonymizerConfig {
  const p = loadPolicy('safe-harbor') as AnonymizerConfig;
  const rules = p.fhirPathRules.filter((r) => r.path !== path);
  expect(rules.length).toBe(p.fhirPathRules.length - 1);
  return { ...p, processingErrors, fhirPathRules: rules };
}

const patient: Patient = {
  resourceType: 'Patient',
  id: 'p1',
  identifier: [{ system: 'http://hl7.org/fhir/sid/us-ssn', value: '999-12-3456' }],
  name: [{ family: 'Doe' }],
};
const observation: Observation = {
  resourceType: 'Observation',
  id: 'o1',
  status: 'final',
  code: { coding: [{ system: 'http://loinc.org', code: '8302-2' }] },
  subject: { reference: 'Patient/p1' },
  note: [{ text: 'Patient John Doe, SSN 999-12-3456, called from 555-0100' }],
};

describe('safety net', () => {
  it('raise: a forgotten identifier rule fails the resource, naming the path but not the value', () => {
    const d = createDeidentifier({ keys: KEYS }, { policy: safeHarborWithout("nodesByType('Identifier')", 'raise') });
    let err: unknown;
    try {
      d.deidentify(patient);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DeidSafetyError);
    expect((err as DeidSafetyError).paths).toEqual(['Patient.identifier[0].system', 'Patient.identifier[0].value']);
    expect((err as Error).message).not.toContain('999-12-3456');
  });

  it('skip: forgotten free text drops that Bundle entry only', () => {
    const policy = safeHarborWithout("nodesByType('Annotation')", 'skip');
    policy.fhirPathRules = policy.fhirPathRules.filter((r) => r.path !== "nodesByName('note')" && r.path !== "nodesByName('text')");
    const d = createDeidentifier({ keys: KEYS }, { policy });
    const bundle: Bundle = { resourceType: 'Bundle', type: 'collection', entry: [{ resource: patient }, { resource: observation }] };
    const r = d.deidentify(bundle);
    expect(r.kind).toBe('deidentified');
    if (r.kind !== 'deidentified') return;
    expect(r.resource.entry?.map((e) => e.resource?.resourceType)).toEqual(['Patient']);
    expect(r.droppedEntries).toEqual([{ resourceType: 'Observation', reason: expect.stringContaining('Observation.note[0].text') }]);
    expect(JSON.stringify(r)).not.toContain('555-0100');
  });

  it('skip: a single resource that fails is dropped with a reason', () => {
    const d = createDeidentifier({ keys: KEYS }, { policy: safeHarborWithout("nodesByType('Extension')", 'skip') });
    const r = d.deidentify({ ...patient, extension: [{ url: 'http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName', valueString: 'Smith' }] });
    expect(r).toEqual({ kind: 'dropped', resourceType: 'Patient', reason: expect.stringContaining('Patient.extension[0].url') });
  });

  it('explicitly kept values pass', () => {
    const p = loadPolicy('safe-harbor') as AnonymizerConfig;
    const policy = { ...p, fhirPathRules: [{ path: 'Patient.identifier', method: 'keep' }, ...p.fhirPathRules] };
    const r = createDeidentifier({ keys: KEYS }, { policy }).deidentify(patient);
    expect(r.kind === 'deidentified' && r.resource.identifier?.[0]?.value).toBe('999-12-3456');
  });

  it('the full Safe Harbor policy releases the same resources', () => {
    const d = createDeidentifier({ keys: KEYS });
    const r = d.deidentify({ resourceType: 'Bundle', type: 'collection', entry: [{ resource: patient }, { resource: observation }] } as Bundle);
    expect(r.kind === 'deidentified' && r.droppedEntries.length).toBe(0);
    expect(JSON.stringify(r)).not.toMatch(/999-12-3456|Doe|555-0100/);
  });
});
