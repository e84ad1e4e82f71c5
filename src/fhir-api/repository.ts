/**
 * The consent-narrowed repository (BRIEF habit 5): the only way the FHIR API reaches stored data.
 * One is created per request from the request's {@link AccessContext}; everything it hands out has
 * passed SMART scopes AND the patients' Consents and is branded {@link ConsentChecked} by the
 * consent module's `release`.
 *
 * Invariants (each has a leak test in test/fhir-api/leak.test.ts):
 * - a denied resource is indistinguishable from an absent one (`undefined`, the handler's 404);
 * - searches filter BEFORE paging: rows are fetched from SQL in keyset order and filtered here until
 *   the page is full; the cursor resumes after the last row examined; a next link is given only when
 *   a further permitted row was actually found;
 * - no count over unfiltered rows (`_summary=count` counts permitted rows one by one);
 * - `_include` / `_revinclude` / `$everything` go through the same per-resource check;
 * - vread and history need the current version to be permitted too (a label added later protects
 *   the older versions);
 * - every disclosure and denial is recorded through the {@link DisclosureRecorder} before the
 *   response is sent ({@link ScopedRepository.flushAudit}).
 *
 * Compiled consents are cached per patient for the lifetime of the repository (one request), so a
 * Consent change takes effect on the next request.
 *
 * @see docs/decisions-fhir-api.md
 */
import { randomUUID } from 'node:crypto';
import type { Consent, Resource } from '@medplum/fhirtypes';
import {
  CONSENT_SCOPE_SYSTEM,
  compileConsents,
  outgoingReferences,
  release,
  scopesAllow,
  type AccessRequest,
  type CompiledConsents,
  type ConsentChecked,
  type ConsentDecision,
  type ScopeContext,
  type ScopeInteraction,
} from '../consent/index.js';
import type { Clock } from '../platform/clock.js';
import { httpError } from '../platform/errors.js';
import { unstorableValue } from '../platform/json-text.js';
import type { Logger } from '../platform/logger.js';
import { integrityJobId, type QueueRegistry } from '../queue/index.js';
import { isExportManifest } from '../research/export/manifest.js';
import { clinicalDate, clinicalDateRange, extractIndexRows, referenceKey, searchParamKind } from '../store/search-store.js';
import { StoreConflictError } from '../store/errors.js';
import type { PutVersionInput, PutVersionResult, SearchClause, SearchStore, Store, StoredVersion } from '../store/types.js';
import type { AccessContext, DisclosureRecorder } from './access.js';
import type { CursorPosition } from './bundle.js';
import type { IncludeSpec, ParsedSearch } from './search-params.js';

/** What every scoped repository (and the router) needs. */
export interface FhirApiDeps {
  /** The unscoped store; only this module touches it. */
  readonly store: Pick<Store, 'resources' | 'search'>;
  readonly recorder: DisclosureRecorder;
  /** Decision when no Consent applies: `deny` (opt-in jurisdictions) or `permit` (opt-out). */
  readonly consentDefault: 'permit' | 'deny';
  readonly clock: Clock;
  readonly logger: Logger;
  /** Public FHIR base URL, e.g. `https://anchor.example/fhir/R4` (absolute references under it are local). */
  readonly baseUrl: string;
  /** For committing patient-written Consents to the integrity log. */
  readonly queues: Pick<QueueRegistry, 'enqueueBulk'>;
}

/** A resource released for disclosure, with its entity name for the audit. */
export interface Released {
  readonly resource: ConsentChecked<Resource>;
}

/** One page of a scan, and where the next one starts (only when a further permitted row exists). */
export interface Page {
  readonly items: readonly Released[];
  readonly next?: CursorPosition;
}

/** The request-scoped repository. Handlers get nothing else. */
export interface ScopedRepository {
  /** Current version, or undefined when absent, deleted or denied (the caller answers 404 for all three). */
  read(resourceType: string, id: string): Promise<Released | undefined>;
  /** One version; undefined unless that version AND the current version are permitted. */
  vread(resourceType: string, id: string, versionId: string): Promise<Released | undefined>;
  /** Permitted versions, newest first, paged by version number; undefined when the current version is not permitted. */
  history(resourceType: string, id: string, options: { count: number; before?: CursorPosition }): Promise<Page | undefined>;
  /** One page of a type search (filtered before paging). */
  search(query: ParsedSearch, after?: CursorPosition): Promise<Page>;
  /** `_summary=count`: the number of permitted matches. */
  count(query: ParsedSearch): Promise<number>;
  /** Resources to add for `_include` / `_revinclude` (permitted only, not already in `page`). */
  includes(page: readonly Released[], query: ParsedSearch): Promise<Released[]>;
  /**
   * `$everything`: the resources outside any patient's compartment that a page references
   * (Practitioner, Organization, Location, Medication, …), permitted only, not already in the page.
   */
  referenced(page: readonly Released[]): Promise<Released[]>;
  /** `Patient/{id}/$everything`: the Patient first, then its compartment, filtered before paging. */
  everything(
    patientId: string,
    options: { count: number; after?: CursorPosition; types?: readonly string[]; since?: Date; care?: { readonly from?: Date; readonly to?: Date } },
  ): Promise<Page | undefined>;
  /** `_elements`: the released resource reduced to the named top-level elements (re-released). */
  project(item: Released, elements: readonly string[]): Released;
  /** Patient-written Consents (create / update / delete) in patient context. */
  /** Creates (server-assigned id) or updates the token's own patient's Consent; the stored version, if the token may read it. */
  createConsent(body: unknown): Promise<{ id: string; versionId: string; released?: Released }>;
  /**
   * `ifMatch`: the versionIds of an `If-Match` header (version-aware update): the change is made only if
   * the Consent is still at one of them, else 412 naming the current version.
   */
  updateConsent(id: string, body: unknown, ifMatch?: readonly string[]): Promise<{ id: string; versionId: string; released?: Released }>;
  deleteConsent(id: string, ifMatch?: readonly string[]): Promise<void>;
  /** Records this request's disclosures and denials (one event per outcome). Call before responding. */
  flushAudit(interaction: string, query: string | undefined): Promise<void>;
}

