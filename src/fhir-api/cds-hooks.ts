/**
 * Consent decisions as a CDS Hooks service, shaped like the LEAP Consent Decision Service: one
 * service, `patient-consent-consult`, that answers "do this patient's consents let this actor do
 * this, for this purpose?" with a card whose `extension.decision` is CONSENT_PERMIT, CONSENT_DENY or
 * NO_CONSENT and whose `extension.obligations` carry LEAP's REDACT obligation.
 *
 * Decisions come from the consent engine (`src/consent`, deny-overrides, not LEAP's
 * most-recent-wins). Callers authenticate with one of our bearer tokens carrying `system/Consent.rs`
 * (or `system/Consent.read`).
 *
 * @see https://cds-hooks.hl7.org/2.0/
 * @see https://github.com/sdhealthconnect/leap-cds (request and response schemas)
 * @see docs/decisions-smart.md
 */
import { randomUUID } from 'node:crypto';
import { Router, type Request } from 'express';
import { z } from 'zod';
import type { Bundle, BundleEntry, Coding, Consent, ConsentProvision, Resource } from '@medplum/fhirtypes';
import {
  ACT_CODE_SYSTEM,
  RESOURCE_TYPES_SYSTEM,
  applySensitivityLabels,
  compileConsents,
  type ConsentDecision,
  type ConsentScopeCode,
  type RequestActor,
  type SensitivityCodeIndex,
} from '../consent/index.js';
import { codingKey, normalizeReference, primaryCodings } from '../consent/fhir-values.js';
import type { Clock } from '../platform/clock.js';
import { httpError } from '../platform/errors.js';
import { jsonBodyParser } from '../platform/json-body.js';
import { pushAll } from '../platform/arrays.js';
import type { Store } from '../store/index.js';
import { resolveActorIdentifiers, type AccessContext } from './access.js';
import { consentDate } from './repository.js';
import { requireScope } from './smart/authenticate.js';

/** The hook and service id. */
export const CONSENT_HOOK = 'patient-consent-consult';

/** LEAP's decisions. */
export type ConsultDecision = 'CONSENT_PERMIT' | 'CONSENT_DENY' | 'NO_CONSENT';

/** LEAP's redact obligation id (v3-ActCode REDACT). */
export const REDACT_OBLIGATION: Coding = { system: ACT_CODE_SYSTEM, code: 'REDACT' };

/** A LEAP obligation: redact data carrying any of `parameters.codes` (security labels, content classes or clinical codes). */
export interface ConsultObligation {
  readonly id: { readonly system: string; readonly code: string };
  readonly parameters: { readonly codes: ReadonlyArray<{ readonly system: string; readonly code: string }> };
}

/** The one card the service returns. */
export interface ConsultCard {
  readonly uuid?: string;
  readonly summary: ConsultDecision;
  readonly detail: string;
  readonly indicator: 'info' | 'warning' | 'critical';
  readonly source: { readonly label: string; readonly url?: string };
  /** LEAP's extension, and nothing else: the decision, its obligations, the consent it is based on. */
  readonly extension: {
    readonly decision: ConsultDecision;
    readonly obligations: readonly ConsultObligation[];
    /** The full URL of the consent that decided (the first, when several did; `detail` names them all). */
    readonly basedOn?: string;
    /** With `context.content` and CONSENT_PERMIT: the content without what the consents withhold. */
    readonly content?: Bundle;
  };
}

export interface CdsHooksDeps {
  readonly store: Pick<Store, 'resources'>;
  /**
   * The patient's Consent resources (any status; the engine ignores inactive ones). Until FHIR
   * search exists, wire a store-backed search here; {@link consentsFromList} serves tests.
   */
  readonly consentsForPatient: (patientId: string) => Promise<Consent[]>;
  /** Decision when no consent applies (opt-in jurisdictions: deny; opt-out: permit). */
  readonly defaultDecision: 'permit' | 'deny';
  readonly clock: Clock;
  /** Authenticates the caller (the SMART authenticator's `authenticateRequest`). */
  readonly authenticate: (req: Request) => Promise<AccessContext>;
  /** Our FHIR base URLs, so absolute references in consents compare as local. */
  readonly localBases?: readonly string[];
  /** The card's `source`. */
  readonly source?: { readonly label: string; readonly url?: string };
  /** DS4P code lists: `context.content` is labelled with them before it is filtered (as at ingest). */
  readonly sensitivity?: SensitivityCodeIndex;
}

