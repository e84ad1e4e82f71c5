/**
 * The ingest stage: the front door. Hooks write raw notifications to the inbox; the `ingest` worker
 * fetches, normalises, validates and stores; a reconciler re-enqueues inbox items whose jobs were lost.
 */
import { readFile } from 'node:fs/promises';
import type { Router } from 'express';
import { compileCodeLists, type SensitivityCodeIndex } from '../consent/index.js';
import type { Clock } from '../platform/clock.js';
import type { Logger } from '../platform/logger.js';
import { createValidatorPool, defaultValidationThreads, loadNormalizationRules, prepareStructuralCheck, type BatchValidator, type NormalizationRules } from '../normalize/index.js';
import { rerunJobId, type QueueRegistry } from '../queue/index.js';
import type { Store } from '../store/index.js';
import { createIngestAdminRouter } from './admin.js';
import { createHooksRouter } from './hooks.js';
import type { Source } from './source.js';
import { createSourceClient, type SourceClient } from './source-client.js';
import { SourceRegistry } from './sources.js';
import { checkSubscriptions, hookUrlFor, type SubscriptionSummary } from './subscriptions.js';
import { createIngestProcessor } from './worker.js';
export { CATCH_UP_LOOKBACK_MS, CATCH_UP_MAX_RESOURCES, PING_CLOCK_MARGIN_MS } from './worker.js';
import type { Sealer } from '../platform/seal.js';

export { parseNotification, type ParsedNotification } from './notification.js';
export { SourceRegistry } from './sources.js';
export type { Source } from './source.js';

/** The reconciler looks at inbox items untouched for this long (a job should have moved them). */
export const RECONCILE_STALE_MS = 5 * 60 * 1000;
/** Most items one reconciler pass re-enqueues. */
export const RECONCILE_BATCH = 1000;

/** The DS4P code lists applied at ingest. */
export const SENSITIVITY_CODE_LISTS = new URL('../../fhir-profiles/security-labels/sensitivity-code-lists.json', import.meta.url);

export interface IngestStageOptions {
  readonly store: Store;
  readonly queues: QueueRegistry;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly publicBaseUrl: string;
  readonly bodyLimitBytes: number;
  readonly linkIdentifierSystems: readonly string[];
  /** Resources a catch-up search ingests in its own job before handing the rest on (default {@link CATCH_UP_MAX_RESOURCES}). */
  readonly catchUpInlineMax?: number;
  /** Delay before catching up events a handshake or heartbeat reports but that never arrived (default 15 s). */
  readonly heartbeatGapDelayMs?: number;
  /** JSON file of sources to load at start-up. */
  readonly sourcesFile?: string;
  /** Validation worker threads (0: in the event loop; default {@link defaultValidationThreads}). */
  readonly validationThreads?: number;
  /** Seals source secrets at rest (config `SECRETS_KEY`); without one they are stored unencrypted. */
  readonly sealer?: Sealer;
}

export interface IngestStage {
  readonly registry: SourceRegistry;
  readonly hooksRouter: Router;
  readonly adminRouter: Router;
  /** Starts the ingest workers in this process. */
  startWorkers(concurrency: number): void;
  /**
   * For every source with `subscribe` settings: creates the Subscription(s) on the EHR (topic-based
   * where it advertises the Backport IG, classic otherwise) and re-creates any it turned to `error`
   * or `off`. One source's failure never stops the others.
   */
  manageSubscriptions(sourceId?: string): Promise<Array<SubscriptionSummary | { sourceId: string; error: string }>>;
  /** Re-enqueues inbox items whose jobs were lost (Redis restarted empty, a crash between commit and enqueue). */
  reconcile(options?: { staleMs?: number }): Promise<number>;
  /** Stops the validation threads (after the queues stopped delivering jobs). */
  close(): Promise<void>;
  /** The DS4P code lists resources are labelled with at ingest (the consent service labels consult content with them too). */
  readonly sensitivity: SensitivityCodeIndex;
}

