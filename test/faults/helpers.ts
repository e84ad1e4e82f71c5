/**
 * Fault-injection rig: a private PostgreSQL (embedded binaries, temp data dir, fixed port so it can be
 * stopped and restarted), a private `redis-server` (no persistence, so a restart comes back empty),
 * real `fhir-anchor api` / `worker` processes started through the CLI, a Synthea workload, and the
 * exactly-once invariants checked with SQL and the log's own proofs.
 *
 * Nothing here touches the shared PostgreSQL (5432) or Redis (6379). Every child process, server and
 * temp directory is registered and removed by {@link FaultRig.cleanup}, which tests call in afterAll.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { openCheckpoint } from '../../src/integrity/checkpoint.js';
import { leafHash, nodeHash, verifyConsistency } from '../../src/integrity/merkle.js';
import { generateEd25519Key, parseVerifierKey } from '../../src/integrity/note.js';
import { anchorId } from '../../src/normalize/index.js';
import { startEmbeddedPostgres, type RunningPostgres } from '../../src/store/embedded-postgres.js';
import { spawnCli } from '../helpers/cli.js';
import { TEST_SECRETS_KEY, TEST_SMART_KEY, silentLogger } from '../helpers/env.js';

export const ADMIN_TOKEN = 'faults-admin-token-0123456789abcdef0123456789';
export const HOOK_TOKEN = 'faults-hook-token-0123456789abcdef';
export const LOG_ORIGIN = 'fhir-anchor.faults.test/log';

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A free TCP port on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** Polls `probe` until it returns a value other than undefined/false, or throws after `timeoutMs`. */
export async function waitFor<T>(what: string, probe: () => Promise<T | undefined | false>, timeoutMs: number, everyMs = 250): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? ` (last error: ${(lastErr as Error).message})` : ''}`);
    await sleep(everyMs);
  }
}

// ---------------------------------------------------------------------------------------------------
// Child processes

/** One pino log record of a child process. */
export type LogRecord = Record<string, unknown> & { msg?: string; pid?: number; level?: number };

/** A child process whose stdout (pino JSON lines) and stderr are kept for assertions. */
export class Proc {
  readonly records: LogRecord[] = [];
  stderr = '';
  private buffer = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(
    readonly name: string,
    readonly child: ChildProcess,
  ) {
    child.stdout?.on('data', (chunk: Buffer) => {
      this.buffer += chunk.toString('utf8');
      let nl: number;
      while ((nl = this.buffer.indexOf('\n')) >= 0) {
        const line = this.buffer.slice(0, nl);
        this.buffer = this.buffer.slice(nl + 1);
        try {
          this.records.push(JSON.parse(line) as LogRecord);
        } catch {
          this.records.push({ msg: line });
        }
      }
    });
    child.stderr?.on('data', (chunk: Buffer) => {
      this.stderr = (this.stderr + chunk.toString('utf8')).slice(-20_000);
    });
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Records whose `msg` equals `msg`. */
  logs(msg: string): LogRecord[] {
    return this.records.filter((r) => r.msg === msg);
  }

  /** Waits for a log record matching `pred`; fails at once if the process exits. */
  async waitForLog(what: string, pred: (r: LogRecord) => boolean, timeoutMs = 60_000): Promise<LogRecord> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.records.find(pred);
      if (hit) return hit;
      if (!this.running) throw new Error(`${this.name} exited while waiting for ${what}; stderr: ${this.stderr.slice(-2000)}`);
      if (Date.now() > deadline) throw new Error(`${this.name}: timed out after ${timeoutMs} ms waiting for ${what}`);
      await sleep(100);
    }
  }

  /** Sends `signal` to this process only (by its pid). */
  kill(signal: NodeJS.Signals): void {
    if (this.running) this.child.kill(signal);
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves when it has exited. */
  async stop(graceMs = 20_000): Promise<void> {
    if (!this.running) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------------------
// Private servers

/** A private `redis-server` without persistence: {@link OwnRedis.restartEmpty} loses every key. */
export class OwnRedis {
  private proc: Proc | undefined;
  private constructor(readonly port: number) {}

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  static async start(): Promise<OwnRedis> {
    const r = new OwnRedis(await freePort());
    await r.spawn();
    return r;
  }

  private async spawn(): Promise<void> {
    const child = spawn('redis-server', ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const proc = new Proc(`redis:${this.port}`, child);
    this.proc = proc;
    let out = '';
    child.stdout?.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-4000)));
    await waitFor(
      `redis-server on ${this.port}`,
      async () => {
        if (!proc.running) throw new Error(`redis-server exited: ${out}${proc.stderr}`);
        return out.includes('Ready to accept connections');
      },
      15_000,
      50,
    );
  }

  /** Kills the server (SIGKILL: nothing is saved) and starts an empty one on the same port. */
  async restartEmpty(downMs = 0): Promise<void> {
    await this.stop();
    if (downMs > 0) await sleep(downMs);
    await this.spawn();
  }

  async stop(): Promise<void> {
    const p = this.proc;
    this.proc = undefined;
    if (!p) return;
    p.kill('SIGKILL');
    await p.exited;
  }
}

/** A private PostgreSQL from the embedded binaries, stoppable and restartable on the same data and port. */
export class OwnPostgres {
  private server: RunningPostgres | undefined;
  private constructor(
    readonly dataDir: string,
    readonly port: number,
    private connection: string,
  ) {}

  /** postgres://… of the `postgres` database (with the generated password). */
  get url(): string {
    return this.connection;
  }

  static async start(dir: string): Promise<OwnPostgres> {
    const port = await freePort();
    const dataDir = path.join(dir, 'pg');
    const server = await startEmbeddedPostgres({ dataDir, port, logger: silentLogger });
    const p = new OwnPostgres(dataDir, port, server.connectionString);
    p.server = server;
    return p;
  }

  get running(): boolean {
    return this.server !== undefined;
  }

  /** Fast shutdown (SIGINT): open connections are terminated. */
  async stop(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    await s?.stop();
  }

  /** Starts it again on the same data directory and port. */
  async start(): Promise<void> {
    if (this.server) return;
    this.server = await startEmbeddedPostgres({ dataDir: this.dataDir, port: this.port, logger: silentLogger });
    this.connection = this.server.connectionString;
  }
}

/** A TCP proxy on a fixed port that can refuse connections (down) and accept them again (up). */
export class TcpProxy {
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();
  private constructor(
    readonly port: number,
    private readonly targetPort: number,
  ) {}

  static async start(targetPort: number): Promise<TcpProxy> {
    const p = new TcpProxy(await freePort(), targetPort);
    await p.up();
    return p;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  up(): Promise<void> {
    if (this.server) return Promise.resolve();
    const server = net.createServer((client) => {
      const upstream = net.connect(this.targetPort, '127.0.0.1');
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => undefined);
      }
      client.pipe(upstream);
      upstream.pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, '127.0.0.1', () => resolve());
    });
  }

  /** Stops listening and cuts every open connection: clients get ECONNREFUSED / resets. */
  down(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    for (const sock of this.sockets) sock.destroy();
    this.sockets.clear();
    if (!s) return Promise.resolve();
    return new Promise((resolve) => s.close(() => resolve()));
  }
}

// ---------------------------------------------------------------------------------------------------
// Workload

/** One notification body and the resources it carries (source ids). */
export interface Payload {
  readonly name: string;
  readonly bytes: Buffer;
  readonly resources: ReadonlyArray<{ readonly resourceType: string; readonly id: string }>;
}

const SHARED_SYNTHEA = '/work/shared/data/synthea/uscore-2021-run1';
const FIXTURES = new URL('../fixtures/', import.meta.url);

function stripBom(b: Buffer): Buffer {
  return b[0] === 0xef && b[1] === 0xbb && b[2] === 0xbf ? b.subarray(3) : b;
}

function payloadOf(name: string, bytes: Buffer): Payload {
  const clean = stripBom(bytes);
  const bundle = JSON.parse(clean.toString('utf8')) as { entry?: Array<{ fullUrl?: string; resource?: { resourceType: string; id?: string } }> };
  const resources = (bundle.entry ?? []).flatMap((e) => {
    if (!e.resource) return [];
    const id = e.resource.id ?? (e.fullUrl?.startsWith('urn:uuid:') ? e.fullUrl.slice(9) : undefined);
    return id ? [{ resourceType: e.resource.resourceType, id }] : [];
  });
  return { name, bytes: clean, resources };
}

/**
 * Synthea US Core bundles: the two support bundles (organisations, practitioners) and up to
 * `maxPatients` patient bundles (~360 entries each) from /work/shared/data, or the two patient
 * bundles in test/fixtures when the shared data is absent.
 */
export function syntheaWorkload(maxPatients: number): { support: Payload[]; patients: Payload[] } {
  const support = ['hospitalInformation1633536936158.subset.json', 'practitionerInformation1633536936158.subset.json'].map((f) =>
    payloadOf(f, readFileSync(new URL(`ingest/${f}`, FIXTURES))),
  );
  let patients: Payload[];
  if (existsSync(path.join(SHARED_SYNTHEA, 'patients'))) {
    const dir = path.join(SHARED_SYNTHEA, 'patients');
    patients = readdirSync(dir)
      .filter((f) => f.endsWith('.json'))
      .sort()
      .slice(0, maxPatients)
      .map((f) => payloadOf(f, readFileSync(path.join(dir, f))));
  } else {
    const dir = new URL('normalize/', FIXTURES);
    patients = readdirSync(dir)
      .filter((f) => f.endsWith('.json'))
      .sort()
      .slice(0, maxPatients)
      .map((f) => payloadOf(f, readFileSync(new URL(f, dir))));
  }
  return { support, patients };
}

/** Expected stored versions per `Type/anchorId` for payloads sent by `sourceId` (each version once). */
export function expectedVersions(sourceId: string, payloads: readonly Payload[], into = new Map<string, number>()): Map<string, number> {
  for (const p of payloads) {
    for (const r of p.resources) {
      const key = `${r.resourceType}/${anchorId(sourceId, r.resourceType, r.id)}`;
      into.set(key, 1);
    }
  }
  return into;
}

// ---------------------------------------------------------------------------------------------------
// The rig

export interface RigOptions {
  /** Start a private redis-server (queues on Redis); otherwise BullMQ runs on the private PostgreSQL. */
  readonly redis?: boolean;
  /** Extra environment for every process. */
  readonly env?: Record<string, string>;
}

export interface InvariantReport {
  readonly versions: number;
  readonly commitments: number;
  readonly checkpoints: number;
  readonly logSize: number;
  /** `Type/id` stored with a version count different from what was sent, or not sent at all. */
  readonly wrongVersionCounts: string[];
  readonly missing: string[];
  readonly unexpected: string[];
  /** Versions without a commitment, and commitments without a version. */
  readonly uncommitted: string[];
  readonly orphanCommitments: string[];
  /** Leaf indices are exactly 0..n-1 (no gaps, no duplicates, none pending). */
  readonly denseLeaves: boolean;
  readonly pendingCommitments: number;
  /** The root recomputed from the commitments in leaf order equals the latest checkpoint's root. */
  readonly rootMatches: boolean;
  /** Checkpoints whose signature, consistency with the previous one, or root failed. */
  readonly badCheckpoints: string[];
  readonly inbox: Record<string, number>;
  readonly deadLetters: Record<string, number>;
}

/** Everything one fault test runs: private servers, fhir-anchor processes, a fresh namespace. */
export class FaultRig {
  readonly procs: Proc[] = [];
  readonly key = generateEd25519Key(LOG_ORIGIN);
  readonly schema = 'fa_faults';
  readonly prefix = 'fa-faults';
  private extraEnv: Record<string, string>;

  private constructor(
    readonly dir: string,
    readonly pg: OwnPostgres,
    readonly redis: OwnRedis | undefined,
    options: RigOptions,
  ) {
    this.extraEnv = { ...(options.env ?? {}) };
  }

  static async create(options: RigOptions = {}): Promise<FaultRig> {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'fhir-anchor-faults-'));
    let pgServer: OwnPostgres | undefined;
    let redis: OwnRedis | undefined;
    try {
      pgServer = await OwnPostgres.start(dir);
      if (options.redis) redis = await OwnRedis.start();
      return new FaultRig(dir, pgServer, redis, options);
    } catch (err) {
      await redis?.stop();
      await pgServer?.stop();
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
  }

  /** Adds environment for processes started from now on. */
  setEnv(env: Record<string, string>): void {
    Object.assign(this.extraEnv, env);
  }

  env(overrides: Record<string, string> = {}): Record<string, string> {
    return {
      DATABASE_URL: this.pg.url,
      DATABASE_SCHEMA: this.schema,
      ...(this.redis ? { REDIS_URL: this.redis.url, QUEUE_PREFIX: this.prefix } : { QUEUE_SCHEMA: 'fa_bullmq' }),
      ADMIN_TOKEN,
      SECRETS_KEY: TEST_SECRETS_KEY,
      LOG_ORIGIN,
      LOG_SIGNER_KEY: this.key.signerKey,
      SMART_TOKEN_KEY: TEST_SMART_KEY,
      LOG_LEVEL: 'debug',
      LOG_BATCH_INTERVAL_MS: '200',
      JOB_ATTEMPTS: '10',
      JOB_BACKOFF_MS: '200',
      RECONCILE_INTERVAL_MS: '2000',
      RECONCILE_STALE_MS: '15000',
      AUDIT_INTERVAL_MS: '5000',
      SUBSCRIPTION_CHECK_INTERVAL_MS: '0',
      WORKER_CONCURRENCY: '4',
      DATABASE_POOL_MAX: '10',
      SHUTDOWN_TIMEOUT_MS: '2000',
      PORT: '0',
      DATA_DIR: path.join(this.dir, 'data'),
      ...this.extraEnv,
      ...overrides,
    };
  }

  /** Starts `fhir-anchor api` and waits until it listens; returns the process and its base URL. */
  async startApi(overrides: Record<string, string> = {}): Promise<{ proc: Proc; url: string }> {
    const proc = this.track(new Proc(`api#${this.procs.length}`, spawnCli(['api'], this.env(overrides))));
    const rec = await proc.waitForLog('HTTP server listening', (r) => r.msg === 'HTTP server listening', 90_000);
    return { proc, url: String(rec.url) };
  }

  /** Starts `fhir-anchor worker` and waits until it has connected (its start-up log line). */
  async startWorker(overrides: Record<string, string> = {}): Promise<Proc> {
    const proc = this.track(new Proc(`worker#${this.procs.length}`, spawnCli(['worker'], this.env(overrides))));
    await proc.waitForLog('start-up', (r) => r.msg === 'starting fhir-anchor', 90_000);
    return proc;
  }

  private track(p: Proc): Proc {
    this.procs.push(p);
    return p;
  }

  /** Runs `fn` with a short-lived SQL client on the private server, search_path = the rig's schema. */
  async sql<T>(fn: (c: pg.Client) => Promise<T>): Promise<T> {
    const c = new pg.Client({ connectionString: this.pg.url, options: `-c search_path=${this.schema}` });
    c.on('error', () => undefined);
    await c.connect();
    try {
      return await fn(c);
    } finally {
      await c.end().catch(() => undefined);
    }
  }

  /** Registers source `id` through the admin API. */
  async registerSource(apiUrl: string, id: string, baseUrl: string): Promise<void> {
    const res = await fetch(`${apiUrl}/admin/sources`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ id, name: `source ${id}`, baseUrl, hookAuth: { bearerToken: HOOK_TOKEN } }),
    });
    if (res.status !== 201) throw new Error(`registering ${id}: ${res.status} ${await res.text()}`);
  }

  /** Posts one notification body to the hook. */
  async post(apiUrl: string, sourceId: string, body: Buffer | string): Promise<{ status: number; inboxId: string | null; retryAfter: string | null; body: string }> {
    const res = await fetch(`${apiUrl}/hooks/${sourceId}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${HOOK_TOKEN}`, 'content-type': 'application/fhir+json' },
      body,
      signal: AbortSignal.timeout(30_000),
    });
    return { status: res.status, inboxId: res.headers.get('x-inbox-id'), retryAfter: res.headers.get('retry-after'), body: await res.text() };
  }

  /** Posts each payload and waits until its inbox item is done (e.g. the support bundles a patient bundle refers to). */
  async postAndSettle(apiUrl: string, sourceId: string, payloads: readonly Payload[], timeoutMs = 90_000): Promise<void> {
    const ids: string[] = [];
    for (const p of payloads) {
      const r = await this.post(apiUrl, sourceId, p.bytes);
      if (r.status !== 202 || !r.inboxId) throw new Error(`posting ${p.name}: ${r.status} ${r.body.slice(0, 300)}`);
      ids.push(r.inboxId);
    }
    await waitFor(
      `${payloads.length} payload(s) to be ingested`,
      () => this.sql(async (c) => (await c.query(`SELECT 1 FROM inbox WHERE id = ANY($1::uuid[]) AND state = 'done'`, [ids])).rowCount === ids.length),
      timeoutMs,
      250,
    );
  }

  /** Inbox item counts by state. */
  inboxStates(): Promise<Record<string, number>> {
    return this.sql(async (c) => {
      const r = await c.query<{ state: string; n: number }>(`SELECT state, count(*)::int AS n FROM inbox GROUP BY state`);
      return Object.fromEntries(r.rows.map((x) => [x.state, x.n]));
    });
  }

  /**
   * Waits until the pipeline is quiet: every inbox item done or dead, no commitment waiting for a
   * leaf, the latest checkpoint covering the whole log. `complete` when additionally every stored
   * version is committed; `incomplete` when quiet for `quietMs` with versions still uncommitted (they
   * will never be: nothing is left to commit them); `timeout` otherwise. The invariant check then
   * says what is missing.
   */
  async waitSettled(timeoutMs: number, quietMs = 15_000): Promise<'complete' | 'incomplete' | 'timeout'> {
    const deadline = Date.now() + timeoutMs;
    let quietSince: number | undefined;
    for (;;) {
      const s = await this.sql(async (c) => {
        const r = await c.query<{ open: number; versions: number; commitments: number; pending: number; cp: number | null }>(
          `SELECT (SELECT count(*)::int FROM inbox WHERE state NOT IN ('done', 'dead')) AS open,
                  (SELECT count(*)::int FROM resource_history) AS versions,
                  (SELECT count(*)::int FROM commitment) AS commitments,
                  (SELECT count(*)::int FROM commitment WHERE leaf_index IS NULL) AS pending,
                  (SELECT max(size)::int FROM checkpoint) AS cp`,
        );
        return r.rows[0]!;
      }).catch(() => undefined);
      const quiet = s !== undefined && s.open === 0 && s.pending === 0 && s.cp === s.commitments;
      if (quiet && s.versions === s.commitments) return 'complete';
      if (quiet) {
        quietSince ??= Date.now();
        if (Date.now() - quietSince >= quietMs) return 'incomplete';
      } else quietSince = undefined;
      if (Date.now() > deadline) return 'timeout';
      await sleep(500);
    }
  }

  /**
   * The exactly-once invariants. `expected` maps `Type/id` to the number of versions sent. With
   * `apiUrl`, each checkpoint's consistency with the previous one is checked from `/ledger/consistency`.
   */
  async invariants(expected: ReadonlyMap<string, number>, apiUrl?: string): Promise<InvariantReport> {
    const verifier = parseVerifierKey(this.key.verifierKey);
    const data = await this.sql(async (c) => {
      const history = await c.query<{ k: string; n: number }>(`SELECT resource_type || '/' || id AS k, count(*)::int AS n FROM resource_history GROUP BY 1`);
      const uncommitted = await c.query<{ k: string }>(
        `SELECT h.resource_type || '/' || h.id || '/' || h.version_id AS k FROM resource_history h
           LEFT JOIN commitment c USING (resource_type, id, version_id) WHERE c.salt IS NULL`,
      );
      const orphans = await c.query<{ k: string }>(
        `SELECT c.resource_type || '/' || c.id || '/' || c.version_id AS k FROM commitment c
           LEFT JOIN resource_history h USING (resource_type, id, version_id) WHERE h.last_updated IS NULL`,
      );
      const leaves = await c.query<{ leaf_index: string | null; commitment: Buffer }>(`SELECT leaf_index, commitment FROM commitment ORDER BY leaf_index NULLS LAST`);
      const checkpoints = await c.query<{ size: string; root: Buffer; signed_note: string }>(`SELECT size, root, signed_note FROM checkpoint ORDER BY size`);
      const inbox = await c.query<{ state: string; n: number }>(`SELECT state, count(*)::int AS n FROM inbox GROUP BY state`);
      const dead = await c.query<{ reason: string; n: number }>(`SELECT reason, count(*)::int AS n FROM dead_letter GROUP BY reason`);
      const versions = await c.query<{ n: number }>(`SELECT count(*)::int AS n FROM resource_history`);
      return { history: history.rows, uncommitted: uncommitted.rows, orphans: orphans.rows, leaves: leaves.rows, checkpoints: checkpoints.rows, inbox: inbox.rows, dead: dead.rows, versions: versions.rows[0]!.n };
    });

    const stored = new Map(data.history.map((r) => [r.k, r.n]));
    const wrongVersionCounts: string[] = [];
    const missing: string[] = [];
    const unexpected: string[] = [];
    for (const [k, n] of expected) {
      const got = stored.get(k);
      if (got === undefined) missing.push(k);
      else if (got !== n) wrongVersionCounts.push(`${k}: ${got} stored, ${n} sent`);
    }
    for (const k of stored.keys()) if (!expected.has(k)) unexpected.push(k);

    const pendingCommitments = data.leaves.filter((l) => l.leaf_index === null).length;
    const sequenced = data.leaves.filter((l) => l.leaf_index !== null);
    const denseLeaves = pendingCommitments === 0 && sequenced.every((l, i) => Number(l.leaf_index) === i);

    // Independent recomputation of the root (RFC 9162 §2.1.1) from the commitments in leaf order.
    const leafHashes = sequenced.map((l) => leafHash(new Uint8Array(l.commitment)));
    const mth = (lo: number, hi: number): Uint8Array => {
      if (hi - lo === 1) return leafHashes[lo]!;
      let k = 1;
      while (k * 2 < hi - lo) k *= 2;
      return nodeHash(mth(lo, lo + k), mth(lo + k, hi));
    };
    const latest = data.checkpoints[data.checkpoints.length - 1];
    const rootMatches =
      latest !== undefined && Number(latest.size) === leafHashes.length && (leafHashes.length === 0 || Buffer.from(mth(0, leafHashes.length)).equals(latest.root));

    const badCheckpoints: string[] = [];
    let previous: { size: number; root: Uint8Array } | undefined;
    for (const cp of data.checkpoints) {
      const size = Number(cp.size);
      const root = new Uint8Array(cp.root);
      try {
        const { checkpoint } = openCheckpoint(cp.signed_note, LOG_ORIGIN, [verifier]);
        if (checkpoint.size !== size || !Buffer.from(checkpoint.rootHash).equals(cp.root)) badCheckpoints.push(`${size}: signed note does not match the row`);
      } catch (err) {
        badCheckpoints.push(`${size}: signature: ${(err as Error).message}`);
      }
      if (size <= leafHashes.length && size > 0 && !Buffer.from(mth(0, size)).equals(cp.root)) badCheckpoints.push(`${size}: root differs from the commitments`);
      if (previous && apiUrl) {
        const res = await fetch(`${apiUrl}/ledger/consistency?from=${previous.size}&to=${size}&format=json`);
        if (res.status !== 200) badCheckpoints.push(`${previous.size}->${size}: /ledger/consistency answered ${res.status}`);
        else {
          const body = (await res.json()) as { proof: string[] };
          const proof = body.proof.map((p) => new Uint8Array(Buffer.from(p, 'base64')));
          if (!verifyConsistency(previous.size, size, proof, previous.root, root)) badCheckpoints.push(`${previous.size}->${size}: consistency proof does not verify`);
        }
      }
      previous = { size, root };
    }

    return {
      versions: data.versions,
      commitments: data.leaves.length,
      checkpoints: data.checkpoints.length,
      logSize: latest ? Number(latest.size) : 0,
      wrongVersionCounts,
      missing,
      unexpected,
      uncommitted: data.uncommitted.map((r) => r.k),
      orphanCommitments: data.orphans.map((r) => r.k),
      denseLeaves,
      pendingCommitments,
      rootMatches,
      badCheckpoints,
      inbox: Object.fromEntries(data.inbox.map((r) => [r.state, r.n])),
      deadLetters: Object.fromEntries(data.dead.map((r) => [r.reason, r.n])),
    };
  }

  /** For a resource stored more than once: which top-level fields differ between its versions. */
  async versionDiff(key: string): Promise<Record<string, unknown>> {
    const [type, id] = key.split('/');
    return this.sql(async (c) => {
      const r = await c.query<{ version_id: string; dedup_key: string; content: Record<string, unknown> }>(
        `SELECT version_id, dedup_key, content FROM resource_history WHERE resource_type = $1 AND id = $2 ORDER BY version_id`,
        [type, id],
      );
      const [a, b] = r.rows;
      if (!a || !b) return {};
      const fields = [...new Set([...Object.keys(a.content ?? {}), ...Object.keys(b.content ?? {})])].filter(
        (f) => f !== 'meta' && JSON.stringify(a.content?.[f]) !== JSON.stringify(b.content?.[f]),
      );
      return { key, dedupKeys: [a.dedup_key, b.dedup_key], differing: Object.fromEntries(fields.map((f) => [f, [a.content?.[f], b.content?.[f]]])) };
    });
  }

  /** Kills every process started, stops the private servers and removes the temp directory. */
  async cleanup(): Promise<void> {
    for (const p of this.procs) p.kill('SIGKILL');
    await Promise.all(this.procs.map((p) => (p.child.exitCode === null && p.child.signalCode === null ? p.exited : undefined)));
    await this.redis?.stop().catch(() => undefined);
    await this.pg.stop().catch(() => undefined);
    await rm(this.dir, { recursive: true, force: true }).catch(() => undefined);
  }
}

