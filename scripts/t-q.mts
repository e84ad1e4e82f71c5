import { createQueueRegistry, randomQueueNamespace } from '../src/queue/index.js';
import { createLogger } from '../src/platform/logger.js';
const logger = createLogger('info');
for (const config of [{ backend: 'postgres', connectionString: 'postgres://postgres@127.0.0.1:5432/test', schema: randomQueueNamespace() }, { backend: 'redis', url: 'redis://127.0.0.1:6379', prefix: randomQueueNamespace() }] as const) {
  const t0 = Date.now();
  const reg = await createQueueRegistry({ config, logger });
  console.log(config.backend, 'created in', Date.now() - t0);
  const seen: string[] = [];
  let done!: () => void; const all = new Promise<void>((r) => (done = r));
  reg.work('ingest', async (job) => { seen.push(job.data.inboxId); if (seen.length === 200) done(); }, { concurrency: 8 });
  const t1 = Date.now();
  await reg.enqueueBulk('ingest', Array.from({ length: 200 }, (_, i) => ({ data: { inboxId: 'id' + i } })));
  await all;
  console.log(config.backend, '200 jobs in', Date.now() - t1, 'ms', await reg.counts('ingest'));
  await reg.ping();
  await reg.close();
}
