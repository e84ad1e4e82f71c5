/**
 * The whole pipeline through the composition root: a notification in at the hook → stored version →
 * integrity job → signed checkpoint → `$verify` → the offline verifier CLI accepts the receipt; then a
 * row tampered directly in PostgreSQL is caught by the audit and /readyz reports it.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import type { Config } from '../src/config/index.js';
import { anchorId } from '../src/normalize/index.js';
import { startService, type RunningService } from '../src/runtime.js';
import { runCli } from './helpers/cli.js';
import { TEST_DATABASE_URL, cleanupConfig, json, silentLogger, testConfig } from './helpers/env.js';
import { registerTestClient } from './helpers/smart-client.js';

const ADMIN = 'test-admin-token-0123456789abcdef0123456789';
const BEARER = 'pipeline-hook-token-0123456789';

describe('pipeline: hook → store → integrity log → $verify → offline verifier → tamper audit', () => {
  let config: Config;
  let service: RunningService;
  let base: string;
  let dir: string;

  beforeAll(async () => {
    // Opt-out jurisdiction for this test: without a Consent, treatment reads are permitted.
    config = testConfig({ CONSENT_DEFAULT_DECISION: 'permit' }, 'postgres');
    service = await startService({ config, roles: { api: true, workers: true }, logger: silentLogger });
    base = service.url!;
    dir = await mkdtemp(path.join(os.tmpdir(), 'fhir-anchor-pipeline-'));
    const res = await fetch(`${base}/admin/sources`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ id: 'lab', name: 'Lab system', baseUrl: 'https://lab.example/fhir', hookAuth: { bearerToken: BEARER } }),
    });
    expect(res.status).toBe(201);
  });

  afterAll(async () => {
    await service?.close();
    await cleanupConfig(config);
    await rm(dir, { recursive: true, force: true });
  });

  it('proves a lab result, offline, and catches tampering', async () => {
    const observation = {
      resourceType: 'Observation',
      id: 'hba1c-1',
      meta: { versionId: '1', lastUpdated: '2026-06-01T10:00:00Z' },
      status: 'final',
      category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'laboratory' }] }],
      code: { coding: [{ system: 'http://loinc.org', code: '4548-4', display: 'Hemoglobin A1c/Hemoglobin.total in Blood' }] },
      subject: { reference: 'Patient/p-1' },
      effectiveDateTime: '2026-06-01T09:00:00Z',
      valueQuantity: { value: 6.1, unit: '%', system: 'http://unitsofmeasure.org', code: '%' },
    };
    const hook = await fetch(`${base}/hooks/lab`, { method: 'POST', headers: { authorization: `Bearer ${BEARER}`, 'content-type': 'application/fhir+json' }, body: JSON.stringify(observation) });
    expect(hook.status).toBe(202);
    const id = anchorId('lab', 'Observation', 'hba1c-1');
    // $verify discloses the salt: it needs a token that may read the record.
    expect((await fetch(`${base}/fhir/R4/Observation/${id}/$verify`)).status).toBe(401);
    const app = await registerTestClient(base, ADMIN, { id: 'verifier-app', allowedScopes: ['system/Observation.rs'], allowedPurposes: ['TREAT'] });
    const token = await app.token('system/Observation.rs', { purposeOfUse: 'TREAT' });
    const auth = { authorization: `Bearer ${token}` };

    // $verify answers pending (202 + Retry-After) until a checkpoint covers the version, then 200.
    let verify: Record<string, unknown> | undefined;
    const deadline = Date.now() + 30_000;
    while (!verify) {
      const res = await fetch(`${base}/fhir/R4/Observation/${id}/$verify`, { headers: auth });
      if (res.status === 200) verify = await json(res);
      else {
        expect([202, 404]).toContain(res.status);
        if (Date.now() > deadline) throw new Error(`still ${res.status}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    const param = (name: string) => (verify!.parameter as Array<Record<string, unknown>>).find((p) => p.name === name);
    expect(param('status')?.valueCode).toBe('included');
    expect(param('valid')?.valueBoolean).toBe(true);
    expect(param('proofValid')?.valueBoolean).toBe(true);
    expect(String(param('commitment')?.valueString)).toMatch(/^[0-9a-f]{64}$/);

    // The offline verifier (no database, no network) accepts exactly this version.
    // The version exactly as the FHIR API serves it.
    const served = await fetch(`${base}/fhir/R4/Observation/${id}/_history/1`, { headers: auth });
    expect(served.status).toBe(200);
    const stored = { resource: await json(served) };
    await writeFile(path.join(dir, 'version.json'), JSON.stringify(stored.resource));
    await writeFile(path.join(dir, 'receipt.txt'), String(param('receipt')?.valueString));
    const vkey = await (await fetch(`${base}/ledger/key`)).text();
    expect((await (await fetch(`${base}/ledger/checkpoint`)).text()).split('\n')[0]).toBe(config.integrity.origin);
    const args = ['verify', '--resource', path.join(dir, 'version.json'), '--salt', String(param('salt')?.valueBase64Binary), '--receipt', path.join(dir, 'receipt.txt'), '--key', vkey.trim()];
    const ok = await runCli(args);
    expect(ok.code).toBe(0);
    // A changed value is refused.
    const altered = { ...(stored.resource as Record<string, unknown>), valueQuantity: { value: 5.1, unit: '%', system: 'http://unitsofmeasure.org', code: '%' } };
    await writeFile(path.join(dir, 'altered.json'), JSON.stringify(altered));
    const bad = await runCli(args.map((a) => (a.endsWith('version.json') ? path.join(dir, 'altered.json') : a)));
    expect(bad.code).toBe(1);

    // Tamper with the stored row directly in PostgreSQL: the audit names the version and readiness degrades.
    const client = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await client.connect();
    try {
      await client.query(
        `UPDATE "${config.databaseSchema}".resource_history SET content = jsonb_set(content, '{valueQuantity,value}', '5.1') WHERE resource_type = 'Observation' AND id = $1`,
        [id],
      );
    } finally {
      await client.end();
    }
    const audit = await service.integrity.runAudit();
    expect(JSON.stringify(audit)).toContain(id);
    const ready = await fetch(`${base}/readyz`);
    expect(ready.status).toBe(503);
    const oo = await json(ready);
    expect(oo.issue.filter((i: { severity: string }) => i.severity === 'error').map((i: { expression: string[] }) => i.expression[0])).toContain('integrity-audit');
    // And $verify now reports the stored body no longer matches its commitment.
    const after = await json(await fetch(`${base}/fhir/R4/Observation/${id}/_history/1/$verify`, { headers: auth }));
    expect(after.parameter.find((p: { name: string }) => p.name === 'valid').valueBoolean).toBe(false);
  }, 90_000);
});
