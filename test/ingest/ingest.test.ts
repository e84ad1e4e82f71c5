/**
 * Ingest end to end against the real PostgreSQL and Redis, with a real source EHR (the fake FHIR
 * server in test/helpers) for id-only fetch-backs and $events catch-up.
 */
import { createHmac } from 'node:crypto';
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import pg from 'pg';
import type { Encounter, Resource } from '@medplum/fhirtypes';
import type { Config } from '../../src/config/index.js';
import { anchorId } from '../../src/normalize/index.js';
import { PING_CLOCK_MARGIN_MS } from '../../src/ingest/index.js';
import { startService, type RunningService } from '../../src/runtime.js';
import { TEST_DATABASE_URL, cleanupConfig, json, silentLogger, testConfig } from '../helpers/env.js';
import { buildHandshake, buildHeartbeat, buildNotificationBundle, startFakeEhr, type FakeEhr } from '../helpers/fake-ehr.js';

const ADMIN = 'test-admin-token-0123456789abcdef0123456789';
const BEARER = 'hook-bearer-token-0123456789';
const HMAC = 'hook-hmac-secret-0123456789';
const fixture = (path: string): Buffer => readFileSync(new URL(`../fixtures/${path}`, import.meta.url));
const PATIENT_BUNDLE = 'normalize/Jani266_Reynolds644_304f9946-5db8-dc6f-e060-48b9fea3ca5d.json';

