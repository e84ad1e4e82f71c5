/**
 * The disclosure recorder: every consent-gated disclosure and every denial becomes an IHE BALP-style
 * FHIR R4 AuditEvent, stored as a resource version and committed to the integrity log like any other
 * version (so a patient can later prove what was disclosed about them, and nobody can quietly remove
 * an entry).
 *
 * The AuditEvent holds references and codes only: never resource bodies, never search parameter
 * values (they can be PHI), never tokens.
 *
 * @see https://profiles.ihe.net/ITI/BALP/ (Basic Audit Log Patterns: Read, Query, PatientRead, AuthZconsent)
 * @see http://hl7.org/fhir/R4/auditevent.html
 */
import { randomUUID } from 'node:crypto';
import type { AuditEvent, AuditEventAgent, AuditEventEntity, CodeableConcept, Coding } from '@medplum/fhirtypes';
import { OAUTH_CLIENT_ID_SYSTEM, PURPOSE_OF_USE_SYSTEM } from '../consent/index.js';
import type { Clock } from '../platform/clock.js';
import type { Logger } from '../platform/logger.js';
import type { QueueRegistry } from '../queue/index.js';
import type { Store } from '../store/index.js';
import type { DisclosureEvent, DisclosureRecorder } from './access.js';

export const AUDIT_EVENT_TYPE_SYSTEM = 'http://terminology.hl7.org/CodeSystem/audit-event-type';
export const RESTFUL_INTERACTION_SYSTEM = 'http://hl7.org/fhir/restful-interaction';
export const AUDIT_OUTCOME_SYSTEM = 'http://terminology.hl7.org/CodeSystem/audit-event-outcome';
export const AUDIT_ENTITY_TYPE_SYSTEM = 'http://terminology.hl7.org/CodeSystem/audit-entity-type';
export const OBJECT_ROLE_SYSTEM = 'http://terminology.hl7.org/CodeSystem/object-role';
export const DICOM_SYSTEM = 'http://dicom.nema.org/resources/ontology/DCM';
export const PARTICIPATION_TYPE_SYSTEM = 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType';
export const SECURITY_SOURCE_TYPE_SYSTEM = 'http://terminology.hl7.org/CodeSystem/security-source-type';
/** BALP's code system for the OAuth token entity. */
export const BALP_USER_AGENT_TYPES_SYSTEM = 'https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes';
/** Our code system for operation names in `subtype` (next to restful-interaction#operation). */
export const OPERATION_NAME_SYSTEM = 'urn:fhir-anchor:operation';
/** `sourceId` the AuditEvents are stored with. */
export const AUDIT_SOURCE_ID = 'fhir-anchor';

/**
 * The break-glass flag: `meta.security` carries v3-ActReason `BTG`, so the patient's portal (and a
 * search on `_security`) finds every emergency override of their consent.
 */
export const BREAK_GLASS_SECURITY: Coding = { system: PURPOSE_OF_USE_SYSTEM, code: 'BTG', display: 'break the glass' };

/** R4 restful-interaction codes (a DisclosureEvent may also say `history` or `$name`). */
const INTERACTIONS = new Set([
  'read',
  'vread',
  'update',
  'patch',
  'delete',
  'history',
  'history-instance',
  'history-type',
  'history-system',
  'create',
  'search',
  'search-type',
  'search-system',
  'capabilities',
  'transaction',
  'batch',
  'operation',
]);

/** AuditEvent.action: C(reate), R(ead), U(pdate), D(elete), E(xecute). */
function actionOf(interaction: string): AuditEvent['action'] {
  if (interaction === 'create') return 'C';
  if (interaction === 'update' || interaction === 'patch') return 'U';
  if (interaction === 'delete') return 'D';
  if (interaction === 'operation' || interaction.startsWith('$') || interaction === 'transaction' || interaction === 'batch') return 'E';
  return 'R';
}

function subtypeOf(interaction: string): Coding[] {
  if (interaction.startsWith('$')) {
    return [
      { system: RESTFUL_INTERACTION_SYSTEM, code: 'operation', display: 'operation' },
      { system: OPERATION_NAME_SYSTEM, code: interaction },
    ];
  }
  if (!INTERACTIONS.has(interaction)) throw new TypeError(`unknown FHIR interaction "${interaction}"`);
  return [{ system: RESTFUL_INTERACTION_SYSTEM, code: interaction, display: interaction }];
}

function purposeConcept(code: string): CodeableConcept {
  return { coding: [{ system: PURPOSE_OF_USE_SYSTEM, code }] };
}