export async function createIngestStage(options: IngestStageOptions): Promise<IngestStage> {
  const { store, queues, clock, logger } = options;
  // The hook checks every resource's structure: build what that needs before the first notification.
  prepareStructuralCheck();
  const registry = new SourceRegistry(store, clock, options.sealer);
  const sealedNow = await registry.sealStored();
  if (sealedNow > 0) logger.info({ sources: sealedNow }, 'source secrets stored before SECRETS_KEY was set are now encrypted');
  if (options.sourcesFile) {
    const n = await registry.loadFile(options.sourcesFile);
    logger.info({ sources: n }, 'sources loaded from file');
  }

  let validator: Promise<BatchValidator> | undefined;
  const sensitivity: SensitivityCodeIndex = compileCodeLists(JSON.parse(await readFile(SENSITIVITY_CODE_LISTS, 'utf8')) as unknown);
  const rulesCache = new Map<string, Promise<NormalizationRules>>();
  const clients = new Map<string, { client: SourceClient; definition: string }>();
  const client = (source: Source): SourceClient => {
    // A changed definition (new credentials, new base URL) gets a new client.
    const definition = JSON.stringify(source);
    const hit = clients.get(source.id);
    if (hit && hit.definition === definition) return hit.client;
    const c = createSourceClient(source, { logger, clock });
    clients.set(source.id, { client: c, definition });
    return c;
  };

  const manageSubscriptions = async (sourceId?: string): Promise<Array<SubscriptionSummary | { sourceId: string; error: string }>> => {
    const sources = (await registry.list()).filter((s) => s.subscribe && (sourceId === undefined || s.id === sourceId));
    return Promise.all(
      sources.map(async (source) => {
        try {
          const summary = await checkSubscriptions(client(source), source, hookUrlFor(options.publicBaseUrl, source.id), { logger });
          if (!summary.healthy) logger.warn({ sourceId: source.id }, 'source subscriptions not healthy');
          return summary;
        } catch (err) {
          const error = err instanceof Error ? err.message.slice(0, 300) : String(err);
          logger.warn({ sourceId: source.id, error }, 'managing source subscriptions failed');
          return { sourceId: source.id, error };
        }
      }),
    );
  };

  return {
    registry,
    sensitivity,
    hooksRouter: createHooksRouter({ registry, store, queues, clock, logger, bodyLimitBytes: options.bodyLimitBytes, heartbeatGapDelayMs: options.heartbeatGapDelayMs ?? 15_000 }),
    adminRouter: createIngestAdminRouter({ registry, store, queues, publicBaseUrl: options.publicBaseUrl, manageSubscriptions }),
    manageSubscriptions,

    startWorkers(concurrency) {
      validator ??= createValidatorPool({ threads: options.validationThreads ?? defaultValidationThreads() });
      const ready = validator;
      const rules = (sourceId: string): Promise<NormalizationRules> => {
        let r = rulesCache.get(sourceId);
        if (!r) {
          r = loadNormalizationRules(undefined, sourceId);
          rulesCache.set(sourceId, r);
        }
        return r;
      };
      let processor: ReturnType<typeof createIngestProcessor> | undefined;
      queues.work(
        'ingest',
        async (job) => {
          processor ??= createIngestProcessor({
            store,
            queues,
            registry,
            clock,
            logger,
            validator: await ready,
            rules,
            client,
            linkIdentifierSystems: options.linkIdentifierSystems,
            sensitivity,
            ...(options.catchUpInlineMax !== undefined ? { catchUpInlineMax: options.catchUpInlineMax } : {}),
          });
          await processor(job);
        },
        { concurrency },
      );
    },

    async close() {
      const v = validator;
      validator = undefined;
      if (v) await (await v.catch(() => undefined))?.close();
    },

    async reconcile(reconcileOptions = {}) {
      const staleMs = reconcileOptions.staleMs ?? RECONCILE_STALE_MS;
      const stale = await store.inbox.listUnfinished({ updatedBefore: new Date(clock.now().getTime() - staleMs), limit: RECONCILE_BATCH });
      if (stale.length === 0) return 0;
      // An item still has its first job (`id`, waiting behind a backlog or in backoff) or a re-run
      // queued (`id.rerun`): nothing is added for it. Otherwise its job was lost: one re-run.
      const added = await queues.rerun(
        'ingest',
        stale.map((s) => ({ data: { inboxId: s.id }, jobId: rerunJobId(s.id), liveIds: [s.id] })),
      );
      if (added > 0) logger.warn({ count: added, stale: stale.length }, 'reconciler re-enqueued inbox items with no progress');
      return added;
    },
  };
}
