/**
 * Throughput of normalise + validate on one core over the two Synthea fixture patients (425 resources:
 * Observations, Encounters, Immunizations, Claims/EOBs, notes, …). Reported, not asserted: timings on a
 * shared CI machine are noise, and the number belongs in docs/decisions-normalize.md.
 */
import type { Resource } from '@medplum/fhirtypes';
import { createValidator, loadNormalizationRules, normalizeResource, type NormalizeContext } from '../../src/normalize/index.js';
import { BASE, LEGACY, RUN1, SOURCE, bundle, resolveBundle, resources } from './helpers.js';

const ROUNDS = 4;

it('measures normalise + validate throughput (resources per CPU-second)', async () => {
  const rules = await loadNormalizationRules(undefined, SOURCE);
  const validator = await createValidator();
  const work: { resource: Resource; ctx: NormalizeContext }[] = [];
  for (const file of [RUN1, LEGACY]) {
    const b = bundle(file);
    const ctx: NormalizeContext = { sourceId: SOURCE, sourceBaseUrl: BASE, rules, resolvedReferences: resolveBundle(b) };
    for (const resource of resources(b)) work.push({ resource, ctx });
  }
  const normalised = work.map(({ resource, ctx }) => normalizeResource(resource, ctx));
  for (const n of normalised) validator.validate(n.resource, n.targetProfile); // warm-up

  // CPU time of this process (user + system), not wall time: other work on the machine does not count against it.
  const rate = (fn: () => void): number => {
    const start = process.cpuUsage();
    for (let i = 0; i < ROUNDS; i++) fn();
    const used = process.cpuUsage(start);
    return Math.round((ROUNDS * work.length) / ((used.user + used.system) / 1e6));
  };
  const normaliseOnly = rate(() => work.forEach(({ resource, ctx }) => normalizeResource(resource, ctx)));
  const validateOnly = rate(() => normalised.forEach((n) => validator.validate(n.resource, n.targetProfile)));
  const both = rate(() =>
    work.forEach(({ resource, ctx }) => {
      const n = normalizeResource(resource, ctx);
      validator.validate(n.resource, n.targetProfile);
    }),
  );
  console.log(`normalize throughput over ${work.length} Synthea resources x ${ROUNDS}: normalise ${normaliseOnly}/s, validate ${validateOnly}/s, normalise+validate ${both}/s`);
  expect(both).toBeGreaterThan(0);
});
