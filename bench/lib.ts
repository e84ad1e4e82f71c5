/**
 * Shared helpers for the benchmarks: settings from the environment, medians and percentiles, random
 * namespaces on the local PostgreSQL and Redis (each removed afterwards; no database is ever dropped
 * and Redis is never flushed), a production-mode service config, and markdown formatting.
 */
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import os from 'node:os';
import { pathToFileURL } from 'node:url';
import { Redis } from 'ioredis';
import pg from 'pg';
import { loadConfig, type Config } from '../src/config/index.js';
import { generateEd25519Key } from '../src/integrity/note.js';
import { createLogger } from '../src/platform/logger.js';

export const DATABASE_URL = process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/test';
export const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
/** BENCH_QUICK=1: one short run of everything (smaller inputs), for a smoke check. */
export const QUICK = process.env.BENCH_QUICK === '1';
/** Repeated runs per measurement; the median is reported. */
export const RUNS = Math.max(1, Number(process.env.BENCH_RUNS || (QUICK ? 1 : 3)));
export const logger = createLogger('silent');

export const ADMIN_TOKEN = 'bench-admin-token-0123456789abcdef0123456789';
export const LOG_ORIGIN = 'bench.fhir-anchor.localhost/log';

export const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? NaN;
};

/** Nearest-rank percentile (q in [0, 1]) of unsorted values. */
export const percentile = (xs: readonly number[], q: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!;
};

export async function repeat(fn: () => Promise<number>, runs = RUNS): Promise<number> {
  const results: number[] = [];
  for (let i = 0; i < runs; i++) results.push(await fn());
  return median(results);
}

/** Median of each field of repeated object results. */
export async function repeatRecord<K extends string>(fn: () => Promise<Record<K, number>>, runs = RUNS): Promise<{ median: Record<K, number>; all: Array<Record<K, number>> }> {
  const all: Array<Record<K, number>> = [];
  for (let i = 0; i < runs; i++) all.push(await fn());
  const keys = Object.keys(all[0]!) as K[];
  const out = {} as Record<K, number>;
  for (const k of keys) out[k] = median(all.map((r) => r[k]));
  return { median: out, all };
}

/** A fresh namespace name: a PostgreSQL schema or a Redis key prefix. */
export const ns = (): string => `bench_${randomUUID().replace(/-/g, '').slice(0, 16)}`;
const NS_RE = /^bench_[0-9a-f]{12,16}$/;

/** Drops a schema a benchmark created (refuses anything that is not a bench namespace). */
export async function dropSchema(schema: string): Promise<void> {
  if (!NS_RE.test(schema)) throw new Error(`refusing to drop non-bench schema ${schema}`);
  const c = new pg.Client({ connectionString: DATABASE_URL });
  await c.connect();
  try {
    await c.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  } finally {
    await c.end();
  }
}

/** Deletes the Redis keys under a prefix a benchmark created (never FLUSHDB). */
export async function deletePrefix(prefix: string): Promise<void> {
  if (!NS_RE.test(prefix)) throw new Error(`refusing to delete non-bench prefix ${prefix}`);
  const r = new Redis(REDIS_URL);
  try {
    let cursor = '0';
    do {
      const [next, keys] = await r.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
      cursor = next;
      if (keys.length) await r.del(...keys);
    } while (cursor !== '0');
  } finally {
    r.disconnect();
  }
}

/** A log signer key for this benchmark process (never stored). */
export const LOG_KEY = generateEd25519Key(LOG_ORIGIN);
/** A SMART access-token signing key (private ES256 JWK) for this benchmark process (never stored). */
export const SMART_KEY = JSON.stringify({ ...generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' }), kid: 'bench-key', alg: 'ES256', use: 'sig' });

/**
 * A production-mode config against the local servers, in fresh namespaces: queues on Redis, or on
 * BullMQ's PostgreSQL backend (no REDIS_URL).
 */
export function serviceConfig(queue: 'redis' | 'postgres', overrides: Record<string, string> = {}): Config {
  return loadConfig({
    DATABASE_URL,
    ...(queue === 'redis' ? { REDIS_URL } : {}),
    DATABASE_SCHEMA: ns(),
    QUEUE_PREFIX: ns(),
    QUEUE_SCHEMA: ns(),
    ADMIN_TOKEN,
    SECRETS_KEY: 'bench-secrets-key-0123456789abcdef0123456789',
    LOG_ORIGIN,
    LOG_SIGNER_KEY: LOG_KEY.signerKey,
    SMART_TOKEN_KEY: SMART_KEY,
    AUDIT_INTERVAL_MS: '0',
    RECONCILE_INTERVAL_MS: '0',
    PORT: '0',
    HOST: '127.0.0.1',
    LOG_LEVEL: 'silent',
    DATA_DIR: `/tmp/fhir-anchor-bench-${randomUUID()}`,
    // Passed through so that a run can compare settings (e.g. VALIDATION_THREADS=0, WORKER_CONCURRENCY=16).
    ...(process.env.VALIDATION_THREADS !== undefined ? { VALIDATION_THREADS: process.env.VALIDATION_THREADS } : {}),
    ...(process.env.WORKER_CONCURRENCY !== undefined ? { WORKER_CONCURRENCY: process.env.WORKER_CONCURRENCY } : {}),
    ...overrides,
  });
}

/**
 * Starts a measurement from a settled database: a CHECKPOINT writes out what the previous run left
 * dirty, so that a checkpoint triggered by its WAL (every ~1 GB with the default max_wal_size) does not
 * fall into this one. Measured here: hook p99 at 500/s went from 0.1-0.2 s to 0.3-2.6 s when the
 * previous phase's checkpoint ran during the run. Needs a superuser (or pg_checkpoint); skipped if not.
 */
export async function settleDatabase(): Promise<void> {
  const c = new pg.Client({ connectionString: DATABASE_URL });
  await c.connect();
  try {
    await c.query('CHECKPOINT').catch(() => undefined);
  } finally {
    await c.end();
  }
}

/** Removes a service config's namespaces. */
export async function cleanupConfig(config: Config): Promise<void> {
  await dropSchema(config.databaseSchema);
  if (config.queue.backend === 'redis') await deletePrefix(config.queue.prefix);
  else await dropSchema(config.queue.schema);
}

export const fmt = (x: number, digits = 0): string =>
  Number.isFinite(x) ? x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits }) : 'n/a';

export const ms = (x: number): string => (Number.isFinite(x) ? (x < 10 ? x.toFixed(3) : x < 100 ? x.toFixed(1) : x.toFixed(0)) : 'n/a');

export const ratio = (v: number, base: number): string => (Number.isFinite(v / base) ? (v / base).toFixed(2) : 'n/a');

export function machineLine(): string {
  const cpus = os.cpus();
  return `${cpus.length} × ${cpus[0]?.model?.trim() ?? 'unknown CPU'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}, ${os.type()} ${os.release()}`;
}

/** 1-minute load average at the time of the call, for the "noisy machine" note. */
export const loadAverage = (): string => os.loadavg().map((l) => l.toFixed(2)).join(' / ');

/** Whether this module is the entry point (`node --import tsx bench/x.ts`). */
export const isMain = (metaUrl: string): boolean => process.argv[1] !== undefined && metaUrl === pathToFileURL(process.argv[1]).href;

export const say = (s: string): void => {
  process.stdout.write(s + '\n');
};

/** One section of docs/benchmarks.md, with the numbers run.ts may cite elsewhere. */
export interface Section {
  readonly title: string;
  readonly markdown: string;
  /** One line for the summary at the top of docs/benchmarks.md. */
  readonly summary?: string;
}
