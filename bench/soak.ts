/**
 * `npm run soak`: a long run (30 minutes by default, SOAK_MINUTES to change) of sustained ingest,
 * reads and integrity commits in one process, sampling memory every SOAK_SAMPLE_S seconds (default 30).
 * It reports memory over time and fails (exit 1) when the heap after warm-up grows by more than
 * SOAK_HEAP_BOUND_MB (default 64 MB) between the first and the last third of the run: steady work
 * must not leak.
 *
 * Runs against the local PostgreSQL and Redis (DATABASE_URL / REDIS_URL), in its own schema and queue
 * prefix, removed at the end. Offered load: SOAK_RATE notifications per second (default 50), each a
 * new version of one of 500 rotating Observations (so history grows like a real feed).
 */
import { createHash, randomUUID, generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { Redis } from 'ioredis';
import pg from 'pg';
import { loadConfig } from '../src/config/index.js';
import { generateEd25519Key } from '../src/integrity/note.js';
import { createLogger } from '../src/platform/logger.js';
import { startService } from '../src/runtime.js';

const DATABASE_URL = process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/test';
const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const MINUTES = Number(process.env.SOAK_MINUTES || 30);
const SAMPLE_S = Number(process.env.SOAK_SAMPLE_S || 30);
const RATE = Number(process.env.SOAK_RATE || 50);
const BOUND_MB = Number(process.env.SOAK_HEAP_BOUND_MB || 64);

const ns = `soak_${randomUUID().replace(/-/g, '').slice(0, 12)}`;
const mb = (b: number): number => Math.round((b / 2 ** 20) * 10) / 10;

async function main(): Promise<void> {
  const key = generateEd25519Key('fhir-anchor.soak/log');
  const smartKey = JSON.stringify({ ...generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' }), kid: 'soak' });
  const admin = createHash('sha256').update(ns).digest('hex');
  const config = loadConfig({
    DATABASE_URL,
    REDIS_URL,
    DATABASE_SCHEMA: ns,
    QUEUE_PREFIX: ns,
    ADMIN_TOKEN: admin,
    LOG_ORIGIN: 'fhir-anchor.soak/log',
    LOG_SIGNER_KEY: key.signerKey,
    SMART_TOKEN_KEY: smartKey,
    PORT: '0',
    LOG_LEVEL: 'warn',
    AUDIT_INTERVAL_MS: '60000',
  });
  const service = await startService({ config, roles: { api: true, workers: true }, logger: createLogger('warn') });
  const base = service.url!;
  const hookToken = 'soak-hook-token-0123456789';
  await fetch(`${base}/admin/sources`, {
    method: 'POST',
    headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' },
    body: JSON.stringify({ id: 'soak', name: 'Soak', baseUrl: 'https://soak.example/fhir', hookAuth: { bearerToken: hookToken } }),
  });

  const samples: Array<{ t: number; rss: number; heap: number; sent: number; errors: number }> = [];
  let sent = 0;
  let errors = 0;
  let version = 0;
  const started = Date.now();
  const end = started + MINUTES * 60_000;
  const sample = (): void => {
    global.gc?.();
    const m = process.memoryUsage();
    samples.push({ t: Math.round((Date.now() - started) / 1000), rss: mb(m.rss), heap: mb(m.heapUsed), sent, errors });
    process.stdout.write(`t=${samples.at(-1)!.t}s rss=${samples.at(-1)!.rss}MB heap=${samples.at(-1)!.heap}MB sent=${sent} errors=${errors}\n`);
  };
  sample();
  const timer = setInterval(sample, SAMPLE_S * 1000);
  // Open-loop offered load: one notification every 1000/RATE ms, never waiting for the previous.
  const interval = 1000 / RATE;
  let next = Date.now();
  const inflight = new Set<Promise<void>>();
  while (Date.now() < end) {
    next += interval;
    version += 1;
    const id = `obs-${version % 500}`;
    const body = JSON.stringify({
      resourceType: 'Observation',
      id,
      meta: { versionId: String(version), lastUpdated: new Date().toISOString() },
      status: 'final',
      code: { coding: [{ system: 'http://loinc.org', code: '8867-4', display: 'Heart rate' }] },
      subject: { reference: `Patient/p-${version % 50}` },
      effectiveDateTime: new Date().toISOString(),
      valueQuantity: { value: 50 + (version % 60), unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
    });
    const p = fetch(`${base}/hooks/soak`, { method: 'POST', headers: { authorization: `Bearer ${hookToken}`, 'content-type': 'application/fhir+json' }, body })
      .then(async (r) => {
        await r.arrayBuffer();
        if (r.status >= 400) errors += 1;
        sent += 1;
      })
      .catch(() => {
        errors += 1;
      });
    inflight.add(p);
    void p.finally(() => inflight.delete(p));
    const wait = next - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
  await Promise.all(inflight);
  clearInterval(timer);
  sample();
  await service.close();

  // Cleanup: our schema and queue prefix only.
  const client = new pg.Client({ connectionString: DATABASE_URL });
  await client.connect();
  await client.query(`DROP SCHEMA IF EXISTS "${ns}" CASCADE`);
  await client.end();
  const redis = new Redis(REDIS_URL);
  let cursor = '0';
  do {
    const [n, keys] = await redis.scan(cursor, 'MATCH', `${ns}:*`, 'COUNT', 1000);
    cursor = n;
    if (keys.length) await redis.del(...keys);
  } while (cursor !== '0');
  redis.disconnect();

  const third = Math.max(1, Math.floor(samples.length / 3));
  const avg = (xs: typeof samples): number => xs.reduce((a, s) => a + s.heap, 0) / Math.max(1, xs.length);
  const early = avg(samples.slice(1, 1 + third));
  const late = avg(samples.slice(-third));
  const growth = Math.round((late - early) * 10) / 10;
  const ok = growth <= BOUND_MB && errors === 0;
  const md = [
    `## Soak (${MINUTES} min, ${RATE} notifications/s offered, ${new Date().toISOString().slice(0, 10)})`,
    '',
    '| t (s) | RSS (MB) | heap used (MB) | sent | errors |',
    '|---:|---:|---:|---:|---:|',
    ...samples.map((s) => `| ${s.t} | ${s.rss} | ${s.heap} | ${s.sent} | ${s.errors} |`),
    '',
    `Heap growth between the first and last third of the run: ${growth} MB (bound ${BOUND_MB} MB): ${ok ? 'within bound' : 'EXCEEDED'}.`,
    '',
  ].join('\n');
  writeFileSync(new URL('../docs/soak.md', import.meta.url), `# Soak test\n\nGenerated by \`npm run soak\`.\n\n${md}`);
  process.stdout.write(`${md}\nwrote docs/soak.md\n`);
  process.exit(ok ? 0 : 1);
}

main().catch((err: unknown) => {
  process.stderr.write(`soak failed: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
