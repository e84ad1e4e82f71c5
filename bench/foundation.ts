/**
 * Foundation benchmarks: baselines (SHA-256 rate, raw PostgreSQL single-row insert rate, raw BullMQ
 * job rate on Redis and on the PostgreSQL backend) and what the foundation layers achieve against
 * them (the versioned store's putVersion, the queue layer's end-to-end job rate).
 *
 *   node --import tsx bench/foundation.ts
 */
import { createHash } from 'node:crypto';
import { Queue, Worker, createPostgresBackend } from 'bullmq';
import { Redis } from 'ioredis';
import pg from 'pg';
import { sha256 } from '@noble/hashes/sha2.js';
import { systemClock } from '../src/platform/clock.js';
import { createQueueRegistry } from '../src/queue/index.js';
import { openDatabase } from '../src/store/index.js';
import { DATABASE_URL, REDIS_URL, RUNS, deletePrefix, dropSchema, fmt, isMain, logger, ns, ratio, repeat, say, type Section } from './lib.js';

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

export async function shaRate(impl: 'node' | 'noble'): Promise<number> {
  const data = Buffer.from(JSON.stringify(observation(1)));
  const n = 100_000;
  const t = performance.now();
  for (let i = 0; i < n; i++) {
    if (impl === 'node') createHash('sha256').update(data).digest();
    else sha256(data);
  }
  return n / ((performance.now() - t) / 1000);
}

export async function rawInsertRate(concurrency: number): Promise<number> {
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

export async function storeRate(concurrency: number): Promise<number> {
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
export async function rawBullmqRate(backend: 'redis' | 'postgres'): Promise<number> {
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
export async function registryRate(backend: 'redis' | 'postgres'): Promise<number> {
  const space = ns();
  const registry = await createQueueRegistry({
    config: backend === 'redis' ? { backend, redis: { topology: 'standalone', url: REDIS_URL }, prefix: space } : { backend, connectionString: DATABASE_URL, schema: space },
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

/** Baselines other sections compare against (medians of this run). */
export interface Baselines {
  readonly shaNode: number;
  readonly shaNoble: number;
  readonly rawInsert: number;
  readonly rawBullmq: { readonly redis: number; readonly postgres: number };
}

export async function runFoundation(): Promise<{ section: Section; baselines: Baselines }> {
  const rows: Array<[string, number, string, number]> = [];
  const shaNode = await repeat(() => shaRate('node'));
  const shaNoble = await repeat(() => shaRate('noble'));
  say(`  sha256 node:crypto ${fmt(shaNode)}/s, @noble/hashes ${fmt(shaNoble)}/s`);
  rows.push(['SHA-256 of a 1 KB resource, @noble/hashes', shaNoble, 'SHA-256, node:crypto', shaNode]);

  const raw = await repeat(() => rawInsertRate(8));
  const store = await repeat(() => storeRate(8));
  say(`  postgres raw insert ${fmt(raw)}/s, store.putVersion ${fmt(store)}/s`);
  rows.push(['store.putVersion (new resource, 8 concurrent)', store, 'raw single-row INSERT (8 concurrent)', raw]);

  const rawBullmq = { redis: 0, postgres: 0 };
  for (const backend of ['redis', 'postgres'] as const) {
    const rawQ = await repeat(() => rawBullmqRate(backend));
    const ours = await repeat(() => registryRate(backend));
    rawBullmq[backend] = rawQ;
    say(`  bullmq ${backend}: raw ${fmt(rawQ)} jobs/s, queue layer ${fmt(ours)} jobs/s`);
    rows.push([`queue layer jobs/s (${backend}, concurrency 16)`, ours, `raw BullMQ jobs/s (${backend})`, rawQ]);
  }

  const table = rows.map(([what, v, base, b]) => `| ${what} | ${fmt(v)} | ${base} | ${fmt(b)} | ${ratio(v, b)} |`).join('\n');
  const markdown = `## Foundation

| measured | per second | baseline | baseline per second | ratio |
|---|---:|---|---:|---:|
${table}

**What this means.** The store's \`putVersion\` writes the head row, a history row and a dedup check
in one transaction, so it costs several round trips where the raw baseline costs one. The queue layer
adds only the ids-only check and a metrics observation per job. These baselines are the ceilings the
pipeline sections below are compared with.
`;
  return { section: { title: 'Foundation', markdown, summary: `Foundation: store.putVersion ${fmt(store)}/s vs raw INSERT ${fmt(raw)}/s; queue layer at ${ratio(rows[2]![1], rows[2]![3])}× raw BullMQ on Redis, ${ratio(rows[3]![1], rows[3]![3])}× on PostgreSQL.` }, baselines: { shaNode, shaNoble, rawInsert: raw, rawBullmq } };
}

if (isMain(import.meta.url)) {
  say(`foundation benchmarks: ${RUNS} runs each, medians`);
  const { section } = await runFoundation();
  say(section.markdown);
  process.exit(0);
}
