/**
 * Composition root: builds every component from the typed config in dependency order and tears them
 * down in reverse — drain HTTP, close workers, then queues, then the database pool, then the embedded
 * PostgreSQL.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { Router } from 'express';
import type { AddressInfo } from 'node:net';
import { describeConfig, type Config } from './config/index.js';
import { resolveAdminToken, resolveSecretsKey } from './config/secrets.js';
import { createSealer } from './platform/seal.js';
import { systemClock, type Clock } from './platform/clock.js';
import { createLogger, type Logger } from './platform/logger.js';
import { createMetrics, type Metrics } from './platform/metrics.js';
import { createQueueRegistry, integrityJobId, rerunJobId, type QueueBackendConfig, type QueueRegistry } from './queue/index.js';
import { createHmac } from 'node:crypto';
import { createDisclosureRecorder, drainAuditOutbox, type AuditRecorder } from './fhir-api/audit.js';
import { createAdaptiveDrain, createMaterialiserThread } from './fhir-api/audit-materialiser.js';
import { completeActor } from './fhir-api/access.js';
import { consentsFromSearch, createCdsHooksRouter } from './fhir-api/cds-hooks.js';
import { createVerifyGate } from './fhir-api/operations/verify-gate.js';
import { createFhirApiRouter, fhirApiCapability } from './fhir-api/routes.js';
import { createSmartStage, type SmartStage } from './fhir-api/smart/index.js';
import { createIngestStage, type IngestStage } from './ingest/index.js';
import { createCohortRouter } from './research/cohort.js';
import { createExportStage } from './research/export/index.js';
import { createDeidRouter } from './research/index.js';
import { openExportStore } from './store/export-store.js';
import { openClientStore } from './store/clients-store.js';
import { createEvmAnchor } from './integrity/anchors/evm.js';
import { createIntegrityStage, loadLogKey, versionCommitter, type IntegrityStage, type LedgerAnchor } from './integrity/index.js';
import { parseVerifierKey } from './integrity/note.js';
import { openIntegrityStore } from './store/integrity-store.js';
import { createApp } from './server/app.js';
import type { HealthCheck } from './server/health.js';
import { collectGarbage } from './platform/gc.js';
import { openDatabase, type Database } from './store/index.js';

export interface Roles {
  /** Serve HTTP. */
  readonly api: boolean;
  /** Run queue workers. */
  readonly workers: boolean;
}

/** Research endpoints need a valid access token (any client); consent and purpose checks apply to exports. */
function researchRouter(smart: SmartStage, ...inner: Router[]): Router {
  const r = Router();
  r.use(smart.authenticator.middleware);
  for (const i of inner) r.use(i);
  return r;
}

export interface RunningService {
  readonly smart: SmartStage;
  readonly recorder: AuditRecorder;
  readonly ingest: IngestStage;
  readonly integrity: IntegrityStage;
  /** Base URL the HTTP server listens on (when the api role runs). */
  readonly url: string | undefined;
  /** Base URL of the worker role's /metrics and /healthz (`METRICS_PORT`, without the api role). */
  readonly metricsUrl: string | undefined;
  readonly adminToken: string;
  readonly database: Database;
  readonly queues: QueueRegistry;
  readonly logger: Logger;
  readonly metrics: Metrics;
  /** Graceful shutdown; idempotent. */
  close(): Promise<void>;
}

export interface StartOptions {
  readonly config: Config;
  readonly roles: Roles;
  readonly logger?: Logger;
  readonly clock?: Clock;
  /** Overrides for tests: a queue namespace distinct from the configured one. */
  readonly queueNamespace?: string;
}

/**
 * `config` with the public base URL's port set to `port` when it says port 0 (the default base URL
 * under `PORT=0`, a random free port): a URL with port 0 reaches nothing, yet it is the issuer of our
 * tokens, their audience, the SMART endpoints and every Bundle link.
 */
