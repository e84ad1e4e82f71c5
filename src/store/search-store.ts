/**
 * The search index of the FHIR API: which search parameters exist per resource type, how their
 * values are extracted from a resource (pure functions, also used by the consent-narrowed
 * repository), and the PostgreSQL tables that hold them (`search_token`, `search_reference`,
 * `search_date`, migration 005). Rows are written in the same transaction as the version they
 * describe ({@link indexResources}, called from the store's version writes), for the current
 * version only.
 *
 * @see http://hl7.org/fhir/R4/search.html
 * @see docs/decisions-fhir-api.md
 */
import { createHash } from 'node:crypto';
import type pg from 'pg';
import type { Resource } from '@medplum/fhirtypes';
import type { DateComparison, SearchClause, SearchQuery, SearchSort, SearchStore, SortedRow, StoredVersion } from './types.js';
import { toVersion, type VersionRow } from './rows.js';
import { BEGIN_INDEX_PLANS } from './sql.js';

/** Kinds of search parameter the index supports. */
export type SearchParamKind = 'token' | 'reference' | 'date' | 'string';

/** Parameters every type supports (answered from the `resource` table itself). */
export const COMMON_PARAMETERS: Readonly<Record<string, 'id' | 'lastUpdated'>> = { _id: 'id', _lastUpdated: 'lastUpdated' };

const T = 'token' as const;
const R = 'reference' as const;
const D = 'date' as const;
const S = 'string' as const;

/**
 * Supported search parameters per resource type (a subset of R4 / US Core 6.1 names). A type not
 * listed supports only {@link COMMON_PARAMETERS}.
 */
export const SEARCH_PARAMETERS: Readonly<Record<string, Readonly<Record<string, SearchParamKind>>>> = {
  Observation: { patient: R, subject: R, encounter: R, code: T, category: T, date: D, status: T, identifier: T },
  Condition: { patient: R, subject: R, encounter: R, code: T, category: T, 'clinical-status': T, 'onset-date': D, 'abatement-date': D, 'recorded-date': D, 'asserted-date': D, identifier: T },
  Encounter: { patient: R, subject: R, date: D, status: T, class: T, type: T, location: R, 'discharge-disposition': T, identifier: T },
  Procedure: { patient: R, subject: R, encounter: R, code: T, category: T, date: D, status: T, identifier: T },
  DiagnosticReport: { patient: R, subject: R, encounter: R, code: T, category: T, date: D, status: T, identifier: T },
  MedicationRequest: { patient: R, subject: R, encounter: R, code: T, category: T, status: T, intent: T, authoredon: D, medication: R, identifier: T },
  ServiceRequest: { patient: R, subject: R, encounter: R, code: T, category: T, status: T, authored: D, identifier: T },
  Immunization: { patient: R, date: D, status: T, identifier: T },
  AllergyIntolerance: { patient: R, code: T, category: T, 'clinical-status': T, date: D, identifier: T },
  DocumentReference: { patient: R, subject: R, encounter: R, category: T, type: T, date: D, period: D, status: T, identifier: T },
  CarePlan: { patient: R, subject: R, encounter: R, category: T, date: D, status: T, identifier: T },
  CareTeam: { patient: R, subject: R, encounter: R, category: T, date: D, status: T, role: T, participant: R, identifier: T },
  Goal: { patient: R, subject: R, 'lifecycle-status': T, 'target-date': D, description: T, identifier: T },
  Device: { patient: R, type: T, status: T, identifier: T },
  Coverage: { patient: R, status: T, identifier: T },
  Consent: { patient: R, category: T, date: D, status: T, identifier: T },
  AuditEvent: { patient: R, date: D },
  // US Core 6.1: Patient SHALL name, SHOULD birthdate, family, gender, given; Practitioner SHALL name;
  // Organization SHALL name; Location SHALL name.
  Patient: { identifier: T, name: S, family: S, given: S, birthdate: D, gender: T, address: S, 'death-date': D },
  Practitioner: { identifier: T, name: S, family: S, given: S },
  PractitionerRole: { practitioner: R, organization: R, specialty: T, endpoint: R, identifier: T },
  Organization: { identifier: T, name: S, address: S },
  Location: { identifier: T, name: S, address: S, 'address-city': S, 'address-state': S, 'address-postalcode': S },
  // US Core 6.1 further: MedicationDispense (status, type; `_include=MedicationDispense:medication`),
  // QuestionnaireResponse (status, authored), RelatedPerson (name), and the reference types a US Core
  // server reads (Medication SHALL, Endpoint, HealthcareService, Questionnaire, ValueSet).
  MedicationDispense: { patient: R, subject: R, status: T, type: T, medication: R, identifier: T },
  QuestionnaireResponse: { patient: R, subject: R, status: T, authored: D, identifier: T },
  RelatedPerson: { patient: R, name: S, identifier: T },
  Medication: { code: T, status: T, identifier: T },
  Endpoint: { name: S, status: T, identifier: T },
  HealthcareService: { name: S, organization: R, identifier: T },
  Questionnaire: { name: S, status: T, identifier: T },
  ValueSet: { name: S, status: T, identifier: T },
  // The rest of the R4 patient compartment that EHRs and Synthea send (claims, dispenses, imaging,
  // provenance, ...): searchable by patient, and so part of $everything and of patient-level exports.
  ...Object.fromEntries(
    [
      'Account', 'AdverseEvent', 'BodyStructure', 'ChargeItem', 'Claim', 'ClaimResponse', 'ClinicalImpression', 'Communication',
      'CommunicationRequest', 'Composition', 'CoverageEligibilityRequest', 'CoverageEligibilityResponse', 'DetectedIssue',
      'DeviceRequest', 'DeviceUseStatement', 'DocumentManifest', 'EpisodeOfCare', 'ExplanationOfBenefit', 'FamilyMemberHistory',
      'Flag', 'ImagingStudy', 'ImmunizationEvaluation', 'ImmunizationRecommendation', 'Invoice', 'List', 'Media',
      'MedicationAdministration', 'MedicationStatement', 'MolecularSequence', 'NutritionOrder', 'Provenance',
      'RiskAssessment', 'Specimen', 'SupplyDelivery', 'VisionPrescription',
    ].map((type) => [type, { patient: R }]),
  ),
  // US Core: servers SHALL support `_revinclude=Provenance:target` on every US Core search.
  Provenance: { patient: R, target: R },
};

