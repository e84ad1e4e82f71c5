/**
 * Scale-out: three `fhir-anchor worker` processes against one Redis and one PostgreSQL (private ones),
 * one `api` process taking notifications. Work is shared (each worker logs `ingested` lines with its
 * own pid at LOG_LEVEL=debug), and every version is still stored and committed exactly once, with
 * the sequencers of three processes appending to one log (dense leaves, consistent checkpoints).
 */
import { EXACTLY_ONCE, FaultRig, describeFaults, exactlyOnceView, expectedVersions, syntheaWorkload } from '../faults/helpers.js';

describeFaults('scale-out: three worker processes', () => {
  let rig: FaultRig;

  beforeAll(async () => {
    // One job at a time per worker, so that sharing shows with a handful of large bundles.
    rig = await FaultRig.create({ redis: true, env: { WORKER_CONCURRENCY: '1' } });
  }, 60_000);

  afterAll(async () => {
    await rig?.cleanup();
  }, 60_000);

  it('shares ingest work between the workers and stays exactly-once', async () => {
    const { url } = await rig.startApi();
    await rig.registerSource(url, 'ehr', 'https://ehr.example/fhir');
    const workers = await Promise.all([rig.startWorker(), rig.startWorker(), rig.startWorker()]);
    const { support, patients } = syntheaWorkload(6);
    await rig.postAndSettle(url, 'ehr', support);
    for (const p of patients) expect((await rig.post(url, 'ehr', p.bytes)).status).toBe(202);

    const settled = await rig.waitSettled(150_000);
    const report = await rig.invariants(expectedVersions('ehr', [...support, ...patients]), url);
    const perWorker = workers.map((w) => ({ pid: w.pid, ingested: w.logs('ingested').filter((r) => r.pid === w.pid).length }));
    console.log('scale-out:', JSON.stringify({ settled, perWorker, versions: report.versions, checkpoints: report.checkpoints, inbox: report.inbox }));

    expect(new Set(workers.map((w) => w.pid)).size).toBe(3);
    for (const w of perWorker) expect(w.ingested).toBeGreaterThan(0);
    expect(perWorker.reduce((a, w) => a + w.ingested, 0)).toBe(support.length + patients.length);
    expect(settled).toBe('complete');
    expect(exactlyOnceView(report)).toEqual(EXACTLY_ONCE);
    expect(report.deadLetters).toEqual({});
  }, 175_000);
});