export function withBoundPort(config: Config, port: number): Config {
  const url = new URL(config.http.publicBaseUrl);
  if (url.port !== '0') return config;
  url.port = String(port);
  return { ...config, http: { ...config.http, publicBaseUrl: url.toString().replace(/\/+$/, '') } };
}

/** Binds `server`; rejects when the port cannot be bound (in use, not permitted). */
function listen(server: Server, port: number, host: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/** What the HTTP port answers until the service is ready: 503 with Retry-After, as FHIR OperationOutcome JSON. */
function answerStarting(_req: IncomingMessage, res: ServerResponse): void {
  res.writeHead(503, { 'Content-Type': 'application/fhir+json; charset=utf-8', 'Retry-After': '5', 'Cache-Control': 'no-store' });
  res.end(JSON.stringify({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'transient', details: { text: 'fhir-anchor is starting' } }] }));
}

/**
 * Starts the service with the given roles. With the api role the HTTP port is bound first (it answers
 * 503 while the rest starts), so that the port actually bound, a random one under `PORT=0`, is in the
 * public base URL everything publishes ({@link withBoundPort}), and a port in use fails before the
 * database is started.
 */
export async function startService(options: StartOptions): Promise<RunningService> {
  if (!options.roles.api) return startWith(options, options.config, undefined);
  const server = createServer(answerStarting);
  await listen(server, options.config.http.port, options.config.http.host);
  const bound = server.address() as AddressInfo;
  try {
    return await startWith(options, withBoundPort(options.config, bound.port), server);
  } catch (err) {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    throw err;
  }
}

