/**
 * The consent-narrowed repository: architecture rules (handlers never touch an unscoped store;
 * only consent-checked resources can be sent) and direct behaviour.
 */
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Observation } from '@medplum/fhirtypes';
import type { OperationResult } from '../../src/fhir-api/operations/context.js';
import { createScopedRepository, patientsOf, type FhirApiDeps } from '../../src/fhir-api/repository.js';
import { parseSearch } from '../../src/fhir-api/search-params.js';
import { MANIFEST_CODE, manifestResource } from '../../src/research/export/index.js';
import { silentLogger } from '../helpers/env.js';
import { accessContext, consent, denyActor, observation, openFhirEnv, patient, type FhirEnv } from './env.js';

const FHIR_API = fileURLToPath(new URL('../../src/fhir-api/', import.meta.url));

function importsOf(file: string): string[] {
  const code = readFileSync(file, 'utf8');
  return [...code.matchAll(/(?:import|export)\s[^'"]*?from\s*['"]([^'"]+)['"]/g), ...code.matchAll(/import\(\s*['"]([^'"]+)['"]\s*\)/g)].map((m) => m[1]!);
}

describe('architecture: no unscoped repository in the FHIR API handlers', () => {
  const handlerFiles = [
    ...readdirSync(path.join(FHIR_API, 'operations')).map((f) => path.join(FHIR_API, 'operations', f)),
    path.join(FHIR_API, 'routes.ts'),
    path.join(FHIR_API, 'bundle.ts'),
  ];

  it('finds the operation files', () => {
    expect(handlerFiles.filter((f) => f.includes(`${path.sep}operations${path.sep}`)).length).toBeGreaterThanOrEqual(4);
  });

  it('operations/, routes.ts and bundle.ts import no store module (not even its types)', () => {
    const offenders = handlerFiles.flatMap((f) =>
      importsOf(f)
        .filter((s) => s.startsWith('.') && path.resolve(path.dirname(f), s).startsWith(path.resolve(FHIR_API, '../store')))
        .map((s) => `${path.relative(FHIR_API, f)} -> ${s}`),
    );
    expect(offenders).toEqual([]);
  });

  it('of the read API files only repository.ts uses the store; search-params.ts only its pure parameter definitions', () => {
    // The read path; audit (the recorder), SMART auth and CDS Hooks are other components.
    const readApi = ['bundle.ts', 'repository.ts', 'routes.ts', 'search-params.ts'];
    const users = readApi.filter((f) => importsOf(path.join(FHIR_API, f)).some((s) => s.includes('/store/')));
    expect(users.sort()).toEqual(['repository.ts', 'search-params.ts']);
    const sp = readFileSync(path.join(FHIR_API, 'search-params.ts'), 'utf8');
    expect(sp).not.toMatch(/PgSearchStore|\.search\.|resources\.|indexResource/);
  });

  it('handlers can only answer with consent-checked resources (type-level)', () => {
    const plain: Observation = { resourceType: 'Observation', status: 'final', code: {} };
    // @ts-expect-error a plain resource is not ConsentChecked: only the consent module's release() makes one
    const bad: OperationResult = { status: 200, body: plain };
    expect(bad.status).toBe(200);
  });
});

describe('createScopedRepository', () => {
  let env: FhirEnv;
  let deps: FhirApiDeps;
  beforeAll(async () => {
    env = await openFhirEnv();
    deps = {
      store: env.db.store,
      recorder: { record: async (e) => void env.events.push(e) },
      consentDefault: 'permit',
      clock: env.clock,
      logger: silentLogger,
      baseUrl: env.baseUrl,
      queues: { enqueueBulk: async () => undefined },
    };
    await env.put(patient('p1'));
    await env.put(patient('p2'));
    await env.put(consent('c2', 'p2', denyActor('Organization/org-b')));
    for (let v = 0; v < 5; v++) await env.put(observation('h', 'p1', { status: v % 2 ? 'amended' : 'final', ...(v === 3 ? { meta: { security: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'PSY' }] } } : {}) }));
    await env.put(consent('c1', 'p1', { type: 'deny', securityLabel: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'PSY' }] }));
    await env.put(observation('o2', 'p2'));
  });
  afterAll(async () => env.close());

  it('patientsOf finds every Patient reference (absolute, versioned, nested) and a Patient itself', () => {
    expect(patientsOf({ resourceType: 'Patient', id: 'x' })).toEqual(['x']);
    expect(
      patientsOf({
        resourceType: 'Observation',
        status: 'final',
        code: {},
        subject: { reference: 'https://elsewhere.example/fhir/Patient/a/_history/2' },
        performer: [{ reference: 'Patient/b' }, { reference: 'Practitioner/c' }],
        contained: [{ resourceType: 'Observation', status: 'final', code: {}, subject: { reference: 'Patient/c' } }],
      } as Observation).sort(),
    ).toEqual(['a', 'b', 'c']);
  });

  it('history skips denied versions without gaps in paging', async () => {
    const repo = createScopedRepository(accessContext({ scope: 'user/*.rs' }), deps);
    const seen: string[] = [];
    let before: readonly string[] | undefined;
    for (let i = 0; i < 10; i++) {
      const page = await repo.history('Observation', 'h', { count: 2, ...(before ? { before } : {}) });
      seen.push(...page!.items.map((x) => x.resource.meta!.versionId!));
      if (!page!.next) break;
      before = page!.next;
    }
    expect(seen).toEqual(['5', '3', '2', '1']); // version 4 carries the PSY label p1 withholds
  });

  it('is per request: a Consent change is seen by the next repository', async () => {
    const access = accessContext({ scope: 'user/*.rs', actor: { references: ['Organization/org-b'], identifiers: [] } });
    expect(await createScopedRepository(access, deps).read('Observation', 'o2')).toBeUndefined();
    await env.put(consent('c2', 'p2', denyActor('Organization/org-b'), { status: 'inactive' }));
    expect(await createScopedRepository(access, deps).read('Observation', 'o2')).toBeDefined();
  });

  it('project() re-releases the projection; a foreign object is refused', async () => {
    const repo = createScopedRepository(accessContext({ scope: 'user/*.rs' }), deps);
    const item = (await repo.read('Observation', 'h'))!;
    const p = repo.project(item, ['status']);
    expect(Object.keys(p.resource).sort()).toEqual(['id', 'meta', 'resourceType', 'status']);
    expect(() => repo.project({ resource: { ...item.resource } }, ['status'])).toThrow();
  });

  it('opt-in (default deny): nothing without a permit; the patient still sees their own data', async () => {
    const optIn: FhirApiDeps = { ...deps, consentDefault: 'deny' };
    const clinician = createScopedRepository(accessContext({ scope: 'user/*.rs' }), optIn);
    expect(await clinician.read('Observation', 'o2')).toBeUndefined();
    const page = await clinician.search(parseSearch('Observation', [], { lenient: false, baseUrl: env.baseUrl }));
    expect(page.items).toEqual([]);
    const self = createScopedRepository(accessContext({ scope: 'patient/*.rs', patient: 'p2', fhirUser: 'Patient/p2' }), optIn);
    expect(await self.read('Observation', 'o2')).toBeDefined();
    // Same patient context without fhirUser = the patient (e.g. a clinician's app launched for p2): consent applies.
    const launched = createScopedRepository(accessContext({ scope: 'patient/*.rs', patient: 'p2' }), optIn);
    expect(await launched.read('Observation', 'o2')).toBeUndefined();
  });

  it('opt-in: an export manifest (and only that kind of Basic) is non-patient data, governed by scopes alone', async () => {
    const manifest = manifestResource({
      exportId: '0b7c3f4e-1d2a-4c5b-8e9f-0a1b2c3d4e5f',
      transactionTime: new Date('2026-03-01T12:00:00Z'),
      requestUrl: 'https://anchor.test/fhir/R4/$export',
      level: 'system',
      consent: 'research',
      files: [{ type: 'Observation', name: 'Observation.ndjson', url: 'https://anchor.test/x', count: 1, bytes: 10, sha256: '0'.repeat(64) }],
      patients: { included: 1, excluded: 0 },
    });
    await env.put(manifest);
    await env.put({ resourceType: 'Basic', id: 'other-basic', code: { coding: [{ system: 'urn:test', code: 'x' }] } } as typeof manifest);
    await env.put({ resourceType: 'Basic', id: 'look-alike', code: { coding: [{ ...MANIFEST_CODE }] } } as typeof manifest);
    const optIn: FhirApiDeps = { ...deps, consentDefault: 'deny' };
    const system = createScopedRepository(accessContext({ scope: 'system/Basic.rs' }), optIn);
    expect((await system.read('Basic', manifest.id))?.resource.id).toBe(manifest.id);
    expect(await system.vread('Basic', manifest.id, '1')).toBeDefined();
    expect(await system.read('Basic', 'other-basic')).toBeUndefined();
    expect(await system.read('Basic', 'look-alike')).toBeUndefined();
    // Scopes still apply: no Basic scope, no manifest; a patient-context scope does not reach it (in no patient's compartment).
    await expect(createScopedRepository(accessContext({ scope: 'system/Observation.rs' }), optIn).read('Basic', manifest.id)).rejects.toThrow();
    expect(await createScopedRepository(accessContext({ scope: 'patient/Basic.rs', patient: 'p1', fhirUser: 'Patient/p1' }), optIn).read('Basic', manifest.id)).toBeUndefined();
  });
});
