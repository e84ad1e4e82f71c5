/**
 * `npm run bench:research`: research access throughput.
 *
 * 1. De-identification (safe-harbor) on one core: resources/s over synthetic Patients and Observations.
 * 2. Bulk `$export` throughput and peak RSS at BENCH_SIZES resources (default 100000,300000): synthetic
 *    Observations are bulk-inserted by SQL into a fresh schema (1,000 Patients, half with a research
 *    Consent), then one export runs in this process (the job runner, no HTTP) as a treatment export
 *    (patient-privacy consent, no de-identification) and as a research export (research consent +
 *    safe-harbor). Peak RSS is sampled every 50 ms during the export (and `maxRSS` of the process).
 *
 * Run with `node --expose-gc` (the npm script does) so the heap is collected before each measurement.
 *
 * Environment: DATABASE_URL (default the local test server), BENCH_SIZES, BENCH_DEID_N (default 20000).
 */
import { randomUUID } from 'node:crypto';
import { rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import type { Resource } from '@medplum/fhirtypes';
import { parseScopes } from '../src/consent/index.js';
import type { AccessContext } from '../src/fhir-api/access.js';
import { createLogger } from '../src/platform/logger.js';
import { systemClock } from '../src/platform/clock.js';
import { createDeidentifier } from '../src/research/index.js';
import { createExportRunner, persistAccess, type ExportParams } from '../src/research/export/index.js';
import { openExportStore } from '../src/store/export-store.js';
import { openDatabase } from '../src/store/index.js';

const DATABASE_URL = process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/test';
const SIZES = (process.env.BENCH_SIZES || '100000,300000').split(',').map(Number);
const DEID_N = Number(process.env.BENCH_DEID_N || 20000);
const KEYS = { cryptoHashKey: 'bench-crypto-hash-key-0123456789', dateShiftKey: 'bench-date-shift' };
const PATIENTS = 1000;
const logger = createLogger('silent');
const say = (s: string): void => void process.stdout.write(`${s}\n`);
const mb = (bytes: number): string => `${(bytes / 1048576).toFixed(0)} MB`;

function observation(i: number): Resource {
  return {
    resourceType: 'Observation',
    id: `o${i}`,
    status: 'final',
    category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'laboratory' }] }],
    code: { coding: [{ system: 'http://loinc.org', code: '2339-0', display: 'Glucose' }] },
    subject: { reference: `Patient/p${i % PATIENTS}` },
    effectiveDateTime: '2024-05-01T10:00:00Z',
    issued: '2024-05-01T11:00:00Z',
    valueQuantity: { value: 5 + (i % 7) / 10, unit: 'mmol/L', system: 'http://unitsofmeasure.org', code: 'mmol/L' },
  } as Resource;
}
function patient(i: number): Resource {
  return {
    resourceType: 'Patient',
    id: `p${i}`,
    identifier: [{ system: 'urn:mrn', value: `MRN${i}` }],
    name: [{ family: `Family${i}`, given: ['Given'] }],
    gender: i % 2 ? 'female' : 'male',
    birthDate: '1970-04-05',
    address: [{ line: ['1 Main St'], city: 'Town', postalCode: '02139' }],
  } as Resource;
}

function deidBench(): void {
  const d = createDeidentifier({ keys: KEYS }, { policy: 'safe-harbor' });
  const inputs = Array.from({ length: 1000 }, (_, i) => (i % 10 === 0 ? patient(i) : observation(i)));
  for (let i = 0; i < 2000; i++) d.deidentify(inputs[i % inputs.length]!); // warm-up
  const t = process.hrtime.bigint();
  let ok = 0;
  for (let i = 0; i < DEID_N; i++) if (d.deidentify(inputs[i % inputs.length]!).kind === 'deidentified') ok++;
  const s = Number(process.hrtime.bigint() - t) / 1e9;
  say(`de-identification (safe-harbor, 10% Patients / 90% Observations, one core): ${(DEID_N / s).toFixed(0)} resources/s (${ok}/${DEID_N} released)`);
}

