/**
 * The research-consent gate of research exports and cohort counts: every patient a resource
 * concerns must permit research under their active Consents with `scope = research`
 * (http://terminology.hl7.org/CodeSystem/consentscope), for this requester and purpose (HRESCH), or
 * — when none applies — the configured research default. Deny overrides permit (the consent
 * engine's rule); no break-glass for research.
 *
 * The consent-scoped repository in src/fhir-api always builds its requests with scope
 * `patient-privacy`; research decisions are therefore built here with the engine's own
 * `compileConsents`/`release`, over resources the repository already released.
 */
import type { Consent, Resource } from '@medplum/fhirtypes';
import { compileConsents, release, type AccessRequest, type CompiledConsents, type ConsentDecision } from '../../consent/index.js';
import type { AccessContext } from '../../fhir-api/access.js';
import { consentDate, createRelatedIndex, patientsOf } from '../../fhir-api/repository.js';
import type { SearchStore } from '../../store/types.js';

/** Policy URIs recorded when no research Consent decided. */
export const RESEARCH_POLICY = {
  defaultPermit: 'urn:fhir-anchor:policy:research-default-permit',
  defaultDeny: 'urn:fhir-anchor:policy:research-default-deny',
  noPatient: 'urn:fhir-anchor:policy:no-patient-data',
  redactLabels: 'urn:fhir-anchor:policy:redact-labels',
  patientPrivacy: 'urn:fhir-anchor:policy:patient-privacy',
} as const;

/** Reference data that concerns no patient: released to research by scopes alone. */
const REFERENCE_TYPES: ReadonlySet<string> = new Set(['Practitioner', 'PractitionerRole', 'Organization', 'Location', 'Medication', 'Substance']);

/** The research decision about one resource. */
export interface ResearchOutcome {
  readonly permit: boolean;
  /** Every patient the resource concerns (ids). */
  readonly patients: readonly string[];
  /** Consent references or default-policy URIs that decided. */
  readonly policy: readonly string[];
}

/** A gate for one batch of resources (compiled consents are cached for the gate's lifetime). */
export interface ResearchGate {
  /** Loads the research consents of these patients in one query (call once per page). */
  prepare(patients: readonly string[]): Promise<void>;
  /**
   * Decides about one resource; its patients must have been prepared.
   *
   * @param patients - `patientsOf(resource)` when the caller already has it (saves a walk of the resource)
   */
  decide(resource: Resource, patients?: readonly string[]): ResearchOutcome;
}

function policyOf(d: ConsentDecision, dflt: 'permit' | 'deny'): string[] {
  const refs = d.policy.map((p) => p.reference ?? p.display ?? 'Consent').filter((s) => s !== '');
  if (refs.length > 0) return refs;
  return [dflt === 'permit' ? RESEARCH_POLICY.defaultPermit : RESEARCH_POLICY.defaultDeny];
}

/**
 * Creates a research gate for one requester.
 *
 * @param options.search - the store's search index (for `consentsFor`)
 * @param options.access - the requester (actor, client id, purposes)
 * @param options.defaultDecision - research decision when no research Consent applies
 * @param options.localBases - this server's FHIR base URLs (absolute references under them are local)
 * @param options.now - the instant Consent periods are evaluated at
 */
export function createResearchGate(options: {
  readonly search: Pick<SearchStore, 'consentsFor' | 'readCurrentMany'>;
  readonly access: AccessContext;
  readonly defaultDecision: 'permit' | 'deny';
  readonly localBases: readonly string[];
  readonly now: Date;
}): ResearchGate {
  const { access, defaultDecision, now } = options;
  const cache = new Map<string, CompiledConsents>();
  const none = compileConsents([]);
  const related = createRelatedIndex(options.search, options.localBases);
  const request = (resource: Resource, patient: string): AccessRequest => {
    const date = consentDate(resource, now);
    const referrers = related.referrers(cache.get(patient)?.relatedReferences, resource);
    return {
      patient: `Patient/${patient}`,
      // Research is never break-glass.
      actor: { references: access.actor.references, identifiers: access.actor.identifiers, clientId: access.clientId, mayBreakGlass: false },
      purposeOfUse: access.purposeOfUse,
      scope: 'research',
      resourceType: resource.resourceType,
      resource,
      ...(date !== undefined ? { resourceDate: date } : {}),
      ...(referrers ? { referrers } : {}),
      action: 'access',
    };
  };
  return {
    async prepare(patients) {
      const missing = [...new Set(patients)].filter((p) => !cache.has(p));
      if (missing.length === 0) return;
      const rows = await options.search.consentsFor(missing);
      const byPatient = new Map<string, Consent[]>();
      for (const { patient, version } of rows) {
        if (version.resource?.resourceType !== 'Consent') continue;
        const list = byPatient.get(patient) ?? [];
        list.push(version.resource);
        byPatient.set(patient, list);
      }
      for (const p of missing) cache.set(p, compileConsents(byPatient.get(p) ?? [], { localBases: options.localBases }));
      await related.load(missing.flatMap((p) => cache.get(p)!.relatedReferences));
    },
    decide(resource, known) {
      const patients = known ?? patientsOf(resource);
      if (patients.length === 0) {
        if (REFERENCE_TYPES.has(resource.resourceType)) return { permit: true, patients, policy: [RESEARCH_POLICY.noPatient] };
        // Patient-type data naming no patient: the research default (fail closed under opt-in).
        const d = none.decide({ ...request(resource, '-'), patient: 'Patient/-' }, now, { defaultDecision });
        return { permit: d.decision === 'permit' && release(resource, d) !== undefined, patients, policy: policyOf(d, defaultDecision) };
      }
      const policy: string[] = [];
      for (const p of patients) {
        const compiled = cache.get(p);
        if (!compiled) throw new Error('research gate: patient not prepared');
        const d = compiled.decide(request(resource, p), now, { defaultDecision });
        const pol = policyOf(d, defaultDecision);
        if (d.decision !== 'permit') return { permit: false, patients, policy: pol };
        if (!release(resource, d)) return { permit: false, patients, policy: [RESEARCH_POLICY.redactLabels, ...pol] };
        policy.push(...pol);
      }
      return { permit: true, patients, policy: [...new Set(policy)] };
    },
  };
}
