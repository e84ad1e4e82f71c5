/** `fhir-anchor import` and `backfill` through the same inbox and workers as the hooks. */
import { mkdtemp, rm, writeFile, copyFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Config } from '../../src/config/index.js';
import { backfill, importFiles, type BulkDeps } from '../../src/ingest/bulk.js';
import { anchorId } from '../../src/normalize/index.js';
import { startService, type RunningService } from '../../src/runtime.js';
import { cleanupConfig, silentLogger, testConfig } from '../helpers/env.js';
import { startFakeEhr, type FakeEhr } from '../helpers/fake-ehr.js';

const fixtures = fileURLToPath(new URL('../fixtures/', import.meta.url));

describe('bulk ingestion', () => {
  let config: Config;
  let service: RunningService;
  let deps: BulkDeps;
  let dir: string;
  let ehr: FakeEhr;

  beforeAll(async () => {
    config = testConfig({}, 'redis');
    service = await startService({ config, roles: { api: false, workers: true }, logger: silentLogger });
    deps = { store: service.database.store, queues: service.queues, registry: service.ingest.registry, logger: silentLogger };
    dir = await mkdtemp(path.join(os.tmpdir(), 'fhir-anchor-import-'));
    ehr = await startFakeEhr({ capability: 'classic', pageSize: 7 });
  });

  afterAll(async () => {
    await ehr?.close();
    await service?.close();
    await cleanupConfig(config);
    await rm(dir, { recursive: true, force: true });
  });

  it('imports a directory of Synthea bundles (support bundles first) and NDJSON, keeping bad lines as dead letters', async () => {
    await copyFile(path.join(fixtures, 'normalize/Jani266_Reynolds644_304f9946-5db8-dc6f-e060-48b9fea3ca5d.json'), path.join(dir, 'a-patient.json'));
    await copyFile(path.join(fixtures, 'ingest/practitionerInformation1633536936158.subset.json'), path.join(dir, 'z-practitioners.json'));
    await copyFile(path.join(fixtures, 'ingest/hospitalInformation1633536936158.subset.json'), path.join(dir, 'z-hospitals.json'));
    // One line in Latin-1 ("Müller" with 0xFC), one CRLF line ending, one broken line.
    const latin1 = Buffer.concat([Buffer.from('{"resourceType":"Organization","id":"nd-latin1","name":"M'), Buffer.from([0xfc]), Buffer.from('ller"}')]);
    await writeFile(
      path.join(dir, 'extra.ndjson'),
      Buffer.concat([
        Buffer.from(`${JSON.stringify({ resourceType: 'Organization', id: 'nd-1', name: 'One' })}\n{broken\n`),
        latin1,
        Buffer.from(`\n${JSON.stringify({ resourceType: 'Organization', id: 'nd-2', name: 'Zwei Grüße' })}\r\n`),
      ]),
    );
    const summary = await importFiles(deps, dir);
    expect(summary.dead).toBe(2); // the broken line and the Latin-1 line, each kept as a dead letter
    const letters = await service.database.store.deadLetters.list({ sourceId: 'file-import', limit: 100 });
    const latin1Letter = letters.find((l) => JSON.stringify(l.outcome).includes('not valid UTF-8'));
    expect(latin1Letter).toBeDefined();
    expect((await service.database.store.inbox.get(latin1Letter!.inboxId!))?.body.equals(latin1)).toBe(true); // the bytes as they were
    expect(await service.database.store.resources.readCurrent('Organization', anchorId('file-import', 'Organization', 'nd-latin1'))).toBeUndefined();
    expect((await service.database.store.resources.readCurrent('Organization', anchorId('file-import', 'Organization', 'nd-2')))?.resource).toMatchObject({ name: 'Zwei Grüße' });
    expect(summary.stored).toBeGreaterThan(300);
    expect(summary.deadLetters).toBe(0);
    expect(await service.database.store.resources.readCurrent('Organization', anchorId('file-import', 'Organization', 'nd-2'))).toBeDefined();
    // Conditional references resolved because the batch bundles went first.
    const notes = (await service.database.store.inbox.countsByStageAndState()).find((c) => c.state === 'done');
    expect(notes?.count).toBeGreaterThanOrEqual(4);
    // Importing again stores nothing new.
    const again = await importFiles(deps, dir);
    expect(again.stored).toBe(0);
    expect(again.alreadyReceived).toBe(4);
  }, 120_000);

  it('backfills a source page by page and resumes from its cursor', async () => {
    const res = await deps.registry.put({
      id: 'bf',
      name: 'Backfill source',
      baseUrl: ehr.baseUrl,
      hookAuth: { bearerToken: 'backfill-token-0123456789', replayWindowSeconds: 300 },
      callbackAuth: { type: 'none' },
      rateLimitPerSecond: 1000,
    });
    expect(res.created).toBe(true);
    for (let i = 0; i < 20; i++) ehr.seed({ resourceType: 'Organization', id: `org-${i}`, name: `Org ${i}`, meta: { lastUpdated: new Date(Date.UTC(2026, 0, 1, 0, i)).toISOString() } });
    const first = await backfill(deps, { sourceId: 'bf', types: ['Organization'] });
    expect(first.stored).toBe(20);
    const cursors = await service.database.store.backfill.get('bf');
    expect(cursors).toEqual([expect.objectContaining({ resourceType: 'Organization', done: true, count: 20 })]);
    // A completed type is skipped; --restart re-reads everything but stores nothing twice.
    expect((await backfill(deps, { sourceId: 'bf', types: ['Organization'] })).items).toBe(0);
    const restarted = await backfill(deps, { sourceId: 'bf', types: ['Organization'], restart: true });
    expect(restarted.stored).toBe(0);
    expect(restarted.alreadyReceived).toBe(restarted.items);
    // New data at the source after the cursor is picked up by a fresh run of that type.
    ehr.seed({ resourceType: 'Organization', id: 'org-new', name: 'New', meta: { lastUpdated: new Date(Date.UTC(2026, 0, 2)).toISOString() } });
    const more = await backfill(deps, { sourceId: 'bf', types: ['Organization'], restart: true });
    expect(more.stored).toBe(1);
  }, 60_000);
});
