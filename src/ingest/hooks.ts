/**
 * The notification endpoint: `POST /hooks/{sourceId}`, `PUT /hooks/{sourceId}/{type}/{id}` and
 * `DELETE /hooks/{sourceId}/{type}/{id}`.
 *
 * Durability first: after authentication the raw bytes are written to the inbox in one statement
 * before any 2xx; everything else happens in the `ingest` worker. Handshakes and heartbeats are
 * acknowledged and recorded as the subscription's last-seen time, with the count of events they report
 * (Backport `eventsSinceSubscriptionStart`): one reporting more events than were received is also
 * kept in the inbox, and its job (delayed, so that notifications in flight land first) catches up the
 * events that never arrived. An empty body is a notification
 * without payload (R4 `Subscription.channel.payload` absent): accepted, and caught up by a search on the
 * source in the worker. Bodies that are not FHIR at all are
 * answered 400 with an OperationOutcome and kept as a dead letter (raw bytes in the inbox).
 */
import express, { Router, type Request, type Response } from 'express';
import type { OperationOutcome } from '@medplum/fhirtypes';
import type { Clock } from '../platform/clock.js';
import { httpError, outcome } from '../platform/errors.js';
import type { Logger } from '../platform/logger.js';
import type { QueueRegistry } from '../queue/index.js';
import type { Store } from '../store/index.js';
import { verifyHookAuth } from './hook-auth.js';
import { notificationDedupKey, parseNotification, type NotificationEntry, type ParseContext } from './notification.js';
import type { SourceRegistry } from './sources.js';

export interface HooksDeps {
  readonly registry: SourceRegistry;
  readonly store: Store;
  readonly queues: QueueRegistry;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly bodyLimitBytes: number;
  /** Delay before catching up events a handshake or heartbeat reports but that never arrived. */
  readonly heartbeatGapDelayMs: number;
}

/** Header Medplum (and others) use to name a deleted resource on an empty rest-hook body. */
export const DELETED_RESOURCE_HEADERS = ['x-medplum-deleted-resource', 'x-deleted-resource'];

const FHIR_JSON = 'application/fhir+json; charset=utf-8';

function send(res: Response, status: number, oo: OperationOutcome, headers: Record<string, string> = {}): void {
  for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
  res.status(status).type(FHIR_JSON).send(JSON.stringify(oo));
}

