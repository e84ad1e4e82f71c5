/**
 * Subscription management against the fake EHR: topic-based (Backport IG) on a backport server,
 * classic criteria on a classic-only one, idempotency, re-creation of error/off Subscriptions,
 * and the hook token kept out of summaries, errors and logs.
 */
import { Writable } from 'node:stream';
import type { Subscription } from '@medplum/fhirtypes';
import { createLogger } from '../../src/platform/logger.js';
import { createSourceClient, type SourceClient } from '../../src/ingest/source-client.js';
import { sourceSchema, type Source, type SourceInput } from '../../src/ingest/source.js';
import {
  BACKPORT_HEARTBEAT_PERIOD_EXT,
  BACKPORT_PAYLOAD_CONTENT_EXT,
  SUBSCRIPTION_TAG_SYSTEM,
  buildTopicSubscription,
  checkSubscriptions,
  ensureSubscriptions,
  hookUrlFor,
  type BackportSubscription,
} from '../../src/ingest/subscriptions.js';
import { startFakeEhr, type FakeEhr } from '../helpers/fake-ehr.js';

const HOOK_TOKEN = 'hook-bearer-token-SECRET-0123456789';
const TOPIC = 'http://example.org/FHIR/SubscriptionTopic/encounter-complete';
const PUBLIC_BASE_URL = 'https://anchor.example.org/';

function makeSource(ehr: FakeEhr, subscribe: SourceInput['subscribe'], overrides: Partial<SourceInput> = {}): Source {
  return sourceSchema.parse({
    id: 'hospital-a',
    name: 'Hospital A',
    baseUrl: ehr.baseUrl,
    hookAuth: { bearerToken: HOOK_TOKEN },
    rateLimitPerSecond: 1000,
    subscribe,
    ...overrides,
  });
}

function client(source: Source): SourceClient {
  return createSourceClient(source, { retryBaseDelayMs: 5, retryMaxDelayMs: 20, fetchTimeoutMs: 2000 });
}

const posts = (ehr: FakeEhr): number => ehr.requests.filter((r) => r.method === 'POST' && r.path === '/fhir/Subscription').length;

