/**
 * The store with a committer (as the runtime opens it): every new version's pending integrity
 * commitment is written in the same transaction as the version, and it opens to the version exactly
 * as a reader gets it back. Also the one-statement `createResources` path used for AuditEvents.
 */
import type { AuditEvent, Observation } from '@medplum/fhirtypes';
import { committedValue, versionCommitter } from '../../src/integrity/index.js';
import { verifyCommitment } from '../../src/integrity/commitment.js';
import { ManualClock } from '../../src/platform/clock.js';
import { openIntegrityStore, type PgIntegrityStore } from '../../src/store/integrity-store.js';
import { openDatabase, type Database, type StoredVersion } from '../../src/store/index.js';
import { TEST_DATABASE_URL, dropSchema, randomNamespace, silentLogger } from '../helpers/env.js';

const clock = new ManualClock(new Date('2026-03-01T10:00:00.123Z'));
let schema: string;
let db: Database;
let plain: Database;
let integrity: PgIntegrityStore;

beforeAll(async () => {
  schema = randomNamespace('tc');
  const config = { database: { kind: 'external' as const, url: TEST_DATABASE_URL }, databaseSchema: schema, databasePoolMax: 4 };
  db = await openDatabase({ config, logger: silentLogger, clock, committer: versionCommitter() });
  plain = await openDatabase({ config, logger: silentLogger, clock });
  integrity = openIntegrityStore({ connectionString: TEST_DATABASE_URL, schema });
});

afterAll(async () => {
  await integrity?.close();
  await plain?.close();
  await db?.close();
  await dropSchema(schema);
});

const observation = (id: string, value: number, patient = 'p1'): Observation => ({
  resourceType: 'Observation',
  id,
  status: 'final',
  code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }], text: 'Heart rate — Herzfrequenz' },
  subject: { reference: `Patient/${patient}` },
  effectiveDateTime: '2026-02-01T08:00:00Z',
  valueQuantity: { value, unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
});

/** The commitment of a version opens to the version as `readVersion` returns it. */
async function expectCommitted(v: StoredVersion): Promise<void> {
  const record = await integrity.getCommitment({ resourceType: v.resourceType, id: v.id, versionId: v.versionId });
  expect(record).toBeDefined();
  const reread = await db.store.resources.readVersion(v.resourceType, v.id, v.versionId);
  expect(reread).toBeDefined();
  expect(verifyCommitment(committedValue(reread!), record!.salt, record!.commitment)).toBe(true);
  expect(record!.leafIndex).toBeUndefined(); // pending until the sequencer runs
}

describe('store with a committer', () => {
  it('says so', () => {
    expect(db.store.resources.commitsVersions).toBe(true);
    expect(plain.store.resources.commitsVersions).toBe(false);
  });

  it('commits every version putVersions writes, in the same transaction, and none twice', async () => {
    const results = await db.store.resources.putVersions([
      { resourceType: 'Observation', id: 'c-1', resource: observation('c-1', 60), dedupKey: 'v1' },
      { resourceType: 'Observation', id: 'c-2', resource: observation('c-2', 61), dedupKey: 'v1' },
      { resourceType: 'Observation', id: 'c-1', resource: observation('c-1', 62), dedupKey: 'v2' },
    ]);
    expect(results.map((r) => r.status)).toEqual(['created', 'created', 'updated']);
    for (const r of results) await expectCommitted(r.version);

    const before = await integrity.pendingStats();
    // The same dedup keys again: duplicates, nothing new to commit.
    const again = await db.store.resources.putVersions([
      { resourceType: 'Observation', id: 'c-1', resource: observation('c-1', 62), dedupKey: 'v2' },
      { resourceType: 'Observation', id: 'c-2', resource: observation('c-2', 61), dedupKey: 'v1' },
    ]);
    expect(again.map((r) => r.status)).toEqual(['duplicate', 'duplicate']);
    expect(await integrity.pendingStats()).toEqual(before);
  });

  it('commits a delete marker', async () => {
    const [r] = await db.store.resources.putVersions([{ resourceType: 'Observation', id: 'c-2', deleted: true }]);
    expect(r!.version.deleted).toBe(true);
    await expectCommitted(r!.version);
  });

  it('leaves nothing uncommitted', async () => {
    expect(await integrity.uncommittedVersions(new Date('2100-01-01T00:00:00Z'), 100)).toEqual([]);
  });

  it('commits nothing without a committer (integrity jobs do it)', async () => {
    const [r] = await plain.store.resources.putVersions([{ resourceType: 'Observation', id: 'plain-1', resource: observation('plain-1', 70) }]);
    expect(await integrity.getCommitment({ resourceType: 'Observation', id: 'plain-1', versionId: r!.version.versionId })).toBeUndefined();
    expect(await integrity.uncommittedVersions(new Date('2100-01-01T00:00:00Z'), 100)).toEqual([{ resourceType: 'Observation', id: 'plain-1', versionId: '1' }]);
  });
});

