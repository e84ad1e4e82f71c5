/**
 * Creates and watches the Subscription(s) fhir-anchor needs on a source EHR, through its
 * {@link SourceClient}:
 * - topic-based (Subscriptions R5 Backport IG, `backport-subscription` profile) for each
 *   `subscribe.topics` canonical when the source advertises topic support;
 * - classic R4 criteria-based (`criteria` = `<Type>?`) for each `subscribe.resourceTypes`.
 *
 * Idempotent: existing Subscriptions we own — tagged `urn:fhir-anchor:subscription|<sourceId>` or
 * pointing at our hook URL — are found first and reused; ones the EHR turned to `error` / `off` are
 * re-created (then the dead one deleted, best effort).
 *
 * The Subscription body carries the hook bearer token in `channel.header`: it is never logged and
 * never put in a summary or an error message.
 *
 * https://hl7.org/fhir/uv/subscriptions-backport/ · https://hl7.org/fhir/R4/subscription.html
 */
import type { Extension, Subscription, SubscriptionChannel } from '@medplum/fhirtypes';
import type { Logger } from '../platform/logger.js';
import { BACKPORT_SUBSCRIPTION_PROFILE, SourceError, type SearchParams, type SourceClient } from './source-client.js';
import type { Source } from './source.js';

/** `meta.tag` system marking Subscriptions fhir-anchor created; the code is the source id. */
export const SUBSCRIPTION_TAG_SYSTEM = 'urn:fhir-anchor:subscription';
/** Backport IG: payload content (`empty` | `id-only` | `full-resource`) on `Subscription.channel._payload`. */
export const BACKPORT_PAYLOAD_CONTENT_EXT = 'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content';
/** Backport IG: heartbeat period, seconds (unsignedInt), on `Subscription.channel`. */
export const BACKPORT_HEARTBEAT_PERIOD_EXT = 'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period';

/** An R4 Subscription with the Backport IG's primitive extension on `channel.payload`. */
export type BackportSubscription = Subscription & {
  channel: SubscriptionChannel & { _payload?: { extension?: Extension[] } };
};

export type SubscriptionMode = 'topic' | 'classic';

/**
 * What happened to one wanted Subscription: `existing` (found healthy), `created`, `recreated`
 * (the EHR had turned ours to error/off), `unsupported` (a topic on a classic-only source), or
 * `failed` (see `error`).
 */
export type SubscriptionAction = 'existing' | 'created' | 'recreated' | 'unsupported' | 'failed';

export interface SubscriptionReport {
  readonly mode: SubscriptionMode;
  /** Topic canonical (topic mode) or `<Type>?` (classic). */
  readonly criteria: string;
  readonly action: SubscriptionAction;
  /** Id on the EHR of the Subscription now in use. */
  readonly id?: string;
  readonly status?: Subscription['status'];
  /** Ids of the error/off Subscriptions this one replaced. */
  readonly replacedIds?: readonly string[];
  /** Safe message (no secrets, no bodies) when `action` is `failed`, or when cleaning up a replaced one failed. */
  readonly error?: string;
}

export interface SubscriptionSummary {
  readonly sourceId: string;
  readonly hookUrl: string;
  /** Whether the source advertised topic-based subscriptions. */
  readonly topicCapable: boolean;
  readonly subscriptions: readonly SubscriptionReport[];
  /** Subscriptions tagged as ours but not matching what is wanted now (other endpoint or criteria); left untouched. */
  readonly unmatched: ReadonlyArray<{ readonly id: string; readonly status: Subscription['status']; readonly criteria: string }>;
  /** Every wanted Subscription exists with status `requested` or `active`. */
  readonly healthy: boolean;
}

export interface SubscriptionOptions {
  logger?: Logger;
  signal?: AbortSignal;
}

/** Our notification endpoint for a source: `<publicBaseUrl>/hooks/<sourceId>`. */
export function hookUrlFor(publicBaseUrl: string, sourceId: string): string {
  return `${publicBaseUrl.replace(/\/+$/, '')}/hooks/${encodeURIComponent(sourceId)}`;
}

