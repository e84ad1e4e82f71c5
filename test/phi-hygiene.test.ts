/**
 * Secrets and PHI hygiene: after ingesting real Synthea patients through the hooks — with queues on
 * PostgreSQL and on Redis, and checkpoints anchored on an EVM chain — no name, MRN, SSN, phone,
 * address or birth date of those patients (and no secret) appears in the logs, in the queue payloads
 * (BullMQ's PostgreSQL tables and Redis keys) or in any ledger transaction.
 */
import { Writable } from 'node:stream';
import { readFileSync } from 'node:fs';
import { Redis } from 'ioredis';
import pg from 'pg';
import type { Config } from '../src/config/index.js';
import { deployAnchorContract } from '../src/integrity/anchors/evm.js';
import { createLogger } from '../src/platform/logger.js';
import { startService, type RunningService } from '../src/runtime.js';
import { TEST_DATABASE_URL, TEST_REDIS_URL, cleanupConfig, testConfig } from './helpers/env.js';
import { HARDHAT_KEYS, startHardhatNode, type HardhatNode } from './helpers/hardhat.js';

const ADMIN = 'test-admin-token-0123456789abcdef0123456789';
const BEARER = 'phi-hook-token-0123456789';
const HMAC = 'phi-hmac-secret-0123456789';
const bundleBytes = readFileSync(new URL('./fixtures/normalize/Jani266_Reynolds644_304f9946-5db8-dc6f-e060-48b9fea3ca5d.json', import.meta.url));
const supportBytes = [
  readFileSync(new URL('./fixtures/ingest/hospitalInformation1633536936158.subset.json', import.meta.url)),
  readFileSync(new URL('./fixtures/ingest/practitionerInformation1633536936158.subset.json', import.meta.url)),
];

/** Identifying values of the test patient, taken from the bundle itself. */
function phiValues(): string[] {
  const bundle = JSON.parse(bundleBytes.toString('utf8')) as { entry: Array<{ resource: Record<string, unknown> }> };
  const patient = bundle.entry.map((e) => e.resource).find((r) => r.resourceType === 'Patient') as {
    name: Array<{ given?: string[]; family?: string }>;
    identifier: Array<{ value: string }>;
    telecom?: Array<{ value: string }>;
    address?: Array<{ line?: string[]; city?: string; postalCode?: string }>;
    birthDate: string;
  };
  const values = [
    ...patient.name.flatMap((n) => [...(n.given ?? []), n.family ?? '']),
    ...patient.identifier.map((i) => i.value),
    ...(patient.telecom ?? []).map((t) => t.value),
    ...(patient.address ?? []).flatMap((a) => [...(a.line ?? []), a.city ?? '']),
    patient.birthDate,
  ];
  // Ignore tiny or generic values (a 2-letter state, a bare number) that would match by accident.
  return [...new Set(values.filter((v) => v.length >= 6))];
}

/** Needles found in the haystack as text or as hex-encoded UTF-8 (transaction input is hex). */
function leaks(haystack: string, needles: readonly string[]): string[] {
  const lower = haystack.toLowerCase();
  return needles.filter((n) => haystack.includes(n) || lower.includes(Buffer.from(n, 'utf8').toString('hex')));
}

