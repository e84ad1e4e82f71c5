/**
 * The read path fetches the resource and its indexed patients' Consents in one statement. A patient
 * the index does not cover (named only inside a contained resource) must still be asked, and a
 * Patient's own Consents come with it.
 */
import type { FhirApiDeps } from '../../src/fhir-api/repository.js';
import { createScopedRepository } from '../../src/fhir-api/repository.js';
import { silentLogger } from '../helpers/env.js';
import { accessContext, consent, observation, openFhirEnv, patient, type FhirEnv } from './env.js';

describe('read with the Consents of the resource', () => {
  let env: FhirEnv;
  let deps: FhirApiDeps;
  beforeAll(async () => {
    env = await openFhirEnv({ consentDefault: 'permit' });
    deps = {
      store: env.db.store,
      recorder: { record: async (e) => void env.events.push(e) },
      consentDefault: 'permit',
      clock: env.clock,
      logger: silentLogger,
      baseUrl: env.baseUrl,
      queues: { enqueueBulk: async () => undefined },
    };
    await env.put(patient('rc-open'));
    await env.put(patient('rc-closed'));
    await env.put(consent('rc-c1', 'rc-closed', { type: 'deny' }));
    await env.put(observation('rc-o1', 'rc-open'));
    // Subject is the open patient; a contained resource names the closed one (not in the search index).
    await env.put(observation('rc-o2', 'rc-open', { contained: [{ resourceType: 'Observation', id: 'x', status: 'final', code: {}, subject: { reference: 'Patient/rc-closed' } }] }));
  });
  afterAll(async () => env.close());

  it('returns the indexed patients with their Consents, none for a patient without', async () => {
    const r = await env.db.store.search.readCurrentWithConsents('Observation', 'rc-o1');
    expect(r.version?.id).toBe('rc-o1');
    expect([...r.consents.entries()].map(([p, list]) => [p, list.length])).toEqual([['rc-open', 0]]);
    const p = await env.db.store.search.readCurrentWithConsents('Patient', 'rc-closed');
    expect(p.consents.get('rc-closed')?.map((v) => v.id)).toEqual(['rc-c1']);
    const missing = await env.db.store.search.readCurrentWithConsents('Observation', 'nope');
    expect(missing.version).toBeUndefined();
  });

  it('reads several current versions in one statement; absent ones are left out', async () => {
    const many = await env.db.store.search.readCurrentMany([
      { type: 'Observation', id: 'rc-o1' },
      { type: 'Patient', id: 'rc-open' },
      { type: 'Observation', id: 'nope' },
      { type: 'Patient', id: 'rc-o1' },
    ]);
    expect(many.map((v) => `${v.resourceType}/${v.id}/${v.versionId}`).sort()).toEqual(['Observation/rc-o1/1', 'Patient/rc-open/1']);
    expect(await env.db.store.search.readCurrentMany([])).toEqual([]);
  });

  it('still asks a patient named only in a contained resource', async () => {
    const repo = createScopedRepository(accessContext({ scope: 'user/*.rs' }), deps);
    expect(await repo.read('Observation', 'rc-o1')).toBeDefined();
    expect(await repo.read('Observation', 'rc-o2')).toBeUndefined();
    expect(await repo.read('Patient', 'rc-closed')).toBeUndefined();
    expect(await repo.read('Patient', 'rc-open')).toBeDefined();
  });
});
