/**
 * The disclosure recorder against the real PostgreSQL store: IHE BALP-style AuditEvents for permits,
 * denials and break-glass, stored as versions and handed to the integrity queue exactly like ingested
 * versions. The queue is a recording fake of the QueueRegistry interface.
 */
import type { AuditEvent } from '@medplum/fhirtypes';
import type { AccessContext, DisclosureEvent } from '../../src/fhir-api/access.js';
import { BREAK_GLASS_SECURITY, buildAuditEvent, createDisclosureRecorder, redactQuery } from '../../src/fhir-api/audit.js';
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
    const recorder = createDisclosureRecorder({ store: db.store, queues, clock, logger: silentLogger });
    await recorder.record(event());

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
    const recorder = createDisclosureRecorder({ store: db.store, queues, clock, logger: silentLogger });
    await recorder.record(event({ breakGlass: true, context: { ...context, purposeOfUse: ['BTG'] } }));
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

  it('fails (so the caller withholds the data) when the integrity job cannot be enqueued', async () => {
    const queues = recordingQueues();
    queues.fail = true;
    const recorder = createDisclosureRecorder({ store: db.store, queues, clock, logger: silentLogger });
    await expect(recorder.record(event())).rejects.toThrow('queue down');
  });
});
