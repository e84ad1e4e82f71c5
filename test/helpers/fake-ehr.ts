/**
 * Test fixture: a small but real FHIR R4 server (express 5 on 127.0.0.1, random port) standing in
 * for a source EHR. In-memory store with read / vread / search (`_lastUpdated`, `_count`, `_tag`,
 * Subscription `url` / `status`, paging with `next` links), create / update / delete, Subscription
 * `$events` (Subscriptions R5 Backport IG), a configurable `metadata` (backport-capable or
 * classic-only) and a SMART Backend Services token endpoint that verifies client assertions with
 * `jose` against a registered public JWK.
 *
 * Knobs simulate the failures the source client must survive: `close()` (connection refused),
 * `slowNext` (slow responses), `throttleNext` (429 + Retry-After), `failNext` (5xx or any status,
 * with an optional body), unknown ids (404), deleted ids (410).
 *
 * Notification builders (`buildNotificationBundle`, …) produce Backport IG R4 notification Bundles
 * for ingest tests; shapes follow the IG examples in /work/shared/data/subscriptions/r4-backport.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import express, { type Request, type Response } from 'express';
import { decodeProtectedHeader, importJWK, jwtVerify, type JWK } from 'jose';
import type { Bundle, BundleEntry, CapabilityStatement, OperationOutcome, Parameters, ParametersParameter, Resource, Subscription } from '@medplum/fhirtypes';
import type { Clock } from '../../src/platform/clock.js';
import { systemClock } from '../../src/platform/clock.js';

export const BACKPORT_CAPABILITY_R4 = 'http://hl7.org/fhir/uv/subscriptions-backport/CapabilityStatement/backport-subscription-server-r4';
const BACKPORT = 'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition';
const BACKPORT_OPS = 'http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition';
const JWT_BEARER = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';

export type PayloadContent = 'empty' | 'id-only' | 'full-resource';

export interface FakeEhrSmartClient {
  clientId: string;
  /** Public key the client signs assertions with; `kid` must match the assertion header. */
  publicJwk: JWK;
}

export interface FakeEhrOptions {
  /** What `metadata` advertises. Default `backport`. */
  capability?: 'backport' | 'classic';
  /** Replace the generated CapabilityStatement entirely. */
  capabilityStatement?: CapabilityStatement;
  /** Topic canonicals advertised (backport). */
  topics?: string[];
  /** Require `Authorization: Bearer` (an issued SMART token or a static token) on FHIR endpoints except `metadata`. */
  requireAuth?: boolean;
  /** Static bearer tokens accepted when `requireAuth`. */
  staticTokens?: string[];
  /** Registered SMART Backend Services client. */
  smart?: FakeEhrSmartClient;
  /** Lifetime of issued access tokens, seconds. Default 300. */
  tokenLifetimeSeconds?: number;
  /** Default page size. Default 10. */
  pageSize?: number;
  /** Status new Subscriptions get. Default `active`. */
  subscriptionStatus?: Subscription['status'];
  /** What `$events` answers (200) instead of the events, to play a source whose answer is unusable. */
  eventsBody?: unknown;
  clock?: Clock;
}

export interface RecordedRequest {
  method: string;
  /** Path below the server root, e.g. `/fhir/Patient/1`. */
  path: string;
  query: Record<string, unknown>;
  authorization: string | undefined;
  prefer: string | undefined;
}

export interface TokenRequestRecord {
  contentType: string | undefined;
  form: Record<string, string>;
  /** Verified assertion header and claims (undefined when verification failed). */
  header?: Record<string, unknown>;
  claims?: Record<string, unknown>;
  /** Why the request was rejected, if it was. */
  rejected?: string;
}

export interface SubscriptionEvent {
  eventNumber: number;
  timestamp: string;
  focus: Resource;
}

