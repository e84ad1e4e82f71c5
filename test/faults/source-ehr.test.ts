/**
 * Fault: the source EHR (test/helpers/fake-ehr.ts behind a TCP proxy, so it can be taken down and
 * brought back on the same address) is down, then slow, then throttling, while id-only notifications
 * keep arriving and must be fetched back. The source client retries inline; the queue retries with
 * backoff (JOB_ATTEMPTS, JOB_BACKOFF_MS). Nothing is dead-lettered and every resource is stored once.
 */
import type { Resource } from '@medplum/fhirtypes';
import { anchorId } from '../../src/normalize/index.js';
import { buildNotificationBundle, startFakeEhr, type FakeEhr } from '../helpers/fake-ehr.js';
import { EXACTLY_ONCE, FaultRig, TcpProxy, describeFaults, exactlyOnceView, sleep } from './helpers.js';

describeFaults('fault: source EHR down or slow for id-only fetch-backs', () => {
  let rig: FaultRig;
  let ehr: FakeEhr;
  let proxy: TcpProxy;

  beforeAll(async () => {
    rig = await FaultRig.create({ redis: true });
    ehr = await startFakeEhr({ capability: 'backport' });
    proxy = await TcpProxy.start(Number(new URL(ehr.origin).port));
  }, 60_000);

  afterAll(async () => {
    await proxy?.down();
    await ehr?.close();
    await rig?.cleanup();
  }, 60_000);

  it('retries fetch-backs through an outage, slowness and throttling; stores each resource once', async () => {
    const { url } = await rig.startApi();
    const baseUrl = `${proxy.url}/fhir`;
    await rig.registerSource(url, 'live', baseUrl);
    const worker = await rig.startWorker();
    const topic = 'http://example.org/topics/encounter-change';
    const subscriptionUrl = `${baseUrl}/Subscription/sub-faults`;
    ehr.seed({ resourceType: 'Subscription', id: 'sub-faults', status: 'active', reason: 'faults', criteria: topic, channel: { type: 'rest-hook', endpoint: `${url}/hooks/live` } });

    const expected = new Map<string, number>();
    let n = 0;
    const statuses: number[] = [];
    /** Seeds `count` encounters on the EHR and sends one id-only notification for them. */
    const notify = async (count: number): Promise<void> => {
      const events = [];
      for (let i = 0; i < count; i++) {
        n += 1;
        const enc = ehr.seed({ resourceType: 'Encounter', id: `enc-${n}`, status: 'finished', class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' }, subject: { display: `patient ${n}` } } as Resource);
        const eventNumber = ehr.recordEvent('sub-faults', enc);
        events.push({ eventNumber, timestamp: new Date().toISOString(), focus: enc });
        expected.set(`Encounter/${anchorId('live', 'Encounter', enc.id)}`, 1);
      }
      const bundle = buildNotificationBundle({ subscriptionUrl, topic, type: 'event-notification', eventsSinceSubscriptionStart: n, content: 'id-only', baseUrl, events });
      statuses.push((await rig.post(url, 'live', JSON.stringify(bundle))).status);
    };

    for (let i = 0; i < 5; i++) await notify(4);
    // Down: connection refused for 12 s while notifications keep coming.
    await proxy.down();
    for (let i = 0; i < 6; i++) {
      await notify(4);
      await sleep(2_000);
    }
    await proxy.up();
    // Slow: every request takes 2.5 s for a while.
    ehr.slowNext(30, 2_500);
    for (let i = 0; i < 4; i++) await notify(4);
    // Throttled: 429 with Retry-After: 1.
    await sleep(3_000);
    ehr.throttleNext(15, 1);
    for (let i = 0; i < 4; i++) await notify(4);

    const settled = await rig.waitSettled(150_000);
    const report = await rig.invariants(expected, url);
    const failedAttempts = worker.logs('job attempt failed').filter((r) => r.queue === 'ingest').length;
    // Items whose slow runs outlived RECONCILE_STALE_MS were run a second time, concurrently: harmless.
    const reEnqueued = worker.logs('reconciler re-enqueued inbox items with no progress').reduce((sum, r) => sum + Number(r.count ?? 0), 0);
    console.log('source-ehr:', JSON.stringify({ settled, notifications: statuses.length, resources: expected.size, failedIngestAttempts: failedAttempts, reEnqueued, versions: report.versions, inbox: report.inbox, deadLetters: report.deadLetters }));
    expect(statuses.every((s) => s === 202)).toBe(true);
    expect(settled).toBe('complete');
    expect(exactlyOnceView(report)).toEqual(EXACTLY_ONCE);
    expect(report.deadLetters).toEqual({});
    expect(report.inbox).toEqual({ done: statuses.length });
    // The outage was felt (jobs failed and were retried), not skipped.
    expect(failedAttempts).toBeGreaterThan(0);
  }, 175_000);
});
