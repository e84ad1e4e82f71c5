/**
 * The CDS Hooks consent decision service (LEAP `patient-consent-consult` shape) against the real
 * PostgreSQL store (patients and actors found by identifier), the consent engine and real bearer
 * tokens of ours. Consents come from the R4 spec example and hand-built cases.
 */
import { readFileSync } from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import type { Consent, Organization, Patient } from '@medplum/fhirtypes';
import { compileCodeLists } from '../../src/consent/index.js';
import { CONSENT_HOOK, consentsFromList, consentsFromSearch, createCdsHooksRouter } from '../../src/fhir-api/cds-hooks.js';
import { createAuthenticator, generateAccessTokenJwk, loadAccessTokenKey, resolveSmartOptions, signAccessToken, type AccessTokenKey } from '../../src/fhir-api/smart/index.js';
import { ManualClock } from '../../src/platform/clock.js';
import { errorHandler, notFoundHandler } from '../../src/server/errors.js';
import type { OAuthClientRecord } from '../../src/store/clients-store.js';
import { openDatabase, type Database } from '../../src/store/index.js';
import { TEST_DATABASE_URL, dropSchema, json, randomNamespace, silentLogger } from '../helpers/env.js';

const exampleBasic = JSON.parse(readFileSync(new URL('../fixtures/consent/consent-example-basic.json', import.meta.url), 'utf8')) as Consent;

const BSN = 'http://fhir.nl/fhir/NamingSystem/bsn';
const MRN = 'urn:oid:1.2.3.4.5';
const NPI = 'http://hl7.org/fhir/sid/us-npi';
const ORG_IDS = 'urn:oid:2.16.840.1.113883.4.4';
const SCOPE = { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] };
const OPTIN = { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'OPTIN' }] };

/** Hand-built consents (not spec copies): each names what it tests. */
const handBuilt: Consent[] = [
  {
    // Opt in, except for Organization/org-x (named by reference).
    resourceType: 'Consent',
    id: 'deny-org-by-reference',
    meta: { versionId: '3' },
    status: 'active',
    scope: SCOPE,
    category: [],
    patient: { reference: 'Patient/p-2' },
    policyRule: OPTIN,
    provision: { provision: [{ type: 'deny', actor: [{ role: { text: 'recipient' }, reference: { reference: 'Organization/org-x' } }] }] },
  },
  {
    // Opt in, except for the practitioner with NPI 1111111112 (named by identifier).
    resourceType: 'Consent',
    id: 'deny-npi',
    status: 'active',
    scope: SCOPE,
    category: [],
    patient: { reference: 'Patient/p-2' },
    policyRule: OPTIN,
    provision: { provision: [{ type: 'deny', actor: [{ role: { text: 'recipient' }, reference: { identifier: { system: NPI, value: '1111111112' } } }] }] },
  },
  {
    // Opt in, except medication statements.
    resourceType: 'Consent',
    id: 'deny-class',
    status: 'active',
    scope: SCOPE,
    category: [],
    patient: { reference: 'Patient/p-3' },
    policyRule: OPTIN,
    provision: { provision: [{ type: 'deny', class: [{ system: 'http://hl7.org/fhir/resource-types', code: 'MedicationStatement' }] }] },
  },
  {
    // Opt in, except psychiatry-labelled data.
    resourceType: 'Consent',
    id: 'deny-psy',
    status: 'active',
    scope: SCOPE,
    category: [],
    patient: { reference: 'Patient/p-4' },
    policyRule: OPTIN,
    provision: { provision: [{ type: 'deny', securityLabel: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'PSY' }] }] },
  },
  {
    // Opt in, except HIV-labelled data.
    resourceType: 'Consent',
    id: 'deny-hiv',
    status: 'active',
    scope: SCOPE,
    category: [],
    patient: { reference: 'Patient/p-6' },
    policyRule: OPTIN,
    provision: { provision: [{ type: 'deny', securityLabel: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'HIV' }] }] },
  },
  {
    // Opt in, except data from 2010 to 2012 (R4 consent-example-notTime).
    resourceType: 'Consent',
    id: 'deny-time',
    status: 'active',
    scope: SCOPE,
    category: [],
    patient: { reference: 'Patient/p-7' },
    policyRule: OPTIN,
    provision: { provision: [{ type: 'deny', dataPeriod: { start: '2010-01-01', end: '2012-12-31' } }] },
  },
  {
    // Permit for treatment only (no policyRule: the root provision decides).
    resourceType: 'Consent',
    id: 'permit-treat',
    status: 'active',
    scope: SCOPE,
    category: [],
    patient: { reference: 'Patient/p-5' },
    provision: { type: 'permit', purpose: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActReason', code: 'TREAT' }] },
  },
];

