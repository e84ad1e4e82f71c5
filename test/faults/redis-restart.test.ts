/**
 * Fault: the Redis behind BullMQ (a private redis-server without persistence) is killed mid-run and
 * comes back empty. Every queued job is lost; PostgreSQL is the record. The reconciler (every
 * RECONCILE_INTERVAL_MS in each worker) re-enqueues the inbox items that are not done.
 *
 * What this file pins down (see docs/scaling.md):
 * - the reconciler only picks items untouched for RECONCILE_STALE_MS (default 5 min), so the test moves
 *   those items' `updated_at` back instead of waiting 5 minutes;
 * - versions whose `integrity` jobs were lost with Redis are still committed exactly once (the
 *   integrity reconciler; versions are normally committed in the transaction that stores them).
 */
import { Queue } from 'bullmq';
import { EXACTLY_ONCE, FaultRig, describeFaults, exactlyOnceView, expectedVersions, sleep, syntheaWorkload, waitFor } from './helpers.js';

describeFaults('fault: Redis restarted empty mid-run', () => {
  let rig: FaultRig;
  let url: string;

  beforeAll(async () => {
    rig = await FaultRig.create({ redis: true });
    url = (await rig.startApi()).url;
    await rig.registerSource(url, 'ehr', 'https://ehr.example/fhir');
    await rig.registerSource(url, 'side', 'https://side.example/fhir');
  }, 120_000);

  afterAll(async () => {
    await rig?.cleanup();
  }, 60_000);

  it('loses no notification: the reconciler re-enqueues from the PostgreSQL inbox; storage and log stay exactly-once', async () => {
    const worker = await rig.startWorker();
    const { support, patients } = syntheaWorkload(6);
    // The organisations and practitioners the patients refer to (conditional references) first.
    await rig.postAndSettle(url, 'ehr', support);
    const statuses: number[] = [];
    const sender = (async () => {
      for (const p of patients) {
        statuses.push((await rig.post(url, 'ehr', p.bytes)).status);
        await sleep(400);
      }
    })();

    await worker.waitForLog('some bundles ingested', () => worker.logs('ingested').length >= 3, 90_000);
    // Redis dies while jobs are queued and in flight, stays down 5 s, and returns empty.
    const before = await rig.inboxStates();
    await rig.redis!.restartEmpty(5_000);
    await sender;
    // Hooks answered during the outage: the inbox write is what is acknowledged, the enqueue is best-effort.
    expect(statuses).toEqual(patients.map(() => 202));

    // Without help, the lost items wait RECONCILE_STALE_MS (5 min) before the reconciler picks them.
    await sleep(6_000);
    const stuck = await rig.sql(async (c) => (await c.query<{ n: number }>(`SELECT count(*)::int AS n FROM inbox WHERE state NOT IN ('done', 'dead')`)).rows[0]!.n);
    const reconciledBefore = worker.logs('reconciler re-enqueued inbox items with no progress').length;
    // Time travel: make the unfinished items look 10 minutes old so the running reconciler acts now.
    await rig.sql((c) => c.query(`UPDATE inbox SET updated_at = updated_at - interval '10 minutes' WHERE state NOT IN ('done', 'dead')`));
    if (stuck > 0) await worker.waitForLog('reconciler pass', (r) => r.msg === 'reconciler re-enqueued inbox items with no progress', 30_000);

    const settled = await rig.waitSettled(120_000);
    const report = await rig.invariants(expectedVersions('ehr', [...support, ...patients]), url);
    console.log(
      'redis-restart:',
      JSON.stringify({
        settled,
        inboxAtRestart: before,
        unfinishedAfterRestart: stuck,
        reconciledBeforeTimeTravel: reconciledBefore,
        reconcilerPasses: worker.logs('reconciler re-enqueued inbox items with no progress').map((r) => r.count),
        versions: report.versions,
        uncommitted: report.uncommitted.length,
        checkpoints: report.checkpoints,
        inbox: report.inbox,
        deadLetters: report.deadLetters,
      }),
    );
    const integrity = new Queue('integrity', { connection: { host: '127.0.0.1', port: rig.redis!.port, maxRetriesPerRequest: 1 }, prefix: rig.prefix });
    const integrityCounts = await integrity.getJobCounts('waiting', 'active', 'delayed', 'failed', 'completed');
    await integrity.close();
    console.log('redis-restart: integrity queue after settling', JSON.stringify(integrityCounts), 'worker warnings', JSON.stringify(worker.records.filter((r) => (r.level ?? 0) >= 40).map((r) => `${String(r.msg)} ${String(r.err ?? '')} ${String(r.queue ?? '')}`).slice(-15)));
    if (report.wrongVersionCounts.length > 0) {
      console.log('redis-restart: a resource stored twice:', JSON.stringify(await rig.versionDiff(report.wrongVersionCounts[0]!.split(':')[0]!)).slice(0, 3000));
    }
    expect(report.inbox).toEqual({ done: support.length + patients.length });
    expect(report.deadLetters).toEqual({});
    // Storage is exactly-once, and what is in the log is dense and consistent.
    // Every version is committed too: the store writes each version's commitment in the transaction that
    // stores it, so no commitment depends on a job Redis could lose.
    expect(exactlyOnceView(report)).toEqual(EXACTLY_ONCE);
  }, 175_000);

  // Was a bug (fixed: integrity reconciler in src/runtime.ts; duplicates re-enqueued in src/ingest/worker.ts):
  // integrity jobs lost with Redis were never re-created. The ingest job that stored the versions is
  // `done`, so the inbox reconciler skips it, and a re-run of an ingest job sees its versions as
  // `duplicate`. Still relevant for versions stored without a committer (before an upgrade).
  it('commits versions whose integrity jobs were lost with Redis ', async () => {
    const worker = rig.procs.find((p) => p.name.startsWith('worker') && p.running)!;
    // Hold integrity jobs in Redis (global pause) so they are there when Redis dies.
    const integrity = new Queue('integrity', { connection: { host: '127.0.0.1', port: rig.redis!.port, maxRetriesPerRequest: 1 }, prefix: rig.prefix });
    try {
      await integrity.pause();
    } finally {
      await integrity.close();
    }
    const orgs = Array.from({ length: 5 }, (_, i) => ({ resource: { resourceType: 'Organization', id: `lost-${i}`, name: `Lost ${i}` }, request: { method: 'PUT', url: `Organization/lost-${i}` } }));
    const posted = await rig.post(url, 'side', JSON.stringify({ resourceType: 'Bundle', type: 'batch', entry: orgs }));
    expect(posted.status).toBe(202);
    await waitFor('the side bundle to be stored', () => rig.sql(async (c) => (await c.query(`SELECT 1 FROM inbox WHERE id = $1 AND state = 'done'`, [posted.inboxId])).rowCount === 1), 60_000);
    await rig.redis!.restartEmpty();
    expect(worker.running).toBe(true);
    // The reconciler (every 2 s) re-enqueues versions with no commitment once they are RECONCILE_STALE_MS
    // (15 s) old; give it and the sequencer time.
    await sleep(35_000);
    const uncommitted = await rig.sql(
      async (c) =>
        (
          await c.query<{ id: string }>(
            `SELECT h.id FROM resource_history h LEFT JOIN commitment c USING (resource_type, id, version_id) WHERE h.source_id = 'side' AND c.salt IS NULL`,
          )
        ).rows,
    );
    expect(uncommitted).toEqual([]);
  }, 120_000);
});
