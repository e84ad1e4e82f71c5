/**
 * A resource that names no Patient can still be a patient's data: a Provenance whose only target is
 * an Observation says who changed that patient's record and when. The gate finds its patients through
 * the stored resources it references (one level), so the Observation's patient's Consent governs it,
 * by read, search, `_revinclude`, `_summary=count` and in patient context.
 */
import type { Resource } from '@medplum/fhirtypes';
import { resolvePatients } from '../../src/fhir-api/repository.js';
import { consent, denyActor, observation, openFhirEnv, patient, type FhirEnv, type Json } from './env.js';

const ids = (b: Json, mode = 'match'): string[] => (b?.entry ?? []).filter((e: Json) => e.search?.mode === mode).map((e: Json) => `${e.resource.resourceType}/${e.resource.id}`);

function provenance(id: string, targets: string[], over: Record<string, unknown> = {}): Resource & { id: string } {
  return {
    resourceType: 'Provenance',
    id,
    target: targets.map((reference) => ({ reference })),
    recorded: '2024-05-01T10:05:00Z',
    agent: [{ who: { reference: 'Organization/lab-1' } }],
    ...over,
  } as Resource & { id: string };
}

describe('patients found through references (opt-out default)', () => {
  let env: FhirEnv;
  beforeAll(async () => {
    env = await openFhirEnv({ consentDefault: 'permit' });
    env.as('org-a', { scope: 'user/*.rs' });
    env.as('org-b', { scope: 'user/*.rs', clientId: 'app-b', actor: { references: ['Organization/org-b'], identifiers: [] } });
    env.as('pat-a', { scope: 'patient/*.rs', patient: 'ipA', fhirUser: 'Patient/ipA' });
    await env.put(patient('ipA'));
    await env.put(patient('ipD'));
    await env.put(consent('ic-d', 'ipD', denyActor('Organization/org-b')));
    await env.put(observation('io-a', 'ipA'));
    await env.put(observation('io-d', 'ipD'));
    await env.put(provenance('iv-a', ['Observation/io-a']));
    await env.put(provenance('iv-d', ['Observation/io-d']));
    // Spans both patients: each must consent.
    await env.put(provenance('iv-both', ['Observation/io-a', 'Observation/io-d']));
    // Names something we do not hold: nobody's data that we know of, the default decides.
    await env.put(provenance('iv-x', ['Observation/not-stored']));
    // A List of the denied patient's result, without a subject.
    await env.put({ resourceType: 'List', id: 'il-d', status: 'current', mode: 'working', entry: [{ item: { reference: 'Observation/io-d' } }] } as never);
  });
  afterAll(async () => env.close());

  it('finds the patients of the referenced resources, one round trip for many', async () => {
    const cache = new Map<string, readonly string[]>();
    const resources = [provenance('a', ['Observation/io-a']), provenance('b', ['Observation/io-a', 'Observation/io-d', 'Practitioner/x']), provenance('c', ['Observation/nope']), observation('o', 'ipA')];
    let calls = 0;
    const search = {
      readCurrentMany: async (refs: ReadonlyArray<{ type: string; id: string }>) => {
        calls += 1;
        return env.db.store.search.readCurrentMany(refs);
      },
    };
    const out = await resolvePatients(resources, search, cache);
    expect(out.map((p) => [...p].sort())).toEqual([['ipA'], ['ipA', 'ipD'], [], ['ipA']]);
    expect(calls).toBe(1);
    // Reference types are not looked up; an absent resource is remembered as nobody's.
    expect([...cache.keys()].sort()).toEqual(['Observation/io-a', 'Observation/io-d', 'Observation/nope']);
    await resolvePatients(resources, search, cache);
    expect(calls).toBe(1);
  });

  it('hides the Provenance of a denied patient\'s Observation from the denied actor, as if absent', async () => {
    const denied = await env.get('/Provenance/iv-d', 'org-b');
    const absent = await env.get('/Provenance/iv-nope', 'org-b');
    expect(denied.status).toBe(404);
    expect(denied.text).toBe(absent.text);
    expect((await env.get('/Provenance/iv-both', 'org-b')).status).toBe(404);
    expect((await env.get('/List/il-d', 'org-b')).status).toBe(404);
    expect((await env.get('/Provenance/iv-a', 'org-b')).status).toBe(200);
    expect((await env.get('/Provenance/iv-x', 'org-b')).status).toBe(200);
    // Everyone else still sees them.
    for (const id of ['iv-a', 'iv-d', 'iv-both', 'iv-x']) expect((await env.get(`/Provenance/${id}`, 'org-a')).status).toBe(200);
  });

  it('search, _revinclude and _summary=count skip it too', async () => {
    expect(ids((await env.get('/Provenance?target=Observation/io-d', 'org-b')).body)).toEqual([]);
    expect(ids((await env.get('/Provenance?_count=1', 'org-b')).body).length).toBe(1);
    const all: string[] = [];
    let next: string | undefined = '/Provenance?_count=1';
    while (next) {
      const r = await env.get(next, 'org-b');
      all.push(...ids(r.body));
      next = (r.body.link?.find((l: Json) => l.relation === 'next')?.url as string | undefined)?.slice(env.baseUrl.length);
    }
    expect(all.sort()).toEqual(['Provenance/iv-a', 'Provenance/iv-x']);
    expect((await env.get('/Provenance?_summary=count', 'org-b')).body.total).toBe(2);
    expect((await env.get('/Provenance?_summary=count', 'org-a')).body.total).toBe(4);
    const rev = await env.get('/Observation?_id=io-a,io-d&_revinclude=Provenance:target', 'org-b');
    expect(ids(rev.body)).toEqual(['Observation/io-a']);
    expect(ids(rev.body, 'include')).toEqual(['Provenance/iv-a']);
    const revA = await env.get('/Observation?_id=io-a,io-d&_revinclude=Provenance:target', 'org-a');
    expect(ids(revA.body, 'include').sort()).toEqual(['Provenance/iv-a', 'Provenance/iv-both', 'Provenance/iv-d']);
  });

  it('a search, a count and a _revinclude look the targets up once per batch, not once per row', async () => {
    const search = env.db.store.search as { readCurrentMany: typeof env.db.store.search.readCurrentMany };
    const original = search.readCurrentMany;
    let calls = 0;
    search.readCurrentMany = async (refs) => {
      calls += 1;
      return original.call(env.db.store.search, refs);
    };
    try {
      for (const path of ['/Provenance?_count=50', '/Provenance?_summary=count', '/Observation?_id=io-a,io-d&_revinclude=Provenance:target']) {
        calls = 0;
        expect((await env.get(path, 'org-b')).status).toBe(200);
        expect([path, calls]).toEqual([path, 1]);
      }
    } finally {
      search.readCurrentMany = original;
    }
  });

  it('the denial is audited with the patient it protected', async () => {
    env.events.length = 0;
    await env.get('/Provenance/iv-d', 'org-b');
    const deny = env.events.find((e) => e.outcome === 'deny');
    expect(deny?.entities).toEqual(['Provenance/iv-d/_history/1']);
    expect(deny?.patient).toBe('ipD');
  });

  it('a patient reads the Provenance of their own record, not of someone else\'s', async () => {
    expect((await env.get('/Provenance/iv-a', 'pat-a')).status).toBe(200);
    expect((await env.get('/Provenance/iv-d', 'pat-a')).status).toBe(404);
    // By target, a patient app finds them too (a search by patient finds the Provenances naming the Patient).
    expect(ids((await env.get('/Provenance?target=Observation/io-a', 'pat-a')).body).sort()).toEqual(['Provenance/iv-a', 'Provenance/iv-both']);
    expect(ids((await env.get('/Provenance?target=Observation/io-d', 'pat-a')).body)).toEqual(['Provenance/iv-both']);
    expect(ids((await env.get('/Observation?_id=io-a&_revinclude=Provenance:target', 'pat-a')).body, 'include').sort()).toEqual(['Provenance/iv-a', 'Provenance/iv-both']);
    // Names the patient's own Observation too, and the other patient's Consent permits this app: as a
    // resource naming both patients directly would be.
    expect((await env.get('/Provenance/iv-both', 'pat-a')).status).toBe(200);
  });
});

