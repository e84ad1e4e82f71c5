/**
 * `provision.data` with meaning `related` ("this report and what it refers to") through real reads.
 * The engine needs to know which named resources refer to the requested one (`request.referrers`);
 * the repository loads the named resources once per request. Without them the provision was
 * undecidable, and a deny then withheld every resource of the patient from everyone. Also `authoredby`.
 */
import { consent, observation, openFhirEnv, patient, type FhirEnv, type Json } from './env.js';

const ids = (b: Json): string[] => (b?.entry ?? []).filter((e: Json) => e.search?.mode === 'match').map((e: Json) => `${e.resource.resourceType}/${e.resource.id}`);

describe('Consent provision.data meaning related', () => {
  let env: FhirEnv;
  beforeAll(async () => {
    env = await openFhirEnv({ consentDefault: 'permit' });
    env.as('org-a', { scope: 'user/*.rs' });
    await env.put(patient('rlP'));
    await env.put(observation('rl-in', 'rlP'));
    await env.put(observation('rl-out', 'rlP'));
    await env.put({ resourceType: 'DiagnosticReport', id: 'rl-dr', status: 'final', code: { text: 'panel' }, subject: { reference: 'Patient/rlP' }, result: [{ reference: 'Observation/rl-in' }] } as never);
    // Withhold the report and what it refers to (its result), nothing else.
    await env.put(
      consent('rl-c', 'rlP', {
        type: 'permit',
        provision: [{ type: 'deny', data: [{ meaning: 'related', reference: { reference: 'DiagnosticReport/rl-dr' } }] }],
      }),
    );
    // A patient whose Consent names, as related, a resource we do not hold.
    await env.put(patient('rlQ'));
    await env.put(observation('rlq-o', 'rlQ'));
    await env.put(consent('rl-cq', 'rlQ', { type: 'permit', provision: [{ type: 'deny', data: [{ meaning: 'related', reference: { reference: 'DiagnosticReport/not-here' } }] }] }));
  });
  afterAll(async () => env.close());

  it('withholds the named report and the Observation it refers to, and only those', async () => {
    expect((await env.get('/DiagnosticReport/rl-dr', 'org-a')).status).toBe(404);
    expect((await env.get('/Observation/rl-in', 'org-a')).status).toBe(404);
    // Before: undecidable, so the deny applied to every resource of the patient.
    expect((await env.get('/Observation/rl-out', 'org-a')).status).toBe(200);
    // The report refers to its subject too; the Patient's own record is not "what the report refers to".
    expect((await env.get('/Patient/rlP', 'org-a')).status).toBe(200);
    expect(ids((await env.get('/Observation?patient=rlP', 'org-a')).body)).toEqual(['Observation/rl-out']);
    const denied = env.events.filter((e) => e.outcome === 'deny').flatMap((e) => e.entities);
    expect(denied).toEqual(expect.arrayContaining(['Observation/rl-in/_history/1']));
  });

  it('a related resource we do not hold refers to nothing: the rest of the record stays readable', async () => {
    expect((await env.get('/Observation/rlq-o', 'org-a')).status).toBe(200);
  });

  it('follows the named resource as it is now: a result added to the report is withheld from then on', async () => {
    await env.put(observation('rl-later', 'rlP'));
    expect((await env.get('/Observation/rl-later', 'org-a')).status).toBe(200);
    await env.put({ resourceType: 'DiagnosticReport', id: 'rl-dr', status: 'amended', code: { text: 'panel' }, subject: { reference: 'Patient/rlP' }, result: [{ reference: 'Observation/rl-in' }, { reference: 'Observation/rl-later' }] } as never);
    expect((await env.get('/Observation/rl-later', 'org-a')).status).toBe(404);
  });
});

describe('Consent provision.data meaning authoredby, through real reads', () => {
  let env: FhirEnv;
  beforeAll(async () => {
    env = await openFhirEnv({ consentDefault: 'permit' });
    env.as('org-a', { scope: 'user/*.rs' });
    await env.put(patient('auP'));
    await env.put(observation('au-x', 'auP', { performer: [{ reference: 'Practitioner/dr-x' }] }));
    await env.put(observation('au-y', 'auP', { performer: [{ reference: 'Practitioner/dr-y' }] }));
    await env.put(consent('au-c', 'auP', { type: 'permit', provision: [{ type: 'deny', data: [{ meaning: 'authoredby', reference: { reference: 'Practitioner/dr-x' } }] }] }));
  });
  afterAll(async () => env.close());

  it("withholds what Dr X recorded, not the rest of the patient's record (before: everything)", async () => {
    expect((await env.get('/Observation/au-x', 'org-a')).status).toBe(404);
    expect((await env.get('/Observation/au-y', 'org-a')).status).toBe(200);
    expect((await env.get('/Patient/auP', 'org-a')).status).toBe(200);
    expect(ids((await env.get('/Observation?patient=auP', 'org-a')).body)).toEqual(['Observation/au-y']);
  });
});
