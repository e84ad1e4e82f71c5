/**
 * The queue layer: the only module that imports `bullmq` or `ioredis`. It builds BullMQ queues and
 * workers for either backend from config — Redis (the fast path: standalone, Sentinel or Cluster) or PostgreSQL (BullMQ 6's
 * PostgreSQL backend; the embedded default) — and keeps a registry that closes workers before queues.
 */
import { randomUUID } from 'node:crypto';
import { Queue, UnrecoverableError, Worker, createPostgresBackend, runMigrations, type Job, type JobsOptions, type WorkerOptions } from 'bullmq';
import { Cluster, Redis, type ClusterNode, type RedisOptions } from 'ioredis';
import pg from 'pg';
import type { RedisConnection } from '../config/index.js';
import type { Logger } from '../platform/logger.js';
import type { Metrics } from '../platform/metrics.js';
import { QUEUE_NAMES, assertIdsOnly, type JobData, type QueueName } from './jobs.js';

export * from './jobs.js';

export type { RedisConnection } from '../config/index.js';

export type QueueBackendConfig =
  | { readonly backend: 'redis'; readonly redis: RedisConnection; readonly prefix: string }
  | { readonly backend: 'postgres'; readonly connectionString: string; readonly schema: string };

/**
 * An ioredis client for `redis`: a plain client for a URL, a Sentinel-aware one (asks the sentinels
 * for the current primary and follows failovers), or a Cluster client (discovers the nodes, follows
 * slot moves). `maxRetriesPerRequest` null makes commands wait through reconnects (BullMQ requires
 * it for workers); a number makes them fail after that many reconnect attempts.
 */
export function createRedisClient(redis: RedisConnection, options: { maxRetriesPerRequest: number | null }): Redis | Cluster {
  if (redis.topology === 'standalone') return new Redis(redis.url, options);
  const auth: RedisOptions = {
    ...(redis.username !== undefined ? { username: redis.username } : {}),
    ...(redis.password !== undefined ? { password: redis.password } : {}),
    ...(redis.tls ? { tls: {} } : {}),
  };
  if (redis.topology === 'sentinel') {
    return new Redis({
      ...options,
      ...auth,
      sentinels: redis.sentinels.map((n) => ({ host: n.host, port: n.port })),
      name: redis.name,
      db: redis.db,
      ...(redis.sentinelPassword !== undefined ? { sentinelPassword: redis.sentinelPassword } : {}),
      ...(redis.tls ? { enableTLSForSentinelMode: true, sentinelTLS: {} } : {}),
    });
  }
  const nodes: ClusterNode[] = redis.nodes.map((n) => ({ host: n.host, port: n.port }));
  // The cluster client's own per-command retry setting and the one of its node connections agree.
  return new Cluster(nodes, { ...options, redisOptions: { ...options, ...auth } });
}

/**
 * A failure that retrying cannot fix (bad signature, invalid content): the job fails at once, without
 * retries, and the processor is expected to have recorded a dead letter.
 */
export class TerminalJobError extends Error {
  override name = 'TerminalJobError';
}

/** What a processor sees of a job: its id, typed data and attempt count — nothing backend-specific. */
export interface JobContext<Q extends QueueName> {
  readonly id: string;
  readonly queue: Q;
  readonly data: JobData<Q>;
  /** Attempts already made before this one (0 on the first run). */
  readonly attemptsMade: number;
  /** Total attempts allowed. */
  readonly maxAttempts: number;
}

export type Processor<Q extends QueueName> = (job: JobContext<Q>) => Promise<void>;

export interface EnqueueOptions {
  /** Deduplicates: a job with the same id that still exists is not added again. */
  readonly jobId?: string;
  readonly delayMs?: number;
  readonly attempts?: number;
  readonly priority?: number;
}

export interface WorkerSettings {
  readonly concurrency: number;
}

export type JobCounts = Readonly<Record<'waiting' | 'active' | 'delayed' | 'failed' | 'completed' | 'prioritized', number>>;

