/**
 * The store conformance suite: every Store adapter (the external PostgreSQL server and the embedded
 * one) must pass it.
 */
import type { Resource } from '@medplum/fhirtypes';
import type { ManualClock } from '../../src/platform/clock.js';
import { StoreConflictError, type PutVersionInput, type Store } from '../../src/store/index.js';

export interface StoreHarness {
  readonly store: Store;
  readonly clock: ManualClock;
}

const patient = (family: string): Resource => ({ resourceType: 'Patient', name: [{ family }] }) as Resource;

export function storeConformance(name: string, setup: () => Promise<StoreHarness>, teardown: (h: StoreHarness) => Promise<void>): void {
  describe(`Store conformance: ${name}`, () => {
    let h: StoreHarness;
    beforeAll(async () => {
      h = await setup();
    });
    afterAll(async () => {
      await teardown(h);
    });

    it('answers ping', async () => {
      await expect(h.store.ping()).resolves.toBeUndefined();
    });

    it('keeps every version, serves the current one and the history newest first', async () => {
      const r = h.store.resources;
      h.clock.set(new Date('2026-01-01T00:00:00Z'));
      const v1 = await r.putVersion({ resourceType: 'Patient', id: 'keep-all', resource: patient('Zoë Ærø 李') });
      h.clock.advance(1000);
      const v2 = await r.putVersion({ resourceType: 'Patient', id: 'keep-all', resource: patient('Second') });
      expect(v1.status).toBe('created');
      expect(v2.status).toBe('updated');
      expect(v1.version.versionId).toBe('1');
      expect(v2.version.versionId).toBe('2');
      const current = await r.readCurrent('Patient', 'keep-all');
      expect(current?.versionId).toBe('2');
      expect(current?.resource?.meta).toEqual({ versionId: '2', lastUpdated: '2026-01-01T00:00:01.000Z' });
      const first = await r.readVersion('Patient', 'keep-all', '1');
      expect((first?.resource as { name: Array<{ family: string }> }).name[0]!.family).toBe('Zoë Ærø 李');
      expect((await r.history('Patient', 'keep-all')).map((v) => v.versionId)).toEqual(['2', '1']);
      expect((await r.history('Patient', 'keep-all', { count: 1, beforeVersion: 2 })).map((v) => v.versionId)).toEqual(['1']);
    });

    it('stores the same dedup key once', async () => {
      const r = h.store.resources;
      const a = await r.putVersion({ resourceType: 'Observation', id: 'dup', resource: { resourceType: 'Observation' } as Resource, dedupKey: 'src-v1' });
      const b = await r.putVersion({ resourceType: 'Observation', id: 'dup', resource: { resourceType: 'Observation' } as Resource, dedupKey: 'src-v1' });
      expect(a.status).toBe('created');
      expect(b.status).toBe('duplicate');
      expect(b.version.versionId).toBe(a.version.versionId);
      expect(await r.history('Observation', 'dup')).toHaveLength(1);
    });

    it('stores a new resource once when the same version of it arrives several times at once', async () => {
      // Duplicate deliveries racing to create the resource: one creates it, the others find it.
      const r = h.store.resources;
      const results = await Promise.all(
        Array.from({ length: 8 }, () => r.putVersion({ resourceType: 'Observation', id: 'dup-race', resource: { resourceType: 'Observation', status: 'final' } as Resource, dedupKey: 'v1' })),
      );
      expect(results.filter((x) => x.status === 'created')).toHaveLength(1);
      expect(results.filter((x) => x.status === 'duplicate')).toHaveLength(7);
      expect(new Set(results.map((x) => x.version.versionId))).toEqual(new Set(['1']));
      expect(await r.history('Observation', 'dup-race')).toHaveLength(1);
    });

    it('never lets an older version arriving late replace a newer current one', async () => {
      const r = h.store.resources;
      const newer = await r.putVersion({ resourceType: 'Encounter', id: 'late', resource: { resourceType: 'Encounter', status: 'finished' } as Resource, dedupKey: '2', sourceTime: new Date('2026-02-02T00:00:00Z') });
      const older = await r.putVersion({ resourceType: 'Encounter', id: 'late', resource: { resourceType: 'Encounter', status: 'in-progress' } as Resource, dedupKey: '1', sourceTime: new Date('2026-02-01T00:00:00Z') });
      expect(newer.status).toBe('created');
      expect(older.status).toBe('historical');
      const current = await r.readCurrent('Encounter', 'late');
      expect((current?.resource as { status: string }).status).toBe('finished');
      expect(await r.history('Encounter', 'late')).toHaveLength(2);
    });

    it('writes a version-aware update (ifMatch) only over the version the writer holds, atomically', async () => {
      const r = h.store.resources;
      await r.putVersion({ resourceType: 'Consent', id: 'cas', resource: { resourceType: 'Consent', status: 'active' } as Resource });
      const ok = await r.putVersion({ resourceType: 'Consent', id: 'cas', resource: { resourceType: 'Consent', status: 'inactive' } as Resource, ifMatch: ['1'] });
      expect(ok.version.versionId).toBe('2');
      // Stale: nothing written, the whole batch refused, the error names the current version.
      const stale = r.putVersions([
        { resourceType: 'Consent', id: 'cas-other', resource: { resourceType: 'Consent', status: 'active' } as Resource },
        { resourceType: 'Consent', id: 'cas', deleted: true, ifMatch: ['1'] },
      ]);
      await expect(stale).rejects.toBeInstanceOf(StoreConflictError);
      await expect(stale).rejects.toMatchObject({ resourceType: 'Consent', id: 'cas', current: '2' });
      expect((await r.readCurrent('Consent', 'cas'))?.versionId).toBe('2');
      expect(await r.readCurrent('Consent', 'cas-other')).toBeUndefined();
      // Any of several held versions; a resource with no version yet matches none.
      expect((await r.putVersion({ resourceType: 'Consent', id: 'cas', deleted: true, ifMatch: ['1', '2'] })).version.versionId).toBe('3');
      await expect(r.putVersion({ resourceType: 'Consent', id: 'cas-new', resource: { resourceType: 'Consent' } as Resource, ifMatch: ['1'] })).rejects.toMatchObject({ current: undefined });
      // Two writers holding the same version: exactly one wins.
      await r.putVersion({ resourceType: 'Consent', id: 'cas-race', resource: { resourceType: 'Consent', status: 'active' } as Resource });
      const race = await Promise.allSettled(
        ['inactive', 'rejected'].map((status) => r.putVersion({ resourceType: 'Consent', id: 'cas-race', resource: { resourceType: 'Consent', status } as Resource, ifMatch: ['1'] })),
      );
      expect(race.filter((x) => x.status === 'fulfilled')).toHaveLength(1);
      expect(race.filter((x) => x.status === 'rejected' && x.reason instanceof StoreConflictError)).toHaveLength(1);
      expect(await r.history('Consent', 'cas-race')).toHaveLength(2);
    });

    it('records deletes as versions', async () => {
      const r = h.store.resources;
      await r.putVersion({ resourceType: 'Condition', id: 'gone', resource: { resourceType: 'Condition' } as Resource });
      const del = await r.putVersion({ resourceType: 'Condition', id: 'gone', deleted: true });
      expect(del.version.deleted).toBe(true);
      expect(del.version.resource).toBeUndefined();
      expect((await r.readCurrent('Condition', 'gone'))?.deleted).toBe(true);
      expect(await r.history('Condition', 'gone')).toHaveLength(2);
    });

    it('gives dense, unique version numbers under concurrent writers', async () => {
      const r = h.store.resources;
      const results = await Promise.all(
        Array.from({ length: 20 }, (_, i) => r.putVersion({ resourceType: 'Patient', id: 'concurrent', resource: patient(`n${i}`), dedupKey: `k${i}` })),
      );
      const versions = results.map((x) => Number(x.version.versionId)).sort((a, b) => a - b);
      expect(versions).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    });

    it('answers undefined for unknown resources and malformed version ids', async () => {
      const r = h.store.resources;
      expect(await r.readCurrent('Patient', 'nope')).toBeUndefined();
      expect(await r.readVersion('Patient', 'keep-all', 'abc')).toBeUndefined();
      expect(await r.readVersion('Patient', 'keep-all', "1' OR '1'='1")).toBeUndefined();
    });

    it('counts resources and versions by type', async () => {
      const counts = await h.store.resources.countsByType();
      const patients = counts.find((c) => c.resourceType === 'Patient');
      expect(patients).toEqual({ resourceType: 'Patient', resources: 2, versions: 22 });
    });

    it('records inbox items durably and once per dedup key, keeping raw bytes', async () => {
      const inbox = h.store.inbox;
      const body = Buffer.from('{"resourceType":"Patient","name":[{"family":"Mü\u00dfig"}]}', 'utf8');
      const a = await inbox.receive({ sourceId: 'ehr-1', kind: 'rest-hook', contentType: 'application/fhir+json', body, dedupKey: 'Patient/1/_history/3' });
      const b = await inbox.receive({ sourceId: 'ehr-1', kind: 'rest-hook', contentType: 'application/fhir+json', body, dedupKey: 'Patient/1/_history/3' });
      const c = await inbox.receive({ sourceId: 'ehr-2', kind: 'rest-hook', body, dedupKey: 'Patient/1/_history/3' });
      expect(a.duplicate).toBe(false);
      expect(b).toEqual({ id: a.id, duplicate: true });
      expect(c.id).not.toBe(a.id);
      // Time-ordered ids (UUIDv7): each new item's key lands at the right edge of the primary key.
      expect([a.id, c.id]).toEqual([expect.stringMatching(/^[0-9a-f]{8}-[0-9a-f]{4}-7/), expect.stringMatching(/^[0-9a-f]{8}-[0-9a-f]{4}-7/)]);
      expect(c.id > a.id).toBe(true);
      const item = await inbox.get(a.id);
      expect(item?.body.equals(body)).toBe(true);
      expect(item?.bodySha256).toMatch(/^[0-9a-f]{64}$/);
      expect(item?.state).toBe('pending');
      expect(await inbox.get('not-a-uuid')).toBeUndefined();
    });

    it('tracks inbox stage and state, and lists unfinished items for replay', async () => {
      const inbox = h.store.inbox;
      const { id } = await inbox.receive({ sourceId: 'ehr-3', kind: 'bundle', body: Buffer.from('{}') });
      await inbox.update(id, { stage: 'normalize', state: 'processing', attempt: true });
      h.clock.advance(60_000);
      const unfinished = await inbox.listUnfinished({ updatedBefore: h.clock.now(), limit: 1000 });
      expect(unfinished.map((u) => u.id)).toContain(id);
      await inbox.update(id, { stage: 'stored', state: 'done', outcome: { ok: true } });
      const item = await inbox.get(id);
      expect(item).toMatchObject({ stage: 'stored', state: 'done', attempts: 1, outcome: { ok: true } });
      expect((await inbox.listUnfinished({ updatedBefore: h.clock.now(), limit: 1000 })).map((u) => u.id)).not.toContain(id);
      const counts = await inbox.countsByStageAndState();
      expect(counts).toContainEqual({ stage: 'stored', state: 'done', count: 1 });
    });

    it('claims an inbox item for an attempt in one step, and never a done or dead one', async () => {
      const inbox = h.store.inbox;
      const { id } = await inbox.receive({ sourceId: 'ehr-4', kind: 'rest-hook', body: Buffer.from('{"resourceType":"Patient"}') });
      const first = await inbox.claim(id, 'fetch');
      expect(first).toMatchObject({ id, stage: 'fetch', state: 'processing', attempts: 1, sourceId: 'ehr-4' });
      expect(first?.body.toString()).toBe('{"resourceType":"Patient"}');
      // A retry after a failure claims it again and counts the attempt.
      await inbox.update(id, { state: 'failed' });
      expect(await inbox.claim(id, 'fetch')).toMatchObject({ state: 'processing', attempts: 2 });
      // A progress mark that need not be durable still applies.
      await inbox.update(id, { stage: 'store', state: 'processing' }, { durable: false });
      expect(await inbox.get(id)).toMatchObject({ stage: 'store', state: 'processing', attempts: 2 });
      await inbox.update(id, { stage: 'stored', state: 'done' });
      expect(await inbox.claim(id, 'fetch')).toBeUndefined();
      expect(await inbox.get(id)).toMatchObject({ stage: 'stored', state: 'done', attempts: 2 });
      // A slower second run of the same item cannot turn it back into an unfinished or failed one.
      await inbox.update(id, { stage: 'normalize', state: 'processing' }, { durable: false });
      await inbox.update(id, { state: 'failed', outcome: { note: 'late attempt' }, attempt: true });
      await inbox.update(id, { state: 'dead' });
      expect(await inbox.get(id)).toMatchObject({ stage: 'stored', state: 'done', attempts: 2, outcome: null });
      const dead = await inbox.receive({ sourceId: 'ehr-4', kind: 'rest-hook', body: Buffer.from('x') });
      await inbox.update(dead.id, { state: 'dead' });
      expect(await inbox.claim(dead.id, 'fetch')).toBeUndefined();
      await inbox.update(dead.id, { stage: 'store', state: 'processing' });
      expect(await inbox.get(dead.id)).toMatchObject({ state: 'dead' });
      // Reopening (an operator's replay) is the way out of a finished state.
      await inbox.update(dead.id, { stage: 'received', state: 'pending' });
      expect(await inbox.claim(dead.id, 'fetch')).toMatchObject({ stage: 'fetch', state: 'processing' });
      expect(await inbox.claim('00000000-0000-4000-8000-000000000000', 'fetch')).toBeUndefined();
      expect(await inbox.claim('not-a-uuid', 'fetch')).toBeUndefined();
    });

    it('finds when the latest finished item of a source and kind was received (ping catch-up)', async () => {
      const inbox = h.store.inbox;
      const ping = async (state: 'done' | 'failed', outcome?: unknown): Promise<Date> => {
        const { id } = await inbox.receive({ sourceId: 'ehr-6', kind: 'ping', body: Buffer.alloc(0) });
        await inbox.update(id, { stage: 'stored', state, ...(outcome !== undefined ? { outcome } : {}) });
        return (await inbox.get(id))!.receivedAt;
      };
      const later = new Date(Date.now() + 60_000);
      expect(await inbox.latestDone('ehr-6', 'ping', later)).toBeUndefined();
      const first = await ping('done', { stored: 1 });
      await ping('failed');
      await ping('done', { stored: 9, incomplete: true });
      await inbox.receive({ sourceId: 'ehr-7', kind: 'ping', body: Buffer.alloc(0) });
      expect(await inbox.latestDone('ehr-6', 'ping', later)).toEqual(first);
      expect(await inbox.latestDone('ehr-6', 'ping', first)).toBeUndefined();
      expect(await inbox.latestDone('ehr-6', 'rest-hook', later)).toBeUndefined();
    });

    it('marks an inbox item done in the transaction that stores its versions, with an outcome from the results', async () => {
      const { id } = await h.store.inbox.receive({ sourceId: 'ehr-5', kind: 'bundle', body: Buffer.from('{}') });
      await h.store.inbox.claim(id, 'fetch');
      const input = (pid: string): PutVersionInput => ({ resourceType: 'Patient', id: pid, resource: { resourceType: 'Patient', gender: 'other' } as Resource, dedupKey: 'v:1' });
      const results = await h.store.resources.putVersions([input('done-1'), input('done-2')], {
        inboxDone: { id, outcome: (rs) => ({ stored: rs.filter((r) => r.status === 'created').length }) },
      });
      expect(results.map((r) => r.status)).toEqual(['created', 'created']);
      expect(await h.store.inbox.get(id)).toMatchObject({ stage: 'stored', state: 'done', outcome: { stored: 2 } });
      // Nothing to store still finishes the item.
      const empty = await h.store.inbox.receive({ sourceId: 'ehr-5', kind: 'bundle', body: Buffer.from('[]') });
      expect(await h.store.resources.putVersions([], { inboxDone: { id: empty.id, outcome: (rs) => ({ stored: rs.length }) } })).toEqual([]);
      expect(await h.store.inbox.get(empty.id)).toMatchObject({ state: 'done', outcome: { stored: 0 } });
      // A failing batch rolls the completion back with the versions.
      const failing = await h.store.inbox.receive({ sourceId: 'ehr-5', kind: 'bundle', body: Buffer.from('{"x":1}') });
      await h.store.inbox.claim(failing.id, 'fetch');
      await expect(
        h.store.resources.putVersions([input('done-3')], {
          inboxDone: {
            id: failing.id,
            outcome: () => {
              throw new Error('outcome failed');
            },
          },
        }),
      ).rejects.toThrow('outcome failed');
      expect(await h.store.inbox.get(failing.id)).toMatchObject({ state: 'processing' });
      expect(await h.store.resources.readCurrent('Patient', 'done-3')).toBeUndefined();
    });

    it('finds a subscription gap without recording it, and records numbers only upwards', async () => {
      const subs = h.store.subscriptions;
      const key = { sourceId: 'ehr-gap', subscription: 'https://ehr.example/Subscription/s1' };
      // The first numbers of a subscription reveal no gap.
      expect(await subs.findGap({ ...key, eventNumbers: [5] })).toBeUndefined();
      await subs.recordEvents({ ...key, eventNumbers: [5] });
      // 6 and 7 missing: found, and found again until recorded (a failed notification retried).
      expect(await subs.findGap({ ...key, eventNumbers: [8, 9] })).toEqual({ from: 6, to: 7 });
      expect(await subs.findGap({ ...key, eventNumbers: [9, 8] })).toEqual({ from: 6, to: 7 });
      expect(await subs.findGap({ ...key, eventNumbers: [6] })).toBeUndefined();
      expect(await subs.findGap({ ...key, eventNumbers: [4, 5] })).toBeUndefined(); // a replay
      const detectedAt = new Date('2026-01-01T00:00:00Z');
      await subs.recordEvents({ ...key, eventNumbers: [8, 9], gap: { from: 6, to: 7, detectedAt, catchUp: '$events' } });
      // A late notification never lowers the last number.
      await subs.recordEvents({ ...key, eventNumbers: [6] });
      expect(await subs.findGap({ ...key, eventNumbers: [10] })).toBeUndefined();
      const [status] = (await subs.list('ehr-gap')).filter((x) => x.subscription === key.subscription);
      expect(status).toMatchObject({ lastEventNumber: 9, gaps: [{ from: 6, to: 7, detectedAt: detectedAt.toISOString(), catchUp: '$events' }] });
      // More event numbers than a call's arguments can hold (Math.min(...numbers) overflowed the stack).
      const many = Array.from({ length: 500_000 }, (_, i) => 12 + i);
      expect(await subs.findGap({ ...key, eventNumbers: many })).toEqual({ from: 10, to: 11 });
      await subs.recordEvents({ ...key, eventNumbers: many });
      expect((await subs.list('ehr-gap')).find((x) => x.subscription === key.subscription)?.lastEventNumber).toBe(12 + 499_999);
    });

    it('keeps the counts handshakes and heartbeats report: a baseline, missed events, restarts of the numbering', async () => {
      const subs = h.store.subscriptions;
      const key = { sourceId: 'ehr-count', subscription: 'https://ehr.example/Subscription/c1' };
      const status = async () => (await subs.list('ehr-count')).find((x) => x.subscription === key.subscription)!;
      // A handshake's count is the baseline: later numbers are checked against it.
      expect(await subs.touch({ ...key, reported: { events: 0, by: 'handshake' } })).toEqual({ lastEventNumber: 0 });
      expect(await subs.findGap({ ...key, eventNumbers: [3] })).toEqual({ from: 1, to: 2 });
      await subs.recordEvents({ ...key, eventNumbers: [1, 2, 3] });
      // A heartbeat counting more events than were received: the last number stays (the caller sees 5 > 3).
      expect(await subs.touch({ ...key, heartbeat: true, reported: { events: 5, by: 'heartbeat' } })).toEqual({ lastEventNumber: 3 });
      expect(await subs.findGap({ ...key, eventNumbers: [6] })).toEqual({ from: 4, to: 5 });
      await subs.recordEvents({ ...key, eventNumbers: [5] });
      expect(await subs.touch({ ...key, heartbeat: true, reported: { events: 5, by: 'heartbeat' } })).toEqual({ lastEventNumber: 5 });
      // A heartbeat overtaken by events in flight (6 < 7, but not below the previous report, 5): not a restart.
      await subs.recordEvents({ ...key, eventNumbers: [6, 7] });
      expect(await subs.touch({ ...key, heartbeat: true, reported: { events: 6, by: 'heartbeat' } })).toEqual({ lastEventNumber: 7 });
      expect((await status()).restarts).toEqual([]);
      // A heartbeat reporting fewer events than the previous report: the numbering started again.
      expect(await subs.touch({ ...key, heartbeat: true, reported: { events: 2, by: 'heartbeat' } })).toEqual({ lastEventNumber: 2 });
      expect(await subs.findGap({ ...key, eventNumbers: [4] })).toEqual({ from: 3, to: 3 });
      await subs.recordEvents({ ...key, eventNumbers: [3, 4] });
      // A handshake below the last number: a restart too (a re-created or re-activated Subscription).
      expect(await subs.touch({ ...key, reported: { events: 0, by: 'handshake' } })).toEqual({ lastEventNumber: 0 });
      const s = await status();
      expect(s).toMatchObject({ lastEventNumber: 0, reportedEvents: 0 });
      expect(s.restarts).toEqual([
        expect.objectContaining({ from: 7, to: 2, by: 'heartbeat' }),
        expect.objectContaining({ from: 4, to: 0, by: 'handshake' }),
      ]);
      // Touches without a count (events) change no number.
      expect(await subs.touch({ ...key })).toEqual({ lastEventNumber: 0 });
      expect(await subs.touch({ sourceId: 'ehr-count', subscription: 'https://ehr.example/Subscription/c2' })).toEqual({ lastEventNumber: undefined });
    });
  });
}
