/**
 * Chained search, one level (`Observation?patient.identifier=…`, `subject:Patient.name=…`,
 * US Core's `PractitionerRole?practitioner.name=…`), and `_has` reverse chains. Both are resolved
 * through the gate to what the requester may itself search, so they never test a denied patient's
 * data, nor a type the token has no scope for.
 */
import type { Resource } from '@medplum/fhirtypes';
import { consent, denyActor, observation, openFhirEnv, patient, type FhirEnv, type Json } from './env.js';

const MRN = 'urn:oid:1.2.36.146.595.217.0.1';
const ids = (b: Json, mode = 'match'): string[] => (b?.entry ?? []).filter((e: Json) => e.search?.mode === mode).map((e: Json) => `${e.resource.resourceType}/${e.resource.id}`);

describe('chained search', () => {
  let env: FhirEnv;
  beforeAll(async () => {
    env = await openFhirEnv({ consentDefault: 'permit' });
    env.as('org-a', { scope: 'user/*.rs' });
    env.as('org-b', { scope: 'user/*.rs', clientId: 'app-b', actor: { references: ['Organization/org-b'], identifiers: [] } });
    env.as('obs-only', { scope: 'user/Observation.rs' });
    env.as('pat-a', { scope: 'patient/*.rs', patient: 'chA', fhirUser: 'Patient/chA' });
    await env.put(patient('chA', { name: [{ family: 'Ashby', given: ['Ann'] }], identifier: [{ system: MRN, value: 'MRN-A' }] }));
    await env.put(patient('chD', { name: [{ family: 'Dunn', given: ['Dee'] }], identifier: [{ system: MRN, value: 'MRN-D' }] }));
    await env.put(patient('chA2', { name: [{ family: 'Ashcroft' }] }));
    await env.put(consent('chC', 'chD', denyActor('Organization/org-b')));
    // chO lets org-b see the Patient but not its Observations.
    await env.put(patient('chO', { name: [{ family: 'Oakes' }] }));
    await env.put(consent('chCO', 'chO', denyActor('Organization/org-b', { class: [{ system: 'http://hl7.org/fhir/resource-types', code: 'Observation' }] })));
    await env.put(observation('cho-o', 'chO'));
    // chQ lets org-b see its Observations but not the Patient resource (name, identifiers).
    await env.put(patient('chQ', { name: [{ family: 'Quill' }], identifier: [{ system: MRN, value: 'MRN-Q' }] }));
    await env.put(consent('chCQ', 'chQ', denyActor('Organization/org-b', { class: [{ system: 'http://hl7.org/fhir/resource-types', code: 'Patient' }] })));
    await env.put(observation('cho-q', 'chQ'));
    await env.put(observation('cho-a', 'chA'));
    await env.put(observation('cho-a2', 'chA2'));
    await env.put(observation('cho-d', 'chD'));
    await env.put({ resourceType: 'Practitioner', id: 'chP', name: [{ family: 'Tenniel', given: ['John'] }], identifier: [{ system: 'http://hl7.org/fhir/sid/us-npi', value: '1234567893' }] } as never);
    await env.put({ resourceType: 'PractitionerRole', id: 'chR', practitioner: { reference: 'Practitioner/chP' } } as never);
  });
  afterAll(async () => env.close());

  it.each([
    [`Observation?patient.identifier=${encodeURIComponent(`${MRN}|MRN-A`)}`, ['Observation/cho-a']],
    ['Observation?patient.identifier=MRN-D', ['Observation/cho-d']],
    ['Observation?subject:Patient.name=ash', ['Observation/cho-a', 'Observation/cho-a2']],
    ['Observation?subject.family:exact=Ashby', ['Observation/cho-a']],
    ['Observation?patient.name=nobody', []],
    ['Observation?patient.name=ash&patient.identifier=MRN-A', ['Observation/cho-a']],
    ['Observation?patient.name=ash&code=2339-0&_count=1', ['Observation/cho-a']],
    ['PractitionerRole?practitioner.name=tenn', ['PractitionerRole/chR']],
    ['PractitionerRole?practitioner.identifier=1234567893', ['PractitionerRole/chR']],
  ])('%s', async (q, expected) => {
    const r = await env.get(`/${q}`, 'org-a');
    expect(r.status).toBe(200);
    expect(ids(r.body)).toEqual(expected);
  });

  it('pages keep the chain (signed next link)', async () => {
    const first = await env.get('/Observation?patient.name=ash&_count=1', 'org-a');
    const next = (first.body.link.find((l: Json) => l.relation === 'next').url as string).slice(env.baseUrl.length);
    expect(next).toContain('patient.name=ash');
    expect(ids((await env.get(next, 'org-a')).body)).toEqual(['Observation/cho-a2']);
    expect((await env.get('/Observation?patient.name=ash&_summary=count', 'org-a')).body.total).toBe(2);
  });

  it('never tests a patient the requester may not see: the same empty answer as a patient that does not exist', async () => {
    const denied = await env.get('/Observation?patient.identifier=MRN-D', 'org-b');
    const absent = await env.get('/Observation?patient.identifier=MRN-X', 'org-b');
    expect(denied.status).toBe(200);
    expect(ids(denied.body)).toEqual([]);
    expect(JSON.stringify({ ...denied.body, id: undefined, link: undefined, meta: undefined })).toBe(JSON.stringify({ ...absent.body, id: undefined, link: undefined, meta: undefined }));
    expect((await env.get('/Observation?patient.identifier=MRN-D&_summary=count', 'org-b')).body.total).toBe(0);
    // org-b may read chQ's Observation but not chQ's Patient resource: its name and MRN cannot be tested.
    expect((await env.get('/Observation/cho-q', 'org-b')).status).toBe(200);
    expect((await env.get('/Patient/chQ', 'org-b')).status).toBe(404);
    expect(ids((await env.get('/Observation?patient.name=quill', 'org-b')).body)).toEqual([]);
    expect(ids((await env.get('/Observation?patient.identifier=MRN-Q', 'org-b')).body)).toEqual([]);
    expect(ids((await env.get('/Observation?patient.identifier=MRN-Q', 'org-a')).body)).toEqual(['Observation/cho-q']);
    // In patient context, only the patient's own record is a target.
    expect(ids((await env.get('/Observation?patient.name=ash', 'pat-a')).body)).toEqual(['Observation/cho-a']);
  });

  it('needs a search scope on the target type: a token without Patient scope cannot test patients\' names', async () => {
    const r = await env.get('/Observation?patient.name=ash', 'obs-only');
    expect(r.status).toBe(403);
    expect(r.body.resourceType).toBe('OperationOutcome');
  });

  it('records the chain\'s targets as disclosed (the answer reveals that they match)', async () => {
    env.events.length = 0;
    await env.get('/Observation?patient.identifier=MRN-A', 'org-a');
    const permit = env.events.find((e) => e.outcome === 'permit');
    expect(permit?.entities).toEqual(expect.arrayContaining(['Patient/chA/_history/1', 'Observation/cho-a/_history/1']));
  });

  it.each([
    ['Observation?patient.organization.name=x', /more than one level/],
    ['Observation?code.name=x', /reference parameter/],
    ['Observation?encounter.foo=x', /Unsupported chained parameter/],
    ['Observation?patient.general-practitioner=x', /Unsupported chained parameter/],
    ['Observation?patient.name:missing=true', /modifier/],
    ['Observation?patient:bad.name=x', /reference parameter/],
  ])('refuses %s', async (q, message) => {
    const r = await env.get(`/${q}`, 'org-a');
    expect(r.status).toBe(400);
    expect(r.body.issue[0].details.text).toMatch(message);
    // Ignored (with a warning) under handling=lenient.
    const lenient = await env.get(`/${q}`, 'org-a', { headers: { prefer: 'handling=lenient' } });
    expect(lenient.status).toBe(200);
  });

  describe('_has (reverse chain, one level)', () => {
    it.each([
      ['Patient?_has:Observation:patient:code=2339-0', ['Patient/chA', 'Patient/chA2', 'Patient/chD', 'Patient/chO', 'Patient/chQ']],
      ['Patient?_has:Observation:patient:code=2339-0&name=ash', ['Patient/chA', 'Patient/chA2']],
      ['Patient?_has:Observation:subject:code=no-such-code', []],
    ])('%s', async (q, expected) => {
      const r = await env.get(`/${q}`, 'org-a');
      expect(r.status).toBe(200);
      expect(ids(r.body).sort()).toEqual(expected);
    });

    it('counts only the sources the requester may see: a patient is not found through Observations withheld from it', async () => {
      // org-b may read Patient chO, but not chO's Observations: `_has` must not reveal that chO has a glucose result.
      expect((await env.get('/Patient/chO', 'org-b')).status).toBe(200);
      expect((await env.get('/Observation/cho-o', 'org-b')).status).toBe(404);
      expect(ids((await env.get('/Patient?_has:Observation:patient:code=2339-0', 'org-b')).body).sort()).toEqual(['Patient/chA', 'Patient/chA2']);
      expect((await env.get('/Patient?_has:Observation:patient:code=2339-0&_summary=count', 'org-b')).body.total).toBe(2);
      // A token that may not search Observations cannot test them.
      env.as('patients-only', { scope: 'user/Patient.rs' });
      expect((await env.get('/Patient?_has:Observation:patient:code=2339-0', 'patients-only')).status).toBe(403);
    });

    it('refuses nested or malformed reverse chains', async () => {
      for (const q of [
        '_has:Observation:patient:_has:Encounter:patient:status=x',
        '_has:Observation:code:status=final',
        '_has:Observation=x',
        '_has:Observation:patient:patient=chA',
        '_has:Observation:patient:_id=cho-a',
        '_has:Observation:patient:code:missing=true',
      ]) {
        expect([q, (await env.get(`/Patient?${q}`, 'org-a')).status]).toEqual([q, 400]);
      }
    });
  });

  it('a chain matching more than 1,000 targets is a 400 asking to narrow it', async () => {
    const many: Array<Resource & { id: string }> = Array.from({ length: 1001 }, (_, i) => patient(`many-${i}`, { name: [{ family: 'Multitude' }] }));
    await env.db.store.resources.putVersions(many.map((r) => ({ resourceType: 'Patient', id: r.id, resource: r, sourceId: 'test' })));
    const r = await env.get('/Observation?patient.name=multitude', 'org-a');
    expect(r.status).toBe(400);
    expect(r.body.issue[0].code).toBe('too-costly');
  });
});
