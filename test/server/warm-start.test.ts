/**
 * Start-up prepares what requests need that takes long synchronous work to build, so that the first
 * request after a start does not stall every request in flight on the event loop:
 * - the hook's structural check (the R4 index, about 0.3 s; seen as a 340 ms block in a CPU profile of
 *   the hook benchmark);
 * - de-identification's R4 type schemas (about 0.65 s), when research access is on.
 * Its own test file: a fresh module registry, in which nothing has built either yet.
 */
import { r4IndexBuilt } from '../../src/normalize/r4-index.js';
import { r4SchemasReady } from '../../src/research/deid/tree.js';
import { startService, type RunningService } from '../../src/runtime.js';
import type { Config } from '../../src/config/index.js';
import { cleanupConfig, silentLogger, testConfig } from '../helpers/env.js';

describe('start-up', () => {
  let config: Config | undefined;
  let service: RunningService | undefined;
  afterAll(async () => {
    await service?.close();
    if (config) await cleanupConfig(config);
  });

  it('builds the structural check and the de-identification schemas before the API answers its first request', async () => {
    expect(r4IndexBuilt()).toBe(false);
    expect(r4SchemasReady()).toBe(false);
    config = testConfig({}, 'redis');
    service = await startService({ config, roles: { api: true, workers: false }, logger: silentLogger });
    expect(r4IndexBuilt()).toBe(true);
    expect(r4SchemasReady()).toBe(true);
  });
});