/** Policy URIs for decisions not made by a Consent resource. */
export const POLICY = {
  scopes: 'urn:fhir-anchor:policy:smart-scopes',
  defaultPermit: 'urn:fhir-anchor:policy:default-permit',
  defaultDeny: 'urn:fhir-anchor:policy:default-deny',
  ownData: 'urn:fhir-anchor:policy:patient-right-of-access',
  noPatient: 'urn:fhir-anchor:policy:no-patient-data',
} as const;

/** Types that hold no patient's data (scopes alone govern them when they reference no patient). */
const NON_PATIENT_TYPES: ReadonlySet<string> = new Set([
  'Practitioner',
  'PractitionerRole',
  'Organization',
  'Location',
  'Medication',
  'HealthcareService',
  'Endpoint',
  'Substance',
  'ValueSet',
  'Questionnaire',
  'CodeSystem',
  'StructureDefinition',
  'CapabilityStatement',
]);

/** Rows examined per request at most (a search whose matches are mostly denied stops here with a next link). */
const MAX_EXAMINED = 10_000;
/** `_summary=count` examines at most this many rows; beyond that it is refused as too costly. */
const MAX_COUNTED = 100_000;
/** Targets a chained parameter may resolve to (`Observation?patient.name=smith`); more is a 400 asking to narrow it. */
const MAX_CHAIN_TARGETS = 1000;
/** Included / revincluded resources per request at most. */
const MAX_INCLUDED = 1000;
const CONSENT_STATUSES: ReadonlySet<string> = new Set(['draft', 'proposed', 'active', 'rejected', 'inactive', 'entered-in-error']);
const CONSENT_SCOPE_SYSTEMS: ReadonlySet<string> = new Set([CONSENT_SCOPE_SYSTEM, 'http://hl7.org/fhir/consentscope']);

const NOT_PERMITTED = (): Error => httpError(403, 'forbidden', 'The access token does not permit this interaction');

/**
 * Every patient a resource concerns: a Patient itself; otherwise every literal reference to a
 * Patient anywhere in it (contained resources included). Conservative on purpose: each of them must
 * consent.
 */
export function patientsOf(resource: Resource): string[] {
  if (resource.resourceType === 'Patient') return resource.id ? [resource.id] : [];
  const out = new Set<string>();
  forEachReference(resource, (ref) => {
    if (ref.type === 'Patient') out.add(ref.id);
  });
  return [...out];
}

/**
 * What the resources that Consents name with `provision.data` meaning `related` refer to, so that a
 * request about one of those carries them as `referrers` (without, the engine finds such a provision
 * undecidable, and a deny then covers everything it could). Loaded once per request or export page.
 */
export interface RelatedIndex {
  /** Loads the named resources ('Type/id', from `CompiledConsents.relatedReferences`) not loaded yet, in one round trip. */
  load(refs: readonly string[]): Promise<void>;
  /** The loaded `related` resources (of `named`) that refer to `resource`; undefined when `named` is empty. */
  referrers(named: readonly string[] | undefined, resource: Resource): string[] | undefined;
}

export function createRelatedIndex(search: Pick<SearchStore, 'readCurrentMany'>, localBases: readonly string[]): RelatedIndex {
  const outgoing = new Map<string, ReadonlySet<string>>();
  return {
    async load(refs) {
      const wanted: Array<{ type: string; id: string }> = [];
      for (const ref of refs) {
        if (outgoing.has(ref)) continue;
        outgoing.set(ref, new Set()); // not stored: it refers to nothing we hold
        const key = referenceKey(ref);
        if (key) wanted.push(key);
      }
      if (wanted.length === 0) return;
      for (const v of await search.readCurrentMany(wanted)) {
        if (!v.deleted && v.resource) {
          // Not the Patient it is about: withholding a report "and what it refers to" means its
          // results, specimens, encounter, … not the patient's demographics.
          const refs = outgoingReferences(v.resource, localBases);
          outgoing.set(`${v.resourceType}/${v.id}`, new Set([...refs].filter((r) => !r.startsWith('Patient/'))));
        }
      }
    },
    referrers(named, resource) {
      if (!named?.length) return undefined;
      const requested = `${resource.resourceType}/${resource.id ?? ''}`;
      return named.filter((r) => outgoing.get(r)?.has(requested));
    },
  };
}

/**
 * The clinically relevant date a Consent's `dataPeriod` is compared with: the resource's care date,
 * and for a Patient (current demographics, not data from a period) the moment of the request, so
 * "withhold my data from 2010–2012" does not withhold the Patient and "permit my data since 2020"
 * covers it. Other resources without a care date stay undecidable (and a deny covers them).
 */
export function consentDate(resource: Resource, now: Date): string | { start?: string; end?: string } | undefined {
  return clinicalDate(resource) ?? (resource.resourceType === 'Patient' ? now.toISOString() : undefined);
}

/** Resources resolved per call at most (a chunk of the store's many-read). */
const RESOLVE_CHUNK = 1000;

/**
 * Whether a resource that names no Patient is still patient data to be found through what it
 * references: a Provenance whose targets are an Observation, a List of someone's results, an
 * Observation about a Group. Reference types and export manifests are not.
 */
function concernsPatientsIndirectly(resource: Resource, direct: readonly string[]): boolean {
  return direct.length === 0 && resource.resourceType !== 'Patient' && !NON_PATIENT_TYPES.has(resource.resourceType) && !isExportManifest(resource);
}

/**
 * Every patient each resource concerns: {@link patientsOf}, and for a resource that names no
 * Patient (a Provenance of an Observation), the patients of the stored resources it references,
 * one level deep. A reference to something not stored adds nobody. `cache` ('Type/id' → that
 * resource's patients) saves round trips across calls of one request or export page.
 */