describe('ingest (queues on Redis)', () => {
  let config: Config;
  let service: RunningService;
  let base: string;
  let ehr: FakeEhr;

  const admin = (path: string, init: RequestInit = {}) =>
    fetch(base + path, { ...init, headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json', ...(init.headers ?? {}) } });
  const hook = (source: string, body: Buffer | string, headers: Record<string, string> = {}, method = 'POST', path = '') =>
    fetch(`${base}/hooks/${source}${path}`, { method, body: method === 'DELETE' ? undefined : body, headers: { authorization: `Bearer ${BEARER}`, 'content-type': 'application/fhir+json', ...headers } });
  const signed = (source: string, body: Buffer) => hook(source, body, { 'x-signature': createHmac('sha256', HMAC).update(body).digest('hex') });

  async function settle(inboxId: string, timeoutMs = 30_000): Promise<{ state: string; outcome: Record<string, unknown> }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const item = await service.database.store.inbox.get(inboxId);
      if (item && (item.state === 'done' || item.state === 'dead')) return { state: item.state, outcome: item.outcome as Record<string, unknown> };
      if (Date.now() > deadline) throw new Error(`inbox ${inboxId} still ${item?.state} after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async function post(source: string, body: Buffer, headers: Record<string, string> = {}): Promise<{ status: number; inboxId: string }> {
    const res = await hook(source, body, headers);
    await res.text();
    return { status: res.status, inboxId: res.headers.get('x-inbox-id') ?? '' };
  }

  beforeAll(async () => {
    config = testConfig({ JOB_ATTEMPTS: '2', JOB_BACKOFF_MS: '50', LINK_IDENTIFIER_SYSTEMS: 'http://hl7.org/fhir/sid/us-ssn', HEARTBEAT_GAP_DELAY_MS: '200' }, 'redis');
    service = await startService({ config, roles: { api: true, workers: true }, logger: silentLogger });
    base = service.url!;
    ehr = await startFakeEhr({ capability: 'backport' });
    for (const [id, baseUrl] of [
      ['ehr-a', 'https://ehr-a.example/fhir'],
      ['ehr-b', 'https://ehr-b.example/fhir'],
      ['ehr-live', ehr.baseUrl],
    ]) {
      const res = await admin('/admin/sources', {
        method: 'POST',
        body: JSON.stringify({ id, name: `EHR ${id}`, baseUrl, hookAuth: { bearerToken: BEARER, ...(id === 'ehr-a' ? { hmacSecret: HMAC } : {}) }, subscribe: { resourceTypes: ['Encounter'] } }),
      });
      expect(res.status).toBe(201);
    }
  });

  afterAll(async () => {
    await ehr?.close();
    await service?.close();
    await cleanupConfig(config);
  });

  describe('sources', () => {
    it('never returns secrets, refuses duplicates, lists every problem of a bad definition', async () => {
      const got = await admin('/admin/sources/ehr-a');
      const text = await got.text();
      expect(got.status).toBe(200);
      expect(text).not.toContain(BEARER);
      expect(text).not.toContain(HMAC);
      expect(JSON.parse(text).hookUrl).toMatch(/\/hooks\/ehr-a$/);
      const dup = await admin('/admin/sources', { method: 'POST', body: JSON.stringify({ id: 'ehr-a', name: 'x', baseUrl: 'https://x.example', hookAuth: { bearerToken: BEARER } }) });
      expect(dup.status).toBe(409);
      const bad = await admin('/admin/sources', { method: 'POST', body: JSON.stringify({ id: '../x', baseUrl: 'not a url', hookAuth: {} }) });
      expect(bad.status).toBe(400);
      const oo = await json(bad);
      expect(oo.resourceType).toBe('OperationOutcome');
      expect(oo.issue[0].details.text).toMatch(/id:.*name:.*baseUrl:.*hookAuth/s);
      const list = await admin('/admin/sources');
      expect((await list.text()).includes(HMAC)).toBe(false);
    });
  });

  describe('authentication', () => {
    it('answers 401 and stores nothing for missing, wrong or forged credentials', async () => {
      const before = await service.database.store.inbox.countsByStageAndState();
      const body = Buffer.from(JSON.stringify({ resourceType: 'Patient', id: 'auth-1' }));
      expect((await hook('ehr-a', body, { authorization: 'Bearer nope' })).status).toBe(401);
      expect((await hook('ehr-a', body, { authorization: '' })).status).toBe(401);
      expect((await hook('ehr-a', body)).status).toBe(401); // bearer right, signature missing
      expect((await hook('ehr-a', body, { 'x-signature': createHmac('sha256', 'forged-secret-000000').update(body).digest('hex') })).status).toBe(401);
      expect((await hook('no-such-source', body)).status).toBe(401);
      const res = await hook('ehr-a', body, { authorization: 'Bearer nope' });
      expect(res.headers.get('www-authenticate')).toContain('Bearer');
      expect((await json(res)).issue[0].details.text).toBe('Authentication required');
      expect(await service.database.store.inbox.countsByStageAndState()).toEqual(before);
    });
  });

  describe('Synthea bundles', () => {
    it('stores every entry exactly once, resolving urn:uuid and conditional references', async () => {
      const support1 = await signed('ehr-a', fixture('ingest/hospitalInformation1633536936158.subset.json'));
      const support2 = await signed('ehr-a', fixture('ingest/practitionerInformation1633536936158.subset.json'));
      expect(support1.status).toBe(202);
      expect(support2.status).toBe(202);
      await settle(support1.headers.get('x-inbox-id')!);
      await settle(support2.headers.get('x-inbox-id')!);
      const bundleBytes = fixture(PATIENT_BUNDLE);
      const res = await signed('ehr-a', bundleBytes);
      expect(res.status).toBe(202);
      const r = await settle(res.headers.get('x-inbox-id')!);
      expect(r.state).toBe('done');
      const bundle = JSON.parse(bundleBytes.toString('utf8')) as { entry: Array<{ resource: { resourceType: string; id: string } }> };
      expect(r.outcome).toMatchObject({ stored: bundle.entry.length, deadLetters: 0, duplicates: 0 });
      expect(r.outcome.notes).toEqual([]);

      // Every entry is stored under its deterministic id, once.
      const store = service.database.store.resources;
      for (const e of bundle.entry.slice(0, 40)) {
        const id = anchorId('ehr-a', e.resource.resourceType, e.resource.id);
        const history = await store.history(e.resource.resourceType, id);
        expect(history).toHaveLength(1);
      }
      // References resolve inside our store.
      const encounter = bundle.entry.find((e) => e.resource.resourceType === 'Encounter')!.resource;
      const stored = await store.readCurrent('Encounter', anchorId('ehr-a', 'Encounter', encounter.id));
      const enc = stored!.resource as unknown as { subject: { reference: string }; participant: Array<{ individual: { reference: string } }>; serviceProvider: { reference: string } };
      for (const ref of [enc.subject.reference, enc.participant[0]!.individual.reference, enc.serviceProvider.reference]) {
        const [type, id] = ref.split('/');
        expect(await store.readCurrent(type!, id!)).toBeDefined();
      }
      expect(stored!.resource!.meta?.source).toMatch(/^https:\/\/ehr-a\.example\/fhir\/Encounter\//);

      // Every resource of the patient's bundle is in the patient's compartment ($everything, patient-level
      // exports): Claims, ExplanationOfBenefits and the Provenance too (they were left out before).
      const patientEntry = bundle.entry.find((e) => e.resource.resourceType === 'Patient')!.resource;
      const compartment = await service.database.store.search.compartment(anchorId('ehr-a', 'Patient', patientEntry.id), { limit: 1000 });
      const byType = (xs: readonly string[]): Record<string, number> => xs.reduce<Record<string, number>>((m, t) => ({ ...m, [t]: (m[t] ?? 0) + 1 }), {});
      expect(byType(compartment.map((v) => v.resourceType))).toEqual(byType(bundle.entry.map((e) => e.resource.resourceType).filter((t) => t !== 'Patient')));

      // The same bundle again is stored once.
      const again = await signed('ehr-a', bundleBytes);
      expect(again.status).toBe(200);
      expect(again.headers.get('x-inbox-id')).toBe(res.headers.get('x-inbox-id'));
    });
  });

  describe('rest-hook resources', () => {
    const patient = (version: string, lastUpdated: string, family: string) =>
      Buffer.from(JSON.stringify({ resourceType: 'Patient', id: 'order-1', meta: { versionId: version, lastUpdated }, name: [{ family }], gender: 'female', identifier: [{ system: 'urn:mrn', value: 'M-1' }] }));

    it('never lets an older version arriving late overwrite a newer one (both kept)', async () => {
      const v2 = await post('ehr-b', patient('2', '2026-05-02T00:00:00Z', 'Newer'));
      await settle(v2.inboxId);
      const v1 = await post('ehr-b', patient('1', '2026-05-01T00:00:00Z', 'Older'));
      const r1 = await settle(v1.inboxId);
      expect(r1.outcome).toMatchObject({ historical: 1 });
      const id = anchorId('ehr-b', 'Patient', 'order-1');
      const current = await service.database.store.resources.readCurrent('Patient', id);
      expect((current!.resource as unknown as { name: Array<{ family: string }> }).name[0]!.family).toBe('Newer');
      expect(await service.database.store.resources.history('Patient', id)).toHaveLength(2);
      // Same version again: stored once.
      const dup = await post('ehr-b', patient('2', '2026-05-02T00:00:00Z', 'Newer'));
      expect(dup.status).toBe(200);
    });

    it('counts a version it already holds as a duplicate, not as stored', async () => {
      const body = { resourceType: 'Observation', id: 'dup-count-1', status: 'final', code: { text: 'x' } };
      const first = await post('ehr-b', Buffer.from(JSON.stringify(body)));
      expect((await settle(first.inboxId)).outcome).toMatchObject({ stored: 1, duplicates: 0 });
      // The same resource in other bytes: a new inbox item, the same version (no versionId: its content).
      const again = await post('ehr-b', Buffer.from(JSON.stringify(body, null, 2)));
      expect(again.status).toBe(202);
      expect(again.inboxId).not.toBe(first.inboxId);
      expect((await settle(again.inboxId)).outcome).toMatchObject({ stored: 0, duplicates: 1 });
      expect(await service.database.store.resources.history('Observation', anchorId('ehr-b', 'Observation', 'dup-count-1'))).toHaveLength(1);
    });

    it('applies Medplum-style deletes (empty body + X-Medplum-Deleted-Resource) and DELETE hooks, idempotently', async () => {
      const created = await post('ehr-b', Buffer.from(JSON.stringify({ resourceType: 'Observation', id: 'del-1', status: 'final', code: { text: 'x' } })));
      await settle(created.inboxId);
      const del = await hook('ehr-b', Buffer.alloc(0), { 'x-medplum-deleted-resource': 'Observation/del-1' });
      expect(del.status).toBe(202);
      await settle(del.headers.get('x-inbox-id')!);
      const id = anchorId('ehr-b', 'Observation', 'del-1');
      expect((await service.database.store.resources.readCurrent('Observation', id))?.deleted).toBe(true);
      const again = await hook('ehr-b', '', {}, 'DELETE', '/Observation/del-1');
      expect(again.status).toBe(202);
      const r = await settle(again.headers.get('x-inbox-id')!);
      expect(r.outcome).toMatchObject({ skipped: 1, stored: 0 });
      expect(await service.database.store.resources.history('Observation', id)).toHaveLength(2);
      // A delete header that names no resource is a 400 saying so, kept as a dead letter.
      const bad = await hook('ehr-b', Buffer.alloc(0), { 'x-medplum-deleted-resource': 'Observation' });
      expect(bad.status).toBe(400);
      expect(JSON.stringify(await bad.json())).toContain('must name the resource as Type/id');
      const letters = await service.database.store.deadLetters.list({ sourceId: 'ehr-b', limit: 50 });
      expect(letters.some((l) => l.inboxId === bad.headers.get('x-inbox-id') && l.reason === 'invalid-structure')).toBe(true);
    });

    it('accepts PUT /hooks/{source}/{type}/{id} and checks the body matches the URL', async () => {
      const ok = await hook('ehr-b', JSON.stringify({ resourceType: 'Organization', id: 'org-9', name: 'Clinic' }), {}, 'PUT', '/Organization/org-9');
      expect(ok.status).toBe(202);
      const bad = await hook('ehr-b', JSON.stringify({ resourceType: 'Organization', id: 'other', name: 'Clinic' }), {}, 'PUT', '/Organization/org-9');
      expect(bad.status).toBe(400);
    });

    it('stores a lab value with the precision it was written with (72.50), and a resource with a duplicated property as a dead letter', async () => {
      const obs = (id: string, value: string) =>
        `{"resourceType":"Observation","id":"${id}","status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}]}],` +
        `"code":{"coding":[{"system":"http://loinc.org","code":"2339-0"}]},"subject":{"reference":"Patient/p-prec"},"effectiveDateTime":"2024-01-01",` +
        `"valueQuantity":{"value":${value},"unit":"mg/dL","system":"http://unitsofmeasure.org","code":"mg/dL"}}`;
      const r = await post('ehr-b', Buffer.from(obs('prec-1', '72.50')));
      expect(r.status).toBe(202);
      expect((await settle(r.inboxId)).outcome).toMatchObject({ stored: 1 });
      const stored = await service.database.store.resources.readCurrent('Observation', anchorId('ehr-b', 'Observation', 'prec-1'));
      expect((stored?.resource as { valueQuantity?: unknown } | undefined)?.valueQuantity).toEqual({
        value: 72.5,
        unit: 'mg/dL',
        system: 'http://unitsofmeasure.org',
        code: 'mg/dL',
        _value: { extension: [{ url: 'http://hl7.org/fhir/StructureDefinition/quantity-precision', valueInteger: 2 }] },
      });
      const dup = await hook('ehr-b', obs('dup-1', '72.5').replace('"status":"final"', '"status":"final","status":"entered-in-error"'));
      expect(dup.status).toBe(202);
      const answer = await json(dup);
      expect(answer.issue[1]).toMatchObject({ severity: 'warning', expression: ['Observation.status'] });
      expect((await settle(dup.headers.get('x-inbox-id')!)).outcome).toMatchObject({ stored: 0, deadLetters: 1 });
      expect(await service.database.store.resources.readCurrent('Observation', anchorId('ehr-b', 'Observation', 'dup-1'))).toBeUndefined();
      expect(await (await fetch(`${base}/metrics`)).text()).toMatch(/^fhir_anchor_dead_letters\{source="ehr-b",reason="invalid-structure",state="open"\} [1-9]\d*$/m);
    });

    it('stores a non-conforming resource, flagged with its OperationOutcome', async () => {
      const r = await post('ehr-b', Buffer.from(JSON.stringify({ resourceType: 'Observation', id: 'bad-obs', code: { text: 'no status' } })));
      const s = await settle(r.inboxId);
      expect(s.outcome).toMatchObject({ stored: 1, invalid: 1 });
      const id = anchorId('ehr-b', 'Observation', 'bad-obs');
      const v = await service.database.store.resources.readValidation('Observation', id, '1');
      expect(v?.valid).toBe(false);
      expect(JSON.stringify(v?.outcome)).toMatch(/status/);
    });

    it('labels sensitive data on ingest (DS4P) so consent can deny it', async () => {
      const condition = { resourceType: 'Condition', id: 'psy-1', subject: { reference: 'Patient/order-1' }, code: { coding: [{ system: 'http://hl7.org/fhir/sid/icd-10-cm', code: 'F33.1' }] } };
      const r = await post('ehr-b', Buffer.from(JSON.stringify(condition)));
      await settle(r.inboxId);
      const stored = await service.database.store.resources.readCurrent('Condition', anchorId('ehr-b', 'Condition', 'psy-1'));
      const codes = (stored!.resource!.meta?.security ?? []).map((c) => c.code);
      expect(codes).toEqual(expect.arrayContaining(['PSY', 'R']));
    });

    it('links one person\'s patients across sources by a configured identifier', async () => {
      const ssn = { system: 'http://hl7.org/fhir/sid/us-ssn', value: '999-12-3456' };
      const a = await post('ehr-b', Buffer.from(JSON.stringify({ resourceType: 'Patient', id: 'link-b', identifier: [ssn], name: [{ family: 'Doe' }], gender: 'male' })));
      await settle(a.inboxId);
      const b = await post('ehr-live', Buffer.from(JSON.stringify({ resourceType: 'Patient', id: 'link-live', identifier: [ssn], name: [{ family: 'Doe' }], gender: 'male' })));
      await settle(b.inboxId);
      const idB = anchorId('ehr-b', 'Patient', 'link-b');
      const idLive = anchorId('ehr-live', 'Patient', 'link-live');
      const pb = (await service.database.store.resources.readCurrent('Patient', idB))!.resource as unknown as { link?: Array<{ other: { reference: string } }> };
      const pl = (await service.database.store.resources.readCurrent('Patient', idLive))!.resource as unknown as { link?: Array<{ other: { reference: string } }> };
      expect(pb.link?.map((l) => l.other.reference)).toEqual([`Patient/${idLive}`]);
      expect(pl.link?.map((l) => l.other.reference)).toEqual([`Patient/${idB}`]);
    });
  });

  describe('bad input', () => {
    it('answers 400 with an OperationOutcome and keeps a dead letter for input that is not FHIR', async () => {
      const res = await hook('ehr-b', '{"resourceType": "Patient", "id": ');
      expect(res.status).toBe(400);
      const oo = await json(res);
      expect(oo.issue[0].details.text).toBe('Notification body is not valid JSON');
      const letters = await json(await admin('/admin/dead-letters?source=ehr-b&open=true'));
      const letter = letters.find((l: { inboxId: string }) => l.inboxId === res.headers.get('x-inbox-id'));
      expect(letter.reason).toBe('unparseable');
      expect((await admin(`/admin/dead-letters/${letter.id}/replay`, { method: 'POST' })).status).toBe(409);
      const item = await json(await admin(`/admin/inbox/${res.headers.get('x-inbox-id')}`));
      expect(item).toMatchObject({ state: 'dead', kind: 'rejected' });
      expect(item.body).toBeUndefined();
    });

    it('tells the sender at once that a bare resource is not FHIR R4 (unknown type, unknown element, wrong JSON shape), with a 202 and a dead letter, not a 4xx', async () => {
      const cases: Array<[string, RegExp, string]> = [
        ['{"resourceType":"Foo","id":"f1"}', /unknown resourceType "Foo"/, 'resourceType'],
        ['{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"},"valueQuantyti":{"value":1}}', /unknown property "valueQuantyti"/, 'Observation.valueQuantyti'],
        ['{"resourceType":"Observation","id":"o2","status":5,"code":{"text":"x"}}', /expected string, got number/, 'Observation.status'],
        ['{"resourceType":"Patient","id":"p1","name":{"family":"Not an array"}}', /expected an array/, 'Patient.name'],
      ];
      for (const [body, text, expression] of cases) {
        const res = await hook('ehr-b', body);
        // A 4xx could make the EHR turn the Subscription to `error` and stop sending everything else.
        expect(res.status).toBe(202);
        const oo = await json(res);
        expect(oo.issue[0].details.text).toBe('Received, but nothing in it can be applied: kept as a dead letter');
        expect(oo.issue[1]).toMatchObject({ severity: 'warning', details: { text: expect.stringMatching(text) }, expression: [expression] });
        const inboxId = res.headers.get('x-inbox-id')!;
        const s = await settle(inboxId);
        expect(s).toMatchObject({ state: 'done', outcome: { stored: 0, deadLetters: 1 } });
        const letters = await json(await admin('/admin/dead-letters?source=ehr-b&open=true'));
        const letter = letters.find((l: { inboxId: string }) => l.inboxId === inboxId);
        expect(letter).toMatchObject({ reason: 'invalid-structure', outcome: { issue: [expect.objectContaining({ details: { text: expect.stringMatching(text) }, expression: [expression] })] } });
      }
      // The same resource made valid is accepted: the check refuses shapes, not content it does not know.
      const fixed = await hook('ehr-b', '{"resourceType":"Observation","id":"o2","status":"final","code":{"text":"x"}}');
      expect(fixed.status).toBe(202);
      expect((await json(fixed)).issue).toEqual([expect.objectContaining({ details: { text: 'Accepted: 1 entry queued' } })]);
    });

    it('dead-letters only the bad entry of a bundle and stores the good ones beside it', async () => {
      const bundle = {
        resourceType: 'Bundle',
        type: 'batch',
        entry: [
          { resource: { resourceType: 'Organization', id: 'good-1', name: 'Good' }, request: { method: 'PUT', url: 'Organization/good-1' } },
          { resource: { resourceType: 'NotAType', id: 'x' }, request: { method: 'PUT', url: 'NotAType/x' } },
          { resource: { resourceType: 'Organization', id: 'good-2', name: 'Also good', active: 'yes-ish' }, request: { method: 'PUT', url: 'Organization/good-2' } },
        ],
      };
      const res = await hook('ehr-b', Buffer.from(JSON.stringify(bundle)));
      expect(res.status).toBe(202);
      const oo = (await res.json()) as { issue: Array<{ severity: string; expression?: string[]; details?: { text?: string } }> };
      expect(oo.issue.filter((i) => i.severity === 'warning')).toEqual([
        expect.objectContaining({ expression: ['Bundle.entry[1]'], details: { text: expect.stringMatching(/^Bundle.entry\[1\].resource is not FHIR R4: unknown resourceType "NotAType"/) } }),
        expect.objectContaining({ expression: ['Bundle.entry[2]'], details: { text: expect.stringMatching(/expected boolean, got string \(Organization.active\)/) } }),
      ]);
      const r = { inboxId: res.headers.get('x-inbox-id')! };
      const s = await settle(r.inboxId);
      expect(s.state).toBe('done');
      expect(s.outcome.stored).toBeGreaterThanOrEqual(1);
      expect(s.outcome.deadLetters).toBeGreaterThanOrEqual(1);
      expect(await service.database.store.resources.readCurrent('Organization', anchorId('ehr-b', 'Organization', 'good-1'))).toBeDefined();
      const letters = await json(await admin('/admin/dead-letters?source=ehr-b'));
      expect(letters.some((l: { inboxId: string; entryIndex: number; reason: string }) => l.inboxId === r.inboxId && l.entryIndex === 1 && l.reason === 'invalid-structure')).toBe(true);
    });

    it('stores the good entries of a Bundle beside entries that are not resources or hold unstorable text, and says which were not applied', async () => {
      const bundle = {
        resourceType: 'Bundle',
        type: 'transaction',
        entry: [
          { resource: { resourceType: 'Organization', id: 'mixed-1', name: 'Good' }, request: { method: 'PUT', url: 'Organization/mixed-1' } },
          { resource: 'not a resource', request: { method: 'PUT', url: 'Organization/x' } },
          // JSON.parse accepts these escapes; PostgreSQL's jsonb refuses NUL and lone surrogates.
          { resource: { resourceType: 'Organization', id: 'mixed-nul', name: 'a\u0000b' }, request: { method: 'PUT', url: 'Organization/mixed-nul' } },
          { resource: { resourceType: 'Organization', id: 'mixed-sur', name: 'a\ud800b' }, request: { method: 'PUT', url: 'Organization/mixed-sur' } },
          { resource: { resourceType: 'Organization', id: 'mixed-2', name: 'J\u00fcrgen \u{1F600}' }, request: { method: 'PUT', url: 'Organization/mixed-2' } },
        ],
      };
      const res = await hook('ehr-b', Buffer.from(JSON.stringify(bundle)));
      expect(res.status).toBe(202);
      const oo = (await res.json()) as { issue: Array<{ severity: string; expression?: string[]; details?: { text?: string } }> };
      expect(oo.issue[0]!.details?.text).toBe('Accepted: 2 entries queued');
      expect(oo.issue.filter((i) => i.severity === 'warning').map((i) => i.expression?.[0])).toEqual(['Bundle.entry[1]', 'Bundle.entry[2]', 'Bundle.entry[3]']);
      expect(oo.issue.find((i) => i.expression?.[0] === 'Bundle.entry[2]')?.details?.text).toMatch(/not FHIR R4: .*U\+0000.*\(\.name\)/);
      const s = await settle(res.headers.get('x-inbox-id')!);
      expect(s.state).toBe('done');
      expect(s.outcome.stored).toBe(2);
      expect(s.outcome.deadLetters).toBe(3);
      const stored = await service.database.store.resources.readCurrent('Organization', anchorId('ehr-b', 'Organization', 'mixed-2'));
      expect((stored?.resource as { name?: string } | undefined)?.name).toBe('J\u00fcrgen \u{1F600}');
      expect(await service.database.store.resources.readCurrent('Organization', anchorId('ehr-b', 'Organization', 'mixed-1'))).toBeDefined();
      expect(await service.database.store.resources.readCurrent('Organization', anchorId('ehr-b', 'Organization', 'mixed-nul'))).toBeUndefined();
      const letters = (await json(await admin('/admin/dead-letters?source=ehr-b'))) as Array<{ inboxId: string; entryIndex: number; reason: string; outcome: { issue: Array<{ details?: { text?: string } }> } }>;
      const mine = letters.filter((l) => l.inboxId === res.headers.get('x-inbox-id')).sort((a, b) => a.entryIndex - b.entryIndex);
      expect(mine.map((l) => [l.entryIndex, l.reason])).toEqual([
        [1, 'invalid-structure'],
        [2, 'invalid-structure'],
        [3, 'invalid-structure'],
      ]);
      expect(mine[1]!.outcome.issue.map((i) => i.details?.text).join(' ')).toMatch(/U\+0000/);
      expect(mine[2]!.outcome.issue.map((i) => i.details?.text).join(' ')).toMatch(/lone UTF-16 surrogate/);
    });

    it('dead-letters an entry whose number is beyond a double instead of storing it as null, and stores the entry beside it', async () => {
      const obs = (id: string, value: string) =>
        `{"resource":{"resourceType":"Observation","id":"${id}","status":"final","code":{"text":"x"},"valueQuantity":{"value":${value}}},"request":{"method":"PUT","url":"Observation/${id}"}}`;
      const body = `{"resourceType":"Bundle","type":"batch","entry":[${obs('num-ok', '72.5')},${obs('num-inf', '1e400')}]}`;
      const r = await post('ehr-b', Buffer.from(body));
      expect(r.status).toBe(202);
      const s = await settle(r.inboxId);
      expect(s.outcome).toMatchObject({ stored: 1, deadLetters: 1 });
      const ok = await service.database.store.resources.readCurrent('Observation', anchorId('ehr-b', 'Observation', 'num-ok'));
      expect((ok?.resource as { valueQuantity?: { value?: number } } | undefined)?.valueQuantity?.value).toBe(72.5);
      expect(await service.database.store.resources.readCurrent('Observation', anchorId('ehr-b', 'Observation', 'num-inf'))).toBeUndefined();
      const letters = (await json(await admin('/admin/dead-letters?source=ehr-b'))) as Array<{ inboxId: string; entryIndex: number; outcome: { issue: Array<{ details?: { text?: string }; expression?: string[] }> } }>;
      const letter = letters.find((l) => l.inboxId === r.inboxId)!;
      expect(letter.entryIndex).toBe(1);
      expect(letter.outcome.issue[0]).toMatchObject({ details: { text: expect.stringMatching(/number is out of range/) }, expression: ['.valueQuantity.value'] });
    });

    it('ingests a resource with a very long array and the entry beside it (no argument spread of input arrays)', async () => {
      // 160,000 given names: `stack.push(...array)` threw "Maximum call stack size exceeded" from about
      // 130,000 items, failing the whole notification.
      const given = Array.from({ length: 160_000 }, (_, i) => `g${i}`);
      const bundle = {
        resourceType: 'Bundle',
        type: 'batch',
        entry: [
          { resource: { resourceType: 'Patient', id: 'long-array', name: [{ family: 'F', given }] }, request: { method: 'PUT', url: 'Patient/long-array' } },
          { resource: { resourceType: 'Organization', id: 'beside-long', name: 'S' }, request: { method: 'PUT', url: 'Organization/beside-long' } },
        ],
      };
      const r = await post('ehr-b', Buffer.from(JSON.stringify(bundle)));
      expect(r.status).toBe(202);
      const s = await settle(r.inboxId, 60_000);
      expect(s.state).toBe('done');
      expect(s.outcome.stored).toBe(2);
      const stored = await service.database.store.resources.readCurrent('Patient', anchorId('ehr-b', 'Patient', 'long-array'));
      expect((stored?.resource as { name?: Array<{ given?: string[] }> } | undefined)?.name?.[0]?.given?.length).toBe(160_000);
      expect(await service.database.store.resources.readCurrent('Organization', anchorId('ehr-b', 'Organization', 'beside-long'))).toBeDefined();
    }, 60_000);

    it('stores the rest of a batch when the database refuses one version, which becomes a dead letter', async () => {
      // Fault injection in the database itself: a trigger refuses one resource with a data exception
      // (SQLSTATE 22023), as PostgreSQL would refuse a value no check before the store caught.
      const sql = new pg.Client({ connectionString: TEST_DATABASE_URL });
      await sql.connect();
      const schema = `"${config.databaseSchema}"`;
      try {
        await sql.query(`CREATE FUNCTION ${schema}.refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
                         BEGIN IF NEW.content->>'name' = 'poison' THEN RAISE EXCEPTION 'refused by test' USING ERRCODE = '22023'; END IF; RETURN NEW; END $$`);
        await sql.query(`CREATE TRIGGER refuse_poison BEFORE INSERT ON ${schema}.resource_history FOR EACH ROW EXECUTE FUNCTION ${schema}.refuse_poison()`);
        const org = (id: string, name: string) => ({ resource: { resourceType: 'Organization', id, name }, request: { method: 'PUT', url: `Organization/${id}` } });
        const bundle = { resourceType: 'Bundle', type: 'batch', entry: [org('refused-1', 'poison'), org('refused-beside-1', 'fine'), org('refused-beside-2', 'also fine')] };
        const r = await post('ehr-b', Buffer.from(JSON.stringify(bundle)));
        const s = await settle(r.inboxId);
        expect(s.state).toBe('done');
        expect(s.outcome).toMatchObject({ stored: 2, deadLetters: 1 });
        for (const id of ['refused-beside-1', 'refused-beside-2']) {
          expect(await service.database.store.resources.readCurrent('Organization', anchorId('ehr-b', 'Organization', id))).toBeDefined();
        }
        expect(await service.database.store.resources.readCurrent('Organization', anchorId('ehr-b', 'Organization', 'refused-1'))).toBeUndefined();
        const letters = (await json(await admin('/admin/dead-letters?source=ehr-b'))) as Array<{ inboxId: string; entryIndex: number; reason: string; outcome: { issue: Array<{ details?: { text?: string } }> } }>;
        const letter = letters.find((l) => l.inboxId === r.inboxId)!;
        expect(letter).toMatchObject({ entryIndex: 0, reason: 'store-refused' });
        expect(letter.outcome.issue[0]!.details?.text).toMatch(/SQLSTATE 22023/);
      } finally {
        await sql.query(`DROP TRIGGER IF EXISTS refuse_poison ON ${schema}.resource_history`);
        await sql.query(`DROP FUNCTION IF EXISTS ${schema}.refuse_poison()`);
        await sql.end();
      }
    });

    it('does not take a new event for a repeat when the source\'s event numbering restarted', async () => {
      const url = 'https://ehr-b.example/fhir/Subscription/restarted';
      const cls = { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' };
      const note = (id: string) =>
        buildNotificationBundle({
          subscriptionUrl: url,
          topic: 'http://example.org/topics/encounter-start',
          type: 'event-notification',
          eventsSinceSubscriptionStart: 1,
          content: 'full-resource',
          baseUrl: 'https://ehr-b.example/fhir',
          events: [{ eventNumber: 1, timestamp: new Date().toISOString(), focus: { resourceType: 'Encounter', id, meta: { versionId: '1' }, status: 'in-progress', class: cls } as Resource }],
        });
      const first = await post('ehr-b', Buffer.from(JSON.stringify(note('restart-a'))));
      expect(first.status).toBe(202);
      expect((await settle(first.inboxId)).state).toBe('done');
      // Event 1 again, about another encounter: the numbering restarted. It used to answer 200 "already received".
      const second = await post('ehr-b', Buffer.from(JSON.stringify(note('restart-b'))));
      expect(second.status).toBe(202);
      expect((await settle(second.inboxId)).state).toBe('done');
      expect(await service.database.store.resources.readCurrent('Encounter', anchorId('ehr-b', 'Encounter', 'restart-b'))).toBeDefined();
      // A true redelivery of the second is still stored once.
      expect((await post('ehr-b', Buffer.from(JSON.stringify(note('restart-b'))))).status).toBe(200);
    });

    it('never answers 5xx to arbitrary bytes from an authenticated source (property)', async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.oneof(
            fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b)),
            fc.json().map((j) => Buffer.from(j)),
            fc.record({ resourceType: fc.constantFrom('Patient', 'Bundle', 'Observation', '__proto__', 'constructor'), id: fc.string({ maxLength: 70 }), entry: fc.anything() }).map((o) => Buffer.from(JSON.stringify(o))),
          ),
          fc.constantFrom('application/fhir+json', 'application/json', 'text/plain', 'application/octet-stream'),
          async (body, contentType) => {
            const res = await hook('ehr-b', body, { 'content-type': contentType });
            const text = await res.text();
            expect(res.status).toBeGreaterThanOrEqual(200);
            expect(res.status).toBeLessThan(500);
            if (res.status >= 400) expect(JSON.parse(text).resourceType).toBe('OperationOutcome');
          },
        ),
        { numRuns: 80 },
      );
    });
  });

  describe('Subscriptions Backport IG with a live source EHR', () => {
    const topic = 'http://example.org/topics/encounter-start';

    /**
     * Registers `sourceId` for `ehr`, gives the EHR a Subscription (`sub-{prefix}`) to our hook and three
     * recorded Encounter events (`{prefix}-1..3`); `note(k)` is the notification of event k (0-based).
     */
    async function sourceWithThreeEvents(ehr: FakeEhr, sourceId: string, prefix: string, content: 'id-only' | 'full-resource') {
      const created = await admin('/admin/sources', { method: 'POST', body: JSON.stringify({ id: sourceId, name: sourceId, baseUrl: ehr.baseUrl, hookAuth: { bearerToken: BEARER } }) });
      expect(created.status).toBe(201);
      const sub = `sub-${prefix}`;
      ehr.seed({ resourceType: 'Subscription', id: sub, status: 'active', reason: 'test', criteria: topic, channel: { type: 'rest-hook', endpoint: `${base}/hooks/${sourceId}`, payload: 'application/fhir+json' } });
      const url = `${ehr.baseUrl}/Subscription/${sub}`;
      const cls = { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' };
      const events = (['in-progress', 'in-progress', 'finished'] as const).map((status, i) => {
        const focus: Resource = ehr.seed({ resourceType: 'Encounter', id: `${prefix}-${i + 1}`, status, class: cls });
        return { focus, number: ehr.recordEvent(sub, focus) };
      });
      const now = new Date().toISOString();
      const note = (k: number) =>
        buildNotificationBundle({ subscriptionUrl: url, topic, type: 'event-notification', eventsSinceSubscriptionStart: events[k]!.number, content, baseUrl: ehr.baseUrl, events: [{ eventNumber: events[k]!.number, timestamp: now, focus: events[k]!.focus }] });
      return { url, numbers: events.map((e) => e.number), note };
    }
    let subscriptionUrl: string;

    beforeAll(() => {
      subscriptionUrl = `${ehr.baseUrl}/Subscription/sub-1`;
    });

    it('acknowledges handshakes and heartbeats and records them', async () => {
      expect((await hook('ehr-live', JSON.stringify(buildHandshake(subscriptionUrl, topic, ehr.baseUrl)))).status).toBe(200);
      expect((await hook('ehr-live', JSON.stringify(buildHeartbeat(subscriptionUrl, topic, ehr.baseUrl, 0)))).status).toBe(200);
      const status = await json(await admin('/admin/sources/ehr-live/status'));
      expect(status.subscriptions[0]).toMatchObject({ subscription: subscriptionUrl, topic });
      expect(status.subscriptions[0].lastHeartbeat).not.toBeNull();
    });

    it('fetches id-only payloads back from the source, and catches up a gap with $events', async () => {
      ehr.seed({ resourceType: 'Subscription', id: 'sub-1', status: 'active', reason: 'test', criteria: topic, channel: { type: 'rest-hook', endpoint: `${base}/hooks/ehr-live`, payload: 'application/fhir+json' } });
      const enc1 = ehr.seed({ resourceType: 'Encounter', id: 'enc-1', status: 'in-progress', class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' } });
      const n1 = ehr.recordEvent('sub-1', enc1);
      const enc2 = ehr.seed({ resourceType: 'Encounter', id: 'enc-2', status: 'in-progress', class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' } });
      const n2 = ehr.recordEvent('sub-1', enc2);
      const enc3 = ehr.seed({ resourceType: 'Encounter', id: 'enc-3', status: 'finished', class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' } });
      const n3 = ehr.recordEvent('sub-1', enc3);
      const now = new Date().toISOString();
      const first = buildNotificationBundle({ subscriptionUrl, topic, type: 'event-notification', eventsSinceSubscriptionStart: n1, content: 'id-only', baseUrl: ehr.baseUrl, events: [{ eventNumber: n1, timestamp: now, focus: enc1 }] });
      const r1 = await post('ehr-live', Buffer.from(JSON.stringify(first)));
      expect(r1.status).toBe(202);
      expect((await settle(r1.inboxId)).outcome).toMatchObject({ fetched: 1, stored: 1 });
      // Event n2 never arrives; n3 does: the gap is caught up through the source's $events.
      const third = buildNotificationBundle({ subscriptionUrl, topic, type: 'event-notification', eventsSinceSubscriptionStart: n3, content: 'id-only', baseUrl: ehr.baseUrl, events: [{ eventNumber: n3, timestamp: now, focus: enc3 }] });
      const r3 = await post('ehr-live', Buffer.from(JSON.stringify(third)));
      const s3 = await settle(r3.inboxId);
      expect(s3.outcome).toMatchObject({ gaps: 1 });
      for (const id of ['enc-1', 'enc-2', 'enc-3']) {
        expect(await service.database.store.resources.readCurrent('Encounter', anchorId('ehr-live', 'Encounter', id))).toBeDefined();
      }
      const status = await json(await admin('/admin/sources/ehr-live/status'));
      const sub = status.subscriptions.find((s: { subscription: string }) => s.subscription === subscriptionUrl);
      expect(sub.lastEventNumber).toBe(n3);
      expect(sub.gaps).toEqual([expect.objectContaining({ from: n2, to: n2, catchUp: '$events' })]);
      // A replayed notification is stored once.
      expect((await post('ehr-live', Buffer.from(JSON.stringify(third)))).status).toBe(200);
    });

    it('catches up the events a heartbeat counts that never arrived, and follows a restart of the numbering', async () => {
      // An EHR of its own: a Subscription on the shared one would change what other tests see.
      const hbEhr = await startFakeEhr({ capability: 'backport' });
      try {
      const { url, numbers, note } = await sourceWithThreeEvents(hbEhr, 'ehr-hb', 'hb', 'id-only');
      const ehr = hbEhr;
      const subscriptionStatus = async () => (await json(await admin('/admin/sources/ehr-hb/status'))).subscriptions.find((s: { subscription: string }) => s.subscription === url);
      // The handshake's count (0) is the baseline; event 1 arrives.
      expect((await hook('ehr-hb', JSON.stringify(buildHandshake(url, topic, ehr.baseUrl)))).status).toBe(200);
      const r1 = await post('ehr-hb', Buffer.from(JSON.stringify(note(0))));
      expect((await settle(r1.inboxId)).outcome).toMatchObject({ fetched: 1, stored: 1, gaps: 0 });
      // Events 2 and 3 never arrive, and no later event reveals them: the heartbeat counting 3 does.
      const hb = await hook('ehr-hb', JSON.stringify(buildHeartbeat(url, topic, ehr.baseUrl, numbers[2]!)));
      expect(hb.status).toBe(200);
      expect((await json(hb)).issue[0].details.text).toBe(`heartbeat acknowledged; events ${numbers[1]}..${numbers[2]} were not received and will be caught up from the source`);
      const inboxId = hb.headers.get('x-inbox-id')!;
      expect(inboxId).toBeTruthy();
      expect(await settle(inboxId)).toMatchObject({ state: 'done', outcome: { gaps: 1 } });
      for (const id of ['hb-2', 'hb-3']) {
        expect(await service.database.store.resources.readCurrent('Encounter', anchorId('ehr-hb', 'Encounter', id))).toBeDefined();
      }
      expect(await subscriptionStatus()).toMatchObject({ lastEventNumber: numbers[2], reportedEvents: numbers[2], gaps: [expect.objectContaining({ from: numbers[1], to: numbers[2], catchUp: '$events' })], restarts: [] });
      // The same count again: nothing is missing, nothing is kept.
      const again = await hook('ehr-hb', JSON.stringify(buildHeartbeat(url, topic, ehr.baseUrl, numbers[2]!)));
      expect(again.status).toBe(200);
      expect(again.headers.get('x-inbox-id')).toBeNull();
      expect((await json(again)).issue[0].details.text).toBe('heartbeat acknowledged');
      // A handshake counting 0 (the Subscription re-created under the same id): the numbering started
      // again, so event 1 of the new numbering is not taken for a replay, and a gap after it is found.
      expect((await hook('ehr-hb', JSON.stringify(buildHandshake(url, topic, ehr.baseUrl)))).status).toBe(200);
      expect(await subscriptionStatus()).toMatchObject({ lastEventNumber: 0, restarts: [expect.objectContaining({ from: numbers[2], to: 0, by: 'handshake' })] });
      // The same, for monitoring: per-source gauges read from the database at scrape time.
      const metrics = await (await fetch(`${base}/metrics`)).text();
      expect(metrics).toMatch(/^fhir_anchor_subscription_gaps\{source="ehr-hb"\} 1$/m);
      expect(metrics).toMatch(/^fhir_anchor_subscription_restarts\{source="ehr-hb"\} 1$/m);
      expect(metrics).toMatch(/^fhir_anchor_subscription_heartbeat_age_seconds\{source="ehr-hb"\} \d+(\.\d+)?(e[-+]?\d+)?$/m);
      } finally {
        await hbEhr.close();
      }
    });

    it('dead-letters a fetched-back resource that is not FHIR R4, with its place, and stores the one beside it', async () => {
      // A subscription of its own (first numbers: no gap to catch up); the EHR keeps no Subscription for it.
      const sub = `${ehr.baseUrl}/Subscription/sub-fetch-bad`;
      const good = ehr.seed({ resourceType: 'Encounter', id: 'fetch-good', status: 'finished', class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' } });
      const bad = ehr.seed({ resourceType: 'Encounter', id: 'fetch-bad', status: 'finished', class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' }, statusHistroy: [] } as unknown as Encounter);
      const [ng, nb] = [1, 2];
      const now = new Date().toISOString();
      const note = buildNotificationBundle({ subscriptionUrl: sub, topic, type: 'event-notification', eventsSinceSubscriptionStart: nb, content: 'id-only', baseUrl: ehr.baseUrl, events: [{ eventNumber: ng, timestamp: now, focus: good }, { eventNumber: nb, timestamp: now, focus: bad }] });
      const r = await post('ehr-live', Buffer.from(JSON.stringify(note)));
      expect(r.status).toBe(202);
      expect((await settle(r.inboxId)).outcome).toMatchObject({ fetched: 2, stored: 1, deadLetters: 1 });
      expect(await service.database.store.resources.readCurrent('Encounter', anchorId('ehr-live', 'Encounter', 'fetch-good'))).toBeDefined();
      expect(await service.database.store.resources.readCurrent('Encounter', anchorId('ehr-live', 'Encounter', 'fetch-bad'))).toBeUndefined();
      const letters = (await json(await admin('/admin/dead-letters?source=ehr-live'))) as Array<{ inboxId: string; reason: string; outcome: { issue: Array<{ expression?: string[] }> } }>;
      expect(letters.filter((l) => l.inboxId === r.inboxId)).toEqual([
        expect.objectContaining({ reason: 'invalid-structure', outcome: { resourceType: 'OperationOutcome', issue: [expect.objectContaining({ expression: ['Encounter.statusHistroy'] })] } }),
      ]);
    });

    it.each<[string, string, unknown, RegExp]>([
      ['an OperationOutcome', 'oo', { resourceType: 'OperationOutcome', issue: [{ severity: 'information', code: 'informational' }] }, /failed \(.*expected Bundle, got OperationOutcome\)/],
      ['a document Bundle', 'doc', { resourceType: 'Bundle', type: 'document', entry: [] }, /answered no notification Bundle/],
    ])('falls back to a _lastUpdated search when the source\'s $events answers %s', async (_label, tag, eventsBody, why) => {
      // A source that advertises $events but answers it with something else (200).
      const garbled = await startFakeEhr({ capability: 'backport', eventsBody });
      const sourceId = `ehr-garbled-${tag}`;
      try {
        const { note } = await sourceWithThreeEvents(garbled, sourceId, 'g', 'id-only');
        expect((await settle((await post(sourceId, Buffer.from(JSON.stringify(note(0))))).inboxId)).outcome).toMatchObject({ stored: 1 });
        // Event 2 never arrives; the gap's $events answer is unusable, so the search must find g-2.
        const s3 = await settle((await post(sourceId, Buffer.from(JSON.stringify(note(2))))).inboxId);
        expect(s3.state).toBe('done');
        expect(s3.outcome).toMatchObject({ gaps: 1 });
        const notes = (s3.outcome.notes as string[]).join(' ');
        expect(notes).toMatch(why);
        expect(notes).toMatch(/; _lastUpdated search since .* over Encounter/);
        for (const id of ['g-1', 'g-2', 'g-3']) {
          expect(await service.database.store.resources.readCurrent('Encounter', anchorId(sourceId, 'Encounter', id))).toBeDefined();
        }
        // The unusable answer itself is not taken for data.
        expect((await service.database.store.resources.countsByType()).map((c) => c.resourceType)).not.toContain('OperationOutcome');
      } finally {
        await garbled.close();
      }
    });

    it('adopts the EHR\'s Subscription to our hook, and re-creates one the EHR turned off', async () => {
      const put = await admin('/admin/sources/ehr-live', {
        method: 'PUT',
        body: JSON.stringify({ name: 'EHR live', baseUrl: ehr.baseUrl, hookAuth: { bearerToken: BEARER }, subscribe: { topics: [topic], payload: 'id-only' } }),
      });
      expect(put.status).toBe(200);
      // The EHR already has an active Subscription for the topic to our hook (sub-1, from the test before):
      // it is adopted, not duplicated.
      const first = await json(await admin('/admin/sources/ehr-live/subscriptions/check', { method: 'POST' }));
      expect(first).toMatchObject({ sourceId: 'ehr-live', topicCapable: true, healthy: true, subscriptions: [expect.objectContaining({ action: 'existing', id: 'sub-1' })] });
      expect(ehr.subscriptions().filter((s) => s.criteria === topic && s.status === 'active')).toHaveLength(1);
      // The EHR turns it off: fhir-anchor creates its own, with the source's secret.
      ehr.setSubscriptionStatus('sub-1', 'off');
      expect(JSON.stringify(await json(await admin('/admin/sources/ehr-live/subscriptions/check', { method: 'POST' })))).toContain('recreated');
      const ours = () => ehr.subscriptions().filter((s) => s.criteria === topic && s.meta?.tag?.some((t) => t.system === 'urn:fhir-anchor:subscription'));
      const created = ours();
      expect(created).toHaveLength(1);
      expect(created[0]!.channel.endpoint).toMatch(/\/hooks\/ehr-live$/);
      expect(created[0]!.channel.header?.[0]).toBe(`Authorization: Bearer ${BEARER}`);
      // Idempotent, then the EHR turns it off: it is re-created.
      await admin('/admin/sources/ehr-live/subscriptions/check', { method: 'POST' });
      expect(ours().filter((s) => s.status !== 'off')).toHaveLength(1);
      ehr.setSubscriptionStatus(created[0]!.id!, 'off');
      const again = await json(await admin('/admin/sources/ehr-live/subscriptions/check', { method: 'POST' }));
      expect(JSON.stringify(again)).toContain('recreated');
      expect(ours().filter((s) => s.status === 'active')).toHaveLength(1);
    });

    it('ingests full-resource payloads without calling the source', async () => {
      const before = ehr.requests.length;
      const enc = { resourceType: 'Encounter' as const, id: 'enc-full', status: 'finished' as const, class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'IMP' }, meta: { versionId: '1', lastUpdated: new Date().toISOString() } };
      const n = buildNotificationBundle({ subscriptionUrl: `${ehr.baseUrl}/Subscription/sub-full`, topic, type: 'event-notification', eventsSinceSubscriptionStart: 1, content: 'full-resource', baseUrl: ehr.baseUrl, events: [{ eventNumber: 1, timestamp: new Date().toISOString(), focus: enc }] });
      const r = await post('ehr-live', Buffer.from(JSON.stringify(n)));
      expect((await settle(r.inboxId)).outcome).toMatchObject({ stored: 1, fetched: 0 });
      expect(ehr.requests.slice(before).filter((q) => q.path.includes('/Encounter/'))).toEqual([]);
    });

    it('turns notifications without payload (R4 rest-hook, no channel.payload) into searches since the previous one', async () => {
      const classic = await startFakeEhr({ capability: 'classic' });
      for (const [id, subscribe] of [
        ['ehr-classic', { resourceTypes: ['Encounter'] }],
        ['ehr-classic-untyped', undefined],
      ] as const) {
        const res = await admin('/admin/sources', { method: 'POST', body: JSON.stringify({ id, name: id, baseUrl: classic.baseUrl, hookAuth: { bearerToken: BEARER }, ...(subscribe ? { subscribe } : {}) }) });
        expect(res.status).toBe(201);
      }
      const amb = { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' };
      classic.seed({ resourceType: 'Encounter', id: 'enc-ping-1', status: 'finished', class: amb });
      // HAPI FHIR posts an empty form request to the endpoint.
      const ping = { 'content-type': 'application/x-www-form-urlencoded' };
      const r1 = await post('ehr-classic', Buffer.alloc(0), ping);
      expect(r1.status).toBe(202);
      const s1 = await settle(r1.inboxId);
      expect(s1.state).toBe('done');
      expect(s1.outcome).toMatchObject({ stored: 1 });
      expect(JSON.stringify(s1.outcome.notes)).toContain('notification without payload');
      expect(await service.database.store.resources.readCurrent('Encounter', anchorId('ehr-classic', 'Encounter', 'enc-ping-1'))).toBeDefined();

      // The next ping is not taken for a duplicate of the first; it searches from the first one's
      // arrival less the clock margin, so the first change comes again as a duplicate.
      classic.seed({ resourceType: 'Encounter', id: 'enc-ping-2', status: 'in-progress', class: amb });
      const before = classic.requests.length;
      const r2 = await post('ehr-classic', Buffer.alloc(0), ping);
      expect(r2.status).toBe(202);
      expect(r2.inboxId).not.toBe(r1.inboxId);
      expect((await settle(r2.inboxId)).outcome).toMatchObject({ stored: 1, duplicates: 1 });
      const first = await service.database.store.inbox.get(r1.inboxId);
      const searched = classic.requests.slice(before).find((q) => q.path.endsWith('/Encounter') && q.method === 'GET');
      expect(searched?.query._lastUpdated).toBe(`ge${new Date(first!.receivedAt.getTime() - PING_CLOCK_MARGIN_MS).toISOString()}`);

      // A bodiless PUT names the resource to fetch back.
      classic.seed({ resourceType: 'Encounter', id: 'enc-ping-3', status: 'finished', class: amb });
      const put = await hook('ehr-classic', Buffer.alloc(0), {}, 'PUT', '/Encounter/enc-ping-3');
      expect(put.status).toBe(202);
      expect((await settle(put.headers.get('x-inbox-id')!)).outcome).toMatchObject({ fetched: 1, stored: 1 });

      // Without subscribed types there is nothing to search: a dead letter that says what to set.
      const r4 = await post('ehr-classic-untyped', Buffer.alloc(0), ping);
      expect(r4.status).toBe(202);
      expect((await settle(r4.inboxId)).state).toBe('dead');
      const letters = await json(await admin('/admin/dead-letters?source=ehr-classic-untyped&open=true'));
      expect(letters).toHaveLength(1);
      expect(letters[0].reason).toBe('unresolvable');
      expect(JSON.stringify(letters[0].outcome)).toContain('subscribe.resourceTypes');
      await classic.close();
    });

    it('dead-letters an id-only notification whose source stays unreachable, and replays it once the source is back', async () => {
      const down = await startFakeEhr({ capability: 'classic' });
      const res = await admin('/admin/sources', { method: 'POST', body: JSON.stringify({ id: 'ehr-down', name: 'Down', baseUrl: down.baseUrl, hookAuth: { bearerToken: BEARER } }) });
      expect(res.status).toBe(201);
      const enc = down.seed({ resourceType: 'Encounter', id: 'enc-down', status: 'finished', class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' } });
      down.failNext(1000, 503, undefined, (_method, path) => path.includes('/Encounter/'));
      const n = buildNotificationBundle({ subscriptionUrl: `${down.baseUrl}/Subscription/s`, topic, type: 'event-notification', eventsSinceSubscriptionStart: 1, content: 'id-only', baseUrl: down.baseUrl, events: [{ eventNumber: 1, timestamp: new Date().toISOString(), focus: enc }] });
      const r = await post('ehr-down', Buffer.from(JSON.stringify(n)));
      const s = await settle(r.inboxId, 60_000);
      expect(s.state).toBe('dead');
      const letters = await json(await admin('/admin/dead-letters?source=ehr-down&open=true'));
      expect(letters[0].reason).toBe('fetch-failed');
      down.heal();
      const replay = await admin(`/admin/dead-letters/${letters[0].id}/replay`, { method: 'POST' });
      expect(replay.status).toBe(202);
      expect((await settle(r.inboxId, 60_000)).state).toBe('done');
      expect(await service.database.store.resources.readCurrent('Encounter', anchorId('ehr-down', 'Encounter', 'enc-down'))).toBeDefined();
      await down.close();
    }, 90_000);

    it('stores a notification\'s own resources while the source cannot be read, and catches its gap up later from an inbox item of its own', async () => {
      const flaky = await startFakeEhr({ capability: 'backport' });
      try {
        const { url, numbers, note } = await sourceWithThreeEvents(flaky, 'ehr-flaky', 'f', 'full-resource');
        expect((await settle((await post('ehr-flaky', Buffer.from(JSON.stringify(note(0))))).inboxId)).state).toBe('done');
        // Event 2 is lost in transit; event 3 arrives (full resource) while the source answers nothing.
        flaky.failNext(100_000, 503);
        const r3 = await post('ehr-flaky', Buffer.from(JSON.stringify(note(2))));
        const s3 = await settle(r3.inboxId, 60_000);
        // Its own resource is stored at once; the gap is handed on to an inbox item of its own.
        expect(s3.state).toBe('done');
        expect(await service.database.store.resources.readCurrent('Encounter', anchorId('ehr-flaky', 'Encounter', 'f-3'))).toBeDefined();
        expect(await service.database.store.resources.readCurrent('Encounter', anchorId('ehr-flaky', 'Encounter', 'f-2'))).toBeUndefined();
        const handedOn = /handed on as inbox item ([0-9a-f-]{36})/.exec((s3.outcome.notes as string[]).join(' '))?.[1];
        expect(handedOn).toBeDefined();
        // That item fails while the source stays down, and ends as a replayable dead letter.
        expect((await settle(handedOn!, 60_000)).state).toBe('dead');
        flaky.heal();
        const letters = (await json(await admin('/admin/dead-letters?source=ehr-flaky&open=true'))) as Array<{ id: string; inboxId: string; reason: string }>;
        const letter = letters.find((l) => l.inboxId === handedOn)!;
        expect(letter.reason).toBe('fetch-failed');
        expect((await admin(`/admin/dead-letters/${letter.id}/replay`, { method: 'POST' })).status).toBe(202);
        expect((await settle(handedOn!, 60_000)).state).toBe('done');
        // Nothing of event 2 is lost.
        for (const id of ['f-1', 'f-2', 'f-3']) {
          expect(await service.database.store.resources.readCurrent('Encounter', anchorId('ehr-flaky', 'Encounter', id))).toBeDefined();
        }
        const status = await json(await admin('/admin/sources/ehr-flaky/status'));
        const sub = status.subscriptions.find((x: { subscription: string }) => x.subscription === url);
        expect(sub.lastEventNumber).toBe(numbers[2]);
        expect(sub.gaps).toEqual([expect.objectContaining({ from: numbers[0]! + 1, to: numbers[2]! - 1, catchUp: `handed on as inbox item ${handedOn}` })]);
      } finally {
        await flaky.close();
      }
    }, 120_000);
  });

  describe('operations surface', () => {
    it('reports stats by type, inbox state and dead letters', async () => {
      const stats = await json(await admin('/admin/stats'));
      expect(stats.resources.find((r: { resourceType: string }) => r.resourceType === 'Encounter').versions).toBeGreaterThan(0);
      expect(stats.inbox.some((i: { state: string }) => i.state === 'done')).toBe(true);
      expect(stats.deadLetters.some((d: { reason: string }) => d.reason === 'unparseable')).toBe(true);
    });

    it('re-enqueues inbox items whose jobs were lost (reconciler)', async () => {
      const { id } = await service.database.store.inbox.receive({ sourceId: 'ehr-b', kind: 'rest-hook', body: Buffer.from(JSON.stringify({ resourceType: 'Organization', id: 'lost-job', name: 'Lost' })) });
      // No job was enqueued (as if Redis lost it). Reconcile with no staleness allowance.
      await new Promise((r) => setTimeout(r, 20));
      const n = await service.ingest.reconcile({ staleMs: 0 });
      expect(n).toBeGreaterThanOrEqual(1);
      expect((await settle(id)).state).toBe('done');
    });
  });
});

describe('catch-up searches larger than one job (CATCH_UP_INLINE_MAX)', () => {
  let config: Config;
  let service: RunningService;
  let ehr: FakeEhr;

  beforeAll(async () => {
    config = testConfig({ JOB_ATTEMPTS: '2', JOB_BACKOFF_MS: '50', CATCH_UP_INLINE_MAX: '3' }, 'redis');
    service = await startService({ config, roles: { api: true, workers: true }, logger: silentLogger });
    ehr = await startFakeEhr({ capability: 'classic' });
  });

  afterAll(async () => {
    await ehr?.close();
    await service?.close();
    await cleanupConfig(config);
  });

  it('hands the rest of a ping catch-up on as catch-up inbox items, so every change is stored and none is dropped', async () => {
    const res = await fetch(`${service.url}/admin/sources`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ id: 'ehr-big', name: 'Busy EHR', baseUrl: ehr.baseUrl, hookAuth: { bearerToken: BEARER }, subscribe: { resourceTypes: ['Encounter'] } }),
    });
    expect(res.status).toBe(201);
    const amb = { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' };
    const total = 450;
    for (let i = 0; i < total; i++) ehr.seed({ resourceType: 'Encounter', id: `enc-big-${i}`, status: 'finished', class: amb });

    const ping = await fetch(`${service.url}/hooks/ehr-big`, { method: 'POST', headers: { authorization: `Bearer ${BEARER}`, 'content-type': 'application/x-www-form-urlencoded' } });
    expect(ping.status).toBe(202);
    const inboxId = ping.headers.get('x-inbox-id')!;

    const inbox = service.database.store.inbox;
    const deadline = Date.now() + 60_000;
    for (;;) {
      const { byState } = await inbox.sourceSummary('ehr-big');
      const open = (byState.pending ?? 0) + (byState.processing ?? 0) + (byState.failed ?? 0);
      if ((byState.done ?? 0) >= 4 && open === 0) break;
      if (Date.now() > deadline) throw new Error(`catch-up not finished: ${JSON.stringify(byState)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const { byState } = await inbox.sourceSummary('ehr-big');
    // The ping and three hand-on items (200 + 200 + 47 resources); nothing dead.
    expect(byState).toEqual({ done: 4 });
    const item = await inbox.get(inboxId);
    expect(item?.outcome).toMatchObject({ stored: 3 });
    expect(JSON.stringify((item?.outcome as { notes: string[] }).notes)).toContain('447 more resources handed on as 3 catch-up inbox item(s)');
    // The search asked for pages of 200.
    expect(ehr.requests.find((q) => q.path.endsWith('/Encounter') && q.method === 'GET')?.query._count).toBe('200');
    for (let i = 0; i < total; i++) {
      expect(await service.database.store.resources.readCurrent('Encounter', anchorId('ehr-big', 'Encounter', `enc-big-${i}`))).toBeDefined();
    }
  });
});