export interface QueueRegistry {
  readonly backend: 'redis' | 'postgres';
  enqueue<Q extends QueueName>(queue: Q, data: JobData<Q>, options?: EnqueueOptions): Promise<string>;
  enqueueBulk<Q extends QueueName>(queue: Q, jobs: ReadonlyArray<{ data: JobData<Q>; options?: EnqueueOptions }>): Promise<void>;
  /**
   * Runs jobs again whose earlier runs may have been lost (the reconcilers, an operator's replay). A job
   * is added under its `jobId` unless a job under that id or one of `liveIds` is still waiting, delayed
   * or active (it will run anyway); a finished job under `jobId` is replaced. So however often a
   * reconciler passes, and however many processes run one, each item has at most one re-run queued.
   * Returns the number of jobs added.
   */
  rerun<Q extends QueueName>(queue: Q, jobs: ReadonlyArray<{ data: JobData<Q>; jobId: string; liveIds?: readonly string[] }>): Promise<number>;
  /** Starts a worker for `queue` in this process. */
  work<Q extends QueueName>(queue: Q, processor: Processor<Q>, settings: WorkerSettings): void;
  counts(queue: QueueName): Promise<JobCounts>;
  /** Throws when the backend does not answer. */
  ping(): Promise<void>;
  /** The BullMQ queues, for the bull-board dashboard only. */
  dashboardQueues(): Queue[];
  /** Closes workers (letting active jobs finish), then queues, then connections. Idempotent. */
  close(): Promise<void>;
}

/** Retry policy for transient failures: 8 attempts, exponential from 1 s (≈ 4 minutes in all). */
const DEFAULT_JOB_OPTIONS: JobsOptions = {
  attempts: 8,
  backoff: { type: 'exponential', delay: 1000 },
  // Completed jobs are not the record (the inbox is): keep a few for the dashboard, for a day at most.
  removeOnComplete: { count: 1000, age: 24 * 3600 },
  // Failed jobs are kept a week for inspection; dead letters live in PostgreSQL regardless.
  removeOnFail: { age: 7 * 24 * 3600 },
};

/** Job states from which a job will not run again by itself. */
const FINISHED_OR_ABSENT: ReadonlySet<string> = new Set(['completed', 'failed', 'unknown']);
const RERUN_CHUNK = 50;

/** Applies BullMQ's PostgreSQL schema (idempotent, concurrency-safe). */
export async function migrateQueueSchema(connectionString: string, schema: string): Promise<void> {
  const client = new pg.Client({ connectionString });
  await client.connect();
  try {
    await runMigrations(client, schema);
  } finally {
    await client.end();
  }
}