describe('patients found through references (opt-in default)', () => {
  let env: FhirEnv;
  beforeAll(async () => {
    env = await openFhirEnv({ consentDefault: 'deny' });
    env.as('treat', { scope: 'user/*.rs' });
    await env.put(patient('jP'));
    await env.put(patient('jN'));
    await env.put(consent('jc-p', 'jP', { type: 'permit', purpose: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActReason', code: 'TREAT' }] }));
    await env.put(observation('jo-p', 'jP'));
    await env.put(observation('jo-n', 'jN'));
    await env.put(provenance('jv-p', ['Observation/jo-p']));
    await env.put(provenance('jv-n', ['Observation/jo-n']));
    await env.put(provenance('jv-x', ['Observation/not-stored']));
  });
  afterAll(async () => env.close());

  it('the Provenance of a permitted Observation is disclosed with it (before: always withheld as no one\'s data)', async () => {
    expect((await env.get('/Observation/jo-p', 'treat')).status).toBe(200);
    expect((await env.get('/Provenance/jv-p', 'treat')).status).toBe(200);
    expect((await env.get('/Provenance/jv-n', 'treat')).status).toBe(404);
    expect((await env.get('/Provenance/jv-x', 'treat')).status).toBe(404);
    const permit = env.events.filter((e) => e.outcome === 'permit' && e.entities.includes('Provenance/jv-p/_history/1'));
    expect(permit[0]?.patient).toBe('jP');
    expect(permit[0]?.policy).toEqual(['Consent/jc-p/_history/1']);
  });
});