/** The kind of `param` on `resourceType`, or undefined when it is not supported. */
export function searchParamKind(resourceType: string, param: string): SearchParamKind | undefined {
  const defs = SEARCH_PARAMETERS[resourceType];
  return defs && Object.hasOwn(defs, param) ? defs[param] : undefined;
}

// ---------------------------------------------------------------------------------------------
// Dates

const DATE_RE = /^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$/;

/** Half-open instant interval [lo, hi); `lo`/`hi` may be ±Infinity timestamps for open periods. */
export interface DateRange {
  readonly lo: Date;
  readonly hi: Date;
}

function utc(y: number, mo: number, d: number, h = 0, mi = 0, s = 0, ms = 0): Date {
  const date = new Date(Date.UTC(y, mo, d, h, mi, s, ms));
  if (y < 100) date.setUTCFullYear(date.getUTCFullYear() - 1900); // Date.UTC maps years 0..99 to 19xx
  return date;
}

/**
 * The interval a FHIR date, dateTime or instant covers at its precision (`2024` is the whole year,
 * `2024-03-01T10:00` a whole minute). Values without a time zone are read as UTC. Returns undefined
 * for anything malformed or out of range (years 0001–9999, real calendar days, 00:00–23:59:59).
 */
export function fhirDateRange(value: string): DateRange | undefined {
  if (value.length > 35) return undefined;
  const m = DATE_RE.exec(value);
  if (!m) return undefined;
  const year = Number(m[1]);
  if (year < 1) return undefined;
  const month = m[2] === undefined ? undefined : Number(m[2]);
  const day = m[3] === undefined ? undefined : Number(m[3]);
  if (month !== undefined && (month < 1 || month > 12)) return undefined;
  if (day !== undefined) {
    const days = new Date(Date.UTC(2000, month!, 0)).getUTCDate(); // days in month (2000 is a leap year)
    const leap = year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0);
    if (day < 1 || day > days || (month === 2 && day === 29 && !leap)) return undefined;
  }
  if (m[4] === undefined) {
    if (month === undefined) return { lo: utc(year, 0, 1), hi: utc(year + 1, 0, 1) };
    if (day === undefined) return { lo: utc(year, month - 1, 1), hi: utc(year, month, 1) };
    return { lo: utc(year, month - 1, day), hi: utc(year, month - 1, day + 1) };
  }
  const hour = Number(m[4]);
  const minute = Number(m[5]);
  const second = m[6] === undefined ? undefined : Number(m[6]);
  if (hour > 23 || minute > 59 || (second !== undefined && second > 59)) return undefined;
  let offsetMin = 0;
  const tz = m[8];
  if (tz && tz !== 'Z') {
    const oh = Number(tz.slice(1, 3));
    const om = Number(tz.slice(4, 6));
    if (oh > 14 || om > 59) return undefined;
    offsetMin = (tz[0] === '-' ? -1 : 1) * (oh * 60 + om);
  }
  const ms = m[7] === undefined ? 0 : Math.floor(Number(`0.${m[7]}`) * 1000);
  const lo = utc(year, month! - 1, day!, hour, minute, second ?? 0, ms);
  lo.setTime(lo.getTime() - offsetMin * 60_000);
  const width = m[7] !== undefined ? 1 : second !== undefined ? 1000 : 60_000;
  return { lo, hi: new Date(lo.getTime() + width) };
}

const NEG_INF = new Date(-8.64e15);
const POS_INF = new Date(8.64e15);

function periodRange(p: unknown): DateRange | undefined {
  if (typeof p !== 'object' || p === null) return undefined;
  const { start, end } = p as { start?: unknown; end?: unknown };
  const s = typeof start === 'string' ? fhirDateRange(start) : undefined;
  const e = typeof end === 'string' ? fhirDateRange(end) : undefined;
  if (!s && !e) return undefined;
  return { lo: s?.lo ?? NEG_INF, hi: e?.hi ?? POS_INF };
}

/** The interval the resource's clinically relevant date ({@link clinicalDate}) covers; undefined when it has none. */
export function clinicalDateRange(resource: Resource): DateRange | undefined {
  const v = clinicalDate(resource);
  return typeof v === 'string' ? fhirDateRange(v) : periodRange(v);
}

const CONDITION_ASSERTED_DATE = 'http://hl7.org/fhir/StructureDefinition/condition-assertedDate';

/** Elements of the date parameters other than `date` (first present wins). */
const DATE_PARAM_ELEMENTS: Readonly<Record<string, readonly string[]>> = {
  birthdate: ['birthDate'],
  'onset-date': ['onsetDateTime', 'onsetPeriod'],
  'abatement-date': ['abatementDateTime', 'abatementPeriod'],
  'recorded-date': ['recordedDate'],
  authoredon: ['authoredOn'],
  authored: ['authoredOn', 'authored'], // ServiceRequest.authoredOn, QuestionnaireResponse.authored
  'death-date': ['deceasedDateTime'],
};

/** Element(s) holding the clinically relevant date per type (the `date` parameter, and consent's `dataPeriod`). */
const DATE_ELEMENTS: Readonly<Record<string, readonly string[]>> = {
  Observation: ['effectiveDateTime', 'effectivePeriod', 'effectiveInstant', 'issued'],
  Encounter: ['period'],
  Procedure: ['performedDateTime', 'performedPeriod'],
  DiagnosticReport: ['effectiveDateTime', 'effectivePeriod', 'issued'],
  Immunization: ['occurrenceDateTime'],
  AllergyIntolerance: ['recordedDate', 'onsetDateTime'],
  DocumentReference: ['date'],
  CarePlan: ['period'],
  CareTeam: ['period'],
  Consent: ['dateTime'],
  AuditEvent: ['recorded'],
  Condition: ['onsetDateTime', 'onsetPeriod', 'recordedDate'],
  MedicationRequest: ['authoredOn'],
  // The rest of the patient compartment that EHRs and Synthea send: no `date` search parameter (so no
  // index rows), but a care date for consent's dataPeriod and `$everything`'s start / end.
  Claim: ['billablePeriod', 'created'],
  ExplanationOfBenefit: ['billablePeriod', 'created'],
  MedicationAdministration: ['effectiveDateTime', 'effectivePeriod'],
  MedicationDispense: ['whenHandedOver', 'whenPrepared'],
  MedicationStatement: ['effectiveDateTime', 'effectivePeriod', 'dateAsserted'],
  ImagingStudy: ['started'],
  Media: ['createdDateTime', 'createdPeriod'],
  ServiceRequest: ['occurrenceDateTime', 'occurrencePeriod', 'authoredOn'],
  DeviceRequest: ['occurrenceDateTime', 'occurrencePeriod', 'authoredOn'],
  SupplyDelivery: ['occurrenceDateTime', 'occurrencePeriod'],
  Goal: ['startDate'],
  Coverage: ['period'],
  EpisodeOfCare: ['period'],
  Communication: ['sent'],
  ClinicalImpression: ['effectiveDateTime', 'effectivePeriod', 'date'],
  FamilyMemberHistory: ['date'],
  RiskAssessment: ['occurrenceDateTime', 'occurrencePeriod'],
  NutritionOrder: ['dateTime'],
};

