/**
 * A LEAP CDS scenario end to end through the composition root (re-authored from
 * sdhealthconnect/leap-cds test fixtures, see cds-hooks-leap.test.ts): patient Boris opts in but
 * excludes organisation 54 ("Good Health Clinic"), which his consent names by reference. Good Health's
 * SMART client is registered with the organisation's identifier only, as an integrator would register
 * it. Its reads must be refused like the consent decision service refuses it, and other
 * organisations' reads permitted: the same answer from both enforcement points.
 */
import type { Resource } from '@medplum/fhirtypes';
import type { Config } from '../../src/config/index.js';
import { CONSENT_HOOK } from '../../src/fhir-api/cds-hooks.js';
import { startService, type RunningService } from '../../src/runtime.js';
import { cleanupConfig, silentLogger, testConfig } from '../helpers/env.js';
import { registerTestClient } from '../helpers/smart-client.js';

const ADMIN = 'test-admin-token-0123456789abcdef0123456789';
const ORG_ID = { system: 'urn:ietf:rfc:3986', value: '2.16.840.1.113883.19.5' };
const MEDICARE = { system: 'http://hl7.org/fhir/sid/us-medicare', value: '0000-000-0000' };
const ROEL_ID = { system: 'http://hl7.org/fhir/sid/us-medicare', value: '1111-111-1111' };
const BOB_NPI = { system: 'http://hl7.org/fhir/sid/us-npi', value: '1234567893' };

