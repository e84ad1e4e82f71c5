/**
 * `npm run bench:research`: research access throughput and export memory.
 *
 * 1. De-identification (safe-harbor) on one core: resources/s over synthetic Patients and Observations.
 * 2. Bulk `$export` throughput and peak RSS at BENCH_SIZES resources (default 100000,300000; BENCH_QUICK=1:
 *    20000): synthetic Observations are bulk-inserted by SQL into a fresh schema (1,000 Patients, half
 *    with a research Consent). Each export then runs the way production runs it: a fresh service process
 *    (`node dist/cli.js serve`, queues on Redis) per export, a SMART client registered through
 *    /admin/clients, the `$export` kick-off over HTTP, the job on the service's `export` worker. Once as
 *    a treatment export (patient-privacy consent, no de-identification) and once as a research export
 *    (research consent + safe-harbor). RSS comes from /proc/{pid}/status (Linux): the service's `VmRSS`
 *    once start-up has settled ("idle", and `VmHWM` then: the start-up peak), then the high-water mark
 *    is reset (`clear_refs` 5) at the kick-off, so the `VmHWM` read when the export has completed is
 *    the true peak during the export.
 *
 * Environment: DATABASE_URL and REDIS_URL (defaults: the local test servers), BENCH_SIZES,
 * BENCH_DEID_N (default 20000), BENCH_EXPORT_MODES (default `treatment,research`),
 * BENCH_EXPORT_RUNTIME = `dist` (default: the compiled build, run `npm run build` first) or `tsx`
 * (`node --import tsx src/cli.ts serve`), BENCH_SERVICE_CLI (default `dist/cli.js`: another build to
 * compare), BENCH_SERVICE_NODE_OPTIONS (NODE_OPTIONS of the service, e.g. `--max-old-space-size=512`),
 * BENCH_SERVICE_OUTPUT=1 (the service's output on stderr).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import type { Resource } from '@medplum/fhirtypes';
import { createLogger } from '../src/platform/logger.js';
import { systemClock } from '../src/platform/clock.js';
import { createDeidentifier } from '../src/research/index.js';
import { openExportStore } from '../src/store/export-store.js';
import { openDatabase } from '../src/store/index.js';
import { registerTestClient } from '../test/helpers/smart-client.js';
import { ADMIN_TOKEN, DATABASE_URL, LOG_KEY, LOG_ORIGIN, QUICK, REDIS_URL, SMART_KEY, deletePrefix, ns } from './lib.js';

const SIZES = (process.env.BENCH_SIZES || (QUICK ? '20000' : '100000,300000')).split(',').map(Number);
const DEID_N = Number(process.env.BENCH_DEID_N || 20000);
const RUNTIME = process.env.BENCH_EXPORT_RUNTIME === 'tsx' ? 'tsx' : 'dist';
const SERVICE_CLI = process.env.BENCH_SERVICE_CLI || 'dist/cli.js';
/** BENCH_SERVICE_OUTPUT=1: the service's stdout and stderr go to this process's stderr (diagnostics). */
const SERVICE_OUTPUT = process.env.BENCH_SERVICE_OUTPUT === '1';
const MODES = (process.env.BENCH_EXPORT_MODES || 'treatment,research').split(',').filter((m): m is 'treatment' | 'research' => m === 'treatment' || m === 'research');
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

/** RSS figures of a process from /proc (Linux): current and high-water mark, in bytes. */
async function procMemory(pid: number): Promise<{ rss: number; hwm: number }> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024;
  return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
}

/** Starts the service the way production does and resolves once it listens (its log says so). */
async function startServiceProcess(env: Record<string, string>): Promise<{ child: ChildProcess; url: string }> {
  const args = RUNTIME === 'tsx' ? ['--import', 'tsx', 'src/cli.ts', 'serve'] : [SERVICE_CLI, 'serve'];
  const nodeOptions = process.env.BENCH_SERVICE_NODE_OPTIONS;
  const child = spawn(process.execPath, args, { env: { PATH: process.env.PATH ?? '', ...(nodeOptions ? { NODE_OPTIONS: nodeOptions } : {}), ...(process.env.VALIDATION_THREADS !== undefined ? { VALIDATION_THREADS: process.env.VALIDATION_THREADS } : {}), ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000);
    if (SERVICE_OUTPUT) process.stderr.write(d);
  });
  const url = await new Promise<string>((resolve, reject) => {
    let buf = '';
    const onData = (d: Buffer): void => {
      if (SERVICE_OUTPUT) process.stderr.write(d);
      buf += d.toString();
      for (;;) {
        const nl = buf.indexOf('\n');
        if (nl < 0) break;
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        try {
          const entry = JSON.parse(line) as { msg?: string; url?: string };
          if (entry.msg === 'HTTP server listening' && entry.url) {
            child.stdout!.off('data', onData);
            // Keep draining: later log lines must not block the service.
            if (SERVICE_OUTPUT) child.stdout!.on('data', (x: Buffer) => process.stderr.write(x));
            else child.stdout!.resume();
            resolve(entry.url);
          }
        } catch {
          // not a log line
        }
      }
    };
    child.stdout!.on('data', onData);
    child.once('exit', (code) => reject(new Error(`service exited (${code}) before listening: ${stderr}`)));
  });
  return { child, url };
}

async function stopServiceProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  await exited;
}