function ownershipTag(sourceId: string): { system: string; code: string } {
  return { system: SUBSCRIPTION_TAG_SYSTEM, code: sourceId };
}

function channelHeaders(source: Source): string[] | undefined {
  const token = source.hookAuth.bearerToken;
  return token ? [`Authorization: Bearer ${token}`] : undefined;
}

/**
 * A topic-based Subscription (Backport IG profile): `criteria` = topic canonical, rest-hook to
 * `hookUrl`, `application/fhir+json` with the payload-content extension and the heartbeat period.
 */
export function buildTopicSubscription(source: Source, hookUrl: string, topic: string): BackportSubscription {
  const settings = source.subscribe;
  const header = channelHeaders(source);
  return {
    resourceType: 'Subscription',
    meta: { profile: [BACKPORT_SUBSCRIPTION_PROFILE], tag: [ownershipTag(source.id)] },
    status: 'requested',
    reason: `fhir-anchor ingest for source ${source.id}`,
    criteria: topic,
    channel: {
      extension: [{ url: BACKPORT_HEARTBEAT_PERIOD_EXT, valueUnsignedInt: settings?.heartbeatSeconds ?? 300 }],
      type: 'rest-hook',
      endpoint: hookUrl,
      payload: 'application/fhir+json',
      _payload: { extension: [{ url: BACKPORT_PAYLOAD_CONTENT_EXT, valueCode: settings?.payload ?? 'id-only' }] },
      ...(header ? { header } : {}),
    },
  };
}

/** A classic R4 Subscription for every change to `resourceType` (`criteria` = `<Type>?`). */
export function buildClassicSubscription(source: Source, hookUrl: string, resourceType: string): Subscription {
  const header = channelHeaders(source);
  return {
    resourceType: 'Subscription',
    meta: { tag: [ownershipTag(source.id)] },
    status: 'requested',
    reason: `fhir-anchor ingest for source ${source.id}`,
    criteria: `${resourceType}?`,
    channel: {
      type: 'rest-hook',
      endpoint: hookUrl,
      payload: 'application/fhir+json',
      ...(header ? { header } : {}),
    },
  };
}

function isOurs(sub: Subscription, sourceId: string, hookUrl: string): boolean {
  const tagged = (sub.meta?.tag ?? []).some((t) => t.system === SUBSCRIPTION_TAG_SYSTEM && t.code === sourceId);
  return tagged || sub.channel.endpoint === hookUrl;
}

/**
 * Subscriptions on the source that we own: searched by our tag and by endpoint (`url`), then
 * filtered client-side, since servers may ignore search parameters they do not support.
 */
export async function findOwnSubscriptions(client: SourceClient, source: Source, hookUrl: string, signal?: AbortSignal): Promise<Subscription[]> {
  const found = new Map<string, Subscription>();
  const queries: SearchParams[] = [{ _tag: `${SUBSCRIPTION_TAG_SYSTEM}|${source.id}` }, { url: hookUrl }];
  let failures = 0;
  let lastError: unknown;
  for (const params of queries) {
    try {
      for await (const sub of client.search<Subscription>('Subscription', params, signal ? { signal } : {})) {
        if (sub.id && isOurs(sub, source.id, hookUrl)) found.set(sub.id, sub);
      }
    } catch (err) {
      // A source that rejects one of the two searches (4xx) may still answer the other.
      if (!(err instanceof SourceError) || err.retryable) throw err;
      failures++;
      lastError = err;
    }
  }
  if (failures === queries.length) throw lastError;
  return [...found.values()];
}

interface Wanted {
  mode: SubscriptionMode;
  criteria: string;
  build: () => Subscription;
}

const HEALTHY: ReadonlySet<Subscription['status']> = new Set(['requested', 'active']);

