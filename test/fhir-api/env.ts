/**
 * Test environment for the FHIR API: a migrated store in a fresh schema, the router behind a fake
 * authentication middleware (header `x-test-as` names an AccessContext registered by the test), the
 * app's real error handlers, a capturing DisclosureRecorder and a capturing QueueRegistry.
 */
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import express, { type RequestHandler } from 'express';
import pg from 'pg';
import type { Resource } from '@medplum/fhirtypes';
import { parseScopes } from '../../src/consent/index.js';
import type { AccessContext, DisclosureEvent, DisclosureRecorder } from '../../src/fhir-api/access.js';
import { createFhirApiRouter } from '../../src/fhir-api/routes.js';
import { ManualClock } from '../../src/platform/clock.js';
import { httpError } from '../../src/platform/errors.js';
import { errorHandler, notFoundHandler } from '../../src/server/errors.js';
import { openDatabase, type Database } from '../../src/store/index.js';
import { TEST_DATABASE_URL, dropSchema, randomNamespace, silentLogger } from '../helpers/env.js';

export const NOW = new Date('2026-03-01T12:00:00Z');
export const CONSENT_SCOPE = 'http://terminology.hl7.org/CodeSystem/consentscope';
export const LOINC = 'http://loinc.org';
export const OBS_CATEGORY = 'http://terminology.hl7.org/CodeSystem/observation-category';

export interface Enqueued {
  readonly queue: string;
  readonly data: unknown;
  readonly jobId?: string;
}

export interface FhirEnv {
  readonly db: Database;
  readonly base: string;
  readonly baseUrl: string;
  readonly clock: ManualClock;
  readonly events: DisclosureEvent[];
  readonly enqueued: Enqueued[];
  /** Registers an AccessContext under a name (sent as `x-test-as`). */
  as(name: string, access: Partial<AccessContext> & { scope: string }): void;
  put(resource: Resource & { id: string }, options?: { deleted?: boolean }): Promise<string>;
  get(path: string, as: string, init?: RequestInit): Promise<{ status: number; headers: Headers; body: Json; text: string }>;
  /** Runs SQL in the test's schema (to set up states the API cannot make, e.g. data from before a migration). */
  sql(text: string): Promise<void>;
  close(): Promise<void>;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Json = any;

/** An AccessContext from a scope string and overrides. */
export function accessContext(over: Partial<AccessContext> & { scope: string }): AccessContext {
  const { scope, ...rest } = over;
  return {
    clientId: 'app-a',
    issuer: 'https://auth.test',
    scopes: parseScopes(scope).scopes,
    purposeOfUse: ['TREAT'],
    actor: { references: ['Organization/org-a', 'Practitioner/dr-a'], identifiers: [] },
    mayBreakGlass: false,
    ...rest,
  };
}

export async function openFhirEnv(options: { consentDefault?: 'permit' | 'deny'; recorderFails?: () => boolean } = {}): Promise<FhirEnv> {
  const schema = randomNamespace('t');
  const clock = new ManualClock(NOW);
  const db = await openDatabase({
    config: { database: { kind: 'external', url: TEST_DATABASE_URL }, databaseSchema: schema, databasePoolMax: 10 },
    logger: silentLogger,
    clock,
  });
  const events: DisclosureEvent[] = [];
  const enqueued: Enqueued[] = [];
  const contexts = new Map<string, AccessContext>();
  const recorder: DisclosureRecorder = {
    async record(e) {
      if (options.recorderFails?.()) throw new Error('audit store down');
      events.push(e);
    },
  };
  const authenticate: RequestHandler = (req, res, next) => {
    const name = req.get('x-test-as');
    const ctx = name ? contexts.get(name) : undefined;
    if (!ctx) return next(httpError(401, 'login', 'Authentication required'));
    res.locals.access = ctx;
    next();
  };
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  const holder: { baseUrl: string } = { baseUrl: '' };
  const ref: { router?: express.Router } = {};
  app.use('/fhir/R4', (req, res, next) => ref.router!(req, res, next));
  app.use(notFoundHandler);
  app.use(errorHandler(silentLogger));
  const server = await new Promise<Server>((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
  });
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  holder.baseUrl = `${base}/fhir/R4`;
  ref.router = createFhirApiRouter({
    store: db.store,
    recorder,
    consentDefault: options.consentDefault ?? 'permit',
    clock,
    logger: silentLogger,
    baseUrl: holder.baseUrl,
    queues: {
      async enqueueBulk(queue, jobs) {
        for (const j of jobs) enqueued.push({ queue, data: j.data, ...(j.options?.jobId ? { jobId: j.options.jobId } : {}) });
      },
    },
    authenticate,
  });
  return {
    db,
    base,
    baseUrl: holder.baseUrl,
    clock,
    events,
    enqueued,
    as(name, access) {
      contexts.set(name, accessContext(access));
    },
    async put(resource, opts = {}) {
      const r = await db.store.resources.putVersion({
        resourceType: resource.resourceType,
        id: resource.id,
        ...(opts.deleted ? { deleted: true } : { resource }),
        sourceId: 'test',
      });
      return r.version.versionId;
    },
    async get(path, as, init = {}) {
      const res = await fetch(`${base}/fhir/R4${path}`, { ...init, headers: { 'x-test-as': as, ...(init.headers as Record<string, string> | undefined) } });
      const text = await res.text();
      let body: Json;
      try {
        body = text ? JSON.parse(text) : undefined;
      } catch {
        body = undefined;
      }
      return { status: res.status, headers: res.headers, body, text };
    },
    async sql(text) {
      const c = new pg.Client({ connectionString: TEST_DATABASE_URL, options: `-c search_path=${schema}` });
      await c.connect();
      try {
        await c.query(text);
      } finally {
        await c.end();
      }
    },
    async close() {
      await new Promise<void>((r) => server.close(() => r()));
      await db.close();
      await dropSchema(schema);
    },
  };
}

/** A Patient. */
export function patient(id: string, over: Record<string, unknown> = {}): Resource & { id: string } {
  return { resourceType: 'Patient', id, name: [{ family: `Fam-${id}` }], ...over } as Resource & { id: string };
}

/** An Observation of a patient. */
export function observation(id: string, patientId: string, over: Record<string, unknown> = {}): Resource & { id: string } {
  return {
    resourceType: 'Observation',
    id,
    status: 'final',
    category: [{ coding: [{ system: OBS_CATEGORY, code: 'laboratory' }] }],
    code: { coding: [{ system: LOINC, code: '2339-0', display: 'Glucose' }] },
    subject: { reference: `Patient/${patientId}` },
    effectiveDateTime: '2024-05-01T10:00:00Z',
    ...over,
  } as Resource & { id: string };
}

/** An active patient-privacy Consent of a patient with a root provision. */
export function consent(id: string, patientId: string, provision: Record<string, unknown>, over: Record<string, unknown> = {}): Resource & { id: string } {
  return {
    resourceType: 'Consent',
    id,
    status: 'active',
    scope: { coding: [{ system: CONSENT_SCOPE, code: 'patient-privacy' }] },
    category: [{ coding: [{ system: LOINC, code: '59284-0' }] }],
    patient: { reference: `Patient/${patientId}` },
    provision,
    ...over,
  } as Resource & { id: string };
}

/** A deny provision for an actor reference. */
export function denyActor(reference: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { type: 'deny', actor: [{ role: { coding: [{ code: 'IRCP' }] }, reference: { reference } }], ...extra };
}
