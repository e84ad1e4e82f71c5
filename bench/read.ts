/**
 * `npm run bench:read`: throughput and latency of the consent-gated FHIR read API with autocannon,
 * read-by-id (`GET /fhir/R4/Observation/{id}`) and search (`GET /fhir/R4/Observation?patient=…&_count=20`)
 * at 10 and 50 connections, GATED against UNGATED baselines measured in the same run on the same data:
 *
 * - raw: a minimal express handler in this process on a pool like the service's (same size, same
 *   schema) running the same SQL the store runs (`SELECT … content FROM resource WHERE …`, and the
 *   search store's keyset query for `patient=`), no auth, no consent, no audit: the lower bound.
 * - ungated: the real route of a second fhir-anchor (same schema and data) with CONSENT_DEFAULT_DECISION=permit,
 *   a client whose scopes allow every type (`system/*.rs`), reading patients that have no Consent. Token
 *   verification, the consent engine (which finds no Consent and permits by default) and the AuditEvent
 *   write all still run: only the consent decision is trivial.
 * - gated: the real route of the default deny (opt-in) fhir-anchor, a client scoped to
 *   `system/Observation.rs` with purpose TREAT, reading patients whose active Consent permits TREAT
 *   (with a nested deny for another organisation), so every answer is a 200 decided by a real Consent.
 * - gated-mixed (read only): the gated service over every Observation: half the patients permit, a
 *   quarter deny by Consent, a quarter have none (default deny), so about half the answers are 404s.
 *
 * fhir-anchor runs in-process (api role only, production mode against the local PostgreSQL and Redis,
 * in a random schema and queue prefix removed afterwards). autocannon runs in a worker thread so that the
 * load generator does not share the service's event loop; latencies are autocannon's per-response times
 * in ms (exact samples, not its 1 ms histogram). Data is seeded directly with `putVersions` (no
 * validation): Patients, 20 Observations each, Consents.
 *
 * Environment: DATABASE_URL, REDIS_URL; BENCH_QUICK=1 (3 s per case, fewer patients);
 * BENCH_READ_SECONDS per case (default 10), run as slices of BENCH_READ_SLICE_SECONDS (default 2) that alternate
 * between the cases of one endpoint and connection count, so that the background load of a shared machine falls on
 * gated and ungated alike; BENCH_READ_PATIENTS (default 400); BENCH_KEEP_SCHEMA=1 keeps the seeded schema for diagnosis.
 *
 *   node --import tsx bench/read.ts
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import type { Server } from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import { Worker } from 'node:worker_threads';
import express from 'express';
import type { Resource } from '@medplum/fhirtypes';
import type { Config } from '../src/config/index.js';
import { createFhirApiRouter } from '../src/fhir-api/routes.js';
import { systemClock } from '../src/platform/clock.js';
import { startService, type RunningService } from '../src/runtime.js';
import { errorHandler, notFoundHandler } from '../src/server/errors.js';
import { createPool } from '../src/store/postgres-store.js';
import type { PutVersionInput } from '../src/store/types.js';
import { registerTestClient } from '../test/helpers/smart-client.js';
import { ADMIN_TOKEN, QUICK, cleanupConfig, deletePrefix, fmt, isMain, loadAverage, machineLine, ms, say, serviceConfig, settleDatabase, type Section } from './lib.js';

const SECONDS = Number(process.env.BENCH_READ_SECONDS || (QUICK ? 3 : 10));
const WARMUP_SECONDS = QUICK ? 1 : 3;
const PATIENTS = Number(process.env.BENCH_READ_PATIENTS || (QUICK ? 120 : 400));
const OBS_PER_PATIENT = 20;
const SLICE_SECONDS = Math.max(1, Number(process.env.BENCH_READ_SLICE_SECONDS || (QUICK ? 1 : 2)));
const SLICES = Math.max(1, Math.round(SECONDS / SLICE_SECONDS));
const CONNECTIONS = [10, 50] as const;
const SEARCH_COUNT = 20;
/** BENCH_READ_CASES=read:gated,search:raw runs only those cases (for profiling one path). */
const ONLY = (process.env.BENCH_READ_CASES ?? '').split(',').map((s) => s.trim()).filter((s) => s !== '');

const LOINC = 'http://loinc.org';
const OBS_CATEGORY = 'http://terminology.hl7.org/CodeSystem/observation-category';
const ACT_REASON = 'http://terminology.hl7.org/CodeSystem/v3-ActReason';
const FHIR_JSON = 'application/fhir+json; charset=utf-8';

// ---------------------------------------------------------------------------------------------
// Data

