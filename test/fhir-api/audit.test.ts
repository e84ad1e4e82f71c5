/**
 * The disclosure recorder against the real PostgreSQL store: the durable audit record written before a
 * request is answered, and its materialisation into an IHE BALP-style AuditEvent (permits, denials,
 * break-glass), stored as a version and handed to the integrity queue exactly like ingested versions
 * (this store has no committer). The queue is a recording fake of the QueueRegistry interface.
 */
import type { AuditEvent } from '@medplum/fhirtypes';
import type { AccessContext, DisclosureEvent } from '../../src/fhir-api/access.js';
import { BREAK_GLASS_SECURITY, buildAuditEvent, createDisclosureRecorder, redactQuery, type AuditRecorder } from '../../src/fhir-api/audit.js';
import { ManualClock } from '../../src/platform/clock.js';
import type { EnqueueOptions, QueueRegistry } from '../../src/queue/index.js';
import { openDatabase, type Database } from '../../src/store/index.js';
import { TEST_DATABASE_URL, dropSchema, randomNamespace, silentLogger } from '../helpers/env.js';

type Enqueued = { queue: string; jobs: ReadonlyArray<{ data: unknown; options?: EnqueueOptions }> };

function recordingQueues(): Pick<QueueRegistry, 'enqueueBulk'> & { calls: Enqueued[]; fail: boolean } {
  const q = {
    calls: [] as Enqueued[],
    fail: false,
    async enqueueBulk(queue: string, jobs: ReadonlyArray<{ data: unknown; options?: EnqueueOptions }>): Promise<void> {
      if (q.fail) throw new Error('queue down');
      q.calls.push({ queue, jobs });
    },
  };
  return q as unknown as Pick<QueueRegistry, 'enqueueBulk'> & { calls: Enqueued[]; fail: boolean };
}

const context: AccessContext = {
  clientId: 'partner-app',
  issuer: 'https://anchor.example.test',
  scopes: [],
  fhirUser: 'Practitioner/dr-1',
  purposeOfUse: ['TREAT'],
  actor: { references: ['Organization/org-1'], identifiers: [{ system: 'urn:ietf:params:oauth:client-id', value: 'partner-app' }] },
  mayBreakGlass: true,
  tokenId: 'token-jti-1',
};

const at = new Date('2025-03-01T10:00:00.000Z');

function event(overrides: Partial<DisclosureEvent> = {}): DisclosureEvent {
  return {
    context,
    interaction: 'read',
    patient: 'p-1',
    entities: ['Observation/o-1/_history/2'],
    outcome: 'permit',
    policy: ['Consent/c-1/_history/1'],
    breakGlass: false,
    query: '/fhir/R4/Observation/o-1',
    at,
    ...overrides,
  };
}

/** Every recorder a test creates is closed after it, so none materialises the next test's records. */
const open: AuditRecorder[] = [];
function recorderOf(deps: Parameters<typeof createDisclosureRecorder>[0]): AuditRecorder {
  const r = createDisclosureRecorder(deps);
  open.push(r);
  return r;
}
afterEach(async () => {
  await Promise.all(open.splice(0).map((r) => r.close()));
});