export function createHooksRouter(deps: HooksDeps): Router {
  const { registry, store, queues, clock, logger } = deps;
  const router = Router();
  // Raw bytes of any content type: signatures are over exactly what was sent.
  router.use(express.raw({ type: () => true, limit: deps.bodyLimitBytes }));

  /** The ingest job of an inbox item. Its bytes are durable already: if adding the job fails, the reconciler adds it later. */
  const enqueue = async (inboxId: string, delayMs?: number): Promise<void> => {
    try {
      await queues.enqueue('ingest', { inboxId }, { jobId: inboxId, ...(delayMs !== undefined ? { delayMs } : {}) });
    } catch (err) {
      logger.warn({ inboxId, err: err instanceof Error ? err.message : String(err) }, 'enqueue failed; left for the reconciler');
    }
  };

  const handle = async (req: Request, res: Response, path?: { resourceType: string; id: string }, isDelete = false): Promise<void> => {
    const sourceId = String(req.params.sourceId);
    const rawBody = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
    const source = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(sourceId) ? await registry.get(sourceId) : undefined;
    const authResult = source ? verifyHookAuth(source.hookAuth, { headers: req.headers, rawBody }, clock) : { ok: false as const, why: 'unknown source' };
    if (!authResult.ok) {
      logger.warn({ sourceId: sourceId.slice(0, 64), why: authResult.why }, 'hook authentication failed');
      // Deliberately generic: the same answer for an unknown source and for wrong credentials.
      throw httpError(401, 'login', 'Authentication required', { 'WWW-Authenticate': 'Bearer realm="fhir-anchor-hooks"' });
    }

    const deletedHeader = DELETED_RESOURCE_HEADERS.map((h) => req.get(h)).find((v) => v !== undefined);
    const ctx: ParseContext = {
      ...(isDelete && path ? { deletedResource: `${path.resourceType}/${path.id}` } : deletedHeader ? { deletedResource: deletedHeader.slice(0, 200) } : {}),
      ...(path && !isDelete ? { path } : {}),
    };
    const contentType = req.get('content-type')?.slice(0, 200);
    const charset = contentType ? /;\s*charset\s*=\s*"?([^";\s]+)/i.exec(contentType)?.[1] : undefined;
    const parsed = parseNotification(rawBody, charset ? { ...ctx, charset } : ctx);
    const meta = { ...ctx, ...(parsed.ok ? { style: parsed.notification.style } : {}) };

    if (!parsed.ok) {
      // Keep the bad input (nothing lost) as a dead letter with its reason, and say what is wrong.
      const { id } = await store.inbox.receive({ sourceId, kind: 'rejected', contentType, body: rawBody, dedupKey: notificationDedupKey(undefined, rawBody), meta });
      await store.inbox.update(id, { stage: 'received', state: 'dead', outcome: parsed.outcome });
      await store.deadLetters.add({ inboxId: id, sourceId, reason: parsed.reason, outcome: parsed.outcome });
      send(res, 400, parsed.outcome, { 'X-Inbox-Id': id });
      return;
    }

    const n = parsed.notification;
    if (n.status) {
      const type = n.status.type;
      const counted = (type === 'handshake' || type === 'heartbeat') && n.status.eventsSinceStart !== undefined;
      const { lastEventNumber } = await store.subscriptions.touch({
        sourceId,
        subscription: n.status.subscription.slice(0, 512),
        ...(n.status.topic ? { topic: n.status.topic.slice(0, 512) } : {}),
        ...(n.status.status ? { status: n.status.status.slice(0, 32) } : {}),
        heartbeat: type === 'heartbeat',
        ...(counted ? { reported: { events: n.status.eventsSinceStart!, by: type } } : {}),
      });
      if (type === 'handshake' || type === 'heartbeat' || type === 'query-status') {
        const missed = counted && lastEventNumber !== undefined && n.status.eventsSinceStart! > lastEventNumber;
        if (!missed) {
          send(res, 200, outcome('information', 'informational', `${type} acknowledged`));
          return;
        }
        // Events the source counts that never arrived here: kept, and caught up by the worker later.
        const { id, duplicate } = await store.inbox.receive({ sourceId, kind: n.style, contentType: req.get('content-type')?.slice(0, 200), body: rawBody, dedupKey: notificationDedupKey(n, rawBody), meta: { style: n.style } });
        if (!duplicate) await enqueue(id, deps.heartbeatGapDelayMs);
        const range = `${lastEventNumber! + 1}..${n.status.eventsSinceStart!}`;
        send(res, 200, outcome('information', 'informational', `${type} acknowledged; events ${range} were not received and will be caught up from the source`), { 'X-Inbox-Id': id });
        return;
      }
    }

    const { id, duplicate } = await store.inbox.receive({
      sourceId,
      kind: n.style,
      contentType,
      body: rawBody,
      dedupKey: notificationDedupKey(n, rawBody),
      meta,
    });
    if (duplicate) {
      send(res, 200, outcome('information', 'informational', 'Notification already received; stored once'), { 'X-Inbox-Id': id });
      return;
    }
    await enqueue(id);
    const bad = n.entries.filter((e): e is Extract<NotificationEntry, { kind: 'invalid' }> => e.kind === 'invalid');
    const good = n.entries.length - bad.length;
    const accepted =
      n.style === 'ping'
        ? 'Accepted: a notification without payload; the changes will be fetched from the source'
        : good === 0 && n.entries.length > 0
          ? 'Received, but nothing in it can be applied: kept as a dead letter'
          : `Accepted: ${good} entr${good === 1 ? 'y' : 'ies'} queued`;
    // Entries that cannot be applied are kept as dead letters; the sender is told which (the rest go on).
    // Not a 4xx: an EHR may turn a Subscription whose notifications get 4xx answers to `error`.
    const answer = outcome('information', 'informational', accepted);
    for (const e of bad.slice(0, 20)) {
      const where = n.style === 'rest-hook' ? (e.issues?.[0]?.expression ?? []) : [`Bundle.entry[${e.index}]`];
      answer.issue.push({ severity: 'warning', code: 'structure', details: { text: `${e.text}: kept as a dead letter, not applied` }, ...(where.length > 0 ? { expression: [...where] } : {}) });
    }
    send(res, 202, answer, {
      'X-Inbox-Id': id,
    });
  };

  const validPath = (type: string, id: string): { resourceType: string; id: string } => {
    if (!/^[A-Z][A-Za-z]{1,63}$/.test(type) || !/^[A-Za-z0-9\-.]{1,64}$/.test(id)) {
      throw httpError(400, 'invalid', 'The URL must name a resource as /hooks/{source}/{Type}/{id}');
    }
    return { resourceType: type, id };
  };

  router.post('/:sourceId', (req, res) => handle(req, res));
  router.put('/:sourceId/:type/:id', (req, res) => handle(req, res, validPath(String(req.params.type), String(req.params.id))));
  router.delete('/:sourceId/:type/:id', (req, res) => handle(req, res, validPath(String(req.params.type), String(req.params.id)), true));
  return router;
}
