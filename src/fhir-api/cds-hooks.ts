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
import express, { Router, type Request } from 'express';
import { z } from 'zod';
import type { Coding, Consent, ConsentProvision } from '@medplum/fhirtypes';
import {
  ACT_CODE_SYSTEM,
  RESOURCE_TYPES_SYSTEM,
  compileConsents,
  type ConsentDecision,
  type ConsentScopeCode,
  type RequestActor,
} from '../consent/index.js';
import type { Clock } from '../platform/clock.js';
import { httpError } from '../platform/errors.js';
import type { Store } from '../store/index.js';
import type { AccessContext } from './access.js';
import { requireScope } from './smart/authenticate.js';

/** The hook and service id. */
export const CONSENT_HOOK = 'patient-consent-consult';

/** LEAP's decisions. */
export type ConsultDecision = 'CONSENT_PERMIT' | 'CONSENT_DENY' | 'NO_CONSENT';

/** LEAP's redact obligation id (v3-ActCode REDACT). */
export const REDACT_OBLIGATION: Coding = { system: ACT_CODE_SYSTEM, code: 'REDACT' };

/** A LEAP obligation: redact data carrying any of `parameters.codes` (security labels or content classes). */
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
  readonly extension: {
    readonly decision: ConsultDecision;
    readonly obligations: readonly ConsultObligation[];
    /** The consents that decided (versioned references when known). */
    readonly basedOn: readonly string[];
    /** For NO_CONSENT: what the server applies when no consent applies. */
    readonly defaultDecision?: 'permit' | 'deny';
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
}

const identifier = z.object({ system: z.string().min(1).optional(), value: z.string().min(1) }).passthrough();
/** LEAP accepts one identifier or a list (older and newer schema versions). */
const identifiers = z.union([identifier, z.array(identifier).min(1).max(20)]).transform((x) => (Array.isArray(x) ? x : [x]));

const ConsultRequestSchema = z
  .object({
    hook: z.literal(CONSENT_HOOK),
    hookInstance: z.string().min(1),
    context: z
      .object({
        patientId: identifiers,
        scope: z.string().default('patient-privacy'),
        purposeOfUse: z.union([z.string(), z.array(z.string())]).optional(),
        actor: identifiers.optional(),
        class: z.array(z.object({ system: z.string().optional(), code: z.string().min(1) }).passthrough()).max(50).optional(),
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
 *   REDACT obligation (as LEAP does).
 * - Any deny (deny-overrides) is CONSENT_DENY; all decided by the default is NO_CONSENT.
 */
export async function decideConsult(request: ConsultRequest, deps: Omit<CdsHooksDeps, 'authenticate'>): Promise<ConsultCard> {
  const ctx = request.context;
  if (ctx.scope !== 'patient-privacy' && ctx.scope !== 'research') {
    throw httpError(400, 'not-supported', 'context.scope must be patient-privacy or research');
  }
  const scope: ConsentScopeCode = ctx.scope;
  const purposeOfUse = typeof ctx.purposeOfUse === 'string' ? ctx.purposeOfUse.split(' ').filter((p) => p !== '') : (ctx.purposeOfUse ?? []);
  let types: string[] | undefined;
  if (ctx.class) {
    types = [...new Set(ctx.class.filter((c) => c.system === undefined || c.system === RESOURCE_TYPES_SYSTEM).map((c) => c.code))];
    if (types.length === 0) throw httpError(400, 'not-supported', `context.class must use the system ${RESOURCE_TYPES_SYSTEM}`);
  }

  const resources = deps.store.resources;
  const patientIds = new Set<string>();
  for (const id of ctx.patientId) {
    if (!id.system) continue;
    for (const v of await resources.findByIdentifier('Patient', id.system, id.value, MAX_MATCHES)) patientIds.add(v.id);
  }

  const actorIdentifiers = (ctx.actor ?? []).filter((a): a is typeof a & { system: string } => a.system !== undefined).map((a) => ({ system: a.system, value: a.value }));
  const references = new Set<string>();
  for (const a of actorIdentifiers) {
    for (const type of ['Organization', 'Practitioner', 'PractitionerRole']) {
      for (const v of await resources.findByIdentifier(type, a.system, a.value, MAX_MATCHES)) references.add(`${type}/${v.id}`);
    }
  }
  const actor: RequestActor = { references: [...references], identifiers: actorIdentifiers, mayBreakGlass: false };

  const now = deps.clock.now();
  const decisions: ConsentDecision[] = [];
  const redactCodes = new Map<string, { system: string; code: string }>();
  for (const patientId of patientIds) {
    const consents = await deps.consentsForPatient(patientId);
    const compiled = compileConsents(consents, { localBases: deps.localBases ?? [] });
    const ask = (resourceType: string): ConsentDecision =>
      compiled.decide({ patient: `Patient/${patientId}`, actor, purposeOfUse, scope, resourceType }, now, { defaultDecision: deps.defaultDecision });
    if (types) {
      decisions.push(...types.map(ask));
      continue;
    }
    const general = ask(ANY_TYPE);
    decisions.push(general);
    if (general.decision === 'permit') {
      for (const t of classTypesIn(consents)) {
        const d = ask(t);
        if (d.decision === 'deny') redactCodes.set(`${RESOURCE_TYPES_SYSTEM}|${t}`, { system: RESOURCE_TYPES_SYSTEM, code: t });
        else for (const l of d.obligations.redactLabels ?? []) if (l.system && l.code) redactCodes.set(`${l.system}|${l.code}`, { system: l.system, code: l.code });
      }
    }
  }

  const source = deps.source ?? { label: 'fhir-anchor consent decision service' };
  if (decisions.length === 0 || decisions.every((d) => d.basis === 'default')) {
    return {
      uuid: randomUUID(),
      summary: 'NO_CONSENT',
      detail: 'No applicable consent was found.',
      indicator: 'warning',
      source,
      extension: { decision: 'NO_CONSENT', obligations: [], basedOn: [], defaultDecision: deps.defaultDecision },
    };
  }
  const deny = decisions.filter((d) => d.decision === 'deny');
  const deciding = deny.length > 0 ? deny : decisions.filter((d) => d.decision === 'permit');
  const basedOn = [...new Set(deciding.flatMap((d) => d.policy.map((p) => p.reference).filter((r): r is string => r !== undefined)))];
  if (deny.length > 0) {
    return {
      uuid: randomUUID(),
      summary: 'CONSENT_DENY',
      detail: 'There is a patient consent denying this action.',
      indicator: 'critical',
      source,
      extension: { decision: 'CONSENT_DENY', obligations: [], basedOn },
    };
  }
  for (const d of decisions) for (const l of d.obligations.redactLabels ?? []) if (l.system && l.code) redactCodes.set(`${l.system}|${l.code}`, { system: l.system, code: l.code });
  const obligations: ConsultObligation[] =
    redactCodes.size > 0 ? [{ id: { system: REDACT_OBLIGATION.system!, code: REDACT_OBLIGATION.code! }, parameters: { codes: [...redactCodes.values()] } }] : [];
  return {
    uuid: randomUUID(),
    summary: 'CONSENT_PERMIT',
    detail: obligations.length > 0 ? 'There is a patient consent permitting this action, with data to redact.' : 'There is a patient consent permitting this action.',
    indicator: 'info',
    source,
    extension: { decision: 'CONSENT_PERMIT', obligations, basedOn },
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
    express.json({ limit: BODY_LIMIT_BYTES, type: ['application/json', 'application/*+json'] }),
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