/** The parts of a report that must be empty/true for exactly-once; for one readable `toEqual`. */
export function exactlyOnceView(r: InvariantReport): Record<string, unknown> {
  return {
    missing: r.missing.slice(0, 20),
    unexpected: r.unexpected.slice(0, 20),
    wrongVersionCounts: r.wrongVersionCounts.slice(0, 20),
    uncommitted: r.uncommitted.slice(0, 20),
    orphanCommitments: r.orphanCommitments.slice(0, 20),
    denseLeaves: r.denseLeaves,
    rootMatches: r.rootMatches,
    badCheckpoints: r.badCheckpoints.slice(0, 20),
    logCoversEveryVersion: r.logSize === r.versions,
  };
}

export const EXACTLY_ONCE = {
  missing: [],
  unexpected: [],
  wrongVersionCounts: [],
  uncommitted: [],
  orphanCommitments: [],
  denseLeaves: true,
  rootMatches: true,
  badCheckpoints: [],
  logCoversEveryVersion: true,
};

/**
 * `describe` under jest.faults.config.js (which sets the `FHIR_ANCHOR_FAULT_TESTS` global), else
 * `describe.skip`: the default `npm test` never runs these slow tests even if its roots include them.
 */
export const describeFaults: jest.Describe = (globalThis as { FHIR_ANCHOR_FAULT_TESTS?: boolean }).FHIR_ANCHOR_FAULT_TESTS ? describe : describe.skip;