describe('LEAP scenario through real reads and the decision service', () => {
  let config: Config;
  let service: RunningService;
  let base: string;
  let goodHealth: string;
  let otherClinic: string;
  let enforcer: string;
  let drBob: string;

  beforeAll(async () => {
    // Opt-in jurisdiction: without a consent nobody reads.
    config = testConfig({ CONSENT_DEFAULT_DECISION: 'deny' });
    service = await startService({ config, roles: { api: true, workers: false }, logger: silentLogger });
    base = service.url!;
    const now = new Date();
    const consent = {
      resourceType: 'Consent',
      id: 'boris-optin',
      status: 'active',
      category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] }],
      patient: { reference: 'Patient/boris' },
      dateTime: now.toISOString().slice(0, 10),
      provision: {
        type: 'permit',
        period: { start: new Date(now.getTime() - 86_400_000).toISOString(), end: new Date(now.getTime() + 365 * 86_400_000).toISOString() },
        provision: [
          {
            type: 'deny',
            actor: [{ role: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType', code: 'IRCP' }] }, reference: { reference: 'Organization/org-54' } }],
            action: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentaction', code: 'access' }] }],
          },
          // And Dr Bob, named by his NPI (as consents written elsewhere often name people).
          { type: 'deny', actor: [{ role: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType', code: 'IRCP' }] }, reference: { identifier: BOB_NPI } }] },
        ],
      },
    };
    await service.database.store.resources.putVersions(
      [
        { resourceType: 'Organization', id: 'org-54', resource: { resourceType: 'Organization', id: 'org-54', name: 'Good Health Clinic', identifier: [ORG_ID] } },
        { resourceType: 'Practitioner', id: 'dr-bob', resource: { resourceType: 'Practitioner', id: 'dr-bob', name: [{ family: 'Careful' }], identifier: [BOB_NPI] } },
        { resourceType: 'Patient', id: 'boris', resource: { resourceType: 'Patient', id: 'boris', identifier: [MEDICARE], name: [{ family: 'Betterhalf' }] } },
        { resourceType: 'Observation', id: 'boris-glucose', resource: { resourceType: 'Observation', id: 'boris-glucose', status: 'final', code: { text: 'glucose' }, subject: { reference: 'Patient/boris' } } },
        { resourceType: 'Consent', id: 'boris-optin', resource: consent },
        { resourceType: 'Patient', id: 'roel', resource: { resourceType: 'Patient', id: 'roel', identifier: [ROEL_ID], name: [{ family: 'Roel' }] } },
        {
          // LEAP's consent-boris-deny-restricted-label, for Roel: opt in, but nothing restricted for organisation 54.
          resourceType: 'Consent',
          id: 'roel-deny-restricted',
          resource: {
            ...consent,
            id: 'roel-deny-restricted',
            patient: { reference: 'Patient/roel' },
            provision: {
              ...consent.provision,
              provision: [{ ...consent.provision.provision[0], securityLabel: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-Confidentiality', code: 'R' }] }],
            },
          },
        },
      ].map((v) => ({ ...v, sourceId: 'test', resource: v.resource as Resource })),
    );
    const gh = await registerTestClient(base, ADMIN, { id: 'good-health', allowedScopes: ['system/Observation.rs'], allowedPurposes: ['TREAT'], actor: { identifiers: [ORG_ID] } });
    goodHealth = await gh.token('system/Observation.rs', { purposeOfUse: 'TREAT' });
    const other = await registerTestClient(base, ADMIN, { id: 'other-clinic', allowedScopes: ['system/Observation.rs'], allowedPurposes: ['TREAT'] });
    otherClinic = await other.token('system/Observation.rs', { purposeOfUse: 'TREAT' });
    const bob = await registerTestClient(base, ADMIN, { id: 'bob-app', allowedScopes: ['system/Observation.rs'], allowedPurposes: ['TREAT'], actor: { references: ['Practitioner/dr-bob'] } });
    drBob = await bob.token('system/Observation.rs', { purposeOfUse: 'TREAT' });
    const pep = await registerTestClient(base, ADMIN, { id: 'enforcer', allowedScopes: ['system/Consent.rs'] });
    enforcer = await pep.token('system/Consent.rs');
  }, 60_000);

  afterAll(async () => {
    await service?.close();
    if (config) await cleanupConfig(config);
  });

  const read = (token: string): Promise<Response> => fetch(`${base}/fhir/R4/Observation/boris-glucose`, { headers: { authorization: `Bearer ${token}` } });
  type Card = { extension: { decision: string; obligations: unknown[]; content?: { total?: number; entry: Array<{ resource: { id: string } }> } } };
  const consultCard = async (actor: Array<{ system: string; value: string }>, extra: Record<string, unknown> = {}): Promise<Card> => {
    const res = await fetch(`${base}/cds-services/${CONSENT_HOOK}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${enforcer}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        hook: CONSENT_HOOK,
        hookInstance: 'e2e',
        context: { patientId: [MEDICARE], category: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }], purposeOfUse: 'TREAT', actor, ...extra },
      }),
    });
    expect(res.status).toBe(200);
    return ((await res.json()) as { cards: Card[] }).cards[0]!;
  };
  const consult = async (actor: Array<{ system: string; value: string }>): Promise<string> => (await consultCard(actor)).extension.decision;

  it('refuses the excluded organisation, known to us only by identifier, on reads and in the consult alike', async () => {
    expect((await read(goodHealth)).status).toBe(404);
    expect(await consult([ORG_ID])).toBe('CONSENT_DENY');
  });

  it("redacts LEAP's restricted ketamine observation from consult content (labelled SUD and R by the shipped code lists)", async () => {
    const obs = (id: string, system: string, code: string) => ({ resourceType: 'Observation', id, status: 'final', code: { coding: [{ system, code }] }, subject: { reference: 'Patient/roel' }, valueBoolean: true });
    const content = {
      resourceType: 'Bundle',
      type: 'collection',
      total: 2,
      entry: [
        { fullUrl: '1', resource: obs('ketamine', 'http://snomed.info/sct', '724713006') },
        { fullUrl: '2', resource: obs('bacteria', 'http://loinc.org', '600-7') },
      ],
    };
    const card = await consultCard([ORG_ID], { patientId: [ROEL_ID], content });
    expect(card.extension.decision).toBe('CONSENT_PERMIT');
    expect(card.extension.obligations).toHaveLength(1);
    expect(card.extension.content?.total).toBe(1);
    expect(card.extension.content?.entry.map((e) => e.resource.id)).toEqual(['bacteria']);
  });

  it('refuses a practitioner the consent names by NPI, whose client is registered by reference', async () => {
    expect((await read(drBob)).status).toBe(404);
  });

  it('permits other organisations under the opt-in', async () => {
    expect((await read(otherClinic)).status).toBe(200);
    expect(await consult([{ system: 'test-system', value: 'test-value' }])).toBe('CONSENT_PERMIT');
  });
});
