/**
 * `npm run bench:scale`: how throughput changes as the store grows from 10^4 to 10^6 stored resources.
 *
 * One fhir-anchor (in-process, `serve` roles, production mode on the local PostgreSQL and Redis, in its
 * own schema and queue prefix, removed afterwards; opt-out consent default so that reads need no
 * Consent) is filled step by step to each size with copies of the Synthea patient bundles of
 * /work/shared/data/synthea (every id and reference renamed per copy, so each copy is new data with the
 * same shape). At each size, with the store at that size:
 *
 * - seeding rate: the copies written straight through the store (`putVersions`, 4 batches of 250 in
 *   flight, each version with its integrity commitment and search index), i.e. the store's write rate
 *   at that size;
 * - read by id and search (`Observation?patient=…&_count=20`) through the real FHIR API (SMART token,
 *   consent look-up, durable audit record per request) with autocannon at 10 connections, over ids
 *   drawn uniformly from every copy stored so far (so the working set grows with the store);
 * - ingest end to end: the Synthea patient bundles posted to the hook as a new source (new ids), from the
 *   first POST to the last inbox item done (stored + validated), like bench/ingest.ts.
 *
 * Each measurement is repeated (BENCH_RUNS, median reported); ratios are against the smallest size of the
 * same run. Environment: DATABASE_URL, REDIS_URL, BENCH_RUNS, BENCH_QUICK (sizes 10^4 and 3×10^4),
 * BENCH_SCALE_SIZES (e.g. `10000,100000,1000000`, the default), BENCH_SCALE_READ_SECONDS (per run, default 6).
 *
 *   node --import tsx bench/scale.ts
 */
import { randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import pg from 'pg';
import type { Resource } from '@medplum/fhirtypes';
import { startService, type RunningService } from '../src/runtime.js';
import type { PutVersionInput } from '../src/store/types.js';
import { registerTestClient } from '../test/helpers/smart-client.js';
import { loadSynthea, postAll } from './ingest.js';
import { ADMIN_TOKEN, DATABASE_URL, QUICK, RUNS, cleanupConfig, fmt, isMain, loadAverage, machineLine, median, ms, ratio, say, serviceConfig, settleDatabase, type Section } from './lib.js';
import { load, stopLoadWorker, summarize, type LoadResult, type Sample } from './read.js';

const SIZES = (process.env.BENCH_SCALE_SIZES || (QUICK ? '10000,30000' : '10000,100000,1000000'))
  .split(',')
  .map((s) => Number(s.trim()))
  .filter((n) => Number.isInteger(n) && n > 0)
  .sort((a, b) => a - b);
const READ_SECONDS = Number(process.env.BENCH_SCALE_READ_SECONDS || (QUICK ? 2 : 6));
const CONNECTIONS = 10;
const SEED_BATCH = 250;
const SEED_IN_FLIGHT = 4;
const POST_CONCURRENCY = 4;
const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g;

// ---------------------------------------------------------------------------------------------------
// Seed data: copies of the Synthea patient bundles with every uuid renamed per copy

interface Template {
  /** The bundle's JSON text. */
  readonly text: string;
  /** uuid → resource type, from the bundle's `urn:uuid:` fullUrls. */
  readonly typeOf: ReadonlyMap<string, string>;
}

function templates(): Template[] {
  return loadSynthea().patients.map((b) => {
    const text = b.body.toString('utf8');
    const bundle = JSON.parse(text) as { entry?: Array<{ fullUrl?: string; resource?: { resourceType?: string } }> };
    const typeOf = new Map<string, string>();
    for (const e of bundle.entry ?? []) {
      const m = /^urn:uuid:(.+)$/.exec(e.fullUrl ?? '');
      if (m && e.resource?.resourceType) typeOf.set(m[1]!, e.resource.resourceType);
    }
    return { text, typeOf };
  });
}

interface Copy {
  readonly inputs: PutVersionInput[];
  readonly observations: string[];
  readonly patients: string[];
}

/** Copy `k` of a bundle: every uuid becomes `s{k}-{uuid}`, `urn:uuid:` references become `Type/s{k}-{uuid}`. */
function copyOf(t: Template, k: number): Copy {
  const tag = `s${k}-`;
  const text = t.text.replace(UUID, (u) => `${tag}${u}`).replace(/urn:uuid:s\d+-([0-9a-f-]{36})/g, (_m, u: string) => `${t.typeOf.get(u) ?? 'Basic'}/${tag}${u}`);
  const bundle = JSON.parse(text) as { entry?: Array<{ fullUrl?: string; resource?: Resource }> };
  const out: Copy = { inputs: [], observations: [], patients: [] };
  for (const e of bundle.entry ?? []) {
    const r = e.resource;
    if (!r?.resourceType) continue;
    const id = r.id ?? /\/(s\d+-[0-9a-f-]{36})$/.exec(e.fullUrl ?? '')?.[1] ?? `${tag}${randomUUID()}`;
    const resource = { ...r, id: id.startsWith(tag) ? id : `${tag}${id}` } as Resource;
    out.inputs.push({ resourceType: resource.resourceType, id: resource.id!, resource, sourceId: 'scale-seed', dedupKey: `seed:${k}` });
    if (resource.resourceType === 'Observation') out.observations.push(resource.id!);
    if (resource.resourceType === 'Patient') out.patients.push(resource.id!);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Measurements

interface Step {
  readonly size: number;
  readonly dbBytes: number;
  readonly seedRate: number;
  readonly read: LoadResult;
  readonly search: LoadResult;
  readonly ingest: number;
  readonly ingestRuns: readonly number[];
}

async function waitInbox(db: pg.Client, ids: readonly string[], timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await db.query<{ n: number; last: Date | null }>(`SELECT count(*)::int AS n, max(updated_at) AS last FROM inbox WHERE id::text = ANY($1) AND state IN ('done', 'dead')`, [ids]);
    if (r.rows[0]!.n === ids.length) return r.rows[0]!.last!.getTime();
    if (Date.now() > deadline) throw new Error(`inbox: ${r.rows[0]!.n} of ${ids.length} finished after ${timeoutMs} ms`);
    await new Promise((res) => setTimeout(res, 50));
  }
}

async function ingestOnce(service: RunningService, db: pg.Client, run: string): Promise<number> {
  const { support, patients } = loadSynthea();
  const source = `scale-${run}`;
  const bearer = `scale-hook-bearer-${randomUUID()}`;
  const res = await fetch(`${service.url!}/admin/sources`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ id: source, name: `Scale ${run}`, baseUrl: `https://${source}.example/fhir`, hookAuth: { bearerToken: bearer } }),
  });
  if (res.status !== 201) throw new Error(`registering ${source}: ${res.status} ${await res.text()}`);
  // Support bundles first (the patient bundles' conditional references point at them); not timed.
  await waitInbox(db, await postAll(service.url!, support.map((b) => b.body), 1, { source, bearer }), 120_000);
  const t0 = Date.now();
  const ids = await postAll(service.url!, patients.map((b) => b.body), POST_CONCURRENCY, { source, bearer });
  const at = await waitInbox(db, ids, 600_000);
  const stored = (await db.query<{ n: number }>(`SELECT coalesce(sum((outcome->>'stored')::int), 0)::int AS n FROM inbox WHERE id::text = ANY($1)`, [ids])).rows[0]!.n;
  return stored / ((at - t0) / 1000);
}

async function loadCase(url: string, paths: readonly string[], headers: Record<string, string>): Promise<LoadResult> {
  await load(url, paths, headers, CONNECTIONS, QUICK ? 1 : 5); // warm-up: connections, plans, token cache, JIT, the audit thread
  const samples: Sample[] = [];
  for (let i = 0; i < RUNS; i++) samples.push(await load(url, paths, headers, CONNECTIONS, READ_SECONDS));
  return summarize(samples);
}

/** Uniform sample of `n` items (with replacement when fewer), deterministic. */
function sample<T>(xs: readonly T[], n: number, seed: number): T[] {
  let s = seed >>> 0 || 1;
  return Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return xs[s % xs.length]!;
  });
}