type Group = 'permit' | 'deny' | 'none';
/** Half the patients permit TREAT by Consent, a quarter deny everything, a quarter have no Consent. */
const groupOf = (i: number): Group => (i % 4 === 0 ? 'deny' : i % 4 === 1 ? 'none' : 'permit');
const patientId = (i: number): string => `bp-${String(i).padStart(5, '0')}`;
const observationId = (i: number, j: number): string => `bo-${String(i).padStart(5, '0')}-${String(j).padStart(2, '0')}`;

const CODES = [
  { code: '2339-0', display: 'Glucose [Mass/volume] in Blood', unit: 'mg/dL', base: 90, category: 'laboratory' },
  { code: '8867-4', display: 'Heart rate', unit: '/min', base: 70, category: 'vital-signs' },
  { code: '8480-6', display: 'Systolic blood pressure', unit: 'mm[Hg]', base: 120, category: 'vital-signs' },
  { code: '4548-4', display: 'Hemoglobin A1c/Hemoglobin.total in Blood', unit: '%', base: 6, category: 'laboratory' },
  { code: '2093-3', display: 'Cholesterol [Mass/volume] in Serum or Plasma', unit: 'mg/dL', base: 180, category: 'laboratory' },
];

function patient(i: number): Resource {
  return {
    resourceType: 'Patient',
    id: patientId(i),
    meta: { profile: ['http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient'] },
    identifier: [{ system: 'urn:oid:1.2.36.146.595.217.0.1', value: `MRN${100000 + i}` }],
    name: [{ family: `Bench${i}`, given: ['Pat'] }],
    gender: i % 2 ? 'female' : 'male',
    birthDate: `19${String(40 + (i % 60)).padStart(2, '0')}-0${1 + (i % 9)}-1${i % 10}`,
  } as Resource;
}

/** A US Core-shaped Observation of about 1 KB. */
function observation(i: number, j: number): Resource {
  const c = CODES[j % CODES.length]!;
  const day = String(1 + (j % 28)).padStart(2, '0');
  return {
    resourceType: 'Observation',
    id: observationId(i, j),
    meta: { profile: [`http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation-${c.category === 'laboratory' ? 'lab' : 'vital-signs'}`] },
    identifier: [{ system: 'urn:oid:1.2.3.4.5.6', value: `obs-${i}-${j}` }],
    status: 'final',
    category: [{ coding: [{ system: OBS_CATEGORY, code: c.category, display: c.category }] }],
    code: { coding: [{ system: LOINC, code: c.code, display: c.display }], text: c.display },
    subject: { reference: `Patient/${patientId(i)}` },
    encounter: { reference: `Encounter/be-${i}-${j % 4}` },
    effectiveDateTime: `2024-0${1 + (j % 9)}-${day}T0${j % 10}:15:00Z`,
    issued: `2024-0${1 + (j % 9)}-${day}T1${j % 10}:00:00Z`,
    performer: [{ reference: 'Organization/bench-lab', display: 'Bench Lab' }],
    valueQuantity: { value: c.base + ((i * 7 + j * 3) % 20), unit: c.unit, system: 'http://unitsofmeasure.org', code: c.unit },
    interpretation: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation', code: 'N', display: 'Normal' }] }],
    referenceRange: [{ low: { value: c.base * 0.8, unit: c.unit }, high: { value: c.base * 1.2, unit: c.unit }, text: 'normal' }],
  } as Resource;
}

const CONSENT_BASE = {
  resourceType: 'Consent',
  status: 'active',
  scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] },
  category: [{ coding: [{ system: LOINC, code: '59284-0', display: 'Patient Consent' }] }],
  dateTime: '2024-01-01T00:00:00Z',
};

/** Permit treatment, except to another organisation; or deny everything. */
function consent(i: number, kind: 'permit' | 'deny'): Resource {
  const provision =
    kind === 'permit'
      ? {
          type: 'permit',
          purpose: [{ system: ACT_REASON, code: 'TREAT' }],
          provision: [{ type: 'deny', actor: [{ role: { coding: [{ code: 'IRCP' }] }, reference: { reference: 'Organization/elsewhere' } }] }],
        }
      : { type: 'deny' };
  return { ...CONSENT_BASE, id: `bc-${patientId(i)}`, patient: { reference: `Patient/${patientId(i)}` }, provision } as Resource;
}

async function seed(service: RunningService): Promise<void> {
  const inputs: PutVersionInput[] = [];
  for (let i = 0; i < PATIENTS; i++) {
    inputs.push({ resourceType: 'Patient', id: patientId(i), resource: patient(i), sourceId: 'bench' });
    for (let j = 0; j < OBS_PER_PATIENT; j++) inputs.push({ resourceType: 'Observation', id: observationId(i, j), resource: observation(i, j), sourceId: 'bench' });
    const g = groupOf(i);
    if (g !== 'none') inputs.push({ resourceType: 'Consent', id: `bc-${patientId(i)}`, resource: consent(i, g), sourceId: 'bench' });
  }
  const batch = 250;
  let next = 0;
  await Promise.all(
    Array.from({ length: 4 }, async () => {
      while (next < inputs.length) {
        const start = next;
        next += batch;
        await service.database.store.resources.putVersions(inputs.slice(start, start + batch));
      }
    }),
  );
}