describe('disclosure recorder', () => {
  let schema: string;
  let db: Database;
  let clock: ManualClock;

  beforeAll(async () => {
    schema = randomNamespace('t');
    clock = new ManualClock(new Date('2025-03-01T10:00:01.000Z'));
    db = await openDatabase({
      config: { database: { kind: 'external', url: TEST_DATABASE_URL }, databaseSchema: schema, databasePoolMax: 3 },
      logger: silentLogger,
      clock,
    });
  });

  afterAll(async () => {
    await db.close();
    await dropSchema(schema);
  });

  it('stores a BALP-style AuditEvent for a permitted read and enqueues its integrity job', async () => {
    const queues = recordingQueues();
    const recorder = recorderOf({ store: db.store, queues, clock, logger: silentLogger, materialiseIntervalMs: 0 });
    await recorder.record(event());
    await recorder.flush();

    expect(queues.calls).toHaveLength(1);
    const { queue, jobs } = queues.calls[0]!;
    expect(queue).toBe('integrity');
    expect(jobs).toHaveLength(1);
    const data = jobs[0]!.data as { resourceType: string; id: string; versionId: string };
    expect(data).toEqual({ resourceType: 'AuditEvent', id: expect.any(String), versionId: '1' });
    expect(jobs[0]!.options).toEqual({ jobId: `AuditEvent.${data.id}.1` });

    const stored = await db.store.resources.readCurrent('AuditEvent', data.id);
    const ae = stored!.resource as AuditEvent;
    expect(ae).toMatchObject({
      resourceType: 'AuditEvent',
      id: data.id,
      type: { system: 'http://terminology.hl7.org/CodeSystem/audit-event-type', code: 'rest' },
      subtype: [{ system: 'http://hl7.org/fhir/restful-interaction', code: 'read' }],
      action: 'R',
      recorded: '2025-03-01T10:00:01.000Z',
      period: { start: '2025-03-01T10:00:00.000Z', end: '2025-03-01T10:00:00.000Z' },
      outcome: '0',
      purposeOfEvent: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActReason', code: 'TREAT' }] }],
      source: { site: 'fhir-anchor', observer: { display: 'fhir-anchor' } },
    });
    expect(ae.meta?.security).toBeUndefined();

    const client = ae.agent.find((a) => a.type?.coding?.[0]?.code === '110150');
    expect(client).toMatchObject({ requestor: true, who: { identifier: { system: 'urn:ietf:params:oauth:client-id', value: 'partner-app' } } });
    const user = ae.agent.find((a) => a.type?.coding?.[0]?.code === 'IRCP');
    expect(user).toMatchObject({ requestor: true, who: { reference: 'Practitioner/dr-1' }, purposeOfUse: [{ coding: [{ code: 'TREAT' }] }] });

    const entity = (code: string) => ae.entity?.filter((e) => e.role?.code === code) ?? [];
    expect(entity('1')).toEqual([
      expect.objectContaining({ what: { reference: 'Patient/p-1' }, type: expect.objectContaining({ code: '1' }), role: expect.objectContaining({ system: 'http://terminology.hl7.org/CodeSystem/object-role', code: '1' }) }),
    ]);
    expect(entity('4').map((e) => e.what?.reference)).toEqual(['Observation/o-1/_history/2']);
    expect(entity('13')).toEqual([expect.objectContaining({ what: { reference: 'Consent/c-1/_history/1' }, type: expect.objectContaining({ code: 'Consent' }) })]);
    const token = ae.entity?.find((e) => e.type?.code === 'UserOauthAgent');
    expect(token?.what?.identifier?.value).toBe('urn:ietf:params:oauth:jti:token-jti-1');
  });

  it('records a denial as outcome 4 (minor failure) with the deciding policy', async () => {
    const ae = buildAuditEvent(event({ outcome: 'deny', entities: ['Observation/o-2'], interaction: 'vread' }), 'x', clock.now());
    expect(ae.outcome).toBe('4');
    expect(ae.outcomeDesc).toMatch(/denied/);
    expect(ae.subtype).toEqual([expect.objectContaining({ code: 'vread' })]);
    expect(ae.entity?.find((e) => e.role?.code === '13')?.what).toEqual({ reference: 'Consent/c-1/_history/1' });
  });

  it('flags break-glass in meta.security so the patient can be told', async () => {
    const queues = recordingQueues();
    const recorder = recorderOf({ store: db.store, queues, clock, logger: silentLogger, materialiseIntervalMs: 0 });
    await recorder.record(event({ breakGlass: true, context: { ...context, purposeOfUse: ['BTG'] } }));
    await recorder.flush();
    const { id } = queues.calls[0]!.jobs[0]!.data as { id: string };
    const ae = (await db.store.resources.readCurrent('AuditEvent', id))!.resource as AuditEvent;
    expect(ae.meta?.security).toEqual([expect.objectContaining(BREAK_GLASS_SECURITY)]);
    expect(ae.outcome).toBe('0');
    expect(ae.outcomeDesc).toMatch(/break-glass/);
    expect(ae.purposeOfEvent?.[0]?.coding?.[0]?.code).toBe('BTG');
  });

  it('maps interactions to subtype and action', () => {
    const of = (interaction: string) => buildAuditEvent(event({ interaction }), 'x', clock.now());
    expect(of('search-type')).toMatchObject({ action: 'R', subtype: [{ code: 'search-type' }] });
    expect(of('history')).toMatchObject({ action: 'R', subtype: [{ code: 'history' }] });
    expect(of('create')).toMatchObject({ action: 'C' });
    expect(of('update')).toMatchObject({ action: 'U' });
    expect(of('delete')).toMatchObject({ action: 'D' });
    expect(of('$everything')).toMatchObject({ action: 'E', subtype: [{ code: 'operation' }, { system: 'urn:fhir-anchor:operation', code: '$everything' }] });
    expect(() => of('steal')).toThrow(/unknown FHIR interaction/);
  });

  it('keeps references and codes only: no search values, no token, no resource bodies', () => {
    const ae = buildAuditEvent(
      event({ interaction: 'search-type', query: '/fhir/R4/Observation?patient=p-1&code=http://loinc.org|1234-5&name=Smith&name=Jones', entities: ['Observation/o-1', 'Observation/o-1'] }),
      'x',
      clock.now(),
    );
    const text = JSON.stringify(ae);
    expect(text).not.toContain('Smith');
    expect(text).not.toContain('1234-5');
    expect(ae.entity?.find((e) => e.role?.code === '24')?.description).toBe('/fhir/R4/Observation?patient&code&name');
    expect(ae.entity?.filter((e) => e.role?.code === '4')).toHaveLength(1);
    expect(redactQuery('/fhir/R4/Patient/p-1')).toBe('/fhir/R4/Patient/p-1');
  });

  it('names the client as the requesting agent with its purposes when there is no user', () => {
    const ae = buildAuditEvent(event({ context: { ...context, fhirUser: undefined } as AccessContext }), 'x', clock.now());
    expect(ae.agent.filter((a) => a.requestor)).toEqual([
      expect.objectContaining({ who: expect.objectContaining({ identifier: { system: 'urn:ietf:params:oauth:client-id', value: 'partner-app' } }), purposeOfUse: [{ coding: [expect.objectContaining({ code: 'TREAT' })] }] }),
    ]);
  });

  it('fails (so the caller withholds the data) when the durable record cannot be written', async () => {
    const store = { ...db.store, auditOutbox: { ...db.store.auditOutbox, append: async () => Promise.reject(new Error('database down')) } };
    const recorder = recorderOf({ store, queues: recordingQueues(), clock, logger: silentLogger, materialiseIntervalMs: 0 });
    await expect(recorder.record(event())).rejects.toThrow('database down');
    await recorder.close();
  });

  it('refuses an event its AuditEvent could not express, before anything is written', async () => {
    const recorder = recorderOf({ store: db.store, queues: recordingQueues(), clock, logger: silentLogger, materialiseIntervalMs: 0 });
    const before = await db.store.auditOutbox.pending();
    await expect(recorder.record(event({ interaction: 'teleport' }))).rejects.toThrow(/unknown FHIR interaction/);
    expect(await db.store.auditOutbox.pending()).toBe(before);
    await recorder.close();
  });

  it('answers once the record is durable; the AuditEvent exists after the materialiser ran', async () => {
    const recorder = recorderOf({ store: db.store, queues: recordingQueues(), clock, logger: silentLogger, materialiseDelayMs: 60_000, materialiseIntervalMs: 0 });
    await recorder.flush();
    await recorder.record(event({ entities: ['Observation/o-durable/_history/1'] }));
    expect(await db.store.auditOutbox.pending()).toBe(1);
    await recorder.flush();
    expect(await db.store.auditOutbox.pending()).toBe(0);
    const found = await db.store.search.search({ resourceType: 'AuditEvent', clauses: [{ kind: 'reference', param: 'patient', values: [{ type: 'Patient', id: 'p-1' }] }], limit: 500 });
    expect(found.filter((v) => JSON.stringify(v.resource).includes('o-durable'))).toHaveLength(1);
    await recorder.close();
  });

  it('gives AuditEvents time-ordered ids (UUIDv7) in the order the requests were recorded', async () => {
    const recorder = recorderOf({ store: db.store, queues: recordingQueues(), clock, logger: silentLogger, materialiseDelayMs: 60_000, materialiseIntervalMs: 0 });
    const marks = ['o-order-1', 'o-order-2', 'o-order-3'];
    for (const m of marks) await recorder.record(event({ entities: [`Observation/${m}/_history/1`] }));
    await recorder.flush();
    const found = await db.store.search.search({ resourceType: 'AuditEvent', clauses: [{ kind: 'reference', param: 'patient', values: [{ type: 'Patient', id: 'p-1' }] }], limit: 500 });
    const ids = marks.map((m) => found.find((v) => JSON.stringify(v.resource).includes(m))!.id);
    for (const id of ids) expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect([...ids].sort()).toEqual(ids);
    await recorder.close();
  });

  it('keeps a record whose materialisation failed and materialises it on the next run', async () => {
    let failNext = true;
    const outbox = db.store.auditOutbox;
    const store = {
      ...db.store,
      auditOutbox: {
        append: outbox.append.bind(outbox),
        pending: outbox.pending.bind(outbox),
        materialise: (...args: Parameters<typeof outbox.materialise>) => {
          if (failNext) {
            failNext = false;
            return Promise.reject(new Error('database restarting'));
          }
          return outbox.materialise(...args);
        },
      },
    };
    const recorder = recorderOf({ store, queues: recordingQueues(), clock, logger: silentLogger, materialiseDelayMs: 60_000, materialiseIntervalMs: 0 });
    await recorder.record(event({ entities: ['Observation/o-retry/_history/1'] }));
    await expect(recorder.flush()).rejects.toThrow('database restarting');
    expect(await db.store.auditOutbox.pending()).toBe(1);
    await recorder.flush();
    expect(await db.store.auditOutbox.pending()).toBe(0);
    await recorder.close();
  });

  it('turns every record into exactly one AuditEvent when several processes materialise at once', async () => {
    const queues = recordingQueues();
    const recorders = [0, 1, 2].map(() => recorderOf({ store: db.store, queues, clock, logger: silentLogger, materialiseDelayMs: 1, materialiseIntervalMs: 5 }));
    const n = 300;
    await Promise.all(Array.from({ length: n }, (_, i) => recorders[i % 3]!.record(event({ patient: 'p-many', entities: [`Observation/m-${i}/_history/1`] }))));
    await Promise.all(recorders.map((r) => r.flush()));
    expect(await db.store.auditOutbox.pending()).toBe(0);
    const found = await db.store.search.search({ resourceType: 'AuditEvent', clauses: [{ kind: 'reference', param: 'patient', values: [{ type: 'Patient', id: 'p-many' }] }], limit: 1000 });
    expect(found).toHaveLength(n);
    const entities = found.map((v) => (v.resource as AuditEvent).entity?.find((e) => e.role?.code === '4')?.what?.reference);
    expect(new Set(entities).size).toBe(n);
    // One integrity job per AuditEvent, none twice (once every background run has finished).
    await Promise.all(recorders.map((r) => r.close()));
    const jobIds = queues.calls.flatMap((c) => c.jobs.map((j) => j.options?.jobId)).filter((id) => found.some((v) => id === `AuditEvent.${v.id}.1`));
    expect(jobIds).toHaveLength(n);
    expect(new Set(jobIds).size).toBe(n);
  });
});