const identifier = z.object({ system: z.string().min(1).optional(), value: z.string().min(1) }).passthrough();
/** LEAP accepts one identifier or a list (older and newer schema versions). */
const identifiers = z.union([identifier, z.array(identifier).min(1).max(20)]).transform((x) => (Array.isArray(x) ? x : [x]));

const systemCode = z.object({ system: z.string().optional(), code: z.string().min(1) }).passthrough();
/** `context.content`: a Bundle whose every entry has a resource (LEAP answers 400 otherwise). */
const content = z
  .object({
    resourceType: z.literal('Bundle'),
    entry: z.array(z.object({ resource: z.object({ resourceType: z.string().min(1) }).passthrough() }, { message: 'each entry needs a resource' }).passthrough()).max(1000).optional(),
  })
  .passthrough();

const ConsultRequestSchema = z
  .object({
    hook: z.literal(CONSENT_HOOK),
    hookInstance: z.string().min(1),
    context: z
      .object({
        patientId: identifiers,
        /** LEAP's older request: one consent scope code. */
        scope: z.string().optional(),
        /** LEAP's current request: categories of the consents that apply (consentscope codes among them). */
        category: z.array(systemCode).max(20).optional(),
        purposeOfUse: z.union([z.string(), z.array(z.string())]).optional(),
        actor: identifiers.optional(),
        class: z.array(systemCode).max(50).optional(),
        content: content.optional(),
      })
      .passthrough(),
  })
  .passthrough();

/** A parsed consult request. */
export type ConsultRequest = z.infer<typeof ConsultRequestSchema>;

/** The discovery document (`GET /cds-services`). */
export const CDS_SERVICES = {
  services: [
    {
      id: CONSENT_HOOK,
      hook: CONSENT_HOOK,
      title: 'Patient consent consult',
      description:
        'Decides whether the patient\'s FHIR Consents permit an actor to access their data for a purpose (deny-overrides). Answers CONSENT_PERMIT, CONSENT_DENY or NO_CONSENT with LEAP-style REDACT obligations.',
    },
  ],
} as const;

/** A consent source over a fixed list (tests, fixtures): consents whose `patient` is `Patient/<id>`. */
export function consentsFromList(consents: readonly Consent[]): (patientId: string) => Promise<Consent[]> {
  return (patientId) => Promise.resolve(consents.filter((c) => (c.patient?.reference ?? '').replace(/\/_history\/.*$/, '').endsWith(`Patient/${patientId}`)));
}

/**
 * A consent source over the store's search index (`store.search.consentsFor`), typed structurally so
 * this module does not depend on the search store's other methods.
 */
export function consentsFromSearch(search: {
  consentsFor(patientIds: readonly string[]): Promise<ReadonlyArray<{ readonly version: { readonly resource?: unknown } }>>;
}): (patientId: string) => Promise<Consent[]> {
  return async (patientId) =>
    (await search.consentsFor([patientId])).map((r) => r.version.resource).filter((c): c is Consent => (c as Consent | undefined)?.resourceType === 'Consent');
}

function classTypesIn(consents: readonly Consent[]): Set<string> {
  const types = new Set<string>();
  const walk = (p: ConsentProvision | undefined): void => {
    if (!p) return;
    for (const c of p.class ?? []) if (c.code && (c.system === undefined || c.system === RESOURCE_TYPES_SYSTEM)) types.add(c.code);
    for (const child of p.provision ?? []) walk(child);
  };
  for (const c of consents) if (c.status === 'active') walk(c.provision);
  return types;
}

/** A resource type no consent names: asking about it asks about "the patient's data" in general. */
const ANY_TYPE = 'Resource';
/** Most patients, and actor resources per type, an identifier may resolve to. */
const MAX_MATCHES = 10;

const CONSENT_SCOPE_SYSTEMS = new Set(['http://terminology.hl7.org/CodeSystem/consentscope', 'http://hl7.org/fhir/consentscope']);
const SUPPORTED_SCOPES: ReadonlySet<string> = new Set<ConsentScopeCode>(['patient-privacy', 'research']);

/**
 * The consent scopes a consult asks about: `scope` (LEAP's older shape), else the consentscope codes
 * among `category` (its current shape; other categories, such as LOINC 59284-6 "Patient Consent",
 * narrow nothing), else patient-privacy. A scope the engine does not decide (adr, treatment) is a 400.
 */
