/**
 * The consent decision engine: FHIR R4 Consent resources in, permit / deny out.
 *
 * Pure and synchronous: no I/O, `now` injected, no FHIRPath in the hot path. Consents are compiled
 * once ({@link compileConsents}) into sets and intervals; a decision is then a handful of set
 * look-ups per provision. Every interpretation of the R4 text is listed in
 * docs/decisions-consent.md; the short form:
 *
 * - only `status = active` consents with `scope` patient-privacy or research count;
 * - a provision applies when every criterion it states holds (criteria are AND-ed, the values of
 *   one criterion OR-ed); a nested provision is evaluated only when its parent applies and then
 *   overrides it (R4 "exceptions"); inside one consent and across consents deny overrides permit;
 * - when a criterion cannot be decided (no resource given, unknown code system, a
 *   missing resource date) the engine answers conservatively: it computes every outcome the
 *   unknowns allow and denies if any of them denies;
 * - break-glass (purpose BTG or ETREAT by an actor allowed to) overrides a deny, with basis
 *   `break-glass`, so the caller audits it.
 *
 * @see http://hl7.org/fhir/R4/consent.html
 * @see https://github.com/sdhealthconnect/leap-cds (LEAP CDS: the shape of obligations)
 */
import type { Coding, Consent, ConsentProvision, Reference, Resource } from '@medplum/fhirtypes';
import {
  canonicalSystem,
  codingKey,
  fhirDateInterval,
  normalizeReference,
  outgoingReferences,
  periodInterval,
  primaryCodings,
  unversioned,
  type Interval,
} from './fhir-values.js';
import {
  OAUTH_CLIENT_ID_SYSTEM,
  type AccessRequest,
  type ConsentChecked,
  type ConsentDecision,
  type ConsentDecisionFields,
  type ConsentProblem,
  type ConsentScopeCode,
  type DecideOptions,
} from './types.js';
import { pushAll } from '../platform/arrays.js';

// ---------------------------------------------------------------------------------------------
// Code systems

/** http://terminology.hl7.org/CodeSystem/consentscope */
export const CONSENT_SCOPE_SYSTEM = 'http://terminology.hl7.org/CodeSystem/consentscope';
/** http://terminology.hl7.org/CodeSystem/v3-ActReason (PurposeOfUse) */
export const PURPOSE_OF_USE_SYSTEM = 'http://terminology.hl7.org/CodeSystem/v3-ActReason';
/** http://terminology.hl7.org/CodeSystem/v3-Confidentiality */
export const CONFIDENTIALITY_SYSTEM = 'http://terminology.hl7.org/CodeSystem/v3-Confidentiality';
/** http://terminology.hl7.org/CodeSystem/v3-ActCode (policy rules, sensitivity labels) */
export const ACT_CODE_SYSTEM = 'http://terminology.hl7.org/CodeSystem/v3-ActCode';
/** http://hl7.org/fhir/resource-types, the system of `provision.class` resource types. */
export const RESOURCE_TYPES_SYSTEM = 'http://hl7.org/fhir/resource-types';
/** http://terminology.hl7.org/CodeSystem/consentaction */
export const CONSENT_ACTION_SYSTEM = 'http://terminology.hl7.org/CodeSystem/consentaction';

const SCOPE_SYSTEMS = new Set([CONSENT_SCOPE_SYSTEM, 'http://hl7.org/fhir/consentscope']);
const PURPOSE_SYSTEMS = new Set([PURPOSE_OF_USE_SYSTEM, 'http://hl7.org/fhir/v3/ActReason', 'urn:oid:2.16.840.1.113883.5.8']);
const ACTION_SYSTEMS = new Set([CONSENT_ACTION_SYSTEM, 'http://hl7.org/fhir/consentaction']);
const CLASS_SYSTEMS = new Set([RESOURCE_TYPES_SYSTEM]);
/**
 * Actor roles that name where the data comes from rather than who receives it: v3-ParticipationType
 * author, custodian, informant, performer, data enterer; provenance-participant-type; the contract
 * signer types of authors and sources.
 */
const ORIGIN_ROLES: ReadonlySet<string> = new Set(['AUT', 'CST', 'INF', 'PRF', 'ENT', 'author', 'custodian', 'informant', 'performer', 'enterer', 'PRIMAUTH', 'COAUTH', 'SOURCE']);
const CONFIDENTIALITY_SYSTEMS = new Set([CONFIDENTIALITY_SYSTEM, 'http://hl7.org/fhir/v3/Confidentiality']);
const POLICY_RULE_SYSTEMS = new Set([ACT_CODE_SYSTEM, 'http://hl7.org/fhir/v3/ActCode']);