export async function createQueueRegistry(options: {
  readonly config: QueueBackendConfig;
  readonly logger: Logger;
  readonly metrics?: Metrics;
  /** Retry policy for transient failures (defaults: 8 attempts, exponential from 1000 ms). */
  readonly retry?: { readonly attempts: number; readonly backoffMs: number };
}): Promise<QueueRegistry> {
  const { config, logger, metrics } = options;
  const defaultJobOptions: JobsOptions = options.retry
    ? { ...DEFAULT_JOB_OPTIONS, attempts: options.retry.attempts, backoff: { type: 'exponential', delay: options.retry.backoffMs } }
    : DEFAULT_JOB_OPTIONS;
  const queues = new Map<QueueName, Queue>();
  const workers: Worker[] = [];
  const redisConnections: Array<Redis | Cluster> = [];
  let closing: Promise<void> | undefined;

  if (config.backend === 'postgres') {
    await migrateQueueSchema(config.connectionString, config.schema);
  }

  const newRedis = (role: 'queue' | 'worker'): Redis | Cluster => {
    if (config.backend !== 'redis') throw new Error('not a redis backend');
    // Workers must retry forever (BullMQ requirement); producers fail fast so an HTTP request never hangs.
    const conn = createRedisClient(config.redis, { maxRetriesPerRequest: role === 'worker' ? null : 2 });
    conn.on('error', (err) => logger.warn({ err: err.message, role }, 'redis connection error'));
    redisConnections.push(conn);
    return conn;
  };

  let producerConnection: Redis | Cluster | undefined;
  const queue = (name: QueueName): Queue => {
    let q = queues.get(name);
    if (!q) {
      if (config.backend === 'redis') {
        producerConnection ??= newRedis('queue');
        q = new Queue(name, { connection: producerConnection, prefix: config.prefix, defaultJobOptions });
      } else {
        q = new Queue(
          name,
          { connection: { connectionString: config.connectionString, schema: config.schema, max: 4 }, defaultJobOptions },
          createPostgresBackend,
        ) as unknown as Queue;
      }
      q.on('error', (err) => logger.warn({ err: err.message, queue: name }, 'queue error'));
      queues.set(name, q);
    }
    return q;
  };

  const toJobsOptions = (o: EnqueueOptions | undefined): JobsOptions => ({
    ...(o?.jobId !== undefined ? { jobId: o.jobId } : {}),
    ...(o?.delayMs !== undefined ? { delay: o.delayMs } : {}),
    ...(o?.attempts !== undefined ? { attempts: o.attempts } : {}),
    ...(o?.priority !== undefined ? { priority: o.priority } : {}),
  });

  const registry: QueueRegistry = {
    backend: config.backend,

    async enqueue(name, data, o) {
      assertIdsOnly(data);
      const job = await queue(name).add(name, data, toJobsOptions(o));
      return job.id ?? '';
    },

    async enqueueBulk(name, jobs) {
      for (const j of jobs) assertIdsOnly(j.data);
      await queue(name).addBulk(jobs.map((j) => ({ name, data: j.data, opts: toJobsOptions(j.options) })));
    },

    async rerun(name, jobs) {
      for (const j of jobs) assertIdsOnly(j.data);
      const q = queue(name);
      let added = 0;
      // A bounded number of jobs in flight: each costs a few round trips.
      for (let i = 0; i < jobs.length; i += RERUN_CHUNK) {
        const results = await Promise.all(
          jobs.slice(i, i + RERUN_CHUNK).map(async (j) => {
            const states = await Promise.all([j.jobId, ...(j.liveIds ?? [])].map((id) => q.getJobState(id)));
            if (states.some((st) => !FINISHED_OR_ABSENT.has(st))) return 0;
            if (states[0] !== 'unknown') await q.remove(j.jobId);
            await q.add(name, j.data, { jobId: j.jobId });
            return 1;
          }),
        );
        added += results.reduce<number>((a, b) => a + b, 0);
      }
      return added;
    },

    work(name, processor, settings) {
      if (closing) throw new Error('queue registry is closing');
      const run = async (job: Job): Promise<void> => {
        const started = process.hrtime.bigint();
        let outcome = 'completed';
        try {
          await processor({
            id: job.id ?? '',
            queue: name,
            data: job.data as JobData<typeof name>,
            attemptsMade: job.attemptsMade,
            maxAttempts: job.opts.attempts ?? 1,
          });
        } catch (err) {
          outcome = err instanceof TerminalJobError ? 'terminal' : 'retry';
          if (err instanceof TerminalJobError) throw new UnrecoverableError(err.message);
          throw err;
        } finally {
          metrics?.jobDuration.observe({ queue: name, outcome }, Number(process.hrtime.bigint() - started) / 1e9);
        }
      };
      const base: Omit<WorkerOptions, 'connection'> = { concurrency: settings.concurrency, autorun: true };
      const worker =
        config.backend === 'redis'
          ? new Worker(name, run, { ...base, connection: newRedis('worker'), prefix: config.prefix })
          : (new Worker(
              name,
              run,
              { ...base, connection: { connectionString: config.connectionString, schema: config.schema, max: Math.max(4, settings.concurrency + 2) } },
              createPostgresBackend,
            ) as unknown as Worker);
      worker.on('error', (err) => logger.warn({ err: err.message, queue: name }, 'worker error'));
      worker.on('failed', (job, err) =>
        logger.warn({ queue: name, jobId: job?.id, attemptsMade: job?.attemptsMade, err: err.message }, 'job attempt failed'),
      );
      workers.push(worker);
    },

    async counts(name) {
      const c = await queue(name).getJobCounts('waiting', 'active', 'delayed', 'failed', 'completed', 'prioritized');
      return {
        waiting: c.waiting ?? 0,
        active: c.active ?? 0,
        delayed: c.delayed ?? 0,
        failed: c.failed ?? 0,
        completed: c.completed ?? 0,
        prioritized: c.prioritized ?? 0,
      };
    },

    async ping() {
      if (config.backend === 'redis') {
        producerConnection ??= newRedis('queue');
        const pong = await producerConnection.ping();
        if (pong !== 'PONG') throw new Error(`unexpected redis ping reply ${pong}`);
      } else {
        await queue('ingest').getJobCounts('waiting');
      }
    },

    dashboardQueues() {
      for (const name of QUEUE_NAMES) queue(name);
      return [...queues.values()];
    },

    close() {
      closing ??= (async () => {
        await Promise.allSettled(workers.map((w) => w.close()));
        await Promise.allSettled([...queues.values()].map((q) => q.close()));
        await Promise.allSettled(redisConnections.map((c) => c.quit().catch(() => c.disconnect())));
      })();
      return closing;
    },
  };
  return registry;
}

/** A fresh namespace (Redis prefix or PostgreSQL schema) so tests never touch each other's jobs. */
export function randomQueueNamespace(): string {
  return `t_${randomUUID().replace(/-/g, '').slice(0, 16)}`;
}
