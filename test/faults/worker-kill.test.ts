/**
 * Fault: `kill -9` of a worker process in the middle of a batch, during a sustained ingest of Synthea
 * patients posted to the hook of a separate `api` process; a new worker is started. BullMQ's stalled-job
 * check hands the killed worker's active jobs to the new one (after the lock expires, ≤ ~30 s).
 * Afterwards every resource version is stored and committed exactly once and the log is consistent.
 */
import { EXACTLY_ONCE, FaultRig, describeFaults, exactlyOnceView, expectedVersions, syntheaWorkload, waitFor } from './helpers.js';

describeFaults('fault: kill -9 of a worker mid-batch', () => {
  let rig: FaultRig;
  let url: string;

  beforeAll(async () => {
    rig = await FaultRig.create({ redis: true });
  }, 60_000);

  afterAll(async () => {
    await rig?.cleanup();
  }, 60_000);

  it('recovers with a new worker; every version stored and committed exactly once', async () => {
    url = (await rig.startApi()).url;
    await rig.registerSource(url, 'ehr', 'https://ehr.example/fhir');
    const first = await rig.startWorker();
    const { support, patients } = syntheaWorkload(6);

    // The organisations and practitioners the patients refer to (conditional references) first.
    await rig.postAndSettle(url, 'ehr', support);
    // Sustained ingest: patients posted one after another in the background.
    const posted: Array<Promise<number>> = [];
    const sender = (async () => {
      for (const p of patients) {
        posted.push(rig.post(url, 'ehr', p.bytes).then((r) => r.status));
        await new Promise((r) => setTimeout(r, 300));
      }
    })();

    // Kill -9 after the worker has finished some bundles, while it has another in flight.
    await first.waitForLog('first bundles ingested', () => first.logs('ingested').length >= 3, 90_000);
    await waitFor(
      'a bundle in processing',
      () => rig.sql(async (c) => (await c.query(`SELECT 1 FROM inbox WHERE state = 'processing' AND kind <> 'rejected'`)).rowCount! > 0),
      60_000,
      50,
    );
    const inFlight = await rig.sql(async (c) => (await c.query<{ id: string }>(`SELECT id FROM inbox WHERE state = 'processing'`)).rows.map((r) => r.id));
    first.kill('SIGKILL');
    const exit = await first.exited;
    expect(exit.signal).toBe('SIGKILL');
    const ingestedBeforeKill = first.logs('ingested').length;

    const second = await rig.startWorker();
    await sender;
    expect(await Promise.all(posted)).toEqual(patients.map(() => 202));

    const settled = await rig.waitSettled(150_000);
    const expected = expectedVersions('ehr', [...support, ...patients]);
    const report = await rig.invariants(expected, url);
    console.log(
      'worker-kill:',
      JSON.stringify({ settled, inFlightAtKill: inFlight.length, ingestedBeforeKill, ingestedByNewWorker: second.logs('ingested').length, versions: report.versions, checkpoints: report.checkpoints, inbox: report.inbox, deadLetters: report.deadLetters }),
    );
    expect(settled).toBe('complete');
    expect(exactlyOnceView(report)).toEqual(EXACTLY_ONCE);
    expect(report.inbox).toEqual({ done: support.length + patients.length });
    expect(report.deadLetters).toEqual({});
    // The items that were in flight at the kill were finished by the new worker.
    const states = await rig.sql(async (c) => (await c.query<{ state: string }>(`SELECT state FROM inbox WHERE id = ANY($1::uuid[])`, [inFlight])).rows.map((r) => r.state));
    expect(states.every((s) => s === 'done')).toBe(true);
  }, 175_000);

  // Was a bug (fixed: the dedup key now hashes the resource as received, src/ingest/worker.ts): without a
  // source versionId the key hashed the *normalised* resource, whose conditional references may resolve
  // differently on a re-run, so a notification re-processed after a crash between `putVersions` and the
  // inbox `done` update (the window a kill -9 can hit) stored a second, spurious version.
  it('stores a re-processed notification once even when its conditional references resolve differently the second time', async () => {
    await rig.registerSource(url, 'ehr2', 'https://ehr2.example/fhir');
    if (!rig.procs.some((p) => p.name.startsWith('worker') && p.running)) await rig.startWorker();
    const obs = {
      resourceType: 'Bundle',
      type: 'batch',
      entry: [
        {
          resource: { resourceType: 'Observation', id: 'late-ref', status: 'final', code: { text: 'x' }, performer: [{ reference: 'Organization?identifier=urn:test:org|o-1' }] },
          request: { method: 'PUT', url: 'Observation/late-ref' },
        },
      ],
    };
    const first = await rig.post(url, 'ehr2', JSON.stringify(obs));
    const org = await rig.post(url, 'ehr2', JSON.stringify({ resourceType: 'Organization', id: 'o-1', name: 'Org', identifier: [{ system: 'urn:test:org', value: 'o-1' }] }));
    const done = (id: string) => rig.sql(async (c) => (await c.query(`SELECT 1 FROM inbox WHERE id = $1 AND state = 'done'`, [id])).rowCount === 1);
    await waitFor('the observation', () => done(first.inboxId!), 60_000);
    await waitFor('the organisation', () => done(org.inboxId!), 60_000);
    // The crash window: versions committed to the store, the inbox item not yet marked done. The
    // reconciler (moved 10 minutes on) picks the item up again, as it would 5 minutes after a kill -9.
    await rig.sql((c) => c.query(`UPDATE inbox SET state = 'processing', updated_at = now() - interval '10 minutes' WHERE id = $1`, [first.inboxId]));
    await waitFor('the re-run', () => done(first.inboxId!), 60_000);
    const versions = await rig.sql(async (c) => (await c.query(`SELECT version_id FROM resource_history WHERE resource_type = 'Observation' AND source_id = 'ehr2'`)).rowCount);
    expect(versions).toBe(1);
  }, 120_000);
});
