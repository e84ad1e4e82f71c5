/**
 * A migration that adds search parameters lists the types it affects in `search_reindex_pending`; a
 * starting service fills in their index rows in the background, so resources stored before the
 * upgrade become findable by the new parameters without blocking the start.
 */
import pg from 'pg';
import { startService, type RunningService } from '../../src/runtime.js';
import type { Config } from '../../src/config/index.js';
import { TEST_DATABASE_URL, cleanupConfig, silentLogger, testConfig } from '../helpers/env.js';

describe('start-up re-index for new search parameters', () => {
  let config: Config | undefined;
  let service: RunningService | undefined;
  afterAll(async () => {
    await service?.close();
    if (config) await cleanupConfig(config);
  });

  it('indexes resources stored before a parameter existed, in the background after the start', async () => {
    config = testConfig({}, 'redis');
    service = await startService({ config, roles: { api: true, workers: false }, logger: silentLogger });
    await service.database.store.resources.putVersion({ resourceType: 'Patient', id: 'old-1', resource: { resourceType: 'Patient', id: 'old-1', name: [{ family: 'Olderson' }] }, sourceId: 't' });
    const search = () => service!.database.store.search.search({ resourceType: 'Patient', clauses: [{ kind: 'string', param: 'family', match: 'start', values: ['olders'] }], limit: 10 });
    expect((await search()).map((v) => v.id)).toEqual(['old-1']);
    // As the database of an older version would be: no string rows, and the migration's pending row.
    const c = new pg.Client({ connectionString: TEST_DATABASE_URL, options: `-c search_path=${config.databaseSchema}` });
    await c.connect();
    try {
      await c.query(`DELETE FROM search_token WHERE resource_type = 'Patient' AND param IN ('name', 'family', 'given')`);
      await c.query(`INSERT INTO search_reindex_pending (resource_type) VALUES ('Patient') ON CONFLICT DO NOTHING`);
    } finally {
      await c.end();
    }
    // Operators see what is still pending (GET /admin/stats: searchReindexPending).
    expect(await service.database.store.search.reindexPendingTypes()).toContain('Patient');
    await service.close();
    service = undefined;
    service = await startService({ config, roles: { api: true, workers: false }, logger: silentLogger });
    const deadline = Date.now() + 10_000;
    let found: string[] = [];
    while (Date.now() < deadline) {
      found = (await search()).map((v) => v.id);
      if (found.length > 0) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(found).toEqual(['old-1']);
    const pendingDeadline = Date.now() + 10_000;
    while (Date.now() < pendingDeadline && (await service.database.store.search.reindexPendingTypes()).includes('Patient')) await new Promise((r) => setTimeout(r, 50));
    expect(await service.database.store.search.reindexPendingTypes()).not.toContain('Patient');
  });
});
