/**
 * Shared plumbing for the integrity demo flows (docs/integrity.md §9): an in-process fhir-anchor in
 * production mode on the local PostgreSQL and Redis (no embedded PostgreSQL), in a random schema and
 * queue prefix that are removed when the demo ends, plus small helpers to post notifications, wait for
 * `$verify` and print what happened in plain words.
 *
 * Environment: DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test), REDIS_URL (default
 * redis://127.0.0.1:6379). Only 127.0.0.1 is contacted.
 */
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Redis } from 'ioredis';
import pg from 'pg';
import { loadConfig, type Config } from '../../src/config/index.js';
import { generateEd25519Key } from '../../src/integrity/note.js';
import { verifyOffline, type OfflineVerifyResult } from '../../src/integrity/verifier.js';
import { anchorId } from '../../src/normalize/index.js';
import { createLogger } from '../../src/platform/logger.js';
import { startService, type RunningService } from '../../src/runtime.js';
import { registerTestClient } from '../../test/helpers/smart-client.js';

export const DATABASE_URL = process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/test';
export const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const ADMIN_TOKEN = `demo-admin-${randomUUID()}`;
const ORIGIN = 'demo.fhir-anchor.localhost/log';
const NS_RE = /^demo_[0-9a-f]{16}$/;
const ns = (): string => `demo_${randomUUID().replace(/-/g, '').slice(0, 16)}`;

/** Data shipped with the repository's shared test data (public FHIR examples and Synthea output). */
export const DATA_DIR = process.env.FHIR_DATA_DIR || '/work/shared/data';

export function readJson<T = Record<string, unknown>>(relativePath: string): T {
  const raw = readFileSync(`${DATA_DIR}/${relativePath}`);
  const text = raw.toString('utf8').replace(/^\uFEFF/, '');
  return JSON.parse(text) as T;
}

export const say = (text = ''): void => {
  process.stdout.write(`${text}\n`);
};
export const step = (n: number, text: string): void => say(`\n${n}. ${text}`);

export interface Demo {
  readonly service: RunningService;
  readonly config: Config;
  readonly base: string;
  /** Registers a source EHR with a bearer token; returns a poster for its hook. */
  addSource(id: string, name: string): Promise<(resource: unknown) => Promise<string>>;
  /** Waits until `$verify` answers 200 (a signed checkpoint covers the version) and returns its parameters. */
  verify(resourceType: string, sourceId: string, sourceResourceId: string, until?: (p: VerifyParameters) => boolean): Promise<VerifyParameters>;
  /** The version exactly as `GET /fhir/R4/{type}/{id}/_history/{vid}` serves it (JSON text). */
  version(resourceType: string, id: string, versionId: string): Promise<string>;
  close(): Promise<void>;
}

/** The `$verify` Parameters, flattened. */
export interface VerifyParameters {
  readonly status: string;
  readonly reference: string;
  readonly commitment: string;
  readonly salt: string;
  readonly leafIndex: number;
  readonly treeSize: number;
  readonly receipt: string;
  readonly anchorReceipts: string[];
  readonly logKey: string;
  readonly valid: boolean;
  readonly proofValid: boolean;
}

function flatten(body: { parameter: Array<Record<string, unknown> & { name: string }> }): VerifyParameters {
  const get = (name: string): Record<string, unknown> | undefined => body.parameter.find((p) => p.name === name);
  return {
    status: String(get('status')?.valueCode),
    reference: String((get('version')?.valueReference as { reference: string } | undefined)?.reference),
    commitment: String(get('commitment')?.valueString),
    salt: String(get('salt')?.valueBase64Binary),
    leafIndex: Number(get('leafIndex')?.valueInteger ?? get('leafIndex')?.valueDecimal),
    treeSize: Number(get('treeSize')?.valueInteger ?? get('treeSize')?.valueDecimal),
    receipt: String(get('receipt')?.valueString),
    anchorReceipts: body.parameter.filter((p) => p.name === 'anchorReceipt').map((p) => String(p.valueString)),
    logKey: String(get('logKey')?.valueString),
    valid: get('valid')?.valueBoolean === true,
    proofValid: get('proofValid')?.valueBoolean === true,
  };
}

/**
 * Starts fhir-anchor in-process (production mode: external PostgreSQL, queues on Redis), with the
 * integrity log sequencing every 200 ms so the demo does not wait long for a checkpoint.
 */
