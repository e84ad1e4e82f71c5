/**
 * De-identification throughput with the built-in Safe Harbor policy, one core, resources one by one
 * (the NDJSON path). Reported, not asserted: the target is ≥ 20,000 resources/s; machines differ.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Bundle, Resource } from '@medplum/fhirtypes';
import { createDeidentifier } from '../../src/research/index.js';

const DIR = fileURLToPath(new URL('../fixtures/research/', import.meta.url));
const resources: Resource[] = readdirSync(DIR)
  .filter((f) => f.endsWith('.json'))
  .flatMap((f) => ((JSON.parse(readFileSync(DIR + f, 'utf8')) as Bundle).entry ?? []).map((e) => e.resource!));

describe('throughput (reported)', () => {
  it('de-identifies Synthea resources one by one', () => {
    const d = createDeidentifier({ keys: { cryptoHashKey: 'bench' } });
    for (let i = 0; i < 2; i++) for (const r of resources) d.deidentify(r); // warm-up (JIT)
    const rounds = 5;
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    let released = 0;
    for (let i = 0; i < rounds; i++) for (const r of resources) if (d.deidentify(r).kind === 'deidentified') released++;
    const wall = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(c0);
    const cpuSeconds = (cpu.user + cpu.system) / 1e6;
    const n = resources.length * rounds;
    // CPU time is the fairer figure on a shared machine; wall time includes waiting for a core.
    process.stdout.write(`deid throughput: ${Math.round(n / wall)} resources/s wall, ${Math.round(n / cpuSeconds)} resources/CPU-s (${n} resources, safe-harbor)\n`);
    expect(released).toBe(resources.length * rounds);
  });
});
