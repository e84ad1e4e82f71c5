/**
 * The client fhir-anchor uses to call a source EHR back (fetch-back for id-only / empty
 * notifications, reference resolution, `_lastUpdated` catch-up, Subscription management), built on
 * `fhir-kit-client`.
 *
 * Every request is rate-limited per source ({@link TokenBucket}), bounded by a per-attempt timeout,
 * authenticated per request from `source.callbackAuth`, and retried with exponential backoff and
 * jitter on network errors, timeouts, 429 (honouring `Retry-After`) and 5xx — never on other 4xx.
 * Failures surface as {@link SourceError}, whose message names the operation, resource type / id,
 * source id and HTTP status only: never a credential, a search parameter value or a response body.
 *
 * FHIR R4 REST: https://hl7.org/fhir/R4/http.html
 */
import type { Bundle, BundleEntry, CapabilityStatement, Resource } from '@medplum/fhirtypes';
import { Client, type FhirResource, type RequestOptions, type SearchParams } from 'fhir-kit-client';
import type { Clock } from '../platform/clock.js';
import { systemClock } from '../platform/clock.js';
import type { Logger } from '../platform/logger.js';
import { createSourceRateLimiter, realSleep, type Sleep, type TokenBucket } from './rate-limit.js';
import { SmartBackendError, createSmartBackendAuth, type SmartBackendAuth, type SmartBackendOptions } from './smart-backend.js';
import type { Source } from './source.js';

export type { SearchParams };

/** What went wrong, coarsely; `retryable` says whether trying again later may help. */
export type SourceErrorKind = 'http' | 'network' | 'timeout' | 'auth' | 'invalid-response' | 'invalid-request' | 'aborted';

/**
 * A failed call to a source. The message is safe to log and to store: it never contains a
 * credential, a search parameter value or a resource / response body.
 */
export class SourceError extends Error {
  override readonly name = 'SourceError';
  /** HTTP status from the source (or from its token endpoint when `kind` is `auth`). */
  readonly status: number | undefined;
  /** Whether the same call may succeed later (network errors, timeouts, 429, 5xx). */
  readonly retryable: boolean;
  readonly kind: SourceErrorKind;
  /** The source's `Retry-After`, ms, when it sent one. */
  readonly retryAfterMs: number | undefined;
  /** Network error code such as `ECONNREFUSED`, when known. */
  readonly code: string | undefined;

  constructor(
    message: string,
    details: { kind: SourceErrorKind; retryable: boolean; status?: number; retryAfterMs?: number; code?: string },
  ) {
    super(message);
    this.kind = details.kind;
    this.retryable = details.retryable;
    this.status = details.status;
    this.retryAfterMs = details.retryAfterMs;
    this.code = details.code;
  }
}

/** Result of a read / vread: the resource, or `gone` when the source answered 404 or 410 (the caller handles deletes). */
export type ReadResult<T extends Resource = Resource> =
  | { readonly kind: 'found'; readonly resource: T }
  | { readonly kind: 'gone'; readonly status: 404 | 410 };

/** `$events` parameters (Subscriptions Backport IG, `OperationDefinition/backport-subscription-events`); numbers are inclusive bounds. */
export interface EventsQuery {
  eventsSinceNumber?: number;
  eventsUntilNumber?: number;
  /** Requested payload content; a hint the server MAY ignore. */
  content?: 'empty' | 'id-only' | 'full-resource';
}

/** Per-call options. */
export interface CallOptions {
  /** Aborts the call, including rate-limit and backoff waits; surfaces as a non-retryable `aborted` SourceError. */
  signal?: AbortSignal;
}

export interface SearchOptions extends CallOptions {
  /** Stop with an error after this many pages. Default: the client's `maxPages`. */
  maxPages?: number;
  /** Also yield `search.mode = include` entries (default: only matches). */
  includeIncluded?: boolean;
}