function consultScopes(ctx: ConsultRequest['context']): ConsentScopeCode[] {
  const asked =
    ctx.scope !== undefined && ctx.scope !== null
      ? [ctx.scope]
      : (ctx.category ?? []).filter((c) => c.system === undefined || CONSENT_SCOPE_SYSTEMS.has(c.system)).map((c) => c.code);
  if (asked.length === 0) return ['patient-privacy'];
  const unsupported = asked.filter((s) => !SUPPORTED_SCOPES.has(s));
  if (unsupported.length > 0) {
    throw httpError(400, 'not-supported', `consent scope ${unsupported.join(', ')} is not decided here; use patient-privacy or research`);
  }
  return [...new Set(asked)] as ConsentScopeCode[];
}

/** `Type/id`, or a full URL under one of our FHIR bases, as type and id (via the consent engine's reference normaliser); anything else undefined. */
function literalReference(value: string, bases: readonly string[]): { type: string; id: string } | undefined {
  const parts = normalizeReference(value, bases)?.split('/');
  return parts?.length === 2 ? { type: parts[0]!, id: parts[1]! } : undefined;
}

/** `Consent/id` (or `Consent/id/_history/v`) as a full URL under our FHIR base, versionless (as LEAP's basedOn). */
function consentUrl(reference: string, bases: readonly string[]): string {
  const plain = reference.replace(/\/_history\/.*$/, '');
  return bases[0] ? `${bases[0].replace(/\/$/, '')}/${plain}` : plain;
}

/**
 * `content` without what the decision withholds: an entry goes when the consents, asked about that
 * very resource, deny it, or when it carries a code of the REDACT obligation (a security label, its
 * resource type, or a clinical code). Resources are labelled with the DS4P code lists first, as at
 * ingest. `Bundle.total`, when present, is the number of entries left.
 */
function redactContent(bundle: Bundle, redact: ReadonlyMap<string, Coding>, permitted: (resource: Resource) => boolean, sensitivity: SensitivityCodeIndex | undefined): Bundle {
  const keys = new Set(redact.keys());
  const withheld = (resource: Resource): boolean => {
    const labelled = sensitivity ? applySensitivityLabels(resource, sensitivity) : resource;
    if ((labelled.meta?.security ?? []).some((s) => s.code && keys.has(codingKey(s.system, s.code)))) return true;
    if (keys.has(codingKey(RESOURCE_TYPES_SYSTEM, resource.resourceType))) return true;
    if (primaryCodings(resource).some((c) => c.code && keys.has(codingKey(c.system, c.code)))) return true;
    return !permitted(labelled);
  };
  const entry = (bundle.entry ?? []).filter((e: BundleEntry) => e.resource && !withheld(e.resource));
  return { ...bundle, entry, ...(bundle.total !== undefined ? { total: entry.length } : {}) };
}

/**
 * Decides one consult (the router's core). Exported for tests and for in-process callers.
 *
 * - Patients are found by identifier (`findByIdentifier('Patient', system, value)`); identifiers
 *   without a system cannot be looked up. No patient: NO_CONSENT.
 * - The actor's identifiers are matched as given and resolved to local Organization, Practitioner
 *   and PractitionerRole references. The caller of this service is never the user, so it cannot
 *   break the glass.
 * - With `class` (resource types), each type is decided; without, the data in general is decided
 *   and each type a consent names is checked too: a type denied under a general permit becomes a
 *   REDACT obligation (as LEAP does), and so do denied security labels and clinical codes.
 * - Any deny (deny-overrides) is CONSENT_DENY; all decided by the default is NO_CONSENT.
 * - With `content` (a Bundle) and a permit, the card carries the content without what is withheld.
 *   A deny that depends on the data (a dataPeriod, a named resource) is decided per content entry:
 *   CONSENT_PERMIT with the entries it does not withhold, or CONSENT_DENY when it withholds them all.
 */