export async function resolvePatients(
  resources: readonly Resource[],
  search: Pick<SearchStore, 'readCurrentMany'>,
  cache: Map<string, readonly string[]> = new Map(),
  direct: ReadonlyArray<readonly string[]> = resources.map((r) => patientsOf(r)),
): Promise<Array<readonly string[]>> {
  const wanted = new Map<string, { type: string; id: string }>();
  resources.forEach((r, i) => {
    if (!concernsPatientsIndirectly(r, direct[i]!)) return;
    forEachReference(r, (ref) => {
      const key = `${ref.type}/${ref.id}`;
      if (!NON_PATIENT_TYPES.has(ref.type) && !cache.has(key)) wanted.set(key, ref);
    });
  });
  const keys = [...wanted.keys()];
  for (let i = 0; i < keys.length; i += RESOLVE_CHUNK) {
    const chunk = keys.slice(i, i + RESOLVE_CHUNK);
    for (const k of chunk) cache.set(k, []);
    for (const v of await search.readCurrentMany(chunk.map((k) => wanted.get(k)!))) {
      if (!v.deleted && v.resource) cache.set(`${v.resourceType}/${v.id}`, patientsOf(v.resource));
    }
  }
  return resources.map((r, i) => {
    if (!concernsPatientsIndirectly(r, direct[i]!)) return direct[i]!;
    const out = new Set<string>();
    forEachReference(r, (ref) => {
      for (const p of cache.get(`${ref.type}/${ref.id}`) ?? []) out.add(p);
    });
    return [...out];
  });
}

/** Whether a resource's care date overlaps `from`..`to` (either open); a resource without one is kept. */
function inCare(resource: Resource, care: { readonly from?: Date; readonly to?: Date }): boolean {
  const range = clinicalDateRange(resource);
  if (!range) return true;
  return (!care.to || range.lo < care.to) && (!care.from || range.hi > care.from);
}

/** Calls `fn` with every literal reference anywhere in `node` (contained resources included) as local `Type/id`. */
function forEachReference(node: unknown, fn: (ref: { type: string; id: string }) => void): void {
  if (node === null || typeof node !== 'object') return;
  if (Array.isArray(node)) {
    for (const n of node) forEachReference(n, fn);
    return;
  }
  // for…in rather than Object.entries: no pair arrays per node (this runs on every resource read and exported).
  const obj = node as Record<string, unknown>;
  for (const k in obj) {
    const v = obj[k];
    if (k === 'reference' && typeof v === 'string') {
      const ref = referenceKey(v);
      if (ref) fn(ref);
    } else if (typeof v === 'object') forEachReference(v, fn);
  }
}

function entityOf(v: { resourceType: string; id: string; versionId: string }): string {
  return `${v.resourceType}/${v.id}/_history/${v.versionId}`;
}

function policyOf(d: ConsentDecision, defaultDecision: 'permit' | 'deny'): string[] {
  const refs = d.policy.map((p) => p.reference ?? p.display ?? 'Consent').filter((s) => s !== '');
  if (refs.length > 0) return refs;
  return [d.basis === 'default' ? (defaultDecision === 'permit' ? POLICY.defaultPermit : POLICY.defaultDeny) : 'urn:fhir-anchor:policy:consent'];
}

interface Outcome {
  readonly released: Released;
  readonly decisions: readonly ConsentDecision[];
  readonly breakGlass: boolean;
  readonly policy: readonly string[];
  readonly patients: readonly string[];
  readonly entity: string;
}

/** An empty consent set: decisions for data no Consent governs (the patient's own, non-patient data). */
const NO_CONSENTS = compileConsents([]);

/**
 * Creates the repository for one request, narrowed by `access` (SMART scopes ∩ patient Consent).
 *
 * @param access - what authentication established; never the client's say-so
 * @param deps - the unscoped store and the request-independent dependencies
 */
