/**
 * Test environment: the real PostgreSQL and Redis servers (DATABASE_URL / REDIS_URL, defaulting to the
 * local ones), each test in its own namespace — a random PostgreSQL schema or Redis key prefix — which
 * the test removes afterwards. Shared databases are never dropped and Redis is never flushed.
 */
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import pg from 'pg';
import { loadConfig, type Config } from '../../src/config/index.js';
import { generateEd25519Key } from '../../src/integrity/note.js';
import { createLogger } from '../../src/platform/logger.js';

export const TEST_DATABASE_URL = process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/test';
export const TEST_REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';

export const silentLogger = createLogger((process.env.TEST_LOG_LEVEL as 'info' | undefined) ?? 'silent');

export function randomNamespace(prefix = 't'): string {
  return `${prefix}_${randomUUID().replace(/-/g, '').slice(0, 16)}`;
}

/** Drops a schema this test created (never anything else). */
export async function dropSchema(schema: string): Promise<void> {
  if (!/^t[a-z]*_[0-9a-f]{16}$/.test(schema)) throw new Error(`refusing to drop non-test schema ${schema}`);
  const client = new pg.Client({ connectionString: TEST_DATABASE_URL });
  await client.connect();
  try {
    await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  } finally {
    await client.end();
  }
}

/** Deletes the Redis keys under a prefix this test created (never FLUSHDB). */
export async function deleteRedisPrefix(prefix: string): Promise<void> {
  if (!/^t[a-z]*_[0-9a-f]{16}$/.test(prefix)) throw new Error(`refusing to delete non-test prefix ${prefix}`);
  const redis = new Redis(TEST_REDIS_URL);
  try {
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
      cursor = next;
      if (keys.length > 0) await redis.del(...keys);
    } while (cursor !== '0');
  } finally {
    redis.disconnect();
  }
}

/** A log signer key generated for this test run (never committed). */
export const TEST_LOG_ORIGIN = 'fhir-anchor.test/log';
export const TEST_LOG_KEY = generateEd25519Key(TEST_LOG_ORIGIN);

/** A SMART access-token signing key (private ES256 JWK) generated for this test run. */
export const TEST_SMART_KEY = JSON.stringify({ ...generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' }), kid: 'test-key', alg: 'ES256', use: 'sig' });
/** Seals source secrets in every test service (config `SECRETS_KEY`). */
export const TEST_SECRETS_KEY = 'test-secrets-key-0123456789abcdef0123456789';

/** A production-mode config against the test servers, in fresh namespaces. */
export function testConfig(overrides: Record<string, string> = {}, queue: 'redis' | 'postgres' = 'redis'): Config {
  return loadConfig({
    DATABASE_URL: TEST_DATABASE_URL,
    ...(queue === 'redis' ? { REDIS_URL: TEST_REDIS_URL } : {}),
    DATABASE_SCHEMA: randomNamespace('t'),
    QUEUE_PREFIX: randomNamespace('tq'),
    QUEUE_SCHEMA: randomNamespace('tq'),
    ADMIN_TOKEN: 'test-admin-token-0123456789abcdef0123456789',
    SECRETS_KEY: TEST_SECRETS_KEY,
    LOG_ORIGIN: TEST_LOG_ORIGIN,
    LOG_SIGNER_KEY: TEST_LOG_KEY.signerKey,
    SMART_TOKEN_KEY: TEST_SMART_KEY,
    DEID_CRYPTO_HASH_KEY: 'test-crypto-hash-key-0123456789',
    DEID_DATE_SHIFT_KEY: 'test-date-shift-key',
    AUDIT_INTERVAL_MS: '0',
    LOG_BATCH_INTERVAL_MS: '100',
    PORT: '0',
    LOG_LEVEL: 'silent',
    DATA_DIR: `/tmp/fhir-anchor-test-${randomUUID()}`,
    ...overrides,
  });
}

/** Removes a config's namespaces. */
export async function cleanupConfig(config: Config): Promise<void> {
  await dropSchema(config.databaseSchema);
  // Only the shared test Redis needs its keys removed; Sentinel and Cluster tests start their own servers.
  if (config.queue.backend === 'redis') {
    if (config.queue.redis.topology === 'standalone') await deleteRedisPrefix(config.queue.prefix);
  } else await dropSchema(config.queue.schema);
}

/** Parses a JSON response body for assertions (tests inspect arbitrary shapes). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export const json = (res: Response): Promise<any> => res.json() as Promise<any>;