async function exportBench(size: number): Promise<void> {
  const schema = `tb_${randomUUID().replace(/-/g, '').slice(0, 16)}`;
  const db = await openDatabase({ config: { database: { kind: 'external', url: DATABASE_URL }, databaseSchema: schema, databasePoolMax: 4 }, logger, clock: systemClock });
  const exports = openExportStore({ connectionString: DATABASE_URL, schema, clock: systemClock });
  const dir = path.join(os.tmpdir(), `fhir-anchor-bench-${randomUUID()}`);
  const client = new pg.Client({ connectionString: DATABASE_URL });
  await client.connect();
  try {
    // Patients and their research Consents through the store (indexed like real data).
    const puts = [];
    for (let i = 0; i < PATIENTS; i++) {
      puts.push({ resourceType: 'Patient', id: `p${i}`, resource: patient(i), sourceId: 'bench' });
      if (i % 2 === 0) {
        puts.push({
          resourceType: 'Consent',
          id: `c${i}`,
          sourceId: 'bench',
          resource: {
            resourceType: 'Consent',
            id: `c${i}`,
            status: 'active',
            scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'research' }] },
            category: [{ coding: [{ system: 'http://loinc.org', code: '57016-8' }] }],
            patient: { reference: `Patient/p${i}` },
            provision: { type: 'permit', purpose: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActReason', code: 'HRESCH' }] },
          } as Resource,
        });
      }
    }
    for (let i = 0; i < puts.length; i += 500) await db.store.resources.putVersions(puts.slice(i, i + 500));
    // Observations by bulk SQL (current table only: a system-level export scans `resource` by type).
    const t0 = Date.now();
    const sample = JSON.stringify(observation(0));
    await client.query(`SET search_path TO "${schema}"`);
    for (let from = 0; from < size; from += 100_000) {
      const to = Math.min(size, from + 100_000) - 1;
      await client.query(
        `INSERT INTO resource (resource_type, id, version_id, last_version, last_updated, deleted, content)
         SELECT 'Observation', 'o' || g, 1, 1, now(), false,
                jsonb_set(jsonb_set(jsonb_set($1::jsonb, '{id}', to_jsonb('o' || g)), '{subject,reference}', to_jsonb('Patient/p' || (g % ${PATIENTS}))),
                          '{meta}', jsonb_build_object('versionId', '1', 'lastUpdated', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')))
           FROM generate_series($2::int, $3::int) AS g`,
        [sample, from, to],
      );
    }
    await client.query('ANALYZE resource');
    say(`  ${size} Observations inserted in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

    for (const mode of ['treatment', 'research'] as const) {
      const access: AccessContext = {
        clientId: 'bench',
        issuer: 'https://auth.bench',
        scopes: parseScopes('system/Observation.rs').scopes,
        purposeOfUse: mode === 'research' ? ['HRESCH'] : ['TREAT'],
        actor: { references: [], identifiers: [] },
        mayBreakGlass: false,
      };
      const params: ExportParams = { types: ['Observation'], typeFilters: {}, research: mode === 'research', ...(mode === 'research' ? { deidPolicy: 'safe-harbor' } : {}) };
      const id = randomUUID();
      await exports.create({ id, issuer: access.issuer, clientId: access.clientId, level: 'system', requestUrl: 'bench', params, access: persistAccess(access), transactionTime: new Date() });
      const runner = createExportRunner({
        store: db.store,
        exports,
        queues: { enqueue: () => Promise.resolve(''), enqueueBulk: () => Promise.resolve() },
        recorder: { record: () => Promise.resolve() },
        consentDefault: 'permit',
        researchConsentDefault: 'deny',
        deidKeys: KEYS,
        clock: systemClock,
        logger,
        baseUrl: 'http://bench/fhir/R4',
        exportDir: dir,
        authenticate: (_req, _res, next) => next(),
      });
      global.gc?.();
      const before = process.memoryUsage().rss;
      let peak = before;
      const sampler = setInterval(() => {
        peak = Math.max(peak, process.memoryUsage().rss);
      }, 50);
      const t = process.hrtime.bigint();
      await runner.run(id);
      const s = Number(process.hrtime.bigint() - t) / 1e9;
      clearInterval(sampler);
      peak = Math.max(peak, process.memoryUsage().rss);
      const rec = await exports.get(id);
      global.gc?.();
      const heapAfter = process.memoryUsage().heapUsed;
      say(
        `  ${mode.padEnd(9)} export of ${size}: ${rec?.state}, ${rec?.exported} written in ${s.toFixed(1)} s = ${(size / s).toFixed(0)} resources/s examined; RSS before ${mb(before)}, peak ${mb(peak)}; process maxRSS ${mb(process.resourceUsage().maxRSS * 1024)}${global.gc ? `; heap after GC ${mb(heapAfter)}` : ''}`,
      );
    }
  } finally {
    await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => undefined);
    await client.end();
    await exports.close();
    await db.close();
    await rm(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  say(`research bench — ${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? 'unknown'}), node ${process.version}, load ${os.loadavg()[0]!.toFixed(2)}`);
  deidBench();
  for (const n of SIZES) {
    say(`export at ${n} resources:`);
    await exportBench(n);
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