export interface SourceClientOptions {
  /** Timeout of one HTTP attempt (including a SMART token request it needs), ms. Default 15 000. */
  fetchTimeoutMs?: number;
  /** Retries after the first attempt for retryable failures. Default 3. */
  maxRetries?: number;
  /** First backoff delay, ms; doubles per retry, with "equal jitter" (half fixed, half random). Default 250. */
  retryBaseDelayMs?: number;
  /** Cap on one backoff delay, ms. Default 10 000. */
  retryMaxDelayMs?: number;
  /** Longest `Retry-After` we wait out inline, ms; longer ones fail at once (retryable, with `retryAfterMs`) for the queue to reschedule. Default 30 000. */
  maxRetryAfterMs?: number;
  /** Maximum pages one search follows, guarding against looping `next` links. Default 1 000. */
  maxPages?: number;
  /** How long `capabilities()` is cached, ms. Default 3 600 000 (1 h). */
  capabilitiesTtlMs?: number;
  logger?: Logger;
  clock?: Clock;
  /** Timer for backoff (and for the default rate limiter). */
  sleep?: Sleep;
  /** Random source in [0, 1) for jitter. Default `Math.random`. */
  random?: () => number;
  /** Share one bucket between all clients of a source; default a new one from `source.rateLimitPerSecond`. */
  rateLimiter?: TokenBucket;
  /** Share one token cache between clients of a source; default a new one from `source.callbackAuth`. */
  smartAuth?: SmartBackendAuth;
  /** Options for the default SMART token client. */
  smartOptions?: SmartBackendOptions;
}

/** Calls to one source EHR. */
export interface SourceClient {
  readonly sourceId: string;
  /** FHIR `read`. 404 / 410 resolve to `{ kind: 'gone' }`. */
  read<T extends Resource = Resource>(type: T['resourceType'], id: string, options?: CallOptions): Promise<ReadResult<T>>;
  /** FHIR `vread`. 404 / 410 resolve to `{ kind: 'gone' }`. */
  vread<T extends Resource = Resource>(type: T['resourceType'], id: string, versionId: string, options?: CallOptions): Promise<ReadResult<T>>;
  /**
   * FHIR type-level search, following `Bundle.link[next]` (same origin as the source only) and
   * yielding matching resources, e.g. `search('Observation', { _lastUpdated: 'gt2024-01-01T00:00:00Z' })`.
   */
  search<T extends Resource = Resource>(type: T['resourceType'], params?: SearchParams, options?: SearchOptions): AsyncGenerator<T, void, undefined>;
  /** The source's CapabilityStatement (`GET [base]/metadata`), cached for `capabilitiesTtlMs`. */
  capabilities(options?: CallOptions & { refresh?: boolean }): Promise<CapabilityStatement>;
  /** Whether the source advertises topic-based subscriptions (Subscriptions R5 Backport IG). See {@link advertisesTopicSubscriptions}. */
  supportsTopicSubscriptions(options?: CallOptions): Promise<boolean>;
  /** Whether the source advertises `Subscription/[id]/$events`. See {@link advertisesEventsOperation}. */
  supportsEventsOperation(options?: CallOptions): Promise<boolean>;
  /** `GET [base]/Subscription/[id]/$events`: the notification Bundle for the requested event numbers. */
  events(subscriptionId: string, query?: EventsQuery, options?: CallOptions): Promise<Bundle>;
  /** FHIR `create` (POST). Not idempotent: retried only when the source certainly did not process it (429, connection refused). */
  create<T extends Resource>(resource: T, options?: CallOptions): Promise<T>;
  /** FHIR `update` (PUT `[type]/[id]`). */
  update<T extends Resource>(resource: T & { id: string }, options?: CallOptions): Promise<T>;
  /** FHIR `delete`. Resolves also when the resource is already gone (404 / 410). */
  delete(type: Resource['resourceType'], id: string, options?: CallOptions): Promise<void>;
}