describe('createResources (one statement for new resources)', () => {
  const audit = (id: string, patient: string): AuditEvent => ({
    resourceType: 'AuditEvent',
    id,
    type: { system: 'http://terminology.hl7.org/CodeSystem/audit-event-type', code: 'rest' },
    recorded: '2026-03-01T10:00:00.123Z',
    agent: [{ requestor: true, who: { display: 'app' } }],
    source: { observer: { display: 'fhir-anchor' } },
    entity: [{ what: { reference: `Patient/${patient}` }, role: { system: 'http://terminology.hl7.org/CodeSystem/object-role', code: '1' } }],
    // An undefined member must not break the commitment (JSON drops it in storage).
    outcomeDesc: undefined,
  });

  it('stores head, history, search index and commitment', async () => {
    const versions = await db.store.resources.createResources([
      { resourceType: 'AuditEvent', id: 'a-1', resource: audit('a-1', 'p7'), sourceId: 'fhir-anchor' },
      { resourceType: 'AuditEvent', id: 'a-2', resource: audit('a-2', 'p8'), sourceId: 'fhir-anchor' },
    ]);
    expect(versions.map((v) => [v.id, v.versionId])).toEqual([
      ['a-1', '1'],
      ['a-2', '1'],
    ]);
    const current = await db.store.resources.readCurrent('AuditEvent', 'a-1');
    expect(current?.resource?.meta).toEqual({ versionId: '1', lastUpdated: '2026-03-01T10:00:00.123Z' });
    expect(current?.resource).toEqual(versions[0]!.resource);
    expect((await db.store.resources.history('AuditEvent', 'a-2')).map((v) => v.versionId)).toEqual(['1']);
    const found = await db.store.search.search({ resourceType: 'AuditEvent', clauses: [{ kind: 'reference', param: 'patient', values: [{ type: 'Patient', id: 'p7' }] }], limit: 10 });
    expect(found.map((v) => v.id)).toEqual(['a-1']);
    for (const v of versions) await expectCommitted(v);
    // A later update of such a resource continues at version 2 through the normal path.
    const [next] = await db.store.resources.putVersions([{ resourceType: 'AuditEvent', id: 'a-1', resource: audit('a-1', 'p7') }]);
    expect(next!.version.versionId).toBe('2');
  });

  it('writes nothing of a batch when one id exists already', async () => {
    await expect(
      db.store.resources.createResources([
        { resourceType: 'AuditEvent', id: 'a-3', resource: audit('a-3', 'p9') },
        { resourceType: 'AuditEvent', id: 'a-1', resource: audit('a-1', 'p9') },
      ]),
    ).rejects.toThrow();
    expect(await db.store.resources.readCurrent('AuditEvent', 'a-3')).toBeUndefined();
    expect(await integrity.getCommitment({ resourceType: 'AuditEvent', id: 'a-3', versionId: '1' })).toBeUndefined();
    const found = await db.store.search.search({ resourceType: 'AuditEvent', clauses: [{ kind: 'reference', param: 'patient', values: [{ type: 'Patient', id: 'p9' }] }], limit: 10 });
    expect(found).toEqual([]);
  });

  it('works without a committer too', async () => {
    const [v] = await plain.store.resources.createResources([{ resourceType: 'AuditEvent', id: 'a-plain', resource: audit('a-plain', 'p1') }]);
    expect((await plain.store.resources.readCurrent('AuditEvent', 'a-plain'))?.versionId).toBe('1');
    expect(await integrity.getCommitment({ resourceType: 'AuditEvent', id: v!.id, versionId: '1' })).toBeUndefined();
  });
});
