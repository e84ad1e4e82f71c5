/**
 * Source client against the fake EHR over real HTTP: reads, paging, capabilities, $events, auth
 * modes, retries / backoff / Retry-After, timeouts, rate limiting, and secret-free errors.
 */
import { Writable } from 'node:stream';
import type { CapabilityStatement, Observation, Patient } from '@medplum/fhirtypes';
import { exportJWK, generateKeyPair, type JWK } from 'jose';
import { ManualClock } from '../../src/platform/clock.js';
import { createLogger } from '../../src/platform/logger.js';
import { TokenBucket, createSourceRateLimiter, realSleep, type Sleep } from '../../src/ingest/rate-limit.js';
import {
  SourceError,
  advertisesEventsOperation,
  advertisesTopicSubscriptions,
  createSourceClient,
  parseRetryAfter,
  type SourceClientOptions,
} from '../../src/ingest/source-client.js';
import { sourceSchema, type Source, type SourceInput } from '../../src/ingest/source.js';
import { fakeCapabilityStatement, startFakeEhr, type FakeEhr } from '../helpers/fake-ehr.js';

const HOOK_TOKEN = 'hook-bearer-token-0123456789';
const STATIC_TOKEN = 'static-callback-token-abcdef-SECRET';

function makeSource(ehr: FakeEhr, overrides: Partial<SourceInput> = {}): Source {
  return sourceSchema.parse({
    id: 'hospital-a',
    name: 'Hospital A',
    baseUrl: ehr.baseUrl,
    hookAuth: { bearerToken: HOOK_TOKEN },
    rateLimitPerSecond: 1000,
    ...overrides,
  });
}

/** Sleep that records requested delays and waits at most 5 ms, so backoff tests stay fast. */
function recordingSleep(): { sleep: Sleep; delays: number[] } {
  const delays: number[] = [];
  return { delays, sleep: (ms, signal) => (delays.push(ms), realSleep(Math.min(ms, 5), signal)) };
}

function fastOptions(extra: SourceClientOptions = {}): SourceClientOptions {
  return { retryBaseDelayMs: 5, retryMaxDelayMs: 20, fetchTimeoutMs: 2000, ...extra };
}

async function sourceError(p: Promise<unknown>): Promise<SourceError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof SourceError) return err;
    throw err;
  }
  throw new Error('expected a SourceError');
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

function capturingLogger(): { logger: ReturnType<typeof createLogger>; lines: string[] } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(chunk.toString());
      cb();
    },
  });
  return { logger: createLogger('debug', stream), lines };
}

const fhirRequests = (ehr: FakeEhr, path: string): number => ehr.requests.filter((r) => r.path === path).length;

