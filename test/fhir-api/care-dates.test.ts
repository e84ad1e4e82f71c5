/**
 * A Consent's dataPeriod reads each resource's care date. Claims, ExplanationOfBenefits, dispenses
 * and the rest of the compartment that has no `date` search parameter have one too (a Claim's
 * billable period): "deny my 2022 data" covers the Claim billed in 2022, not the one billed in 2023.
 */
import { clinicalDateRange } from '../../src/store/search-store.js';
import { consent, denyActor, openFhirEnv, patient, type FhirEnv } from './env.js';

describe('care dates of the whole compartment', () => {
  let env: FhirEnv;
  beforeAll(async () => {
    env = await openFhirEnv({ consentDefault: 'permit' });
    env.as('org-b', { scope: 'user/*.rs', clientId: 'app-b', actor: { references: ['Organization/org-b'], identifiers: [] } });
    const subject = { reference: 'Patient/cdP' };
    await env.put(patient('cdP'));
    await env.put(consent('cdC', 'cdP', denyActor('Organization/org-b', { dataPeriod: { start: '2022-01-01', end: '2022-12-31' } })));
    await env.put({ resourceType: 'Claim', id: 'cl-2022', status: 'active', billablePeriod: { start: '2022-06-01', end: '2022-06-02' }, patient: subject } as never);
    await env.put({ resourceType: 'Claim', id: 'cl-2023', status: 'active', billablePeriod: { start: '2023-06-01', end: '2023-06-02' }, patient: subject } as never);
    await env.put({ resourceType: 'MedicationDispense', id: 'md-2022', status: 'completed', whenHandedOver: '2022-03-03T10:00:00Z', medicationCodeableConcept: { text: 'x' }, subject } as never);
    await env.put({ resourceType: 'ImagingStudy', id: 'is-2023', status: 'available', started: '2023-01-01T10:00:00Z', subject } as never);
  });
  afterAll(async () => env.close());

  it('dataPeriod denies the Claim and the dispense of 2022, not the Claim or the study of 2023', async () => {
    expect((await env.get('/Claim/cl-2022', 'org-b')).status).toBe(404);
    expect((await env.get('/MedicationDispense/md-2022', 'org-b')).status).toBe(404);
    expect((await env.get('/Claim/cl-2023', 'org-b')).status).toBe(200);
    expect((await env.get('/ImagingStudy/is-2023', 'org-b')).status).toBe(200);
  });

  it('reads the first care-date element present, a period as its whole span', () => {
    const r = clinicalDateRange({ resourceType: 'ExplanationOfBenefit', billablePeriod: { start: '2022-06-01', end: '2022-06-02' }, created: '2022-07-01' } as never);
    expect(r?.lo.toISOString()).toBe('2022-06-01T00:00:00.000Z');
    expect(r?.hi.toISOString()).toBe('2022-06-03T00:00:00.000Z');
    expect(clinicalDateRange({ resourceType: 'Claim', created: '2022-07-01' } as never)?.lo.toISOString()).toBe('2022-07-01T00:00:00.000Z');
    expect(clinicalDateRange({ resourceType: 'Device' } as never)).toBeUndefined();
  });
});
