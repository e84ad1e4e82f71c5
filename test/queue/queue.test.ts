import { createQueueRegistry } from '../../src/queue/index.js';
import { TEST_DATABASE_URL, TEST_REDIS_URL, deleteRedisPrefix, dropSchema, randomNamespace, silentLogger } from '../helpers/env.js';
import { queueConformance, type QueueHarness } from './queue-conformance.js';

const namespaces = new WeakMap<QueueHarness, string>();

queueConformance(
  'Redis backend',
  async () => {
    const prefix = randomNamespace('tq');
    const config = { backend: 'redis', redis: { topology: 'standalone', url: TEST_REDIS_URL }, prefix } as const;
    const h = { registry: await createQueueRegistry({ config, logger: silentLogger }), second: await createQueueRegistry({ config, logger: silentLogger }) };
    namespaces.set(h, prefix);
    return h;
  },
  async (h) => {
    await h.registry.close();
    await h.second.close();
    await deleteRedisPrefix(namespaces.get(h)!);
  },
);

queueConformance(
  'PostgreSQL backend (BullMQ 6)',
  async () => {
    const schema = randomNamespace('tq');
    const config = { backend: 'postgres', connectionString: TEST_DATABASE_URL, schema } as const;
    const h = { registry: await createQueueRegistry({ config, logger: silentLogger }), second: await createQueueRegistry({ config, logger: silentLogger }) };
    namespaces.set(h, schema);
    return h;
  },
  async (h) => {
    await h.registry.close();
    await h.second.close();
    await dropSchema(namespaces.get(h)!);
  },
);
