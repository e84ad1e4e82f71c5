/**
 * Who is asking, as established by SMART on FHIR authentication: the one type the auth layer
 * produces and the consent-gated repository consumes. Handlers never see a request without one.
 */
import type { SmartScope } from '../consent/index.js';

/** HL7 PurposeOfUse codes fhir-anchor understands (http://terminology.hl7.org/CodeSystem/v3-ActReason). */
export type PurposeOfUse = 'TREAT' | 'ETREAT' | 'HPAYMT' | 'HOPERAT' | 'HRESCH' | 'PUBHLTH' | 'BTG' | (string & {});

export interface AccessContext {
  /** OAuth client id (`client_id`, or the token's `sub` for SMART Backend Services). */
  readonly clientId: string;
  /** Token issuer (ours or an external authorization server). */
  readonly issuer: string;
  /** Granted scopes, parsed (SMART v1 and v2). Unknown scopes are dropped. */
  readonly scopes: readonly SmartScope[];
  /** `patient` launch context: the patient id (ours) the token is bound to, if any. */
  readonly patient?: string;
  /** `fhirUser`: a reference to the user (Practitioner/…, PractitionerRole/…, Patient/…, RelatedPerson/…). */
  readonly fhirUser?: string;
  /** Purpose(s) of use carried in the token (HL7 PurposeOfUse codes). */
  readonly purposeOfUse: readonly PurposeOfUse[];
  /** The actor as consent sees it: references and identifiers of the user, organisation and client. */
  readonly actor: {
    readonly references: readonly string[];
    readonly identifiers: ReadonlyArray<{ readonly system: string; readonly value: string }>;
  };
  /** Whether this client/user may use break-glass purposes (BTG, ETREAT) to override a deny. */
  readonly mayBreakGlass: boolean;
  /** Token id (`jti`), for audit. */
  readonly tokenId?: string;
}

/** One access decision to be audited (IHE BALP style): every disclosure and every denial. */
export interface DisclosureEvent {
  readonly context: AccessContext;
  /** FHIR interaction: read, vread, history, search-type, search-system, operation ($everything, $export…), create, update, delete. */
  readonly interaction: string;
  /** The patient whose data was concerned (ours), if known. */
  readonly patient?: string;
  /** Resources disclosed (Type/id/_history/vid) — or the ones denied. */
  readonly entities: readonly string[];
  readonly outcome: 'permit' | 'deny';
  /** The Consent resources (or default policy URI) that decided. */
  readonly policy: readonly string[];
  /** True when a break-glass purpose overrode a deny (flagged to the patient). */
  readonly breakGlass: boolean;
  /** Request URL path and query as received (no bodies). */
  readonly query?: string;
  readonly at: Date;
}

/** Writes AuditEvents durably (and commits them to the integrity log). */
export interface DisclosureRecorder {
  record(event: DisclosureEvent): Promise<void>;
  /**
   * Makes every event recorded before the call readable as an AuditEvent (a recorder that writes
   * AuditEvents asynchronously implements it; the API calls it before any request that can return
   * AuditEvents).
   */
  flush?(): Promise<void>;
}

/** Resource types a requester's identifiers can name (the actors consents are written about). */
export const ACTOR_RESOURCE_TYPES = ['Organization', 'Practitioner', 'PractitionerRole'] as const;

/**
 * The local references (`Organization/…`, `Practitioner/…`, `PractitionerRole/…`) whose resources
 * carry one of `identifiers`. Used for SMART clients registered by identifier and for the actors of
 * a consent consult, so that a consent naming the actor by reference applies to a requester known by
 * identifier. An identifier that more than one resource of a type carries names none of them: the
 * identity would also carry permits meant for the others.
 */
export async function resolveActorIdentifiers(
  store: { readonly resources: { findByIdentifier(resourceType: string, system: string, value: string, limit?: number): Promise<ReadonlyArray<{ readonly id: string }>> } },
  identifiers: ReadonlyArray<{ readonly system: string; readonly value: string }>,
): Promise<string[]> {
  const references = new Set<string>();
  for (const a of identifiers) {
    for (const type of ACTOR_RESOURCE_TYPES) {
      const found = await store.resources.findByIdentifier(type, a.system, a.value, 2);
      if (found.length === 1) references.add(`${type}/${found[0]!.id}`);
    }
  }
  return [...references];
}

/**
 * A requester's actor identity completed from the store, both ways: its identifiers resolve to the
 * local actor resources that carry them ({@link resolveActorIdentifiers}), and the identifiers of its
 * local actor resources (`Organization/…`, `Practitioner/…`, `PractitionerRole/…`) join it. A consent
 * naming the practitioner by NPI then applies to a client registered as `Practitioner/dr-1`, and one
 * naming `Organization/org-54` to a client registered by the organisation's OID.
 */
export async function completeActor(
  store: {
    readonly resources: {
      findByIdentifier(resourceType: string, system: string, value: string, limit?: number): Promise<ReadonlyArray<{ readonly id: string }>>;
      readCurrent(resourceType: string, id: string): Promise<{ readonly deleted: boolean; readonly resource?: unknown } | undefined>;
    };
  },
  actor: { readonly references: readonly string[]; readonly identifiers: ReadonlyArray<{ readonly system: string; readonly value: string }> },
): Promise<{ references: string[]; identifiers: Array<{ system: string; value: string }> }> {
  const references = new Set([...actor.references, ...(await resolveActorIdentifiers(store, actor.identifiers))]);
  const identifiers = new Map(actor.identifiers.map((i) => [`${i.system}|${i.value}`, { system: i.system, value: i.value }]));
  for (const ref of references) {
    const [type, id] = ref.split('/');
    if (!type || !id || !(ACTOR_RESOURCE_TYPES as readonly string[]).includes(type)) continue;
    const current = await store.resources.readCurrent(type, id);
    if (!current || current.deleted) continue;
    const list = (current.resource as { identifier?: unknown } | undefined)?.identifier;
    for (const i of Array.isArray(list) ? list : []) {
      const { system, value } = (i ?? {}) as { system?: unknown; value?: unknown };
      if (typeof system === 'string' && system !== '' && typeof value === 'string' && value !== '') identifiers.set(`${system}|${value}`, { system, value });
    }
  }
  return { references: [...references], identifiers: [...identifiers.values()] };
}
