/**
 * The audit materialiser off the event loop: the worker thread turns outbox records into AuditEvents
 * committed to the integrity log (its own store with a committer), and the adaptive drain moves work
 * to the thread only once a drain is busy.
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import type { AuditEvent } from '@medplum/fhirtypes';
import { auditRecordOf, type AuditRecord } from '../../src/fhir-api/audit.js';
import { createAdaptiveDrain, createMaterialiserThread, type AuditDrain } from '../../src/fhir-api/audit-materialiser.js';
import type { AccessContext } from '../../src/fhir-api/access.js';
import { ManualClock } from '../../src/platform/clock.js';
import { openDatabase, type AuditOutboxRecord, type Database } from '../../src/store/index.js';
import { TEST_DATABASE_URL, dropSchema, randomNamespace, silentLogger } from '../helpers/env.js';

const context: AccessContext = {
  clientId: 'thread-app',
  issuer: 'https://anchor.example.test',
  scopes: [],
  purposeOfUse: ['TREAT'],
  actor: { references: [], identifiers: [] },
  mayBreakGlass: false,
};

function record(i: number): AuditOutboxRecord {
  const r: AuditRecord = auditRecordOf({ context, interaction: 'read', patient: 'p-t', entities: [`Observation/t-${i}/_history/1`], outcome: 'permit', policy: [], breakGlass: false, at: new Date('2026-03-01T10:00:00Z') });
  return { id: randomUUID(), recorded: new Date('2026-03-01T10:00:01Z'), record: r };
}

describe('audit materialiser thread', () => {
  let schema: string;
  let db: Database;
  let thread: AuditDrain | undefined;

  beforeAll(async () => {
    schema = randomNamespace('tm');
    db = await openDatabase({
      config: { database: { kind: 'external', url: TEST_DATABASE_URL }, databaseSchema: schema, databasePoolMax: 2 },
      logger: silentLogger,
      clock: new ManualClock(new Date('2026-03-01T10:00:02Z')),
    });
  });

  afterAll(async () => {
    await thread?.close();
    await db.close();
    await dropSchema(schema);
  });

  it('turns every record into an AuditEvent with its commitment, and empties the outbox', async () => {
    const records = Array.from({ length: 300 }, (_, i) => record(i)); // more than two of the thread's batches
    await db.store.auditOutbox.append(records);
    thread = createMaterialiserThread({ connectionString: TEST_DATABASE_URL, schema, logger: silentLogger });
    expect(await thread.drain(true)).toBe(300);
    expect(await db.store.auditOutbox.pending()).toBe(0);

    const first = await db.store.resources.readCurrent('AuditEvent', records[0]!.id);
    const ae = first!.resource as AuditEvent;
    expect(ae.recorded).toBe('2026-03-01T10:00:01.000Z');
    expect(ae.entity?.some((e) => e.what?.reference === 'Observation/t-0/_history/1')).toBe(true);

    const client = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await client.connect();
    try {
      const r = await client.query<{ n: string }>(`SELECT count(*) AS n FROM "${schema}".commitment WHERE resource_type = 'AuditEvent' AND id = ANY($1::text[])`, [records.map((x) => x.id)]);
      expect(Number(r.rows[0]!.n)).toBe(300);
    } finally {
      await client.end();
    }
    expect(await thread.drain(false)).toBe(0);
  });

  it('stops cleanly, and a closed materialiser refuses work', async () => {
    const t = createMaterialiserThread({ connectionString: TEST_DATABASE_URL, schema, logger: silentLogger });
    expect(await t.drain(false)).toBe(0);
    await t.close();
    await expect(t.drain(false)).rejects.toThrow(/closed/);
    // Never started: closing is immediate.
    await createMaterialiserThread({ connectionString: TEST_DATABASE_URL, schema, logger: silentLogger }).close();
  });
});

describe('adaptive drain', () => {
  it('stays in the event loop until a drain is busy, then uses the thread', async () => {
    const calls: string[] = [];
    let inProcessCount = 1;
    const thread: AuditDrain = {
      drain: async () => {
        calls.push('thread');
        return 5;
      },
      close: async () => undefined,
    };
    const drain = createAdaptiveDrain({
      inProcess: async () => {
        calls.push('in-process');
        return inProcessCount;
      },
      thread,
      threshold: 3,
    });
    expect(await drain.drain(false)).toBe(1);
    expect(drain.threaded).toBe(false);
    inProcessCount = 3;
    expect(await drain.drain(false)).toBe(3);
    expect(drain.threaded).toBe(true);
    expect(await drain.drain(true)).toBe(5);
    expect(calls).toEqual(['in-process', 'in-process', 'thread']);
  });
});
