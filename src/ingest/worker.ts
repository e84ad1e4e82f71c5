/**
 * The `ingest` worker: turns one inbox item (a raw notification already committed to PostgreSQL) into
 * stored, normalised, validated resource versions.
 *
 * Steps: claim the inbox item (one statement; a stale retry of a finished item is dropped); parse;
 * track subscription event numbers and catch up on gaps; fetch id-only / empty payloads back from the
 * source; resolve `urn:uuid:` and conditional references; normalise to US Core 6.1.0; validate; store
 * every version in one transaction (idempotent by dedup key, ordered by the source's lastUpdated, each
 * with its integrity commitment), which also marks the item done when nothing is left to do; otherwise
 * link patients across sources (and queue integrity jobs for a store without a committer), then mark
 * it done.
 *
 * A bad entry becomes a dead letter with its OperationOutcome; the good entries beside it are stored.
 * Transient failures (source unreachable, database) are retried with backoff by BullMQ; when the last
 * attempt fails the item is dead-lettered so it can be inspected and replayed.
 */
import { createHash } from 'node:crypto';
import type { Bundle, OperationOutcome, Patient, Resource } from '@medplum/fhirtypes';
import type { Clock } from '../platform/clock.js';
import { outcome } from '../platform/errors.js';
import { pushAll } from '../platform/arrays.js';
import type { Logger } from '../platform/logger.js';
import { TerminalJobError, integrityJobId, type JobContext, type QueueRegistry } from '../queue/index.js';
import { StoreDataError, type PutVersionInput, type PutVersionResult, type PutVersionsOptions, type Store } from '../store/index.js';
import { applySensitivityLabels, type SensitivityCodeIndex } from '../consent/index.js';
import { anchorId, normalizeResource, type BatchValidator, type NormalizationRules } from '../normalize/index.js';
import { parseNotification, parseReference, resourceEntry, type NotificationEntry, type ParseContext, type ParseResult, type SubscriptionStatusInfo } from './notification.js';
import type { Source } from './source.js';
import { BULK_CHUNK, submit } from './bulk.js';
import { SourceError, type SourceClient } from './source-client.js';
import type { SourceRegistry } from './sources.js';

/** How far back a catch-up `_lastUpdated` search looks when the source offers no `$events`. */
export const CATCH_UP_LOOKBACK_MS = 60 * 60 * 1000;
/**
 * Most resources a catch-up search ingests in the job of its notification (bounded work per job). The
 * rest of the search result is handed on, {@link CATCH_UP_PAGE} at a time, as inbox items of kind
 * `catch-up` with their own jobs: a catch-up never drops what it found, however much changed.
 */
export const CATCH_UP_MAX_RESOURCES = 10_000;
/** Resources per handed-on catch-up item, and the `_count` a catch-up search asks for. */
export const CATCH_UP_PAGE = BULK_CHUNK;
/**
 * Pages a catch-up search follows (the client's default guard is 1,000). Pages are handed on as they
 * come, so memory does not grow with them; the bound only stops a source whose `next` links never end.
 */
const CATCH_UP_MAX_PAGES = 100_000;
/**
 * A ping (a notification without payload) is caught up by a `_lastUpdated` search from the previous
 * finished ping of its source, less this margin: `_lastUpdated` is the source's clock, not ours, and a
 * change may commit there a little after it is stamped. Whatever the overlap brings again is a duplicate.
 */
export const PING_CLOCK_MARGIN_MS = 5 * 60 * 1000;

export interface IngestDeps {
  readonly store: Store;
  readonly queues: QueueRegistry;
  readonly registry: SourceRegistry;
  readonly clock: Clock;
  readonly logger: Logger;
  /** Validates a notification's resources as one batch (on worker threads in the runtime). */
  readonly validator: BatchValidator;
  /** Normalisation rules for a source (cached by the caller). */
  readonly rules: (sourceId: string) => Promise<NormalizationRules>;
  /** A client for calling the source back (cached per source by the caller). */
  readonly client: (source: Source) => SourceClient;
  /** Identifier systems whose shared values link patients across sources (Patient.link). */
  readonly linkIdentifierSystems: readonly string[];
  /** DS4P code lists: sensitive resources get meta.security labels (HIV, PSY, SUD, ETH, R) at ingest. */
  readonly sensitivity?: SensitivityCodeIndex;
  /** Resources a catch-up search ingests in its own job (default {@link CATCH_UP_MAX_RESOURCES}). */
  readonly catchUpInlineMax?: number;
}

