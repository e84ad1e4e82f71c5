/**
 * `GET /research/cohort-count` against real PostgreSQL: counts research-consenting patients only,
 * suppresses small cells ("<11"), needs a research purpose, never lists ids, and is audited.
 */
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import express, { type RequestHandler } from 'express';
import type { Resource } from '@medplum/fhirtypes';
import { parseScopes } from '../../src/consent/index.js';
import type { AccessContext, DisclosureEvent } from '../../src/fhir-api/access.js';
import { ManualClock } from '../../src/platform/clock.js';
import { httpError } from '../../src/platform/errors.js';
import { createCohortRouter, suppress } from '../../src/research/cohort.js';
import { errorHandler, notFoundHandler } from '../../src/server/errors.js';
import { openDatabase, type Database } from '../../src/store/index.js';
import { TEST_DATABASE_URL, dropSchema, randomNamespace, silentLogger } from '../helpers/env.js';

const SNOMED = 'http://snomed.info/sct';
const DIABETES = '44054006';
const ASTHMA = '195967001';

describe('GET /research/cohort-count', () => {
  const schema = randomNamespace('t');
  const clock = new ManualClock(new Date('2026-03-01T12:00:00Z'));
  const events: DisclosureEvent[] = [];
  let db: Database;
  let server: Server;
  let base: string;
  const contexts = new Map<string, AccessContext>();
  const as = (name: string, purposeOfUse: string[]): void => {
    contexts.set(name, { clientId: name, issuer: 'https://auth.test', scopes: parseScopes('system/Patient.rs').scopes, purposeOfUse, actor: { references: [], identifiers: [] }, mayBreakGlass: false });
  };
  const count = async (query: string, who = 'recruiter') => {
    const res = await fetch(`${base}/research/cohort-count?${query}`, { headers: { 'x-test-as': who } });
    const text = await res.text();
    return { status: res.status, text, body: JSON.parse(text) as { parameter?: Array<{ name: string; valueInteger?: number; valueString?: string }> } };
  };
  const value = (b: { parameter?: Array<{ name: string; valueInteger?: number; valueString?: string }> }) => {
    const p = b.parameter?.find((x) => x.name === 'count');
    return p?.valueInteger ?? p?.valueString;
  };

  beforeAll(async () => {
    db = await openDatabase({ config: { database: { kind: 'external', url: TEST_DATABASE_URL }, databaseSchema: schema, databasePoolMax: 4 }, logger: silentLogger, clock });
    const put = (r: Resource & { id: string }) => db.store.resources.putVersion({ resourceType: r.resourceType, id: r.id, resource: r, sourceId: 'test' });
    const research = (p: string, type: 'permit' | 'deny') =>
      put({
        resourceType: 'Consent',
        id: `c-${p}`,
        status: 'active',
        scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'research' }] },
        category: [{ coding: [{ system: 'http://loinc.org', code: '57016-8' }] }],
        patient: { reference: `Patient/${p}` },
        provision: { type, purpose: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActReason', code: 'HRESCH' }] },
      } as Resource & { id: string });
    const condition = (id: string, p: string, code: string) => put({ resourceType: 'Condition', id, subject: { reference: `Patient/${p}` }, code: { coding: [{ system: SNOMED, code }] } } as Resource & { id: string });
    // 12 consenting diabetics (one with two diabetes records), 3 diabetics without consent, 2 refusing, 5 consenting asthmatics.
    for (let i = 0; i < 12; i++) {
      await put({ resourceType: 'Patient', id: `d${i}` } as Resource & { id: string });
      await research(`d${i}`, 'permit');
      await condition(`cd${i}`, `d${i}`, DIABETES);
    }
    await condition('cd0-again', 'd0', DIABETES);
    for (let i = 0; i < 3; i++) {
      await put({ resourceType: 'Patient', id: `n${i}` } as Resource & { id: string });
      await condition(`cn${i}`, `n${i}`, DIABETES);
    }
    for (let i = 0; i < 2; i++) {
      await put({ resourceType: 'Patient', id: `r${i}` } as Resource & { id: string });
      await research(`r${i}`, 'deny');
      await condition(`cr${i}`, `r${i}`, DIABETES);
    }
    for (let i = 0; i < 5; i++) {
      await put({ resourceType: 'Patient', id: `a${i}` } as Resource & { id: string });
      await research(`a${i}`, 'permit');
      await condition(`ca${i}`, `a${i}`, ASTHMA);
    }
    as('recruiter', ['HRESCH']);
    as('clinician', ['TREAT']);
    const authenticate: RequestHandler = (req, res, next) => {
      const ctx = contexts.get(req.get('x-test-as') ?? '');
      if (!ctx) return next(httpError(401, 'login', 'Authentication required'));
      res.locals.access = ctx;
      next();
    };
    const app = express();
    app.use('/research', authenticate, createCohortRouter({ store: db.store, recorder: { record: (e) => Promise.resolve(void events.push(e)) }, researchConsentDefault: 'deny', clock, baseUrl: 'http://anchor.test/fhir/R4' }));
    app.use(notFoundHandler);
    app.use(errorHandler(silentLogger));
    server = await new Promise<Server>((resolve) => {
      const s = app.listen(0, '127.0.0.1', () => resolve(s));
    });
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }, 60_000);

  afterAll(async () => {
    await new Promise<void>((r) => server.close(() => r()));
    await db.close();
    await dropSchema(schema);
  });

  it('suppresses small cells', () => {
    expect(suppress(0)).toBe('<11');
    expect(suppress(10)).toBe('<11');
    expect(suppress(11)).toBe(11);
  });

  it('counts research-consenting patients with a matching resource, each once', async () => {
    const r = await count(`criteria=${encodeURIComponent(`Condition?code=${SNOMED}|${DIABETES}`)}`);
    expect(r.status).toBe(200);
    expect(value(r.body)).toBe(12);
    // Never ids.
    expect(r.text).not.toMatch(/"d\d+"|Patient\//);
    expect(events.at(-1)).toMatchObject({ interaction: '$cohort-count', outcome: 'permit', entities: [] });
  });

  it('reports fewer than 11 as "<11"', async () => {
    const r = await count(`criteria=${encodeURIComponent(`Condition?code=${ASTHMA}`)}`);
    expect(value(r.body)).toBe('<11');
    expect(r.body.parameter?.find((p) => p.name === 'suppressed')).toMatchObject({ valueBoolean: true });
    // Combined with a Patient criterion (AND): 3 of the 12 diabetics → suppressed.
    const both = await count(`criteria=${encodeURIComponent(`Condition?code=${DIABETES}`)}&criteria=${encodeURIComponent('Patient?_id=d1,d2,d3,n1,r1')}`);
    expect(value(both.body)).toBe('<11');
  });

  it('counts Patients alone over research consent', async () => {
    expect(value((await count(`criteria=Patient`)).body)).toBe(17);
  });

  it('needs a research purpose and valid criteria', async () => {
    expect((await count('criteria=Patient', 'clinician')).status).toBe(403);
    expect((await count('criteria=Patient', 'nobody')).status).toBe(401);
    expect((await count('criteria=Condition%3Fflavour%3Dx')).status).toBe(400);
    expect((await count('')).status).toBe(400);
    expect((await count('criteria=Condition&criteria=Observation')).status).toBe(400);
    expect((await count('criteria=Patient&_id=x')).status).toBe(400);
    // Chains would be resolved outside the research gate: refused, not silently dropped.
    const chained = await count(`criteria=${encodeURIComponent('Condition?patient.name=x')}`);
    expect(chained.status).toBe(400);
    expect(JSON.stringify(chained.body)).toMatch(/no chains/);
  });
});
