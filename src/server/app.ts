/**
 * The Express 5 application: health, metrics, API docs, the FHIR endpoint and the admin surface.
 * Stages contribute routers and CapabilityStatement entries; errors leave through one handler.
 */
import express, { Router, type Express, type RequestHandler } from 'express';
import type { Config } from '../config/index.js';
import type { components } from '../generated/openapi.js';
import { buildCapabilityStatement, type CapabilityContribution } from '../fhir-api/capability.js';
import type { Clock } from '../platform/clock.js';
import { httpError } from '../platform/errors.js';
import { jsonBodyParser } from '../platform/json-body.js';
import type { Logger } from '../platform/logger.js';
import type { Metrics } from '../platform/metrics.js';
import { createDashboardRouter } from '../queue/dashboard.js';
import { QUEUE_NAMES, type QueueRegistry } from '../queue/index.js';
import type { Store } from '../store/index.js';
import { VERSION } from '../version.js';
import { requireAdmin } from './admin-auth.js';
import { createDocsRouter } from './docs.js';
import { fhirFormat } from './fhir-format.js';
import { FHIR_JSON, errorHandler, notFoundHandler, sendOutcome } from './errors.js';
import { checkReadiness, type HealthCheck } from './health.js';

/** A router a stage mounts under a path, with what it adds to the CapabilityStatement. */
export interface StageRoutes {
  readonly path: string;
  readonly router: Router;
  readonly capability?: CapabilityContribution;
}

export interface AppDeps {
  readonly config: Pick<Config, 'http'>;
  readonly logger: Logger;
  readonly metrics: Metrics;
  readonly clock: Clock;
  readonly store: Store;
  readonly queues: QueueRegistry;
  readonly adminToken: string;
  readonly healthChecks: readonly HealthCheck[];
  /** Routers contributed by stages (mounted before the 404 handler). */
  readonly stages?: readonly StageRoutes[];
  /** Routers mounted under /admin, behind the admin token. */
  readonly adminRoutes?: readonly { path: string; router: Router }[];
}

/**
 * JSON body parser for FHIR and admin routes: JSON and FHIR JSON, bounded, and refusing what could not
 * be stored as sent ({@link jsonBodyParser}).
 */
export function jsonBody(limitBytes: number): RequestHandler[] {
  return jsonBodyParser(limitBytes, ['application/json', 'application/fhir+json', 'application/*+json']);
}

function metricsMiddleware(metrics: Metrics): RequestHandler {
  return (req, res, next) => {
    const start = process.hrtime.bigint();
    res.on('finish', () => {
      // Label by the matched route pattern, never the raw path (ids must not become label values).
      const route = req.route ? `${req.baseUrl}${String(req.route.path)}` : 'unmatched';
      metrics.httpDuration.observe(
        { method: req.method, route, status: String(res.statusCode) },
        Number(process.hrtime.bigint() - start) / 1e9,
      );
    });
    next();
  };
}

/** Sets the ingest gauges from the database (label sets that disappeared are dropped). */
async function refreshIngestGauges(store: Store, metrics: Metrics, clock: Clock): Promise<void> {
  const [letters, subscriptions] = await Promise.all([store.deadLetters.countsByReason(), store.subscriptions.summary()]);
  metrics.deadLetters.reset();
  for (const d of letters) {
    metrics.deadLetters.set({ source: d.sourceId, reason: d.reason, state: 'open' }, d.open);
    metrics.deadLetters.set({ source: d.sourceId, reason: d.reason, state: 'replayed' }, d.total - d.open);
  }
  metrics.subscriptionGaps.reset();
  metrics.subscriptionRestarts.reset();
  metrics.heartbeatAge.reset();
  const now = clock.now().getTime();
  for (const s of subscriptions) {
    metrics.subscriptionGaps.set({ source: s.sourceId }, s.gaps);
    metrics.subscriptionRestarts.set({ source: s.sourceId }, s.restarts);
    if (s.lastHeartbeat) metrics.heartbeatAge.set({ source: s.sourceId }, Math.max(0, (now - s.lastHeartbeat.getTime()) / 1000));
  }
}