export interface FakeEhr {
  readonly baseUrl: string;
  readonly tokenUrl: string;
  readonly origin: string;
  readonly requests: RecordedRequest[];
  readonly tokenRequests: TokenRequestRecord[];
  /** Stores a resource as a new version (assigning id, versionId, lastUpdated unless set) and returns it. */
  seed<T extends Resource>(resource: T): T & { id: string };
  /** Marks a resource deleted: reads answer 410. */
  remove(type: string, id: string): void;
  /** Current version, if any. */
  get<T extends Resource>(type: string, id: string): T | undefined;
  subscriptions(): Subscription[];
  setSubscriptionStatus(id: string, status: Subscription['status']): void;
  /** Records a topic event for `$events`; returns its event number. */
  recordEvent(subscriptionId: string, focus: Resource): number;
  /**
   * The next `n` FHIR requests (those matching `match`, if given) fail with `status` (default 500)
   * and `body` (default an OperationOutcome).
   */
  failNext(n: number, status?: number, body?: unknown, match?: (method: string, path: string) => boolean): void;
  /** Drops every pending simulated failure, throttle and delay: the source is healthy again. */
  heal(): void;
  /** The next `n` FHIR requests answer 429 with `Retry-After: retryAfterSeconds`. */
  throttleNext(n: number, retryAfterSeconds: number): void;
  /** The next `n` FHIR requests are delayed by `ms`. */
  slowNext(n: number, ms: number): void;
  /** Next links point at another origin (to test that clients refuse them). */
  foreignNextLinks(on: boolean): void;
  /** Invalidates all issued access tokens. */
  revokeTokens(): void;
  /** Stops listening and drops connections: later calls get ECONNREFUSED. */
  close(): Promise<void>;
}

interface Stored {
  versions: Resource[];
  deleted: boolean;
}

function outcome(code: string, diagnostics: string): OperationOutcome {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: code as 'processing', diagnostics }] };
}

function sendFhir(res: Response, status: number, body: unknown): void {
  res.status(status).type('application/fhir+json').send(JSON.stringify(body));
}

function firstString(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (Array.isArray(v) && typeof v[0] === 'string') return v[0];
  return undefined;
}

function allStrings(v: unknown): string[] {
  if (typeof v === 'string') return [v];
  if (Array.isArray(v)) return v.filter((x): x is string => typeof x === 'string');
  return [];
}

function matchesDate(lastUpdated: string | undefined, filter: string): boolean {
  const m = /^(gt|ge|lt|le|eq)?(.+)$/.exec(filter);
  if (!m || !lastUpdated) return false;
  const value = Date.parse(lastUpdated);
  const bound = Date.parse(m[2] as string);
  switch (m[1] ?? 'eq') {
    case 'gt':
      return value > bound;
    case 'ge':
      return value >= bound;
    case 'lt':
      return value < bound;
    case 'le':
      return value <= bound;
    default:
      return value === bound;
  }
}

/** The CapabilityStatement the fake serves. */
export function fakeCapabilityStatement(capability: 'backport' | 'classic', topics: string[] = []): CapabilityStatement {
  const subscription: NonNullable<NonNullable<CapabilityStatement['rest']>[number]['resource']>[number] =
    capability === 'backport'
      ? {
          type: 'Subscription',
          extension: topics.map((t) => ({ url: `${BACKPORT}/capabilitystatement-subscriptiontopic-canonical`, valueCanonical: t })),
          supportedProfile: [`${BACKPORT}/backport-subscription`],
          interaction: [{ code: 'read' }, { code: 'create' }, { code: 'update' }, { code: 'delete' }, { code: 'search-type' }],
          operation: [
            { name: '$status', definition: `${BACKPORT_OPS}/backport-subscription-status` },
            { name: '$events', definition: `${BACKPORT_OPS}/backport-subscription-events` },
          ],
        }
      : {
          type: 'Subscription',
          interaction: [{ code: 'read' }, { code: 'create' }, { code: 'update' }, { code: 'delete' }, { code: 'search-type' }],
        };
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: '2024-01-01',
    kind: 'instance',
    fhirVersion: '4.0.1',
    format: ['json'],
    ...(capability === 'backport' ? { instantiates: [BACKPORT_CAPABILITY_R4] } : {}),
    rest: [
      {
        mode: 'server',
        resource: [
          subscription,
          { type: 'Patient', interaction: [{ code: 'read' }, { code: 'vread' }, { code: 'search-type' }] },
          { type: 'Observation', interaction: [{ code: 'read' }, { code: 'vread' }, { code: 'search-type' }] },
        ],
      },
    ],
  };
}