/**
 * The resource's clinically relevant date (first element present of its type's list), as the
 * consent engine's `resourceDate`: a date/dateTime string or a Period.
 */
export function clinicalDate(resource: Resource): string | { start?: string; end?: string } | undefined {
  const r = resource as unknown as Record<string, unknown>;
  for (const el of DATE_ELEMENTS[resource.resourceType] ?? []) {
    const v = r[el];
    if (typeof v === 'string') return v;
    if (typeof v === 'object' && v !== null) return v as { start?: string; end?: string };
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Extraction

/** A literal reference as local `Type/id` (absolute URLs: their trailing `Type/id`). */
export function referenceKey(reference: unknown): { type: string; id: string } | undefined {
  if (typeof reference !== 'string' || reference.length > 2048) return undefined;
  const m = /(?:^|\/)([A-Z][A-Za-z]{1,63})\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/[^/]+)?$/.exec(reference);
  if (!m) return undefined;
  if (m.index > 0 && !/^https?:\/\//.test(reference)) return undefined;
  return { type: m[1]!, id: m[2]! };
}

function refOf(v: unknown): { type: string; id: string } | undefined {
  return typeof v === 'object' && v !== null ? referenceKey((v as { reference?: unknown }).reference) : undefined;
}

function concepts(v: unknown): unknown[] {
  return Array.isArray(v) ? v : v === undefined || v === null ? [] : [v];
}

function codings(v: unknown): Array<{ system: string; code: string }> {
  const out: Array<{ system: string; code: string }> = [];
  for (const c of concepts(v)) {
    if (typeof c === 'string') out.push({ system: '', code: c });
    else if (typeof c === 'object' && c !== null) {
      // A CodeableConcept's codings, or a bare Coding (Encounter.class).
      const coding = (c as { coding?: unknown }).coding;
      for (const cd of coding === undefined && 'code' in c ? [c] : concepts(coding)) {
        const { system, code } = (cd ?? {}) as { system?: unknown; code?: unknown };
        if (typeof code === 'string' && code !== '') out.push({ system: typeof system === 'string' ? system : '', code });
      }
    }
  }
  return out;
}

const CODE_ELEMENT: Readonly<Record<string, string>> = { MedicationRequest: 'medicationCodeableConcept' };

const ADMINISTRATIVE_GENDER = 'http://hl7.org/fhir/administrative-gender';
/**
 * Longest token code, token system or string value indexed, in UTF-8 bytes: a `search_token` index
 * entry holds code and system together, and PostgreSQL refuses a B-tree entry over 2704 bytes, which
 * used to refuse the whole resource (a 3,000-character identifier value, a 500-character CJK name).
 * A longer value is not searchable by that value; the resource is stored as always.
 */
export const MAX_INDEXED_BYTES = 1024;
const indexable = (v: string): boolean => v.length <= MAX_INDEXED_BYTES / 4 || Buffer.byteLength(v, 'utf8') <= MAX_INDEXED_BYTES;

/**
 * A string as FHIR string search compares it: case and accents ignored ("Müller" and "MULLER" are
 * alike), whitespace runs as one space. NFD splits accented letters into letter and combining mark,
 * and the marks go.
 */
export function normalizeSearchString(value: string): string {
  return value.normalize('NFD').replace(/\p{M}/gu, '').toLowerCase().replace(/\s+/g, ' ').trim();
}

/**
 * The strings a string parameter matches (R4): `name` any part of a HumanName (family, given,
 * prefix, suffix, text) or, on Organization and Location, the name and aliases; `family` and `given`
 * those parts of a HumanName.
 */
function stringValues(r: Record<string, unknown>, param: string): string[] {
  const out: string[] = [];
  const push = (v: unknown): void => {
    if (typeof v === 'string') out.push(v);
  };
  if (param.startsWith('address-')) {
    // Location: one part of its Address (R4 address-city, address-state, address-postalcode).
    const part = { 'address-city': 'city', 'address-state': 'state', 'address-postalcode': 'postalCode' }[param];
    for (const a of concepts(r['address'])) if (part && typeof a === 'object' && a !== null) push((a as Record<string, unknown>)[part]);
    return out;
  }
  if (param === 'address') {
    // Any part of an Address: lines, city, district, state, postal code, country, text.
    for (const a of concepts(r['address'])) {
      if (typeof a !== 'object' || a === null) continue;
      const ad = a as Record<string, unknown>;
      for (const l of concepts(ad['line'])) push(l);
      for (const k of ['city', 'district', 'state', 'postalCode', 'country', 'text']) push(ad[k]);
    }
    return out;
  }
  if (r['resourceType'] !== 'Patient' && r['resourceType'] !== 'Practitioner' && r['resourceType'] !== 'RelatedPerson') {
    // Not a HumanName: Organization and Location (name and aliases), Endpoint, HealthcareService, Questionnaire, ValueSet.
    if (param === 'name') {
      push(r['name']);
      for (const a of concepts(r['alias'])) push(a);
    }
    return out;
  }
  for (const n of concepts(r['name'])) {
    if (typeof n !== 'object' || n === null) continue;
    const h = n as { family?: unknown; given?: unknown; prefix?: unknown; suffix?: unknown; text?: unknown };
    if (param === 'family' || param === 'name') push(h.family);
    if (param === 'given' || param === 'name') for (const g of concepts(h.given)) push(g);
    if (param === 'name') {
      for (const x of concepts(h.prefix)) push(x);
      for (const x of concepts(h.suffix)) push(x);
      push(h.text);
    }
  }
  return out;
}

/** Index rows of one resource (current version), per the parameters of its type. */
export interface IndexRows {
  readonly tokens: Array<{ param: string; system: string; code: string }>;
  /** String parameters: each value as written (`exact`) and {@link normalizeSearchString}ed (`norm`). */
  readonly strings: Array<{ param: string; exact: string; norm: string }>;
  readonly references: Array<{ param: string; type: string; id: string }>;
  readonly dates: Array<{ param: string; lo: Date; hi: Date }>;
}

/** References that put a resource in a patient's compartment (the `patient` parameter). */
function patientRefs(resource: Resource): Array<{ type: string; id: string }> {
  const r = resource as unknown as Record<string, unknown>;
  const out: Array<{ type: string; id: string }> = [];
  const add = (ref: { type: string; id: string } | undefined): void => {
    if (ref?.type === 'Patient' && !out.some((o) => o.id === ref.id)) out.push(ref);
  };
  add(refOf(r['patient']));
  add(refOf(r['subject']));
  add(refOf(r['beneficiary']));
  if (resource.resourceType === 'AuditEvent') for (const e of concepts(r['entity'])) add(refOf((e as { what?: unknown } | null)?.what));
  // Provenance's `patient` parameter: the patients among its targets.
  if (resource.resourceType === 'Provenance') for (const t of concepts(r['target'])) add(refOf(t));
  return out;
}

/** Extracts the index rows of a resource (pure). */
export function extractIndexRows(resource: Resource): IndexRows {
  const rows: IndexRows = { tokens: [], strings: [], references: [], dates: [] };
  const defs = SEARCH_PARAMETERS[resource.resourceType];
  if (!defs) return rows;
  const r = resource as unknown as Record<string, unknown>;
  for (const [param, kind] of Object.entries(defs)) {
    if (kind === 'token') {
      let values: Array<{ system: string; code: string }> = [];
      if (param === 'code') values = codings(r[CODE_ELEMENT[resource.resourceType] ?? 'code']);
      else if (param === 'category') values = codings(r['category']);
      else if (param === 'status' && typeof r['status'] === 'string') values = [{ system: '', code: r['status'] }];
      else if (param === 'gender' && typeof r['gender'] === 'string') values = [{ system: ADMINISTRATIVE_GENDER, code: r['gender'] }];
      else if (param === 'intent' && typeof r['intent'] === 'string') values = [{ system: '', code: r['intent'] }];
      else if (param === 'lifecycle-status' && typeof r['lifecycleStatus'] === 'string') values = [{ system: '', code: r['lifecycleStatus'] }];
      else if (param === 'clinical-status') values = codings(r['clinicalStatus']);
      else if (param === 'type') values = codings(r['type']);
      else if (param === 'class') values = codings(r['class']);
      else if (param === 'specialty') values = codings(r['specialty']);
      else if (param === 'discharge-disposition') values = codings((r['hospitalization'] as { dischargeDisposition?: unknown } | undefined)?.dischargeDisposition);
      else if (param === 'description') values = codings(r['description']);
      else if (param === 'role') for (const p of concepts(r['participant'])) values.push(...codings((p as { role?: unknown } | null)?.role));
      else if (param === 'identifier') {
        for (const i of concepts(r['identifier'])) {
          const { system, value } = (i ?? {}) as { system?: unknown; value?: unknown };
          if (typeof value === 'string' && value !== '') values.push({ system: typeof system === 'string' ? system : '', code: value });
        }
      }
      for (const v of values) if (indexable(v.code) && indexable(v.system)) rows.tokens.push({ param, ...v });
    } else if (kind === 'reference') {
      const refs: Array<{ type: string; id: string } | undefined> = [];
      if (param === 'patient') refs.push(...patientRefs(resource));
      else if (param === 'subject') refs.push(refOf(r['subject']));
      else if (param === 'target') for (const t of concepts(r['target'])) refs.push(refOf(t));
      else if (param === 'practitioner') refs.push(refOf(r[param]));
      else if (param === 'organization') for (const o of concepts(r[resource.resourceType === 'HealthcareService' ? 'providedBy' : 'organization'])) refs.push(refOf(o));
      else if (param === 'endpoint') for (const e of concepts(r['endpoint'])) refs.push(refOf(e));
      else if (param === 'participant') for (const p of concepts(r['participant'])) refs.push(refOf((p as { member?: unknown } | null)?.member));
      else if (param === 'location') for (const l of concepts(r['location'])) refs.push(refOf((l as { location?: unknown } | null)?.location));
      else if (param === 'medication') refs.push(refOf(r['medicationReference']));
      else if (param === 'encounter') {
        refs.push(refOf(r['encounter']));
        const ctx = r['context'] as { encounter?: unknown } | undefined;
        if (resource.resourceType === 'DocumentReference' && ctx) for (const e of concepts(ctx.encounter)) refs.push(refOf(e));
      }
      for (const ref of refs) if (ref) rows.references.push({ param, ...ref });
    } else if (kind === 'string') {
      const seen = new Set<string>();
      for (const exact of stringValues(r, param)) {
        if (exact === '' || !indexable(exact) || seen.has(exact)) continue;
        seen.add(exact);
        const norm = normalizeSearchString(exact); // NFD can be longer (Hangul syllables become 2–3 letters)
        if (indexable(norm)) rows.strings.push({ param, exact, norm });
      }
    } else if (param === 'target-date') {
      // Goal: every target's due date.
      for (const t of concepts(r['target'])) {
        const due = (t as { dueDate?: unknown } | null)?.dueDate;
        const range = typeof due === 'string' ? fhirDateRange(due) : undefined;
        if (range) rows.dates.push({ param, ...range });
      }
    } else if (param === 'asserted-date') {
      // Condition: the assertedDate extension (US Core 6.1).
      for (const e of concepts(r['extension'])) {
        const { url, valueDateTime } = (e ?? {}) as { url?: unknown; valueDateTime?: unknown };
        const range = url === CONDITION_ASSERTED_DATE && typeof valueDateTime === 'string' ? fhirDateRange(valueDateTime) : undefined;
        if (range) rows.dates.push({ param, ...range });
      }
    } else if (param === 'period') {
      // DocumentReference: the period of care the document covers.
      const range = periodRange((r['context'] as { period?: unknown } | undefined)?.period);
      if (range) rows.dates.push({ param, ...range });
    } else if (param !== 'date') {
      // Date parameters other than the clinical `date`: each from its own elements.
      for (const el of DATE_PARAM_ELEMENTS[param] ?? []) {
        const v = r[el];
        const range = typeof v === 'string' ? fhirDateRange(v) : periodRange(v);
        if (range) {
          rows.dates.push({ param, ...range });
          break;
        }
      }
    } else {
      const range = clinicalDateRange(resource);
      if (range) rows.dates.push({ param, ...range });
    }
  }
  return rows;
}

/** The search-index rows of some resources, as the column arrays the index statements unnest. */
export interface IndexArrays {
  readonly tok: { t: string[]; i: string[]; p: string[]; s: (string | null)[]; c: string[] };
  readonly ref: { t: string[]; i: string[]; p: string[]; tt: string[]; ti: string[] };
  readonly dat: { t: string[]; i: string[]; p: string[]; lo: string[]; hi: string[] };
}

/** Extracts the index rows of `items` (those without content get none). */
export function indexArrays(items: ReadonlyArray<{ resourceType: string; id: string; content: Resource | undefined }>): IndexArrays {
  const tok = { t: [] as string[], i: [] as string[], p: [] as string[], s: [] as (string | null)[], c: [] as string[] };
  const ref = { t: [] as string[], i: [] as string[], p: [] as string[], tt: [] as string[], ti: [] as string[] };
  const dat = { t: [] as string[], i: [] as string[], p: [] as string[], lo: [] as string[], hi: [] as string[] };
  for (const item of items) {
    if (!item.content) continue;
    const rows = extractIndexRows(item.content);
    const token = (param: string, system: string, code: string): void => {
      tok.t.push(item.resourceType);
      tok.i.push(item.id);
      tok.p.push(param);
      tok.s.push(system);
      tok.c.push(code);
    };
    for (const r of rows.tokens) token(r.param, r.system, r.code);
    // String values live in search_token too: the normalised value as code (prefix and contains
    // searches), the value as written as system (`:exact`); migration 012 indexes them for prefixes.
    for (const r of rows.strings) token(r.param, r.exact, r.norm);
    for (const r of rows.references) {
      ref.t.push(item.resourceType);
      ref.i.push(item.id);
      ref.p.push(r.param);
      ref.tt.push(r.type);
      ref.ti.push(r.id);
    }
    for (const r of rows.dates) {
      dat.t.push(item.resourceType);
      dat.i.push(item.id);
      dat.p.push(r.param);
      dat.lo.push(ts(r.lo));
      dat.hi.push(ts(r.hi));
    }
  }
  return { tok, ref, dat };
}

/**
 * The index INSERTs as data-modifying CTEs (`i1`, `i2`, `i3`) over parameters `$n`..`$n+14`, for
 * statements that write resources and their index rows at once; with `guard` (an SQL condition),
 * only when it holds.
 */
export function indexInsertCtes(n: number, guard?: string): string {
  const $ = (k: number): string => `$${n + k}`;
  const where = guard ? ` WHERE ${guard}` : '';
  return `i1 AS (INSERT INTO search_token (resource_type, id, param, system, code)
                SELECT * FROM unnest(${$(0)}::text[], ${$(1)}::text[], ${$(2)}::text[], ${$(3)}::text[], ${$(4)}::text[])${where}),
          i2 AS (INSERT INTO search_reference (resource_type, id, param, target_type, target_id)
                SELECT * FROM unnest(${$(5)}::text[], ${$(6)}::text[], ${$(7)}::text[], ${$(8)}::text[], ${$(9)}::text[])${where}),
          i3 AS (INSERT INTO search_date (resource_type, id, param, lo, hi)
                SELECT * FROM unnest(${$(10)}::text[], ${$(11)}::text[], ${$(12)}::text[], ${$(13)}::timestamptz[], ${$(14)}::timestamptz[])${where})`;
}

/**
 * The DELETEs of the index rows of the resources in CTE `k(t, i)`, as data-modifying CTEs (`d1`,
 * `d2`, `d3`). With {@link indexInsertCtes} in the same statement they replace a resource's rows:
 * the DELETEs see only the rows that were there before the statement (the search tables have no
 * unique keys for the new rows to collide with).
 */
export const INDEX_DELETE_CTES = `d1 AS (DELETE FROM search_token s USING k WHERE s.resource_type = k.t AND s.id = k.i),
                d2 AS (DELETE FROM search_reference s USING k WHERE s.resource_type = k.t AND s.id = k.i),
                d3 AS (DELETE FROM search_date s USING k WHERE s.resource_type = k.t AND s.id = k.i)`;

/** The 15 parameter values {@link indexInsertCtes} expects, in order. */
export function indexInsertValues(a: IndexArrays): unknown[] {
  return [a.tok.t, a.tok.i, a.tok.p, a.tok.s, a.tok.c, a.ref.t, a.ref.i, a.ref.p, a.ref.tt, a.ref.ti, a.dat.t, a.dat.i, a.dat.p, a.dat.lo, a.dat.hi];
}

/**
 * Replaces the index rows of resources with those of their new current versions (`content` undefined
 * for a delete), in one statement: deletes their old rows and inserts the new ones. Call it inside the
 * transaction that stores the versions; each resource must appear at most once. `nameSuffix` names the statement
 * apart for a transaction that plans differently (`BEGIN_INDEX_PLANS`).
 */
export async function indexResources(
  client: pg.ClientBase,
  items: ReadonlyArray<{ resourceType: string; id: string; content: Resource | undefined }>,
  nameSuffix = '',
): Promise<void> {
  if (items.length === 0) return;
  await client.query({
    name: `fa_index_resources${nameSuffix}`,
    text: `WITH k AS (SELECT * FROM unnest($1::text[], $2::text[]) AS k(t, i)),
                ${INDEX_DELETE_CTES},
                ${indexInsertCtes(3)}
           SELECT 1`,
    values: [items.map((x) => x.resourceType), items.map((x) => x.id), ...indexInsertValues(indexArrays(items))],
  });
}

function ts(d: Date): string {
  if (d.getTime() <= NEG_INF.getTime()) return '-infinity';
  if (d.getTime() >= POS_INF.getTime()) return 'infinity';
  // Past year 9999 toISOString writes an expanded year ("+010000-01-01T…"), which PostgreSQL reads as a
  // time zone and refuses. The end of a date in 9999 ("9999-12-31", the usual "no end date") is
  // 10000-01-01: written plainly, PostgreSQL takes it.
  return d.toISOString().replace(/^\+0*(\d{5,})/, '$1');
}

// ---------------------------------------------------------------------------------------------
// Queries


const COLUMNS = 'r.resource_type, r.id, r.version_id, r.last_updated, r.deleted, r.content';

/**
 * The current Consents of the patient `p.patient` of the enclosing query, for a `LATERAL` join:
 * `OFFSET 0` keeps it a subquery, so the patient id stays an index condition whatever the plan.
 */
const CONSENTS_OF_P_PATIENT = `SELECT ${COLUMNS} FROM search_reference s
               JOIN resource r ON r.resource_type = s.resource_type AND r.id = s.id
               WHERE s.target_type = 'Patient' AND s.target_id = p.patient AND s.param = 'patient' AND s.resource_type = 'Consent'
                 AND r.version_id IS NOT NULL AND NOT r.deleted
               OFFSET 0`;

/**
 * A resource and the Consents of the patients it is indexed under, in one statement ($1 type, $2 id).
 * kind: 'r' the resource, 'p' one covered patient (so that "no Consent" is known too), 'c' a Consent.
 * The Consents are looked up per patient (LATERAL, kept a subquery by OFFSET 0), so the patient id is
 * always an index condition: with `target_id IN (SELECT …)` and stale statistics (right after a bulk
 * load) PostgreSQL chose to scan every Consent's index entry and filter, 2.3 ms at 300 Consents
 * instead of 0.1 ms. Exported for the plan test.
 */
export const READ_WITH_CONSENTS_SQL = `WITH p AS (
               SELECT s.target_id AS patient FROM search_reference s
               WHERE s.resource_type = $1 AND s.id = $2 AND s.target_type = 'Patient'
               UNION SELECT $2 WHERE $1 = 'Patient'
             )
             SELECT 'r' AS kind, NULL AS patient, ${COLUMNS} FROM resource r
             WHERE r.resource_type = $1 AND r.id = $2 AND r.version_id IS NOT NULL
             UNION ALL
             SELECT 'p', p.patient, NULL, NULL, NULL, NULL, NULL, NULL FROM p
             UNION ALL
             SELECT 'c', p.patient, c.* FROM p CROSS JOIN LATERAL (${CONSENTS_OF_P_PATIENT}) c`;

/**
 * The current Consents of the patients in `$1` (a text array), per patient. As in
 * {@link READ_WITH_CONSENTS_SQL}, each patient id is an index condition: with
 * `target_id = ANY($1)`, the generic plan of the prepared statement (used after five executions)
 * scanned every Consent's index entry and filtered, 3–16 ms per search page at 300 Consents.
 */
export const CONSENTS_FOR_SQL = `SELECT p.patient, c.* FROM unnest($1::text[]) AS p(patient) CROSS JOIN LATERAL (${CONSENTS_OF_P_PATIENT}) c`;

/** SQL text with its parameters; every value is a bind parameter, never interpolated. */
class Sql {
  readonly values: unknown[] = [];
  bind(v: unknown): string {
    this.values.push(v);
    return `$${this.values.length}`;
  }
}

/** Condition that a value range [lo, hi) satisfies `c` (http://hl7.org/fhir/R4/search.html#prefix). */
function dateCondition(sql: Sql, lo: string, hi: string, c: DateComparison): string {
  const vlo = (): string => `${sql.bind(ts(c.lo))}::timestamptz`;
  const vhi = (): string => `${sql.bind(ts(c.hi))}::timestamptz`;
  switch (c.prefix) {
    case 'eq':
      return `(${lo} >= ${vlo()} AND ${hi} <= ${vhi()})`;
    case 'ne':
      return `NOT (${lo} >= ${vlo()} AND ${hi} <= ${vhi()})`;
    case 'gt':
      return `(${hi} > ${vhi()})`;
    case 'lt':
      return `(${lo} < ${vlo()})`;
    case 'ge':
      return `(${hi} > ${vlo()})`;
    case 'le':
      return `(${lo} < ${vhi()})`;
    case 'sa':
      return `(${lo} >= ${vhi()})`;
    case 'eb':
      return `(${hi} <= ${vlo()})`;
  }
}

function clauseSql(sql: Sql, c: SearchClause): string {
  switch (c.kind) {
    case 'id':
      return `r.id = ANY(${sql.bind(c.values)}::text[])`;
    case 'lastUpdated':
      return `(${c.values.map((v) => dateCondition(sql, 'r.last_updated', "(r.last_updated + interval '1 millisecond')", v)).join(' OR ')})`;
    case 'token': {
      const alts = c.values.map((v) => {
        const parts: string[] = [];
        if (v.code !== undefined) parts.push(`t.code = ${sql.bind(v.code)}`);
        if (v.system !== undefined) parts.push(`t.system = ${sql.bind(v.system)}`);
        return parts.length ? `(${parts.join(' AND ')})` : 'true';
      });
      return `${c.not ? 'NOT ' : ''}EXISTS (SELECT 1 FROM search_token t WHERE t.resource_type = r.resource_type AND t.id = r.id AND t.param = ${sql.bind(c.param)} AND (${alts.join(' OR ')}))`;
    }
    case 'missing': {
      const table = c.index === 'token' ? 'search_token' : c.index === 'reference' ? 'search_reference' : 'search_date';
      return `${c.missing ? 'NOT ' : ''}EXISTS (SELECT 1 FROM ${table} x WHERE x.resource_type = r.resource_type AND x.id = r.id AND x.param = ${sql.bind(c.param)})`;
    }
    case 'string': {
      // The parameter name is a literal (it comes from SEARCH_PARAMETERS), so that the planner can use
      // the partial prefix index of migration 012; every value is bound.
      if (!STRING_PARAMS.has(c.param)) throw new Error(`not a string search parameter: ${c.param}`);
      const alts = c.values.map((v) => {
        if (c.match === 'exact') return `(t.code = ${sql.bind(normalizeSearchString(v))} AND t.system = ${sql.bind(v)})`;
        const norm = likeEscape(normalizeSearchString(v));
        return `t.code LIKE ${sql.bind(c.match === 'contains' ? `%${norm}%` : `${norm}%`)}`;
      });
      return `EXISTS (SELECT 1 FROM search_token t WHERE t.resource_type = r.resource_type AND t.id = r.id AND t.param = '${c.param}' AND (${alts.join(' OR ')}))`;
    }
    case 'reference': {
      const type = c.values[0]?.type;
      if (c.values.length > 1 && type !== undefined && c.values.every((v) => v.type === type)) {
        // One target type (a chain's targets, `patient=a,b,…`): one array parameter, so the statement's text does not grow with the list.
        return `EXISTS (SELECT 1 FROM search_reference s WHERE s.resource_type = r.resource_type AND s.id = r.id AND s.param = ${sql.bind(c.param)} AND s.target_type = ${sql.bind(type)} AND s.target_id = ANY(${sql.bind(c.values.map((v) => v.id))}::text[]))`;
      }
      const alts = c.values.map((v) => `(s.target_id = ${sql.bind(v.id)}${v.type !== undefined ? ` AND s.target_type = ${sql.bind(v.type)}` : ''})`);
      return `EXISTS (SELECT 1 FROM search_reference s WHERE s.resource_type = r.resource_type AND s.id = r.id AND s.param = ${sql.bind(c.param)} AND (${alts.join(' OR ')}))`;
    }
    case 'date':
      return `EXISTS (SELECT 1 FROM search_date d WHERE d.resource_type = r.resource_type AND d.id = r.id AND d.param = ${sql.bind(c.param)} AND (${c.values.map((v) => dateCondition(sql, 'd.lo', 'd.hi', v)).join(' OR ')}))`;
  }
}

/** The conditions of a search's type and clauses; undefined when a clause is an empty OR (it matches nothing). */
function whereOf(sql: Sql, query: SearchQuery): string[] | undefined {
  const where = [`r.resource_type = ${sql.bind(query.resourceType)}`, 'r.version_id IS NOT NULL', 'NOT r.deleted'];
  for (const c of query.clauses) {
    if (c.kind !== 'missing' && c.values.length === 0) return undefined;
    where.push(clauseSql(sql, c));
  }
  return where;
}

/** Names of the string parameters (safe to write into SQL as literals). */
const STRING_PARAMS: ReadonlySet<string> = new Set(Object.values(SEARCH_PARAMETERS).flatMap((defs) => Object.entries(defs).filter(([, k]) => k === 'string').map(([p]) => p)));

/** A value for LIKE with its own `%`, `_` and `\` taken literally. */
function likeEscape(value: string): string {
  return value.replace(/[\\%_]/g, (ch) => `\\${ch}`);
}

/** Prepared-statement name for a query text (same text, same name; pg prepares once per connection). */
function statementName(text: string): string {
  return `fa_s_${createHash('sha256').update(text).digest('hex').slice(0, 24)}`;
}

const MAX_LIMIT = 1000;

/** The PostgreSQL {@link SearchStore}. */
export class PgSearchStore implements SearchStore {
  constructor(private readonly pool: pg.Pool) {}

  async search(query: SearchQuery): Promise<StoredVersion[]> {
    const sql = new Sql();
    const where = whereOf(sql, query);
    if (!where) return [];
    if (query.afterId !== undefined) where.push(`r.id COLLATE "C" > ${sql.bind(query.afterId)}`);
    const limit = sql.bind(Math.max(1, Math.min(query.limit, MAX_LIMIT)));
    const text = `SELECT ${COLUMNS} FROM resource r WHERE ${where.join(' AND ')} ORDER BY r.id COLLATE "C" LIMIT ${limit}`;
    const r = await this.pool.query<VersionRow>({ name: statementName(text), text, values: sql.values });
    return r.rows.map(toVersion);
  }

  async searchSorted(query: SearchQuery & { readonly sort: SearchSort }): Promise<SortedRow[]> {
    const sql = new Sql();
    const where = whereOf(sql, query);
    if (!where) return [];
    const { key, descending } = query.sort;
    // The date's sort key: the earliest instant it covers ascending, the latest descending; none sorts last.
    const lateral =
      key === 'date'
        ? ` CROSS JOIN LATERAL (SELECT COALESCE(${descending ? "max(d.hi), '-infinity'" : "min(d.lo), 'infinity'"})::timestamptz AS sort_key
                               FROM search_date d WHERE d.resource_type = r.resource_type AND d.id = r.id AND d.param = 'date') k`
        : '';
    const keyExpr = key === 'date' ? 'k.sort_key' : 'r.last_updated';
    if (query.after) where.push(`(${keyExpr}, r.id COLLATE "C") ${descending ? '<' : '>'} (${sql.bind(query.after.key)}::timestamptz, ${sql.bind(query.after.id)} COLLATE "C")`);
    const dir = descending ? ' DESC' : '';
    const limit = sql.bind(Math.max(1, Math.min(query.limit, MAX_LIMIT)));
    const text = `SELECT ${COLUMNS}, ${keyExpr}::text AS sort_key FROM resource r${lateral} WHERE ${where.join(' AND ')} ORDER BY ${keyExpr}${dir}, r.id COLLATE "C"${dir} LIMIT ${limit}`;
    const r = await this.pool.query<VersionRow & { sort_key: string }>({ name: statementName(text), text, values: sql.values });
    return r.rows.map((row) => ({ version: toVersion(row), key: row.sort_key }));
  }

  async compartment(
    patientId: string,
    options: { after?: { resourceType: string; id: string }; types?: readonly string[]; since?: Date; limit: number },
  ): Promise<StoredVersion[]> {
    const r = await this.pool.query<VersionRow>({
      name: 'fa_compartment_v2',
      text: `SELECT ${COLUMNS} FROM resource r
             WHERE (r.resource_type, r.id) IN (SELECT s.resource_type, s.id FROM search_reference s
                                               WHERE s.target_type = 'Patient' AND s.target_id = $1 AND s.param = 'patient')
               AND r.version_id IS NOT NULL AND NOT r.deleted
               AND (r.resource_type COLLATE "C", r.id COLLATE "C") > ($2 COLLATE "C", $3 COLLATE "C")
               AND ($4::text[] IS NULL OR r.resource_type = ANY($4::text[]))
               AND ($6::timestamptz IS NULL OR r.last_updated >= $6::timestamptz)
             ORDER BY r.resource_type COLLATE "C", r.id COLLATE "C" LIMIT $5`,
      values: [patientId, options.after?.resourceType ?? '', options.after?.id ?? '', options.types ?? null, Math.max(1, Math.min(options.limit, MAX_LIMIT)), options.since ?? null],
    });
    return r.rows.map(toVersion);
  }

  async consentsFor(patientIds: readonly string[]): Promise<Array<{ patient: string; version: StoredVersion }>> {
    if (patientIds.length === 0) return [];
    const r = await this.pool.query<VersionRow & { patient: string }>({
      name: 'fa_consents_for',
      text: CONSENTS_FOR_SQL,
      values: [patientIds],
    });
    return r.rows.map((row) => ({ patient: row.patient, version: toVersion(row) }));
  }

  async readCurrent(resourceType: string, id: string): Promise<StoredVersion | undefined> {
    const r = await this.pool.query<VersionRow>({
      name: 'fa_read_current',
      text: `SELECT ${COLUMNS} FROM resource r WHERE r.resource_type = $1 AND r.id = $2 AND r.version_id IS NOT NULL`,
      values: [resourceType, id],
    });
    return r.rows[0] ? toVersion(r.rows[0]) : undefined;
  }

  async readCurrentMany(refs: ReadonlyArray<{ readonly type: string; readonly id: string }>): Promise<StoredVersion[]> {
    if (refs.length === 0) return [];
    const r = await this.pool.query<VersionRow>({
      name: 'fa_read_current_many',
      text: `SELECT ${COLUMNS} FROM unnest($1::text[], $2::text[]) AS k(resource_type, id)
             JOIN resource r ON r.resource_type = k.resource_type AND r.id = k.id
             WHERE r.version_id IS NOT NULL`,
      values: [refs.map((x) => x.type), refs.map((x) => x.id)],
    });
    return r.rows.map(toVersion);
  }

  async readCurrentWithConsents(resourceType: string, id: string): Promise<{ version: StoredVersion | undefined; consents: Map<string, StoredVersion[]> }> {
    const r = await this.pool.query<VersionRow & { kind: 'r' | 'p' | 'c'; patient: string | null }>({
      name: 'fa_read_current_with_consents',
      text: READ_WITH_CONSENTS_SQL,
      values: [resourceType, id],
    });
    let version: StoredVersion | undefined;
    const consents = new Map<string, StoredVersion[]>();
    for (const row of r.rows) {
      if (row.kind === 'r') version = toVersion(row);
      else if (row.kind === 'p' && !consents.has(row.patient!)) consents.set(row.patient!, []);
    }
    for (const row of r.rows) if (row.kind === 'c') consents.get(row.patient!)?.push(toVersion(row));
    return { version, consents };
  }

  async reindexPending(options: { readonly signal?: AbortSignal } = {}): Promise<{ types: string[]; resources: number }> {
    const lock = await this.pool.connect();
    try {
      const got = await lock.query<{ ok: boolean }>(`SELECT pg_try_advisory_lock(hashtext(current_schema() || ':search_reindex')) AS ok`);
      if (!got.rows[0]!.ok) return { types: [], resources: 0 };
      try {
        // Types with nothing stored need no work (every new database): one statement clears them.
        await lock.query('DELETE FROM search_reindex_pending p WHERE NOT EXISTS (SELECT 1 FROM resource r WHERE r.resource_type = p.resource_type)');
        const pending = await lock.query<{ resource_type: string }>('SELECT resource_type FROM search_reindex_pending ORDER BY 1');
        let resources = 0;
        const types: string[] = [];
        for (const { resource_type: type } of pending.rows) {
          // On the connection that holds the lock: a pool of one must not wait for a second.
          const n = await reindexOn(lock, 500, [type], options.signal);
          resources += n.indexed;
          if (!n.complete) break; // stopped: the type stays pending
          await lock.query('DELETE FROM search_reindex_pending WHERE resource_type = $1', [type]);
          types.push(type);
        }
        return { types, resources };
      } finally {
        await lock.query(`SELECT pg_advisory_unlock(hashtext(current_schema() || ':search_reindex'))`);
      }
    } finally {
      lock.release();
    }
  }

  async reindexPendingTypes(): Promise<string[]> {
    const r = await this.pool.query<{ resource_type: string }>('SELECT resource_type FROM search_reindex_pending ORDER BY 1');
    return r.rows.map((row) => row.resource_type);
  }

  async reindex(batchSize = 500, types?: readonly string[]): Promise<number> {
    const client = await this.pool.connect();
    try {
      return (await reindexOn(client, batchSize, types)).indexed;
    } finally {
      client.release();
    }
  }
}

/**
 * {@link PgSearchStore.reindex} on one connection: a transaction per batch of `batchSize` resources,
 * until done or `signal` aborts (checked between batches).
 */
async function reindexOn(client: pg.PoolClient, batchSize: number, types: readonly string[] | undefined, signal?: AbortSignal): Promise<{ indexed: number; complete: boolean }> {
  let after = { type: '', id: '' };
  let total = 0;
  for (;;) {
    if (signal?.aborted) return { indexed: total, complete: false };
    let n = 0;
    try {
      // One resource per index statement: the small-batch plans (see BEGIN_INDEX_PLANS).
      await client.query(BEGIN_INDEX_PLANS);
      const rows = await client.query<VersionRow>(
        `SELECT ${COLUMNS} FROM resource r WHERE r.version_id IS NOT NULL
           AND (r.resource_type COLLATE "C", r.id COLLATE "C") > ($1 COLLATE "C", $2 COLLATE "C")
           AND ($4::text[] IS NULL OR r.resource_type = ANY($4::text[]))
         ORDER BY r.resource_type COLLATE "C", r.id COLLATE "C" LIMIT $3 FOR UPDATE OF r`,
        [after.type, after.id, batchSize, types ?? null],
      );
      for (const row of rows.rows) {
        await indexResources(client, [{ resourceType: row.resource_type, id: row.id, content: row.deleted ? undefined : (row.content ?? undefined) }], '_small');
        after = { type: row.resource_type, id: row.id };
      }
      await client.query('COMMIT');
      n = rows.rows.length;
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw err;
    }
    total += n;
    if (n < batchSize) return { indexed: total, complete: true };
  }
}
