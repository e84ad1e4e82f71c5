/**
 * read, vread, _history, patient Consent writes and the audit trail, against real PostgreSQL.
 */
import { consent, denyActor, observation, openFhirEnv, patient, type FhirEnv } from './env.js';

describe('FHIR read API', () => {
  let env: FhirEnv;
  beforeAll(async () => {
    env = await openFhirEnv({ consentDefault: 'permit' });
    env.as('clinician', { scope: 'user/*.rs' });
    env.as('obs-only', { scope: 'user/Observation.rs' });
    env.as('lab-only', { scope: 'user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory' });
    env.as('org-b', { scope: 'user/*.rs', clientId: 'app-b', actor: { references: ['Organization/org-b'], identifiers: [] } });
    env.as('org-b-btg', {
      scope: 'user/*.rs',
      clientId: 'app-b',
      actor: { references: ['Organization/org-b'], identifiers: [] },
      purposeOfUse: ['BTG'],
      mayBreakGlass: true,
    });
    env.as('p1', { scope: 'patient/*.rs patient/Consent.cruds', patient: 'p1', fhirUser: 'Patient/p1' });
    env.as('p1-read', { scope: 'patient/*.rs', patient: 'p1', fhirUser: 'Patient/p1' });
    env.as('p2', { scope: 'patient/*.rs patient/Consent.cruds', patient: 'p2', fhirUser: 'Patient/p2' });

    await env.put(patient('p1'));
    await env.put(patient('p2'));
    await env.put(observation('o1', 'p1'));
    await env.put(observation('o1', 'p1', { status: 'amended' })); // version 2
    await env.put(observation('o2', 'p2'));
    await env.put(observation('vital', 'p1', { category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'vital-signs' }] }] }));
    await env.put(observation('gone', 'p1'));
    await env.put(observation('gone', 'p1'), { deleted: true });
    // p2 denies org-b everything.
    await env.put(consent('c-p2', 'p2', denyActor('Organization/org-b')));
  });
  afterAll(async () => env.close());

  it('reads the current version as application/fhir+json with ETag and Last-Modified', async () => {
    const r = await env.get('/Observation/o1', 'clinician');
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toMatch(/^application\/fhir\+json/);
    expect(r.headers.get('etag')).toBe('W/"2"');
    expect(r.headers.get('last-modified')).toBeTruthy();
    expect(r.headers.get('cache-control')).toBe('no-store');
    expect(r.body).toMatchObject({ resourceType: 'Observation', id: 'o1', status: 'amended', meta: { versionId: '2' } });
  });

  it('conditional read: 304 without a body when the client holds the current version, after the same gate', async () => {
    const current = await env.get('/Observation/o1', 'clinician');
    const etag = current.headers.get('etag')!;
    const lastModified = current.headers.get('last-modified')!;
    env.events.length = 0;
    const same = await env.get('/Observation/o1', 'clinician', { headers: { 'if-none-match': etag } });
    expect(same.status).toBe(304);
    // Audited like the read it is.
    expect(env.events).toHaveLength(1);
    expect(env.events[0]).toMatchObject({ outcome: 'permit', interaction: 'read', entities: ['Observation/o1/_history/2'] });
    expect(same.text).toBe('');
    expect(same.headers.get('etag')).toBe('W/"2"');
    expect(same.headers.get('cache-control')).toBe('no-store');
    // Weak comparison, lists and '*'; a stale tag gets the resource.
    expect((await env.get('/Observation/o1', 'clinician', { headers: { 'if-none-match': '"7", "2"' } })).status).toBe(304);
    expect((await env.get('/Observation/o1', 'clinician', { headers: { 'if-none-match': '*' } })).status).toBe(304);
    const stale = await env.get('/Observation/o1', 'clinician', { headers: { 'if-none-match': 'W/"1"' } });
    expect(stale.status).toBe(200);
    expect(stale.body.meta.versionId).toBe('2');
    // If-Modified-Since: not modified since Last-Modified; modified since a second earlier; ignored beside If-None-Match.
    expect((await env.get('/Observation/o1', 'clinician', { headers: { 'if-modified-since': lastModified } })).status).toBe(304);
    const earlier = new Date(Date.parse(lastModified) - 1000).toUTCString();
    expect((await env.get('/Observation/o1', 'clinician', { headers: { 'if-modified-since': earlier } })).status).toBe(200);
    expect((await env.get('/Observation/o1', 'clinician', { headers: { 'if-modified-since': 'not a date' } })).status).toBe(200);
    expect((await env.get('/Observation/o1', 'clinician', { headers: { 'if-none-match': 'W/"1"', 'if-modified-since': lastModified } })).status).toBe(200);
    // vread of an immutable version.
    expect((await env.get('/Observation/o1/_history/1', 'clinician', { headers: { 'if-none-match': 'W/"1"' } })).status).toBe(304);
    // A denied or absent resource is a 404 whatever the client claims to hold: no 304 tells it exists.
    env.events.length = 0;
    expect((await env.get('/Observation/o2', 'org-b', { headers: { 'if-none-match': '*' } })).status).toBe(404);
    expect(env.events[0]).toMatchObject({ outcome: 'deny', entities: ['Observation/o2/_history/1'] });
    expect((await env.get('/Observation/nope', 'clinician', { headers: { 'if-none-match': '*' } })).status).toBe(404);
    expect((await env.get('/Observation/vital', 'lab-only', { headers: { 'if-none-match': '*' } })).status).toBe(404);
  });

  it('vreads a version and lists the history newest first with paging', async () => {
    const v1 = await env.get('/Observation/o1/_history/1', 'clinician');
    expect(v1.status).toBe(200);
    expect(v1.body.status).toBe('final');
    const h = await env.get('/Observation/o1/_history?_count=1', 'clinician');
    expect(h.status).toBe(200);
    expect(h.body.type).toBe('history');
    expect(h.body.entry.map((e: { resource: { meta: { versionId: string } } }) => e.resource.meta.versionId)).toEqual(['2']);
    const next = h.body.link.find((l: { relation: string }) => l.relation === 'next').url as string;
    const h2 = await env.get(next.slice(env.baseUrl.length), 'clinician');
    expect(h2.body.entry.map((e: { resource: { meta: { versionId: string } } }) => e.resource.meta.versionId)).toEqual(['1']);
    expect(h2.body.link.some((l: { relation: string }) => l.relation === 'next')).toBe(false);
  });

  it('answers 404 for absent, deleted and unknown versions, 400 for malformed ids', async () => {
    expect((await env.get('/Observation/nope', 'clinician')).status).toBe(404);
    expect((await env.get('/Observation/gone', 'clinician')).status).toBe(404);
    expect((await env.get('/Observation/o1/_history/9', 'clinician')).status).toBe(404);
    expect((await env.get('/Observation/o1/_history/0', 'clinician')).status).toBe(400);
    expect((await env.get('/Observation/..%2F..%2Fetc', 'clinician')).status).toBe(400);
    expect((await env.get("/Observation/x'%3B%20DROP%20TABLE%20resource", 'clinician')).status).toBe(400);
    expect((await env.get('/Observation/o1', 'nobody')).status).toBe(401);
  });

  it('enforces scopes: 403 for a type the token has no scope for, 404 for a granular mismatch', async () => {
    const r = await env.get('/Patient/p1', 'obs-only');
    expect(r.status).toBe(403);
    expect(r.body.resourceType).toBe('OperationOutcome');
    expect((await env.get('/Observation/o1', 'lab-only')).status).toBe(200);
    expect((await env.get('/Observation/vital', 'lab-only')).status).toBe(404);
  });

  it('patient context: own data readable, another patient is 404', async () => {
    expect((await env.get('/Observation/o1', 'p1')).status).toBe(200);
    expect((await env.get('/Patient/p1', 'p1')).status).toBe(200);
    expect((await env.get('/Observation/o2', 'p1')).status).toBe(404);
    expect((await env.get('/Patient/p2', 'p1')).status).toBe(404);
  });

  it('consent deny → 404 and a deny audit event; break-glass → 200 recorded with breakGlass', async () => {
    env.events.length = 0;
    const denied = await env.get('/Observation/o2', 'org-b');
    expect(denied.status).toBe(404);
    expect(env.events).toHaveLength(1);
    expect(env.events[0]).toMatchObject({ outcome: 'deny', interaction: 'read', entities: ['Observation/o2/_history/1'], patient: 'p2', breakGlass: false });
    expect(env.events[0]!.policy).toContain('Consent/c-p2/_history/1');

    env.events.length = 0;
    const bg = await env.get('/Observation/o2', 'org-b-btg');
    expect(bg.status).toBe(200);
    expect(env.events).toHaveLength(1);
    expect(env.events[0]).toMatchObject({ outcome: 'permit', breakGlass: true, entities: ['Observation/o2/_history/1'] });

    env.events.length = 0;
    expect((await env.get('/Observation/o1', 'org-b')).status).toBe(200);
    expect(env.events[0]).toMatchObject({ outcome: 'permit', breakGlass: false, entities: ['Observation/o1/_history/2'], patient: 'p1' });
  });

  it('fails closed when the audit cannot be written', async () => {
    let fail = false;
    const env2 = await openFhirEnv({ recorderFails: () => fail });
    try {
      env2.as('c', { scope: 'user/*.rs' });
      await env2.put(observation('o1', 'p1'));
      expect((await env2.get('/Observation/o1', 'c')).status).toBe(200);
      fail = true;
      const r = await env2.get('/Observation/o1', 'c');
      expect(r.status).toBe(500);
      expect(r.text).not.toContain('Glucose');
    } finally {
      await env2.close();
    }
  });

  describe('patient-managed Consent', () => {
    const body = (patientRef: string, provision: Record<string, unknown>): string =>
      JSON.stringify({ ...consent('ignored', 'x', provision), id: undefined, patient: { reference: patientRef } });
    const send = (method: string, path: string, as: string, b?: string) =>
      env.get(path, as, { method, ...(b ? { body: b, headers: { 'content-type': 'application/fhir+json' } } : {}) });

    it('creates, updates and deletes own Consents; each takes effect on the next request and is committed', async () => {
      expect((await env.get('/Observation/o1', 'org-b')).status).toBe(200);
      env.enqueued.length = 0;
      const created = await send('POST', '/Consent', 'p1', body('Patient/p1', denyActor('Organization/org-b')));
      expect(created.status).toBe(201);
      const id = created.body.id as string;
      expect(created.headers.get('location')).toBe(`${env.baseUrl}/Consent/${id}/_history/1`);
      expect(env.enqueued).toEqual([{ queue: 'integrity', data: { resourceType: 'Consent', id, versionId: '1' }, jobId: `Consent.${id}.1` }]);
      const stored = await env.db.store.resources.history('Consent', id);
      expect(stored).toHaveLength(1);

      expect((await env.get('/Observation/o1', 'org-b')).status).toBe(404);

      const updated = await send('PUT', `/Consent/${id}`, 'p1', JSON.stringify({ ...JSON.parse(body('Patient/p1', denyActor('Organization/org-b'))), id, status: 'inactive' }));
      expect(updated.status).toBe(200);
      expect(updated.body.meta.versionId).toBe('2');
      expect((await env.get('/Observation/o1', 'org-b')).status).toBe(200);

      await send('PUT', `/Consent/${id}`, 'p1', JSON.stringify({ ...JSON.parse(body('Patient/p1', denyActor('Organization/org-b'))), id }));
      expect((await env.get('/Observation/o1', 'org-b')).status).toBe(404);
      const del = await send('DELETE', `/Consent/${id}`, 'p1');
      expect(del.status).toBe(204);
      expect((await env.get('/Observation/o1', 'org-b')).status).toBe(200);
      expect(env.enqueued.map((e) => e.jobId)).toEqual([`Consent.${id}.1`, `Consent.${id}.2`, `Consent.${id}.3`, `Consent.${id}.4`]);
      const versions = await env.db.store.resources.history('Consent', id);
      expect(versions.map((v) => v.versionId)).toEqual(['4', '3', '2', '1']);
    });

    it('version-aware updates and deletes (If-Match): 412 for a stale copy, nothing written', async () => {
      const sendIf = (method: string, path: string, etag: string, b?: string) =>
        env.get(path, 'p1', { method, ...(b ? { body: b } : {}), headers: { 'if-match': etag, ...(b ? { 'content-type': 'application/fhir+json' } : {}) } });
      const created = await send('POST', '/Consent', 'p1', body('Patient/p1', denyActor('Organization/org-c')));
      const id = created.body.id as string;
      const next = (status: string) => JSON.stringify({ ...JSON.parse(body('Patient/p1', denyActor('Organization/org-c'))), id, status });
      // The phone holds version 1 and updates it; the tablet still holds version 1.
      const phone = await sendIf('PUT', `/Consent/${id}`, created.headers.get('etag')!, next('inactive'));
      expect(phone.status).toBe(200);
      expect(phone.headers.get('etag')).toBe('W/"2"');
      const tablet = await sendIf('PUT', `/Consent/${id}`, 'W/"1"', next('active'));
      expect(tablet.status).toBe(412);
      expect(tablet.body.resourceType).toBe('OperationOutcome');
      expect(tablet.body.issue[0].details.text).toMatch(/current version is 2/);
      expect((await sendIf('DELETE', `/Consent/${id}`, '"1"')).status).toBe(412);
      expect((await env.db.store.resources.history('Consent', id)).map((v) => v.versionId)).toEqual(['2', '1']);
      // A list naming the current version, the strong form, and '*' go through; a malformed header is a 400.
      expect((await sendIf('PUT', `/Consent/${id}`, 'W/"1", W/"2"', next('active'))).status).toBe(200);
      expect((await sendIf('PUT', `/Consent/${id}`, '*', next('inactive'))).status).toBe(200);
      expect((await sendIf('PUT', `/Consent/${id}`, '4', next('active'))).status).toBe(400);
      expect((await sendIf('DELETE', `/Consent/${id}`, '"4"')).status).toBe(204);
      // Prefer: return=minimal: Location and ETag, no body.
      const minimal = await env.get('/Consent', 'p1', { method: 'POST', body: body('Patient/p1', denyActor('Organization/org-c')), headers: { 'content-type': 'application/fhir+json', prefer: 'return=minimal' } });
      expect(minimal.status).toBe(201);
      expect(minimal.text).toBe('');
      expect(minimal.headers.get('location')).toMatch(/\/Consent\/[^/]+\/_history\/1$/);
      expect(minimal.headers.get('etag')).toBe('W/"1"');
      // Someone else's Consent stays a 404 whatever the header says.
      expect((await sendIf('PUT', '/Consent/c-p2', 'W/"1"', JSON.stringify({ ...JSON.parse(body('Patient/p1', {})), id: 'c-p2' }))).status).toBe(404);
    });

    it("refuses a Consent for another patient (403), someone else's Consent (404) and tokens without the scope", async () => {
      expect((await send('POST', '/Consent', 'p1', body('Patient/p2', denyActor('Organization/org-b')))).status).toBe(403);
      expect((await send('PUT', '/Consent/c-p2', 'p1', JSON.stringify({ ...JSON.parse(body('Patient/p1', {})), id: 'c-p2' }))).status).toBe(404);
      expect((await send('DELETE', '/Consent/c-p2', 'p1')).status).toBe(404);
      expect((await send('POST', '/Consent', 'p1-read', body('Patient/p1', denyActor('Organization/org-b')))).status).toBe(403);
      expect((await send('POST', '/Consent', 'clinician', body('Patient/p1', denyActor('Organization/org-b')))).status).toBe(403);
      expect((await send('POST', '/Consent', 'p1', '{"resourceType":"Patient"}')).status).toBe(400);
      expect((await send('POST', '/Consent', 'p1', '{not json')).status).toBe(400);
      expect((await send('POST', '/Consent', 'p1', body('Patient/p1', { type: 'deny', purpose: [{ code: 'x\u0000' }] }))).status).toBe(400);
      // A lone surrogate (valid JSON escape, not Unicode): 400 naming the place, not a store failure.
      const lone = await send('POST', '/Consent', 'p1', body('Patient/p1', { type: 'deny', purpose: [{ code: 'x\ud800' }] }));
      expect(lone.status).toBe(400);
      expect(JSON.stringify(lone.body)).toMatch(/Consent\.provision.*lone UTF-16 surrogate/);
      // Elements without their FHIR shapes (the category check threw a TypeError: 500; a number as
      // provision.data was stored, and the engine then failed every request about the patient): 400.
      const noShape = await send('POST', '/Consent', 'p1', JSON.stringify({ ...JSON.parse(body('Patient/p1', { type: 'deny' })), scope: undefined, category: {} }));
      expect(noShape.status).toBe(400);
      const badData = await send('POST', '/Consent', 'p1', body('Patient/p1', { type: 'deny', data: 0 } as never));
      expect(badData.status).toBe(400);
      expect(JSON.stringify(badData.body)).toMatch(/The Consent is malformed/);
      // A number JSON.parse makes Infinity would be stored as null: 400 as well.
      const huge = body('Patient/p1', { type: 'deny' }).replace(/^\{/, '{"extension":[{"url":"urn:x","valueDecimal":1e400}],');
      const inf = await send('POST', '/Consent', 'p1', huge);
      expect(inf.status).toBe(400);
      expect(JSON.stringify(inf.body)).toMatch(/Consent\.extension\[0\]\.valueDecimal: number is out of range/);
      expect((await env.get('/Consent/c-p2', 'clinician')).status).toBe(200);
    });

    it('lets the patient read AuditEvents about their own records', async () => {
      await env.put({
        resourceType: 'AuditEvent',
        id: 'ae1',
        type: { code: 'rest' },
        recorded: '2026-03-01T12:00:00Z',
        agent: [{ requestor: true, who: { reference: 'Organization/org-b' } }],
        source: { observer: { display: 'fhir-anchor' } },
        entity: [{ what: { reference: 'Patient/p1' } }, { what: { reference: 'Observation/o1/_history/2' } }],
      } as never);
      await env.put({
        resourceType: 'AuditEvent',
        id: 'ae2',
        type: { code: 'rest' },
        recorded: '2026-03-01T12:00:00Z',
        agent: [{ requestor: true, who: { reference: 'Organization/org-b' } }],
        source: { observer: { display: 'fhir-anchor' } },
        entity: [{ what: { reference: 'Patient/p2' } }],
      } as never);
      const r = await env.get('/AuditEvent?patient=p1', 'p1');
      expect(r.status).toBe(200);
      expect(r.body.entry.map((e: { resource: { id: string } }) => e.resource.id)).toEqual(['ae1']);
      const all = await env.get('/AuditEvent', 'p1');
      expect(all.body.entry.map((e: { resource: { id: string } }) => e.resource.id)).toEqual(['ae1']);
      expect((await env.get('/AuditEvent/ae2', 'p1')).status).toBe(404);
    });
  });

  it('measures read-by-id throughput and latency (report only)', async () => {
    await env.put(observation('perf', 'p1'));
    const run = async (as: string): Promise<{ rps: number; p50: number; p99: number }> => {
      const latencies: number[] = [];
      const total = 2000;
      let issued = 0;
      const start = performance.now();
      await Promise.all(
        Array.from({ length: 10 }, async () => {
          while (issued < total) {
            issued += 1;
            const t = performance.now();
            const res = await fetch(`${env.base}/fhir/R4/Observation/perf`, { headers: { 'x-test-as': as } });
            await res.arrayBuffer();
            latencies.push(performance.now() - t);
          }
        }),
      );
      const elapsed = (performance.now() - start) / 1000;
      latencies.sort((a, b) => a - b);
      return { rps: total / elapsed, p50: latencies[Math.floor(total * 0.5)]!, p99: latencies[Math.floor(total * 0.99)]! };
    };
    await run('clinician'); // warm up
    const withConsent = await run('org-b'); // p1 has consents to evaluate (the patient's own, now deleted, and none active)
    const own = await run('p1'); // patient's own data: no consent look-up
    process.stdout.write(
      `[perf] read-by-id, 10 concurrent, 2000 requests: with consent ${withConsent.rps.toFixed(0)} req/s p50 ${withConsent.p50.toFixed(2)} ms p99 ${withConsent.p99.toFixed(2)} ms; ` +
        `without consent look-up ${own.rps.toFixed(0)} req/s p50 ${own.p50.toFixed(2)} ms p99 ${own.p99.toFixed(2)} ms\n`,
    );
    expect(withConsent.rps).toBeGreaterThan(0);
  }, 120_000);
});