describe.each([['postgres' as const], ['redis' as const]])('no PHI or secrets outside the store (queues on %s)', (queueBackend) => {
  let config: Config;
  let service: RunningService;
  let node: HardhatNode;
  let logs = '';

  beforeAll(async () => {
    node = await startHardhatNode();
    const deployed = await deployAnchorContract({ rpcUrl: node.url, privateKey: HARDHAT_KEYS[0], pollingIntervalMs: 50 });
    config = testConfig(
      { LOG_LEVEL: 'debug', EVM_RPC_URL: node.url, EVM_PRIVATE_KEY: HARDHAT_KEYS[0], EVM_CONTRACT_ADDRESS: deployed.address, LOG_BATCH_INTERVAL_MS: '200' },
      queueBackend,
    );
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        logs += chunk.toString('utf8');
        cb();
      },
    });
    service = await startService({ config, roles: { api: true, workers: true }, logger: createLogger('debug', sink) });
  }, 60_000);

  afterAll(async () => {
    await service?.close();
    await cleanupConfig(config);
    await node?.stop();
  });

  it('keeps names, MRNs, SSNs and secrets out of logs, job payloads and chain transactions', async () => {
    const base = service.url!;
    const reg = await fetch(`${base}/admin/sources`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ id: 'phi', name: 'PHI test', baseUrl: 'https://phi.example/fhir', hookAuth: { bearerToken: BEARER, hmacSecret: HMAC } }),
    });
    expect(reg.status).toBe(201);
    const { createHmac } = await import('node:crypto');
    const ids: string[] = [];
    for (const body of [...supportBytes, bundleBytes]) {
      const res = await fetch(`${base}/hooks/phi`, {
        method: 'POST',
        headers: { authorization: `Bearer ${BEARER}`, 'x-signature': createHmac('sha256', HMAC).update(body).digest('hex'), 'content-type': 'application/fhir+json' },
        body,
      });
      expect(res.status).toBe(202);
      ids.push(res.headers.get('x-inbox-id')!);
      // Wait for each (support bundles first, so references resolve).
      for (;;) {
        const item = await service.database.store.inbox.get(ids[ids.length - 1]!);
        if (item?.state === 'done') break;
        if (item?.state === 'dead') throw new Error('dead');
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    // Wait until the log has committed everything and an EVM anchor exists for the latest checkpoint.
    const deadline = Date.now() + 60_000;
    for (;;) {
      const anchors = await (await fetch(`${base}/ledger/anchors`)).json() as { size: number; receipts: Array<{ kind: string }> };
      if (anchors.size > 300 && anchors.receipts.some((r) => r.kind === 'evm')) break;
      if (Date.now() > deadline) throw new Error(`not anchored: ${JSON.stringify(anchors).slice(0, 300)}`);
      await new Promise((r) => setTimeout(r, 250));
    }

    const signerSecret = /^PRIVATE\+KEY\+[^+]+\+[0-9a-f]{8}\+(.+)$/.exec(config.integrity.signerKey!)![1]!;
    const needles = [...phiValues(), BEARER, HMAC, ADMIN, signerSecret, HARDHAT_KEYS[0].slice(2)].filter((n) => n.length >= 6);
    expect(needles.length).toBeGreaterThan(5);

    // 1. Logs (debug level, everything the service said).
    expect(logs.length).toBeGreaterThan(1000);
    expect(leaks(logs, needles)).toEqual([]);

    // 2. Queue payloads.
    if (config.queue.backend === 'postgres') {
      const client = new pg.Client({ connectionString: TEST_DATABASE_URL });
      await client.connect();
      try {
        const tables = await client.query<{ table_name: string }>(`SELECT table_name FROM information_schema.tables WHERE table_schema = $1`, [config.queue.schema]);
        expect(tables.rows.length).toBeGreaterThan(0);
        let dump = '';
        for (const t of tables.rows) {
          const rows = await client.query(`SELECT * FROM "${config.queue.schema}"."${t.table_name}"`);
          dump += JSON.stringify(rows.rows);
        }
        expect(dump).toContain('inboxId');
        expect(leaks(dump, needles)).toEqual([]);
      } finally {
        await client.end();
      }
    } else {
      const redis = new Redis(TEST_REDIS_URL);
      try {
        let dump = '';
        let cursor = '0';
        do {
          const [next, keys] = await redis.scan(cursor, 'MATCH', `${config.queue.prefix}:*`, 'COUNT', 1000);
          cursor = next;
          for (const key of keys) {
            const type = await redis.type(key);
            if (type === 'hash') dump += JSON.stringify(await redis.hgetall(key));
            else if (type === 'string') dump += await redis.get(key);
            else if (type === 'list') dump += JSON.stringify(await redis.lrange(key, 0, -1));
            else if (type === 'zset') dump += JSON.stringify(await redis.zrange(key, 0, -1));
            else if (type === 'set') dump += JSON.stringify(await redis.smembers(key));
            else if (type === 'stream') dump += JSON.stringify(await redis.xrange(key, '-', '+'));
          }
        } while (cursor !== '0');
        expect(dump).toContain('inboxId');
        expect(leaks(dump, needles)).toEqual([]);
      } finally {
        redis.disconnect();
      }
    }

    // 3. Every transaction on the chain: only origin hash, size and root.
    const rpc = async (method: string, params: unknown[]) =>
      ((await (await fetch(node.url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method, params }) })).json()) as { result: unknown }).result;
    const latest = Number(await rpc('eth_blockNumber', []));
    let txs = '';
    let count = 0;
    for (let b = 0; b <= latest; b++) {
      const block = (await rpc('eth_getBlockByNumber', ['0x' + b.toString(16), true])) as { transactions: Array<{ input: string }> };
      for (const tx of block.transactions) {
        txs += tx.input;
        count += 1;
      }
    }
    expect(count).toBeGreaterThanOrEqual(2); // deployment + at least one anchor
    expect(leaks(txs, needles)).toEqual([]);
  }, 180_000);
});