describe('CDS Hooks consent decision service', () => {
  let schema: string;
  let db: Database;
  let clock: ManualClock;
  let server: Server;
  let base: string;
  let key: AccessTokenKey;
  const options = resolveSmartOptions({ publicBaseUrl: 'https://anchor.example.test' });
  const client: OAuthClientRecord = {
    id: 'consent-enforcer',
    name: 'enforcer',
    jwks: { keys: [] },
    allowedScopes: ['system/Consent.rs', 'system/Observation.rs'],
    allowedPurposes: [],
    mayBreakGlass: false,
    actorReferences: [],
    actorIdentifiers: [],
    createdAt: new Date(),
    updatedAt: new Date(),
  };

  beforeAll(async () => {
    schema = randomNamespace('t');
    clock = new ManualClock(new Date('2015-06-01T12:00:00Z'));
    db = await openDatabase({
      config: { database: { kind: 'external', url: TEST_DATABASE_URL }, databaseSchema: schema, databasePoolMax: 3 },
      logger: silentLogger,
      clock,
    });
    const patient = (id: string, system: string, value: string): Patient => ({ resourceType: 'Patient', id, identifier: [{ system, value }] });
    const org = (id: string, value: string): Organization => ({ resourceType: 'Organization', id, identifier: [{ system: ORG_IDS, value }] });
    await db.store.resources.putVersions([
      { resourceType: 'Patient', id: 'f001', resource: patient('f001', BSN, '738472983') },
      ...['p-2', 'p-3', 'p-4', 'p-5', 'p-6', 'p-7'].map((id) => ({ resourceType: 'Patient', id, resource: patient(id, MRN, `mrn-${id}`) })),
      { resourceType: 'Organization', id: 'org-x', resource: org('org-x', 'X-1') },
      { resourceType: 'Organization', id: 'org-y', resource: org('org-y', 'Y-1') },
    ]);

    key = await loadAccessTokenKey({ jwk: await generateAccessTokenJwk() });
    const authenticator = createAuthenticator({
      options,
      key,
      clients: { get: async (id) => (id === client.id ? client : undefined) },
      clock,
      logger: silentLogger,
    });
    const app = express();
    app.use(
      createCdsHooksRouter({
        store: db.store,
        consentsForPatient: consentsFromList([exampleBasic, ...handBuilt]),
        defaultDecision: 'deny',
        clock,
        authenticate: authenticator.authenticateRequest,
        source: { label: 'fhir-anchor test', url: 'https://anchor.example.test' },
        sensitivity: compileCodeLists(JSON.parse(readFileSync(new URL('../fixtures/consent/sensitivity-code-lists.json', import.meta.url), 'utf8')) as unknown),
      }),
    );
    app.use(notFoundHandler);
    app.use(errorHandler(silentLogger));
    server = await new Promise<Server>((resolve) => {
      const s = app.listen(0, '127.0.0.1', () => resolve(s));
    });
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await db.close();
    await dropSchema(schema);
  });

  const token = async (scope = 'system/Consent.rs'): Promise<string> =>
    (await signAccessToken({ options, key, clock }, { sub: client.id, client_id: client.id, scope })).token;

  async function consult(context: Record<string, unknown>, bearer?: string): Promise<Response> {
    return fetch(`${base}/cds-services/${CONSENT_HOOK}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${bearer ?? (await token())}` },
      body: JSON.stringify({ hook: CONSENT_HOOK, hookInstance: crypto.randomUUID(), context }),
    });
  }

  async function card(context: Record<string, unknown>) {
    const res = await consult(context);
    expect(res.status).toBe(200);
    const body = await json(res);
    expect(body.cards).toHaveLength(1);
    return body.cards[0];
  }

  const p = (id: string) => [{ system: MRN, value: `mrn-${id}` }];

  it('lists the service at GET /cds-services', async () => {
    const res = await fetch(`${base}/cds-services`);
    expect(res.status).toBe(200);
    expect((await json(res)).services).toEqual([expect.objectContaining({ id: 'patient-consent-consult', hook: 'patient-consent-consult' })]);
  });

  it('requires our bearer token (401) with system/Consent.rs (403)', async () => {
    const none = await fetch(`${base}/cds-services/${CONSENT_HOOK}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    expect(none.status).toBe(401);
    expect(none.headers.get('www-authenticate')).toBe('Bearer realm="fhir-anchor"');
    const wrongScope = await consult({ patientId: p('p-2') }, await token('system/Observation.rs'));
    expect(wrongScope.status).toBe(403);
    expect((await json(wrongScope)).issue[0].code).toBe('forbidden');
  });

  describe('R4 spec example consent-example-basic (OPTIN, provision period 1964-01-01..2016-01-01)', () => {
    const context = { patientId: [{ system: BSN, value: '738472983' }], scope: 'patient-privacy', purposeOfUse: 'TREAT', actor: [{ system: ORG_IDS, value: 'Y-1' }] };

    it('permits inside the period, naming the consent', async () => {
      const c = await card(context);
      expect(c).toMatchObject({
        summary: 'CONSENT_PERMIT',
        indicator: 'info',
        source: { label: 'fhir-anchor test', url: 'https://anchor.example.test' },
        extension: { decision: 'CONSENT_PERMIT', obligations: [], basedOn: 'Consent/consent-example-basic' },
      });
    });

    it('finds no applicable consent after the period (NO_CONSENT, with the default the server applies)', async () => {
      clock.set(new Date('2020-01-01T00:00:00Z'));
      try {
        const c = await card(context);
        // LEAP's NO_CONSENT extension exactly; the default this server applies is in the detail.
        expect(c).toMatchObject({ summary: 'NO_CONSENT', indicator: 'warning' });
        expect(c.extension).toEqual({ decision: 'NO_CONSENT', obligations: [] });
        expect(c.detail).toContain('denies access (opt-in)');
      } finally {
        clock.set(new Date('2015-06-01T12:00:00Z'));
      }
    });
  });

  it('denies an actor whose identifier resolves to an organisation the consent excludes', async () => {
    const c = await card({ patientId: p('p-2'), scope: 'patient-privacy', purposeOfUse: ['TREAT'], actor: [{ system: ORG_IDS, value: 'X-1' }] });
    expect(c).toMatchObject({ summary: 'CONSENT_DENY', indicator: 'critical', extension: { decision: 'CONSENT_DENY', basedOn: 'Consent/deny-org-by-reference' } });
    // The version that decided is named in the detail.
    expect(c.detail).toContain('Consent/deny-org-by-reference/_history/3');
  });

  it('denies an actor the consent excludes by identifier', async () => {
    const c = await card({ patientId: p('p-2'), scope: 'patient-privacy', actor: [{ system: NPI, value: '1111111112' }] });
    expect(c.extension).toMatchObject({ decision: 'CONSENT_DENY', basedOn: 'Consent/deny-npi' });
  });

  it('permits other actors under the same consents', async () => {
    const c = await card({ patientId: p('p-2'), scope: 'patient-privacy', actor: [{ system: ORG_IDS, value: 'Y-1' }] });
    expect(c.extension.decision).toBe('CONSENT_PERMIT');
    // basedOn names one consent (LEAP's shape); the detail names every consent that decided.
    expect(['Consent/deny-org-by-reference', 'Consent/deny-npi']).toContain(c.extension.basedOn);
    expect(c.detail).toContain('Consent/deny-org-by-reference/_history/3');
    expect(c.detail).toContain('Consent/deny-npi');
  });

  it('accepts the older LEAP shape (single identifiers, purpose as a string)', async () => {
    const c = await card({ patientId: { system: MRN, value: 'mrn-p-2' }, scope: 'patient-privacy', purposeOfUse: 'TREAT', actor: { system: ORG_IDS, value: 'X-1' } });
    expect(c.extension.decision).toBe('CONSENT_DENY');
  });

  describe('content classes', () => {
    it('without class: permits with a REDACT obligation for the excluded resource type', async () => {
      const c = await card({ patientId: p('p-3'), scope: 'patient-privacy' });
      expect(c.extension).toMatchObject({
        decision: 'CONSENT_PERMIT',
        obligations: [
          {
            id: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'REDACT' },
            parameters: { codes: [{ system: 'http://hl7.org/fhir/resource-types', code: 'MedicationStatement' }] },
          },
        ],
      });
    });

    it('with the excluded class: denies; with another class: permits', async () => {
      const cls = (code: string) => [{ system: 'http://hl7.org/fhir/resource-types', code }];
      expect((await card({ patientId: p('p-3'), scope: 'patient-privacy', class: cls('MedicationStatement') })).extension.decision).toBe('CONSENT_DENY');
      expect((await card({ patientId: p('p-3'), scope: 'patient-privacy', class: cls('Observation') })).extension).toMatchObject({ decision: 'CONSENT_PERMIT', obligations: [] });
      // Several classes: deny overrides.
      const both = await card({ patientId: p('p-3'), scope: 'patient-privacy', class: [...cls('Observation'), ...cls('MedicationStatement')] });
      expect(both.extension.decision).toBe('CONSENT_DENY');
    });
  });

  it('turns a label-only deny into a REDACT obligation for that label', async () => {
    const c = await card({ patientId: p('p-4'), scope: 'patient-privacy' });
    expect(c.extension).toMatchObject({
      decision: 'CONSENT_PERMIT',
      obligations: [{ id: { code: 'REDACT' }, parameters: { codes: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'PSY' }] } }],
    });
  });

  it('honours purpose restrictions', async () => {
    expect((await card({ patientId: p('p-5'), scope: 'patient-privacy', purposeOfUse: ['TREAT'] })).extension.decision).toBe('CONSENT_PERMIT');
    expect((await card({ patientId: p('p-5'), scope: 'patient-privacy', purposeOfUse: ['HPAYMT'] })).extension.decision).toBe('NO_CONSENT');
    expect((await card({ patientId: p('p-5'), scope: 'patient-privacy' })).extension.decision).toBe('NO_CONSENT');
  });

  describe("LEAP's current request shape", () => {
    const privacy = [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }, { system: 'http://loinc.org', code: '59284-6' }];

    it('reads the consent scope from context.category', async () => {
      expect((await card({ patientId: p('p-2'), category: privacy, actor: [{ system: ORG_IDS, value: 'X-1' }] })).extension.decision).toBe('CONSENT_DENY');
      const research = [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'research' }];
      expect((await card({ patientId: p('p-2'), category: research, actor: [{ system: ORG_IDS, value: 'X-1' }] })).extension.decision).toBe('NO_CONSENT');
      const adr = await consult({ patientId: p('p-2'), category: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'adr' }] });
      expect(adr.status).toBe(400);
      expect((await json(adr)).issue[0].details.text).toContain('adr');
    });

    it('returns context.content without what the consent withholds (labelled with the DS4P code lists first)', async () => {
      const obs = (id: string, code: { system: string; code: string }, security?: Array<{ system: string; code: string }>) => ({
        resourceType: 'Observation',
        id,
        status: 'final',
        code: { coding: [code] },
        subject: { reference: 'Patient/p-4' },
        ...(security ? { meta: { security } } : {}),
      });
      const content = {
        resourceType: 'Bundle',
        type: 'searchset',
        total: 3,
        entry: [
          { fullUrl: 'urn:uuid:1', resource: obs('psy-labelled', { system: 'http://loinc.org', code: '2339-0' }, [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'PSY' }]) },
          { fullUrl: 'urn:uuid:2', resource: obs('glucose', { system: 'http://loinc.org', code: '2339-0' }) },
          { fullUrl: 'urn:uuid:3', resource: obs('hiv', { system: 'http://snomed.info/sct', code: '86406008' }) },
        ],
      };
      // Patient p-4 denies PSY-labelled data: the labelled entry goes, the others stay.
      const c = await card({ patientId: p('p-4'), category: privacy, content });
      expect(c.extension.decision).toBe('CONSENT_PERMIT');
      expect(c.extension.content.total).toBe(2);
      expect(c.extension.content.entry.map((e: { resource: { id: string } }) => e.resource.id)).toEqual(['glucose', 'hiv']);
      // No content comes back with a deny.
      const denied = await card({ patientId: p('p-2'), category: privacy, actor: [{ system: ORG_IDS, value: 'X-1' }], content });
      expect(denied.extension.decision).toBe('CONSENT_DENY');
      expect(denied.extension.content).toBeUndefined();
      // Patient p-6 denies HIV data: the entry coded SNOMED 86406008 carries no label, but the code
      // lists label it HIV, so it goes.
      const hiv = await card({ patientId: p('p-6'), category: privacy, content });
      expect(hiv.extension.content.entry.map((e: { resource: { id: string } }) => e.resource.id)).toEqual(['psy-labelled', 'glucose']);
    });

    it('places content in time for dataPeriod provisions: a withheld period drops only what lies in it', async () => {
      const obs = (id: string, effectiveDateTime?: string) => ({
        resourceType: 'Observation',
        id,
        status: 'final',
        code: { coding: [{ system: 'http://loinc.org', code: '2339-0' }] },
        subject: { reference: 'Patient/p-7' },
        ...(effectiveDateTime ? { effectiveDateTime } : {}),
      });
      const content = {
        resourceType: 'Bundle',
        type: 'collection',
        entry: [
          { resource: obs('in-2011', '2011-05-05') },
          { resource: obs('in-2014', '2014-05-05') },
          { resource: obs('undated') },
          { resource: { resourceType: 'Patient', id: 'p-7' } },
        ],
      };
      const c = await card({ patientId: p('p-7'), category: privacy, content });
      // Before, the deny (which depends on the data) denied the whole consult, and no entry carried its date.
      expect(c.extension.decision).toBe('CONSENT_PERMIT');
      expect(c.extension.content.entry.map((e: { resource: { id: string } }) => e.resource.id)).toEqual(['in-2014', 'p-7']);
      expect(c.detail).toContain('2 of 4 content entries are withheld');
      // All of it withheld, or no content to decide on: a deny.
      const all = await card({ patientId: p('p-7'), category: privacy, content: { ...content, entry: [content.entry[0]!] } });
      expect(all.extension.decision).toBe('CONSENT_DENY');
      expect(all.extension.content).toBeUndefined();
      expect((await card({ patientId: p('p-7'), category: privacy })).extension.decision).toBe('CONSENT_DENY');
    });

    it('accepts the ASU SHARES request shape: literal references without a system, empty lists', async () => {
      const asu = (actor: string) => ({ patientId: [{ value: 'Patient/p-2' }], actor: [{ value: actor }], purposeOfUse: [], category: [], class: [] });
      expect((await card(asu('Organization/org-x'))).extension.decision).toBe('CONSENT_DENY');
      expect((await card(asu('Organization/org-y'))).extension.decision).toBe('CONSENT_PERMIT');
      // A reference to a patient we do not have finds nothing.
      expect((await card({ ...asu('Organization/org-y'), patientId: [{ value: 'Patient/nobody' }] })).extension.decision).toBe('NO_CONSENT');
    });

    it('answers 400 naming the problem for content entries without a resource', async () => {
      const res = await consult({ patientId: p('p-4'), category: privacy, content: { resourceType: 'Bundle', entry: [{}] } });
      expect(res.status).toBe(400);
      expect((await json(res)).issue[0].details.text).toContain('resource');
    });
  });

  it('answers NO_CONSENT for a patient it does not know', async () => {
    const c = await card({ patientId: [{ system: MRN, value: 'nobody' }], scope: 'patient-privacy' });
    expect(c.extension.decision).toBe('NO_CONSENT');
  });

  it('ignores a research request against privacy consents', async () => {
    expect((await card({ patientId: p('p-2'), scope: 'research' })).extension.decision).toBe('NO_CONSENT');
  });

  it.each([
    ['a missing patientId', { scope: 'patient-privacy' }],
    ['an unsupported consent scope', { patientId: p('p-2'), scope: 'adr' }],
    ['a class outside resource-types', { patientId: p('p-2'), class: [{ system: 'http://loinc.org', code: '11488-4' }] }],
  ])('answers 400 with an OperationOutcome for %s', async (_label, context) => {
    const res = await consult(context);
    expect(res.status).toBe(400);
    expect((await json(res)).resourceType).toBe('OperationOutcome');
  });

  it('answers 400 for a request for another hook', async () => {
    const res = await fetch(`${base}/cds-services/${CONSENT_HOOK}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${await token()}` },
      body: JSON.stringify({ hook: 'patient-view', hookInstance: 'x', context: { patientId: p('p-2') } }),
    });
    expect(res.status).toBe(400);
  });

  it('reads consents through the search index when wired with consentsFromSearch', async () => {
    const asked: string[][] = [];
    const source = consentsFromSearch({
      consentsFor: async (ids) => {
        asked.push([...ids]);
        return [{ version: { resource: handBuilt[0] } }, { version: { resource: undefined } }];
      },
    });
    expect(await source('p-2')).toEqual([handBuilt[0]]);
    expect(asked).toEqual([['p-2']]);
  });
});