async function exportBench(size: number): Promise<void> {
  const schema = ns();
  const prefix = ns();
  const db = await openDatabase({ config: { database: { kind: 'external', url: DATABASE_URL }, databaseSchema: schema, databasePoolMax: 4 }, logger, clock: systemClock });
  const exports = openExportStore({ connectionString: DATABASE_URL, schema, clock: systemClock });
  const dataDir = path.join(os.tmpdir(), `fhir-anchor-bench-${randomUUID()}`);
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

    const serviceEnv: Record<string, string> = {
      NODE_ENV: 'production',
      DATABASE_URL,
      DATABASE_SCHEMA: schema,
      REDIS_URL,
      QUEUE_PREFIX: prefix,
      ADMIN_TOKEN,
      LOG_ORIGIN,
      LOG_SIGNER_KEY: LOG_KEY.signerKey,
      SMART_TOKEN_KEY: SMART_KEY,
      HOST: '127.0.0.1',
      PORT: '0',
      LOG_LEVEL: 'info',
      DATA_DIR: dataDir,
      AUDIT_INTERVAL_MS: '0',
      RECONCILE_INTERVAL_MS: '0',
      SUBSCRIPTION_CHECK_INTERVAL_MS: '0',
      CONSENT_DEFAULT_DECISION: 'permit',
      RESEARCH_CONSENT_DEFAULT: 'deny',
      DEID_CRYPTO_HASH_KEY: KEYS.cryptoHashKey,
      DEID_DATE_SHIFT_KEY: KEYS.dateShiftKey,
    };
    for (const mode of MODES) {
      const { child, url } = await startServiceProcess(serviceEnv);
      try {
        const purpose = mode === 'research' ? 'HRESCH' : 'TREAT';
        const app = await registerTestClient(url, ADMIN_TOKEN, { id: `bench-${mode}`, allowedScopes: ['system/Observation.rs'], allowedPurposes: [purpose] });
        const token = await app.token('system/Observation.rs', { purposeOfUse: purpose });
        // Start-up settles first (the worker role loads the validator's definitions right after listening).
        let idle = await procMemory(child.pid!);
        for (let i = 0; i < 40; i++) {
          await new Promise((r) => setTimeout(r, 250));
          const m = await procMemory(child.pid!);
          const settled = Math.abs(m.rss - idle.rss) < 2 * 1048576;
          idle = m;
          if (settled && i >= 4) break;
        }
        // The export's own peak: reset the process's high-water mark to its current RSS (Linux clear_refs 5).
        const hwmReset = await writeFile(`/proc/${child.pid!}/clear_refs`, '5').then(
          () => true,
          () => false,
        );
        let peakSampled = idle.rss;
        const sampler = setInterval(() => {
          procMemory(child.pid!).then(
            (m) => void (peakSampled = Math.max(peakSampled, m.rss)),
            () => undefined,
          );
        }, 50);
        const t = process.hrtime.bigint();
        const kick = await fetch(`${url}/fhir/R4/$export?_type=Observation${mode === 'research' ? '&_deidentify=safe-harbor' : ''}`, {
          headers: { authorization: `Bearer ${token}`, prefer: 'respond-async', accept: 'application/fhir+json' },
        });
        if (kick.status !== 202) throw new Error(`kick-off ${kick.status} ${await kick.text()}`);
        const id = kick.headers.get('content-location')!.split('/').pop()!;
        // Polled in the database (the access token would expire during a long export).
        let rec = await exports.get(id);
        while (rec && (rec.state === 'accepted' || rec.state === 'in-progress')) {
          if (child.exitCode !== null) throw new Error('the service exited during the export');
          await new Promise((r) => setTimeout(r, 250));
          rec = await exports.get(id);
        }
        const s = Number(process.hrtime.bigint() - t) / 1e9;
        clearInterval(sampler);
        const done = await procMemory(child.pid!);
        say(
          `  ${mode.padEnd(9)} export of ${size}: ${rec?.state}, ${rec?.exported} written in ${s.toFixed(1)} s = ${(size / s).toFixed(0)} resources/s examined; service RSS idle ${mb(idle.rss)} (start-up peak ${mb(idle.hwm)}), export peak ${mb(hwmReset ? done.hwm : Math.max(peakSampled, done.rss))} (${hwmReset ? 'VmHWM since the kick-off' : 'sampled every 50 ms'}; sampled: ${mb(Math.max(peakSampled, done.rss))}), after ${mb(done.rss)}`,
        );
      } finally {
        await stopServiceProcess(child);
      }
    }
  } finally {
    await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => undefined);
    await client.end();
    await exports.close();
    await db.close();
    await deletePrefix(prefix);
    await rm(dataDir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  say(`research bench — ${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? 'unknown'}), node ${process.version}, load ${os.loadavg()[0]!.toFixed(2)}`);
  if (RUNTIME === 'dist' && !existsSync(SERVICE_CLI)) throw new Error(`${SERVICE_CLI} is missing: run \`npm run build\` first (or BENCH_EXPORT_RUNTIME=tsx)`);
  deidBench();
  for (const n of SIZES) {
    const how = RUNTIME === 'tsx' ? 'node --import tsx src/cli.ts serve' : `node ${SERVICE_CLI} serve`;
    const opts = process.env.BENCH_SERVICE_NODE_OPTIONS ? `, NODE_OPTIONS=${process.env.BENCH_SERVICE_NODE_OPTIONS}` : '';
    say(`export at ${n} resources (service: ${how}${opts}, one fresh process per export):`);
    await exportBench(n);
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