export async function decideConsult(request: ConsultRequest, deps: Omit<CdsHooksDeps, 'authenticate'>): Promise<ConsultCard> {
  const ctx = request.context;
  const scopes = consultScopes(ctx);
  const purposeOfUse = typeof ctx.purposeOfUse === 'string' ? ctx.purposeOfUse.split(' ').filter((p) => p !== '') : (ctx.purposeOfUse ?? []);
  let types: string[] | undefined;
  if (ctx.class && ctx.class.length > 0) {
    types = [...new Set(ctx.class.filter((c) => c.system === undefined || c.system === RESOURCE_TYPES_SYSTEM).map((c) => c.code))];
    if (types.length === 0) throw httpError(400, 'not-supported', `context.class must use the system ${RESOURCE_TYPES_SYSTEM}`);
  }

  const resources = deps.store.resources;
  const patientIds = new Set<string>();
  for (const id of ctx.patientId) {
    if (!id.system) {
      // No system: some callers (ASU SHARES) send the patient's literal reference as the value.
      const ref = literalReference(id.value, deps.localBases ?? []);
      if (ref?.type === 'Patient' && (await resources.readCurrent('Patient', ref.id))?.deleted === false) patientIds.add(ref.id);
      continue;
    }
    for (const v of await resources.findByIdentifier('Patient', id.system, id.value, MAX_MATCHES)) patientIds.add(v.id);
  }

  const actorIdentifiers = (ctx.actor ?? []).filter((a): a is typeof a & { system: string } => a.system !== undefined).map((a) => ({ system: a.system, value: a.value }));
  // An actor without a system whose value is a literal reference (`Organization/128`) is that reference.
  const literalActors = (ctx.actor ?? [])
    .filter((a) => a.system === undefined)
    .map((a) => literalReference(a.value, deps.localBases ?? []))
    .filter((r): r is { type: string; id: string } => r !== undefined)
    .map((r) => `${r.type}/${r.id}`);
  const references = [...new Set([...literalActors, ...(await resolveActorIdentifiers(deps.store, actorIdentifiers))])];
  const actor: RequestActor = { references, identifiers: actorIdentifiers, mayBreakGlass: false };

  const now = deps.clock.now();
  const decisions: ConsentDecision[] = [];
  const redactCodes = new Map<string, { system: string; code: string }>();
  const redactAll = (d: ConsentDecision): void => {
    for (const l of [...(d.obligations.redactLabels ?? []), ...(d.obligations.redactCodes ?? [])]) {
      if (l.system && l.code) redactCodes.set(codingKey(l.system, l.code), { system: l.system, code: l.code });
    }
  };
  const checkers: Array<(resource: Resource) => boolean> = [];
  // A content resource's care date, for dataPeriod provisions (as the FHIR API's reads compare it).
  const dated = (resource: Resource): { resourceDate?: string | { start?: string; end?: string } } => {
    const date = consentDate(resource, now);
    return date !== undefined ? { resourceDate: date } : {};
  };
  for (const patientId of patientIds) {
    const consents = await deps.consentsForPatient(patientId);
    const compiled = compileConsents(consents, { localBases: deps.localBases ?? [] });
    for (const scope of scopes) {
      const ask = (resourceType: string, resource?: Resource): ConsentDecision =>
        compiled.decide({ patient: `Patient/${patientId}`, actor, purposeOfUse, scope, resourceType, ...(resource ? { resource, ...dated(resource) } : {}) }, now, {
          defaultDecision: deps.defaultDecision,
          codeObligations: true,
        });
      checkers.push((resource) => ask(resource.resourceType, resource).decision === 'permit');
      if (types) {
        pushAll(decisions, types.map((t) => ask(t)));
        continue;
      }
      const general = ask(ANY_TYPE);
      decisions.push(general);
      if (general.decision === 'permit') {
        for (const t of classTypesIn(consents)) {
          const d = ask(t);
          if (d.decision === 'deny') redactCodes.set(codingKey(RESOURCE_TYPES_SYSTEM, t), { system: RESOURCE_TYPES_SYSTEM, code: t });
          else redactAll(d);
        }
      }
    }
  }

  const source = deps.source ?? { label: 'fhir-anchor consent decision service' };
  if (decisions.length === 0 || decisions.every((d) => d.basis === 'default')) {
    return {
      uuid: randomUUID(),
      summary: 'NO_CONSENT',
      detail: `No applicable consent was found. Where no consent applies, this server ${deps.defaultDecision === 'deny' ? 'denies access (opt-in)' : 'permits access (opt-out)'}.`,
      indicator: 'warning',
      source,
      extension: { decision: 'NO_CONSENT', obligations: [] },
    };
  }
  const deny = decisions.filter((d) => d.decision === 'deny');
  const deciding = deny.length > 0 ? deny : decisions.filter((d) => d.decision === 'permit');
  const basedOnAll = [...new Set(deciding.flatMap((d) => d.policy.map((p) => p.reference).filter((r): r is string => r !== undefined)))];
  const basedOn = basedOnAll[0] !== undefined ? { basedOn: consentUrl(basedOnAll[0], deps.localBases ?? []) } : {};
  const by = basedOnAll.length > 0 ? ` Decided by ${basedOnAll.join(', ')}.` : '';
  /** A content entry every consent check permits. */
  const permitted = (resource: Resource): boolean => checkers.length > 0 && checkers.every((check) => check(resource));
  // A deny that depends on the data (a withheld period, a named report) decided without any: with
  // `context.content`, the entries themselves are decided, and what they do not withhold is permitted.
  const dependsOnData = deny.length > 0 && deny.every((d) => d.resourceDependent) && ctx.content !== undefined;
  if (dependsOnData) {
    for (const d of decisions) redactAll(d);
    const filtered = redactContent(ctx.content as unknown as Bundle, redactCodes, permitted, deps.sensitivity);
    const given = (ctx.content as unknown as Bundle).entry?.length ?? 0;
    const kept = filtered.entry?.length ?? 0;
    if (kept > 0) {
      return {
        uuid: randomUUID(),
        summary: 'CONSENT_PERMIT',
        detail: `There is a patient consent permitting part of this data: ${given - kept} of ${given} content entries are withheld.${by}`,
        indicator: 'warning',
        source,
        extension: { decision: 'CONSENT_PERMIT', obligations: [], ...basedOn, content: filtered },
      };
    }
  }
  if (deny.length > 0) {
    return {
      uuid: randomUUID(),
      summary: 'CONSENT_DENY',
      detail: `There is a patient consent denying this action.${by}`,
      indicator: 'critical',
      source,
      extension: { decision: 'CONSENT_DENY', obligations: [], ...basedOn },
    };
  }
  for (const d of decisions) redactAll(d);
  const obligations: ConsultObligation[] =
    redactCodes.size > 0 ? [{ id: { system: REDACT_OBLIGATION.system!, code: REDACT_OBLIGATION.code! }, parameters: { codes: [...redactCodes.values()] } }] : [];
  return {
    uuid: randomUUID(),
    summary: 'CONSENT_PERMIT',
    detail: `${obligations.length > 0 ? 'There is a patient consent permitting this action, with data to redact.' : 'There is a patient consent permitting this action.'}${by}`,
    indicator: 'info',
    source,
    extension: {
      decision: 'CONSENT_PERMIT',
      obligations,
      ...basedOn,
      ...(ctx.content ? { content: redactContent(ctx.content as unknown as Bundle, redactCodes, permitted, deps.sensitivity) } : {}),
    },
  };
}

