/**
 * The audit trail through the composition root: every answered FHIR request has its durable audit
 * record before the answer, and the patient reading "who saw my data" right afterwards sees it as an
 * AuditEvent (the API materialises pending records before any request that can return AuditEvents),
 * committed to the integrity log like any version. The background materialiser empties the outbox on
 * its own too.
 */
import type { AuditEvent, Bundle, Resource } from '@medplum/fhirtypes';
import type { Config } from '../../src/config/index.js';
import { startService, type RunningService } from '../../src/runtime.js';
import { cleanupConfig, silentLogger, testConfig } from '../helpers/env.js';
import { registerTestClient } from '../helpers/smart-client.js';

const ADMIN = 'test-admin-token-0123456789abcdef0123456789';

describe('audit trail end to end', () => {
  let config: Config;
  let service: RunningService;
  let base: string;
  let clinician: string;
  let patient: string;

  beforeAll(async () => {
    config = testConfig({ CONSENT_DEFAULT_DECISION: 'permit' });
    service = await startService({ config, roles: { api: true, workers: false }, logger: silentLogger });
    base = service.url!;
    await service.database.store.resources.putVersions([
      { resourceType: 'Patient', id: 'ae-p1', sourceId: 'test', resource: { resourceType: 'Patient', id: 'ae-p1', name: [{ family: 'Doe' }] } as Resource },
      {
        resourceType: 'Observation',
        id: 'ae-o1',
        sourceId: 'test',
        resource: { resourceType: 'Observation', id: 'ae-o1', status: 'final', code: { text: 'glucose' }, subject: { reference: 'Patient/ae-p1' } } as Resource,
      },
    ]);
    const app = await registerTestClient(base, ADMIN, { id: 'ae-clinic', allowedScopes: ['system/Observation.rs'], allowedPurposes: ['TREAT'] });
    clinician = await app.token('system/Observation.rs', { purposeOfUse: 'TREAT' });
    const portal = await registerTestClient(base, ADMIN, { id: 'ae-portal', allowedScopes: ['patient/AuditEvent.rs'], patient: 'ae-p1', fhirUser: 'Patient/ae-p1' });
    patient = await portal.token('patient/AuditEvent.rs');
  }, 60_000);

  afterAll(async () => {
    await service?.close();
    if (config) await cleanupConfig(config);
  });

  const get = (path: string, token: string): Promise<Response> => fetch(`${base}/fhir/R4${path}`, { headers: { authorization: `Bearer ${token}` } });
  const clientOf = (ae: AuditEvent): string | undefined => ae.agent.find((a) => a.requestor)?.who?.identifier?.value;

  it('shows the patient each read of their data at once, as a committed AuditEvent', async () => {
    for (let i = 0; i < 5; i++) expect((await get('/Observation/ae-o1', clinician)).status).toBe(200);
    const bundle = (await (await get('/AuditEvent?patient=ae-p1&_count=100', patient)).json()) as Bundle<AuditEvent>;
    const reads = (bundle.entry ?? []).map((e) => e.resource!).filter((ae) => clientOf(ae) === 'ae-clinic');
    expect(reads).toHaveLength(5);
    for (const ae of reads) {
      expect(ae.entity?.some((e) => e.what?.reference === 'Observation/ae-o1/_history/1')).toBe(true);
      expect(ae.outcome).toBe('0');
    }
    const proof = await service.integrity.log.proofFor({ resourceType: 'AuditEvent', id: reads[0]!.id!, versionId: '1' });
    expect(['pending', 'included']).toContain(proof.status);
  });

  it('materialises records in the background too, leaving the outbox empty', async () => {
    expect((await get('/Observation/ae-o1', clinician)).status).toBe(200);
    const deadline = Date.now() + 10_000;
    while ((await service.database.store.auditOutbox.pending()) > 0) {
      if (Date.now() > deadline) throw new Error('outbox not emptied');
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(await service.database.store.auditOutbox.pending()).toBe(0);
  });
});
