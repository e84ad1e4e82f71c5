/**
 * Public surface of the store stage: open the database (embedded or external), migrate, and hand out
 * the one {@link Store} interface. No SQL lives outside this folder.
 */
import type { Config } from '../config/index.js';
import type { Clock } from '../platform/clock.js';
import type { Logger } from '../platform/logger.js';
import { startEmbeddedPostgres, type RunningPostgres } from './embedded-postgres.js';
import { runMigrations } from './migrate.js';
import { PostgresStore, createPool } from './postgres-store.js';
import type { Store, VersionCommitter } from './types.js';

export type * from './types.js';
export { EmbeddedPostgresError, startEmbeddedPostgres, type RunningPostgres } from './embedded-postgres.js';
export { runMigrations, loadMigrations } from './migrate.js';
export { StoreConflictError, StoreDataError } from './errors.js';

/** Connections of the audit outbox's own pool (its appends run at most 2 at a time). */
export const AUDIT_POOL_MAX = 2;

export interface Database {
  readonly store: Store;
  /** Connection string of the server in use (embedded or external); for the queue's PostgreSQL backend. */
  readonly connectionString: string;
  /** Closes the pool, then stops the embedded PostgreSQL if we started one. */
  close(): Promise<void>;
}

export interface OpenDatabaseOptions {
  readonly config: Pick<Config, 'database' | 'databaseSchema' | 'databasePoolMax'>;
  readonly logger: Logger;
  readonly clock: Clock;
  /** Apply pending migrations (default true). */
  readonly migrate?: boolean;
  readonly applicationName?: string;
  /**
   * Commits every new version to the integrity log in the transaction that stores it (the runtime
   * passes the integrity stage's). Without one, versions are committed by integrity jobs.
   */
  readonly committer?: VersionCommitter;
}

export async function openDatabase(options: OpenDatabaseOptions): Promise<Database> {
  const { config, logger } = options;
  let embedded: RunningPostgres | undefined;
  let connectionString: string;
  if (config.database.kind === 'embedded') {
    embedded = await startEmbeddedPostgres({ dataDir: config.database.dataDir, port: config.database.port, logger });
    connectionString = embedded.connectionString;
  } else {
    connectionString = config.database.url;
  }
  const pool = createPool({
    connectionString,
    schema: config.databaseSchema,
    max: config.databasePoolMax,
    applicationName: options.applicationName,
  });
  try {
    if (options.migrate ?? true) {
      const applied = await runMigrations(pool, config.databaseSchema);
      if (applied.length > 0) logger.info({ applied, schema: config.databaseSchema }, 'database migrations applied');
    }
  } catch (err) {
    await pool.end().catch(() => undefined);
    await embedded?.stop();
    throw err;
  }
  // The audit outbox's appends (what every FHIR answer waits for) get their own connections, so that
  // they never queue behind the reads and searches waiting for the main pool.
  const auditPool = createPool({
    connectionString,
    schema: config.databaseSchema,
    max: AUDIT_POOL_MAX,
    applicationName: `${options.applicationName ?? 'fhir-anchor'}-audit`,
  });
  const store = new PostgresStore(pool, options.clock, options.committer, auditPool);
  return {
    store,
    connectionString,
    async close() {
      await store.close().catch((err: unknown) => logger.error({ err }, 'closing the database pool failed'));
      await embedded?.stop();
    },
  };
}