export async function startDemo(env: Record<string, string> = {}): Promise<Demo> {
  const config = loadConfig({
    DATABASE_URL,
    REDIS_URL,
    DATABASE_SCHEMA: ns(),
    QUEUE_PREFIX: ns(),
    ADMIN_TOKEN,
    LOG_ORIGIN: ORIGIN,
    LOG_SIGNER_KEY: generateEd25519Key(ORIGIN).signerKey,
    SMART_TOKEN_KEY: JSON.stringify({ ...generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' }), kid: 'demo-key', alg: 'ES256', use: 'sig' }),
    // An opt-out jurisdiction: without a Consent of the patient, treatment reads are permitted.
    CONSENT_DEFAULT_DECISION: 'permit',
    LOG_BATCH_INTERVAL_MS: '200',
    AUDIT_INTERVAL_MS: '0',
    HOST: '127.0.0.1',
    PORT: '0',
    LOG_LEVEL: process.env.LOG_LEVEL || 'silent',
    DATA_DIR: `/tmp/fhir-anchor-demo-${randomUUID()}`,
    ...env,
  });
  const service = await startService({ config, roles: { api: true, workers: true }, logger: createLogger(config.logLevel) });
  const base = service.url!;
  // $verify discloses the salt, so it is gated like a read: a SMART Backend Services client (the record
  // holder's app) with read scopes and a treatment purpose of use.
  const client = await registerTestClient(base, ADMIN_TOKEN, { id: 'demo-holder', allowedScopes: ['system/*.rs'], allowedPurposes: ['TREAT'] });
  let token: { value: string; at: number } | undefined;
  const auth = async (): Promise<Record<string, string>> => {
    if (!token || Date.now() - token.at > 60_000) token = { value: await client.token('system/*.rs', { purposeOfUse: 'TREAT' }), at: Date.now() };
    return { authorization: `Bearer ${token.value}` };
  };

  const demo: Demo = {
    service,
    config,
    base,
    async addSource(id, name) {
      const hookToken = `demo-hook-${randomUUID()}`;
      const res = await fetch(`${base}/admin/sources`, {
        method: 'POST',
        headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
        body: JSON.stringify({ id, name, baseUrl: `https://${id}.example/fhir`, hookAuth: { bearerToken: hookToken } }),
      });
      if (res.status !== 201) throw new Error(`registering source ${id}: ${res.status} ${await res.text()}`);
      return async (resource: unknown) => {
        const r = await fetch(`${base}/hooks/${id}`, {
          method: 'POST',
          headers: { authorization: `Bearer ${hookToken}`, 'content-type': 'application/fhir+json' },
          body: JSON.stringify(resource),
        });
        await r.text();
        if (r.status !== 202 && r.status !== 200) throw new Error(`hook ${id} answered ${r.status}`);
        return r.headers.get('x-inbox-id') ?? '';
      };
    },
    async verify(resourceType, sourceId, sourceResourceId, until = () => true) {
      const id = anchorId(sourceId, resourceType, sourceResourceId);
      const deadline = Date.now() + 60_000;
      for (;;) {
        const res = await fetch(`${base}/fhir/R4/${resourceType}/${id}/$verify`, { headers: await auth() });
        if (res.status === 200) {
          const p = flatten((await res.json()) as { parameter: Array<Record<string, unknown> & { name: string }> });
          if (until(p)) return p;
        } else await res.text();
        if (Date.now() > deadline) throw new Error(`${resourceType}/${id}: $verify still answers ${res.status} after 60 s`);
        await new Promise((r) => setTimeout(r, 200));
      }
    },
    async version(resourceType, id, versionId) {
      const res = await fetch(`${base}/fhir/R4/${resourceType}/${id}/_history/${versionId}`, { headers: { ...(await auth()), accept: 'application/fhir+json' } });
      const text = await res.text();
      if (res.status !== 200) throw new Error(`GET ${resourceType}/${id}/_history/${versionId} answered ${res.status}: ${text.slice(0, 300)}`);
      return text;
    },
    async close() {
      await service.close();
      if (!NS_RE.test(config.databaseSchema) || config.queue.backend !== 'redis' || !NS_RE.test(config.queue.prefix)) throw new Error('refusing to clean up a non-demo namespace');
      const c = new pg.Client({ connectionString: DATABASE_URL });
      await c.connect();
      try {
        await c.query(`DROP SCHEMA IF EXISTS "${config.databaseSchema}" CASCADE`);
      } finally {
        await c.end();
      }
      const redis = new Redis(REDIS_URL);
      try {
        let cursor = '0';
        do {
          const [next, keys] = await redis.scan(cursor, 'MATCH', `${config.queue.prefix}:*`, 'COUNT', 1000);
          cursor = next;
          if (keys.length > 0) await redis.del(...keys);
        } while (cursor !== '0');
      } finally {
        redis.disconnect();
      }
    },
  };
  return demo;
}

/** Prints each check of an offline verification, one line each. */
export function printChecks(result: OfflineVerifyResult, indent = '   '): void {
  for (const c of result.checks) say(`${indent}${c.ok ? 'ok  ' : 'FAIL'} ${c.name}: ${c.detail}`);
  say(`${indent}=> ${result.ok ? 'VERIFIED' : 'NOT VERIFIED'}`);
}

/** Offline verification from only the record, its salt, the receipt and the log's public key. */
export function verifyHeld(held: { recordJson: string; salt: string; receipt: string; logKey: string; anchorReceipts?: string[]; rpcUrl?: string }, anchorVerifiers?: Parameters<typeof verifyOffline>[0]['anchorVerifiers']): Promise<OfflineVerifyResult> {
  return verifyOffline({
    resourceJson: held.recordJson,
    saltB64: held.salt,
    receiptText: held.receipt,
    vkey: held.logKey,
    ...(held.anchorReceipts ? { anchorReceipts: held.anchorReceipts } : {}),
    ...(held.rpcUrl ? { rpcUrl: held.rpcUrl } : {}),
    ...(anchorVerifiers ? { anchorVerifiers } : {}),
  });
}

/** Runs a demo body, always cleaning up; exits 1 when the demo's claim did not hold. */
export async function runDemo(title: string, body: (demo: Demo) => Promise<boolean>, env: Record<string, string> = {}, before?: () => Promise<{ env: Record<string, string>; close: () => Promise<void> }>): Promise<void> {
  say(`== ${title} ==`);
  const extra = before ? await before() : undefined;
  let demo: Demo | undefined;
  let ok = false;
  try {
    demo = await startDemo({ ...env, ...(extra?.env ?? {}) });
    say(`(fhir-anchor started in-process at ${demo.base}: PostgreSQL schema ${demo.config.databaseSchema}, Redis prefix ${demo.config.queue.backend === 'redis' ? demo.config.queue.prefix : ''}; both removed at the end)`);
    ok = await body(demo);
  } finally {
    await demo?.close();
    await extra?.close();
  }
  say(ok ? '\nResult: the claim holds.' : '\nResult: the claim did NOT hold.');
  say('(cleaned up: the demo schema and queue keys were removed)');
  process.exit(ok ? 0 : 1);
}