async function reconcile(
  client: SourceClient,
  source: Source,
  hookUrl: string,
  options: SubscriptionOptions,
  rereadEach: boolean,
): Promise<SubscriptionSummary> {
  const { logger, signal } = options;
  const callOpts = signal ? { signal } : {};
  const settings = source.subscribe;
  const topicCapable = settings ? await client.supportsTopicSubscriptions(callOpts) : false;
  const wanted: Wanted[] = [];
  const reports: SubscriptionReport[] = [];
  for (const topic of settings?.topics ?? []) {
    if (topicCapable) wanted.push({ mode: 'topic', criteria: topic, build: () => buildTopicSubscription(source, hookUrl, topic) });
    else reports.push({ mode: 'topic', criteria: topic, action: 'unsupported' });
  }
  for (const type of settings?.resourceTypes ?? []) {
    wanted.push({ mode: 'classic', criteria: `${type}?`, build: () => buildClassicSubscription(source, hookUrl, type) });
  }

  let own = wanted.length > 0 ? await findOwnSubscriptions(client, source, hookUrl, signal) : [];
  if (rereadEach) {
    // Search results can lag behind a status change; read each one for its current status.
    const reread: Subscription[] = [];
    for (const sub of own) {
      const r = await client.read<Subscription>('Subscription', sub.id as string, callOpts);
      if (r.kind === 'found') reread.push(r.resource);
    }
    own = reread;
  }

  const matched = new Set<string>();
  for (const w of wanted) {
    const candidates = own.filter((s) => s.criteria.trim() === w.criteria && s.channel.endpoint === hookUrl);
    candidates.forEach((s) => matched.add(s.id as string));
    const healthy = candidates.find((s) => HEALTHY.has(s.status));
    if (healthy) {
      reports.push({ mode: w.mode, criteria: w.criteria, action: 'existing', id: healthy.id as string, status: healthy.status });
      continue;
    }
    const dead = candidates.map((s) => s.id as string);
    let created: Subscription;
    try {
      created = await client.create(w.build(), callOpts);
    } catch (err) {
      const message = err instanceof SourceError ? err.message : 'create Subscription failed';
      logger?.error({ sourceId: source.id, criteria: w.criteria, err: message }, 'could not create Subscription on source');
      reports.push({ mode: w.mode, criteria: w.criteria, action: 'failed', error: message });
      continue;
    }
    let cleanupError: string | undefined;
    for (const id of dead) {
      try {
        await client.delete('Subscription', id, callOpts);
      } catch (err) {
        cleanupError = err instanceof SourceError ? err.message : 'delete Subscription failed';
      }
    }
    const action: SubscriptionAction = dead.length > 0 ? 'recreated' : 'created';
    logger?.info({ sourceId: source.id, criteria: w.criteria, subscriptionId: created.id, replaced: dead }, `Subscription ${action} on source`);
    reports.push({
      mode: w.mode,
      criteria: w.criteria,
      action,
      ...(created.id ? { id: created.id } : {}),
      status: created.status,
      ...(dead.length > 0 ? { replacedIds: dead } : {}),
      ...(cleanupError ? { error: cleanupError } : {}),
    });
  }

  const unmatched = own
    .filter((s) => !matched.has(s.id as string))
    .map((s) => ({ id: s.id as string, status: s.status, criteria: s.criteria }));
  const healthy = reports.every((r) => (r.action === 'existing' || r.action === 'created' || r.action === 'recreated') && r.status !== undefined && HEALTHY.has(r.status));
  return { sourceId: source.id, hookUrl, topicCapable, subscriptions: reports, unmatched, healthy };
}

/**
 * Makes sure the Subscriptions wanted by `source.subscribe` exist on the source, pointing at
 * `hookUrl`: reuses healthy ones we own, creates missing ones, re-creates error/off ones.
 * Per-Subscription failures are reported in the summary, not thrown; failures to read the
 * source's capabilities or list its Subscriptions throw {@link SourceError}.
 */
export function ensureSubscriptions(client: SourceClient, source: Source, hookUrl: string, options: SubscriptionOptions = {}): Promise<SubscriptionSummary> {
  return reconcile(client, source, hookUrl, options, false);
}

/**
 * Periodic check: re-reads the status of each Subscription we own on the source and re-creates any
 * the EHR turned to `error` or `off` (or deleted). Returns the same summary as {@link ensureSubscriptions}.
 */
export function checkSubscriptions(client: SourceClient, source: Source, hookUrl: string, options: SubscriptionOptions = {}): Promise<SubscriptionSummary> {
  return reconcile(client, source, hookUrl, options, true);
}
