/**
 * Bulk Data `$export` against real PostgreSQL and Redis (BullMQ): research consent (only consenting
 * patients; default deny vs permit; explicit patient-privacy denials), de-identification required
 * for research and applied, `_type` / `_since` / `_typeFilter`, Group export, cancellation, expiry,
 * an interrupted export that resumes without duplicates, and the manifest whose file hashes match
 * and whose integrity commit is enqueued.
 *
 * The routers run in a small express app with the app's error handlers and a test authentication
 * middleware (`x-test-as` names an AccessContext), as in test/fhir-api/env.ts.
 */
import { createHash, randomUUID } from 'node:crypto';
import { appendFile, readFile, rm, stat } from 'node:fs/promises';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import express, { type RequestHandler } from 'express';
import type { Resource } from '@medplum/fhirtypes';
import { parseScopes } from '../../src/consent/index.js';
import type { AccessContext, DisclosureEvent, DisclosureRecorder } from '../../src/fhir-api/access.js';
import { ManualClock } from '../../src/platform/clock.js';
import { httpError } from '../../src/platform/errors.js';
import { createQueueRegistry, type QueueRegistry } from '../../src/queue/index.js';
import { createDeidentifier } from '../../src/research/index.js';
import { createExportStage, type ExportDeps, type ExportStage } from '../../src/research/export/index.js';
import { errorHandler, notFoundHandler } from '../../src/server/errors.js';
import { openExportStore, type ExportStore } from '../../src/store/export-store.js';
import { openDatabase, type Database } from '../../src/store/index.js';
import { TEST_DATABASE_URL, TEST_REDIS_URL, deleteRedisPrefix, dropSchema, randomNamespace, silentLogger } from '../helpers/env.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Json = any;

const CONSENT_SCOPE = 'http://terminology.hl7.org/CodeSystem/consentscope';
const ACT_REASON = 'http://terminology.hl7.org/CodeSystem/v3-ActReason';
const LOINC = 'http://loinc.org';
const SNOMED = 'http://snomed.info/sct';
const KEYS = { cryptoHashKey: 'test-crypto-hash-key-0123456789', dateShiftKey: 'test-date-shift-key' };
const T0 = new Date('2026-03-01T12:00:00Z');
const T1 = new Date('2026-03-02T12:00:00Z');

function patient(id: string): Resource & { id: string } {
  return { resourceType: 'Patient', id, name: [{ family: `Fam-${id}`, given: ['Given'] }], birthDate: '1970-04-05', gender: 'female' } as Resource & { id: string };
}
function observation(id: string, p: string, code = '2339-0'): Resource & { id: string } {
  return {
    resourceType: 'Observation',
    id,
    status: 'final',
    category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'laboratory' }] }],
    code: { coding: [{ system: LOINC, code }] },
    subject: { reference: `Patient/${p}` },
    effectiveDateTime: '2024-05-01T10:00:00Z',
    valueQuantity: { value: 5.4, unit: 'mmol/L', system: 'http://unitsofmeasure.org', code: 'mmol/L' },
  } as Resource & { id: string };
}
function condition(id: string, p: string, code: string): Resource & { id: string } {
  return { resourceType: 'Condition', id, subject: { reference: `Patient/${p}` }, code: { coding: [{ system: SNOMED, code }] } } as Resource & { id: string };
}
function consent(id: string, p: string, scope: 'research' | 'patient-privacy', type: 'permit' | 'deny'): Resource & { id: string } {
  return {
    resourceType: 'Consent',
    id,
    status: 'active',
    scope: { coding: [{ system: CONSENT_SCOPE, code: scope }] },
    category: [{ coding: [{ system: LOINC, code: '57016-8' }] }],
    patient: { reference: `Patient/${p}` },
    provision: { type, ...(scope === 'research' ? { purpose: [{ system: ACT_REASON, code: 'HRESCH' }] } : {}) },
  } as Resource & { id: string };
}

interface Env {
  readonly db: Database;
  readonly exports: ExportStore;
  readonly clock: ManualClock;
  readonly base: string;
  readonly dir: string;
  readonly events: DisclosureEvent[];
  readonly integrityJobs: Array<{ resourceType: string; id: string; versionId: string }>;
  /** Export ids enqueued on the manual (no-worker) mounts. */
  readonly manual: string[];
  /** The real queues (Redis) the `q` mount's worker takes jobs from. */
  readonly registry: QueueRegistry;
  readonly stages: Record<string, ExportStage>;
  readonly depsByMount: Record<string, ExportDeps>;
  as(name: string, over: Partial<AccessContext> & { scope: string }): void;
  close(): Promise<void>;
}