async function startWith(options: StartOptions, config: Config, boundServer: Server | undefined): Promise<RunningService> {
  const { roles } = options;
  const logger = options.logger ?? createLogger(config.logLevel);
  const clock = options.clock ?? systemClock;
  const metrics = createMetrics();
  // A process without the API (`fhir-anchor worker`) can still be scraped and health-checked. Bound
  // first, like the API's port, so that a port in use fails before anything else has started.
  let metricsServer: Server | undefined;
  let metricsUrl: string | undefined;
  if (!roles.api && config.metricsPort !== undefined) {
    metricsServer = await startMetricsServer(config.http.host, config.metricsPort, metrics);
    const a = metricsServer.address() as AddressInfo;
    metricsUrl = `http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`;
    logger.info({ url: metricsUrl }, 'worker metrics listening (/metrics, /healthz)');
  }
  logger.info({ config: describeConfig(config), roles }, 'starting fhir-anchor');

  const adminToken = await resolveAdminToken({ configured: config.adminToken, dataDir: config.dataDir });
  const secretsKey = await resolveSecretsKey({ configured: config.secretsKey, dataDir: config.dataDir, embedded: config.database.kind === 'embedded' });
  if (!secretsKey) logger.warn('SECRETS_KEY is not set: source secrets (hook tokens, HMAC secrets, callback credentials) are stored unencrypted');
  // Every version is committed to the integrity log in the transaction that stores it.
  const database = await openDatabase({ config, logger, clock, committer: versionCommitter(), applicationName: `fhir-anchor-${roles.api ? 'api' : ''}${roles.workers ? 'worker' : ''}` });

  let queues: QueueRegistry;
  try {
    const queueConfig: QueueBackendConfig =
      config.queue.backend === 'redis'
        ? { backend: 'redis', redis: config.queue.redis, prefix: options.queueNamespace ?? config.queue.prefix }
        : { backend: 'postgres', connectionString: database.connectionString, schema: options.queueNamespace ?? config.queue.schema };
    queues = await createQueueRegistry({ config: queueConfig, logger, metrics, retry: config.jobRetry });
  } catch (err) {
    await database.close();
    throw err;
  }

  let ingest: IngestStage;
  try {
    ingest = await createIngestStage({
      store: database.store,
      queues,
      clock,
      logger,
      publicBaseUrl: config.http.publicBaseUrl,
      bodyLimitBytes: config.http.bodyLimitBytes,
      linkIdentifierSystems: config.ingest.linkIdentifierSystems,
      catchUpInlineMax: config.ingest.catchUpInlineMax,
      heartbeatGapDelayMs: config.ingest.heartbeatGapDelayMs,
      ...(config.validationThreads !== undefined ? { validationThreads: config.validationThreads } : {}),
      ...(config.ingest.sourcesFile ? { sourcesFile: config.ingest.sourcesFile } : {}),
      ...(secretsKey ? { sealer: createSealer(secretsKey) } : {}),
    });
  } catch (err) {
    await queues.close();
    await database.close();
    throw err;
  }

  // Integrity: the Merkle log in PostgreSQL, signed checkpoints, anchors (built-in log; EVM if configured).
  const integrityStore = openIntegrityStore({ connectionString: database.connectionString, schema: config.databaseSchema, max: 5 });
  const anchors: LedgerAnchor[] = [];
  let integrity: IntegrityStage;
  try {
    const ic = config.integrity;
    const keyOptions = ic.signerKey ? { signerKey: ic.signerKey } : { keyFile: ic.keyFile };
    // Loaded here first so the EVM anchor can refuse checkpoints this log did not sign.
    const key = await loadLogKey({ origin: ic.origin, ...keyOptions });
    if (ic.evm) {
      anchors.push(
        createEvmAnchor({
          name: 'evm',
          rpcUrl: ic.evm.rpcUrl,
          privateKey: ic.evm.privateKey,
          confirmations: ic.evm.confirmations,
          logger,
          verifiers: [parseVerifierKey(key.verifierKey)],
          ...(ic.evm.contractAddress ? { contractAddress: ic.evm.contractAddress } : {}),
          ...(ic.evm.chainId !== undefined ? { chainId: ic.evm.chainId } : {}),
        }),
      );
    }
    integrity = await createIntegrityStage({
      options: { origin: ic.origin, ...keyOptions, batchLeaves: ic.batchLeaves, batchIntervalMs: ic.batchIntervalMs },
      store: integrityStore,
      resources: database.store.resources,
      clock,
      logger,
      registry: metrics.registry,
      anchors,
    });
  } catch (err) {
    await integrityStore.close();
    await queues.close();
    await database.close();
    throw err;
  }

  // SMART on FHIR: registered clients, the token endpoint, access-token verification.
  const clientStore = openClientStore({ connectionString: database.connectionString, schema: config.databaseSchema, clock });
  let smart: SmartStage;
  try {
    smart = await createSmartStage({
      settings: {
        publicBaseUrl: config.http.publicBaseUrl,
        accessTokenLifetimeSeconds: config.smart.accessTokenLifetimeSeconds,
        clockToleranceSeconds: config.smart.clockToleranceSeconds,
        externalIssuers: config.smart.externalIssuers,
      },
      key: config.smart.tokenKey ? { jwk: config.smart.tokenKey } : { keyFile: config.smart.keyFile },
      clients: clientStore,
      clock,
      logger,
      completeActor: (actor) => completeActor(database.store, actor),
    });
  } catch (err) {
    await clientStore.close();
    await integrityStore.close();
    await queues.close();
    await database.close();
    throw err;
  }
  // AuditEvents are built and committed in the event loop while few requests are audited, on a worker
  // thread once the API is busy (see createAdaptiveDrain).
  const auditThread = createAdaptiveDrain({
    inProcess: (wait) => drainAuditOutbox(database.store, wait),
    thread: createMaterialiserThread({ connectionString: database.connectionString, schema: config.databaseSchema, logger }),
  });
  const recorder = createDisclosureRecorder({ store: database.store, queues, clock, logger, drain: auditThread });
  const fhirDeps = {
    store: database.store,
    recorder,
    consentDefault: config.consentDefault,
    clock,
    logger,
    baseUrl: `${config.http.publicBaseUrl}/fhir/R4`,
    queues,
    authenticate: smart.authenticator.middleware,
    // Paging cursors must verify on every API process: derive their key from the shared admin token.
    cursorKey: createHmac('sha256', adminToken).update('fhir-anchor paging cursor v1').digest(),
  };
  const fhirApi = createFhirApiRouter(fhirDeps);
  const cdsHooks = createCdsHooksRouter({
    store: database.store,
    consentsForPatient: consentsFromSearch(database.store.search),
    defaultDecision: config.consentDefault,
    clock,
    authenticate: smart.authenticator.authenticateRequest,
    localBases: [smart.options.fhirBaseUrl],
    sensitivity: ingest.sensitivity,
  });
  const researchOn = config.research.keys.cryptoHashKey !== undefined;
  // Bulk Data $export (research exports need the de-identification keys; treatment exports do not).
  const exportStore = openExportStore({ connectionString: database.connectionString, schema: config.databaseSchema, clock });
  const exportStage = createExportStage({
    store: database.store,
    exports: exportStore,
    queues,
    recorder,
    consentDefault: config.consentDefault,
    researchConsentDefault: config.research.consentDefault,
    deidKeys: config.research.keys,
    clock,
    logger,
    baseUrl: `${config.http.publicBaseUrl}/fhir/R4`,
    exportDir: config.research.exportDir,
    expiryMs: config.research.exportExpiryMs,
    authenticate: smart.authenticator.middleware,
  });
  if (!researchOn) logger.warn('research access is off: set DEID_CRYPTO_HASH_KEY to enable de-identification and research exports');

  let reconcileTimer: NodeJS.Timeout | undefined;
  let auditTimer: NodeJS.Timeout | undefined;
  let subscriptionTimer: NodeJS.Timeout | undefined;
  let exportSweepTimer: NodeJS.Timeout | undefined;
  if (roles.workers) {
    ingest.startWorkers(config.workerConcurrency);
    await integrity.start();
    queues.work(
      'integrity',
      async (job) => {
        await integrity.processJob(job.data);
      },
      { concurrency: Math.max(4, config.workerConcurrency) },
    );
    queues.work('export', (job) => exportStage.runner.processJob(job), { concurrency: 1 });
    exportSweepTimer = setInterval(() => {
      exportStage.runner.sweep().catch((err: unknown) => logger.warn({ err: err instanceof Error ? err.message : String(err) }, 'export expiry sweep failed'));
    }, 10 * 60_000);
    exportSweepTimer.unref();
    if (config.ingest.subscriptionCheckIntervalMs > 0) {
      const manage = (): void => {
        ingest.manageSubscriptions().catch((err: unknown) => logger.warn({ err: err instanceof Error ? err.message : String(err) }, 'subscription check failed'));
      };
      setTimeout(manage, 1000).unref();
      subscriptionTimer = setInterval(manage, config.ingest.subscriptionCheckIntervalMs);
      subscriptionTimer.unref();
    }
    if (config.integrity.auditIntervalMs > 0) {
      auditTimer = setInterval(() => {
        integrity.runAudit().catch((err: unknown) => logger.error({ err: err instanceof Error ? err.message : String(err) }, 'integrity audit pass failed'));
      }, config.integrity.auditIntervalMs);
      auditTimer.unref();
    }
    if (config.ingest.reconcileIntervalMs > 0) {
      const staleMs = config.ingest.reconcileStaleMs;
      reconcileTimer = setInterval(() => {
        ingest.reconcile({ staleMs }).catch((err: unknown) => logger.warn({ err: err instanceof Error ? err.message : String(err) }, 'reconcile pass failed'));
        // Versions stored but never committed (their integrity job was lost): enqueue them again.
        integrityStore
          .uncommittedVersions(new Date(clock.now().getTime() - staleMs), 5000)
          .then(async (lost) => {
            if (lost.length === 0) return;
            const added = await queues.rerun(
              'integrity',
              lost.map((v) => ({ data: v, jobId: rerunJobId(integrityJobId(v)), liveIds: [integrityJobId(v)] })),
            );
            if (added > 0) logger.warn({ count: added, uncommitted: lost.length }, 'reconciler re-enqueued versions with no commitment');
          })
          .catch((err: unknown) => logger.warn({ err: err instanceof Error ? err.message : String(err) }, 'integrity reconcile pass failed'));
        // Exports accepted or in progress whose job was lost: run again, resuming from their cursor.
        exportStage.runner.reconcile(queues, staleMs).catch((err: unknown) => logger.warn({ err: err instanceof Error ? err.message : String(err) }, 'export reconcile pass failed'));
      }, config.ingest.reconcileIntervalMs);
      reconcileTimer.unref();
    }
  }

  const healthChecks: HealthCheck[] = [
    { name: 'database', check: () => database.store.ping() },
    { name: 'queue', check: () => queues.ping() },
    ...integrity.healthChecks,
    ...anchors.map((a) => ({ name: `ledger:${a.name}`, check: () => a.ping() })),
  ];

  let server: Server | undefined;
  let url: string | undefined;
  if (roles.api) {
    const app = createApp({
      config,
      logger,
      metrics,
      clock,
      store: database.store,
      queues,
      adminToken,
      healthChecks,
      stages: [
        { path: '/auth', router: smart.tokenRouter },
        { path: '/', router: smart.wellKnownRouter },
        { path: '/fhir/R4', router: smart.wellKnownRouter },
        ...(researchOn
          ? [
              {
                path: '/research',
                router: researchRouter(
                  smart,
                  createDeidRouter({ config: { keys: config.research.keys, clock }, bodyLimitBytes: config.http.bodyLimitBytes }),
                  createCohortRouter({ store: database.store, recorder, researchConsentDefault: config.research.consentDefault, clock, baseUrl: `${config.http.publicBaseUrl}/fhir/R4` }),
                ),
              },
            ]
          : []),
        { path: '/hooks', router: ingest.hooksRouter },
        { path: '/', router: cdsHooks },
        // Before the generic /{type}/{id} routes, which would otherwise catch /Patient/$export.
        { path: '/fhir/R4', router: exportStage.router, capability: exportStage.capability },
        { path: '/ledger', router: integrity.ledgerRouter },
        // $verify: consent-gated like a read (the salt is as sensitive as the record), then proven.
        { path: '/fhir/R4', router: createVerifyGate(fhirDeps) },
        { path: '/fhir/R4', router: integrity.verifyRouter, capability: integrity.capability },
        { path: '/fhir/R4', router: fhirApi, capability: fhirApiCapability },
      ],
      adminRoutes: [
        { path: '/', router: ingest.adminRouter },
        { path: '/', router: smart.clientsAdminRouter },
      ],
    });
    server = boundServer!;
    server.off('request', answerStarting);
    server.on('request', app);
    // Slow-loris protection and bounded keep-alive; requests get a generous but finite time.
    server.headersTimeout = 30_000;
    server.requestTimeout = 120_000;
    server.keepAliveTimeout = 5_000;
    const address = server.address() as AddressInfo;
    url = `http://${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}`;
    logger.info({ url, publicBaseUrl: config.http.publicBaseUrl }, 'HTTP server listening');
  }
  // Start-up (migrations, profiles, rules, policies) leaves garbage V8 would keep for a long time.
  collectGarbage();

  // Search parameters a migration added are filled in for the resources already stored, in the
  // background (minutes on a large store; searches by a new parameter miss older resources until then).
  const reindexAbort = new AbortController();
  const reindexing = database.store.search
    .reindexPending({ signal: reindexAbort.signal })
    .then((done) => {
      if (done.types.length > 0) logger.info({ types: done.types, resources: done.resources }, 'search index rebuilt for new search parameters');
    })
    .catch((err: unknown) => logger.error({ err: err instanceof Error ? err.message : String(err) }, 'rebuilding the search index for new search parameters failed; the next start retries'));

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      logger.info('shutting down');
      reindexAbort.abort();
      if (reconcileTimer) clearInterval(reconcileTimer);
      if (auditTimer) clearInterval(auditTimer);
      if (subscriptionTimer) clearInterval(subscriptionTimer);
      if (exportSweepTimer) clearInterval(exportSweepTimer);
      if (server) {
        const s = server;
        await new Promise<void>((resolve) => {
          const cut = setTimeout(() => {
            logger.warn({ timeoutMs: config.shutdownTimeoutMs }, 'HTTP drain timed out; closing remaining connections');
            s.closeAllConnections();
          }, config.shutdownTimeoutMs);
          cut.unref();
          s.close(() => {
            clearTimeout(cut);
            resolve();
          });
          s.closeIdleConnections();
        });
        logger.info('HTTP drained');
      }
      if (metricsServer) {
        const m = metricsServer;
        await new Promise<void>((resolve) => m.close(() => resolve()));
        m.closeAllConnections();
      }
      await queues.close();
      await ingest.close();
      // After the HTTP drain and the workers (export jobs record too): what they recorded becomes AuditEvents now.
      await recorder.close();
      await auditThread.close();
      logger.info('workers and queues closed');
      await integrity.stop().catch((err: unknown) => logger.error({ err: err instanceof Error ? err.message : String(err) }, 'integrity flush at shutdown failed'));
      await Promise.allSettled(anchors.map((a) => a.close()));
      await integrityStore.close();
      await clientStore.close();
      await exportStore.close();
      await reindexing; // stops after its current batch
      await database.close();
      logger.info('database closed; bye');
    })();
    return closing;
  };

  return { url, metricsUrl, adminToken, database, queues, ingest, integrity, smart, recorder, logger, metrics, close };
}