// ---------------------------------------------------------------------------------------------
// The raw lower bound

interface Raw {
  readonly url: string;
  close(): Promise<void>;
}

async function listen(app: express.Express): Promise<{ url: string; close(): Promise<void> }> {
  const server = await new Promise<Server>((resolve, reject) => {
    const s = app.listen(0, '127.0.0.1', (err?: Error) => (err ? reject(err) : resolve(s)));
  });
  server.keepAliveTimeout = 5_000;
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/**
 * Diagnostic: the real consent-gated router on the gated service's store, pool, scopes and consent
 * default, but with a disclosure recorder that records nothing: what gating costs without the
 * AuditEvent write and its integrity job. Not a configuration fhir-anchor offers.
 */
async function startNoAudit(service: RunningService): Promise<Raw> {
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  app.use(
    '/fhir/R4',
    createFhirApiRouter({
      store: service.database.store,
      recorder: { record: async () => undefined },
      consentDefault: 'deny',
      clock: systemClock,
      logger: service.logger,
      baseUrl: 'http://127.0.0.1/fhir/R4',
      queues: service.queues,
      authenticate: service.smart.authenticator.middleware,
      cursorKey: randomBytes(32),
    }),
  );
  app.use(notFoundHandler);
  app.use(errorHandler(service.logger));
  return listen(app);
}

async function startRaw(config: Config): Promise<Raw> {
  const pool = createPool({ connectionString: DATABASE_URL_OF(config), schema: config.databaseSchema, max: config.databasePoolMax, applicationName: 'bench-raw' });
  const app = express();
  app.get('/Observation/:id', async (req, res) => {
    const r = await pool.query<{ content: Resource }>({
      name: 'raw_read',
      text: `SELECT content FROM resource WHERE resource_type = $1 AND id = $2 AND version_id IS NOT NULL AND NOT deleted`,
      values: ['Observation', req.params.id],
    });
    if (!r.rows[0]) {
      res.status(404).end();
      return;
    }
    res.status(200).type(FHIR_JSON).send(JSON.stringify(r.rows[0].content));
  });
  app.get('/Observation', async (req, res) => {
    const patientRef = String(req.query.patient ?? '');
    const count = Math.min(Number(req.query._count ?? 50), 200);
    // The search store's keyset query for `patient=` (src/store/search-store.ts), one row beyond the page.
    const r = await pool.query<{ id: string; content: Resource }>({
      name: 'raw_search',
      text: `SELECT r.id, r.content FROM resource r WHERE r.resource_type = $1 AND r.version_id IS NOT NULL AND NOT r.deleted
               AND EXISTS (SELECT 1 FROM search_reference s WHERE s.resource_type = r.resource_type AND s.id = r.id AND s.param = $2
                           AND s.target_id = $3 AND s.target_type = $4)
             ORDER BY r.id COLLATE "C" LIMIT $5`,
      values: ['Observation', 'patient', patientRef, 'Patient', count + 1],
    });
    const base = 'http://127.0.0.1/fhir/R4';
    const bundle = {
      resourceType: 'Bundle',
      type: 'searchset',
      link: [{ relation: 'self', url: `${base}${req.url}` }],
      entry: r.rows.slice(0, count).map((row) => ({ fullUrl: `${base}/Observation/${row.id}`, resource: row.content, search: { mode: 'match' } })),
    };
    res.status(200).type(FHIR_JSON).send(JSON.stringify(bundle));
  });
  const server = await listen(app);
  return {
    url: server.url,
    async close() {
      await server.close();
      await pool.end();
    },
  };
}

function DATABASE_URL_OF(config: Config): string {
  if (config.database.kind !== 'external') throw new Error('bench:read needs DATABASE_URL (production mode)');
  return config.database.url;
}

// ---------------------------------------------------------------------------------------------
// autocannon in a worker thread

/** What one autocannon run saw. */
export interface Sample {
  readonly latencies: Float64Array;
  readonly statuses: Record<string, number>;
  readonly errors: number;
  /** Seconds. */
  readonly duration: number;
  /** Busy time of this process's main thread (the service's event loop) during the slice, ms. */
  readonly busyMs: number;
}

export interface LoadResult {
  readonly rps: number;
  readonly p50: number;
  readonly p99: number;
  readonly responses: number;
  readonly ok: number;
  readonly notFound: number;
  /** Connection errors, timeouts and 5xx. */
  readonly errors: number;
  /** Lowest and highest req/s of the slices. */
  readonly sliceRps: readonly [number, number];
  /** Event-loop busy time per response, ms: the service's CPU cost per request, steadier than req/s on a shared machine. */
  readonly busyPerRequest: number;
}

/**
 * The worker: runs autocannon (programmatic API) once per message, with each connection starting at a
 * different offset of the request list, and records every response time (ms, float) itself. One
 * worker serves every slice: starting a thread and loading autocannon per slice took seconds on a busy
 * machine, and the first request of each connection was timed across that start-up (2–3.6 s "latencies"
 * at 50 connections, and slices of 2 s that lasted 5.7 s).
 */
const WORKER_SOURCE = `
const { workerData, parentPort } = require('node:worker_threads');
const autocannon = require(workerData.autocannonPath);
parentPort.on('message', ({ id, paths, headers, connections, duration, url }) => {
  let nextClient = 0;
  const latencies = [];
  const statuses = {};
  const step = Math.max(1, Math.floor(paths.length / connections));
  // Each connection cycles over its own window of at most 256 paths: autocannon renders every request
  // of a client up front, and 5,000 per client took ~65 ms each, blocking this thread for seconds at
  // 50 connections while the first requests' clocks ran.
  const windowOf = (k) => Array.from({ length: Math.min(256, paths.length) }, (_, i) => ({ method: 'GET', path: paths[(k + i) % paths.length] }));
  const instance = autocannon({
    url, connections, duration, headers, timeout: 30,
    requests: windowOf(0),
    setupClient(client) {
      client.setRequests(windowOf((nextClient++ * step) % paths.length));
    },
  }, (err, result) => {
    if (err) { parentPort.postMessage({ id, error: String(err) }); return; }
    parentPort.postMessage({
      id, latencies: Float64Array.from(latencies), statuses,
      errors: result.errors, timeouts: result.timeouts, duration: result.duration, total: result.requests.total,
    });
  });
  instance.on('response', (_client, status, _bytes, responseTime) => {
    statuses[status] = (statuses[status] || 0) + 1;
    if (status < 500) latencies.push(responseTime);
  });
});
parentPort.postMessage({ ready: true });
`;

const autocannonPath = createRequire(import.meta.url).resolve('autocannon');

type WorkerReply = { id: number; error?: string; latencies: Float64Array; statuses: Record<string, number>; errors: number; timeouts: number; duration: number };
let loadWorker: { worker: Worker; ready: Promise<void>; waiting: Map<number, (m: WorkerReply) => void> } | undefined;
let nextLoadId = 1;

/** The one load-generator thread (started on first use, stopped by {@link stopLoadWorker}). */
function loadGenerator(): NonNullable<typeof loadWorker> {
  if (loadWorker) return loadWorker;
  const worker = new Worker(WORKER_SOURCE, { eval: true, execArgv: [], workerData: { autocannonPath } });
  const waiting = new Map<number, (m: WorkerReply) => void>();
  worker.on('error', (err) => {
    for (const [id, done] of waiting) done({ id, error: String(err) } as WorkerReply);
  });
  const ready = new Promise<void>((resolve, reject) => {
    worker.once('error', reject);
    worker.on('message', (m: WorkerReply & { ready?: boolean }) => {
      if (m.ready) resolve();
      else waiting.get(m.id)?.(m);
    });
  });
  loadWorker = { worker, ready, waiting };
  return loadWorker;
}

export async function stopLoadWorker(): Promise<void> {
  const w = loadWorker;
  loadWorker = undefined;
  await w?.worker.terminate();
}

export async function load(url: string, paths: readonly string[], headers: Record<string, string>, connections: number, duration: number): Promise<Sample> {
  const gen = loadGenerator();
  await gen.ready;
  const elu0 = performance.eventLoopUtilization();
  const id = nextLoadId++;
  const msg = await new Promise<WorkerReply>((resolve) => {
    gen.waiting.set(id, resolve);
    gen.worker.postMessage({ id, url, paths, headers, connections, duration });
  });
  gen.waiting.delete(id);
  if (msg.error) throw new Error(msg.error);
  return { latencies: msg.latencies, statuses: msg.statuses, errors: msg.errors + msg.timeouts, duration: msg.duration, busyMs: performance.eventLoopUtilization(elu0).active };
}

const countOf = (sample: Sample, pred: (status: number) => boolean): number =>
  Object.entries(sample.statuses)
    .filter(([s]) => pred(Number(s)))
    .reduce((a, [, n]) => a + n, 0);

/** Merges the slices of one case: req/s over their total time, percentiles over every response. */
export function summarize(samples: readonly Sample[]): LoadResult {
  const sorted = samples.flatMap((x) => Array.from(x.latencies)).sort((a, b) => a - b);
  const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] ?? NaN;
  const sum = (f: (x: Sample) => number): number => samples.reduce((a, x) => a + f(x), 0);
  const responses = sum((x) => countOf(x, () => true));
  const slice = samples.map((x) => countOf(x, () => true) / x.duration);
  return {
    rps: responses / sum((x) => x.duration),
    p50: at(0.5),
    p99: at(0.99),
    responses,
    ok: sum((x) => countOf(x, (st) => st >= 200 && st < 300)),
    notFound: sum((x) => countOf(x, (st) => st === 404)),
    errors: sum((x) => x.errors + countOf(x, (st) => st >= 500)),
    sliceRps: [Math.min(...slice), Math.max(...slice)],
    busyPerRequest: sum((x) => x.busyMs) / Math.max(1, responses),
  };
}

