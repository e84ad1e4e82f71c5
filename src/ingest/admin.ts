/**
 * Ingest operations surface, mounted under /admin (behind the admin token):
 * sources CRUD and status, inbox items, dead letters and their replay.
 * Secrets are never returned; raw notification bodies are never returned (size and hash only).
 */
import { Router } from 'express';
import { httpError } from '../platform/errors.js';
import { rerunJobId, type QueueRegistry } from '../queue/index.js';
import type { Store } from '../store/index.js';
import { publicSource } from './source.js';
import { parseSource, type SourceRegistry } from './sources.js';

export interface IngestAdminDeps {
  readonly registry: SourceRegistry;
  readonly store: Store;
  readonly queues: QueueRegistry;
  /** Our own base URL, to tell sources where to send notifications. */
  readonly publicBaseUrl: string;
  /** Creates / re-creates the Subscriptions of sources with `subscribe` settings. */
  readonly manageSubscriptions: (sourceId?: string) => Promise<unknown[]>;
}

function bodyObject(body: unknown): Record<string, unknown> {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw httpError(400, 'invalid', 'Expected a JSON object body (Content-Type: application/json)');
  }
  return body as Record<string, unknown>;
}

export function createIngestAdminRouter(deps: IngestAdminDeps): Router {
  const { registry, store, queues } = deps;
  const router = Router();
  const hookUrl = (id: string): string => `${deps.publicBaseUrl}/hooks/${id}`;

  router.get('/sources', async (_req, res) => {
    res.json((await registry.list()).map((s) => ({ ...publicSource(s), hookUrl: hookUrl(s.id) })));
  });

  router.post('/sources', async (req, res) => {
    const source = parseSource(bodyObject(req.body));
    if (await store.sources.get(source.id)) throw httpError(409, 'duplicate', `Source ${source.id} already exists; use PUT /admin/sources/${source.id} to replace it`);
    await registry.put(source);
    res.status(201).location(`/admin/sources/${source.id}`).json({ ...publicSource(source), hookUrl: hookUrl(source.id) });
  });

  router.get('/sources/:id', async (req, res) => {
    const source = await registry.get(String(req.params.id));
    if (!source) throw httpError(404, 'not-found', 'Unknown source');
    res.json({ ...publicSource(source), hookUrl: hookUrl(source.id) });
  });

  router.put('/sources/:id', async (req, res) => {
    const body = bodyObject(req.body);
    const id = String(req.params.id);
    if (body.id !== undefined && body.id !== id) throw httpError(400, 'invalid', 'The id in the body does not match the URL');
    const source = parseSource({ ...body, id });
    const { created } = await registry.put(source);
    res.status(created ? 201 : 200).json({ ...publicSource(source), hookUrl: hookUrl(source.id) });
  });

  router.delete('/sources/:id', async (req, res) => {
    if (!(await registry.delete(String(req.params.id)))) throw httpError(404, 'not-found', 'Unknown source');
    res.status(204).end();
  });

  router.get('/sources/:id/status', async (req, res) => {
    const source = await registry.get(String(req.params.id));
    if (!source) throw httpError(404, 'not-found', 'Unknown source');
    const [inbox, subscriptions, dead] = await Promise.all([
      store.inbox.sourceSummary(source.id),
      store.subscriptions.list(source.id),
      store.deadLetters.countsByReason(),
    ]);
    const deadForSource = dead.filter((d) => d.sourceId === source.id);
    res.json({
      source: source.id,
      lastNotification: inbox.lastReceived?.toISOString() ?? null,
      inbox: inbox.byState,
      errors: {
        deadLettersOpen: deadForSource.reduce((a, d) => a + d.open, 0),
        deadLettersTotal: deadForSource.reduce((a, d) => a + d.total, 0),
        byReason: Object.fromEntries(deadForSource.map((d) => [d.reason, d.total])),
        failedInbox: inbox.byState.failed ?? 0,
      },
      subscriptions: subscriptions.map((s) => ({
        subscription: s.subscription,
        topic: s.topic ?? null,
        status: s.status ?? null,
        lastSeen: s.lastSeen?.toISOString() ?? null,
        lastHeartbeat: s.lastHeartbeat?.toISOString() ?? null,
        lastEventNumber: s.lastEventNumber ?? null,
        reportedEvents: s.reportedEvents ?? null,
        gaps: s.gaps,
        restarts: s.restarts,
      })),
    });
  });

  router.post('/sources/:id/subscriptions/check', async (req, res) => {
    const source = await registry.get(String(req.params.id));
    if (!source) throw httpError(404, 'not-found', 'Unknown source');
    if (!source.subscribe) throw httpError(409, 'conflict', 'This source has no subscribe settings');
    const [summary] = await deps.manageSubscriptions(source.id);
    res.json(summary);
  });

  router.get('/inbox/:id', async (req, res) => {
    const item = await store.inbox.get(String(req.params.id));
    if (!item) throw httpError(404, 'not-found', 'Unknown inbox item');
    const deadLetters = (await store.deadLetters.list({ limit: 1000 })).filter((d) => d.inboxId === item.id);
    res.json({
      id: item.id,
      sourceId: item.sourceId,
      kind: item.kind,
      contentType: item.contentType ?? null,
      bytes: item.body.length,
      sha256: item.bodySha256,
      receivedAt: item.receivedAt.toISOString(),
      stage: item.stage,
      state: item.state,
      attempts: item.attempts,
      outcome: item.outcome ?? null,
      updatedAt: item.updatedAt.toISOString(),
      deadLetters: deadLetters.map((d) => ({ id: d.id, reason: d.reason, entryIndex: d.entryIndex ?? null, replayedAt: d.replayedAt?.toISOString() ?? null })),
    });
  });

  router.get('/dead-letters', async (req, res) => {
    const limit = req.query.limit === undefined ? 100 : Number(req.query.limit);
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw httpError(400, 'invalid', 'limit must be an integer from 1 to 1000');
    const open = req.query.open === undefined ? undefined : req.query.open === 'true' ? true : req.query.open === 'false' ? false : null;
    if (open === null) throw httpError(400, 'invalid', 'open must be true or false');
    const sourceId = typeof req.query.source === 'string' ? req.query.source : undefined;
    const list = await store.deadLetters.list({ limit, ...(open !== undefined ? { open } : {}), ...(sourceId ? { sourceId } : {}) });
    res.json(
      list.map((d) => ({
        id: d.id,
        inboxId: d.inboxId ?? null,
        sourceId: d.sourceId,
        reason: d.reason,
        entryIndex: d.entryIndex ?? null,
        outcome: d.outcome,
        createdAt: d.createdAt.toISOString(),
        replayedAt: d.replayedAt?.toISOString() ?? null,
        replayCount: d.replayCount,
      })),
    );
  });

  router.post('/dead-letters/:id/replay', async (req, res) => {
    const letter = await store.deadLetters.get(String(req.params.id));
    if (!letter) throw httpError(404, 'not-found', 'Unknown dead letter');
    if (!letter.inboxId) throw httpError(409, 'conflict', 'This dead letter has no inbox item to replay');
    const item = await store.inbox.get(letter.inboxId);
    if (!item) throw httpError(409, 'conflict', 'The inbox item is gone');
    if (item.kind === 'rejected') throw httpError(409, 'conflict', 'The notification was not FHIR; there is nothing to replay (fix the sender)');
    await store.deadLetters.markReplayed(letter.id);
    await store.inbox.update(item.id, { stage: 'received', state: 'pending' });
    // The item's re-run job (replacing a finished one, where BullMQ would ignore a plain re-add), unless
    // a job for the item is still queued: the reopened item is what it will run.
    await queues.rerun('ingest', [{ data: { inboxId: item.id }, jobId: rerunJobId(item.id), liveIds: [item.id] }]);
    res.status(202).json({ replayed: letter.id, inboxId: item.id });
  });

  return router;
}