/**
 * The worker role's only HTTP surface: GET /metrics (this process's registry: job durations, process
 * metrics) and GET /healthz. Nothing else, no data: 404 for any other path, 405 for other methods.
 */
async function startMetricsServer(host: string, port: number, metrics: Metrics): Promise<Server> {
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/metrics' && path !== '/healthz') {
      res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { Allow: 'GET, HEAD', 'Content-Type': 'text/plain' }).end('method not allowed\n');
      return;
    }
    if (path === '/healthz') {
      res.writeHead(200, { 'Content-Type': 'application/json' }).end('{"status":"ok"}');
      return;
    }
    metrics.registry.metrics().then(
      (text) => res.writeHead(200, { 'Content-Type': metrics.registry.contentType }).end(text),
      () => res.writeHead(500, { 'Content-Type': 'text/plain' }).end('metrics unavailable\n'),
    );
  });
  await listen(server, port, host);
  return server;
}

/**
 * Runs until SIGINT/SIGTERM, then shuts down gracefully. HTTP connections still open after
 * `shutdownTimeoutMs` are cut and shutdown continues (the embedded PostgreSQL is always stopped); a
 * shutdown that hangs beyond that plus PostgreSQL's own stop time exits 1.
 */
export function handleSignals(service: RunningService, config: Config): void {
  let signalled = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (signalled) {
      service.logger.warn({ signal }, 'second signal: shutdown already in progress');
      return;
    }
    signalled = true;
    service.logger.info({ signal }, 'signal received');
    const timer = setTimeout(() => {
      service.logger.error({ timeoutMs: config.shutdownTimeoutMs }, 'graceful shutdown timed out; exiting');
      process.exit(1);
    }, config.shutdownTimeoutMs + 35_000);
    timer.unref();
    service.close().then(
      () => process.exit(0),
      (err: unknown) => {
        service.logger.error({ err: err instanceof Error ? err.message : String(err) }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
}