// ---------------------------------------------------------------------------------------------
// Cases

type Variant = 'raw' | 'ungated' | 'gated' | 'gated-mixed' | 'gated-noaudit';
type Endpoint = 'read' | 'search';

interface Target {
  readonly url: string;
  readonly prefix: string;
  readonly headers: Record<string, string>;
  readonly paths: Record<Endpoint, readonly string[]>;
}

interface Measured {
  readonly endpoint: Endpoint;
  readonly variant: Variant;
  readonly connections: number;
  readonly median: LoadResult;
}

function shuffled<T>(xs: readonly T[], seed: number): T[] {
  const out = [...xs];
  let s = seed >>> 0 || 1;
  for (let i = out.length - 1; i > 0; i--) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const j = s % (i + 1);
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

async function expectStatus(url: string, headers: Record<string, string>, status: number, what: string): Promise<void> {
  const res = await fetch(url, { headers });
  await res.arrayBuffer();
  if (res.status !== status) throw new Error(`sanity check failed: ${what}: ${url} answered ${res.status}, expected ${status}`);
}

export interface ReadBenchResult {
  readonly section: Section;
  readonly measured: readonly Measured[];
}

export async function runRead(): Promise<ReadBenchResult> {
  const loadStart = loadAverage();
  const tokenKey = JSON.stringify({ ...generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' }), kid: 'bench-read', alg: 'ES256', use: 'sig' });
  const common = { SMART_TOKEN_KEY: tokenKey, SMART_ACCESS_TOKEN_TTL_S: '7200', LOG_LEVEL: 'silent', SUBSCRIPTION_CHECK_INTERVAL_MS: '0' };
  const gatedConfig = serviceConfig('redis', { ...common, CONSENT_DEFAULT_DECISION: 'deny' });
  // Same schema (same data), its own queue prefix; only the default decision differs.
  const openConfig = serviceConfig('redis', { ...common, CONSENT_DEFAULT_DECISION: 'permit', DATABASE_SCHEMA: gatedConfig.databaseSchema });
  let gated: RunningService | undefined;
  let open: RunningService | undefined;
  let raw: Raw | undefined;
  let noAudit: Raw | undefined;
  let cleaned = false;
  const cleanup = async (): Promise<void> => {
    if (cleaned) return;
    cleaned = true;
    await stopLoadWorker();
    await raw?.close().catch(() => undefined);
    await noAudit?.close().catch(() => undefined);
    await open?.close().catch(() => undefined);
    await gated?.close().catch(() => undefined);
    if (process.env.BENCH_KEEP_SCHEMA === '1') say(`kept schema ${gatedConfig.databaseSchema} (BENCH_KEEP_SCHEMA=1)`);
    else await cleanupConfig(gatedConfig).catch((err: unknown) => say(`cleanup failed: ${String(err)}`));
    if (openConfig.queue.backend === 'redis') await deletePrefix(openConfig.queue.prefix).catch((err: unknown) => say(`cleanup failed: ${String(err)}`));
    await rm(gatedConfig.dataDir, { recursive: true, force: true });
    await rm(openConfig.dataDir, { recursive: true, force: true });
  };
  const onSignal = (): void => {
    void cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  try {
    gated = await startService({ config: gatedConfig, roles: { api: true, workers: false } });
    open = await startService({ config: openConfig, roles: { api: true, workers: false } });
    raw = await startRaw(gatedConfig);
    noAudit = await startNoAudit(gated);

    const t0 = performance.now();
    await seed(gated);
    const seedSeconds = (performance.now() - t0) / 1000;
    await settleDatabase();
    say(`seeded ${PATIENTS} patients, ${PATIENTS * OBS_PER_PATIENT} observations, ${PATIENTS - Array.from({ length: PATIENTS }, (_, i) => groupOf(i)).filter((g) => g === 'none').length} consents in ${seedSeconds.toFixed(1)} s`);

    const gatedClient = await registerTestClient(gated.url!, ADMIN_TOKEN, { id: 'bench-gated', allowedScopes: ['system/Observation.rs'], allowedPurposes: ['TREAT'] });
    const openClient = await registerTestClient(open.url!, ADMIN_TOKEN, { id: 'bench-open', allowedScopes: ['system/*.rs'] });
    const gatedAuth = { authorization: `Bearer ${await gatedClient.token('system/Observation.rs', { purposeOfUse: 'TREAT' })}` };
    const openAuth = { authorization: `Bearer ${await openClient.token('system/*.rs')}` };

    const patients = (g: Group | undefined): number[] => Array.from({ length: PATIENTS }, (_, i) => i).filter((i) => g === undefined || groupOf(i) === g);
    const readPaths = (g: Group | undefined, prefix: string, seed: number): string[] =>
      shuffled(
        patients(g).flatMap((i) => Array.from({ length: OBS_PER_PATIENT }, (_, j) => `${prefix}/Observation/${observationId(i, j)}`)),
        seed,
      ).slice(0, 5000);
    const searchPaths = (g: Group | undefined, prefix: string, seed: number): string[] =>
      shuffled(patients(g), seed).map((i) => `${prefix}/Observation?patient=${patientId(i)}&_count=${SEARCH_COUNT}`);

    const targets: Record<Variant, Target> = {
      raw: { url: raw.url, prefix: '', headers: {}, paths: { read: readPaths('permit', '', 1), search: searchPaths('permit', '', 1) } },
      ungated: { url: open.url!, prefix: '/fhir/R4', headers: openAuth, paths: { read: readPaths('none', '/fhir/R4', 1), search: searchPaths('none', '/fhir/R4', 1) } },
      gated: { url: gated.url!, prefix: '/fhir/R4', headers: gatedAuth, paths: { read: readPaths('permit', '/fhir/R4', 1), search: searchPaths('permit', '/fhir/R4', 1) } },
      'gated-mixed': { url: gated.url!, prefix: '/fhir/R4', headers: gatedAuth, paths: { read: readPaths(undefined, '/fhir/R4', 2), search: [] } },
      'gated-noaudit': { url: noAudit.url, prefix: '/fhir/R4', headers: gatedAuth, paths: { read: readPaths('permit', '/fhir/R4', 1), search: searchPaths('permit', '/fhir/R4', 1) } },
    };

    // Sanity: each case answers what it should (and the gate really gates).
    for (const [variant, t] of Object.entries(targets) as Array<[Variant, Target]>) {
      if (variant === 'gated-mixed') continue;
      await expectStatus(`${t.url}${t.paths.read[0]!}`, t.headers, 200, `${variant} read`);
      await expectStatus(`${t.url}${t.paths.search[0]!}`, t.headers, 200, `${variant} search`);
    }
    const denied = patients('deny')[0]!;
    const none = patients('none')[0]!;
    await expectStatus(`${gated.url!}/fhir/R4/Observation/${observationId(denied, 0)}`, gatedAuth, 404, 'gated read of a denying patient');
    await expectStatus(`${gated.url!}/fhir/R4/Observation/${observationId(none, 0)}`, gatedAuth, 404, 'gated read of a patient without Consent (default deny)');
    await expectStatus(`${open.url!}/fhir/R4/Observation/${observationId(denied, 0)}`, openAuth, 404, 'ungated read of a denying patient');
    const searchBody = (await (await fetch(`${gated.url!}${targets.gated.paths.search[0]!}`, { headers: gatedAuth })).json()) as { entry?: unknown[] };
    if (searchBody.entry?.length !== SEARCH_COUNT) throw new Error(`sanity check failed: gated search returned ${searchBody.entry?.length ?? 0} entries`);

    const allCases: Array<{ endpoint: Endpoint; variant: Variant }> = [
      { endpoint: 'read', variant: 'raw' },
      { endpoint: 'read', variant: 'ungated' },
      { endpoint: 'read', variant: 'gated' },
      { endpoint: 'read', variant: 'gated-mixed' },
      { endpoint: 'read', variant: 'gated-noaudit' },
      { endpoint: 'search', variant: 'raw' },
      { endpoint: 'search', variant: 'ungated' },
      { endpoint: 'search', variant: 'gated' },
      { endpoint: 'search', variant: 'gated-noaudit' },
    ];
    const cases = allCases.filter((c) => ONLY.length === 0 || ONLY.includes(`${c.endpoint}:${c.variant}`));
    say(`warm-up (${WARMUP_SECONDS} s per case)`);
    for (const c of cases) {
      const t = targets[c.variant];
      await load(t.url, t.paths[c.endpoint], t.headers, 10, WARMUP_SECONDS);
    }
    const measured: Measured[] = [];
    for (const connections of CONNECTIONS) {
      for (const endpoint of ['read', 'search'] as const) {
        const group = cases.filter((c) => c.endpoint === endpoint);
        if (group.length === 0) continue;
        const samples = new Map<Variant, Sample[]>(group.map((c) => [c.variant, []]));
        // Slices alternate between the cases, each slice in a rotated order (no case always runs first).
        for (let k = 0; k < SLICES; k++) {
          for (let i = 0; i < group.length; i++) {
            const c = group[(i + k) % group.length]!;
            const t = targets[c.variant];
            samples.get(c.variant)!.push(await load(t.url, t.paths[endpoint], t.headers, connections, SLICE_SECONDS));
          }
        }
        for (const c of group) {
          const m = summarize(samples.get(c.variant)!);
          measured.push({ ...c, connections, median: m });
          say(
            `  ${endpoint.padEnd(6)} ${c.variant.padEnd(13)} c=${String(connections).padEnd(2)} ${fmt(m.rps).padStart(6)} req/s (slices ${fmt(m.sliceRps[0])}–${fmt(m.sliceRps[1])})  p50 ${ms(m.p50)} ms  p99 ${ms(m.p99)} ms  loop ${m.busyPerRequest.toFixed(3)} ms/req` +
              `${m.notFound ? `  404: ${fmt((100 * m.notFound) / m.responses)}%` : ''}${m.errors ? `  errors: ${m.errors}` : ''}  (load ${loadAverage()})`,
          );
        }
      }
    }
    // Audit records not yet AuditEvents when the load stopped (the materialiser's lag), then all of them.
    const backlog = await gated.database.store.auditOutbox.pending();
    const drainStart = performance.now();
    await gated.recorder.flush();
    await open.recorder.flush();
    const drainSeconds = (performance.now() - drainStart) / 1000;
    const counts = await gated.database.store.resources.countsByType();
    const audits = counts.find((c) => c.resourceType === 'AuditEvent')?.versions ?? 0;
    say(`audit outbox at the end of the load: ${fmt(backlog)} records, materialised in ${drainSeconds.toFixed(2)} s; ${fmt(audits)} AuditEvents stored`);
    const loadEnd = loadAverage();
    const section = report(measured, { loadStart, loadEnd, seedSeconds, audits, backlog, drainSeconds });
    return { section, measured };
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await cleanup();
  }
}

// ---------------------------------------------------------------------------------------------
// Report

const LABEL: Record<Variant, string> = {
  raw: 'raw SQL + express (lower bound)',
  ungated: 'ungated (default permit, no Consent, `system/*.rs`)',
  gated: 'gated (Consent permits TREAT, `system/Observation.rs`)',
  'gated-mixed': 'gated, mixed patients (≈50% 404)',
  'gated-noaudit': 'diagnostic: gated, audit recorder stubbed',
};

function report(measured: readonly Measured[], info: { loadStart: string; loadEnd: string; seedSeconds: number; audits: number; backlog: number; drainSeconds: number }): Section {
  const find = (endpoint: Endpoint, variant: Variant, connections: number): LoadResult | undefined =>
    measured.find((m) => m.endpoint === endpoint && m.variant === variant && m.connections === connections)?.median;
  const rows: string[] = [];
  for (const endpoint of ['read', 'search'] as const) {
    for (const connections of CONNECTIONS) {
      const ungated = find(endpoint, 'ungated', connections);
      const raw = find(endpoint, 'raw', connections);
      for (const variant of ['raw', 'ungated', 'gated', 'gated-mixed', 'gated-noaudit'] as const) {
        const r = find(endpoint, variant, connections);
        if (!r) continue;
        const vsUngated = variant.startsWith('gated') ? (ungated ? (ungated.rps / r.rps).toFixed(2) : 'n/a') : '';
        const vsRaw = variant !== 'raw' && raw ? (raw.rps / r.rps).toFixed(2) : '';
        const notes = [`slices ${fmt(r.sliceRps[0])}–${fmt(r.sliceRps[1])} req/s`, r.notFound ? `${fmt((100 * r.notFound) / r.responses)}% 404` : '', r.errors ? `${r.errors} errors` : ''].filter(Boolean).join(', ');
        rows.push(
          `| ${endpoint === 'read' ? 'read by id' : `search \`patient=\`, \`_count=${SEARCH_COUNT}\``} | ${LABEL[variant]} | ${connections} | ${fmt(r.rps)} | ${ms(r.p50)} | ${ms(r.p99)} | ${vsUngated} | ${vsRaw} | ${notes} |`,
        );
      }
    }
  }
  const g10 = find('read', 'gated', 10);
  const u10 = find('read', 'ungated', 10);
  const overhead = (endpoint: Endpoint, c: number): string => {
    const g = find(endpoint, 'gated', c);
    const u = find(endpoint, 'ungated', c);
    return g && u ? `${(100 * (u.rps / g.rps - 1)).toFixed(0)}%` : 'n/a';
  };
  const markdown = `Each case is ${SLICES} slices of ${SLICE_SECONDS} s of autocannon 8 (in one worker thread of the bench process for the whole run, keep-alive,
one request in flight per connection), after a ${WARMUP_SECONDS} s warm-up. The slices of one endpoint and connection count
alternate between its cases in rotated order, so that the background load falls on every case alike; req/s is over the
slices' total time and the notes give the slowest and fastest slice. fhir-anchor runs in-process
(api role, production mode, PostgreSQL pool of 10, Redis queues, LOG_LEVEL=silent) with ${fmt(PATIENTS)} patients,
${fmt(PATIENTS * OBS_PER_PATIENT)} Observations (~1 KB each) and Consents (half the patients permit TREAT, a quarter deny, a quarter
have none), seeded with \`putVersions\` in ${info.seedSeconds.toFixed(1)} s. Reads use up to 5,000 ids, searches the
patients: each connection cycles over its own window of 256 of them, starting at its own offset. Latencies are exact per-response times (ms); req/s counts every response.

- **ungated** is the real route on a second fhir-anchor sharing the schema, with \`CONSENT_DEFAULT_DECISION=permit\` and a
  \`system/*.rs\` client reading patients that have no Consent: token verification, the consent look-up (which finds none),
  the engine's default permit and the AuditEvent write all still run. It isolates the cost of deciding on a real Consent.
- **gated** is the default deny (opt-in) service, a \`system/Observation.rs\` client with purpose TREAT, reading patients whose
  Consent permits TREAT (with a nested deny for another organisation), so every answer is a 200 decided by a Consent.
- **raw** is a minimal express handler in the bench process on an identical pool running the store's own SQL (no auth, no
  consent, no audit): the lower bound of this stack on this machine.
- **diagnostic: audit stubbed** is the real gated router on the gated service's store and pool with a recorder that records
  nothing (not a configuration fhir-anchor offers): the difference to **gated** is the cost of the audit: the durable
  record each answer waits for, and the AuditEvent (with its commitment) the materialiser thread makes of it.
- "overhead ×" is ungated req/s ÷ gated req/s (1.00 = no overhead); "÷ raw" is raw req/s ÷ this case's req/s.

Every FHIR request (gated and ungated) wrote its durable audit record before answering, and every record became an AuditEvent
committed to the integrity log (on the service's materialiser thread): ${fmt(info.audits)} AuditEvents were stored in the run. When the
load stopped, ${fmt(info.backlog)} records were still waiting to become AuditEvents (materialised in ${info.drainSeconds.toFixed(2)} s).
Load average (1 / 5 / 15 min) ${info.loadStart} at the start, ${info.loadEnd} at the end, on ${machineLine()}.

| request | case | connections | req/s | p50 ms | p99 ms | overhead × (vs ungated) | ÷ raw | notes |
|---|---|--:|--:|--:|--:|--:|--:|---|
${rows.join('\n')}

Targets (reported, not asserted): consent overhead under 15% — measured ${overhead('read', 10)} / ${overhead('read', 50)} (read, 10 / 50
connections) and ${overhead('search', 10)} / ${overhead('search', 50)} (search); read p99 under 10 ms and at least 2,000 reads/s at 10
connections — gated read measured p99 ${g10 ? ms(g10.p99) : 'n/a'} ms at ${g10 ? fmt(g10.rps) : 'n/a'} reads/s (ungated ${u10 ? fmt(u10.rps) : 'n/a'}).
For scale, a mainstream open-source FHIR server on the same kind of machine serves about 670 reads/s with p99 32 ms.`;
  const summary = g10 ? `Gated read by id at 10 connections: ${fmt(g10.rps)} reads/s, p99 ${ms(g10.p99)} ms; consent overhead ${overhead('read', 10)} vs the ungated route.` : undefined;
  return { title: 'Consent-gated FHIR reads', markdown, ...(summary ? { summary } : {}) };
}

async function main(): Promise<void> {
  say(`bench:read — ${SECONDS} s per case${QUICK ? ' (BENCH_QUICK)' : ''}, ${os.cpus().length} CPUs, load ${loadAverage()}`);
  const { section } = await runRead();
  say(`\n## ${section.title}\n\n${section.markdown}`);
  // For `npm run bench`, which runs this benchmark in its own process and collects the section.
  if (process.env.BENCH_SECTION_OUT) writeFileSync(process.env.BENCH_SECTION_OUT, JSON.stringify(section));
}

if (isMain(import.meta.url)) {
  main().then(
    () => process.exit(0),
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
}