/** Canonical of the Backport IG's R4 topic-based subscription server CapabilityStatement. https://hl7.org/fhir/uv/subscriptions-backport/CapabilityStatement-backport-subscription-server-r4.html */
export const BACKPORT_SERVER_CAPABILITY_R4 = 'http://hl7.org/fhir/uv/subscriptions-backport/CapabilityStatement/backport-subscription-server-r4';
/** The R4B variant; also accepted as advertising topic-based subscriptions. */
export const BACKPORT_SERVER_CAPABILITY = 'http://hl7.org/fhir/uv/subscriptions-backport/CapabilityStatement/backport-subscription-server';
/** Backport Subscription profile. */
export const BACKPORT_SUBSCRIPTION_PROFILE = 'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription';
const BACKPORT_TOPIC_CANONICAL_EXT = 'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/capabilitystatement-subscriptiontopic-canonical';

const RESOURCE_TYPE = /^[A-Z][A-Za-z]{1,63}$/;
/** FHIR `id` (R4): 1-64 of A-Z a-z 0-9 - . */
const FHIR_ID = /^[A-Za-z0-9\-.]{1,64}$/;

const stripVersion = (canonical: string): string => canonical.split('|')[0] ?? canonical;

type CsResource = NonNullable<NonNullable<CapabilityStatement['rest']>[number]['resource']>[number];
type CsOperation = NonNullable<CsResource['operation']>[number];

function csResources(cs: CapabilityStatement): CsResource[] {
  return (cs.rest ?? []).flatMap((r) => r.resource ?? []);
}

function subscriptionOperations(cs: CapabilityStatement): CsOperation[] {
  const onResource = csResources(cs)
    .filter((r) => r.type === 'Subscription')
    .flatMap((r) => r.operation ?? []);
  const onSystem = (cs.rest ?? []).flatMap((r) => r.operation ?? []);
  return [...onResource, ...onSystem];
}

function hasOperation(cs: CapabilityStatement, name: string, definitionSuffixes: string[]): boolean {
  return subscriptionOperations(cs).some((op) => {
    const opName = op.name.replace(/^\$/, '');
    const def = stripVersion(op.definition ?? '');
    return opName === name || definitionSuffixes.some((s) => def.endsWith(s));
  });
}

/**
 * Whether a CapabilityStatement advertises topic-based subscriptions per the Subscriptions R5
 * Backport IG (https://hl7.org/fhir/uv/subscriptions-backport/): it instantiates or imports the
 * backport server CapabilityStatement, or exposes `SubscriptionTopic` (R4B) or `Basic` topic
 * resources, or a Subscription resource with the backport profile, topic canonicals, or `$status`.
 */
export function advertisesTopicSubscriptions(cs: CapabilityStatement): boolean {
  const claimed = [...(cs.instantiates ?? []), ...(cs.imports ?? [])].map(stripVersion);
  if (claimed.includes(BACKPORT_SERVER_CAPABILITY_R4) || claimed.includes(BACKPORT_SERVER_CAPABILITY)) return true;
  for (const r of csResources(cs)) {
    const type: string = r.type;
    if (type === 'SubscriptionTopic') return true;
    const profiles = [...(r.supportedProfile ?? []), ...(r.profile ? [r.profile] : [])].map(stripVersion);
    if (r.type === 'Basic' && profiles.some((p) => /subscription-?topic/i.test(p))) return true;
    if (r.type === 'Subscription') {
      if (profiles.includes(BACKPORT_SUBSCRIPTION_PROFILE)) return true;
      if ((r.extension ?? []).some((e) => e.url === BACKPORT_TOPIC_CANONICAL_EXT)) return true;
    }
  }
  return hasOperation(cs, 'status', ['/backport-subscription-status', '/Subscription-status']);
}

/** Whether a CapabilityStatement advertises `Subscription/[id]/$events` (Backport IG `backport-subscription-events`, or R5 `Subscription-events`). */
export function advertisesEventsOperation(cs: CapabilityStatement): boolean {
  return hasOperation(cs, 'events', ['/backport-subscription-events', '/Subscription-events']);
}

