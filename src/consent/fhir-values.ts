/**
 * Small, allocation-light readers of FHIR values used by the consent engine, the scope model and the
 * labeller. Hand-written instead of FHIRPath because they run on every read (see
 * docs/decisions-consent.md, "performance").
 */
import type { CodeableConcept, Coding, Resource } from '@medplum/fhirtypes';

const ACT_CODE = 'http://terminology.hl7.org/CodeSystem/v3-ActCode';
const CONFIDENTIALITY = 'http://terminology.hl7.org/CodeSystem/v3-Confidentiality';
const ACT_REASON = 'http://terminology.hl7.org/CodeSystem/v3-ActReason';

/**
 * Other URIs real consents and labels use for the code systems the engine matches on: the FHIR R3
 * `hl7.org/fhir/v3/...` URLs, the HL7 OIDs, and the canonical URLs of the value sets the codes are
 * drawn from (`ValueSet/v3-PurposeOfUse` for purposes, `ValueSet/v3-InformationSensitivityPolicy`
 * for sensitivity labels: seen in LEAP CDS's consents). A consent that denies HIV data under the
 * value-set URL must deny data labelled v3-ActCode HIV; matching the URIs literally would disclose it.
 */
const SYSTEM_ALIASES: Readonly<Record<string, string>> = {
  'http://hl7.org/fhir/v3/ActCode': ACT_CODE,
  'urn:oid:2.16.840.1.113883.5.4': ACT_CODE,
  'http://terminology.hl7.org/ValueSet/v3-InformationSensitivityPolicy': ACT_CODE,
  'http://hl7.org/fhir/ValueSet/v3-InformationSensitivityPolicy': ACT_CODE,
  'http://terminology.hl7.org/ValueSet/v3-ActUSPrivacyLaw': ACT_CODE,
  'http://hl7.org/fhir/v3/Confidentiality': CONFIDENTIALITY,
  'urn:oid:2.16.840.1.113883.5.25': CONFIDENTIALITY,
  'http://terminology.hl7.org/ValueSet/v3-ConfidentialityClassification': CONFIDENTIALITY,
  'http://hl7.org/fhir/ValueSet/v3-ConfidentialityClassification': CONFIDENTIALITY,
  'http://hl7.org/fhir/v3/ActReason': ACT_REASON,
  'urn:oid:2.16.840.1.113883.5.8': ACT_REASON,
  'http://terminology.hl7.org/ValueSet/v3-PurposeOfUse': ACT_REASON,
  'http://hl7.org/fhir/ValueSet/v3-PurposeOfUse': ACT_REASON,
  // R5 names Consent.provision's resource types from fhir-types (R4: resource-types); the codes are the same.
  'http://hl7.org/fhir/fhir-types': 'http://hl7.org/fhir/resource-types',
  'http://hl7.org/fhir/ValueSet/resource-types': 'http://hl7.org/fhir/resource-types',
  'http://loinc.org/': 'http://loinc.org',
  'http://snomed.info/sct/': 'http://snomed.info/sct',
};

/** The canonical URI of a code system, for comparison ({@link SYSTEM_ALIASES}). */
export function canonicalSystem(system: string | undefined): string | undefined {
  return system === undefined ? undefined : (SYSTEM_ALIASES[system] ?? system);
}

/** `system|code` key of a coding (system canonicalised); `|code` when the coding has no system. */
export function codingKey(system: string | undefined, code: string): string {
  return `${canonicalSystem(system) ?? ''}|${code}`;
}

/**
 * Normalises a literal reference to `Type/id` (or `Type/id/_history/v` when versioned).
 *
 * Absolute URLs under one of `localBases` are made relative; other absolute URLs stay as they are
 * (a reference to another server is a different resource). Returns undefined for contained (`#x`),
 * `urn:` and malformed references.
 */
export function normalizeReference(reference: string, localBases: readonly string[] = []): string | undefined {
  let ref = reference.trim();
  if (ref === '' || ref.startsWith('#') || ref.startsWith('urn:')) return undefined;
  for (const base of localBases) {
    const b = base.endsWith('/') ? base : `${base}/`;
    if (ref.startsWith(b)) {
      ref = ref.slice(b.length);
      break;
    }
  }
  if (/^[a-z][a-z0-9+.-]*:/i.test(ref)) return ref; // still absolute: foreign server
  const parts = ref.split('/');
  if (parts.length === 2 && /^[A-Z][A-Za-z]+$/.test(parts[0]!) && parts[1] !== '') return ref;
  if (parts.length === 4 && /^[A-Z][A-Za-z]+$/.test(parts[0]!) && parts[2] === '_history' && parts[1] !== '' && parts[3] !== '') return ref;
  return undefined;
}

/** `Type/id` of a versioned or unversioned normalised reference. */
export function unversioned(ref: string): string {
  const i = ref.indexOf('/_history/');
  return i < 0 ? ref : ref.slice(0, i);
}

/** An instant interval in epoch milliseconds, both ends inclusive. */
export interface Interval {
  readonly start: number;
  readonly end: number;
}

const DATE_RE = /^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$/;

/**
 * The interval a FHIR `date`/`dateTime`/`instant` stands for, honouring its precision: `2016` is all
 * of 2016, `2016-01-01` the whole day. Values without a time zone are read as UTC (FHIR leaves
 * them to local interpretation; we have no locale in a pure function). Undefined when malformed.
 */