/** Starts the fake EHR on 127.0.0.1 with a random port. */
export async function startFakeEhr(options: FakeEhrOptions = {}): Promise<FakeEhr> {
  const clock = options.clock ?? systemClock;
  const capability = options.capability ?? 'backport';
  const pageSize = options.pageSize ?? 10;
  const tokenLifetime = options.tokenLifetimeSeconds ?? 300;
  const store = new Map<string, Map<string, Stored>>();
  const events = new Map<string, SubscriptionEvent[]>();
  const issuedTokens = new Map<string, number>();
  const seenJti = new Set<string>();
  const requests: RecordedRequest[] = [];
  const tokenRequests: TokenRequestRecord[] = [];
  let failures: Array<{ status: number; body: unknown; match: ((method: string, path: string) => boolean) | undefined }> = [];
  let throttles: number[] = [];
  let delays: number[] = [];
  let foreignNext = false;
  let nextId = 1;

  const app = express();
  app.disable('x-powered-by');
  app.use(express.json({ type: ['application/json', 'application/fhir+json'] }));
  app.use(express.urlencoded({ extended: false }));

  const server: Server = await new Promise((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
  });
  const port = (server.address() as AddressInfo).port;
  const origin = `http://127.0.0.1:${port}`;
  const baseUrl = `${origin}/fhir`;
  const tokenUrl = `${origin}/auth/token`;

  const bucket = (type: string): Map<string, Stored> => {
    let b = store.get(type);
    if (!b) store.set(type, (b = new Map()));
    return b;
  };

  function seed<T extends Resource>(resource: T): T & { id: string } {
    const id = resource.id ?? String(nextId++);
    const stored = bucket(resource.resourceType).get(id) ?? { versions: [], deleted: false };
    const versionId = String(stored.versions.length + 1);
    const copy = structuredClone({
      ...resource,
      id,
      meta: { ...resource.meta, versionId, lastUpdated: resource.meta?.lastUpdated ?? clock.now().toISOString() },
    }) as T & { id: string };
    stored.versions.push(copy);
    stored.deleted = false;
    bucket(resource.resourceType).set(id, stored);
    return structuredClone(copy);
  }

  function current<T extends Resource>(type: string, id: string): T | undefined {
    const s = store.get(type)?.get(id);
    if (!s || s.deleted) return undefined;
    return s.versions[s.versions.length - 1] as T | undefined;
  }

  // ---- SMART token endpoint -------------------------------------------------------------
  app.post('/auth/token', async (req: Request, res: Response) => {
    const form = Object.fromEntries(Object.entries((req.body ?? {}) as Record<string, unknown>).map(([k, v]) => [k, String(v)]));
    const record: TokenRequestRecord = { contentType: req.headers['content-type'], form };
    tokenRequests.push(record);
    const reject = (status: number, error: string, reason: string): void => {
      record.rejected = reason;
      res.status(status).json({ error, error_description: reason });
    };
    if (!options.smart) return reject(400, 'invalid_client', 'no client registered');
    if (form.grant_type !== 'client_credentials') return reject(400, 'unsupported_grant_type', 'grant_type');
    if (form.client_assertion_type !== JWT_BEARER) return reject(400, 'invalid_request', 'client_assertion_type');
    const assertion = form.client_assertion;
    if (!assertion) return reject(400, 'invalid_request', 'client_assertion missing');
    try {
      const header = decodeProtectedHeader(assertion);
      if (header.kid !== options.smart.publicJwk.kid) return reject(401, 'invalid_client', 'unknown kid');
      if (header.alg !== 'RS384' && header.alg !== 'ES384') return reject(401, 'invalid_client', 'alg');
      const key = await importJWK(options.smart.publicJwk, header.alg);
      const { payload } = await jwtVerify(assertion, key, {
        algorithms: ['RS384', 'ES384'],
        issuer: options.smart.clientId,
        subject: options.smart.clientId,
        audience: tokenUrl,
        currentDate: clock.now(),
        requiredClaims: ['exp', 'jti'],
      });
      const nowSeconds = Math.floor(clock.now().getTime() / 1000);
      if ((payload.exp as number) > nowSeconds + 300 + 5) return reject(401, 'invalid_client', 'exp more than 5 minutes ahead');
      if (seenJti.has(payload.jti as string)) return reject(401, 'invalid_client', 'jti replayed');
      seenJti.add(payload.jti as string);
      record.header = { ...header };
      record.claims = { ...payload };
    } catch (err) {
      const code = (err as { code?: string }).code ?? 'invalid';
      return reject(401, 'invalid_client', code);
    }
    const token = randomBytes(24).toString('base64url');
    issuedTokens.set(token, clock.now().getTime() + tokenLifetime * 1000);
    res.status(200).json({ access_token: token, token_type: 'bearer', expires_in: tokenLifetime, scope: form.scope ?? '' });
  });

  // ---- FHIR endpoints -------------------------------------------------------------------
  function authorized(req: Request): boolean {
    if (!options.requireAuth) return true;
    const m = /^Bearer (.+)$/.exec(req.headers.authorization ?? '');
    if (!m) return false;
    const token = m[1] as string;
    if ((options.staticTokens ?? []).includes(token)) return true;
    const expires = issuedTokens.get(token);
    return expires !== undefined && clock.now().getTime() < expires;
  }

  function search(req: Request, res: Response, type: string): void {
    const q = req.query as Record<string, unknown>;
    const count = Math.max(1, Math.min(1000, Number(firstString(q._count) ?? pageSize) || pageSize));
    const offset = Math.max(0, Number(firstString(q._offset) ?? 0) || 0);
    const lastUpdated = allStrings(q._lastUpdated);
    const tags = allStrings(q._tag);
    const urls = allStrings(q.url);
    const statuses = allStrings(q.status);
    const all = [...(store.get(type)?.values() ?? [])]
      .filter((s) => !s.deleted)
      .map((s) => s.versions[s.versions.length - 1] as Resource)
      .filter((r) => lastUpdated.every((f) => matchesDate(r.meta?.lastUpdated, f)))
      .filter((r) =>
        tags.every((t) => {
          const [system, code] = t.includes('|') ? t.split('|') : [undefined, t];
          return (r.meta?.tag ?? []).some((c) => (system === undefined || c.system === system) && c.code === code);
        }),
      )
      .filter((r) => type !== 'Subscription' || urls.every((u) => (r as Subscription).channel.endpoint === u))
      .filter((r) => type !== 'Subscription' || statuses.length === 0 || statuses.includes((r as Subscription).status))
      .sort((a, b) => (a.meta?.lastUpdated ?? '').localeCompare(b.meta?.lastUpdated ?? '') || (a.id ?? '').localeCompare(b.id ?? '', 'en', { numeric: true }));
    const page = all.slice(offset, offset + count);
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(q)) if (k !== '_offset') for (const s of allStrings(v)) params.append(k, s);
    const link: NonNullable<Bundle['link']> = [{ relation: 'self', url: `${baseUrl}/${type}?${params.toString()}` }];
    if (offset + count < all.length) {
      const next = new URLSearchParams(params);
      next.set('_offset', String(offset + count));
      const nextBase = foreignNext ? 'http://fhir.elsewhere.example/fhir' : baseUrl;
      link.push({ relation: 'next', url: `${nextBase}/${type}?${next.toString()}` });
    }
    const bundle: Bundle = {
      resourceType: 'Bundle',
      type: 'searchset',
      total: all.length,
      link,
      entry: page.map((r) => ({ fullUrl: `${baseUrl}/${r.resourceType}/${r.id}`, resource: r, search: { mode: 'match' } })),
    };
    sendFhir(res, 200, bundle);
  }

  function eventsOperation(req: Request, res: Response, id: string): void {
    const sub = current<Subscription>('Subscription', id);
    if (!sub) return sendFhir(res, 404, outcome('not-found', `Subscription/${id} not found`));
    if (options.eventsBody !== undefined) return sendFhir(res, 200, options.eventsBody as Resource);
    const body = req.body as Parameters | undefined;
    const param = (name: string): string | undefined =>
      firstString((req.query as Record<string, unknown>)[name]) ??
      (body?.resourceType === 'Parameters' ? (body.parameter ?? []).find((p) => p.name === name)?.valueString : undefined);
    const since = Number(param('eventsSinceNumber') ?? 1);
    const all = events.get(id) ?? [];
    const until = Number(param('eventsUntilNumber') ?? all.length);
    const selected = all.filter((e) => e.eventNumber >= since && e.eventNumber <= until);
    const content = (param('content') as PayloadContent | undefined) ?? subscriptionPayload(sub);
    sendFhir(
      res,
      200,
      buildNotificationBundle({
        subscriptionUrl: `${baseUrl}/Subscription/${id}`,
        topic: sub.criteria,
        type: 'query-event',
        status: sub.status,
        eventsSinceSubscriptionStart: all.length,
        content,
        baseUrl,
        events: selected,
      }),
    );
  }

  app.use('/fhir', async (req: Request, res: Response) => {
    requests.push({
      method: req.method,
      path: `/fhir${req.path}`,
      query: { ...(req.query as Record<string, unknown>) },
      authorization: req.headers.authorization,
      prefer: typeof req.headers.prefer === 'string' ? req.headers.prefer : undefined,
    });
    const delay = delays.shift();
    if (delay) await new Promise((r) => setTimeout(r, delay));
    if (res.destroyed || req.socket.destroyed) return;
    const retryAfter = throttles.shift();
    if (retryAfter !== undefined) {
      res.setHeader('Retry-After', String(retryAfter));
      return sendFhir(res, 429, outcome('throttled', 'slow down'));
    }
    const failureIndex = failures.findIndex((f) => !f.match || f.match(req.method, `/fhir${req.path}`));
    if (failureIndex >= 0) {
      const [failure] = failures.splice(failureIndex, 1);
      if (failure) return sendFhir(res, failure.status, failure.body);
    }

    const segments = req.path.split('/').filter(Boolean).map(decodeURIComponent);
    const [type, id, third, vid] = segments;
    if (type === 'metadata' && segments.length === 1 && req.method === 'GET') {
      return sendFhir(res, 200, options.capabilityStatement ?? fakeCapabilityStatement(capability, options.topics));
    }
    if (!authorized(req)) return sendFhir(res, 401, outcome('login', 'authentication required'));
    if (!type || !/^[A-Z][A-Za-z]+$/.test(type)) return sendFhir(res, 400, outcome('invalid', 'bad path'));

    if (segments.length === 1) {
      if (req.method === 'GET') return search(req, res, type);
      if (req.method === 'POST') {
        const body = req.body as Resource | undefined;
        if (body?.resourceType !== type) return sendFhir(res, 400, outcome('invalid', 'resourceType mismatch'));
        if (type === 'Subscription') {
          const sub = body as Subscription;
          if (capability === 'classic' && !/^[A-Z][A-Za-z]+\?/.test(sub.criteria)) {
            return sendFhir(res, 400, outcome('not-supported', 'topic-based subscriptions are not supported'));
          }
          (sub as { status: Subscription['status'] }).status = options.subscriptionStatus ?? 'active';
        }
        const { id: _ignored, ...rest } = body;
        const created = seed(rest as Resource);
        res.setHeader('Location', `${baseUrl}/${type}/${created.id}/_history/${created.meta?.versionId}`);
        return sendFhir(res, 201, created);
      }
      return sendFhir(res, 405, outcome('not-supported', 'method not allowed'));
    }
    if (!id) return sendFhir(res, 400, outcome('invalid', 'bad path'));
    if (segments.length === 3 && type === 'Subscription' && third === '$events' && (req.method === 'GET' || req.method === 'POST')) {
      if (capability !== 'backport') return sendFhir(res, 400, outcome('not-supported', '$events not supported'));
      return eventsOperation(req, res, id);
    }
    const stored = store.get(type)?.get(id);
    if (segments.length === 2 && req.method === 'GET') {
      if (!stored) return sendFhir(res, 404, outcome('not-found', `${type}/${id} not found`));
      if (stored.deleted) return sendFhir(res, 410, outcome('deleted', `${type}/${id} deleted`));
      return sendFhir(res, 200, stored.versions[stored.versions.length - 1]);
    }
    if (segments.length === 4 && third === '_history' && vid && req.method === 'GET') {
      const version = stored?.versions.find((v) => v.meta?.versionId === vid);
      if (!version) return sendFhir(res, 404, outcome('not-found', `${type}/${id}/_history/${vid} not found`));
      return sendFhir(res, 200, version);
    }
    if (segments.length === 2 && req.method === 'PUT') {
      const body = req.body as Resource | undefined;
      if (body?.resourceType !== type || body.id !== id) return sendFhir(res, 400, outcome('invalid', 'resourceType / id mismatch'));
      const updated = seed({ ...body, meta: { ...body.meta, lastUpdated: undefined } } as Resource);
      return sendFhir(res, stored ? 200 : 201, updated);
    }
    if (segments.length === 2 && req.method === 'DELETE') {
      if (!stored || stored.deleted) return sendFhir(res, 404, outcome('not-found', `${type}/${id} not found`));
      stored.deleted = true;
      return res.status(204).end();
    }
    return sendFhir(res, 400, outcome('not-supported', 'unsupported interaction'));
  });

  return {
    baseUrl,
    tokenUrl,
    origin,
    requests,
    tokenRequests,
    seed,
    remove(type, id) {
      const s = store.get(type)?.get(id);
      if (s) s.deleted = true;
    },
    get: current,
    subscriptions() {
      return [...(store.get('Subscription')?.values() ?? [])]
        .filter((s) => !s.deleted)
        .map((s) => structuredClone(s.versions[s.versions.length - 1] as Subscription));
    },
    setSubscriptionStatus(id, status) {
      const sub = current<Subscription>('Subscription', id);
      if (!sub) throw new Error(`no Subscription/${id}`);
      seed({ ...sub, status, meta: { ...sub.meta, lastUpdated: undefined } });
    },
    recordEvent(subscriptionId, focus) {
      const list = events.get(subscriptionId) ?? [];
      const eventNumber = list.length + 1;
      list.push({ eventNumber, timestamp: clock.now().toISOString(), focus: structuredClone(focus) });
      events.set(subscriptionId, list);
      return eventNumber;
    },
    heal() {
      failures = [];
      throttles = [];
      delays = [];
    },
    failNext(n, status = 500, body = outcome('exception', 'simulated failure'), match) {
      failures = [...failures, ...Array.from({ length: n }, () => ({ status, body, match }))];
    },
    throttleNext(n, retryAfterSeconds) {
      throttles = [...throttles, ...Array.from({ length: n }, () => retryAfterSeconds)];
    },
    slowNext(n, ms) {
      delays = [...delays, ...Array.from({ length: n }, () => ms)];
    },
    foreignNextLinks(on) {
      foreignNext = on;
    },
    revokeTokens() {
      issuedTokens.clear();
    },
    close() {
      return new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
      });
    },
  };
}