export function createScopedRepository(access: AccessContext, deps: FhirApiDeps): ScopedRepository {
  const { store, recorder, consentDefault, clock, logger, baseUrl, queues } = deps;
  const localBases = [baseUrl.replace(/\/+$/, '')];
  const now = clock.now();
  const contexts: ScopeContext[] = access.patient ? ['patient', 'user', 'system'] : ['user', 'system'];
  /** The patient the user IS (patient context and fhirUser Patient/{same id}): their own data needs no consent. */
  const self = access.patient && access.fhirUser !== undefined && referenceKey(access.fhirUser)?.type === 'Patient' && referenceKey(access.fhirUser)?.id === access.patient ? access.patient : undefined;

  const consentCache = new Map<string, CompiledConsents>();
  /** 'Type/id' → the patients of that stored resource, for resources that name no Patient themselves (see resolvePatients). */
  const referencedPatients = new Map<string, readonly string[]>();
  /** {@link patientsOf} of the rows of a scan batch, computed once for the prefetch and the gate. */
  const directPatients = new WeakMap<Resource, readonly string[]>();
  const decisionsOf = new WeakMap<object, readonly ConsentDecision[]>();
  const audit = {
    disclosed: new Map<string, Set<string>>(), // 'bg' | 'normal' -> entities
    policies: { normal: new Set<string>(), bg: new Set<string>(), deny: new Set<string>() },
    denied: new Set<string>(),
    patients: { normal: new Set<string>(), bg: new Set<string>(), deny: new Set<string>() },
  };

  const deny = (entity: string, policy: readonly string[], patients: readonly string[]): void => {
    audit.denied.add(entity);
    for (const p of policy) audit.policies.deny.add(p);
    for (const p of patients) audit.patients.deny.add(p);
  };
  const disclose = (outcomes: ReadonlyArray<Pick<Outcome, 'entity' | 'policy' | 'patients' | 'breakGlass'>>): void => {
    for (const o of outcomes) {
      const kind = o.breakGlass ? 'bg' : 'normal';
      let set = audit.disclosed.get(kind);
      if (!set) audit.disclosed.set(kind, (set = new Set()));
      set.add(o.entity);
      for (const p of o.policy) audit.policies[kind].add(p);
      for (const p of o.patients) audit.patients[kind].add(p);
    }
  };

  /** Whether some usable scope grants `interaction` on the type at all (constraints aside). */
  const typeAllowed = (resourceType: string, interaction: ScopeInteraction): boolean => {
    const letter = { create: 'c', read: 'r', update: 'u', delete: 'd', search: 's' }[interaction];
    return access.scopes.some(
      (s) => contexts.includes(s.context) && (s.resourceType === '*' || s.resourceType === resourceType) && (s.permissions as readonly string[]).includes(letter),
    );
  };
  const requireType = (resourceType: string, interaction: ScopeInteraction): void => {
    if (!typeAllowed(resourceType, interaction)) {
      deny(resourceType, [POLICY.scopes], []);
      throw NOT_PERMITTED();
    }
  };
  /** Whether only patient-context scopes grant the interaction on the type (then a search can be narrowed to the patient). */
  const patientOnly = (resourceType: string, interaction: ScopeInteraction): boolean =>
    access.patient !== undefined &&
    !access.scopes.some(
      (s) =>
        s.context !== 'patient' &&
        (s.resourceType === '*' || s.resourceType === resourceType) &&
        (s.permissions as readonly string[]).includes(interaction === 'search' ? 's' : 'r'),
    );

  const scopeAllows = (resource: Resource, patients: readonly string[], interaction: ScopeInteraction): boolean => {
    for (const context of contexts) {
      if (!scopesAllow(access.scopes, { context, resourceType: resource.resourceType, interaction, resource })) continue;
      if (context === 'patient') {
        const inCompartment = patients.includes(access.patient!) || (patients.length === 0 && NON_PATIENT_TYPES.has(resource.resourceType));
        if (!inCompartment) continue;
      }
      return true;
    }
    return false;
  };

  /** Compiles and caches the Consents of `patients` (each patient in `byPatient` gets an entry, possibly no Consent). */
  const cacheConsents = (patients: readonly string[], byPatient: ReadonlyMap<string, readonly StoredVersion[]>): void => {
    for (const p of patients) {
      const consents = (byPatient.get(p) ?? []).flatMap((v) => (v.resource?.resourceType === 'Consent' ? [v.resource] : []));
      const compiled = compileConsents(consents, { localBases });
      if (compiled.problems.length > 0) logger.debug({ problems: compiled.problems.length }, 'consents compiled with problems');
      consentCache.set(p, compiled);
    }
  };
  const loadConsents = async (patients: readonly string[]): Promise<void> => {
    const missing = [...new Set(patients)].filter((p) => p !== self && !consentCache.has(p));
    if (missing.length === 0) return;
    const byPatient = new Map<string, StoredVersion[]>();
    for (const { patient, version } of await store.search.consentsFor(missing)) {
      const list = byPatient.get(patient) ?? [];
      list.push(version);
      byPatient.set(patient, list);
    }
    cacheConsents(missing, byPatient);
  };

  const related = createRelatedIndex(store.search, localBases);
  const loadRelated = (patients: readonly string[]): Promise<void> => related.load(patients.flatMap((p) => consentCache.get(p)?.relatedReferences ?? []));

  const baseRequest = (resource: Resource, patient: string): AccessRequest => {
    const date = consentDate(resource, now);
    const referrers = related.referrers(consentCache.get(patient)?.relatedReferences, resource);
    return {
      patient: `Patient/${patient}`,
      actor: { references: access.actor.references, identifiers: access.actor.identifiers, clientId: access.clientId, mayBreakGlass: access.mayBreakGlass },
      purposeOfUse: access.purposeOfUse,
      scope: 'patient-privacy',
      resourceType: resource.resourceType,
      resource,
      ...(date !== undefined ? { resourceDate: date } : {}),
      ...(referrers ? { referrers } : {}),
      action: 'access',
    };
  };

  /** One round trip for what a batch's patient-less rows (Provenance of an Observation, …) reference, before the gate sees them one by one. */
  const prefetchPatients = async (rows: readonly StoredVersion[]): Promise<void> => {
    const live = rows.flatMap((r) => (r.resource && !r.deleted ? [r.resource] : []));
    const direct = live.map((r) => {
      const p = patientsOf(r);
      directPatients.set(r, p);
      return p;
    });
    if (live.some((r, i) => concernsPatientsIndirectly(r, direct[i]!))) await resolvePatients(live, store.search, referencedPatients, direct);
  };

  /**
   * The one gate: scopes, then every concerned patient's consent, then `release`. Denials are
   * recorded here; disclosures are recorded by the caller for what it actually returns.
   */
  const evaluate = async (version: StoredVersion, interaction: ScopeInteraction): Promise<Outcome | undefined> => {
    const resource = version.resource;
    if (version.deleted || !resource || resource.resourceType !== version.resourceType || resource.id !== version.id) return undefined;
    const entity = entityOf(version);
    let patients = directPatients.get(resource) ?? patientsOf(resource);
    if (concernsPatientsIndirectly(resource, patients)) patients = (await resolvePatients([resource], store.search, referencedPatients, [patients]))[0]!;
    if (!scopeAllows(resource, patients, interaction)) {
      deny(entity, [POLICY.scopes], patients);
      return undefined;
    }
    await loadConsents(patients);
    // Only where a Consent names something `related` (rare): no extra await on the read path otherwise.
    if (patients.some((p) => consentCache.get(p)?.relatedReferences.length)) await loadRelated(patients);
    const decisions: ConsentDecision[] = [];
    const policy: string[] = [];
    let breakGlass = false;
    if (patients.length === 0) {
      // No patient is concerned: reference data (reference types, and the export manifests the
      // export job writes: file names and hashes, no PHI) is governed by scopes alone; other data
      // that names no patient gets the default decision (fail closed under opt-in).
      const reference = NON_PATIENT_TYPES.has(resource.resourceType) || isExportManifest(resource);
      const dflt = reference ? 'permit' : consentDefault;
      const d = NO_CONSENTS.decide({ ...baseRequest(resource, '-'), patient: 'Patient/-' }, now, { defaultDecision: dflt });
      decisions.push(d);
      policy.push(reference ? POLICY.noPatient : policyOf(d, dflt)[0]!);
    }
    for (const p of patients) {
      let d: ConsentDecision;
      if (p === self) {
        d = NO_CONSENTS.decide(baseRequest(resource, p), now, { defaultDecision: 'permit' });
        policy.push(POLICY.ownData);
      } else {
        d = consentCache.get(p)!.decide(baseRequest(resource, p), now, { defaultDecision: consentDefault });
        policy.push(...policyOf(d, consentDefault));
      }
      if (d.decision !== 'permit') {
        deny(entity, policyOf(d, consentDefault), patients);
        return undefined;
      }
      if (d.basis === 'break-glass') breakGlass = true;
      decisions.push(d);
    }
    let checked: ConsentChecked<Resource> | undefined;
    for (const d of decisions) {
      checked = release(resource, d);
      if (!checked) {
        deny(entity, ['urn:fhir-anchor:policy:redact-labels', ...policy], patients);
        return undefined;
      }
    }
    if (!checked) return undefined;
    decisionsOf.set(checked, decisions);
    return { released: { resource: checked }, decisions, breakGlass, policy, patients, entity };
  };

  /**
   * Filter-before-page scan: fetches rows in keyset order, keeps permitted ones until the page is
   * full, then looks for one more permitted row to decide whether there is a next page. The next
   * position is the last row examined before that one.
   */
  const scan = async (
    fetch: (after: CursorPosition | undefined, limit: number) => Promise<StoredVersion[]>,
    keyOf: (v: StoredVersion) => CursorPosition,
    start: CursorPosition,
    count: number,
    after: CursorPosition | undefined,
    interaction: ScopeInteraction,
    first: Outcome[] = [],
    keep?: (resource: Resource) => boolean,
  ): Promise<Page> => {
    const page: Outcome[] = [...first];
    if (count === 0) return { items: [] };
    let position = after;
    let examined = 0;
    // count + 1 rows answer a full page and whether a further row exists in one fetch (the export's 500-resource pages).
    const batch = Math.min(Math.max(count * 2, 20), Math.max(500, count + 1));
    for (;;) {
      const rows = await fetch(position, batch);
      await prefetchPatients(rows);
      for (const row of rows) {
        examined += 1;
        // Not asked for (outside `$everything`'s care dates): passed over, neither disclosed nor denied.
        const o = keep && row.resource && !keep(row.resource) ? undefined : await evaluate(row, interaction);
        if (o && page.length >= count) {
          disclose(page);
          return { items: page.map((x) => x.released), next: position ?? start };
        }
        if (o) page.push(o);
        position = keyOf(row);
      }
      if (rows.length < batch) break;
      if (examined >= MAX_EXAMINED) {
        disclose(page);
        return { items: page.map((x) => x.released), ...(position ? { next: position } : {}) };
      }
    }
    disclose(page);
    return { items: page.map((x) => x.released) };
  };

  /**
   * Each chain of `query` as a reference clause over the targets it matches that this request may
   * itself search, and each `_has` as an id clause over what the matching sources it may itself
   * search reference (scopes and the consents), so neither tests data the requester could not see.
   * The targets (chains) and sources (`_has`) used are recorded as disclosed: the answer reveals
   * that they match. Undefined when one of them matches nothing.
   */
  const chainClauses = async (query: ParsedSearch): Promise<SearchClause[] | undefined> => {
    const out: SearchClause[] = [];
    for (const chain of query.chains) {
      const targets: Array<{ type: string; id: string }> = [];
      await gatedMatches(query, chain.targetType, chain.clause, `The chained parameter on ${chain.param}`, () => targets.length, (o) => {
        targets.push({ type: chain.targetType, id: o.released.resource.id! });
      });
      if (targets.length === 0) return undefined;
      out.push({ kind: 'reference', param: chain.param, values: targets });
    }
    for (const spec of query.has) {
      const targets = new Set<string>();
      await gatedMatches(query, spec.sourceType, spec.clause, `_has:${spec.sourceType}:${spec.param}`, () => targets.size, (o) => {
        for (const ref of extractIndexRows(o.released.resource).references) if (ref.param === spec.param && ref.type === query.resourceType) targets.add(ref.id);
      });
      if (targets.size === 0) return undefined;
      out.push({ kind: 'id', values: [...targets] });
    }
    return out;
  };

  /**
   * For a chain or `_has`: the resources of `resourceType` matching `clause` that this request may
   * search (a scope on the type, else 403; narrowed to the patient in patient context), each handed
   * to `take` and recorded as disclosed. More than {@link MAX_CHAIN_TARGETS} collected (`size`), or
   * too many rows examined, is a 400 asking to narrow it.
   */
  const gatedMatches = async (query: ParsedSearch, resourceType: string, clause: SearchClause, what: string, size: () => number, take: (o: Outcome) => void): Promise<void> => {
    requireType(resourceType, 'search');
    const clauses = narrowed({ ...query, resourceType, clauses: [clause], chains: [], has: [] });
    let afterId: string | undefined;
    let examined = 0;
    for (;;) {
      const rows = await store.search.search({ resourceType, clauses, limit: 500, ...(afterId !== undefined ? { afterId } : {}) });
      examined += rows.length;
      await prefetchPatients(rows);
      const permitted: Outcome[] = [];
      for (const row of rows) {
        afterId = row.id;
        const o = await evaluate(row, 'search');
        if (!o) continue;
        permitted.push(o);
        take(o);
      }
      disclose(permitted);
      if (size() > MAX_CHAIN_TARGETS || (rows.length === 500 && examined >= MAX_EXAMINED)) {
        throw httpError(400, 'too-costly', `${what} matches more than ${MAX_CHAIN_TARGETS} resources; narrow it`);
      }
      if (rows.length < 500) return;
    }
  };

  const narrowed = (query: ParsedSearch): SearchClause[] => {
    const clauses = [...query.clauses];
    // Patient-context only: let SQL skip other patients' rows (the per-resource check still runs).
    if (access.patient && patientOnly(query.resourceType, 'search') && !NON_PATIENT_TYPES.has(query.resourceType)) {
      // A Provenance of the patient's Observation names no Patient: by `target`, the target clause
      // narrows enough, and the gate finds the patient through the target (resolvePatients).
      const byTarget = query.resourceType === 'Provenance' && clauses.some((c) => c.kind === 'reference' && c.param === 'target');
      if (query.resourceType === 'Patient') clauses.push({ kind: 'id', values: [access.patient] });
      else if (!byTarget && searchParamKind(query.resourceType, 'patient') === 'reference') {
        clauses.push({ kind: 'reference', param: 'patient', values: [{ type: 'Patient', id: access.patient }] });
      }
    }
    return clauses;
  };

  const consentOwner = (body: unknown): string | undefined => {
    const ref = (body as { patient?: { reference?: unknown } }).patient?.reference;
    if (typeof ref !== 'string') return undefined;
    let local = ref;
    for (const b of localBases) if (ref.startsWith(`${b}/`)) local = ref.slice(b.length + 1);
    const key = /^Patient\/[A-Za-z0-9\-.]{1,64}$/.test(local) ? referenceKey(local) : undefined;
    return key?.id;
  };

  const checkConsentBody = (body: unknown, interaction: 'create' | 'update'): Consent => {
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw httpError(400, 'structure', 'The body must be a Consent resource');
    // PostgreSQL jsonb cannot hold NUL or lone surrogates; refuse them here rather than fail in the store.
    const bad = unstorableValue(body, 'Consent');
    if (bad) throw httpError(400, 'invalid', `${bad.path}: ${bad.why}`);
    let c = body as Consent;
    if (c.resourceType !== 'Consent') throw httpError(400, 'invalid', 'The body must be a Consent resource');
    // Elements without their FHIR shapes (`category` an object, `provision.data` a number): the engine
    // could not read such a Consent, so it would deny everything about the patient. Refused here.
    const malformed = compileConsents([c]).problems.find((p) => p.malformed);
    if (malformed) throw httpError(400, 'structure', `The Consent ${malformed.message.replace(/; it denies every request it applies to$/, '')}`);
    if (typeof c.status !== 'string' || !CONSENT_STATUSES.has(c.status)) throw httpError(400, 'invalid', 'Consent.status is missing or invalid');
    if (!c.scope?.coding?.length) {
      // R5 (and LEAP CDS) put the consent scope among the categories: R4 requires it in `scope`.
      const scoped = (c.category ?? []).flatMap((cc) => cc.coding ?? []).find((x) => x.code && x.system !== undefined && CONSENT_SCOPE_SYSTEMS.has(x.system));
      if (!scoped) throw httpError(400, 'invalid', 'Consent.scope is required (a consentscope code such as patient-privacy, in scope or among the categories)');
      c = { ...c, scope: { coding: [scoped] } };
    }
    if (!access.patient) throw NOT_PERMITTED();
    if (!scopesAllow(access.scopes, { context: 'patient', resourceType: 'Consent', interaction, resource: c })) throw NOT_PERMITTED();
    if (consentOwner(c) !== access.patient) {
      deny(`Consent/${typeof c.id === 'string' ? c.id.slice(0, 64) : 'new'}`, [POLICY.scopes], []);
      throw httpError(403, 'forbidden', 'Consent.patient must be the patient of the access token');
    }
    return c;
  };

  /** The patient's own existing Consent, else a 404 (absent, deleted or someone else's look the same). */
  const ownConsent = async (id: string): Promise<StoredVersion> => {
    const current = await store.search.readCurrent('Consent', id);
    if (!current || current.deleted || !current.resource) throw httpError(404, 'not-found', 'Resource not found');
    if (!access.patient || consentOwner(current.resource) !== access.patient) {
      deny(entityOf(current), [POLICY.scopes], patientsOf(current.resource));
      throw httpError(404, 'not-found', 'Resource not found');
    }
    return current;
  };

  const commit = async (version: StoredVersion): Promise<void> => {
    // Committed to the integrity log like every ingested version: by the store in the same
    // transaction when it has a committer (the runtime's), else by an integrity job.
    if (store.resources.commitsVersions) return;
    await queues.enqueueBulk('integrity', [
      {
        data: { resourceType: version.resourceType, id: version.id, versionId: version.versionId },
        options: { jobId: integrityJobId(version) },
      },
    ]);
  };

  /** A Consent write, version-aware with `ifMatch`: a stale copy is 412 (the patient's own Consent: naming its version leaks nothing). */
  const putConsent = async (input: PutVersionInput): Promise<PutVersionResult> => {
    try {
      return await store.resources.putVersion(input);
    } catch (err) {
      if (err instanceof StoreConflictError) {
        throw httpError(412, 'conflict', `Consent/${input.id} has changed: its current version is ${err.current ?? 'none'}, not one that If-Match names. Read it again and retry.`);
      }
      throw err;
    }
  };

  const writeConsent = async (id: string, consent: Consent, ifMatch?: readonly string[]): Promise<{ id: string; versionId: string; released?: Released }> => {
    const { meta, ...rest } = consent;
    const resource: Consent = { ...rest, id, ...(meta?.security || meta?.tag ? { meta: { security: meta.security, tag: meta.tag } } : {}) };
    const result = await putConsent({ resourceType: 'Consent', id, resource, sourceId: 'patient', ...(ifMatch ? { ifMatch } : {}) });
    await commit(result.version);
    const o = await evaluate(result.version, 'read');
    const written = { id, versionId: result.version.versionId };
    // Written, but the token may be unable to read it back (e.g. a .cu scope without r): no body then.
    if (!o) return written;
    disclose([o]);
    return { ...written, released: o.released };
  };

  return {
    async read(resourceType, id) {
      requireType(resourceType, 'read');
      // One round trip for the resource and the Consents of the patients its index references; any
      // other patient it concerns is looked up by `evaluate` as usual.
      const { version: v, consents } = await store.search.readCurrentWithConsents(resourceType, id);
      if (!v) return undefined;
      cacheConsents([...consents.keys()].filter((p) => p !== self && !consentCache.has(p)), consents);
      const o = await evaluate(v, 'read');
      if (!o) return undefined;
      disclose([o]);
      return o.released;
    },

    async vread(resourceType, id, versionId) {
      requireType(resourceType, 'read');
      const current = await store.search.readCurrent(resourceType, id);
      if (!current || !(await evaluate(current, 'read'))) return undefined;
      const v = await store.resources.readVersion(resourceType, id, versionId);
      if (!v) return undefined;
      const o = await evaluate(v, 'read');
      if (!o) return undefined;
      disclose([o]);
      return o.released;
    },

    async history(resourceType, id, options) {
      requireType(resourceType, 'read');
      const current = await store.search.readCurrent(resourceType, id);
      if (!current || !(await evaluate(current, 'read'))) return undefined;
      const before = options.before?.[0];
      if (before !== undefined && !/^[1-9]\d{0,14}$/.test(before)) return { items: [] };
      return scan(
        (after, limit) => store.resources.history(resourceType, id, { count: limit, ...(after ? { beforeVersion: Number(after[0]) } : {}) }),
        (v) => [v.versionId],
        ['999999999999999'],
        options.count,
        options.before,
        'read',
      );
    },

    async search(query, after) {
      requireType(query.resourceType, 'search');
      const chained = await chainClauses(query);
      if (!chained) return { items: [] };
      const clauses = [...narrowed(query), ...chained];
      const sort = query.sort;
      if (sort) {
        // Positions are [sort key, id]; the keys of fetched rows are kept beside them for keyOf.
        const keys = new WeakMap<StoredVersion, string>();
        return scan(
          async (pos, limit) => {
            const rows = await store.search.searchSorted({ resourceType: query.resourceType, clauses, limit, sort, ...(pos && pos.length === 2 ? { after: { key: pos[0]!, id: pos[1]! } } : {}) });
            return rows.map((row) => {
              keys.set(row.version, row.key);
              return row.version;
            });
          },
          (v) => [keys.get(v)!, v.id],
          [],
          query.count,
          after,
          'search',
        );
      }
      return scan(
        (pos, limit) => store.search.search({ resourceType: query.resourceType, clauses, limit, ...(pos ? { afterId: pos[0] } : {}) }),
        (v) => [v.id],
        [''],
        query.count,
        after,
        'search',
      );
    },

    async count(query) {
      requireType(query.resourceType, 'search');
      const chained = await chainClauses(query);
      if (!chained) return 0;
      const clauses = [...narrowed(query), ...chained];
      let n = 0;
      let afterId: string | undefined;
      let examined = 0;
      for (;;) {
        const rows = await store.search.search({ resourceType: query.resourceType, clauses, limit: 1000, ...(afterId ? { afterId } : {}) });
        await prefetchPatients(rows);
        const permitted: Outcome[] = [];
        for (const row of rows) {
          const o = await evaluate(row, 'search');
          if (o) permitted.push(o);
          afterId = row.id;
        }
        n += permitted.length;
        disclose(permitted);
        examined += rows.length;
        if (rows.length < 1000) return n;
        if (examined >= MAX_COUNTED) throw httpError(400, 'too-costly', 'Too many matches to count; narrow the search');
      }
    },

    async includes(page, query) {
      const out: Outcome[] = [];
      const seen = new Set(page.map((p) => `${p.resource.resourceType}/${p.resource.id ?? ''}`));
      const add = (o: Outcome | undefined): void => {
        if (!o || out.length >= MAX_INCLUDED) return;
        const key = `${o.released.resource.resourceType}/${o.released.resource.id ?? ''}`;
        if (seen.has(key)) return;
        seen.add(key);
        out.push(o);
      };
      for (const spec of query.include) {
        const targets = new Map<string, { type: string; id: string }>();
        for (const p of page) {
          if (p.resource.resourceType !== spec.sourceType) continue;
          for (const ref of extractIndexRows(p.resource).references) {
            if (ref.param === spec.param && (!spec.targetType || ref.type === spec.targetType)) targets.set(`${ref.type}/${ref.id}`, ref);
          }
        }
        for (const t of targets.values()) {
          if (out.length >= MAX_INCLUDED || seen.has(`${t.type}/${t.id}`)) continue;
          if (!typeAllowed(t.type, 'read')) continue;
          const v = await store.search.readCurrent(t.type, t.id);
          if (v) add(await evaluate(v, 'read'));
        }
      }
      for (const spec of query.revinclude) {
        if (!typeAllowed(spec.sourceType, 'read')) continue;
        const targets = page
          .map((p) => p.resource)
          .filter((r) => !spec.targetType || r.resourceType === spec.targetType)
          .map((r) => ({ type: r.resourceType, id: r.id! }));
        if (targets.length === 0) continue;
        await revinclude(spec, targets, add, () => out.length >= MAX_INCLUDED);
      }
      disclose(out);
      return out.map((o) => o.released);
    },

    async referenced(page) {
      const seen = new Set(page.map((p) => `${p.resource.resourceType}/${p.resource.id ?? ''}`));
      const targets = new Map<string, { type: string; id: string }>();
      for (const p of page) {
        forEachReference(p.resource, (ref) => {
          if (NON_PATIENT_TYPES.has(ref.type) && !seen.has(`${ref.type}/${ref.id}`)) targets.set(`${ref.type}/${ref.id}`, ref);
        });
      }
      const out: Outcome[] = [];
      for (const t of targets.values()) {
        if (out.length >= MAX_INCLUDED) break;
        if (!typeAllowed(t.type, 'read')) continue;
        const v = await store.search.readCurrent(t.type, t.id);
        const o = v ? await evaluate(v, 'read') : undefined;
        if (o) out.push(o);
      }
      disclose(out);
      return out.map((o) => o.released);
    },

    async everything(patientId, options) {
      requireType('Patient', 'read');
      const patient = await store.search.readCurrent('Patient', patientId);
      if (!patient) return undefined;
      const gate = await evaluate(patient, 'read');
      if (!gate) return undefined;
      const wildcard = access.scopes.some((s) => contexts.includes(s.context) && s.resourceType === '*' && s.permissions.includes('r'));
      const scoped = wildcard
        ? undefined
        : [...new Set(access.scopes.filter((s) => contexts.includes(s.context) && s.permissions.includes('r')).map((s) => s.resourceType))];
      // `_type` narrows within what the scopes allow; `_since` keeps what changed at or after it.
      const types = options.types ? (scoped ? options.types.filter((t) => scoped.includes(t)) : options.types) : scoped;
      const since = options.since;
      const care = options.care;
      const patientIncluded = (!options.types || options.types.includes('Patient')) && (!since || patient.lastUpdated >= since);
      if (types && types.length === 0) {
        // Nothing of the compartment can match: at most the Patient itself.
        if (!patientIncluded || options.after || options.count === 0) return { items: [] };
        disclose([gate]);
        return { items: [gate.released] };
      }
      return scan(
        (pos, limit) =>
          store.search.compartment(patientId, {
            limit,
            ...(types ? { types } : {}),
            ...(since ? { since } : {}),
            ...(pos && pos.length === 2 ? { after: { resourceType: pos[0]!, id: pos[1]! } } : {}),
          }),
        (v) => [v.resourceType, v.id],
        ['', ''],
        options.count,
        options.after,
        'read',
        options.after || !patientIncluded ? [] : [gate],
        care ? (r) => inCare(r, care) : undefined,
      );
    },

    project(item, elements) {
      const decisions = decisionsOf.get(item.resource);
      if (!decisions) throw new Error('project: not a resource released by this repository');
      const keep = new Set(['resourceType', 'id', 'meta', ...elements]);
      const src = item.resource as unknown as Record<string, unknown>;
      const projected = Object.fromEntries(Object.entries(src).filter(([k]) => keep.has(k))) as unknown as Resource;
      const tag = [...(projected.meta?.tag ?? []), { system: 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue', code: 'SUBSETTED' }];
      const withTag = { ...projected, meta: { ...projected.meta, tag } } as Resource;
      let checked: ConsentChecked<Resource> | undefined;
      for (const d of decisions) {
        checked = release(withTag, d);
        if (!checked) throw new Error('project: the projection was not released');
      }
      decisionsOf.set(checked!, decisions);
      return { resource: checked! };
    },

    async createConsent(body) {
      const c = checkConsentBody(body, 'create');
      return writeConsent(randomUUID(), c);
    },

    async updateConsent(id, body, ifMatch) {
      const c = checkConsentBody(body, 'update');
      if (c.id !== undefined && c.id !== id) throw httpError(400, 'invalid', 'Consent.id must match the id in the URL');
      await ownConsent(id);
      return writeConsent(id, c, ifMatch);
    },

    async deleteConsent(id, ifMatch) {
      if (!access.patient) throw NOT_PERMITTED();
      const current = await ownConsent(id);
      if (!scopesAllow(access.scopes, { context: 'patient', resourceType: 'Consent', interaction: 'delete', resource: current.resource })) throw NOT_PERMITTED();
      const result = await putConsent({ resourceType: 'Consent', id, deleted: true, sourceId: 'patient', ...(ifMatch ? { ifMatch } : {}) });
      await commit(result.version);
      disclose([
        {
          breakGlass: false,
          policy: [POLICY.ownData],
          patients: [access.patient],
          entity: entityOf(result.version),
        },
      ]);
    },

    async flushAudit(interaction, query) {
      const at = clock.now();
      const single = (s: Set<string>): string | undefined => (s.size === 1 ? [...s][0] : undefined);
      const base = { context: access, interaction, ...(query !== undefined ? { query } : {}), at };
      const events = [];
      const normal = audit.disclosed.get('normal');
      const bg = audit.disclosed.get('bg');
      if (normal?.size || (!bg?.size && audit.denied.size === 0)) {
        const patient = single(audit.patients.normal);
        events.push({ ...base, ...(patient ? { patient } : {}), entities: [...(normal ?? [])], outcome: 'permit' as const, policy: [...audit.policies.normal], breakGlass: false });
      }
      if (bg?.size) {
        const patient = single(audit.patients.bg);
        events.push({ ...base, ...(patient ? { patient } : {}), entities: [...bg], outcome: 'permit' as const, policy: [...audit.policies.bg], breakGlass: true });
      }
      if (audit.denied.size) {
        const patient = single(audit.patients.deny);
        events.push({ ...base, ...(patient ? { patient } : {}), entities: [...audit.denied], outcome: 'deny' as const, policy: [...audit.policies.deny], breakGlass: false });
      }
      for (const e of events) await recorder.record(e);
    },
  };

  async function revinclude(
    spec: IncludeSpec,
    targets: ReadonlyArray<{ type: string; id: string }>,
    add: (o: Outcome | undefined) => void,
    full: () => boolean,
  ): Promise<void> {
    const clause: SearchClause = { kind: 'reference', param: spec.param, values: targets.slice(0, 100) };
    let afterId: string | undefined;
    let examined = 0;
    for (;;) {
      const rows = await store.search.search({ resourceType: spec.sourceType, clauses: [clause], limit: 500, ...(afterId ? { afterId } : {}) });
      await prefetchPatients(rows);
      for (const row of rows) {
        if (full()) return;
        add(await evaluate(row, 'read'));
        afterId = row.id;
      }
      examined += rows.length;
      if (rows.length < 500 || examined >= MAX_EXAMINED) return;
    }
  }
}