/** Largest consult body: a consult is a few identifiers and codes. */
const BODY_LIMIT_BYTES = 256 * 1024;

/**
 * The CDS Hooks router: `GET /cds-services` (discovery, public) and
 * `POST /cds-services/patient-consent-consult` (bearer token with `system/Consent.rs`). Mount at `/`.
 * Errors leave as OperationOutcomes through the app's error handler.
 */
export function createCdsHooksRouter(deps: CdsHooksDeps): Router {
  const router = Router();
  router.get('/cds-services', (_req, res) => {
    res.json(CDS_SERVICES);
  });
  router.post(
    `/cds-services/${CONSENT_HOOK}`,
    async (req, res, next) => {
      // Authenticate before reading the body.
      const access = await deps.authenticate(req);
      requireScope(access, { resourceType: 'Consent', interaction: 'read', context: 'system' });
      res.locals.access = access;
      next();
    },
    ...jsonBodyParser(BODY_LIMIT_BYTES, ['application/json', 'application/*+json']),
    async (req, res) => {
      const parsed = ConsultRequestSchema.safeParse(req.body);
      if (!parsed.success) {
        const problems = parsed.error.issues.map((i) => `${i.path.join('.') || 'request'}: ${i.message}`);
        throw httpError(400, 'invalid', `Invalid ${CONSENT_HOOK} request: ${problems.join('; ')}`);
      }
      const card = await decideConsult(parsed.data, deps);
      res.json({ cards: [card] });
    },
  );
  return router;
}
