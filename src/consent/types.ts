/**
 * Request and decision types of the consent engine.
 *
 * The engine is pure: everything it needs about the request (who asks, why, for which patient and
 * resource) arrives in an {@link AccessRequest}; it never looks anything up. The caller (the
 * consent-narrowed repository in `src/fhir-api`) builds the request from the SMART access token and
 * the stored resource.
 *
 * @see http://hl7.org/fhir/R4/consent.html
 * @see docs/decisions-consent.md for every interpretation of the R4 text taken here.
 */
import type { Coding, Reference, Resource } from '@medplum/fhirtypes';

/** `Consent.scope` codes the engine evaluates (http://terminology.hl7.org/CodeSystem/consentscope). */
export type ConsentScopeCode = 'patient-privacy' | 'research';

/**
 * What the requester wants to do, as a `consentaction` code
 * (http://terminology.hl7.org/CodeSystem/consentaction). `read` is accepted as an alias of
 * `access`, which is what a FHIR read or search by another provider's app is.
 */
export type ConsentAction = 'access' | 'read' | 'use' | 'disclose' | 'collect' | 'correct';

/** An identifier the requesting party is known by (NPI, organisation id, ...). */
export interface ActorIdentifier {
  readonly system: string;
  readonly value: string;
}

/**
 * The requesting party, as established by the authorisation layer (never by the client's say-so).
 *
 * Every reference and identifier listed here is an identity of the requester; a provision actor
 * that names any of them matches. Include group or care-team memberships as references
 * (`Group/x`, `CareTeam/y`) when consents may name those.
 */
export interface RequestActor {
  /** Local references, `Type/id` (Organization, Practitioner, PractitionerRole, Device, Group, CareTeam...). */
  readonly references: readonly string[];
  /** Business identifiers of the same parties (e.g. `http://hl7.org/fhir/sid/us-npi`). */
  readonly identifiers: readonly ActorIdentifier[];
  /**
   * OAuth `client_id` of the SMART app. Matched against provision actors whose reference carries an
   * identifier with system {@link OAUTH_CLIENT_ID_SYSTEM}.
   */
  readonly clientId?: string;
  /**
   * Set by the authorisation layer for users entitled to emergency access. Only such an actor can
   * break the glass (purpose `BTG` or `ETREAT`).
   */
  readonly mayBreakGlass: boolean;
}

/** Identifier system used in `Consent.provision.actor.reference.identifier` to name an OAuth client. */
export const OAUTH_CLIENT_ID_SYSTEM = 'urn:ietf:params:oauth:client-id';

/**
 * A clinically relevant date of the resource (e.g. `Observation.effective[x]`,
 * `Condition.recordedDate`), as a FHIR `date`/`dateTime` string or a `Period`. The caller chooses
 * the element; the engine does not guess it (see docs/decisions-consent.md).
 */
export type ResourceDate = string | { readonly start?: string; readonly end?: string };

/** One question to the engine: may this actor perform this action on this patient's data? */
export interface AccessRequest {
  /** The patient whose consents apply, `Patient/id`. */
  readonly patient: string;
  readonly actor: RequestActor;
  /**
   * PurposeOfUse codes from http://terminology.hl7.org/CodeSystem/v3-ActReason (TREAT, ETREAT,
   * HPAYMT, HOPERAT, HRESCH, PUBHLTH, BTG, ...). An empty list matches no purpose-restricted permit.
   */
  readonly purposeOfUse: readonly string[];
  /** Which kind of consent governs the request. */
  readonly scope: ConsentScopeCode;
  /** FHIR resource type requested, e.g. `Observation`. */
  readonly resourceType: string;
  /**
   * The resource itself, when deciding about one instance (its `meta.security`, code and id are
   * read). Leave it out to ask about the resource type as a whole (see
   * {@link ConsentDecision.resourceDependent}).
   */
  readonly resource?: Resource;
  /** The resource's clinically relevant date, for `provision.dataPeriod`. */
  readonly resourceDate?: ResourceDate;
  /**
   * References (`Type/id`) of resources that refer to the requested resource. Only needed for
   * `provision.data` with meaning `related` (the named resource and what it refers to).
   */
  readonly referrers?: readonly string[];
  /** Defaults to `access`. */
  readonly action?: ConsentAction;
}

/** Options of one decision. */
export interface DecideOptions {
  /**
   * Decision when no consent applies: `deny` in opt-in jurisdictions, `permit` in opt-out ones.
   */
  readonly defaultDecision: 'permit' | 'deny';
  /**
   * For a decision without `request.resource` (a consult about data in general): a deny whose only
   * data criteria are codes (and labels) does not deny but becomes `obligations.redactCodes`, as a
   * label-only deny becomes `redactLabels`. The consent decision service sets it; enforcement points
   * that can ask again per resource leave it off (the decision is then resource-dependent).
   */
  readonly codeObligations?: boolean;
}

/** What the caller must do besides permitting. */
export interface ConsentObligations {
  /**
   * Security labels (meta.security codings) whose resources must be withheld from the response:
   * LEAP's "redact" obligation. Only set on a permit decided without `request.resource`.
   */
  readonly redactLabels?: readonly Coding[];
  /**
   * Codes (Observation.code and the like) whose resources must be withheld: only with
   * {@link DecideOptions.codeObligations}, on a permit decided without `request.resource`.
   */
  readonly redactCodes?: readonly Coding[];
}

declare const consentDecisionBrand: unique symbol;

/** The fields of a {@link ConsentDecision}, without the brand. */
export interface ConsentDecisionFields {
  readonly decision: 'permit' | 'deny';
  /** `consent`: a patient's Consent decided; `default`: none applied; `break-glass`: deny overridden. */
  readonly basis: 'consent' | 'default' | 'break-glass';
  /** The consents that decided (for break-glass: the consents that were overridden), versioned when known. */
  readonly policy: readonly Reference[];
  readonly obligations: ConsentObligations;
  /**
   * True when the question was about a resource type (no `request.resource`) and the answer may
   * differ per instance. A deny then means "not for every instance"; ask again per resource.
   * A permit is never resource-dependent (label-based exceptions come as `obligations.redactLabels`).
   */
  readonly resourceDependent: boolean;
  /** What was decided about: the type, and the instance id when a resource was given. */
  readonly subject: { readonly resourceType: string; readonly id?: string };
}

/**
 * The outcome of `decide`. Branded: only the consent module creates one, so a function that takes
 * a `ConsentDecision` knows the engine ran. Frozen.
 */
export type ConsentDecision = ConsentDecisionFields & { readonly [consentDecisionBrand]: true };

declare const consentCheckedBrand: unique symbol;

/** A resource the consent engine released for disclosure (see `release` in engine.ts). */
export type ConsentChecked<T extends Resource> = T & { readonly [consentCheckedBrand]: true };

/** A consent that could not be fully interpreted; reported by `compileConsents`. */
export interface ConsentProblem {
  readonly consent: string;
  readonly message: string;
  /** Set when the Consent's elements do not have their FHIR shapes (it then denies everything it applies to). */
  readonly malformed?: true;
}
