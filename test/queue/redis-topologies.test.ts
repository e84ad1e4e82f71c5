/**
 * BullMQ on Redis Sentinel and on Redis Cluster: the queue conformance suite on each, a Sentinel
 * failover in the middle of a job stream, the hash-tag prefix keeping each queue in one cluster slot,
 * and the whole service (hook → inbox → ingest worker → stored version) on each topology.
 *
 * Real `redis-server` processes started by this file on free ports (test/helpers/redis-topologies.ts);
 * PostgreSQL is the shared test server, in random schemas removed afterwards.
 */
import { loadConfig, type RedisConnection } from '../../src/config/index.js';
import { createQueueRegistry } from '../../src/queue/index.js';
import { startService, type RunningService } from '../../src/runtime.js';
import { cleanupConfig, randomNamespace, silentLogger, testConfig } from '../helpers/env.js';
import { startCluster, startSentinel, type LocalCluster, type LocalSentinel } from '../helpers/redis-topologies.js';
import { queueConformance, type QueueHarness } from './queue-conformance.js';

const ADMIN = 'test-admin-token-0123456789abcdef0123456789';

async function waitFor(what: string, predicate: () => Promise<boolean> | boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

let sentinel: LocalSentinel;
let cluster: LocalCluster;

beforeAll(async () => {
  [sentinel, cluster] = await Promise.all([startSentinel(), startCluster()]);
});

afterAll(async () => {
  await Promise.all([sentinel?.stop(), cluster?.stop()]);
});

/** The connection the config loader builds from the environment an operator would set. */
const sentinelConnection = (): RedisConnection => {
  const q = loadConfig({ REDIS_SENTINELS: sentinel.env, REDIS_SENTINEL_NAME: sentinel.name }).queue;
  if (q.backend !== 'redis') throw new Error('expected redis');
  return q.redis;
};
const clusterConnection = (): RedisConnection => {
  const q = loadConfig({ REDIS_CLUSTER_NODES: cluster.env }).queue;
  if (q.backend !== 'redis') throw new Error('expected redis');
  return q.redis;
};

async function harness(redis: RedisConnection, prefix: string): Promise<QueueHarness> {
  const config = { backend: 'redis', redis, prefix } as const;
  return { registry: await createQueueRegistry({ config, logger: silentLogger }), second: await createQueueRegistry({ config, logger: silentLogger }) };
}

async function closeHarness(h: QueueHarness): Promise<void> {
  await h.registry.close();
  await h.second.close();
}

queueConformance('Redis Sentinel', () => harness(sentinelConnection(), randomNamespace('tq')), closeHarness);
queueConformance('Redis Cluster (hash-tag prefix)', () => harness(clusterConnection(), `{${randomNamespace('tq')}}`), closeHarness);

describe('Redis Cluster', () => {
  it('keeps every key of the queues in one slot, on one node, under the hash-tag prefix', async () => {
    const prefix = `{${randomNamespace('tq')}}`;
    const h = await harness(clusterConnection(), prefix);
    try {
      const seen = new Set<string>();
      h.registry.work('ingest', async (job) => void seen.add(job.data.inboxId), { concurrency: 2 });
      await h.registry.enqueueBulk('ingest', Array.from({ length: 30 }, (_, i) => ({ data: { inboxId: `c-${i}` } })));
      await h.registry.enqueue('integrity', { resourceType: 'Patient', id: 'p', versionId: '1' });
      await waitFor('30 jobs', () => seen.size === 30);
      const perNode = await cluster.keysPerNode(`${prefix}:*`);
      const holding = [...perNode].filter(([, keys]) => keys.length > 0);
      expect(holding).toHaveLength(1);
      expect(holding[0]![1].some((k) => k.startsWith(`${prefix}:ingest:`))).toBe(true);
      expect(holding[0]![1].some((k) => k.startsWith(`${prefix}:integrity:`))).toBe(true);
    } finally {
      await closeHarness(h);
    }
  });
});

describe('Redis Sentinel failover', () => {
  let h: QueueHarness;
  afterEach(async () => {
    await closeHarness(h);
  });

  it('keeps delivering jobs after the primary dies and a replica is promoted', async () => {
    h = await harness(sentinelConnection(), randomNamespace('tq'));
    const seen = new Map<string, number>();
    h.registry.work('ingest', async (job) => void seen.set(job.data.inboxId, (seen.get(job.data.inboxId) ?? 0) + 1), { concurrency: 4 });
    await h.registry.enqueueBulk('ingest', Array.from({ length: 20 }, (_, i) => ({ data: { inboxId: `before-${i}` } })));
    await waitFor('the first 20 jobs', () => seen.size === 20);

    const { from, to } = await sentinel.failover();
    expect(to).not.toBe(from);

    // Producers fail fast while no primary answers (the hook then leaves the item to the reconciler):
    // retry each enqueue until the client has followed the sentinels to the new primary.
    for (let i = 0; i < 20; i++) {
      await waitFor(`enqueue after-${i}`, () => h.registry.enqueue('ingest', { inboxId: `after-${i}` }, { jobId: `after-${i}` }).then(() => true, () => false));
    }
    await waitFor('the 20 jobs sent after the failover', () => Array.from({ length: 20 }, (_, i) => `after-${i}`).every((id) => seen.has(id)), 60_000);
    for (let i = 0; i < 20; i++) expect(seen.get(`after-${i}`)).toBe(1);
    await expect(h.registry.ping()).resolves.toBeUndefined();
    expect(await sentinel.primaryPort()).toBe(to);
  });
});

describe.each([
  ['Sentinel', () => ({ REDIS_URL: '', REDIS_SENTINELS: sentinel.env, REDIS_SENTINEL_NAME: sentinel.name, QUEUE_PREFIX: randomNamespace('tq') })],
  ['Cluster', () => ({ REDIS_URL: '', REDIS_CLUSTER_NODES: cluster.env, QUEUE_PREFIX: `{${randomNamespace('tq')}}` })],
])('the service on Redis %s', (_name, env) => {
  let service: RunningService;
  let config: ReturnType<typeof testConfig>;

  beforeAll(async () => {
    config = testConfig(env());
    service = await startService({ config, roles: { api: true, workers: true }, logger: silentLogger });
  });
  afterAll(async () => {
    await service?.close();
    await cleanupConfig(config);
  });

  it('answers /readyz and ingests a notification end to end', async () => {
    const base = service.url!;
    expect((await fetch(`${base}/readyz`)).status).toBe(200);
    const bearer = 'topology-hook-token-0123456789';
    const created = await fetch(`${base}/admin/sources`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ id: 'ehr', name: 'EHR', baseUrl: 'https://ehr.example/fhir', hookAuth: { bearerToken: bearer } }),
    });
    expect(created.status).toBe(201);
    const hook = await fetch(`${base}/hooks/ehr`, {
      method: 'POST',
      headers: { authorization: `Bearer ${bearer}`, 'content-type': 'application/fhir+json' },
      body: JSON.stringify({ resourceType: 'Patient', id: 'p-1', meta: { versionId: '1' }, name: [{ family: 'Topology' }], gender: 'unknown' }),
    });
    expect(hook.status).toBe(202);
    const inboxId = hook.headers.get('x-inbox-id')!;
    let state = '';
    await waitFor('the inbox item to be done', async () => {
      const res = await fetch(`${base}/admin/inbox/${inboxId}`, { headers: { authorization: `Bearer ${ADMIN}` } });
      state = ((await res.json()) as { state?: string }).state ?? '';
      return state === 'done' || state === 'dead';
    });
    expect(state).toBe('done');
  });
});
