/**
 * The ingest stage: the front door. Hooks write raw notifications to the inbox; the `ingest` worker
 * fetches, normalises, validates and stores; a reconciler re-enqueues inbox items whose jobs were lost.
 */
import type { Router } from 'express';
import type { Clock } from '../platform/clock.js';
import type { Logger } from '../platform/logger.js';
import { loadNormalizationRules, createValidator, type NormalizationRules, type Validator } from '../normalize/index.js';
import type { QueueRegistry } from '../queue/index.js';
import type { Store } from '../store/index.js';
import { createIngestAdminRouter } from './admin.js';
import { createHooksRouter } from './hooks.js';
import type { Source } from './source.js';
import { createSourceClient, type SourceClient } from './source-client.js';
import { SourceRegistry } from './sources.js';
import { createIngestProcessor } from './worker.js';

export { parseNotification, type ParsedNotification } from './notification.js';
export { SourceRegistry } from './sources.js';
export type { Source } from './source.js';

/** The reconciler looks at inbox items untouched for this long (a job should have moved them). */
export const RECONCILE_STALE_MS = 5 * 60 * 1000;
/** Most items one reconciler pass re-enqueues. */
export const RECONCILE_BATCH = 1000;

export interface IngestStageOptions {
  readonly store: Store;
  readonly queues: QueueRegistry;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly publicBaseUrl: string;
  readonly bodyLimitBytes: number;
  readonly linkIdentifierSystems: readonly string[];
  /** JSON file of sources to load at start-up. */
  readonly sourcesFile?: string;
}

export interface IngestStage {
  readonly registry: SourceRegistry;
  readonly hooksRouter: Router;
  readonly adminRouter: Router;
  /** Starts the ingest workers in this process. */
  startWorkers(concurrency: number): void;
  /** Re-enqueues inbox items whose jobs were lost (Redis restarted empty, a crash between commit and enqueue). */
  reconcile(options?: { staleMs?: number }): Promise<number>;
}

export async function createIngestStage(options: IngestStageOptions): Promise<IngestStage> {
  const { store, queues, clock, logger } = options;
  const registry = new SourceRegistry(store, clock);
  if (options.sourcesFile) {
    const n = await registry.loadFile(options.sourcesFile);
    logger.info({ sources: n }, 'sources loaded from file');
  }

  let validator: Promise<Validator> | undefined;
  const rulesCache = new Map<string, Promise<NormalizationRules>>();
  const clients = new Map<string, { client: SourceClient; definition: string }>();

  return {
    registry,
    hooksRouter: createHooksRouter({ registry, store, queues, clock, logger, bodyLimitBytes: options.bodyLimitBytes }),
    adminRouter: createIngestAdminRouter({ registry, store, queues, publicBaseUrl: options.publicBaseUrl }),

    startWorkers(concurrency) {
      validator ??= createValidator();
      const ready = validator;
      const rules = (sourceId: string): Promise<NormalizationRules> => {
        let r = rulesCache.get(sourceId);
        if (!r) {
          r = loadNormalizationRules(undefined, sourceId);
          rulesCache.set(sourceId, r);
        }
        return r;
      };
      const client = (source: Source): SourceClient => {
        // A changed definition (new credentials, new base URL) gets a new client.
        const definition = JSON.stringify(source);
        const hit = clients.get(source.id);
        if (hit && hit.definition === definition) return hit.client;
        const c = createSourceClient(source, { logger, clock });
        clients.set(source.id, { client: c, definition });
        return c;
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
          });
          await processor(job);
        },
        { concurrency },
      );
    },

    async reconcile(reconcileOptions = {}) {
      const staleMs = reconcileOptions.staleMs ?? RECONCILE_STALE_MS;
      const stale = await store.inbox.listUnfinished({ updatedBefore: new Date(clock.now().getTime() - staleMs), limit: RECONCILE_BATCH });
      if (stale.length === 0) return 0;
      // A fresh job id per pass: BullMQ ignores a re-add of an id it still holds (e.g. in the failed set).
      const pass = clock.now().getTime();
      await queues.enqueueBulk(
        'ingest',
        stale.map((s) => ({ data: { inboxId: s.id }, options: { jobId: `${s.id}.reconcile.${pass}` } })),
      );
      logger.warn({ count: stale.length }, 'reconciler re-enqueued inbox items with no progress');
      return stale.length;
    },
  };
}