function patientReference(patient: string): string {
  return patient.startsWith('Patient/') ? patient : `Patient/${patient}`;
}

/**
 * The query as a list of parameter names only (`Observation?category&patient`): what kind of search
 * it was, without values that could be PHI.
 */
export function redactQuery(query: string): string {
  const q = query.indexOf('?');
  if (q < 0) return query;
  const names = query
    .slice(q + 1)
    .split('&')
    .map((p) => p.split('=')[0] ?? '')
    .filter((n) => n !== '');
  return `${query.slice(0, q)}?${[...new Set(names)].join('&')}`;
}

/**
 * Builds the AuditEvent for a disclosure event (pure; exported for tests and previews). `recorded` is
 * when the event is written; `period` is when the access happened (`event.at`).
 */
export function buildAuditEvent(event: DisclosureEvent, id: string, recorded: Date): AuditEvent {
  const { context } = event;
  const permit = event.outcome === 'permit';
  const purposes = [...new Set(context.purposeOfUse)];

  const agent: AuditEventAgent[] = [
    {
      // The SMART client (BALP agent[client]: DCM 110150 Application), who = its client_id.
      type: { coding: [{ system: DICOM_SYSTEM, code: '110150', display: 'Application' }] },
      who: { identifier: { system: OAUTH_CLIENT_ID_SYSTEM, value: context.clientId }, display: context.clientId },
      requestor: true,
      ...(context.fhirUser ? {} : purposes.length > 0 ? { purposeOfUse: purposes.map(purposeConcept) } : {}),
    },
  ];
  if (context.fhirUser) {
    // BALP agent[user]: v3-ParticipationType IRCP (information recipient), with the purpose of use.
    agent.push({
      type: { coding: [{ system: PARTICIPATION_TYPE_SYSTEM, code: 'IRCP', display: 'information recipient' }] },
      who: { reference: context.fhirUser },
      requestor: true,
      ...(purposes.length > 0 ? { purposeOfUse: purposes.map(purposeConcept) } : {}),
    });
  }
  // BALP agent[server]: DCM 110153 Source Role ID (the data flows from us).
  agent.push({
    type: { coding: [{ system: DICOM_SYSTEM, code: '110153', display: 'Source Role ID' }] },
    who: { display: AUDIT_SOURCE_ID },
    requestor: false,
  });

  const entity: AuditEventEntity[] = [];
  if (event.patient) {
    // BALP entity[patient]: what it is searched by (`AuditEvent?patient=` reads entity.what with role 1).
    entity.push({
      what: { reference: patientReference(event.patient) },
      type: { system: AUDIT_ENTITY_TYPE_SYSTEM, code: '1', display: 'Person' },
      role: { system: OBJECT_ROLE_SYSTEM, code: '1', display: 'Patient' },
    });
  }
  for (const ref of new Set(event.entities)) {
    entity.push({
      what: { reference: ref },
      type: { system: AUDIT_ENTITY_TYPE_SYSTEM, code: '2', display: 'System Object' },
      role: { system: OBJECT_ROLE_SYSTEM, code: '4', display: 'Domain Resource' },
    });
  }
  for (const policy of new Set(event.policy)) {
    // BALP AuthZconsent entity[consent]; a default policy (a URI, not a Consent) by identifier.
    const isConsent = policy.startsWith('Consent/');
    entity.push({
      what: isConsent ? { reference: policy } : { identifier: { system: 'urn:ietf:rfc:3986', value: policy } },
      type: isConsent ? { system: 'http://hl7.org/fhir/resource-types', code: 'Consent', display: 'Consent' } : { system: AUDIT_ENTITY_TYPE_SYSTEM, code: '4', display: 'Other' },
      role: { system: OBJECT_ROLE_SYSTEM, code: '13', display: 'Security Resource' },
    });
  }
  if (context.tokenId) {
    // BALP entity[token]: the access token's jti (RFC 3553 URN), never the token itself.
    entity.push({
      what: { identifier: { value: `urn:ietf:params:oauth:jti:${context.tokenId}` } },
      type: { system: BALP_USER_AGENT_TYPES_SYSTEM, code: 'UserOauthAgent', display: 'User OAuth Agent participant' },
    });
  }
  if (event.query) {
    entity.push({
      type: { system: AUDIT_ENTITY_TYPE_SYSTEM, code: '2', display: 'System Object' },
      role: { system: OBJECT_ROLE_SYSTEM, code: '24', display: 'Query' },
      description: redactQuery(event.query),
    });
  }

  const outcomeDesc = event.breakGlass
    ? 'Disclosed by break-glass: an emergency purpose overrode the patient consent'
    : permit
      ? undefined
      : 'Access denied by SMART scopes or patient consent';

  return {
    resourceType: 'AuditEvent',
    id,
    ...(event.breakGlass ? { meta: { security: [BREAK_GLASS_SECURITY] } } : {}),
    type: { system: AUDIT_EVENT_TYPE_SYSTEM, code: 'rest', display: 'Restful Operation' },
    subtype: subtypeOf(event.interaction),
    action: actionOf(event.interaction),
    period: { start: event.at.toISOString(), end: event.at.toISOString() },
    recorded: recorded.toISOString(),
    // 0 success; 4 minor failure: the request was refused, which is the system working as designed.
    outcome: permit ? '0' : '4',
    ...(outcomeDesc ? { outcomeDesc } : {}),
    ...(purposes.length > 0 ? { purposeOfEvent: purposes.map(purposeConcept) } : {}),
    agent,
    source: {
      site: AUDIT_SOURCE_ID,
      observer: { display: AUDIT_SOURCE_ID },
      type: [{ system: SECURITY_SOURCE_TYPE_SYSTEM, code: '4', display: 'Application Server' }],
    },
    ...(entity.length > 0 ? { entity } : {}),
  };
}