describe('source client', () => {
  let ehr: FakeEhr;
  beforeEach(async () => {
    ehr = await startFakeEhr({ pageSize: 10 });
  });
  afterEach(async () => {
    await ehr.close().catch(() => undefined);
  });

  describe('read / vread', () => {
    it('reads the current version and a given version', async () => {
      ehr.seed<Patient>({ resourceType: 'Patient', id: 'p1', active: true });
      ehr.seed<Patient>({ resourceType: 'Patient', id: 'p1', active: false });
      const client = createSourceClient(makeSource(ehr), fastOptions());
      const r = await client.read<Patient>('Patient', 'p1');
      expect(r).toMatchObject({ kind: 'found', resource: { resourceType: 'Patient', id: 'p1', active: false, meta: { versionId: '2' } } });
      const v1 = await client.vread<Patient>('Patient', 'p1', '1');
      expect(v1).toMatchObject({ kind: 'found', resource: { active: true, meta: { versionId: '1' } } });
    });

    it('404 and 410 are a typed "gone" result, not an error', async () => {
      ehr.seed<Patient>({ resourceType: 'Patient', id: 'p2' });
      ehr.remove('Patient', 'p2');
      const client = createSourceClient(makeSource(ehr), fastOptions());
      await expect(client.read('Patient', 'nope')).resolves.toEqual({ kind: 'gone', status: 404 });
      await expect(client.read('Patient', 'p2')).resolves.toEqual({ kind: 'gone', status: 410 });
      await expect(client.vread('Patient', 'nope', '3')).resolves.toEqual({ kind: 'gone', status: 404 });
      expect(fhirRequests(ehr, '/fhir/Patient/nope')).toBe(1); // no retry
    });

    it('rejects ids that are not FHIR ids before any request', async () => {
      const client = createSourceClient(makeSource(ehr), fastOptions());
      const err = await sourceError(client.read('Patient', '../metadata'));
      expect(err).toMatchObject({ kind: 'invalid-request', retryable: false });
      await expect(client.read('bad type' as 'Patient', 'x')).rejects.toBeInstanceOf(SourceError);
      expect(ehr.requests).toHaveLength(0);
    });

    it('refuses a response of the wrong resource type', async () => {
      const client = createSourceClient(makeSource(ehr), fastOptions());
      ehr.seed<Patient>({ resourceType: 'Patient', id: 'x1' });
      ehr.failNext(1, 200, { resourceType: 'Observation', id: 'x1' });
      expect(await sourceError(client.read('Patient', 'x1'))).toMatchObject({ kind: 'invalid-response', retryable: false });
    });
  });

  describe('search', () => {
    it('follows next links across pages and yields every match', async () => {
      for (let i = 0; i < 25; i++) ehr.seed<Observation>({ resourceType: 'Observation', id: `o${i}`, status: 'final', code: { text: 'x' } });
      const client = createSourceClient(makeSource(ehr), fastOptions());
      const all = await collect(client.search<Observation>('Observation'));
      expect(all.map((o) => o.id)).toEqual(Array.from({ length: 25 }, (_, i) => `o${i}`));
      expect(fhirRequests(ehr, '/fhir/Observation')).toBe(3);
      const seven = await collect(client.search('Observation', { _count: 7 }));
      expect(seven).toHaveLength(25);
      expect(fhirRequests(ehr, '/fhir/Observation')).toBe(3 + 4);
    });

    it('supports _lastUpdated=gt… catch-up', async () => {
      const t = (m: number): string => new Date(Date.UTC(2024, 0, 1, 0, m)).toISOString();
      for (let i = 0; i < 12; i++) ehr.seed<Patient>({ resourceType: 'Patient', id: `p${i}`, meta: { lastUpdated: t(i) } });
      const client = createSourceClient(makeSource(ehr), fastOptions());
      const since = await collect(client.search<Patient>('Patient', { _lastUpdated: `gt${t(4)}`, _count: 3 }));
      expect(since.map((p) => p.id)).toEqual(['p5', 'p6', 'p7', 'p8', 'p9', 'p10', 'p11']);
      const ge = await collect(client.search<Patient>('Patient', { _lastUpdated: `ge${t(10)}` }));
      expect(ge.map((p) => p.id)).toEqual(['p10', 'p11']);
    });

    it('refuses next links to another origin (our credentials must not leak there)', async () => {
      for (let i = 0; i < 15; i++) ehr.seed<Patient>({ resourceType: 'Patient' });
      ehr.foreignNextLinks(true);
      const client = createSourceClient(makeSource(ehr), fastOptions());
      const seen: unknown[] = [];
      const err = await sourceError(
        (async () => {
          for await (const p of client.search('Patient')) seen.push(p);
        })(),
      );
      expect(seen).toHaveLength(10);
      expect(err.message).toMatch(/another origin/);
      expect(err.retryable).toBe(false);
    });

    it('stops at maxPages', async () => {
      for (let i = 0; i < 30; i++) ehr.seed<Patient>({ resourceType: 'Patient' });
      const client = createSourceClient(makeSource(ehr), fastOptions({ maxPages: 2 }));
      expect((await sourceError(collect(client.search('Patient')))).message).toMatch(/more than 2 pages/);
    });
  });

  describe('capabilities', () => {
    it('caches the CapabilityStatement and detects a backport server', async () => {
      const client = createSourceClient(makeSource(ehr), fastOptions());
      expect(await client.supportsTopicSubscriptions()).toBe(true);
      expect(await client.supportsEventsOperation()).toBe(true);
      expect((await client.capabilities()).resourceType).toBe('CapabilityStatement');
      expect(fhirRequests(ehr, '/fhir/metadata')).toBe(1);
      await client.capabilities({ refresh: true });
      expect(fhirRequests(ehr, '/fhir/metadata')).toBe(2);
    });

    it('single-flights concurrent metadata reads and expires the cache after its TTL', async () => {
      const clock = new ManualClock(new Date());
      const client = createSourceClient(makeSource(ehr), fastOptions({ clock, capabilitiesTtlMs: 60_000 }));
      await Promise.all([client.capabilities(), client.capabilities(), client.supportsEventsOperation()]);
      expect(fhirRequests(ehr, '/fhir/metadata')).toBe(1);
      clock.advance(61_000);
      await client.capabilities();
      expect(fhirRequests(ehr, '/fhir/metadata')).toBe(2);
    });

    it('detects a classic-only server', async () => {
      const classic = await startFakeEhr({ capability: 'classic' });
      try {
        const client = createSourceClient(makeSource(classic), fastOptions());
        expect(await client.supportsTopicSubscriptions()).toBe(false);
        expect(await client.supportsEventsOperation()).toBe(false);
      } finally {
        await classic.close();
      }
    });

    it('recognises each way the Backport IG lets a server advertise topics', () => {
      const plain = fakeCapabilityStatement('classic');
      const withSub = (sub: object): CapabilityStatement => ({ ...plain, rest: [{ mode: 'server', resource: [{ type: 'Subscription', ...sub }] }] });
      expect(advertisesTopicSubscriptions(plain)).toBe(false);
      expect(advertisesTopicSubscriptions({ ...plain, instantiates: [`${'http://hl7.org/fhir/uv/subscriptions-backport/CapabilityStatement/backport-subscription-server-r4'}|1.1.0`] })).toBe(true);
      expect(advertisesTopicSubscriptions({ ...plain, imports: ['http://hl7.org/fhir/uv/subscriptions-backport/CapabilityStatement/backport-subscription-server-r4'] })).toBe(true);
      expect(advertisesTopicSubscriptions({ ...plain, rest: [{ mode: 'server', resource: [{ type: 'SubscriptionTopic' as 'Basic' }] }] })).toBe(true);
      expect(
        advertisesTopicSubscriptions({
          ...plain,
          rest: [{ mode: 'server', resource: [{ type: 'Basic', supportedProfile: ['http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-topic'] }] }],
        }),
      ).toBe(true);
      expect(advertisesTopicSubscriptions({ ...plain, rest: [{ mode: 'server', resource: [{ type: 'Basic' }] }] })).toBe(false);
      expect(advertisesTopicSubscriptions(withSub({ operation: [{ name: '$status', definition: 'http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status' }] }))).toBe(true);
      expect(advertisesEventsOperation(withSub({ operation: [{ name: 'events', definition: 'http://example.org/OperationDefinition/local' }] }))).toBe(true);
      expect(advertisesEventsOperation(withSub({ operation: [{ name: '$status', definition: 'http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status' }] }))).toBe(false);
    });

    it('detects the Backport IG example CapabilityStatement', () => {
      // Trimmed from the Backport IG example "r4-capabilitystatement-example-server" (v1.1.0,
      // https://hl7.org/fhir/uv/subscriptions-backport/CapabilityStatement-r4-capabilitystatement-example-server.html).
      const example = {
        resourceType: 'CapabilityStatement',
        url: 'http://hl7.org/fhir/uv/subscriptions-backport/CapabilityStatement/r4-capabilitystatement-example-server',
        status: 'active',
        date: '2020-11-30',
        kind: 'requirements',
        instantiates: ['http://hl7.org/fhir/uv/subscriptions-backport/CapabilityStatement/backport-subscription-server-r4'],
        fhirVersion: '4.0.1',
        format: ['xml', 'json'],
        rest: [
          {
            mode: 'server',
            resource: [
              {
                extension: [{ url: 'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/capabilitystatement-subscriptiontopic-canonical', valueCanonical: 'http://fhirserver.org/topics/patient-admission' }],
                type: 'Subscription',
                supportedProfile: ['http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription'],
                operation: [
                  { name: '$status', definition: 'http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status' },
                  { name: '$events', definition: 'http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-events' },
                ],
              },
            ],
          },
        ],
      } as CapabilityStatement;
      expect(advertisesTopicSubscriptions(example)).toBe(true);
      expect(advertisesEventsOperation(example)).toBe(true);
    });
  });

  describe('$events', () => {
    it('returns the notification Bundle for the requested event numbers', async () => {
      const sub = ehr.seed({
        resourceType: 'Subscription',
        status: 'active',
        reason: 'test',
        criteria: 'http://example.org/topics/encounter-complete',
        channel: { type: 'rest-hook', endpoint: 'http://127.0.0.1/hooks/x', payload: 'application/fhir+json' },
      });
      for (let i = 1; i <= 4; i++) ehr.recordEvent(sub.id, { resourceType: 'Encounter', id: `e${i}` } as never);
      const client = createSourceClient(makeSource(ehr), fastOptions());
      const bundle = await client.events(sub.id, { eventsSinceNumber: 2, eventsUntilNumber: 3 });
      expect(bundle.type).toBe('history');
      const status = bundle.entry?.[0]?.resource as { resourceType: string; parameter: Array<{ name: string; part?: Array<{ name: string; valueString?: string }> }> };
      expect(status.resourceType).toBe('Parameters');
      const numbers = status.parameter.filter((p) => p.name === 'notification-event').map((p) => p.part?.find((x) => x.name === 'event-number')?.valueString);
      expect(numbers).toEqual(['2', '3']);
      const req = ehr.requests.find((r) => r.path === `/fhir/Subscription/${sub.id}/$events`);
      expect(req?.method).toBe('GET');
      expect(req?.query).toEqual({ eventsSinceNumber: '2', eventsUntilNumber: '3' });
    });

    it('validates its arguments', async () => {
      const client = createSourceClient(makeSource(ehr), fastOptions());
      await expect(client.events('s1', { eventsSinceNumber: -1 })).rejects.toMatchObject({ kind: 'invalid-request' });
      await expect(client.events('a/b')).rejects.toMatchObject({ kind: 'invalid-request' });
    });
  });

  describe('auth per request', () => {
    it('sends no Authorization for "none" and the static token for "bearer"', async () => {
      ehr.seed<Patient>({ resourceType: 'Patient', id: 'p1' });
      await createSourceClient(makeSource(ehr), fastOptions()).read('Patient', 'p1');
      expect(ehr.requests.at(-1)?.authorization).toBeUndefined();
      const secured = await startFakeEhr({ requireAuth: true, staticTokens: [STATIC_TOKEN] });
      try {
        secured.seed<Patient>({ resourceType: 'Patient', id: 'p1' });
        const client = createSourceClient(makeSource(secured, { callbackAuth: { type: 'bearer', token: STATIC_TOKEN } }), fastOptions());
        await expect(client.read('Patient', 'p1')).resolves.toMatchObject({ kind: 'found' });
        expect(secured.requests.at(-1)?.authorization).toBe(`Bearer ${STATIC_TOKEN}`);
      } finally {
        await secured.close();
      }
    });

    describe('SMART backend', () => {
      let privateJwk: JWK;
      let publicJwk: JWK;
      beforeAll(async () => {
        const { privateKey, publicKey } = await generateKeyPair('RS384', { extractable: true });
        privateJwk = { ...(await exportJWK(privateKey)), kid: 'k1', alg: 'RS384' };
        publicJwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'RS384' };
      });

      it('gets a token once, reuses it, and after a 401 (not retried) fetches a new one', async () => {
        const smartEhr = await startFakeEhr({ requireAuth: true, smart: { clientId: 'c1', publicJwk } });
        try {
          smartEhr.seed<Patient>({ resourceType: 'Patient', id: 'p1' });
          const source = makeSource(smartEhr, {
            callbackAuth: { type: 'smart-backend', tokenUrl: smartEhr.tokenUrl, clientId: 'c1', privateKeyJwk: { ...privateJwk }, scope: 'system/Patient.rs' },
          });
          const client = createSourceClient(source, fastOptions());
          await client.read('Patient', 'p1');
          await client.read('Patient', 'p1');
          expect(smartEhr.tokenRequests).toHaveLength(1);
          expect(smartEhr.tokenRequests[0]!.form.scope).toBe('system/Patient.rs');
          const token = smartEhr.requests.at(-1)?.authorization?.replace(/^Bearer /, '');
          expect(token).toBeTruthy();
          smartEhr.revokeTokens();
          const err = await sourceError(client.read('Patient', 'p1'));
          expect(err).toMatchObject({ status: 401, retryable: false });
          expect(err.message).not.toContain(token!);
          await expect(client.read('Patient', 'p1')).resolves.toMatchObject({ kind: 'found' });
          expect(smartEhr.tokenRequests).toHaveLength(2);
        } finally {
          await smartEhr.close();
        }
      });

      it('a rejected assertion surfaces as a non-retryable auth SourceError without key material', async () => {
        const smartEhr = await startFakeEhr({ requireAuth: true, smart: { clientId: 'someone-else', publicJwk } });
        try {
          const source = makeSource(smartEhr, {
            callbackAuth: { type: 'smart-backend', tokenUrl: smartEhr.tokenUrl, clientId: 'c1', privateKeyJwk: { ...privateJwk }, scope: 'system/*.rs' },
          });
          const { sleep, delays } = recordingSleep();
          const err = await sourceError(createSourceClient(source, fastOptions({ sleep })).read('Patient', 'p1'));
          expect(err).toMatchObject({ kind: 'auth', status: 401, retryable: false });
          expect(delays).toEqual([]);
          expect(err.message).toMatch(/SMART token request .* HTTP 401 \(invalid_client\)/);
          for (const secret of [String(privateJwk.d), String(privateJwk.p), smartEhr.tokenRequests[0]!.form.client_assertion!]) {
            expect(err.message).not.toContain(secret);
          }
        } finally {
          await smartEhr.close();
        }
      });
    });
  });

  describe('retries', () => {
    it('retries 5xx with exponential backoff and jitter, then succeeds', async () => {
      ehr.seed<Patient>({ resourceType: 'Patient', id: 'p1' });
      ehr.failNext(3, 503);
      const { sleep, delays } = recordingSleep();
      const client = createSourceClient(makeSource(ehr), fastOptions({ sleep, random: () => 0.5, retryBaseDelayMs: 100, retryMaxDelayMs: 10_000 }));
      await expect(client.read('Patient', 'p1')).resolves.toMatchObject({ kind: 'found' });
      expect(fhirRequests(ehr, '/fhir/Patient/p1')).toBe(4);
      // equal jitter: half of base·2^n fixed, half random (0.5 here)
      expect(delays).toEqual([75, 150, 300]);
    });

    it('jitter stays within [half, full] of the exponential step and respects the cap', async () => {
      ehr.failNext(5, 500);
      const { sleep, delays } = recordingSleep();
      const client = createSourceClient(makeSource(ehr), fastOptions({ sleep, random: () => 0.999, retryBaseDelayMs: 100, retryMaxDelayMs: 250, maxRetries: 4 }));
      const err = await sourceError(client.read('Patient', 'p1'));
      expect(err).toMatchObject({ status: 500, retryable: true, kind: 'http' });
      expect(delays).toEqual([100, 200, 250, 250]);
      expect(fhirRequests(ehr, '/fhir/Patient/p1')).toBe(5);
    });

    it('gives up after maxRetries with a retryable SourceError', async () => {
      ehr.failNext(10, 500);
      const client = createSourceClient(makeSource(ehr), fastOptions({ maxRetries: 2 }));
      const err = await sourceError(client.read('Patient', 'p1'));
      expect(err).toMatchObject({ status: 500, retryable: true });
      expect(err.message).toBe('read Patient/p1 on source hospital-a failed: HTTP 500 (exception)');
      expect(fhirRequests(ehr, '/fhir/Patient/p1')).toBe(3);
    });

    it('honours Retry-After on 429', async () => {
      ehr.seed<Patient>({ resourceType: 'Patient', id: 'p1' });
      ehr.throttleNext(2, 1);
      const { sleep, delays } = recordingSleep();
      const client = createSourceClient(makeSource(ehr), fastOptions({ sleep }));
      await expect(client.read('Patient', 'p1')).resolves.toMatchObject({ kind: 'found' });
      expect(delays).toEqual([1000, 1000]);
    });

    it('waits out a real (short) Retry-After', async () => {
      ehr.seed<Patient>({ resourceType: 'Patient', id: 'p1' });
      ehr.throttleNext(1, 1);
      const started = Date.now();
      await createSourceClient(makeSource(ehr), fastOptions()).read('Patient', 'p1');
      expect(Date.now() - started).toBeGreaterThanOrEqual(950);
    });

    it('fails at once, retryable, when Retry-After exceeds what it will wait inline', async () => {
      ehr.throttleNext(1, 120);
      const { sleep, delays } = recordingSleep();
      const err = await sourceError(createSourceClient(makeSource(ehr), fastOptions({ sleep, maxRetryAfterMs: 30_000 })).read('Patient', 'p1'));
      expect(err).toMatchObject({ status: 429, retryable: true, retryAfterMs: 120_000 });
      expect(delays).toEqual([]);
    });

    it.each([400, 401, 403, 404, 409, 422])('never retries %i', async (status) => {
      ehr.failNext(1, status);
      const { sleep, delays } = recordingSleep();
      const client = createSourceClient(makeSource(ehr), fastOptions({ sleep }));
      const result = await client.read('Patient', 'p1').catch((e: unknown) => e);
      if (status === 404) expect(result).toEqual({ kind: 'gone', status: 404 });
      else expect(result).toMatchObject({ status, retryable: false, kind: 'http' });
      expect(delays).toEqual([]);
      expect(fhirRequests(ehr, '/fhir/Patient/p1')).toBe(1);
    });

    it('does not repeat a create after a 5xx (it may have been processed) but does after a 429', async () => {
      const client = createSourceClient(makeSource(ehr), fastOptions());
      ehr.failNext(1, 500);
      await expect(client.create<Patient>({ resourceType: 'Patient' })).rejects.toMatchObject({ status: 500, retryable: true });
      expect(fhirRequests(ehr, '/fhir/Patient')).toBe(1);
      ehr.throttleNext(1, 0);
      await expect(client.create<Patient>({ resourceType: 'Patient', active: true })).resolves.toMatchObject({ resourceType: 'Patient', active: true });
      expect(fhirRequests(ehr, '/fhir/Patient')).toBe(3);
      expect(ehr.requests.at(-1)?.prefer).toBe('return=representation');
    });

    it('parses Retry-After as seconds or an HTTP date', () => {
      const now = new Date('2024-01-01T00:00:00Z');
      expect(parseRetryAfter('3', now)).toBe(3000);
      expect(parseRetryAfter('Mon, 01 Jan 2024 00:00:10 GMT', now)).toBe(10_000);
      expect(parseRetryAfter('Sun, 31 Dec 2023 00:00:00 GMT', now)).toBe(0);
      expect(parseRetryAfter('soon', now)).toBeUndefined();
      expect(parseRetryAfter(null, now)).toBeUndefined();
    });
  });

  describe('timeouts, outages, aborts', () => {
    it('times out a slow attempt (retryable) and succeeds on retry', async () => {
      ehr.seed<Patient>({ resourceType: 'Patient', id: 'p1' });
      ehr.slowNext(1, 600);
      const noRetry = createSourceClient(makeSource(ehr), fastOptions({ fetchTimeoutMs: 100, maxRetries: 0 }));
      const err = await sourceError(noRetry.read('Patient', 'p1'));
      expect(err).toMatchObject({ kind: 'timeout', retryable: true });
      expect(err.message).toBe('read Patient/p1 on source hospital-a timed out after 100 ms');
      ehr.slowNext(1, 600);
      const retrying = createSourceClient(makeSource(ehr), fastOptions({ fetchTimeoutMs: 100, maxRetries: 1 }));
      await expect(retrying.read('Patient', 'p1')).resolves.toMatchObject({ kind: 'found' });
    });

    it('a source that is down gives a retryable network error after the retries', async () => {
      const source = makeSource(ehr);
      await ehr.close();
      const { sleep, delays } = recordingSleep();
      const err = await sourceError(createSourceClient(source, fastOptions({ sleep, maxRetries: 2 })).read('Patient', 'p1'));
      expect(err).toMatchObject({ kind: 'network', retryable: true, code: 'ECONNREFUSED' });
      expect(err.message).toBe('read Patient/p1 on source hospital-a failed: network error (ECONNREFUSED)');
      expect(delays).toHaveLength(2);
    });

    it('a caller abort stops the call and is not retryable', async () => {
      ehr.slowNext(1, 500);
      const controller = new AbortController();
      const p = createSourceClient(makeSource(ehr), fastOptions()).read('Patient', 'p1', { signal: controller.signal });
      setTimeout(() => controller.abort(), 50);
      expect(await sourceError(p)).toMatchObject({ kind: 'aborted', retryable: false });
    });
  });

  describe('rate limiting', () => {
    it('paces requests to rateLimitPerSecond', async () => {
      ehr.seed<Patient>({ resourceType: 'Patient', id: 'p1' });
      const source = makeSource(ehr, { rateLimitPerSecond: 20 });
      const client = createSourceClient(source, fastOptions({ rateLimiter: createSourceRateLimiter(source, { burst: 1 }) }));
      const started = Date.now();
      await Promise.all(Array.from({ length: 6 }, () => client.read('Patient', 'p1')));
      // 1 immediately, then 5 more at 50 ms intervals
      expect(Date.now() - started).toBeGreaterThanOrEqual(240);
    });

    it('retries take tokens too', async () => {
      ehr.failNext(2, 500);
      // A clock that never moves: no refill, so the balance counts requests exactly.
      const limiter = new TokenBucket({ ratePerSecond: 1, burst: 10, clock: new ManualClock(new Date(0)) });
      const client = createSourceClient(makeSource(ehr), fastOptions({ rateLimiter: limiter }));
      await client.read('Patient', 'p1');
      expect(limiter.available()).toBe(7);
      expect(fhirRequests(ehr, '/fhir/Patient/p1')).toBe(3);
    });

    describe('TokenBucket (manual clock)', () => {
      function manual(rate: number, burst: number): { bucket: TokenBucket; clock: ManualClock; waits: number[] } {
        const clock = new ManualClock(new Date(0));
        const waits: number[] = [];
        // The injected timer advances the manual clock instead of waiting.
        const sleep: Sleep = async (ms) => {
          waits.push(ms);
          clock.advance(ms);
        };
        return { bucket: new TokenBucket({ ratePerSecond: rate, burst, clock, sleep }), clock, waits };
      }

      it('allows a burst, then one token per 1/rate seconds', async () => {
        const { bucket, waits } = manual(10, 3);
        for (let i = 0; i < 3; i++) await bucket.take();
        expect(waits).toEqual([]);
        await bucket.take();
        expect(waits).toEqual([100]);
        await bucket.take();
        expect(waits).toEqual([100, 100]);
      });

      it('refills over time up to the burst size', async () => {
        const { bucket, clock } = manual(2, 4);
        for (let i = 0; i < 4; i++) expect(bucket.tryTake()).toBe(true);
        expect(bucket.tryTake()).toBe(false);
        clock.advance(1000);
        expect(bucket.tryTake()).toBe(true);
        expect(bucket.tryTake()).toBe(true);
        expect(bucket.tryTake()).toBe(false);
        clock.advance(60_000);
        expect(bucket.available()).toBe(4);
      });

      it('queues concurrent takers FIFO with increasing waits', async () => {
        const clock = new ManualClock(new Date(0));
        const waits: number[] = [];
        const bucket = new TokenBucket({ ratePerSecond: 10, burst: 1, clock, sleep: async (ms) => void waits.push(ms) });
        await Promise.all([bucket.take(), bucket.take(), bucket.take(), bucket.take()]);
        expect(waits).toEqual([100, 200, 300]);
      });

      it('an aborted wait gives its reservation back', async () => {
        const clock = new ManualClock(new Date(0));
        const bucket = new TokenBucket({ ratePerSecond: 1, burst: 1, clock });
        await bucket.take();
        const controller = new AbortController();
        const waiting = bucket.take(controller.signal);
        controller.abort(new Error('stop'));
        await expect(waiting).rejects.toThrow('stop');
        expect(bucket.available()).toBe(0);
      });

      it('rejects nonsense rates', () => {
        expect(() => new TokenBucket({ ratePerSecond: 0 })).toThrow(RangeError);
        expect(() => new TokenBucket({ ratePerSecond: 1, burst: 0 })).toThrow(RangeError);
      });
    });
  });

  describe('secrets and bodies never appear in errors or logs', () => {
    it('keeps tokens, search values and response bodies out of messages and logs', async () => {
      const secured = await startFakeEhr({ requireAuth: true, staticTokens: ['the-right-token-000000'] });
      const { logger, lines } = capturingLogger();
      try {
        const client = createSourceClient(makeSource(secured, { callbackAuth: { type: 'bearer', token: STATIC_TOKEN } }), fastOptions({ logger }));
        const e401 = await sourceError(client.read('Patient', 'p1'));
        secured.failNext(1, 400, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'invalid', diagnostics: 'Patient Jane SECRETNAME born 1970-01-01 is invalid' }] });
        const e400 = await sourceError(client.read('Patient', 'p1'));
        secured.failNext(5, 500, { resourceType: 'Patient', name: [{ family: 'SECRETNAME' }] });
        const e500 = await sourceError(collect(client.search('Patient', { name: 'SECRETNAME', birthdate: '1970-01-01' })));
        expect(e400.message).toBe('read Patient/p1 on source hospital-a failed: HTTP 400 (invalid)');
        expect(e500.message).toBe('search Patient on source hospital-a failed: HTTP 500');
        const everything = [e401, e400, e500].map((e) => `${e.message} ${JSON.stringify(e)} ${String(e.stack)}`).join('\n') + lines.join('\n');
        expect(lines.length).toBeGreaterThan(0); // retries were logged
        for (const secret of [STATIC_TOKEN, 'SECRETNAME', '1970-01-01', HOOK_TOKEN]) expect(everything).not.toContain(secret);
      } finally {
        await secured.close();
      }
    });
  });
});