export function fhirDateInterval(value: string): Interval | undefined {
  const m = DATE_RE.exec(value.trim());
  if (!m) return undefined;
  const year = Number(m[1]);
  const month = m[2] === undefined ? undefined : Number(m[2]) - 1;
  const day = m[3] === undefined ? undefined : Number(m[3]);
  if (month !== undefined && (month < 0 || month > 11)) return undefined;
  if (day !== undefined && (day < 1 || day > 31)) return undefined;
  if (m[4] !== undefined) {
    const ms = Date.parse(value.trim().replace(/(\.\d{3})\d+/, '$1') + (m[8] === undefined ? 'Z' : ''));
    if (Number.isNaN(ms)) return undefined;
    // Second precision covers the whole second; fractional values are exact to the millisecond.
    const precisionMs = m[7] !== undefined ? 0 : m[6] !== undefined ? 999 : 59_999;
    return { start: ms, end: ms + precisionMs };
  }
  if (month === undefined) return { start: Date.UTC(year, 0, 1), end: Date.UTC(year + 1, 0, 1) - 1 };
  if (day === undefined) return { start: Date.UTC(year, month, 1), end: Date.UTC(year, month + 1, 1) - 1 };
  const start = Date.UTC(year, month, day);
  if (new Date(start).getUTCDate() !== day) return undefined; // 2023-02-30
  return { start, end: start + 86_400_000 - 1 };
}

/**
 * The interval of a FHIR `Period` (missing start = since ever, missing end = ongoing). Undefined
 * when a present bound is malformed or the period is inverted.
 */
export function periodInterval(period: { start?: string; end?: string }): Interval | undefined {
  const s = period.start === undefined ? { start: -Infinity, end: -Infinity } : fhirDateInterval(period.start);
  const e = period.end === undefined ? { start: Infinity, end: Infinity } : fhirDateInterval(period.end);
  if (!s || !e || s.start > e.end) return undefined;
  return { start: s.start, end: e.end };
}

function pushConcept(out: Coding[], value: unknown): void {
  if (value === null || typeof value !== 'object') return;
  if (Array.isArray(value)) {
    for (const v of value) pushConcept(out, v);
    return;
  }
  const cc = value as CodeableConcept;
  if (Array.isArray(cc.coding)) for (const c of cc.coding) if (c && typeof c.code === 'string') out.push(c);
}

/**
 * Elements holding "what this resource is about" per type (R4). Used for `Consent.provision.code`
 * and the `code` granular-scope constraint. Types not listed fall back to `code`.
 */
const PRIMARY_CODE_ELEMENTS: Readonly<Record<string, readonly string[]>> = {
  AllergyIntolerance: ['code'],
  CarePlan: ['category'],
  ClinicalImpression: ['code'],
  Composition: ['type'],
  Condition: ['code'],
  Device: ['type'],
  DiagnosticReport: ['code'],
  DocumentReference: ['type'],
  Encounter: ['type'],
  FamilyMemberHistory: ['condition'],
  Goal: ['description'],
  Immunization: ['vaccineCode'],
  Medication: ['code'],
  MedicationAdministration: ['medicationCodeableConcept'],
  MedicationDispense: ['medicationCodeableConcept'],
  MedicationRequest: ['medicationCodeableConcept'],
  MedicationStatement: ['medicationCodeableConcept'],
  Observation: ['code'],
  Procedure: ['code'],
  ServiceRequest: ['code'],
  Specimen: ['type'],
};

/** Codings of the resource's primary code element(s) (see {@link PRIMARY_CODE_ELEMENTS}). */
export function primaryCodings(resource: Resource): Coding[] {
  const out: Coding[] = [];
  const r = resource as unknown as Record<string, unknown>;
  for (const element of PRIMARY_CODE_ELEMENTS[resource.resourceType] ?? ['code']) {
    const v = r[element];
    if (element === 'condition' && Array.isArray(v)) for (const c of v) pushConcept(out, (c as { code?: unknown }).code);
    else pushConcept(out, v);
  }
  return out;
}

/**
 * Codings of `resource.category`, whether it is a CodeableConcept, an array of them, or an array of
 * plain codes (AllergyIntolerance); plain codes come back without a system.
 */
export function categoryCodings(resource: Resource): Coding[] {
  const v = (resource as unknown as Record<string, unknown>)['category'];
  const out: Coding[] = [];
  const items = Array.isArray(v) ? v : v === undefined ? [] : [v];
  for (const item of items) {
    if (typeof item === 'string') out.push({ code: item });
    else pushConcept(out, item);
  }
  return out;
}

/** Every Coding anywhere in the resource (contained resources included); for the labeller. */
export function allCodings(resource: Resource): Coding[] {
  const out: Coding[] = [];
  const walk = (node: unknown, key: string): void => {
    if (node === null || typeof node !== 'object') return;
    if (Array.isArray(node)) {
      for (const n of node) walk(n, key);
      return;
    }
    if (key === 'meta' || key === 'text') return; // labels and narrative are not clinical codes
    const o = node as Record<string, unknown>;
    if (typeof o['code'] === 'string' && (typeof o['system'] === 'string' || key === 'coding')) out.push(o as Coding);
    for (const [k, v] of Object.entries(o)) if (typeof v === 'object') walk(v, k);
  };
  walk(resource, '');
  return out;
}

/** Literal references (`reference` strings) anywhere in the resource, normalised; for `dependents`. */
export function outgoingReferences(resource: Resource, localBases: readonly string[]): Set<string> {
  const out = new Set<string>();
  const walk = (node: unknown): void => {
    if (node === null || typeof node !== 'object') return;
    if (Array.isArray(node)) {
      for (const n of node) walk(n);
      return;
    }
    const o = node as Record<string, unknown>;
    const ref = o['reference'];
    if (typeof ref === 'string') {
      const n = normalizeReference(ref, localBases);
      if (n) {
        out.add(n);
        out.add(unversioned(n));
      }
    }
    for (const v of Object.values(o)) if (typeof v === 'object') walk(v);
  };
  walk(resource);
  return out;
}
