/**
 * `npm run bench`: the benchmarks, reported as ratios against baselines measured in the same run on
 * the same machine (never as timed assertions). Results are written to docs/benchmarks.md.
 *
 * Baselines: SHA-256 rate (node:crypto), raw PostgreSQL single-row insert rate, raw BullMQ job rate
 * (Redis and PostgreSQL backends). Measured against them: the versioned store's putVersion rate and the
 * queue layer's end-to-end job rate. Stage benchmarks (ingest, integrity, read, research) add sections.
 *
 * Environment: DATABASE_URL and REDIS_URL (defaults: the local test servers). BENCH_RUNS (default 3).
 */
import { createHash, randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import { Queue, Worker, createPostgresBackend } from 'bullmq';
import { Redis } from 'ioredis';
import pg from 'pg';
import { sha256 } from '@noble/hashes/sha2.js';
import { systemClock } from '../src/platform/clock.js';
import { createLogger } from '../src/platform/logger.js';
import { createQueueRegistry } from '../src/queue/index.js';
import { openDatabase } from '../src/store/index.js';

const DATABASE_URL = process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/test';
const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const RUNS = Number(process.env.BENCH_RUNS || 3);
const logger = createLogger('silent');

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
};

async function repeat(fn: () => Promise<number>): Promise<number> {
  const results: number[] = [];
  for (let i = 0; i < RUNS; i++) results.push(await fn());
  return median(results);
}

const ns = (): string => `bench_${randomUUID().replace(/-/g, '').slice(0, 12)}`;

async function dropSchema(schema: string): Promise<void> {
  const c = new pg.Client({ connectionString: DATABASE_URL });
  await c.connect();
  await c.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  await c.end();
}

async function deletePrefix(prefix: string): Promise<void> {
  const r = new Redis(REDIS_URL);
  let cursor = '0';
  do {
    const [next, keys] = await r.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    cursor = next;
    if (keys.length) await r.del(...keys);
  } while (cursor !== '0');
  r.disconnect();
}

/** Resources-like payload: a ~1 KB Observation. */
const observation = (i: number): Record<string, unknown> => ({
  resourceType: 'Observation',
  status: 'final',
  code: { coding: [{ system: 'http://loinc.org', code: '8867-4', display: 'Heart rate' }] },
  subject: { reference: `Patient/p${i % 100}` },
  effectiveDateTime: '2026-01-01T00:00:00Z',
  valueQuantity: { value: 60 + (i % 40), unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
  note: [{ text: 'x'.repeat(600) }],
});

async function shaRate(impl: 'node' | 'noble'): Promise<number> {
  const data = Buffer.from(JSON.stringify(observation(1)));
  const n = 100_000;
  const t = performance.now();
  for (let i = 0; i < n; i++) {
    if (impl === 'node') createHash('sha256').update(data).digest();
    else sha256(data);
  }
  return n / ((performance.now() - t) / 1000);
}

async function rawInsertRate(concurrency: number): Promise<number> {
  const schema = ns();
  const pool = new pg.Pool({ connectionString: DATABASE_URL, max: concurrency });
  await pool.query(`CREATE SCHEMA "${schema}"; CREATE TABLE "${schema}".t (id text PRIMARY KEY, content jsonb)`);
  const n = 3000;
  let next = 0;
  const t = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < n) {
        const i = next++;
        await pool.query(`INSERT INTO "${schema}".t (id, content) VALUES ($1, $2)`, [`r${i}`, observation(i)]);
      }
    }),
  );
  const rate = n / ((performance.now() - t) / 1000);
  await pool.end();
  await dropSchema(schema);
  return rate;
}

async function storeRate(concurrency: number): Promise<number> {
  const schema = ns();
  const db = await openDatabase({
    config: { database: { kind: 'external', url: DATABASE_URL }, databaseSchema: schema, databasePoolMax: concurrency },
    logger,
    clock: systemClock,
  });
  const n = 3000;
  let next = 0;
  const t = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < n) {
        const i = next++;
        await db.store.resources.putVersion({ resourceType: 'Observation', id: `o${i}`, resource: observation(i) as never, dedupKey: 'v1' });
      }
    }),
  );
  const rate = n / ((performance.now() - t) / 1000);
  await db.close();
  await dropSchema(schema);
  return rate;
}