/** Confidentiality codes, lowest to highest (v3-Confidentiality is ordered U < L < M < N < R < V). */
const CONFIDENTIALITY_ORDER = ['U', 'L', 'M', 'N', 'R', 'V'] as const;
const CONFIDENTIALITY_RANK: ReadonlyMap<string, number> = new Map(CONFIDENTIALITY_ORDER.map((c, i) => [c, i]));
/** Unlabelled data is treated as normal (N), the DS4P default. */
const DEFAULT_CONFIDENTIALITY = CONFIDENTIALITY_RANK.get('N')!;

/**
 * PurposeOfUse specialisations the engine knows (child → parent), a deliberately small subset of
 * v3-ActReason: a consent that permits TREAT covers ETREAT and BTG requests.
 */
const PURPOSE_PARENT: ReadonlyMap<string, string> = new Map([
  ['ETREAT', 'TREAT'],
  ['BTG', 'ETREAT'],
  ['ERTREAT', 'ETREAT'],
  ['CLINTRL', 'TREAT'],
  ['POPHLTH', 'TREAT'],
  ['BIORCH', 'HRESCH'],
  ['CLINTRCH', 'HRESCH'],
]);

/** Purposes that break the glass when the actor may. */
const BREAK_GLASS_PURPOSES: ReadonlySet<string> = new Set(['BTG', 'ETREAT']);