function subscriptionPayload(sub: Subscription): PayloadContent {
  const ext = (sub.channel as { _payload?: { extension?: Array<{ url: string; valueCode?: string }> } })._payload?.extension?.find(
    (e) => e.url === `${BACKPORT}/backport-payload-content`,
  );
  const code = ext?.valueCode;
  return code === 'empty' || code === 'full-resource' ? code : 'id-only';
}

export interface NotificationInput {
  /** Absolute URL of the Subscription on the EHR. */
  subscriptionUrl: string;
  topic: string;
  type: 'handshake' | 'heartbeat' | 'event-notification' | 'query-status' | 'query-event';
  status?: Subscription['status'];
  /** `events-since-subscription-start`. */
  eventsSinceSubscriptionStart: number;
  content: PayloadContent;
  /** Base URL the focus references are made absolute against. */
  baseUrl: string;
  events?: SubscriptionEvent[];
}

/**
 * A Backport IG R4 notification Bundle (`type` history): first entry the
 * `backport-subscription-status-r4` Parameters, then — for `full-resource` — one entry per focus
 * resource. `id-only` carries focus references only; `empty` carries neither.
 * https://hl7.org/fhir/uv/subscriptions-backport/notifications.html
 */
export function buildNotificationBundle(input: NotificationInput): Bundle {
  const evs = input.events ?? [];
  const statusId = randomUUID();
  const parameter: ParametersParameter[] = [
    { name: 'subscription', valueReference: { reference: input.subscriptionUrl } },
    { name: 'topic', valueCanonical: input.topic },
    { name: 'status', valueCode: input.status ?? 'active' },
    { name: 'type', valueCode: input.type },
    { name: 'events-since-subscription-start', valueString: String(input.eventsSinceSubscriptionStart) },
    ...evs.map(
      (e): ParametersParameter => ({
        name: 'notification-event',
        part: [
          { name: 'event-number', valueString: String(e.eventNumber) },
          { name: 'timestamp', valueInstant: e.timestamp },
          ...(input.content === 'empty' ? [] : [{ name: 'focus', valueReference: { reference: `${input.baseUrl}/${e.focus.resourceType}/${e.focus.id}` } }]),
        ],
      }),
    ),
  ];
  const statusEntry: BundleEntry = {
    fullUrl: `urn:uuid:${statusId}`,
    resource: {
      resourceType: 'Parameters',
      id: statusId,
      meta: { profile: [`${BACKPORT}/backport-subscription-status-r4`] },
      parameter,
    },
    request: { method: 'GET', url: `${input.subscriptionUrl}/$status` },
    response: { status: '200' },
  };
  const focusEntries: BundleEntry[] =
    input.content === 'full-resource'
      ? evs.map((e) => ({
          fullUrl: `${input.baseUrl}/${e.focus.resourceType}/${e.focus.id}`,
          resource: e.focus,
          request: { method: 'PUT', url: `${e.focus.resourceType}/${e.focus.id}` },
          response: { status: '200' },
        }))
      : [];
  return {
    resourceType: 'Bundle',
    id: randomUUID(),
    meta: { profile: [`${BACKPORT}/backport-subscription-notification-r4`] },
    type: 'history',
    timestamp: new Date().toISOString(),
    entry: [statusEntry, ...focusEntries],
  };
}

/** A handshake notification for a newly created Subscription. */
export function buildHandshake(subscriptionUrl: string, topic: string, baseUrl: string): Bundle {
  return buildNotificationBundle({ subscriptionUrl, topic, type: 'handshake', status: 'requested', eventsSinceSubscriptionStart: 0, content: 'empty', baseUrl });
}

/** A heartbeat notification. */
export function buildHeartbeat(subscriptionUrl: string, topic: string, baseUrl: string, eventsSinceSubscriptionStart: number): Bundle {
  return buildNotificationBundle({ subscriptionUrl, topic, type: 'heartbeat', eventsSinceSubscriptionStart, content: 'empty', baseUrl });
}