export async function runScale(): Promise<Section> {
  const loadStart = loadAverage();
  const config = serviceConfig('redis', { CONSENT_DEFAULT_DECISION: 'permit', SMART_ACCESS_TOKEN_TTL_S: '7200', SUBSCRIPTION_CHECK_INTERVAL_MS: '0' });
  const service = await startService({ config, roles: { api: true, workers: true } });
  const db = new pg.Client({ connectionString: DATABASE_URL, options: `-c search_path="${config.databaseSchema}"` });
  await db.connect();
  const steps: Step[] = [];
  try {
    const client = await registerTestClient(service.url!, ADMIN_TOKEN, { id: 'scale-reader', allowedScopes: ['system/*.rs'] });
    const headers = { authorization: `Bearer ${await client.token('system/*.rs')}` };
    const ts = templates();
    const observations: string[] = [];
    const patients: string[] = [];
    let copies = 0;
    const stored = async (): Promise<number> => (await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM resource`)).rows[0]!.n;

    for (const size of SIZES) {
      // Fill the store up to `size` with new copies, through the store's own set-based write path.
      let have = await stored();
      const seedStart = performance.now();
      let seeded = 0;
      while (have < size) {
        const batch: PutVersionInput[] = [];
        while (batch.length < 20 * SEED_BATCH && have + batch.length < size) {
          const c = copyOf(ts[copies % ts.length]!, copies);
          copies += 1;
          batch.push(...c.inputs);
          observations.push(...c.observations);
          patients.push(...c.patients);
        }
        let next = 0;
        await Promise.all(
          Array.from({ length: SEED_IN_FLIGHT }, async () => {
            while (next < batch.length) {
              const start = next;
              next += SEED_BATCH;
              await service.database.store.resources.putVersions(batch.slice(start, start + SEED_BATCH));
            }
          }),
        );
        seeded += batch.length;
        have += batch.length;
      }
      const seedRate = seeded / ((performance.now() - seedStart) / 1000);
      await db.query('ANALYZE');
      // Settle: the sequencer has logged every seeded version and no audit record waits to become an
      // AuditEvent, so the measurements below do not share the machine with the seeding's aftermath.
      const settleBy = Date.now() + 600_000;
      while (Date.now() < settleBy) {
        const p = (await db.query<{ c: number; a: number }>(`SELECT (SELECT count(*)::int FROM commitment WHERE leaf_index IS NULL) AS c, (SELECT count(*)::int FROM audit_outbox) AS a`)).rows[0]!;
        if (p.c === 0 && p.a === 0) break;
        await new Promise((r) => setTimeout(r, 200));
      }
      await settleDatabase(); // the seeding's dirty pages written out now, not during a measurement
      const sizeNow = await stored();
      const dbBytes = Number(
        (
          await db.query<{ b: string }>(
            `SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::text AS b FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind IN ('r', 'm')`,
            [config.databaseSchema],
          )
        ).rows[0]!.b,
      );
      say(`  ${fmt(sizeNow)} resources stored (${fmt(dbBytes / 2 ** 20)} MB; ${fmt(seeded)} seeded at ${fmt(seedRate)}/s)`);

      const readPaths = sample(observations, 4000, size).map((id) => `/fhir/R4/Observation/${id}`);
      const searchPaths = sample(patients, 1000, size + 1).map((id) => `/fhir/R4/Observation?patient=${id}&_count=20`);
      const check = await fetch(`${service.url!}${readPaths[0]!}`, { headers });
      await check.arrayBuffer();
      if (check.status !== 200) throw new Error(`sanity check: ${readPaths[0]!} answered ${check.status}`);
      const read = await loadCase(service.url!, readPaths, headers);
      say(`    read by id: ${fmt(read.rps)} req/s, p50 ${ms(read.p50)} ms, p99 ${ms(read.p99)} ms (${read.errors} errors)`);
      const search = await loadCase(service.url!, searchPaths, headers);
      say(`    search patient=: ${fmt(search.rps)} req/s, p50 ${ms(search.p50)} ms, p99 ${ms(search.p99)} ms (${search.errors} errors)`);
      const ingestRuns: number[] = [];
      for (let i = 0; i < RUNS; i++) {
        await settleDatabase();
        ingestRuns.push(await ingestOnce(service, db, `${size}-${i}`));
        say(`    ingest run ${i + 1}: ${fmt(ingestRuns[i]!)} resources/s stored + validated`);
      }
      steps.push({ size: sizeNow, dbBytes, seedRate, read, search, ingest: median(ingestRuns), ingestRuns });
    }
  } finally {
    await stopLoadWorker();
    await db.end();
    await service.close();
    await cleanupConfig(config);
    await rm(config.dataDir, { recursive: true, force: true });
  }
  return report(steps, loadStart);
}

function report(steps: readonly Step[], loadStart: string): Section {
  const first = steps[0]!;
  const last = steps[steps.length - 1]!;
  const rows = steps
    .map(
      (s) =>
        `| ${fmt(s.size)} | ${fmt(s.dbBytes / 2 ** 20)} MB | ${fmt(s.seedRate)} | ${fmt(s.ingest)} (${s.ingestRuns.map((x) => fmt(x)).join(', ')}) | ${ratio(s.ingest, first.ingest)} | ${fmt(s.read.rps)} | ${ms(s.read.p50)} / ${ms(s.read.p99)} | ${ratio(s.read.rps, first.read.rps)} | ${fmt(s.search.rps)} | ${ms(s.search.p50)} / ${ms(s.search.p99)} | ${ratio(s.search.rps, first.search.rps)} |`,
    )
    .join('\n');
  const summary = `Scale: from ${fmt(first.size)} to ${fmt(last.size)} stored resources, ingest ${fmt(first.ingest)} → ${fmt(last.ingest)} resources/s (${ratio(last.ingest, first.ingest)}×), read by id ${fmt(first.read.rps)} → ${fmt(last.read.rps)} req/s (${ratio(last.read.rps, first.read.rps)}×), search ${fmt(first.search.rps)} → ${fmt(last.search.rps)} req/s (${ratio(last.search.rps, first.search.rps)}×).`;
  const markdown = `## Scale: throughput from ${fmt(first.size)} to ${fmt(last.size)} stored resources

One service (in-process, \`serve\` roles, queues on Redis, opt-out consent default) filled step by step with renamed copies of
the Synthea patient bundles (every id and reference per copy, so each copy is new data of the same shape) through the store's
own write path (\`putVersions\`: each version with its integrity commitment and search index). At each size: reads by id and
\`Observation?patient=…&_count=20\` searches through the real FHIR API (SMART token, consent look-up, a durable audit record per
request) at ${CONNECTIONS} connections over ids drawn from every copy stored so far (the working set grows with the store), ${RUNS} × ${READ_SECONDS} s
each; then the Synthea patient bundles posted to the hook as a new source (${RUNS} runs, median; per-run figures in brackets).
Ratios are against the smallest size of this run. Load average ${loadStart} at the start, ${loadAverage()} at the end; ${machineLine()}.

| stored resources | database size | store write rate (putVersions, resources/s) | ingest, hook → stored + validated (resources/s) | ÷ first | read by id (req/s) | read p50 / p99 (ms) | ÷ first | search (req/s) | search p50 / p99 (ms) | ÷ first |
|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|
${rows}

**What this means.** From ${fmt(first.size)} to ${fmt(last.size)} stored resources (${fmt(first.dbBytes / 2 ** 20)} MB to ${fmt(last.dbBytes / 2 ** 20)} MB of tables
and indexes), ingest keeps ${ratio(last.ingest, first.ingest)}× of its throughput, reads by id ${ratio(last.read.rps, first.read.rps)}× and searches ${ratio(last.search.rps, first.search.rps)}×, and the store's write rate
${ratio(last.seedRate, first.seedRate)}×. Every look-up on these paths is an index probe (the primary keys, the search-index tables, the per-patient
Consent look-up), so the work per request grows with the depth of the B-trees, not with the number of rows. How much of the
database stays in memory matters more: compare runs on hosts with less memory than the database before sizing one.
`;
  return { title: 'Scale', markdown, summary };
}

if (isMain(import.meta.url)) {
  say(`scale benchmark: sizes ${SIZES.map((s) => fmt(s)).join(', ')}, ${RUNS} runs each`);
  const section = await runScale();
  // Under `npm run bench` (bench/run.ts) the section goes back to the parent through a file.
  if (process.env.BENCH_SECTION_OUT) writeFileSync(process.env.BENCH_SECTION_OUT, JSON.stringify(section));
  else say(section.markdown);
  process.exit(0);
}
