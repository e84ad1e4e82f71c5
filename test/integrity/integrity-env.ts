/**
 * Test environment for the integrity stage: a fresh schema on the test PostgreSQL with the store
 * (resources) and an integrity store on its own pool, a generated log key, and a manual clock.
 */
import { ManualClock } from '../../src/platform/clock.js';
import { generateEd25519Key } from '../../src/integrity/note.js';
import { loadLogKey, type LogKey } from '../../src/integrity/keys.js';
import { IntegrityLog, type IntegrityLogOptions } from '../../src/integrity/log.js';
import { openDatabase, type Database } from '../../src/store/index.js';
import { openIntegrityStore, type PgIntegrityStore } from '../../src/store/integrity-store.js';
import { TEST_DATABASE_URL, dropSchema, randomNamespace, silentLogger } from '../helpers/env.js';

export const ORIGIN = 'fhir-anchor.test/log';

export interface IntegrityEnv {
  readonly schema: string;
  readonly db: Database;
  readonly integrity: PgIntegrityStore;
  readonly key: LogKey;
  /** The signer key string behind {@link IntegrityEnv.key}. */
  readonly signerKey: string;
  readonly clock: ManualClock;
  /** Opens another integrity store on the same schema (a separate pool, like another process). */
  openStore(max?: number): PgIntegrityStore;
  newLog(overrides?: Partial<IntegrityLogOptions>): IntegrityLog;
  close(): Promise<void>;
}

export async function openIntegrityEnv(): Promise<IntegrityEnv> {
  const schema = randomNamespace('t');
  const clock = new ManualClock(new Date('2025-01-01T00:00:00.000Z'));
  const db = await openDatabase({
    config: { database: { kind: 'external', url: TEST_DATABASE_URL }, databaseSchema: schema, databasePoolMax: 10 },
    logger: silentLogger,
    clock,
  });
  const stores: PgIntegrityStore[] = [];
  const openStore = (max = 5): PgIntegrityStore => {
    const s = openIntegrityStore({ connectionString: TEST_DATABASE_URL, schema, max });
    stores.push(s);
    return s;
  };
  const integrity = openStore();
  const signerKey = generateEd25519Key(ORIGIN).signerKey;
  const key = await loadLogKey({ origin: ORIGIN, signerKey });
  const logs: IntegrityLog[] = [];
  return {
    schema,
    db,
    integrity,
    key,
    signerKey,
    clock,
    openStore,
    newLog(overrides = {}) {
      const log = new IntegrityLog({
        store: integrity,
        resources: db.store.resources,
        clock,
        logger: silentLogger,
        origin: ORIGIN,
        key,
        batchIntervalMs: 60_000,
        ...overrides,
      });
      logs.push(log);
      return log;
    },
    async close() {
      for (const l of logs) await l.stop().catch(() => undefined);
      for (const s of stores) await s.close();
      await db.close();
      await dropSchema(schema);
    },
  };
}