interface KitHttpError {
  response: { status: number; data?: unknown };
  config?: { headers?: unknown };
}

function isKitHttpError(err: unknown): err is KitHttpError {
  const response = (err as { response?: { status?: unknown } } | null)?.response;
  return typeof response?.status === 'number';
}

/** Parses `Retry-After` (delay-seconds or HTTP-date, RFC 9110 §10.2.3) into ms from now. */
export function parseRetryAfter(value: string | null | undefined, now: Date): number | undefined {
  if (!value) return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  const date = Date.parse(trimmed);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now.getTime());
}

const ISSUE_CODE = /^[a-z-]{1,32}$/;

/** The OperationOutcome issue code (a FHIR enum, never free text), if the body is an OperationOutcome. */
function outcomeCode(data: unknown): string | undefined {
  const d = data as { resourceType?: unknown; issue?: Array<{ code?: unknown }> } | null | undefined;
  if (d?.resourceType !== 'OperationOutcome') return undefined;
  const code = d.issue?.[0]?.code;
  return typeof code === 'string' && ISSUE_CODE.test(code) ? code : undefined;
}

function networkCode(err: unknown): string | undefined {
  let e: unknown = err;
  for (let i = 0; i < 4 && e; i++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && /^[A-Z_]{2,40}$/.test(code)) return code;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

function sameSource(url: string, baseUrl: string): boolean {
  try {
    const u = new URL(url);
    const b = new URL(baseUrl);
    return u.origin === b.origin;
  } catch {
    return false;
  }
}

/** Asks for the stored resource back (FHIR R4 `Prefer: return=representation`), so create/update results can be checked. */
function withPrefer(o: RequestOptions): RequestOptions {
  return { ...o, headers: { ...o.headers, prefer: 'return=representation' } };
}

/** Waits for a shared promise, rejecting early (without cancelling it) when `signal` aborts. */
function waitOrAbort<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(new SourceError('call aborted', { kind: 'aborted', retryable: false }));
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(new SourceError('call aborted', { kind: 'aborted', retryable: false }));
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (v) => (signal.removeEventListener('abort', onAbort), resolve(v)),
      (e: unknown) => (signal.removeEventListener('abort', onAbort), reject(e)),
    );
  });
}

function invalidRequest(message: string): SourceError {
  return new SourceError(message, { kind: 'invalid-request', retryable: false });
}

/**
 * Creates the client for one source. Pass `rateLimiter` / `smartAuth` to share them between
 * clients of the same source (the limit is per source, not per client).
 */