async function openEnv(): Promise<Env> {
  const schema = randomNamespace('t');
  const prefix = randomNamespace('tq');
  const clock = new ManualClock(T0);
  const db = await openDatabase({ config: { database: { kind: 'external', url: TEST_DATABASE_URL }, databaseSchema: schema, databasePoolMax: 6 }, logger: silentLogger, clock });
  const exports = openExportStore({ connectionString: TEST_DATABASE_URL, schema, clock });
  const registry: QueueRegistry = await createQueueRegistry({ config: { backend: 'redis', redis: { topology: 'standalone', url: TEST_REDIS_URL }, prefix }, logger: silentLogger, retry: { attempts: 3, backoffMs: 50 } });
  const dir = path.join(os.tmpdir(), `fhir-anchor-export-${randomUUID()}`);
  const events: DisclosureEvent[] = [];
  const integrityJobs: Env['integrityJobs'] = [];
  const manual: string[] = [];
  const contexts = new Map<string, AccessContext>();
  const recorder: DisclosureRecorder = {
    record(e) {
      events.push(e);
      return Promise.resolve();
    },
  };
  const authenticate: RequestHandler = (req, res, next) => {
    const ctx = contexts.get(req.get('x-test-as') ?? '');
    if (!ctx) return next(httpError(401, 'login', 'Authentication required'));
    res.locals.access = ctx;
    next();
  };
  const app = express();
  const server = await new Promise<Server>((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
  });
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const stages: Record<string, ExportStage> = {};
  const depsByMount: Record<string, ExportDeps> = {};
  const mount = (name: string, over: Partial<ExportDeps>, viaQueue: boolean): void => {
    const deps: ExportDeps = {
      store: db.store,
      exports,
      queues: {
        async enqueue(queue, data, options) {
          if (queue === 'export' && !viaQueue) {
            manual.push((data as { exportId: string }).exportId);
            return 'manual';
          }
          return registry.enqueue(queue, data, options);
        },
        async enqueueBulk(queue, jobs) {
          for (const j of jobs) if (queue === 'integrity') integrityJobs.push(j.data as Env['integrityJobs'][number]);
        },
      },
      recorder,
      consentDefault: 'permit',
      researchConsentDefault: 'deny',
      deidKeys: KEYS,
      clock,
      logger: silentLogger,
      baseUrl: `${base}/${name}/fhir/R4`,
      exportDir: dir,
      authenticate,
      ...over,
    };
    depsByMount[name] = deps;
    stages[name] = createExportStage(deps);
    app.use(`/${name}/fhir/R4`, stages[name].router);
  };
  mount('q', {}, true);
  mount('m', {}, false);
  mount('mp', { researchConsentDefault: 'permit' }, false);
  mount('small', { pageSize: 2 }, false);
  app.use(notFoundHandler);
  app.use(errorHandler(silentLogger));
  registry.work('export', (job) => stages.q!.runner.processJob(job), { concurrency: 1 });
  return {
    db,
    exports,
    clock,
    base,
    dir,
    events,
    integrityJobs,
    manual,
    registry,
    stages,
    depsByMount,
    as(name, over) {
      const { scope, ...rest } = over;
      contexts.set(name, {
        clientId: 'study-app',
        issuer: 'https://auth.test',
        scopes: parseScopes(scope).scopes,
        purposeOfUse: ['HRESCH'],
        actor: { references: ['Organization/uni'], identifiers: [] },
        mayBreakGlass: false,
        ...rest,
      });
    },
    async close() {
      await registry.close();
      await new Promise<void>((r) => server.close(() => r()));
      await exports.close();
      await db.close();
      await dropSchema(schema);
      await deleteRedisPrefix(prefix);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

const sha256 = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');
const ndjson = (text: string): Json[] => text.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as Json);

describe('Bulk Data $export', () => {
  let env: Env;
  const get = async (p: string, as: string, init: RequestInit = {}) => {
    const doFetch = () => fetch(`${env.base}${p}`, { ...init, headers: { 'x-test-as': as, ...(init.headers as Record<string, string> | undefined) } });
    // A pooled keep-alive connection the server just closed surfaces as ECONNRESET: retry once on a new one.
    const res = await doFetch().catch(() => doFetch());
    const buf = Buffer.from(await res.arrayBuffer());
    const text = buf.toString('utf8');
    let body: Json;
    try {
      body = text ? JSON.parse(text) : undefined;
    } catch {
      body = undefined;
    }
    return { status: res.status, headers: res.headers, body, text, buf };
  };
  const async = { prefer: 'respond-async', accept: 'application/fhir+json' };
  /** Kick-off → status URL path. */
  const kickoff = async (p: string, as: string): Promise<string> => {
    const r = await get(p, as, { headers: async });
    if (r.status !== 202) throw new Error(`kick-off ${r.status} ${r.text}`);
    return new URL(r.headers.get('content-location')!).pathname;
  };
  const idOf = (statusPath: string): string => statusPath.split('/').pop()!;
  const waitDone = async (statusPath: string, as: string): Promise<Json> => {
    const deadline = Date.now() + 30_000;
    for (;;) {
      const r = await get(statusPath, as);
      if (r.status === 200) return r.body;
      if (r.status !== 202) throw new Error(`status ${r.status} ${r.text}`);
      expect(r.headers.get('x-progress')).toMatch(/resources written/);
      expect(r.headers.get('retry-after')).toBe('2');
      if (Date.now() > deadline) throw new Error('export did not finish');
      await new Promise((res) => setTimeout(res, 100));
    }
  };
  /** Runs a manual-mount export to completion and returns its manifest. */
  const runManual = async (mountName: string, statusPath: string, as: string): Promise<Json> => {
    await env.stages[mountName]!.runner.run(idOf(statusPath));
    const r = await get(statusPath, as);
    expect(r.status).toBe(200);
    return r.body;
  };
  const download = async (url: string, as: string) => {
    const r = await get(new URL(url).pathname, as);
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toMatch(/^application\/fhir\+ndjson/);
    return r;
  };
  const pseudonym = (resource: Resource): string => {
    const out = createDeidentifier({ keys: KEYS }, { policy: 'safe-harbor' }).deidentify(resource);
    if (out.kind !== 'deidentified') throw new Error('not de-identified');
    return out.resource.id!;
  };

  beforeAll(async () => {
    env = await openEnv();
    const put = (r: Resource & { id: string }) => env.db.store.resources.putVersion({ resourceType: r.resourceType, id: r.id, resource: r, sourceId: 'test' });
    // p1, p2: research permit; p3: research deny; p4: no consent; p5: research permit but a patient-privacy deny-all.
    for (const p of ['p1', 'p2', 'p3', 'p4', 'p5']) {
      await put(patient(p));
      await put(observation(`o-${p}-a`, p));
      await put(observation(`o-${p}-b`, p, '718-7'));
    }
    await put(consent('c-p1', 'p1', 'research', 'permit'));
    await put(consent('c-p2', 'p2', 'research', 'permit'));
    await put(consent('c-p3', 'p3', 'research', 'deny'));
    await put(consent('c-p5', 'p5', 'research', 'permit'));
    await put(consent('c-p5-privacy', 'p5', 'patient-privacy', 'deny'));
    await put(condition('cond-p1', 'p1', '44054006'));
    await put(condition('cond-p3', 'p3', '44054006'));
    await put({ resourceType: 'Group', id: 'g1', type: 'person', actual: true, member: [{ entity: { reference: 'Patient/p1' } }, { entity: { reference: 'Patient/p3' } }] } as Resource & { id: string });
    // Written later: the _since boundary.
    env.clock.set(T1);
    await put(observation('o-p1-late', 'p1'));
    await put(observation('o-p4-late', 'p4'));
    env.as('research', { scope: 'system/*.rs' });
    env.as('treat', { scope: 'system/*.rs', purposeOfUse: ['TREAT'] });
    env.as('obs-only', { scope: 'system/Observation.rs', purposeOfUse: ['TREAT'] });
    env.as('other-client', { scope: 'system/*.rs', clientId: 'someone-else' });
  }, 60_000);

  afterAll(async () => {
    await env?.close();
  });

  it('validates the kick-off: respond-async, research needs _deidentify, scopes, parameters', async () => {
    expect((await get('/m/fhir/R4/$export?_deidentify=safe-harbor', 'research')).status).toBe(400); // no Prefer
    expect((await get('/m/fhir/R4/$export?_deidentify=safe-harbor', 'nobody', { headers: async })).status).toBe(401);
    const noDeid = await get('/m/fhir/R4/$export', 'research', { headers: async });
    expect(noDeid.status).toBe(400);
    expect(noDeid.body.resourceType).toBe('OperationOutcome');
    expect((await get('/m/fhir/R4/$export?_deidentify=no-such-policy', 'research', { headers: async })).status).toBe(400);
    expect((await get('/m/fhir/R4/$export?_type=Patient', 'obs-only', { headers: async })).status).toBe(403);
    expect((await get('/m/fhir/R4/$export?_outputFormat=text/csv', 'treat', { headers: async })).status).toBe(400);
    expect((await get('/m/fhir/R4/$export?_since=yesterday', 'treat', { headers: async })).status).toBe(400);
    expect((await get('/m/fhir/R4/$export?_elements=id', 'treat', { headers: async })).status).toBe(400);
    expect((await get('/m/fhir/R4/$export?_typeFilter=Observation%3Fflavour%3Dsweet', 'treat', { headers: async })).status).toBe(400);
    // A chain in _typeFilter: refused (the export's filters are plain clauses), not silently dropped.
    expect((await get(`/m/fhir/R4/$export?_typeFilter=${encodeURIComponent('Observation?patient.name=x')}`, 'treat', { headers: async })).status).toBe(400);
    expect((await get('/m/fhir/R4/Group/nope/$export', 'treat', { headers: async })).status).toBe(404);
    expect(env.manual).toHaveLength(0);
  });

  it('research export via the queue: only research-consenting patients, de-identified, manifest anchored', async () => {
    const statusPath = await kickoff('/q/fhir/R4/Patient/$export?_type=Patient,Observation&_deidentify=safe-harbor', 'research');
    // Another client cannot see it.
    expect((await get(statusPath, 'other-client')).status).toBe(404);
    const manifest = await waitDone(statusPath, 'research');
    const exportId = idOf(statusPath);
    expect(manifest.requiresAccessToken).toBe(true);
    expect(manifest.transactionTime).toBe(T1.toISOString());
    expect(manifest.request).toContain('/Patient/$export?_type=Patient,Observation');
    const byType = Object.fromEntries(manifest.output.map((o: Json) => [o.type, o]));
    expect(byType.Patient.count).toBe(2);
    expect(byType.Observation.count).toBe(5); // p1: 3, p2: 2

    const patients = await download(byType.Patient.url, 'research');
    const ids = ndjson(patients.text).map((r) => r.id);
    expect(ids.sort()).toEqual([pseudonym(patient('p1')), pseudonym(patient('p2'))].sort());
    // De-identified: no names, no original ids, birth year only.
    expect(patients.text).not.toMatch(/Fam-|"p1"|"p2"|1970-04-05/);
    const obs = await download(byType.Observation.url, 'research');
    expect(obs.text).not.toMatch(/Patient\/p[0-9]/);
    expect(ndjson(obs.text).every((o) => o.meta?.security?.length > 0)).toBe(true);
    // Other clients cannot download.
    expect((await get(new URL(byType.Patient.url).pathname, 'other-client')).status).toBe(404);

    // Manifest hashes match the files; the anchored Basic resource lists the same hashes; its commit is enqueued.
    for (const f of manifest.extension.files) {
      const r = await download(f.url, 'research');
      expect(sha256(r.buf)).toBe(f.sha256);
      expect(r.buf.length).toBe(f.bytes);
    }
    const ref: string = manifest.extension.manifestResource;
    expect(ref).toBe(`Basic/export-${exportId}/_history/1`);
    expect(env.integrityJobs).toContainEqual({ resourceType: 'Basic', id: `export-${exportId}`, versionId: '1' });
    const basic = await env.db.store.resources.readVersion('Basic', `export-${exportId}`, '1');
    const fileExts = (basic!.resource as Json).extension.filter((e: Json) => e.url.endsWith('#file'));
    const hashes = fileExts.map((e: Json) => e.extension.find((x: Json) => x.url === 'sha256').valueString).sort();
    expect(hashes).toEqual(manifest.extension.files.map((f: Json) => f.sha256).sort());
    expect(JSON.stringify(basic!.resource)).not.toMatch(/Patient\//);

    // The consent decision per patient (ids and policies only).
    const decisions = await env.exports.patientDecisions(exportId, { limit: 100 });
    const d = Object.fromEntries(decisions.map((x) => [x.patientId, x]));
    expect(d.p1!.included).toBeGreaterThan(0);
    expect(d.p1!.policy).toContain('Consent/c-p1/_history/1');
    expect(d.p2!.included).toBeGreaterThan(0);
    expect(d.p3).toMatchObject({ included: 0 });
    expect(d.p3!.policy).toContain('Consent/c-p3/_history/1');
    expect(d.p4).toMatchObject({ included: 0, policy: ['urn:fhir-anchor:policy:research-default-deny'] });
    // p5's explicit patient-privacy denial withheld everything before the research gate: counted, reported.
    expect(d.p5).toBeUndefined();
    expect(manifest.error).toHaveLength(1);
    const errors = await download(manifest.error[0].url, 'research');
    expect(errors.text).toMatch(/withheld by SMART scopes or patient consent/);
    // Audited: the disclosure names the anchored manifest.
    const permit = env.events.find((e) => e.interaction === '$export' && e.outcome === 'permit' && e.entities.includes(ref));
    expect(permit?.policy).toContain(`urn:fhir-anchor:export:${exportId}`);
    expect(env.events.some((e) => e.interaction === '$export' && e.outcome === 'deny')).toBe(true);
  }, 60_000);

  it('research default permit includes patients without a research Consent, never explicit refusals', async () => {
    const statusPath = await kickoff('/mp/fhir/R4/$export?_type=Patient&_deidentify=safe-harbor', 'research');
    const manifest = await runManual('mp', statusPath, 'research');
    const r = await download(manifest.output[0].url, 'research');
    expect(ndjson(r.text).map((x) => x.id).sort()).toEqual(['p1', 'p2', 'p4'].map((p) => pseudonym(patient(p))).sort());
  });

  it('a Provenance that names no patient is exported under the Consent of the patient whose record it targets', async () => {
    const put = (r: Resource & { id: string }, deleted = false) =>
      env.db.store.resources.putVersion({ resourceType: r.resourceType, id: r.id, ...(deleted ? { deleted: true } : { resource: r }), sourceId: 'test' });
    const prov = (id: string, target: string): Resource & { id: string } =>
      ({ resourceType: 'Provenance', id, target: [{ reference: target }], recorded: '2024-01-01T00:00:00Z', agent: [{ who: { reference: 'Organization/lab' } }] }) as Resource & { id: string };
    // p1 permits research, p3 refuses it: before, both were exported as no one's data under the permit default.
    await put(prov('pv-p1', 'Observation/o-p1-a'));
    await put(prov('pv-p3', 'Observation/o-p3-a'));
    try {
      const statusPath = await kickoff('/mp/fhir/R4/$export?_type=Provenance&_deidentify=safe-harbor', 'research');
      const manifest = await runManual('mp', statusPath, 'research');
      const r = await download(manifest.output[0].url, 'research');
      expect(ndjson(r.text).map((x) => x.id)).toEqual([pseudonym(prov('pv-p1', 'Observation/o-p1-a'))]);
      const d = Object.fromEntries((await env.exports.patientDecisions(idOf(statusPath), { limit: 100 })).map((x) => [x.patientId, x]));
      expect(d.p1).toMatchObject({ included: 1, excluded: 0 });
      expect(d.p3).toMatchObject({ included: 0, excluded: 1 });
    } finally {
      await put(prov('pv-p1', ''), true);
      await put(prov('pv-p3', ''), true);
    }
  });

  it('a research Consent withholding a report "and what it refers to" withholds its results, not the rest of the record', async () => {
    const put = (r: Resource & { id: string }, deleted = false) =>
      env.db.store.resources.putVersion({ resourceType: r.resourceType, id: r.id, ...(deleted ? { deleted: true } : { resource: r }), sourceId: 'test' });
    const dr = { resourceType: 'DiagnosticReport', id: 'dr-rel', status: 'final', code: { text: 'panel' }, subject: { reference: 'Patient/prel' }, result: [{ reference: 'Observation/o-rel-in' }] } as Resource & { id: string };
    const base = consent('c-rel', 'prel', 'research', 'permit') as Resource & { id: string; provision: Record<string, unknown> };
    const c = { ...base, provision: { ...base.provision, provision: [{ type: 'deny', data: [{ meaning: 'related', reference: { reference: 'DiagnosticReport/dr-rel' } }] }] } } as Resource & { id: string };
    const added = [patient('prel'), observation('o-rel-in', 'prel'), observation('o-rel-out', 'prel'), dr, c];
    for (const r of added) await put(r);
    try {
      const statusPath = await kickoff('/mp/fhir/R4/$export?_type=Observation&_deidentify=safe-harbor', 'research');
      await runManual('mp', statusPath, 'research');
      const d = Object.fromEntries((await env.exports.patientDecisions(idOf(statusPath), { limit: 100 })).map((x) => [x.patientId, x]));
      // Before: the related provision was undecidable and the deny withheld both Observations.
      expect(d.prel).toMatchObject({ included: 1, excluded: 1 });
    } finally {
      for (const r of added) await put(r, true);
    }
  });

  it('non-research export: _type, _since, _typeFilter (OR, no duplicates), patient-privacy consent', async () => {
    const since = await kickoff(`/m/fhir/R4/$export?_type=Observation&_since=${encodeURIComponent('2026-03-02T00:00:00Z')}`, 'treat');
    const m1 = await runManual('m', since, 'treat');
    expect(m1.output).toHaveLength(1);
    const late = ndjson((await download(m1.output[0].url, 'treat')).text);
    expect(late.map((o) => o.id).sort()).toEqual(['o-p1-late', 'o-p4-late']);
    // Not de-identified (no research purpose, no _deidentify).
    expect(late[0].subject.reference).toMatch(/^Patient\/p[14]$/);

    const tf = `_type=Observation&_typeFilter=${encodeURIComponent(`Observation?code=${LOINC}|718-7`)}&_typeFilter=${encodeURIComponent('Observation?category=laboratory')}`;
    const m2 = await runManual('m', await kickoff(`/m/fhir/R4/$export?${tf}`, 'treat'), 'treat');
    const all = ndjson((await download(m2.output[0].url, 'treat')).text).map((o) => o.id);
    expect(new Set(all).size).toBe(all.length);
    // Every observation except p5's (patient-privacy deny).
    expect(all.sort()).toEqual(['o-p1-a', 'o-p1-b', 'o-p1-late', 'o-p2-a', 'o-p2-b', 'o-p3-a', 'o-p3-b', 'o-p4-a', 'o-p4-b', 'o-p4-late']);

    const cond = await runManual('m', await kickoff(`/m/fhir/R4/$export?_typeFilter=${encodeURIComponent(`Condition?code=${SNOMED}|44054006`)}&_type=Condition`, 'treat'), 'treat');
    expect(ndjson((await download(cond.output[0].url, 'treat')).text).map((c) => c.id).sort()).toEqual(['cond-p1', 'cond-p3']);
  });

  it('Group export covers only the members', async () => {
    const m = await runManual('m', await kickoff('/m/fhir/R4/Group/g1/$export?_type=Patient,Observation', 'treat'), 'treat');
    const byType = Object.fromEntries(m.output.map((o: Json) => [o.type, o]));
    expect(ndjson((await download(byType.Patient.url, 'treat')).text).map((p) => p.id).sort()).toEqual(['p1', 'p3']);
    expect(ndjson((await download(byType.Observation.url, 'treat')).text).map((p) => p.id).sort()).toEqual(['o-p1-a', 'o-p1-b', 'o-p1-late', 'o-p3-a', 'o-p3-b']);
  });

  it('cancels: DELETE answers 202, the status then 404, and a queued job does nothing', async () => {
    const statusPath = await kickoff('/m/fhir/R4/$export?_type=Observation', 'treat');
    expect((await get(statusPath, 'treat')).status).toBe(202);
    expect((await get(statusPath, 'other-client', { method: 'DELETE' })).status).toBe(404);
    expect((await get(statusPath, 'treat', { method: 'DELETE' })).status).toBe(202);
    expect((await get(statusPath, 'treat')).status).toBe(404);
    await env.stages.m!.runner.run(idOf(statusPath));
    expect((await env.exports.get(idOf(statusPath)))!.state).toBe('cancelled');
    await expect(stat(path.join(env.dir, idOf(statusPath)))).rejects.toThrow();
  });

  it('expires: after the expiry the status and files answer 404 and the sweep deletes the files', async () => {
    const statusPath = await kickoff('/m/fhir/R4/$export?_type=Patient', 'treat');
    const manifest = await runManual('m', statusPath, 'treat');
    env.clock.advance(24 * 3600 * 1000 + 1000);
    try {
      expect((await get(statusPath, 'treat')).status).toBe(404);
      expect((await get(new URL(manifest.output[0].url).pathname, 'treat')).status).toBe(404);
      expect(await env.stages.m!.runner.sweep()).toBeGreaterThanOrEqual(1);
      expect((await env.exports.get(idOf(statusPath)))!.state).toBe('expired');
      await expect(stat(path.join(env.dir, idOf(statusPath)))).rejects.toThrow();
    } finally {
      env.clock.set(T1);
    }
  });

  it('resumes an interrupted export from its cursor: complete output, no duplicates', async () => {
    const statusPath = await kickoff('/small/fhir/R4/$export?_type=Observation', 'treat');
    const exportId = idOf(statusPath);
    // First worker dies after its second page (two pages of 2 saved).
    const crashing = createExportStage({ ...depsOf(env, 'small'), afterPage: (_id, page) => {
      if (page === 2) throw new Error('worker killed');
    } });
    await expect(crashing.runner.run(exportId)).rejects.toThrow('worker killed');
    const mid = await env.exports.get(exportId);
    expect(mid!.state).toBe('in-progress');
    expect(mid!.exported).toBe(4);
    // Bytes written after the last saved page (a crash between write and commit) are discarded on resume.
    await appendFile(path.join(env.dir, exportId, 'Observation.ndjson'), '{"resourceType":"Observation","id":"o-p1-a"}\n');
    expect((await get(statusPath, 'treat')).headers.get('x-progress')).toBe('in-progress: 4 resources written');
    // A new worker picks the job up through the queue processor (attempt 2 of 3).
    await env.stages.small!.runner.processJob({ data: { exportId }, attemptsMade: 1, maxAttempts: 3 });
    const manifest = (await get(statusPath, 'treat')).body;
    const text = (await download(manifest.output[0].url, 'treat')).text;
    const ids = ndjson(text).map((o) => o.id);
    expect(new Set(ids).size).toBe(ids.length);
    expect(ids).toHaveLength(10);
    expect(manifest.output[0].count).toBe(10);
    expect(sha256(await readFile(path.join(env.dir, exportId, 'Observation.ndjson')))).toBe(manifest.extension.files[0].sha256);
  });
});

describe('Bulk Data $export: lost jobs', () => {
  let env: Env;

  beforeAll(async () => {
    env = await openEnv();
    await env.db.store.resources.putVersion({ resourceType: 'Patient', id: 'lost-1', resource: patient('lost-1'), sourceId: 'test' });
    env.as('treat', { scope: 'system/*.rs', purposeOfUse: ['TREAT'] });
  }, 60_000);

  afterAll(async () => {
    await env?.close();
  });

  it('re-runs an export whose job was lost once it has not moved for the stale period, and only once', async () => {
    // The manual mount enqueues nothing: the export is accepted but has no job, as after Redis lost it.
    const res = await fetch(`${env.base}/m/fhir/R4/$export?_type=Patient`, { headers: { 'x-test-as': 'treat', prefer: 'respond-async', accept: 'application/fhir+json' } });
    expect(res.status).toBe(202);
    const exportId = new URL(res.headers.get('content-location')!).pathname.split('/').pop()!;
    const runner = env.stages.m!.runner;
    // Not stale yet: nothing to do.
    expect(await runner.reconcile(env.registry, 60_000)).toBe(0);
    env.clock.advance(61_000);
    try {
      expect(await runner.reconcile(env.registry, 60_000)).toBe(1);
      // However often the reconciler passes: its re-run is queued or running, or the export moved on.
      expect(await runner.reconcile(env.registry, 60_000)).toBe(0);
      const deadline = Date.now() + 30_000;
      while ((await env.exports.get(exportId))!.state !== 'completed') {
        if (Date.now() > deadline) throw new Error('the re-run export did not complete');
        await new Promise((r) => setTimeout(r, 100));
      }
      expect((await env.exports.get(exportId))!.exported).toBe(1);
      expect(await runner.reconcile(env.registry, 60_000)).toBe(0);
    } finally {
      env.clock.set(T1);
    }
  });
});

/** The deps of a mounted stage, for building a second runner over the same export (a "new worker"). */
function depsOf(env: Env, mountName: string): ExportDeps {
  const d = env.depsByMount[mountName];
  if (!d) throw new Error('no deps');
  return d;
}