describe('subscriptions', () => {
  const hookUrl = hookUrlFor(PUBLIC_BASE_URL, 'hospital-a');

  it('builds the hook URL from the public base URL', () => {
    expect(hookUrl).toBe('https://anchor.example.org/hooks/hospital-a');
  });

  describe('on a backport (topic-capable) server', () => {
    let ehr: FakeEhr;
    beforeEach(async () => {
      ehr = await startFakeEhr({ capability: 'backport', topics: [TOPIC] });
    });
    afterEach(async () => {
      await ehr.close();
    });

    it('creates a topic-based Subscription with the Backport IG profile, payload content, heartbeat and hook header', async () => {
      const source = makeSource(ehr, { topics: [TOPIC], payload: 'id-only', heartbeatSeconds: 120 });
      const summary = await ensureSubscriptions(client(source), source, hookUrl);
      expect(summary).toMatchObject({ sourceId: 'hospital-a', hookUrl, topicCapable: true, healthy: true, unmatched: [] });
      expect(summary.subscriptions).toEqual([{ mode: 'topic', criteria: TOPIC, action: 'created', id: expect.any(String), status: 'active' }]);
      const [sub] = ehr.subscriptions() as BackportSubscription[];
      expect(sub).toMatchObject({
        resourceType: 'Subscription',
        meta: {
          profile: ['http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription'],
          tag: [{ system: SUBSCRIPTION_TAG_SYSTEM, code: 'hospital-a' }],
        },
        criteria: TOPIC,
        channel: {
          type: 'rest-hook',
          endpoint: hookUrl,
          payload: 'application/fhir+json',
          _payload: { extension: [{ url: BACKPORT_PAYLOAD_CONTENT_EXT, valueCode: 'id-only' }] },
          extension: [{ url: BACKPORT_HEARTBEAT_PERIOD_EXT, valueUnsignedInt: 120 }],
          header: [`Authorization: Bearer ${HOOK_TOKEN}`],
        },
      });
    });

    it.each(['empty', 'full-resource'] as const)('asks for %s payloads when configured', async (payload) => {
      const source = makeSource(ehr, { topics: [TOPIC], payload });
      await ensureSubscriptions(client(source), source, hookUrl);
      expect((ehr.subscriptions()[0] as BackportSubscription).channel._payload?.extension?.[0]?.valueCode).toBe(payload);
    });

    it('matches the shape of the Backport IG "id-only as submitted" example', () => {
      // Trimmed from the Backport IG example Subscription-id-only-as-submitted (STU 1.1,
      // https://hl7.org/fhir/uv/subscriptions-backport/artifacts.html, "Example Instances").
      const example = {
        resourceType: 'Subscription',
        meta: { profile: ['http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription'] },
        status: 'requested',
        criteria: 'https://inferno.healthit.gov/suites/custom/subscriptions_r5_backport_r4_client/topics/patient-admission',
        channel: {
          type: 'rest-hook',
          header: ['Authorization: Bearer SAMPLE_TOKEN'],
          endpoint: 'http://localhost:4567/custom/subscriptions_r5_backport_r4_server/subscription/channel/notification_listener',
          payload: 'application/fhir+json',
          _payload: { extension: [{ url: 'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content', valueCode: 'id-only' }] },
        },
      } as BackportSubscription;
      const ours = buildTopicSubscription(makeSource({ baseUrl: 'https://ehr.example.org/fhir' } as FakeEhr, { topics: [TOPIC] }), hookUrl, TOPIC);
      expect(ours.meta?.profile).toEqual(example.meta?.profile);
      expect(ours.status).toBe(example.status);
      expect(ours.channel.type).toBe(example.channel.type);
      expect(ours.channel.payload).toBe(example.channel.payload);
      expect(ours.channel._payload).toEqual(example.channel._payload);
      expect(ours.channel.header?.[0]).toMatch(/^Authorization: Bearer /);
      expect(example.channel.header?.[0]).toMatch(/^Authorization: Bearer /);
    });

    it('is idempotent: a second run finds the Subscription by tag and creates nothing', async () => {
      const source = makeSource(ehr, { topics: [TOPIC], resourceTypes: ['Patient'] });
      const first = await ensureSubscriptions(client(source), source, hookUrl);
      expect(first.subscriptions.map((s) => [s.mode, s.action])).toEqual([
        ['topic', 'created'],
        ['classic', 'created'],
      ]);
      const second = await ensureSubscriptions(client(source), source, hookUrl);
      expect(second.subscriptions.map((s) => s.action)).toEqual(['existing', 'existing']);
      expect(second.subscriptions.map((s) => s.id)).toEqual(first.subscriptions.map((s) => s.id));
      expect(ehr.subscriptions()).toHaveLength(2);
      expect(posts(ehr)).toBe(2);
    });

    it('finds an untagged Subscription by its endpoint', async () => {
      const existing = ehr.seed<Subscription>({
        resourceType: 'Subscription',
        status: 'active',
        reason: 'made by hand',
        criteria: TOPIC,
        channel: { type: 'rest-hook', endpoint: hookUrl, payload: 'application/fhir+json' },
      });
      const source = makeSource(ehr, { topics: [TOPIC] });
      const summary = await ensureSubscriptions(client(source), source, hookUrl);
      expect(summary.subscriptions).toEqual([{ mode: 'topic', criteria: TOPIC, action: 'existing', id: existing.id, status: 'active' }]);
      expect(posts(ehr)).toBe(0);
    });

    it('leaves our Subscriptions for another endpoint alone and reports them', async () => {
      const stale = ehr.seed<Subscription>({
        resourceType: 'Subscription',
        meta: { tag: [{ system: SUBSCRIPTION_TAG_SYSTEM, code: 'hospital-a' }] },
        status: 'active',
        reason: 'old base URL',
        criteria: TOPIC,
        channel: { type: 'rest-hook', endpoint: 'https://old.example.org/hooks/hospital-a', payload: 'application/fhir+json' },
      });
      const source = makeSource(ehr, { topics: [TOPIC] });
      const summary = await ensureSubscriptions(client(source), source, hookUrl);
      expect(summary.subscriptions[0]?.action).toBe('created');
      expect(summary.unmatched).toEqual([{ id: stale.id, status: 'active', criteria: TOPIC }]);
      expect(ehr.get('Subscription', stale.id)).toBeDefined();
    });

    it.each(['error', 'off'] as const)('re-creates a Subscription the EHR turned to %s, and deletes the dead one', async (status) => {
      const source = makeSource(ehr, { topics: [TOPIC] });
      const c = client(source);
      const first = await ensureSubscriptions(c, source, hookUrl);
      const oldId = first.subscriptions[0]!.id!;
      ehr.setSubscriptionStatus(oldId, status);
      const checked = await checkSubscriptions(c, source, hookUrl);
      const report = checked.subscriptions[0]!;
      expect(report).toMatchObject({ action: 'recreated', replacedIds: [oldId], status: 'active' });
      expect(report.id).not.toBe(oldId);
      expect(ehr.get('Subscription', oldId)).toBeUndefined();
      expect(ehr.subscriptions().map((s) => s.id)).toEqual([report.id]);
      expect(checked.healthy).toBe(true);
      // and the next check is quiet
      expect((await checkSubscriptions(c, source, hookUrl)).subscriptions[0]?.action).toBe('existing');
    });

    it('check reads each Subscription by id for its current status', async () => {
      const source = makeSource(ehr, { topics: [TOPIC] });
      const c = client(source);
      const { subscriptions } = await ensureSubscriptions(c, source, hookUrl);
      await checkSubscriptions(c, source, hookUrl);
      expect(ehr.requests.filter((r) => r.method === 'GET' && r.path === `/fhir/Subscription/${subscriptions[0]!.id}`)).toHaveLength(1);
    });

    it('re-creates a Subscription the EHR deleted', async () => {
      const source = makeSource(ehr, { topics: [TOPIC] });
      const c = client(source);
      const first = await ensureSubscriptions(c, source, hookUrl);
      ehr.remove('Subscription', first.subscriptions[0]!.id!);
      const checked = await checkSubscriptions(c, source, hookUrl);
      expect(checked.subscriptions[0]).toMatchObject({ action: 'created', status: 'active' });
    });

    it('reports a failed create per Subscription, without the hook token in the summary, errors or logs', async () => {
      const lines: string[] = [];
      const logger = createLogger('debug', new Writable({ write: (chunk: Buffer, _e, cb) => (lines.push(chunk.toString()), cb()) }));
      const source = makeSource(ehr, { topics: [TOPIC], resourceTypes: ['Observation'] });
      // The EHR rejects the classic one, echoing the submitted body (with our hook token) in its outcome.
      ehr.failNext(
        1,
        422,
        { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'processing', diagnostics: `bad header Authorization: Bearer ${HOOK_TOKEN}` }] },
        (method, path) => method === 'POST' && path === '/fhir/Subscription',
      );
      const summary = await ensureSubscriptions(client(source), source, hookUrl, { logger });
      expect(summary.subscriptions.map((s) => s.action)).toEqual(['failed', 'created']);
      expect(summary.subscriptions[0]?.error).toBe('create Subscription on source hospital-a failed: HTTP 422 (processing)');
      expect(summary.healthy).toBe(false);
      expect(JSON.stringify(summary) + lines.join('')).not.toContain(HOOK_TOKEN);
      expect(lines.length).toBeGreaterThan(0);
    });
  });

  describe('on a classic-only server', () => {
    let ehr: FakeEhr;
    beforeEach(async () => {
      ehr = await startFakeEhr({ capability: 'classic', subscriptionStatus: 'requested' });
    });
    afterEach(async () => {
      await ehr.close();
    });

    it('creates criteria-based Subscriptions and reports topics as unsupported', async () => {
      const source = makeSource(ehr, { resourceTypes: ['Patient', 'Observation'], topics: [TOPIC] });
      const summary = await ensureSubscriptions(client(source), source, hookUrl);
      expect(summary.topicCapable).toBe(false);
      expect(summary.subscriptions.map((s) => [s.mode, s.criteria, s.action, s.status])).toEqual([
        ['topic', TOPIC, 'unsupported', undefined],
        ['classic', 'Patient?', 'created', 'requested'],
        ['classic', 'Observation?', 'created', 'requested'],
      ]);
      expect(summary.healthy).toBe(false);
      const subs = ehr.subscriptions() as BackportSubscription[];
      expect(subs.map((s) => s.criteria)).toEqual(['Patient?', 'Observation?']);
      for (const s of subs) {
        expect(s.meta?.profile).toBeUndefined();
        expect(s.meta?.tag).toEqual([{ system: SUBSCRIPTION_TAG_SYSTEM, code: 'hospital-a' }]);
        expect(s.channel).toEqual({ type: 'rest-hook', endpoint: hookUrl, payload: 'application/fhir+json', header: [`Authorization: Bearer ${HOOK_TOKEN}`] });
      }
    });

    it('is idempotent and omits the header when the source uses HMAC only', async () => {
      const source = makeSource(ehr, { resourceTypes: ['Patient'] }, { hookAuth: { hmacSecret: 'hmac-secret-0123456789abcdef' } });
      await ensureSubscriptions(client(source), source, hookUrl);
      const again = await ensureSubscriptions(client(source), source, hookUrl);
      expect(again.subscriptions.map((s) => s.action)).toEqual(['existing']);
      expect(again.healthy).toBe(true);
      expect(ehr.subscriptions()).toHaveLength(1);
      expect(ehr.subscriptions()[0]?.channel.header).toBeUndefined();
    });

    it('re-creates an errored classic Subscription', async () => {
      const source = makeSource(ehr, { resourceTypes: ['Patient'] });
      const c = client(source);
      const first = await ensureSubscriptions(c, source, hookUrl);
      ehr.setSubscriptionStatus(first.subscriptions[0]!.id!, 'error');
      const checked = await checkSubscriptions(c, source, hookUrl);
      expect(checked.subscriptions[0]).toMatchObject({ mode: 'classic', action: 'recreated', replacedIds: [first.subscriptions[0]!.id] });
    });

    it('does nothing for a source without subscribe settings', async () => {
      const source = makeSource(ehr, undefined);
      const summary = await ensureSubscriptions(client(source), source, hookUrl);
      expect(summary.subscriptions).toEqual([]);
      expect(ehr.requests).toHaveLength(0);
    });

    it('still works when the EHR rejects the _tag search', async () => {
      const source = makeSource(ehr, { resourceTypes: ['Patient'] });
      await ensureSubscriptions(client(source), source, hookUrl);
      ehr.failNext(1, 400, undefined, (method, path) => method === 'GET' && path === '/fhir/Subscription');
      const again = await ensureSubscriptions(client(source), source, hookUrl);
      expect(again.subscriptions.map((s) => s.action)).toEqual(['existing']);
    });
  });
});
