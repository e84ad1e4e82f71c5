/** Builders for consent-engine tests: a base patient, actor, request and Consent shapes. */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Consent, ConsentProvision, Observation } from '@medplum/fhirtypes';
import type { AccessRequest, RequestActor } from '../../src/consent/index.js';

export const FIXTURES = fileURLToPath(new URL('../fixtures/consent/', import.meta.url));

/** Reads a JSON fixture, stripping a UTF-8 BOM (several shared data files start with one). */
export function readJson<T>(name: string): T {
  return JSON.parse(readFileSync(FIXTURES + name, 'utf8').replace(/^\uFEFF/, '')) as T;
}

export const NOW = new Date('2024-06-01T12:00:00Z');
export const NPI = 'http://hl7.org/fhir/sid/us-npi';
export const V3_ACT_CODE = 'http://terminology.hl7.org/CodeSystem/v3-ActCode';
export const V3_CONF = 'http://terminology.hl7.org/CodeSystem/v3-Confidentiality';
export const ACT_REASON = 'http://terminology.hl7.org/CodeSystem/v3-ActReason';
export const RESOURCE_TYPES = 'http://hl7.org/fhir/resource-types';
export const LOINC = 'http://loinc.org';

export const actorA: RequestActor = {
  references: ['Organization/org-a', 'Practitioner/dr-a', 'PractitionerRole/role-a'],
  identifiers: [{ system: NPI, value: '1111111111' }],
  clientId: 'app-a',
  mayBreakGlass: false,
};

export const actorB: RequestActor = {
  references: ['Organization/org-b', 'Practitioner/dr-b'],
  identifiers: [{ system: NPI, value: '2222222222' }],
  clientId: 'app-b',
  mayBreakGlass: false,
};

export function observation(id: string, over: Partial<Observation> = {}): Observation {
  return {
    resourceType: 'Observation',
    id,
    status: 'final',
    code: { coding: [{ system: LOINC, code: '2339-0', display: 'Glucose' }] },
    subject: { reference: 'Patient/p1' },
    ...over,
  };
}

export function request(over: Partial<AccessRequest> = {}): AccessRequest {
  return {
    patient: 'Patient/p1',
    actor: actorA,
    purposeOfUse: ['TREAT'],
    scope: 'patient-privacy',
    resourceType: 'Observation',
    resource: observation('o1'),
    ...over,
  };
}

/** An active patient-privacy Consent of Patient/p1 with the given root provision. */
export function consent(id: string, provision?: ConsentProvision, over: Partial<Consent> = {}): Consent {
  return {
    resourceType: 'Consent',
    id,
    status: 'active',
    scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] },
    category: [{ coding: [{ system: LOINC, code: '59284-0' }] }],
    patient: { reference: 'Patient/p1' },
    ...(provision ? { provision } : {}),
    ...over,
  };
}

export const actor = (reference: string): NonNullable<ConsentProvision['actor']>[number] => ({
  role: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType', code: 'IRCP' }] },
  reference: { reference },
});

export const actorByIdentifier = (system: string, value: string): NonNullable<ConsentProvision['actor']>[number] => ({
  role: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType', code: 'IRCP' }] },
  reference: { identifier: { system, value } },
});

export const purpose = (code: string): { system: string; code: string } => ({ system: ACT_REASON, code });
export const cls = (code: string): { system: string; code: string } => ({ system: RESOURCE_TYPES, code });
export const label = (code: string): { system: string; code: string } => ({ system: V3_ACT_CODE, code });
export const conf = (code: string): { system: string; code: string } => ({ system: V3_CONF, code });