function purposeAncestors(code: string): string[] {
  const out = [code];
  for (let p = PURPOSE_PARENT.get(code); p !== undefined; p = PURPOSE_PARENT.get(p)) out.push(p);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Three-valued matching and outcome sets

const NO = 0;
const YES = 1;
const MAYBE = 2;
type Tri = typeof NO | typeof YES | typeof MAYBE;

/** Bit set of possible outcomes of a provision or consent. */
const PERMIT = 1;
const DENY = 2;
const NONE = 4;
type Outcomes = number;

function and(a: Tri, b: Tri): Tri {
  if (a === NO || b === NO) return NO;
  if (a === MAYBE || b === MAYBE) return MAYBE;
  return YES;
}

// ---------------------------------------------------------------------------------------------
// Compiled form

interface CodeCriterion {
  /** Interpretable keys (`system|code`, or bare codes for actions, purposes, classes). */
  readonly keys: ReadonlySet<string>;
  /** At least one entry could not be interpreted (unknown system, display-only actor...). */
  readonly unknown: boolean;
}

interface DataItem {
  readonly meaning: 'instance' | 'related' | 'dependents' | 'authoredby';
  /** Normalised reference; undefined when it cannot be interpreted. */
  readonly ref?: string;
}

interface LabelCriterion {
  /** Non-confidentiality labels, `system|code`. */
  readonly keys: ReadonlySet<string>;
  /** Lowest / highest confidentiality rank named, if any. */
  readonly minConfidentiality?: number;
  readonly maxConfidentiality?: number;
  readonly codings: readonly Coding[];
}

interface CompiledProvision {
  /** Own type, or undefined (inherits; the root derives it from `policyRule`). */
  readonly type?: 'permit' | 'deny';
  readonly period?: Interval | 'invalid';
  readonly actors?: CodeCriterion;
  /** Actors whose role names where the data comes from (author, custodian…): a criterion on the data. */
  readonly origins?: CodeCriterion;
  readonly actions?: CodeCriterion;
  readonly purposes?: CodeCriterion;
  readonly classes?: CodeCriterion;
  readonly codes?: CodeCriterion;
  /** The codings of `code`, as written (for redact obligations). */
  readonly codeCodings?: readonly Coding[];
  readonly dataPeriod?: Interval | 'invalid';
  readonly data?: readonly DataItem[];
  readonly labels?: LabelCriterion;
  readonly children: readonly CompiledProvision[];
}

interface CompiledConsent {
  readonly reference: Reference;
  readonly patient?: string;
  readonly scopes: ReadonlySet<string>;
  /** Set when the consent carries something the engine must not ignore (a modifierExtension). */
  readonly uninterpretable: boolean;
  /** Type of a root provision that states none, from `policyRule` (OPTIN → permit, OPTOUT → deny...). */
  readonly baseType?: 'permit' | 'deny';
  readonly root?: CompiledProvision;
}

/** Options of {@link compileConsents}. */
export interface CompileOptions {
  /**
   * This server's FHIR base URLs. Absolute references under them are compared as local `Type/id`;
   * other absolute references denote other servers and never equal a local one.
   */
  readonly localBases?: readonly string[];
}

/**
 * Consents compiled for fast repeated decisions. Build one per patient consent set (re-build when a
 * consent changes; the store can cache it by the consents' version ids).
 */
export interface CompiledConsents {
  /** Consents that were skipped or only partly understood, with the reason. */
  readonly problems: readonly ConsentProblem[];
  /** Decides one request; same contract as {@link decide}. */
  decide(request: AccessRequest, now: Date, options: DecideOptions): ConsentDecision;
  /**
   * The resources that `provision.data` entries with meaning `related` name (local `Type/id`, without
   * version): a request about a resource one of them refers to needs them in `request.referrers`, else
   * such a provision is undecidable (and a deny then applies to everything it could cover).
   */
  readonly relatedReferences: readonly string[];
}

const POLICY_RULE_TYPE: Readonly<Record<string, 'permit' | 'deny'>> = {
  OPTIN: 'permit',
  OPTINR: 'permit',
  OPTOUT: 'deny',
  OPTOUTE: 'deny',
};

function consentLabel(c: Consent): string {
  return c.id ? `Consent/${c.id}` : 'Consent (no id)';
}

function consentReference(c: Consent): Reference {
  if (!c.id) return { display: 'Consent without id' };
  const v = c.meta?.versionId;
  return { reference: v ? `Consent/${c.id}/_history/${v}` : `Consent/${c.id}` };
}

function hasModifierExtension(p: ConsentProvision | undefined): boolean {
  if (!p) return false;
  if (p.modifierExtension?.length) return true;
  if (p.actor?.some((a) => a.modifierExtension?.length)) return true;
  if (p.data?.some((d) => d.modifierExtension?.length)) return true;
  return (p.provision ?? []).some(hasModifierExtension);
}

function compileCodings(
  codings: readonly Coding[] | undefined,
  systems: ReadonlySet<string>,
  keyOf: (c: Coding) => string = (c) => c.code!,
): CodeCriterion | undefined {
  if (!codings || codings.length === 0) return undefined;
  const keys = new Set<string>();
  let unknown = false;
  for (const c of codings) {
    // A missing system is read as the element's own code system (lenient; documented).
    if (typeof c.code === 'string' && c.code !== '' && (c.system === undefined || systems.has(canonicalSystem(c.system)!))) keys.add(keyOf(c));
    else unknown = true;
  }
  return { keys, unknown };
}

function compileProvision(p: ConsentProvision, label: string, localBases: readonly string[], problems: ConsentProblem[]): CompiledProvision {
  const problem = (message: string): void => {
    problems.push({ consent: label, message });
  };

  let period: CompiledProvision['period'];
  if (p.period) {
    period = periodInterval(p.period) ?? 'invalid';
    if (period === 'invalid') problem('provision.period is malformed; treated as undecidable');
  }
  let dataPeriod: CompiledProvision['dataPeriod'];
  if (p.dataPeriod) {
    dataPeriod = periodInterval(p.dataPeriod) ?? 'invalid';
    if (dataPeriod === 'invalid') problem('provision.dataPeriod is malformed; treated as undecidable');
  }

  let actors: CodeCriterion | undefined;
  let origins: CodeCriterion | undefined;
  if (p.actor?.length) {
    const recipients = { keys: new Set<string>(), unknown: false };
    const sources = { keys: new Set<string>(), unknown: false };
    for (const a of p.actor) {
      // An author or custodian role says whose data it is, not who receives it (R4 consent-example-notAuthor).
      const origin = (a.role?.coding ?? []).some((c) => c.code !== undefined && ORIGIN_ROLES.has(c.code));
      const into = origin ? sources : recipients;
      const ref = a.reference?.reference !== undefined ? normalizeReference(a.reference.reference, localBases) : undefined;
      const id = a.reference?.identifier;
      if (ref) into.keys.add(`ref:${unversioned(ref)}`);
      if (id?.system && id.value) {
        into.keys.add(`id:${id.system}|${id.value}`);
        // Data names its author by reference: an author known only by identifier cannot be matched.
        if (origin && !ref) into.unknown = true;
      }
      if (!ref && !(id?.system && id.value)) {
        into.unknown = true;
        problem('provision.actor without a resolvable reference or identifier (system + value); treated as undecidable');
      }
    }
    if (recipients.keys.size > 0 || recipients.unknown) actors = recipients;
    if (sources.keys.size > 0 || sources.unknown) origins = sources;
  }

  const actionCodings = p.action?.flatMap((cc) => cc.coding ?? []);
  const actions = p.action?.length ? (compileCodings(actionCodings, ACTION_SYSTEMS) ?? { keys: new Set<string>(), unknown: true }) : undefined;
  const purposes = compileCodings(p.purpose, PURPOSE_SYSTEMS);
  const classes = compileCodings(p.class, CLASS_SYSTEMS);
  for (const [name, crit] of [
    ['action', actions],
    ['purpose', purposes],
    ['class', classes],
  ] as const) {
    if (crit?.unknown) problem(`provision.${name} has codes from an unknown system; treated as undecidable`);
  }

  let codes: CodeCriterion | undefined;
  if (p.code?.length) {
    const keys = new Set<string>();
    let unknown = false;
    for (const cc of p.code) {
      const cs = cc.coding ?? [];
      if (cs.length === 0) unknown = true;
      for (const c of cs) {
        if (typeof c.code === 'string' && c.code !== '') keys.add(codingKey(c.system, c.code));
        else unknown = true;
      }
    }
    if (unknown) problem('provision.code has a concept without a coded value; treated as undecidable');
    codes = { keys, unknown };
  }

  let data: DataItem[] | undefined;
  if (p.data?.length) {
    data = p.data.map((d) => {
      const ref = d.reference?.reference !== undefined ? normalizeReference(d.reference.reference, localBases) : undefined;
      if (!ref) problem('provision.data reference is not a literal local or absolute reference; treated as undecidable');
      return ref ? { meaning: d.meaning, ref } : { meaning: d.meaning };
    });
  }

  let labels: LabelCriterion | undefined;
  if (p.securityLabel?.length) {
    const keys = new Set<string>();
    let min: number | undefined;
    let max: number | undefined;
    for (const c of p.securityLabel) {
      if (typeof c.code !== 'string') continue;
      const rank = c.system !== undefined && CONFIDENTIALITY_SYSTEMS.has(canonicalSystem(c.system)!) ? CONFIDENTIALITY_RANK.get(c.code) : undefined;
      if (rank !== undefined) {
        min = min === undefined ? rank : Math.min(min, rank);
        max = max === undefined ? rank : Math.max(max, rank);
      } else keys.add(codingKey(c.system, c.code));
    }
    labels = { keys, minConfidentiality: min, maxConfidentiality: max, codings: p.securityLabel };
  }

  return {
    type: p.type,
    period,
    actors,
    origins,
    actions,
    purposes,
    classes,
    codes,
    ...(p.code?.length ? { codeCodings: p.code.flatMap((cc) => cc.coding ?? []).filter((c) => typeof c.code === 'string' && c.code !== '') } : {}),
    dataPeriod,
    data,
    labels,
    children: (p.provision ?? []).map((c) => compileProvision(c, label, localBases, problems)),
  };
}

/**
 * {@link compileConsentShaped}, failing closed: a Consent whose elements do not have their FHIR shapes
 * (stored from a source as it came, only flagged by validation: `provision.data` a number, `actor` an
 * object) used to throw here, so every request about its patient failed. It now denies every request
 * of its patient, in every scope, until it is corrected; its problem says why.
 */
function compileConsent(c: Consent, localBases: readonly string[], problems: ConsentProblem[]): CompiledConsent | undefined {
  const before = problems.length;
  try {
    return compileConsentShaped(c, localBases, problems);
  } catch (err) {
    problems.length = before;
    const label = typeof c?.id === 'string' ? `Consent/${c.id}` : 'Consent (no id)';
    problems.push({ consent: label, message: `is malformed (${err instanceof Error ? err.message.slice(0, 120) : 'unreadable'}); it denies every request it applies to`, malformed: true });
    const ref = (c as { patient?: { reference?: unknown } } | undefined)?.patient?.reference;
    return {
      reference: typeof c?.id === 'string' ? { reference: `Consent/${c.id}` } : { display: 'Consent without id' },
      patient: typeof ref === 'string' ? normalizeReference(ref, localBases) : undefined,
      scopes: new Set<string>(ALL_CONSENT_SCOPES),
      uninterpretable: true,
      baseType: undefined,
      root: undefined,
    };
  }
}

/** Every consentscope a malformed Consent is assumed to govern. */
const ALL_CONSENT_SCOPES: readonly string[] = ['patient-privacy', 'research', 'adr', 'treatment'];

function compileConsentShaped(c: Consent, localBases: readonly string[], problems: ConsentProblem[]): CompiledConsent | undefined {
  const label = consentLabel(c);
  if (c.resourceType !== 'Consent') {
    problems.push({ consent: label, message: `not a Consent (${String((c as { resourceType?: unknown }).resourceType)}); skipped` });
    return undefined;
  }
  if (c.status !== 'active') return undefined; // draft, proposed, rejected, inactive, entered-in-error: not in force
  const scopes = new Set<string>();
  for (const coding of c.scope?.coding ?? []) if (coding.code && coding.system && SCOPE_SYSTEMS.has(coding.system)) scopes.add(coding.code);
  // Consents written the R5 way (and LEAP CDS's) carry the consentscope code as a category instead.
  if (scopes.size === 0) {
    for (const cat of c.category ?? []) for (const coding of cat.coding ?? []) if (coding.code && coding.system && SCOPE_SYSTEMS.has(coding.system)) scopes.add(coding.code);
  }
  if (scopes.size === 0) {
    problems.push({ consent: label, message: 'Consent.scope (or a category) has no code from the consentscope system; skipped' });
    return undefined;
  }
  const patient = c.patient?.reference ? normalizeReference(c.patient.reference, localBases) : undefined;
  if (!patient) problems.push({ consent: label, message: 'Consent.patient is not a literal reference; it applies to no request' });

  const uninterpretable = Boolean(c.modifierExtension?.length) || hasModifierExtension(c.provision);
  if (uninterpretable) {
    problems.push({ consent: label, message: 'carries a modifierExtension the engine does not understand; it denies every request it applies to' });
  }

  let baseType: 'permit' | 'deny' | undefined;
  for (const coding of c.policyRule?.coding ?? []) {
    if (coding.code && (coding.system === undefined || POLICY_RULE_SYSTEMS.has(canonicalSystem(coding.system)!))) baseType ??= POLICY_RULE_TYPE[coding.code];
  }
  if (c.provision && !c.provision.type && !baseType) {
    problems.push({
      consent: label,
      message: 'root provision has no type and policyRule is not OPTIN/OPTINR/OPTOUT/OPTOUTE; only its nested provisions decide',
    });
  }

  return {
    reference: consentReference(c),
    patient,
    scopes,
    uninterpretable,
    baseType,
    root: c.provision ? compileProvision(c.provision, label, localBases, problems) : undefined,
  };
}

// ---------------------------------------------------------------------------------------------
// Request preparation (once per decision)

interface Prepared {
  readonly request: AccessRequest;
  readonly now: number;
  readonly patient: string | undefined;
  readonly actorKeys: ReadonlySet<string>;
  readonly action: string;
  /** Request purposes with their known ancestors, per purpose. */
  readonly purposes: readonly (readonly string[])[];
  readonly resource?: PreparedResource;
}

interface PreparedResource {
  readonly ref?: string;
  readonly versionedRef?: string;
  readonly labels: ReadonlySet<string>;
  readonly confidentiality: number;
  readonly date?: Interval;
  readonly referrers?: ReadonlySet<string>;
  codes(): ReadonlySet<string>;
  outgoing(): ReadonlySet<string>;
}

function prepare(request: AccessRequest, now: Date, localBases: readonly string[]): Prepared {
  const actorKeys = new Set<string>();
  for (const r of request.actor.references) {
    const n = normalizeReference(r, localBases);
    if (n) actorKeys.add(`ref:${unversioned(n)}`);
  }
  for (const i of request.actor.identifiers) actorKeys.add(`id:${i.system}|${i.value}`);
  if (request.actor.clientId) actorKeys.add(`id:${OAUTH_CLIENT_ID_SYSTEM}|${request.actor.clientId}`);

  let resource: PreparedResource | undefined;
  const r = request.resource;
  if (r) {
    if (r.resourceType !== request.resourceType) {
      throw new TypeError(`request.resource is a ${r.resourceType}, request.resourceType says ${request.resourceType}`);
    }
    const labels = new Set<string>();
    let confidentiality = -1;
    for (const s of r.meta?.security ?? []) {
      if (typeof s.code !== 'string') continue;
      const rank = s.system !== undefined && CONFIDENTIALITY_SYSTEMS.has(canonicalSystem(s.system)!) ? CONFIDENTIALITY_RANK.get(s.code) : undefined;
      if (rank !== undefined) confidentiality = Math.max(confidentiality, rank);
      else labels.add(codingKey(s.system, s.code));
    }
    let date: Interval | undefined;
    const d = request.resourceDate;
    if (typeof d === 'string') date = fhirDateInterval(d);
    else if (d) date = periodInterval(d);
    let codes: Set<string> | undefined;
    let outgoing: Set<string> | undefined;
    resource = {
      ref: r.id ? `${r.resourceType}/${r.id}` : undefined,
      versionedRef: r.id && r.meta?.versionId ? `${r.resourceType}/${r.id}/_history/${r.meta.versionId}` : undefined,
      labels,
      confidentiality: confidentiality < 0 ? DEFAULT_CONFIDENTIALITY : confidentiality,
      date,
      referrers: request.referrers
        ? new Set(request.referrers.map((x) => normalizeReference(x, localBases)).filter((x): x is string => !!x).map(unversioned))
        : undefined,
      codes: () => (codes ??= new Set(primaryCodings(r).map((c) => codingKey(c.system, c.code!)))),
      outgoing: () => (outgoing ??= outgoingReferences(r, localBases)),
    };
  }

  return {
    request,
    now: now.getTime(),
    patient: normalizeReference(request.patient, localBases),
    actorKeys,
    action: request.action === undefined || request.action === 'read' ? 'access' : request.action,
    purposes: request.purposeOfUse.map(purposeAncestors),
    resource,
  };
}

// ---------------------------------------------------------------------------------------------
// Matching

function matchSet(crit: CodeCriterion, has: (key: string) => boolean): Tri {
  for (const k of crit.keys) if (has(k)) return YES;
  return crit.unknown ? MAYBE : NO;
}

/**
 * Purposes. Permit: every declared purpose must be covered by (equal to or a specialisation of) a
 * provision purpose; no declared purpose covers nothing. Deny: any declared purpose related to a
 * provision purpose (either way round) matches, and a request that declares no purpose is read as
 * "any purpose".
 */
function matchPurposes(crit: CodeCriterion, req: Prepared, type: 'permit' | 'deny'): Tri {
  if (type === 'permit') {
    if (req.purposes.length === 0) return NO;
    const all = req.purposes.every((chain) => chain.some((p) => crit.keys.has(p)));
    if (all) return YES;
    return crit.unknown ? MAYBE : NO;
  }
  if (req.purposes.length === 0) return YES;
  for (const chain of req.purposes) {
    if (chain.some((p) => crit.keys.has(p))) return YES;
    for (const k of crit.keys) if (purposeAncestors(k).includes(chain[0]!)) return YES;
  }
  return crit.unknown ? MAYBE : NO;
}

function matchData(items: readonly DataItem[], req: Prepared): Tri {
  const res = req.resource;
  let result: Tri = NO;
  for (const item of items) {
    let t: Tri;
    if (!item.ref) t = MAYBE;
    else if (!res) {
      // Without the instance: an `instance` of another type can never be this request.
      t = item.meaning === 'instance' && unversioned(item.ref).split('/')[0] !== req.request.resourceType ? NO : MAYBE;
    } else {
      const isSelf = item.ref.includes('/_history/') ? item.ref === res.versionedRef : item.ref === res.ref;
      // authoredby: data that names the author (a Practitioner, an Organization) anywhere, as actors
      // with an author role are read (origins); the named author itself is not data it authored.
      if (item.meaning === 'authoredby') t = res.outgoing().has(item.ref) ? YES : NO;
      else if (isSelf) t = YES;
      else if (item.meaning === 'instance') t = NO;
      else if (item.meaning === 'related') t = res.referrers ? (res.referrers.has(unversioned(item.ref)) ? YES : NO) : MAYBE;
      else t = res.outgoing().has(item.ref) ? YES : NO; // dependents: this resource refers to the named one
    }
    if (t === YES) return YES;
    if (t === MAYBE) result = MAYBE;
  }
  return result;
}

function matchLabels(labels: LabelCriterion, res: PreparedResource, type: 'permit' | 'deny'): Tri {
  for (const k of labels.keys) if (res.labels.has(k)) return YES;
  // Confidentiality is a high-water mark: permit "R" covers data up to R; deny "R" covers R and above.
  if (type === 'permit' && labels.maxConfidentiality !== undefined && res.confidentiality <= labels.maxConfidentiality) return YES;
  if (type === 'deny' && labels.minConfidentiality !== undefined && res.confidentiality >= labels.minConfidentiality) return YES;
  return NO;
}

function expandRedaction(labels: LabelCriterion): Coding[] {
  const out: Coding[] = [];
  for (const c of labels.codings) {
    const rank = c.system !== undefined && CONFIDENTIALITY_SYSTEMS.has(canonicalSystem(c.system)!) && c.code ? CONFIDENTIALITY_RANK.get(c.code) : undefined;
    if (rank === undefined) out.push({ system: c.system, code: c.code });
    else for (const higher of CONFIDENTIALITY_ORDER.slice(rank)) out.push({ system: CONFIDENTIALITY_SYSTEM, code: higher });
  }
  return out;
}

interface EvalContext {
  readonly req: Prepared;
  readonly redact: Coding[];
  /** With {@link DecideOptions.codeObligations}: codes to redact (else undefined). */
  readonly redactCodes?: Coding[];
}

/** Whether a provision applies, given its effective type (criteria that depend on it differ). */
function matchProvision(p: CompiledProvision, type: 'permit' | 'deny', ctx: EvalContext): Tri {
  const { req } = ctx;
  let t: Tri = YES;
  if (p.period !== undefined) t = p.period === 'invalid' ? MAYBE : req.now >= p.period.start && req.now <= p.period.end ? YES : NO;
  if (t === NO) return NO;
  if (p.classes) t = and(t, matchSet(p.classes, (k) => k === req.request.resourceType));
  if (p.actions) t = and(t, matchSet(p.actions, (k) => k === req.action));
  if (p.actors) t = and(t, matchSet(p.actors, (k) => req.actorKeys.has(k)));
  if (p.purposes) t = and(t, matchPurposes(p.purposes, req, type));
  if (t === NO) return NO;

  // Criteria on the data itself.
  const res = req.resource;
  if (p.data) t = and(t, matchData(p.data, req));
  // Data from an author or custodian: the resource refers to them.
  if (p.origins) t = and(t, res ? matchSet(p.origins, (k) => k.startsWith('ref:') && res.outgoing().has(k.slice(4))) : MAYBE);
  // No instance, and the caller takes obligations for codes: a deny whose data criteria are only
  // codes (and labels) becomes a redact obligation for those codes (and labels) instead of a deny.
  if (!res && ctx.redactCodes && type === 'deny' && p.codes && !p.codes.unknown && !p.data && !p.origins && p.dataPeriod === undefined) {
    pushAll(ctx.redactCodes, p.codeCodings ?? []);
    if (p.labels) pushAll(ctx.redact, expandRedaction(p.labels));
    return NO;
  }
  if (p.codes) t = and(t, res ? matchSet(p.codes, (k) => res.codes().has(k)) : MAYBE);
  if (p.dataPeriod !== undefined) {
    if (p.dataPeriod === 'invalid' || !res || !res.date) t = and(t, MAYBE);
    else {
      const d = res.date;
      const inside = type === 'permit' ? d.start >= p.dataPeriod.start && d.end <= p.dataPeriod.end : d.end >= p.dataPeriod.start && d.start <= p.dataPeriod.end;
      t = and(t, inside ? YES : NO);
    }
  }
  if (t === NO || !p.labels) return t;
  if (res) return and(t, matchLabels(p.labels, res, type));
  // No instance: a deny whose only data criterion is its labels becomes LEAP's redact obligation.
  if (type === 'deny' && !p.data && !p.codes && !p.origins && p.dataPeriod === undefined) {
    pushAll(ctx.redact, expandRedaction(p.labels));
    return NO;
  }
  return and(t, MAYBE);
}

/** Possible outcomes of a provision (and its nested exceptions); `inherited` is the parent's type. */
function evalProvision(p: CompiledProvision, inherited: 'permit' | 'deny' | undefined, ctx: EvalContext): Outcomes {
  const type = p.type ?? inherited;
  // A provision without any type (a root with no derivable base policy) only scopes its nested
  // provisions. It is matched with the broader (deny) reading so its nested denies are considered;
  // nested permits count only if it also matches with the permit reading (see below).
  const m = matchProvision(p, type ?? 'deny', ctx);
  if (m === NO) return NONE;
  const own: Outcomes = type === 'permit' ? PERMIT : type === 'deny' ? DENY : NONE;
  let result: Outcomes;
  if (p.children.length === 0) result = own;
  else {
    const kids = p.children.map((c) => evalProvision(c, type, ctx));
    if (kids.some((k) => k === DENY)) result = DENY;
    else {
      result = kids.some((k) => (k & DENY) !== 0) ? DENY : 0;
      // Worlds in which no nested provision denies:
      const noDeny = kids.map((k) => k & ~DENY).filter((k) => k !== 0);
      if (noDeny.some((k) => k === PERMIT)) result |= PERMIT;
      else {
        if (noDeny.some((k) => (k & PERMIT) !== 0)) result |= PERMIT;
        result |= own;
      }
    }
  }
  if (type === undefined && (result & PERMIT) !== 0 && matchProvision(p, 'permit', ctx) === NO) result = (result & ~PERMIT) | NONE;
  if (m === MAYBE) result |= NONE;
  return result;
}

function consentApplies(c: CompiledConsent, req: Prepared, scope: ConsentScopeCode): boolean {
  return c.patient !== undefined && c.patient === req.patient && c.scopes.has(scope);
}

/** The only place a ConsentDecision is made. */
function brand(fields: ConsentDecisionFields): ConsentDecision {
  return Object.freeze({ ...fields, obligations: Object.freeze(fields.obligations) }) as ConsentDecision;
}

function dedupeCodings(codings: readonly Coding[]): Coding[] {
  const seen = new Map<string, Coding>();
  for (const c of codings) if (c.code) seen.set(codingKey(c.system, c.code), c);
  return [...seen.values()];
}

function decideCompiled(consents: readonly CompiledConsent[], req: Prepared, options: DecideOptions): ConsentDecision {
  const request = req.request;
  const ctx: EvalContext = { req, redact: [], ...(options.codeObligations && !request.resource ? { redactCodes: [] } : {}) };
  const outcomes: { consent: CompiledConsent; o: Outcomes }[] = [];
  for (const c of consents) {
    if (!consentApplies(c, req, request.scope)) continue;
    let o: Outcomes;
    if (c.uninterpretable) o = DENY;
    else if (!c.root) o = c.baseType === 'permit' ? PERMIT : c.baseType === 'deny' ? DENY : NONE;
    else o = evalProvision(c.root, c.root.type ?? c.baseType, ctx);
    outcomes.push({ consent: c, o });
  }

  // Combine consents (deny overrides), then fall back to the default when none decided.
  const defaultBit = options.defaultDecision === 'permit' ? PERMIT : DENY;
  let all: Outcomes;
  if (outcomes.some(({ o }) => o === DENY)) all = DENY;
  else {
    all = outcomes.some(({ o }) => (o & DENY) !== 0) ? DENY : 0;
    const noDeny = outcomes.map(({ o }) => o & ~DENY).filter((o) => o !== 0);
    if (noDeny.some((o) => o === PERMIT)) all |= PERMIT;
    else {
      if (noDeny.some((o) => (o & PERMIT) !== 0)) all |= PERMIT;
      all |= defaultBit;
    }
  }

  const decision: 'permit' | 'deny' = (all & DENY) !== 0 ? 'deny' : 'permit';
  const bit = decision === 'permit' ? PERMIT : DENY;
  const deciding = outcomes.filter(({ o }) => (o & bit) !== 0).map(({ consent }) => consent.reference);
  const resourceDependent = !request.resource && all !== PERMIT && all !== DENY;
  const subject = { resourceType: request.resourceType, ...(request.resource?.id ? { id: request.resource.id } : {}) };
  const redactLabels = dedupeCodings(ctx.redact);
  const redactCodes = dedupeCodings(ctx.redactCodes ?? []);

  const breakGlass = request.actor.mayBreakGlass && request.purposeOfUse.some((p) => BREAK_GLASS_PURPOSES.has(p));
  if (breakGlass && (decision === 'deny' || redactLabels.length > 0 || redactCodes.length > 0)) {
    // Emergency override: everything is released; `policy` names what was overridden for the audit.
    const overridden = decision === 'deny' ? deciding : outcomes.filter(({ o }) => (o & PERMIT) !== 0).map(({ consent }) => consent.reference);
    return brand({ decision: 'permit', basis: 'break-glass', policy: overridden, obligations: {}, resourceDependent: false, subject });
  }

  return brand({
    decision,
    basis: deciding.length > 0 ? 'consent' : 'default',
    policy: deciding,
    obligations:
      decision === 'permit' && redactLabels.length + redactCodes.length > 0
        ? { ...(redactLabels.length > 0 ? { redactLabels } : {}), ...(redactCodes.length > 0 ? { redactCodes } : {}) }
        : {},
    resourceDependent,
    subject,
  });
}

/**
 * Compiles consents for repeated decisions: validates them once, turns codes into sets and dates
 * into intervals. Consents that are not `active`, not Consents, or lack a consentscope code are
 * dropped here (the last two reported in `problems`).
 */
export function compileConsents(consents: readonly Consent[], options: CompileOptions = {}): CompiledConsents {
  const localBases = options.localBases ?? [];
  const problems: ConsentProblem[] = [];
  const compiled = consents.map((c) => compileConsent(c, localBases, problems)).filter((c): c is CompiledConsent => c !== undefined);
  const related = new Set<string>();
  const collect = (p: CompiledProvision | undefined): void => {
    if (!p) return;
    for (const d of p.data ?? []) if (d.meaning === 'related' && d.ref && /^[A-Z][A-Za-z]+\/[^/]+/.test(d.ref)) related.add(unversioned(d.ref));
    for (const c of p.children) collect(c);
  };
  for (const c of compiled) collect(c.root);
  return Object.freeze({
    problems: Object.freeze(problems),
    relatedReferences: Object.freeze([...related]),
    decide: (request: AccessRequest, now: Date, decideOptions: DecideOptions): ConsentDecision =>
      decideCompiled(compiled, prepare(request, now, localBases), decideOptions),
  });
}

/**
 * Decides whether the request may proceed under the patient's consents.
 *
 * - Only consents for `request.patient` with `status = active` and a `scope` equal to
 *   `request.scope` are considered.
 * - Deny overrides permit, within a consent and across consents (LEAP uses most-recent-wins; see
 *   docs/decisions-consent.md for why we do not).
 * - No applicable consent: `options.defaultDecision`.
 * - Break-glass: a deny (or a redaction) is overridden when the actor `mayBreakGlass` and declares
 *   purpose BTG or ETREAT; the decision then has basis `break-glass` and `policy` lists the
 *   overridden consents.
 * - Without `request.resource` the answer is about the type: a deny whose only resource criterion is
 *   a security label becomes `obligations.redactLabels`; any other undecidable criterion makes the
 *   answer conservative and `resourceDependent`.
 *
 * Compiles on every call; on a hot path compile once with {@link compileConsents}.
 *
 * @param consents the patient's Consent resources (any status; inactive ones are ignored)
 * @param now the instant `provision.period` is evaluated at
 * @see http://hl7.org/fhir/R4/consent.html
 */
export function decide(consents: readonly Consent[], request: AccessRequest, now: Date, options: DecideOptions): ConsentDecision {
  return compileConsents(consents).decide(request, now, options);
}

/**
 * Releases a resource for disclosure under a decision: returns it branded {@link ConsentChecked}
 * when the decision permits exactly this resource (same type and id, not resource-dependent) and
 * the resource carries none of the labels the decision says to redact; otherwise undefined.
 */
export function release<T extends Resource>(resource: T, decision: ConsentDecision): ConsentChecked<T> | undefined {
  if (decision.decision !== 'permit' || decision.resourceDependent) return undefined;
  if (decision.subject.resourceType !== resource.resourceType) return undefined;
  if (decision.subject.id !== undefined && decision.subject.id !== resource.id) return undefined;
  const redact = decision.obligations.redactLabels;
  if (redact?.length) {
    const keys = new Set(redact.map((c) => codingKey(c.system, c.code ?? '')));
    if ((resource.meta?.security ?? []).some((s) => keys.has(codingKey(s.system, s.code ?? '')))) return undefined;
  }
  return resource as ConsentChecked<T>;
}
