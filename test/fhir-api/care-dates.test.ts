/**
 * A Consent's dataPeriod reads each resource's care date. Claims, ExplanationOfBenefits, dispenses
 * and the rest of the compartment that has no `date` search parameter have one too (a Claim's
 * billable period): "deny my 2022 data" covers the Claim billed in 2022, not the one billed in 2023.
 * The Patient itself is current demographics: compared as of the request.
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

  it('an opt-in Consent permitting data since 2020 covers the Patient (read at the time of the request)', async () => {
    const optIn = await openFhirEnv({ consentDefault: 'deny' });
    try {
      optIn.as('treat', { scope: 'user/*.rs' });
      await optIn.put(patient('oiP'));
      await optIn.put(
        consent('oiC', 'oiP', {
          type: 'deny',
          provision: [{ type: 'permit', purpose: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActReason', code: 'TREAT' }], dataPeriod: { start: '2020-01-01' } }],
        }),
      );
      await optIn.put({ resourceType: 'Claim', id: 'oi-old', status: 'active', billablePeriod: { start: '2015-01-01', end: '2015-01-02' }, patient: { reference: 'Patient/oiP' } } as never);
      await optIn.put({ resourceType: 'Claim', id: 'oi-new', status: 'active', billablePeriod: { start: '2024-01-01', end: '2024-01-02' }, patient: { reference: 'Patient/oiP' } } as never);
      expect((await optIn.get('/Patient/oiP', 'treat')).status).toBe(200);
      expect((await optIn.get('/Claim/oi-new', 'treat')).status).toBe(200);
      expect((await optIn.get('/Claim/oi-old', 'treat')).status).toBe(404);
    } finally {
      await optIn.close();
    }
  });

  it('dataPeriod denies the Claim and the dispense of 2022, not the Claim or the study of 2023', async () => {
    expect((await env.get('/Claim/cl-2022', 'org-b')).status).toBe(404);
    expect((await env.get('/MedicationDispense/md-2022', 'org-b')).status).toBe(404);
    expect((await env.get('/Claim/cl-2023', 'org-b')).status).toBe(200);
    expect((await env.get('/ImagingStudy/is-2023', 'org-b')).status).toBe(200);
  });

  it("the Patient is current demographics, not data from a period: a dataPeriod deny does not withhold it; undated clinical data stays withheld", async () => {
    await env.put({ resourceType: 'AllergyIntolerance', id: 'al-undated', patient: { reference: 'Patient/cdP' }, code: { text: 'penicillin' } } as never);
    expect((await env.get('/Patient/cdP', 'org-b')).status).toBe(200);
    // Cannot be placed in time: the deny may cover it, so it is withheld (conservative).
    expect((await env.get('/AllergyIntolerance/al-undated', 'org-b')).status).toBe(404);
  });

  it('reads the first care-date element present, a period as its whole span', () => {
    const r = clinicalDateRange({ resourceType: 'ExplanationOfBenefit', billablePeriod: { start: '2022-06-01', end: '2022-06-02' }, created: '2022-07-01' } as never);
    expect(r?.lo.toISOString()).toBe('2022-06-01T00:00:00.000Z');
    expect(r?.hi.toISOString()).toBe('2022-06-03T00:00:00.000Z');
    expect(clinicalDateRange({ resourceType: 'Claim', created: '2022-07-01' } as never)?.lo.toISOString()).toBe('2022-07-01T00:00:00.000Z');
    expect(clinicalDateRange({ resourceType: 'Device' } as never)).toBeUndefined();
  });
});