export function createSourceClient(source: Source, options: SourceClientOptions = {}): SourceClient {
  const clock = options.clock ?? systemClock;
  const sleep = options.sleep ?? realSleep;
  const random = options.random ?? Math.random;
  const fetchTimeoutMs = options.fetchTimeoutMs ?? 15_000;
  const maxRetries = options.maxRetries ?? 3;
  const baseDelay = options.retryBaseDelayMs ?? 250;
  const maxDelay = options.retryMaxDelayMs ?? 10_000;
  const maxRetryAfterMs = options.maxRetryAfterMs ?? 30_000;
  const defaultMaxPages = options.maxPages ?? 1000;
  const capabilitiesTtlMs = options.capabilitiesTtlMs ?? 3_600_000;
  const logger = options.logger;
  const limiter = options.rateLimiter ?? createSourceRateLimiter(source, { clock, sleep });
  const auth = source.callbackAuth;
  const smart =
    auth.type === 'smart-backend'
      ? (options.smartAuth ?? createSmartBackendAuth(auth, { clock, timeoutMs: fetchTimeoutMs, ...options.smartOptions, ...(logger ? { logger } : {}) }))
      : undefined;
  // No default credentials on the kit client: Authorization is set per request below.
  const kit = new Client({ baseUrl: source.baseUrl });
  const where = `source ${source.id}`;

  async function authHeaders(signal: AbortSignal): Promise<Record<string, string>> {
    if (auth.type === 'bearer') return { authorization: `Bearer ${auth.token}` };
    if (smart) return { authorization: `Bearer ${await smart.getAccessToken(signal)}` };
    return {};
  }

  function toSourceError(err: unknown, label: string, timedOut: boolean, callerAborted: boolean): SourceError {
    if (err instanceof SourceError) return err;
    if (callerAborted) return new SourceError(`${label} on ${where} was aborted`, { kind: 'aborted', retryable: false });
    if (timedOut) return new SourceError(`${label} on ${where} timed out after ${fetchTimeoutMs} ms`, { kind: 'timeout', retryable: true });
    if (err instanceof SmartBackendError) {
      return new SourceError(`${label} on ${where}: ${err.message}`, {
        kind: 'auth',
        retryable: err.retryable,
        ...(err.status !== undefined ? { status: err.status } : {}),
      });
    }
    if (isKitHttpError(err)) {
      const status = err.response.status;
      if (status >= 200 && status < 300) {
        return new SourceError(`${label} on ${where} failed: the response was not JSON`, { kind: 'invalid-response', status, retryable: false });
      }
      const headers = err.config?.headers as { get?: unknown } | undefined;
      const retryAfterMs = typeof headers?.get === 'function' ? parseRetryAfter((headers as Headers).get('retry-after'), clock.now()) : undefined;
      const code = outcomeCode(err.response.data);
      return new SourceError(`${label} on ${where} failed: HTTP ${status}${code ? ` (${code})` : ''}`, {
        kind: 'http',
        status,
        retryable: status === 429 || status >= 500,
        ...(retryAfterMs !== undefined ? { retryAfterMs } : {}),
      });
    }
    // Duck-typed, not `instanceof`: fetch errors may come from another realm (e.g. test VMs).
    const errName = (err as { name?: unknown } | null | undefined)?.name;
    if (errName === 'TimeoutError' || errName === 'AbortError') {
      return new SourceError(`${label} on ${where} timed out after ${fetchTimeoutMs} ms`, { kind: 'timeout', retryable: true });
    }
    if (errName === 'TypeError' || networkCode(err)) {
      const code = networkCode(err);
      return new SourceError(`${label} on ${where} failed: network error${code ? ` (${code})` : ''}`, {
        kind: 'network',
        retryable: true,
        ...(code ? { code } : {}),
      });
    }
    const name = typeof errName === 'string' && /^\w{1,40}$/.test(errName) ? errName : 'error';
    return new SourceError(`${label} on ${where} failed: unexpected ${name}`, { kind: 'invalid-response', retryable: false });
  }

  function backoff(attempt: number): number {
    const exp = Math.min(maxDelay, baseDelay * 2 ** attempt);
    return Math.round(exp / 2 + random() * (exp / 2));
  }

  /**
   * One logical call: rate limit, timeout, auth, retries. `idempotent: false` (POST) retries only
   * when the source certainly did not act on the request: 429 or connection refused.
   */
  async function call(
    label: string,
    idempotent: boolean,
    signal: AbortSignal | undefined,
    send: (requestOptions: RequestOptions) => Promise<FhirResource>,
  ): Promise<FhirResource> {
    for (let attempt = 0; ; attempt++) {
      let timeout: AbortSignal | undefined;
      try {
        await limiter.take(signal);
        timeout = AbortSignal.timeout(fetchTimeoutMs);
        const attemptSignal = signal ? AbortSignal.any([signal, timeout]) : timeout;
        const headers = await authHeaders(attemptSignal);
        return await send({ headers, signal: attemptSignal });
      } catch (err) {
        const error = toSourceError(err, label, timeout?.aborted === true, signal?.aborted === true);
        if (error.kind === 'http' && error.status === 401 && smart) smart.invalidate();
        const safeToRepeat = idempotent || error.status === 429 || error.code === 'ECONNREFUSED';
        if (!error.retryable || !safeToRepeat || attempt >= maxRetries) throw error;
        if (error.retryAfterMs !== undefined && error.retryAfterMs > maxRetryAfterMs) throw error;
        const delayMs = error.retryAfterMs ?? backoff(attempt);
        logger?.warn({ sourceId: source.id, attempt: attempt + 1, status: error.status, kind: error.kind, delayMs }, `${label}: retrying`);
        try {
          await sleep(delayMs, signal);
        } catch {
          throw new SourceError(`${label} on ${where} was aborted`, { kind: 'aborted', retryable: false });
        }
      }
    }
  }

  function checkType(type: string): void {
    if (!RESOURCE_TYPE.test(type)) throw invalidRequest(`invalid resource type for ${where}`);
  }
  function checkId(id: string, what = 'id'): void {
    if (!FHIR_ID.test(id)) throw invalidRequest(`invalid ${what} for ${where}`);
  }

  function expectResourceType<T>(result: FhirResource, type: string, label: string): T {
    if (result.resourceType !== type) {
      throw new SourceError(`${label} on ${where}: expected ${type}, got ${String(result.resourceType)}`, { kind: 'invalid-response', retryable: false });
    }
    return result as unknown as T;
  }

  async function readLike<T extends Resource>(label: string, type: string, signal: AbortSignal | undefined, send: (o: RequestOptions) => Promise<FhirResource>): Promise<ReadResult<T>> {
    try {
      const result = await call(label, true, signal, send);
      return { kind: 'found', resource: expectResourceType<T>(result, type, label) };
    } catch (err) {
      if (err instanceof SourceError && err.kind === 'http' && (err.status === 404 || err.status === 410)) {
        return { kind: 'gone', status: err.status };
      }
      throw err;
    }
  }

  let capsCache: { value: CapabilityStatement; fetchedAt: number } | undefined;
  let capsInflight: Promise<CapabilityStatement> | undefined;

  const client: SourceClient = {
    sourceId: source.id,

    async read(type, id, opts) {
      checkType(type);
      checkId(id);
      return readLike(`read ${type}/${id}`, type, opts?.signal, (o) => kit.read({ resourceType: type, id, options: o }));
    },

    async vread(type, id, versionId, opts) {
      checkType(type);
      checkId(id);
      checkId(versionId, 'version id');
      return readLike(`vread ${type}/${id}/_history/${versionId}`, type, opts?.signal, (o) =>
        kit.vread({ resourceType: type, id, version: versionId, options: o }),
      );
    },

    async *search<T extends Resource = Resource>(type: T['resourceType'], params: SearchParams = {}, opts: SearchOptions = {}) {
      checkType(type);
      const maxPages = opts.maxPages ?? defaultMaxPages;
      const seen = new Set<string>();
      let pageNo = 1;
      let label = `search ${type}`;
      let page = await call(label, true, opts.signal, (o) => kit.search({ resourceType: type, searchParams: params, options: o }));
      for (;;) {
        const bundle = expectResourceType<Bundle>(page, 'Bundle', label);
        for (const entry of bundle.entry ?? []) {
          const mode = entry.search?.mode;
          if (!entry.resource || mode === 'outcome' || (mode === 'include' && !opts.includeIncluded)) continue;
          yield entry.resource as T;
        }
        const next = bundle.link?.find((l) => l.relation === 'next')?.url;
        if (!next) return;
        // A next link elsewhere would receive our credentials; a repeated one would loop forever.
        if (!sameSource(next, source.baseUrl)) {
          throw new SourceError(`${label} on ${where}: next link points to another origin; refusing to follow`, { kind: 'invalid-response', retryable: false });
        }
        if (seen.has(next)) throw new SourceError(`${label} on ${where}: next link repeats; refusing to loop`, { kind: 'invalid-response', retryable: false });
        if (pageNo >= maxPages) throw new SourceError(`${label} on ${where}: more than ${maxPages} pages`, { kind: 'invalid-response', retryable: false });
        seen.add(next);
        pageNo++;
        label = `search ${type} (page ${pageNo})`;
        const linked = { ...bundle, link: [{ relation: 'next', url: next }] } as FhirResource & { link: Array<{ relation: string; url: string }> };
        page = await call(label, true, opts.signal, (o) => kit.nextPage({ bundle: linked, options: o }) ?? Promise.reject(new Error('no next link')));
      }
    },

    capabilities(opts) {
      const fresh = capsCache && clock.now().getTime() - capsCache.fetchedAt < capabilitiesTtlMs;
      if (capsCache && fresh && !opts?.refresh) return Promise.resolve(capsCache.value);
      if (!capsInflight) {
        // Shared by concurrent callers, so not tied to any one caller's signal (the attempt timeout still bounds it).
        capsInflight = call('read metadata', true, undefined, (o) => kit.capabilityStatement(o))
          .then((cs) => {
            const value = expectResourceType<CapabilityStatement>(cs, 'CapabilityStatement', 'read metadata');
            capsCache = { value, fetchedAt: clock.now().getTime() };
            return value;
          })
          .finally(() => {
            capsInflight = undefined;
          });
      }
      return waitOrAbort(capsInflight, opts?.signal);
    },

    async supportsTopicSubscriptions(opts) {
      return advertisesTopicSubscriptions(await client.capabilities(opts));
    },

    async supportsEventsOperation(opts) {
      return advertisesEventsOperation(await client.capabilities(opts));
    },

    async events(subscriptionId, query = {}, opts) {
      checkId(subscriptionId, 'subscription id');
      const input: Record<string, string> = {};
      for (const key of ['eventsSinceNumber', 'eventsUntilNumber'] as const) {
        const n = query[key];
        if (n === undefined) continue;
        if (!Number.isSafeInteger(n) || n < 0) throw invalidRequest(`invalid ${key} for ${where}`);
        input[key] = String(n);
      }
      if (query.content) input.content = query.content;
      const label = `$events Subscription/${subscriptionId}`;
      const result = await call(label, true, opts?.signal, (o) =>
        kit.operation({ name: '$events', resourceType: 'Subscription', id: subscriptionId, method: 'GET', input, options: o }),
      );
      return expectResourceType<Bundle>(result, 'Bundle', label);
    },

    async create<T extends Resource>(resource: T, opts?: CallOptions): Promise<T> {
      checkType(resource.resourceType);
      const label = `create ${resource.resourceType}`;
      const result = await call(label, false, opts?.signal, (o) =>
        kit.create({ resourceType: resource.resourceType, body: resource as unknown as FhirResource, options: withPrefer(o) }),
      );
      return expectResourceType<T>(result, resource.resourceType, label);
    },

    async update<T extends Resource>(resource: T & { id: string }, opts?: CallOptions): Promise<T> {
      checkType(resource.resourceType);
      checkId(resource.id);
      const label = `update ${resource.resourceType}/${resource.id}`;
      const result = await call(label, true, opts?.signal, (o) =>
        kit.update({ resourceType: resource.resourceType, id: resource.id, body: resource as unknown as FhirResource, options: withPrefer(o) }),
      );
      return expectResourceType<T>(result, resource.resourceType, label);
    },

    async delete(type, id, opts) {
      checkType(type);
      checkId(id);
      try {
        await call(`delete ${type}/${id}`, true, opts?.signal, (o) => kit.delete({ resourceType: type, id, options: o }));
      } catch (err) {
        if (err instanceof SourceError && err.kind === 'http' && (err.status === 404 || err.status === 410)) return;
        throw err;
      }
    },
  };
  return client;
}

/** The entries of a Bundle that carry a resource, typed. */
export function bundleResources<T extends Resource = Resource>(bundle: Bundle): T[] {
  return (bundle.entry ?? []).flatMap((e: BundleEntry) => (e.resource ? [e.resource as T] : []));
}