export interface DisclosureRecorderDeps {
  readonly store: Pick<Store, 'resources'>;
  readonly queues: Pick<QueueRegistry, 'enqueueBulk'>;
  readonly clock: Clock;
  readonly logger: Logger;
}

/**
 * Creates the {@link DisclosureRecorder}. `record` resolves once the AuditEvent is stored and
 * committed to the integrity log (by the store in the same statement, or, for a store without a
 * committer, by an integrity job enqueued before resolving); it throws when that fails, and the
 * caller must then not disclose (audit first, fail closed). The job id `AuditEvent.<id>.<version>`
 * makes a retried enqueue harmless.
 */
export function createDisclosureRecorder(deps: DisclosureRecorderDeps): DisclosureRecorder {
  const { store, queues, logger } = deps;
  /**
   * Group commit: AuditEvents from concurrent requests are written together, in one statement
   * (`createResources`: head, history, search index and integrity commitment at once). At most
   * {@link AUDIT_MAX_IN_FLIGHT} writes run at a time; whatever arrives meanwhile waits for the next
   * one, so the busier the API, the larger each write (classic group commit). Each request still
   * waits until its own event is durable (audit first, fail closed).
   */
  type Waiting = { resource: AuditEvent; id: string; event: DisclosureEvent; resolve: () => void; reject: (err: unknown) => void };
  const waiting: Waiting[] = [];
  let inFlight = 0;
  let scheduled = false;
  const write = async (items: readonly Waiting[]): Promise<void> => {
    try {
      const versions = await store.resources.createResources(items.map((w) => ({ resourceType: 'AuditEvent', id: w.id, resource: w.resource, sourceId: AUDIT_SOURCE_ID })));
      if (!store.resources.commitsVersions) {
        await queues.enqueueBulk(
          'integrity',
          versions.map((v) => ({ data: { resourceType: v.resourceType, id: v.id, versionId: v.versionId }, options: { jobId: `${v.resourceType}.${v.id}.${v.versionId}` } })),
        );
      }
      for (const w of items) {
        // Ids and outcome only (the patient id is a reference, not PHI; no query values, no token).
        logger.debug({ auditEvent: w.id, outcome: w.event.outcome, interaction: w.event.interaction, breakGlass: w.event.breakGlass }, 'disclosure audited');
        w.resolve();
      }
    } catch (err) {
      for (const w of items) w.reject(err);
    }
  };
  const pump = (): void => {
    while (inFlight < AUDIT_MAX_IN_FLIGHT && waiting.length > 0) {
      const items = waiting.splice(0, AUDIT_BATCH_MAX);
      inFlight += 1;
      void write(items).finally(() => {
        inFlight -= 1;
        pump();
      });
    }
  };
  return {
    record(event) {
      const id = randomUUID();
      const resource = buildAuditEvent(event, id, deps.clock.now());
      return new Promise<void>((resolve, reject) => {
        waiting.push({ resource, id, event, resolve, reject });
        if (!scheduled) {
          // Collect what arrives in the same turn of the event loop (no added latency when idle).
          scheduled = true;
          setImmediate(() => {
            scheduled = false;
            pump();
          });
        }
      });
    },
  };
}

/** Most AuditEvents written in one group commit. */
export const AUDIT_BATCH_MAX = 200;
/** Group-commit writes running at once (one can wait for its fsync while the next is being sent). */
export const AUDIT_MAX_IN_FLIGHT = 2;
