/**
 * Consents written the way LEAP CDS's test suite writes them (sdhealthconnect/leap-cds, re-authored:
 * the consent scope as a category and no `scope`, labels and purposes coded with the value-set URLs
 * of their code systems), enforced on real reads through the FHIR API: the patient's app writes the
 * consent, a provider's app reads. A consent the engine skipped, or a label it failed to match,
 * would disclose what the patient withheld.
 */
import { CONSENT_SCOPE, observation, openFhirEnv, patient, type FhirEnv } from './env.js';

const SENSITIVITY_VS = 'http://terminology.hl7.org/ValueSet/v3-InformationSensitivityPolicy';
const ACT_CODE = 'http://terminology.hl7.org/CodeSystem/v3-ActCode';

describe('LEAP-style consents enforced on reads', () => {
  let env: FhirEnv;
  beforeAll(async () => {
    // Opt-out jurisdiction: without a consent that says otherwise, the provider may read.
    env = await openFhirEnv({ consentDefault: 'permit' });
    await env.put(patient('boris'));
    await env.put(observation('glucose', 'boris'));
    await env.put(observation('hiv-test', 'boris', { meta: { security: [{ system: ACT_CODE, code: 'HIV' }] } }));
    await env.put(observation('marketing-ok', 'boris'));
    env.as('boris-app', { scope: 'patient/Consent.cruds patient/Observation.rs', patient: 'boris', actor: { references: ['Patient/boris'], identifiers: [] } });
    env.as('clinic', { scope: 'user/Observation.rs', actor: { references: ['Organization/54'], identifiers: [] } });
    env.as('marketer', { scope: 'user/Observation.rs', purposeOfUse: ['HMARKT'], actor: { references: ['Organization/99'], identifiers: [] } });
  });
  afterAll(async () => env.close());

  it('accepts a consent whose scope is a category, and enforces its value-set-coded label and purpose', async () => {
    expect((await env.get('/Observation/hiv-test', 'clinic')).status).toBe(200);
    expect((await env.get('/Observation/glucose', 'marketer')).status).toBe(200);

    const leapStyle = {
      resourceType: 'Consent',
      status: 'active',
      category: [
        { coding: [{ system: CONSENT_SCOPE, code: 'patient-privacy' }] },
        { coding: [{ system: 'http://loinc.org', code: '59284-6' }] },
      ],
      patient: { reference: 'Patient/boris' },
      dateTime: '2026-01-01',
      provision: {
        type: 'permit',
        provision: [
          { type: 'deny', securityLabel: [{ system: SENSITIVITY_VS, code: 'HIV' }] },
          { type: 'deny', purpose: [{ system: 'http://terminology.hl7.org/ValueSet/v3-PurposeOfUse', code: 'HMARKT' }] },
        ],
      },
    };
    const created = await env.get('/Consent', 'boris-app', { method: 'POST', body: JSON.stringify(leapStyle), headers: { 'content-type': 'application/fhir+json' } });
    expect(created.status).toBe(201);
    // Stored as valid R4: the scope R4 requires is filled from the category.
    expect(created.body.scope).toEqual({ coding: [{ system: CONSENT_SCOPE, code: 'patient-privacy' }] });

    // The very next request: HIV data is withheld (404, as if absent), the rest is not.
    expect((await env.get('/Observation/hiv-test', 'clinic')).status).toBe(404);
    expect((await env.get('/Observation/glucose', 'clinic')).status).toBe(200);
    const search = await env.get('/Observation?patient=boris', 'clinic');
    expect(search.status).toBe(200);
    expect(search.body.entry.map((e: { resource: { id: string } }) => e.resource.id).sort()).toEqual(['glucose', 'marketing-ok']);
    // Marketing is denied altogether.
    expect((await env.get('/Observation/glucose', 'marketer')).status).toBe(404);
  });

  it('still refuses a consent with no consentscope code anywhere, saying what is missing', async () => {
    const res = await env.get('/Consent', 'boris-app', {
      method: 'POST',
      body: JSON.stringify({ resourceType: 'Consent', status: 'active', category: [{ coding: [{ system: 'http://loinc.org', code: '59284-6' }] }], patient: { reference: 'Patient/boris' }, provision: { type: 'deny' } }),
      headers: { 'content-type': 'application/fhir+json' },
    });
    expect(res.status).toBe(400);
    expect(res.body.issue[0].details.text).toContain('Consent.scope is required');
  });
});
