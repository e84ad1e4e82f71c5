/**
 * The validator pool: worker threads give the same results as the in-process validator, in input
 * order, and a pool with 0 threads validates in-process.
 */
import type { Observation, Patient } from '@medplum/fhirtypes';
import { createValidator } from '../../src/normalize/validate.js';
import { createValidatorPool, inProcessValidator, type BatchValidator } from '../../src/normalize/validator-pool.js';

const US_CORE_PATIENT = 'http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient';
const good: Patient = {
  resourceType: 'Patient',
  id: 'p1',
  meta: { profile: [US_CORE_PATIENT] },
  identifier: [{ system: 'urn:oid:1.2.3', value: 'MRN-1' }],
  name: [{ family: 'Müller', given: ['Zoë'] }],
  gender: 'female',
};
const missingIdentifier: Patient = { resourceType: 'Patient', id: 'p2', meta: { profile: [US_CORE_PATIENT] }, name: [{ family: 'X' }], gender: 'male' };
const badShape = { resourceType: 'Observation', id: 'o1', status: 'final', code: { coding: 'not-an-array' } } as unknown as Observation;

describe('validator pool', () => {
  let pool: BatchValidator;
  let local: BatchValidator;
  beforeAll(async () => {
    pool = await createValidatorPool({ threads: 2 });
    local = inProcessValidator(await createValidator());
  }, 120_000);
  afterAll(async () => pool?.close());

  it('gives the in-process results, in input order, from worker threads', async () => {
    const items = [{ resource: good }, { resource: missingIdentifier }, { resource: badShape }, { resource: good, profile: US_CORE_PATIENT }];
    const [threaded, inline] = await Promise.all([pool.validateMany(items), local.validateMany(items)]);
    expect(threaded.map((r) => r.valid)).toEqual([true, false, false, true]);
    expect(threaded).toEqual(inline);
  });

  it('spreads concurrent batches over the threads', async () => {
    const batches = Array.from({ length: 8 }, (_, i) => [{ resource: { ...good, id: `p-${i}` } }, { resource: missingIdentifier }]);
    const results = await Promise.all(batches.map((b) => pool.validateMany(b)));
    expect(results.map((r) => r.map((x) => x.valid))).toEqual(batches.map(() => [true, false]));
  });

  it('starts its threads with the first batch, not before', async () => {
    const lazy = await createValidatorPool({ threads: 1 });
    expect(lazy.threads).toBe(0);
    expect(await lazy.validateMany([])).toEqual([]);
    expect(lazy.threads).toBe(0);
    expect((await lazy.validateMany([{ resource: good }]))[0]!.valid).toBe(true);
    expect(lazy.threads).toBe(1);
    await lazy.close();
  }, 120_000);

  it('fails a batch (and tries again with the next) when a thread cannot start', async () => {
    const broken = await createValidatorPool({ threads: 1, profilesDir: '/nonexistent/fhir-profiles' });
    await expect(broken.validateMany([{ resource: good }])).rejects.toThrow(/ENOENT|exited/);
    // The dead thread is dropped once it has exited; the next batch starts a new one (and fails the same way).
    for (let i = 0; i < 100 && broken.threads > 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect(broken.threads).toBe(0);
    await expect(broken.validateMany([{ resource: good }])).rejects.toThrow(/ENOENT|exited/);
    await broken.close();
  }, 120_000);

  it('with 0 threads validates in-process', async () => {
    const inline = await createValidatorPool({ threads: 0 });
    expect((await inline.validateMany([{ resource: missingIdentifier }]))[0]!.valid).toBe(false);
    await inline.close();
  });

  it('fails batches after close', async () => {
    const p = await createValidatorPool({ threads: 1 });
    await p.close();
    await expect(p.validateMany([{ resource: good }])).rejects.toThrow(/closed/);
  }, 120_000);
});
