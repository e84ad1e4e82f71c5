/**
 * `$verify` on an export's manifest under an opt-in (default-deny) consent configuration, through the
 * composition root: a researcher's research export completes, its manifest `Basic/export-{id}` is
 * committed to the integrity log, and the same researcher's token (with a `Basic` read scope) gets the
 * successful verification. The manifest names no patient and holds no PHI, so it is governed by SMART
 * scopes alone — but only that kind of `Basic`: another `Basic` naming no patient stays denied by the
 * default, and a token without a `Basic` scope is refused.
 */
import { randomUUID } from 'node:crypto';
import { rm } from 'node:fs/promises';
import type { Resource } from '@medplum/fhirtypes';
import type { Config } from '../../src/config/index.js';
import { MANIFEST_CODE } from '../../src/research/export/index.js';
import { startService, type RunningService } from '../../src/runtime.js';
import { cleanupConfig, json, silentLogger, testConfig } from '../helpers/env.js';
import { registerTestClient, type TestClient } from '../helpers/smart-client.js';

const ADMIN = 'test-admin-token-0123456789abcdef0123456789';

type Param = { name: string; valueCode?: string; valueBoolean?: boolean; valueString?: string; valueReference?: { reference?: string } };

async function poll<T>(what: string, attempt: () => Promise<T | undefined>, ms = 45_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const out = await attempt();
    if (out !== undefined) return out;
    if (Date.now() > deadline) throw new Error(`${what}: timed out`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe('$verify on an export manifest under default deny (CONSENT_DEFAULT_DECISION=deny)', () => {
  let config: Config;
  let service: RunningService;
  let base: string;
  let researcher: TestClient;

  beforeAll(async () => {
    config = testConfig({ CONSENT_DEFAULT_DECISION: 'deny', RESEARCH_CONSENT_DEFAULT: 'deny' });
    service = await startService({ config, roles: { api: true, workers: true }, logger: silentLogger });
    base = service.url!;
    const basicWithoutPatient = (id: string, code: { system: string; code: string }): Resource =>
      ({ resourceType: 'Basic', id, code: { coding: [code] }, created: '2026-01-01', extension: [{ url: 'urn:test#note', valueString: 'no patient named' }] }) as Resource;
    await service.database.store.resources.putVersions([
      { resourceType: 'Patient', id: 'p1', sourceId: 'test', resource: { resourceType: 'Patient', id: 'p1', name: [{ family: 'Doe' }], birthDate: '1970-04-05' } as Resource },
      {
        resourceType: 'Consent',
        id: 'c1',
        sourceId: 'test',
        resource: {
          resourceType: 'Consent',
          id: 'c1',
          status: 'active',
          scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'research' }] },
          category: [{ coding: [{ system: 'http://loinc.org', code: '57016-8' }] }],
          patient: { reference: 'Patient/p1' },
          provision: { type: 'permit', purpose: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActReason', code: 'HRESCH' }] },
        } as Resource,
      },
      {
        resourceType: 'Observation',
        id: 'o1',
        sourceId: 'test',
        resource: {
          resourceType: 'Observation',
          id: 'o1',
          status: 'final',
          code: { coding: [{ system: 'http://loinc.org', code: '2339-0' }] },
          subject: { reference: 'Patient/p1' },
          valueQuantity: { value: 5.4, unit: 'mmol/L', system: 'http://unitsofmeasure.org', code: 'mmol/L' },
        } as Resource,
      },
      // A Basic that names no patient and is not a manifest: patient-type data, so the default decides.
      { resourceType: 'Basic', id: 'note-1', sourceId: 'test', resource: basicWithoutPatient('note-1', { system: 'urn:test:kind', code: 'note' }) },
      // The manifest coding on a Basic whose id is not `export-{exportId}` (as an ingested copy would be): not a manifest.
      { resourceType: 'Basic', id: 'copied-manifest', sourceId: 'test', resource: basicWithoutPatient('copied-manifest', MANIFEST_CODE) },
    ]);
    researcher = await registerTestClient(base, ADMIN, { id: 'study-app', allowedScopes: ['system/Observation.rs', 'system/Basic.rs'], allowedPurposes: ['HRESCH'] });
  }, 60_000);

  afterAll(async () => {
    await service?.close();
    if (config) {
      await cleanupConfig(config);
      await rm(config.dataDir, { recursive: true, force: true }); // the export's files
    }
  });

  it('the researcher who ran the export verifies its manifest; other patient-less Basics stay denied', async () => {
    const token = await researcher.token('system/Observation.rs system/Basic.rs', { purposeOfUse: 'HRESCH' });
    const auth = { authorization: `Bearer ${token}` };

    // A research export (de-identified, research consent) runs on the worker and completes.
    const kick = await fetch(`${base}/fhir/R4/$export?_type=Observation&_deidentify=safe-harbor`, { headers: { ...auth, prefer: 'respond-async', accept: 'application/fhir+json' } });
    expect(kick.status).toBe(202);
    const statusPath = new URL(kick.headers.get('content-location')!).pathname;
    const exportId = statusPath.split('/').pop()!;
    const manifest = await poll('export', async () => {
      const r = await fetch(`${base}${statusPath}`, { headers: auth });
      if (r.status === 202) return undefined;
      expect(r.status).toBe(200);
      return json(r);
    });
    expect(manifest.output).toEqual([expect.objectContaining({ type: 'Observation', count: 1 })]);
    const ref: string = manifest.extension.manifestResource;
    expect(ref).toBe(`Basic/export-${exportId}/_history/1`);

    // $verify on the manifest version (and on its current version): pending until a checkpoint covers it, then included.
    for (const p of [`${ref}/$verify`, `Basic/export-${exportId}/$verify`]) {
      const verify = await poll(`$verify ${p}`, async () => {
        const r = await fetch(`${base}/fhir/R4/${p}`, { headers: auth });
        if (r.status === 202) return undefined;
        expect(r.status).toBe(200);
        return json(r);
      });
      expect(verify.resourceType).toBe('Parameters');
      const param = (name: string): Param | undefined => (verify.parameter as Param[]).find((x) => x.name === name);
      expect(param('status')?.valueCode).toBe('included');
      expect(param('version')?.valueReference?.reference).toBe(ref);
      expect(param('valid')?.valueBoolean).toBe(true);
      expect(param('proofValid')?.valueBoolean).toBe(true);
      expect(String(param('receipt')?.valueString)).not.toBe('');
    }
    // The manifest itself is readable too, and lists the hashes the status manifest gave.
    const read = await fetch(`${base}/fhir/R4/${ref}`, { headers: auth });
    expect(read.status).toBe(200);
    const basic = await json(read);
    expect(JSON.stringify(basic)).toContain(manifest.extension.files[0].sha256);

    // Scopes still apply: without a Basic scope, no $verify of the manifest.
    const obsOnly = await researcher.token('system/Observation.rs', { purposeOfUse: 'HRESCH' });
    expect((await fetch(`${base}/fhir/R4/${ref}/$verify`, { headers: { authorization: `Bearer ${obsOnly}` } })).status).toBe(403);

    // Only the manifest kind of Basic: other Basics naming no patient get the default deny (404, as absent).
    for (const id of ['note-1', 'copied-manifest']) {
      expect((await fetch(`${base}/fhir/R4/Basic/${id}/$verify`, { headers: auth })).status).toBe(404);
      expect((await fetch(`${base}/fhir/R4/Basic/${id}`, { headers: auth })).status).toBe(404);
    }
    // And a manifest id that does not exist is the same 404.
    expect((await fetch(`${base}/fhir/R4/Basic/export-${randomUUID()}/$verify`, { headers: auth })).status).toBe(404);
  }, 90_000);
});