/** Raw BullMQ: addBulk then process with a no-op worker; jobs/s from first add to last completion. */
async function rawBullmqRate(backend: 'redis' | 'postgres'): Promise<number> {
  const name = 'raw';
  const n = 5000;
  const space = ns();
  let queue: Queue;
  let worker: Worker;
  let done = 0;
  let resolve!: () => void;
  const finished = new Promise<void>((r) => (resolve = r));
  const processor = async (): Promise<void> => {
    if (++done === n) resolve();
  };
  if (backend === 'redis') {
    queue = new Queue(name, { connection: new Redis(REDIS_URL, { maxRetriesPerRequest: null }), prefix: space });
    worker = new Worker(name, processor, { connection: new Redis(REDIS_URL, { maxRetriesPerRequest: null }), prefix: space, concurrency: 16 });
  } else {
    const connection = { connectionString: DATABASE_URL, schema: space, max: 20, migrate: true };
    queue = new Queue(name, { connection }, createPostgresBackend) as unknown as Queue;
    worker = new Worker(name, processor, { connection, concurrency: 16 }, createPostgresBackend) as unknown as Worker;
  }
  await queue.waitUntilReady();
  const t = performance.now();
  for (let i = 0; i < n; i += 500) {
    await queue.addBulk(Array.from({ length: 500 }, (_, j) => ({ name, data: { inboxId: `i${i + j}` }, opts: { removeOnComplete: true } })));
  }
  await finished;
  const rate = n / ((performance.now() - t) / 1000);
  await worker.close();
  await queue.close();
  if (backend === 'redis') await deletePrefix(space);
  else await dropSchema(space);
  return rate;
}

/** The same job flow through our queue layer (typed data checks, metrics hooks). */
async function registryRate(backend: 'redis' | 'postgres'): Promise<number> {
  const space = ns();
  const registry = await createQueueRegistry({
    config: backend === 'redis' ? { backend, url: REDIS_URL, prefix: space } : { backend, connectionString: DATABASE_URL, schema: space },
    logger,
  });
  const n = 5000;
  let done = 0;
  let resolve!: () => void;
  const finished = new Promise<void>((r) => (resolve = r));
  registry.work('ingest', async () => {
    if (++done === n) resolve();
  }, { concurrency: 16 });
  const t = performance.now();
  for (let i = 0; i < n; i += 500) {
    await registry.enqueueBulk('ingest', Array.from({ length: 500 }, (_, j) => ({ data: { inboxId: `i${i + j}` } })));
  }
  await finished;
  const rate = n / ((performance.now() - t) / 1000);
  await registry.close();
  if (backend === 'redis') await deletePrefix(space);
  else await dropSchema(space);
  return rate;
}

const fmt = (x: number): string => Math.round(x).toLocaleString('en-US');

async function main(): Promise<void> {
  const rows: Array<[string, number, string, number]> = [];
  const log = (s: string): void => {
    process.stdout.write(s + '\n');
  };
  log(`fhir-anchor benchmarks: ${RUNS} runs each, medians`);

  const shaNode = await repeat(() => shaRate('node'));
  const shaNoble = await repeat(() => shaRate('noble'));
  log(`sha256 node:crypto ${fmt(shaNode)}/s, @noble/hashes ${fmt(shaNoble)}/s`);
  rows.push(['SHA-256 of a 1 KB resource, @noble/hashes', shaNoble, 'SHA-256, node:crypto', shaNode]);

  const raw = await repeat(() => rawInsertRate(8));
  const store = await repeat(() => storeRate(8));
  log(`postgres raw insert ${fmt(raw)}/s, store.putVersion ${fmt(store)}/s`);
  rows.push(['store.putVersion (new resource, 8 concurrent)', store, 'raw single-row INSERT (8 concurrent)', raw]);

  for (const backend of ['redis', 'postgres'] as const) {
    const rawQ = await repeat(() => rawBullmqRate(backend));
    const ours = await repeat(() => registryRate(backend));
    log(`bullmq ${backend}: raw ${fmt(rawQ)} jobs/s, queue layer ${fmt(ours)} jobs/s`);
    rows.push([`queue layer jobs/s (${backend}, concurrency 16)`, ours, `raw BullMQ jobs/s (${backend})`, rawQ]);
  }

  const table = rows.map(([what, v, base, b]) => `| ${what} | ${fmt(v)} | ${base} | ${fmt(b)} | ${(v / b).toFixed(2)} |`).join('\n');
  const md = `# Benchmarks

Generated by \`npm run bench\` on ${new Date().toISOString().slice(0, 10)}. Every figure is the median of ${RUNS} runs.
Ratios compare against a baseline measured in the same run on the same machine. Compare the ratios,
not the absolute numbers, across machines.

Machine: ${os.cpus().length} × ${os.cpus()[0]?.model ?? 'unknown CPU'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}, ${os.type()} ${os.release()}.
PostgreSQL and Redis are local on the same machine (loopback).

## Foundation

| measured | per second | baseline | baseline per second | ratio |
|---|---:|---|---:|---:|
${table}

The store's \`putVersion\` writes the head row, a history row and a dedup check in one transaction,
so it costs several round trips where the raw baseline costs one. The queue layer adds only the
ids-only check and a metrics observation per job.
`;
  writeFileSync(new URL('../docs/benchmarks.md', import.meta.url), md);
  log('wrote docs/benchmarks.md');
}

await main();
