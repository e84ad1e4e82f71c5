/**
 * The queue conformance suite: both BullMQ backends (Redis and PostgreSQL) must pass it.
 */
import { TerminalJobError, type QueueRegistry } from '../../src/queue/index.js';

export interface QueueHarness {
  readonly registry: QueueRegistry;
  /** A second registry on the same namespace (another process, in production). */
  readonly second: QueueRegistry;
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

async function waitFor(predicate: () => Promise<boolean> | boolean, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 25));
  }
}

export function queueConformance(name: string, setup: () => Promise<QueueHarness>, teardown: (h: QueueHarness) => Promise<void>): void {
  describe(`Queue conformance: ${name}`, () => {
    let h: QueueHarness;
    beforeEach(async () => {
      h = await setup();
    });
    afterEach(async () => {
      await teardown(h);
    });

    it('answers ping', async () => {
      await expect(h.registry.ping()).resolves.toBeUndefined();
    });

    it('delivers every job exactly once across two workers in two registries', async () => {
      const seen = new Map<string, number>();
      const all = deferred();
      const n = 60;
      const processor = async (job: { data: { inboxId: string } }): Promise<void> => {
        seen.set(job.data.inboxId, (seen.get(job.data.inboxId) ?? 0) + 1);
        if ([...seen.values()].reduce((a, b) => a + b, 0) >= n) all.resolve();
      };
      h.registry.work('ingest', processor, { concurrency: 4 });
      h.second.work('ingest', processor, { concurrency: 4 });
      await h.registry.enqueueBulk('ingest', Array.from({ length: n }, (_, i) => ({ data: { inboxId: `item-${i}` } })));
      await all.promise;
      await new Promise((r) => setTimeout(r, 200));
      expect(seen.size).toBe(n);
      expect([...seen.values()].every((c) => c === 1)).toBe(true);
    });

    it('deduplicates by job id', async () => {
      await h.registry.enqueue('integrity', { resourceType: 'Patient', id: 'p', versionId: '1' }, { jobId: 'Patient-p-1' });
      await h.registry.enqueue('integrity', { resourceType: 'Patient', id: 'p', versionId: '1' }, { jobId: 'Patient-p-1' });
      const counts = await h.registry.counts('integrity');
      expect(counts.waiting + counts.prioritized).toBe(1);
    });

    it('re-runs a job only when none for it is queued, replacing a finished re-run', async () => {
      const rerun = (ids: string[]) => h.registry.rerun('ingest', ids.map((id) => ({ data: { inboxId: id }, jobId: `${id}.rerun`, liveIds: [id] })));
      // `a` still has its first job waiting; `b`'s was lost.
      await h.registry.enqueue('ingest', { inboxId: 'a' }, { jobId: 'a' });
      expect(await rerun(['a', 'b'])).toBe(1);
      // However often it is asked (another reconciler pass, another process), nothing more is queued.
      expect(await rerun(['a', 'b'])).toBe(0);
      expect(await h.second.rerun('ingest', [{ data: { inboxId: 'b' }, jobId: 'b.rerun', liveIds: ['b'] }])).toBe(0);
      expect((await h.registry.counts('ingest')).waiting).toBe(2);
      const seen: string[] = [];
      h.registry.work('ingest', async (job) => void seen.push(job.data.inboxId), { concurrency: 2 });
      await waitFor(() => seen.length === 2);
      // Both ran and finished: each can be re-run once more (b's finished re-run is replaced).
      await waitFor(async () => (await h.registry.counts('ingest')).completed === 2);
      expect(await rerun(['a', 'b'])).toBe(2);
      await waitFor(() => seen.length === 4);
      await new Promise((r) => setTimeout(r, 200));
      expect(seen.sort()).toEqual(['a', 'a', 'b', 'b']);
      await expect(h.registry.rerun('ingest', [{ data: { inboxId: 'x', body: '{"resourceType":"Patient"}'.repeat(20) } as never, jobId: 'x.rerun' }])).rejects.toThrow(TypeError);
    });

    it('retries transient failures with backoff and then succeeds', async () => {
      let attempts = 0;
      const done = deferred();
      h.registry.work(
        'ingest',
        async (job) => {
          attempts += 1;
          if (job.attemptsMade < 1) throw new Error('transient');
          done.resolve();
        },
        { concurrency: 1 },
      );
      await h.registry.enqueue('ingest', { inboxId: 'retry-me' });
      await done.promise;
      expect(attempts).toBe(2);
    });

    it('fails terminal errors at once, without retries', async () => {
      let attempts = 0;
      h.registry.work(
        'ingest',
        async () => {
          attempts += 1;
          throw new TerminalJobError('bad input');
        },
        { concurrency: 1 },
      );
      await h.registry.enqueue('ingest', { inboxId: 'bad' });
      await waitFor(async () => (await h.registry.counts('ingest')).failed === 1);
      await new Promise((r) => setTimeout(r, 1500));
      expect(attempts).toBe(1);
    });

    it('refuses job data that is not ids and versions', async () => {
      const body = { inboxId: 'x', resource: { resourceType: 'Patient', name: [{ family: 'Doe' }] } } as unknown as { inboxId: string };
      await expect(h.registry.enqueue('ingest', body)).rejects.toThrow(/ids and versions only/);
      await expect(h.registry.enqueue('ingest', { inboxId: 'x'.repeat(10_000) })).rejects.toThrow(/ids and versions only/);
    });

    it('closes workers before queues and lets the active job finish', async () => {
      const started = deferred();
      let finished = false;
      h.registry.work(
        'ingest',
        async () => {
          started.resolve();
          await new Promise((r) => setTimeout(r, 300));
          finished = true;
        },
        { concurrency: 1 },
      );
      await h.registry.enqueue('ingest', { inboxId: 'slow' });
      await started.promise;
      await h.registry.close();
      expect(finished).toBe(true);
      // Closing twice is harmless.
      await h.registry.close();
    });
  });
}