export interface IngestSummary {
  stored: number;
  duplicates: number;
  historical: number;
  invalid: number;
  deadLetters: number;
  skipped: number;
  fetched: number;
  gaps: number;
}

interface WorkItem {
  readonly index: number;
  readonly resource?: Record<string, unknown>;
  readonly fullUrl?: string;
  readonly ifNoneExist?: string;
  readonly delete?: { readonly resourceType: string; readonly id: string };
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Parses `identifier=system|value` (the only conditional search we resolve). */
function identifierQuery(query: string): { system: string; value: string } | undefined {
  const params = new URLSearchParams(query);
  const keys = [...params.keys()];
  const v = params.get('identifier');
  if (keys.length !== 1 || !v) return undefined;
  const bar = v.indexOf('|');
  if (bar <= 0 || bar === v.length - 1) return undefined;
  return { system: v.slice(0, bar), value: v.slice(bar + 1) };
}

function identifiersOf(resource: Record<string, unknown>): Array<{ system: string; value: string }> {
  const ids = Array.isArray(resource.identifier) ? resource.identifier : [];
  return ids.filter(isObject).flatMap((i) => (typeof i.system === 'string' && typeof i.value === 'string' ? [{ system: i.system, value: i.value }] : []));
}

/** Every `reference` string anywhere in a resource. */
function collectReferences(value: unknown, out: Set<string>): void {
  const stack: unknown[] = [value];
  while (stack.length > 0) {
    const v = stack.pop();
    if (Array.isArray(v)) pushAll(stack, v);
    else if (isObject(v)) {
      for (const [k, child] of Object.entries(v)) {
        if (k === 'reference' && typeof child === 'string') out.add(child);
        else if (typeof child === 'object') stack.push(child);
      }
    }
  }
}

function contentHash(resource: Resource): string {
  const { meta: _meta, ...rest } = resource as Resource & { meta?: unknown };
  return createHash('sha256').update(JSON.stringify(rest)).digest('hex').slice(0, 32);
}

/** Inbox kind of a subscription gap handed on by the notification that revealed it. */
export const GAP_ITEM_KIND = 'gap';

/** The body of a {@link GAP_ITEM_KIND} inbox item: ids, numbers and type names only (no PHI). */
interface GapTask {
  readonly subscription: string;
  readonly from: number;
  readonly to: number;
  readonly types: readonly string[];
  /** ISO instant the `_lastUpdated` search starts from. */
  readonly since: string;
}

function parseGapTask(body: Buffer): GapTask | undefined {
  let v: unknown;
  try {
    v = JSON.parse(body.toString('utf8'));
  } catch {
    return undefined;
  }
  if (!isObject(v)) return undefined;
  const { subscription, from, to, types, since } = v;
  if (typeof subscription !== 'string' || !Number.isSafeInteger(from) || !Number.isSafeInteger(to) || (from as number) > (to as number)) return undefined;
  if (!Array.isArray(types) || !types.every((t) => typeof t === 'string' && /^[A-Z][A-Za-z]{1,63}$/.test(t))) return undefined;
  if (typeof since !== 'string' || Number.isNaN(Date.parse(since))) return undefined;
  return { subscription, from: from as number, to: to as number, types: types as string[], since };
}

export function createIngestProcessor(deps: IngestDeps): (job: JobContext<'ingest'>) => Promise<void> {
  const { store, logger } = deps;
  const inlineMax = deps.catchUpInlineMax ?? CATCH_UP_MAX_RESOURCES;

  const deadLetter = async (inboxId: string, sourceId: string, reason: string, oo: OperationOutcome, entryIndex?: number): Promise<void> => {
    await store.deadLetters.add({ inboxId, sourceId, reason, outcome: oo, ...(entryIndex !== undefined ? { entryIndex } : {}) });
  };

  /**
   * Turns the Bundle a source's `$events` answered into work items; undefined when the answer is not a
   * notification Bundle we can read (the caller then searches instead, so the gap is not lost).
   */
  const itemsFromBundle = (bundle: Bundle, offset: number): NotificationEntry[] | undefined => {
    if ((bundle as { resourceType?: unknown } | null)?.resourceType !== 'Bundle') return undefined;
    const parsed = parseNotification(Buffer.from(JSON.stringify(bundle)));
    if (!parsed.ok) return undefined;
    const n = parsed.notification;
    if (n.entries.length === 0 && n.status) {
      // id-only notifications may carry the focus only inside the status.
      return n.status.focus.map((reference, i) => ({ kind: 'fetch', index: offset + i, reference }));
    }
    return n.entries.map((e) => ({ ...e, index: offset + e.index }));
  };

  /**
   * Fetches what a subscription's events `range` changed: through the source's `$events` where it has
   * one, else (or when that fails) by a `_lastUpdated` search over `task.types` since `task.since`.
   */
  const catchUp = async (
    source: Source,
    client: SourceClient,
    task: { readonly subscription: string; readonly types: readonly string[]; readonly since: Date },
    range: { from: number; to: number } | undefined,
    offset: number,
  ): Promise<{ entries: NotificationEntry[]; how: string; method: '$events' | '_lastUpdated search' }> => {
    const subscriptionId = parseReference(task.subscription)?.id;
    if (subscriptionId && range && (await client.supportsEventsOperation())) {
      // A source whose $events fails or answers something else is searched instead: the search finds a
      // superset of the missed events, where a failed job would leave this notification undone too.
      let why: string;
      try {
        const bundle = await client.events(subscriptionId, { eventsSinceNumber: range.from, eventsUntilNumber: range.to, content: 'id-only' });
        const entries = itemsFromBundle(bundle, offset);
        if (entries) return { entries, how: `$events ${range.from}..${range.to}`, method: '$events' };
        why = 'answered no notification Bundle';
      } catch (err) {
        why = `failed (${(err instanceof Error ? err.message : String(err)).slice(0, 200)})`;
      }
      const searched = await search();
      return { ...searched, how: `$events ${range.from}..${range.to} ${why}; ${searched.how}` };
    }
    return search();

    async function search(): Promise<{ entries: NotificationEntry[]; how: string; method: '_lastUpdated search' }> {
      return { ...(await searchSince(source, client, task.types, task.since, offset)), method: '_lastUpdated search' };
    }
  };

  /** What a catch-up for a notification's subscription searches: the source's subscribed types and the focus types. */
  const catchUpTask = (source: Source, status: SubscriptionStatusInfo, receivedAt: Date): { subscription: string; types: string[]; since: Date } => {
    const types = new Set<string>(source.subscribe?.resourceTypes ?? []);
    for (const f of status.focus) {
      const ref = parseReference(f);
      if (ref) types.add(ref.resourceType);
    }
    return { subscription: status.subscription.slice(0, 512), types: [...types].sort(), since: new Date(receivedAt.getTime() - CATCH_UP_LOOKBACK_MS) };
  };

  /**
   * Everything of `types` the source changed since `since` (a `_lastUpdated` search, `_count`
   * {@link CATCH_UP_PAGE}). The first `catchUpInlineMax` resources come back as entries for this job;
   * the rest are handed on as `catch-up` inbox items of {@link CATCH_UP_PAGE} resources, durable before
   * this job finishes. A retry of this job that gets the same pages back hands them on once (the inbox
   * deduplicates by bytes); different pages bring duplicates the store keeps once.
   */
  const searchSince = async (
    source: Source,
    client: SourceClient,
    types: readonly string[],
    since: Date,
    offset: number,
  ): Promise<{ entries: NotificationEntry[]; how: string }> => {
    const entries: NotificationEntry[] = [];
    const ge = since.toISOString();
    let page: Resource[] = [];
    let handedOn = 0;
    let items = 0;
    const handOn = async (): Promise<void> => {
      if (page.length === 0) return;
      const bundle = { resourceType: 'Bundle', type: 'collection', entry: page.map((resource) => ({ resource })) };
      await submit(deps, source.id, Buffer.from(JSON.stringify(bundle)), 'catch-up');
      handedOn += page.length;
      items += 1;
      page = [];
    };
    for (const type of [...types].sort()) {
      for await (const r of client.search(type as Resource['resourceType'], { _lastUpdated: `ge${ge}`, _count: String(CATCH_UP_PAGE) }, { maxPages: CATCH_UP_MAX_PAGES })) {
        if (entries.length < inlineMax) {
          entries.push(resourceEntry(r as unknown as Record<string, unknown>, offset + entries.length, `${type}/${String(r.id)} from the catch-up search`));
          continue;
        }
        page.push(r);
        if (page.length >= CATCH_UP_PAGE) await handOn();
      }
    }
    await handOn();
    const how = `_lastUpdated search since ${ge} over ${types.join(',') || '(no types known)'}`;
    return { entries, how: handedOn > 0 ? `${how}; ${handedOn} more resources handed on as ${items} catch-up inbox item(s)` : how };
  };

  return async (job) => {
    const inboxId = job.data.inboxId;
    // One statement reads the item and claims this attempt; nothing comes back for a stale retry of
    // an item that is done, or dead-lettered and replayed elsewhere.
    const item = await store.inbox.claim(inboxId, 'fetch');
    if (!item) return;
    const isLastAttempt = job.attemptsMade + 1 >= job.maxAttempts;
    const summary: IngestSummary = { stored: 0, duplicates: 0, historical: 0, invalid: 0, deadLetters: 0, skipped: 0, fetched: 0, gaps: 0 };

    const source = await deps.registry.get(item.sourceId);
    if (!source) {
      const oo = outcome('error', 'not-found', `Source ${item.sourceId} is not registered (any more)`);
      await deadLetter(inboxId, item.sourceId, 'unknown-source', oo);
      await store.inbox.update(inboxId, { state: 'dead', outcome: oo });
      throw new TerminalJobError('unknown source');
    }

    try {
      const meta = item.meta as ParseContext;
      // A gap whose catch-up failed when the notification that revealed it was processed, handed on.
      const gapTask = item.kind === GAP_ITEM_KIND ? parseGapTask(item.body) : undefined;
      const parsed: ParseResult = item.kind === GAP_ITEM_KIND
        ? gapTask
          ? { ok: true, notification: { style: 'bundle', entries: [] } }
          : { ok: false, reason: 'invalid-structure', outcome: outcome('error', 'structure', 'A gap inbox item must hold {subscription, from, to, types, since}') }
        : parseNotification(item.body, {
            ...(typeof meta.deletedResource === 'string' ? { deletedResource: meta.deletedResource } : {}),
            ...(isObject(meta.path) ? { path: meta.path as { resourceType: string; id: string } } : {}),
          });
      if (!parsed.ok) {
        await deadLetter(inboxId, item.sourceId, parsed.reason, parsed.outcome);
        await store.inbox.update(inboxId, { state: 'dead', outcome: parsed.outcome });
        throw new TerminalJobError(parsed.reason);
      }
      const n = parsed.notification;
      const client = deps.client(source);
      const entries: NotificationEntry[] = [...n.entries];
      const notes: string[] = [];
      /** A dead letter for an entry that cannot be applied, with the structural check's issues where it ran. */
      const deadLetterInvalid = async (e: Extract<NotificationEntry, { kind: 'invalid' }>): Promise<void> => {
        const oo: OperationOutcome = e.issues ? { resourceType: 'OperationOutcome', issue: [...e.issues] } : outcome('error', 'structure', e.text, `Bundle.entry[${e.index}]`);
        await deadLetter(inboxId, source.id, 'invalid-structure', oo, e.index);
        summary.deadLetters += 1;
      };

      if (gapTask) {
        const c = await catchUp(source, client, { ...gapTask, since: new Date(gapTask.since) }, gapTask, 0);
        summary.gaps += 1;
        notes.push(`gap ${gapTask.from}..${gapTask.to} of ${gapTask.subscription}: caught up by ${c.how} (${c.entries.length} entries)`);
        pushAll(entries, c.entries);
      }

      // A ping says only that something changed: search the source's subscribed types since the
      // previous ping that was done (everything changed before that one was received was found by it).
      if (n.style === 'ping') {
        const types = source.subscribe?.resourceTypes ?? [];
        if (types.length === 0) {
          const oo = outcome(
            'error',
            'not-supported',
            'A notification without payload only says that something changed: set subscribe.resourceTypes on the source so fhir-anchor knows which types to search, then replay this dead letter',
          );
          await deadLetter(inboxId, source.id, 'unresolvable', oo);
          await store.inbox.update(inboxId, { state: 'dead', outcome: oo });
          throw new TerminalJobError('ping without subscribed types');
        }
        const previous = await store.inbox.latestDone(source.id, 'ping', item.receivedAt);
        const since = previous ? new Date(previous.getTime() - PING_CLOCK_MARGIN_MS) : new Date(item.receivedAt.getTime() - CATCH_UP_LOOKBACK_MS);
        const c = await searchSince(source, client, types, since, 0);
        notes.push(`notification without payload: fetched by ${c.how} (${c.entries.length} entries)`);
        pushAll(entries, c.entries);
      }

      // Subscription event numbers: a gap triggers a catch-up. The numbers (and the gap, with how it was
      // caught up) are recorded only once this notification is done, so that a notification that fails
      // and is retried or replayed finds its gap again instead of skipping it.
      // A handshake or heartbeat reaches this worker only when the count of events it reports was
      // above the last number received (the hook kept it for that): its events 1..count are checked
      // like a notification's numbers, so the ones that never arrived are a gap.
      let events: { subscription: string; eventNumbers: readonly number[]; gap?: { from: number; to: number; detectedAt: Date; catchUp: string } } | undefined;
      const reported = (n.status?.type === 'heartbeat' || n.status?.type === 'handshake') && n.status.eventsSinceStart !== undefined ? n.status.eventsSinceStart : undefined;
      if (n.status && (n.status.type === 'event-notification' || reported !== undefined)) {
        const subscription = n.status.subscription.slice(0, 512);
        events = { subscription, eventNumbers: reported !== undefined ? [reported] : n.status.eventNumbers };
        // For a count: the gap up to and including it (findGap stops below the lowest number it is given).
        const gap = await store.subscriptions.findGap({ sourceId: source.id, subscription, eventNumbers: reported !== undefined ? [reported + 1] : n.status.eventNumbers });
        if (gap) {
          const detectedAt = deps.clock.now();
          summary.gaps += 1;
          const task = catchUpTask(source, n.status, item.receivedAt);
          try {
            const c = await catchUp(source, client, task, gap, 10_000);
            notes.push(`gap ${gap.from}..${gap.to}: caught up by ${c.how} (${c.entries.length} entries)`);
            pushAll(entries, c.entries);
            events.gap = { ...gap, detectedAt, catchUp: c.method };
          } catch (err) {
            if (!(err instanceof SourceError)) throw err;
            // The source cannot be read now: the gap becomes an inbox item of its own (retried, then a
            // replayable dead letter), and this notification's own entries go on without waiting for it.
            // Its bytes are fixed by the notification, so a retry of this job hands it on once.
            const body: GapTask = { subscription: task.subscription, from: gap.from, to: gap.to, types: task.types, since: task.since.toISOString() };
            const handed = (await submit(deps, source.id, Buffer.from(JSON.stringify(body)), GAP_ITEM_KIND)).replace(/^=/, '');
            notes.push(`gap ${gap.from}..${gap.to}: catch-up failed (${err.message.slice(0, 200)}); handed on as inbox item ${handed}`);
            events.gap = { ...gap, detectedAt, catchUp: `handed on as inbox item ${handed}` };
          }
        }
        if (n.status.type === 'event-notification' && n.entries.length === 0) {
          // id-only payloads may carry the focus only inside the status; empty ones carry nothing.
          if (n.status.focus.length > 0) {
            n.status.focus.forEach((f, i) => entries.push({ kind: 'fetch', index: 1000 + i, reference: f }));
          } else {
            const nums = n.status.eventNumbers;
            const range = nums.length > 0 ? { from: nums.reduce((m, x) => Math.min(m, x)), to: nums.reduce((m, x) => Math.max(m, x)) } : undefined;
            const c = await catchUp(source, client, catchUpTask(source, n.status, item.receivedAt), range, 20_000);
            notes.push(`empty payload: fetched by ${c.how} (${c.entries.length} entries)`);
            pushAll(entries, c.entries);
          }
        }
      }

      // Fetch-back for id-only entries (and focus of empty payloads).
      const work: WorkItem[] = [];
      for (const e of entries) {
        if (e.kind === 'resource') work.push({ index: e.index, resource: e.resource, ...(e.fullUrl ? { fullUrl: e.fullUrl } : {}), ...(e.ifNoneExist ? { ifNoneExist: e.ifNoneExist } : {}) });
        else if (e.kind === 'delete') work.push({ index: e.index, delete: { resourceType: e.resourceType, id: e.id } });
        else if (e.kind === 'invalid') await deadLetterInvalid(e);
        else {
          const ref = parseReference(e.reference);
          if (!ref) {
            await deadLetter(inboxId, source.id, 'unresolvable', outcome('error', 'invalid', `Cannot fetch ${e.reference.slice(0, 200)}: not a Type/id reference`), e.index);
            summary.deadLetters += 1;
            continue;
          }
          const r = ref.versionId
            ? await client.vread(ref.resourceType as Resource['resourceType'], ref.id, ref.versionId)
            : await client.read(ref.resourceType as Resource['resourceType'], ref.id);
          summary.fetched += 1;
          if (r.kind === 'found') {
            const fetched = resourceEntry(r.resource as unknown as Record<string, unknown>, e.index, `${e.reference.slice(0, 200)} as fetched`);
            if (fetched.kind === 'invalid') await deadLetterInvalid(fetched);
            else if (fetched.kind === 'resource') work.push({ index: e.index, resource: fetched.resource, fullUrl: e.reference });
          } else if (!ref.versionId) work.push({ index: e.index, delete: { resourceType: ref.resourceType, id: ref.id } });
          else summary.skipped += 1;
        }
      }

      // Progress marks between stages need not be durable (a crash leaves the item unfinished either way).
      // A single resource that needed no fetching goes from claimed (`fetch`) to done (`stored`) in
      // milliseconds: marking its stages would cost two of the five statements it takes, for states
      // nobody could observe.
      const markStages = work.length > 1 || summary.fetched > 0;
      if (markStages) await store.inbox.update(inboxId, { stage: 'normalize', state: 'processing' }, { durable: false });
      const rules = await deps.rules(source.id);

      // Every resource here passed the structural check (resourceEntry); those that did not are dead letters.
      const valid: Array<WorkItem & { resource: Record<string, unknown> }> = [];
      const deletes: WorkItem[] = [];
      for (const w of work) {
        if (w.delete) {
          deletes.push(w);
          continue;
        }
        // A resource without an id (a transaction POST) takes its urn:uuid, else a content hash.
        let resource = w.resource!;
        if (typeof resource.id !== 'string') {
          const urn = w.fullUrl?.startsWith('urn:uuid:') ? w.fullUrl.slice(9) : undefined;
          resource = { ...resource, id: urn ?? createHash('sha256').update(JSON.stringify(resource)).digest('hex').slice(0, 40) };
        }
        valid.push({ ...w, resource });
      }

      // Reference resolution: urn:uuid fullUrls and conditional references.
      const resolved = new Map<string, string>();
      const byIdentifier = new Map<string, string>(); // `${type}|${system}|${value}` → final Type/anchorId
      for (const w of valid) {
        const type = String(w.resource.resourceType);
        const final = `${type}/${anchorId(source.id, type, String(w.resource.id))}`;
        if (w.fullUrl) resolved.set(w.fullUrl, final);
        for (const ident of identifiersOf(w.resource)) byIdentifier.set(`${type}|${ident.system}|${ident.value}`, final);
      }
      const conditional = new Set<string>();
      for (const w of valid) {
        const refs = new Set<string>();
        collectReferences(w.resource, refs);
        for (const r of refs) if (/^[A-Z][A-Za-z]+\?/.test(r)) conditional.add(r);
      }
      for (const ref of conditional) {
        const [type, query] = [ref.slice(0, ref.indexOf('?')), ref.slice(ref.indexOf('?') + 1)];
        const q = identifierQuery(query);
        if (!q) {
          notes.push(`unresolved conditional reference ${ref.slice(0, 200)} (only identifier=system|value is supported)`);
          continue;
        }
        const local = byIdentifier.get(`${type}|${q.system}|${q.value}`);
        if (local) {
          resolved.set(ref, local);
          continue;
        }
        const found = await store.resources.findByIdentifier(type, q.system, q.value, 2);
        if (found.length === 1) resolved.set(ref, `${type}/${found[0]!.id}`);
        else notes.push(`${found.length === 0 ? 'unresolved' : 'ambiguous'} conditional reference ${ref.slice(0, 200)}`);
      }

      // Normalise each resource, then validate them all as one batch (off the event loop).
      const normalizedItems: Array<{ w: (typeof valid)[number]; normalized: ReturnType<typeof normalizeResource> }> = [];
      for (const w of valid) {
        if (w.ifNoneExist) {
          const q = identifierQuery(w.ifNoneExist);
          const type = String(w.resource.resourceType);
          if (q && (await store.resources.findByIdentifier(type, q.system, q.value, 1)).length > 0) {
            summary.skipped += 1; // conditional create: a match exists
            continue;
          }
        }
        let normalized;
        try {
          normalized = normalizeResource(w.resource as unknown as Resource, {
            sourceId: source.id,
            sourceBaseUrl: source.baseUrl,
            ...(source.identifierSystem ? { identifierSystem: source.identifierSystem } : {}),
            resolvedReferences: resolved,
            rules,
          });
        } catch (err) {
          const oo = outcome('error', 'processing', `Normalisation failed: ${err instanceof Error ? err.message.slice(0, 300) : 'unknown error'}`);
          await deadLetter(inboxId, source.id, 'normalize-failed', oo, w.index);
          summary.deadLetters += 1;
          continue;
        }
        // DS4P labels so consent can deny "all my mental health data" (src/consent/labels.ts).
        const labelled = deps.sensitivity ? applySensitivityLabels(normalized.resource, deps.sensitivity) : normalized.resource;
        normalizedItems.push({ w, normalized: { ...normalized, resource: labelled } });
      }
      const validations = await deps.validator.validateMany(
        normalizedItems.map(({ normalized }) => ({ resource: normalized.resource, ...(normalized.targetProfile ? { profile: normalized.targetProfile } : {}) })),
      );
      const inputs: PutVersionInput[] = [];
      const inputIndex: number[] = [];
      normalizedItems.forEach(({ w, normalized }, k) => {
        const validation = validations[k]!;
        if (!validation.valid) summary.invalid += 1;
        const srcMeta = isObject(w.resource.meta) ? w.resource.meta : {};
        const sourceVersion = typeof srcMeta.versionId === 'string' ? srcMeta.versionId : undefined;
        const sourceTime = normalized.sourceLastUpdated ? new Date(normalized.sourceLastUpdated) : undefined;
        const sourceTimeOk = sourceTime && !Number.isNaN(sourceTime.getTime()) ? sourceTime : undefined;
        inputs.push({
          resourceType: normalized.resource.resourceType,
          id: normalized.resource.id!,
          resource: normalized.resource,
          // Without a source versionId the key hashes the resource AS RECEIVED: its normalised form can
          // differ between runs (conditional references resolving later), the source bytes cannot.
          dedupKey: sourceVersion ? `v:${sourceVersion}` : `h:${contentHash(w.resource as unknown as Resource)}@${sourceTimeOk?.toISOString() ?? ''}`,
          ...(sourceTimeOk ? { sourceTime: sourceTimeOk } : {}),
          sourceId: source.id,
          validation: { valid: validation.valid, outcome: validation.outcome },
        });
        inputIndex.push(w.index);
      });
      for (const d of deletes) {
        const id = anchorId(source.id, d.delete!.resourceType, d.delete!.id);
        const current = await store.resources.readCurrent(d.delete!.resourceType, id);
        if (!current || current.deleted) {
          summary.skipped += 1; // deleting what we never had, or already deleted: idempotent
          continue;
        }
        inputs.push({ resourceType: d.delete!.resourceType, id, deleted: true, sourceId: source.id });
        inputIndex.push(d.index);
      }

      if (markStages) await store.inbox.update(inboxId, { stage: 'store', state: 'processing' }, { durable: false });
      /**
       * `summary` with `results` counted in, as a new object: the store may compute the inbox outcome
       * more than once (a one-statement create it tries first, then the transaction), so this must not
       * change `summary` itself.
       */
      const counted = (results: readonly PutVersionResult[]): IngestSummary => {
        const s = { ...summary };
        for (const r of results) {
          if (r.status === 'duplicate') s.duplicates += 1;
          else if (r.status === 'historical') s.historical += 1;
          else s.stored += 1;
        }
        return s;
      };
      // Nothing left to do after storing (no patient to link, commitments written by the store): the
      // item is marked done in the transaction that stores its versions.
      const finishesWithStore =
        store.resources.commitsVersions && (deps.linkIdentifierSystems.length === 0 || !inputs.some((i) => i.resourceType === 'Patient' && !i.deleted));
      // After the item is done: a crash in between makes the next notification catch the gap up again
      // (stored once), never skip it.
      const recordEvents = async (): Promise<void> => {
        if (events) await store.subscriptions.recordEvents({ sourceId: source.id, ...events });
      };
      /**
       * `putVersions` of every input; when the database refuses a value in the batch (a data error no
       * check before caught), each version is stored on its own and the refused ones become dead
       * letters, so the good entries beside a bad one are never lost with it. With `inboxDone` the item
       * is marked done either way.
       */
      const putAll = async (options?: PutVersionsOptions): Promise<PutVersionResult[]> => {
        try {
          return await store.resources.putVersions(inputs, options);
        } catch (err) {
          if (!(err instanceof StoreDataError)) throw err;
          const results: PutVersionResult[] = [];
          for (let k = 0; k < inputs.length; k++) {
            try {
              pushAll(results, await store.resources.putVersions([inputs[k]!]));
            } catch (one) {
              if (!(one instanceof StoreDataError)) throw one;
              await deadLetter(inboxId, source.id, 'store-refused', outcome('error', 'invalid', `Not stored: ${one.message}`), inputIndex[k]);
              summary.deadLetters += 1;
            }
          }
          if (options?.inboxDone) await store.inbox.update(inboxId, { stage: 'stored', state: 'done', outcome: options.inboxDone.outcome(results) });
          return results;
        }
      };
      if (finishesWithStore) {
        Object.assign(summary, counted(await putAll({ inboxDone: { id: inboxId, outcome: (results) => ({ ...counted(results), notes: notes.slice(0, 50) }) } })));
        await recordEvents();
        logger.debug({ inboxId, sourceId: source.id, ...summary }, 'ingested');
        return;
      }
      const results = await putAll();
      Object.assign(summary, counted(results));
      const stored = results.filter((r) => r.status !== 'duplicate');

      // Patient linking across sources by configured identifier systems.
      const linkVersions = await linkPatients(stored.map((r) => r.version).filter((v) => v.resourceType === 'Patient' && !v.deleted).map((v) => v.resource as Patient));

      // A store with a committer committed every new version in the transaction that stored it.
      // Otherwise integrity jobs do it: duplicates too, as their job may have been lost (e.g. Redis
      // restarted empty) before this re-run; committing is idempotent, so a repeat is a cheap no-op.
      const versions = store.resources.commitsVersions ? [] : [...results.map((r) => r.version), ...linkVersions];
      if (versions.length > 0) {
        await deps.queues.enqueueBulk(
          'integrity',
          versions.map((v) => ({
            data: { resourceType: v.resourceType, id: v.id, versionId: v.versionId },
            options: { jobId: integrityJobId(v) },
          })),
        );
      }
      await store.inbox.update(inboxId, { stage: 'stored', state: 'done', outcome: { ...summary, notes: notes.slice(0, 50) } });
      await recordEvents();
      logger.debug({ inboxId, sourceId: source.id, ...summary }, 'ingested');
    } catch (err) {
      if (err instanceof TerminalJobError) throw err;
      const retryable = !(err instanceof SourceError) || err.retryable;
      const message = err instanceof Error ? err.message.slice(0, 300) : 'unknown error';
      if (!retryable || isLastAttempt) {
        const reason = err instanceof SourceError ? 'fetch-failed' : 'exhausted';
        const oo = outcome('error', err instanceof SourceError ? 'transient' : 'exception', `Ingest failed after ${job.attemptsMade + 1} attempt(s): ${message}`);
        await deadLetter(inboxId, item.sourceId, reason, oo);
        await store.inbox.update(inboxId, { state: 'dead', outcome: oo });
        throw new TerminalJobError(reason);
      }
      await store.inbox.update(inboxId, { state: 'failed', outcome: outcome('warning', 'transient', `Attempt ${job.attemptsMade + 1} failed: ${message}; will retry`) });
      throw err;
    }
  };

  /** Links each new Patient with current Patients of other sources sharing a linking identifier. */
  async function linkPatients(patients: Patient[]): Promise<Array<{ resourceType: string; id: string; versionId: string; deleted: boolean; resource: Resource | undefined }>> {
    if (deps.linkIdentifierSystems.length === 0 || patients.length === 0) return [];
    const out: Array<{ resourceType: string; id: string; versionId: string; deleted: boolean; resource: Resource | undefined }> = [];
    for (const patient of patients) {
      const idents = identifiersOf(patient as unknown as Record<string, unknown>).filter((i) => deps.linkIdentifierSystems.includes(i.system));
      for (const ident of idents) {
        const matches = (await store.resources.findByIdentifier('Patient', ident.system, ident.value, 20)).filter((m) => m.id !== patient.id);
        for (const match of matches) {
          for (const [from, to] of [
            [patient.id!, match.id],
            [match.id, patient.id!],
          ] as const) {
            const current = await store.resources.readCurrent('Patient', from);
            const res = current?.resource as Patient | undefined;
            if (!res || current?.deleted) continue;
            const links = res.link ?? [];
            if (links.some((l) => l.other?.reference === `Patient/${to}`)) continue;
            const { meta, ...rest } = res;
            const updated: Patient = { ...rest, meta: { ...(meta?.profile ? { profile: meta.profile } : {}), ...(meta?.source ? { source: meta.source } : {}), ...(meta?.security ? { security: meta.security } : {}) }, link: [...links, { other: { reference: `Patient/${to}` }, type: 'seealso' }] };
            const [validation] = await deps.validator.validateMany([{ resource: updated, ...(meta?.profile?.[0] ? { profile: meta.profile[0] } : {}) }]);
            const r = await store.resources.putVersion({
              resourceType: 'Patient',
              id: from,
              resource: updated,
              dedupKey: `link:Patient/${to}`,
              sourceId: 'fhir-anchor',
              validation: { valid: validation!.valid, outcome: validation!.outcome },
            });
            if (r.status !== 'duplicate') out.push(r.version);
          }
        }
      }
    }
    return out;
  }
}