export function createApp(deps: AppDeps): Express {
  const { config, logger, metrics, clock, store, queues } = deps;
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  app.set('query parser', 'extended');
  app.use(metricsMiddleware(metrics));
  app.use((req, res, next) => {
    const start = process.hrtime.bigint();
    res.on('finish', () => {
      // Method, path pattern, status and time only: never bodies, query strings or credentials.
      logger.debug(
        { method: req.method, route: req.route ? `${req.baseUrl}${String(req.route.path)}` : undefined, status: res.statusCode, ms: Number(process.hrtime.bigint() - start) / 1e6 },
        'request',
      );
    });
    next();
  });

  // PostgreSQL text cannot hold NUL (a query with one fails): a URL carrying one is refused before any route.
  app.use((req, _res, next) => {
    next(req.originalUrl.includes('%00') || req.originalUrl.includes('\u0000') ? httpError(400, 'invalid', 'The URL must not contain NUL (%00)') : undefined);
  });

  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });

  app.get('/readyz', async (_req, res) => {
    const r = await checkReadiness(deps.healthChecks, metrics);
    if (r.ready) {
      res.status(200).type(FHIR_JSON).send(JSON.stringify(r.outcome));
    } else {
      sendOutcome(res, 503, r.outcome, { 'Retry-After': '5' });
    }
  });

  app.get('/metrics', async (_req, res) => {
    await Promise.all(
      QUEUE_NAMES.map(async (name) => {
        try {
          const counts = await queues.counts(name);
          for (const [state, n] of Object.entries(counts)) metrics.queueDepth.set({ queue: name, state }, n);
        } catch {
          // A down queue backend shows up in /readyz; the scrape still returns the other metrics.
        }
      }),
    );
    await refreshIngestGauges(store, metrics, clock).catch(() => {
      // A down database shows up in /readyz; the scrape still returns the other metrics.
    });
    res.type(metrics.registry.contentType).send(await metrics.registry.metrics());
  });

  app.use(createDocsRouter());

  // FHIR endpoint.
  const fhir = Router();
  fhir.use(fhirFormat);
  fhir.use(jsonBody(config.http.bodyLimitBytes));
  const startedAt = clock.now();
  fhir.get('/metadata', (_req, res) => {
    const cs = buildCapabilityStatement({
      baseUrl: config.http.publicBaseUrl,
      version: VERSION,
      date: startedAt,
      contributions: (deps.stages ?? []).flatMap((s) => (s.capability ? [s.capability] : [])),
    });
    res.type(FHIR_JSON).send(JSON.stringify(cs));
  });
  app.use('/fhir/R4', fhir);

  // Admin surface.
  const admin = Router();
  admin.use(requireAdmin(deps.adminToken));
  // Our parser runs first so malformed or oversized bodies get an OperationOutcome here too.
  admin.use(jsonBody(config.http.bodyLimitBytes));
  admin.use('/queues', createDashboardRouter(queues, '/admin/queues'));
  admin.get('/stats', async (_req, res) => {
    const [resources, inbox, deadLetters, queueCounts, searchReindexPending] = await Promise.all([
      store.resources.countsByType(),
      store.inbox.countsByStageAndState(),
      store.deadLetters.countsByReason(),
      Promise.all(QUEUE_NAMES.map(async (q) => ({ queue: q, ...(await queues.counts(q)) }))),
      store.search.reindexPendingTypes(),
    ]);
    const body: components['schemas']['AdminStats'] = { resources, inbox, deadLetters, queues: queueCounts, searchReindexPending };
    res.json(body);
  });
  for (const r of deps.adminRoutes ?? []) admin.use(r.path, r.router);
  app.use('/admin', admin);

  for (const stage of deps.stages ?? []) app.use(stage.path, stage.router);

  app.use(notFoundHandler);
  app.use(errorHandler(logger));
  return app;
}
