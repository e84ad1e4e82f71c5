/**
 * Validation of a Bulk Data 2.0 kick-off request into {@link ExportParams}: `_type`, `_since`,
 * `_typeFilter`, `_outputFormat`, `_deidentify`, the `Prefer: respond-async` header, the token's
 * system scopes and the research rule (a research purpose requires de-identification).
 *
 * Unsupported kick-off parameters (`_elements`, `patient`, `includeAssociatedData`, ...) are a 400
 * unless `Prefer: handling=lenient`, as the IG asks.
 *
 * @see https://hl7.org/fhir/uv/bulkdata/STU2/export.html#query-parameters
 */
import { scopesAllow, type SmartScope } from '../../consent/index.js';
import type { AccessContext } from '../../fhir-api/access.js';
import { formPairs, parseSearch, TYPE_RE } from '../../fhir-api/search-params.js';
import { httpError } from '../../platform/errors.js';
import { fhirDateRange, SEARCH_PARAMETERS, searchParamKind } from '../../store/search-store.js';
import type { ExportLevel } from '../../store/export-store.js';
import { isResearch, type ExportParams, type PersistedAccess } from './types.js';

/** Types a system-level export covers (the indexed types; audit trails are not exported). */
export const SYSTEM_TYPES: readonly string[] = Object.keys(SEARCH_PARAMETERS).filter((t) => t !== 'AuditEvent');

/** Types of the Patient compartment we index: Patient and every type with a `patient` search parameter. */
export const PATIENT_TYPES: readonly string[] = SYSTEM_TYPES.filter((t) => t === 'Patient' || searchParamKind(t, 'patient') === 'reference');

const OUTPUT_FORMATS: ReadonlySet<string> = new Set(['application/fhir+ndjson', 'application/ndjson', 'ndjson']);
const POLICY_RE = /^[a-z0-9][a-z0-9-]{0,63}$/;
/** A FHIR instant (seconds and time zone required). */
const INSTANT_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/;
/** Per type at most this many `_typeFilter` alternatives (each one is a scan). */
const MAX_FILTERS_PER_TYPE = 10;

/** Whether a system scope grants read and search on the type (constraints are applied per resource later). */
export function systemScopeCovers(scopes: readonly SmartScope[], resourceType: string): boolean {
  return scopes.some((s) => s.context === 'system' && (s.resourceType === '*' || s.resourceType === resourceType) && s.permissions.includes('r') && s.permissions.includes('s'));
}

/** The access context to persist: system scopes only, never the token. */
export function persistAccess(access: AccessContext): PersistedAccess {
  return {
    clientId: access.clientId,
    issuer: access.issuer,
    scopes: access.scopes.filter((s) => s.context === 'system').map((s) => s.raw),
    purposeOfUse: [...access.purposeOfUse],
    ...(access.fhirUser !== undefined ? { fhirUser: access.fhirUser } : {}),
    actor: { references: [...access.actor.references], identifiers: access.actor.identifiers.map((i) => ({ system: i.system, value: i.value })) },
    ...(access.tokenId !== undefined ? { tokenId: access.tokenId } : {}),
  };
}

function bad(message: string): Error {
  return httpError(400, 'invalid', message);
}

/**
 * Validates a kick-off request.
 *
 * @param input.pairs - the query string's name/value pairs
 * @param input.prefer - the `Prefer` header
 * @param input.level - system, patient or group
 * @param input.access - the authenticated requester
 * @param input.baseUrl - the public FHIR base (absolute references in `_typeFilter`)
 * @param input.policyExists - whether a de-identification policy name can be compiled
 * @throws HttpError 400 (bad parameters, no `respond-async`, research without `_deidentify`), 403 (scopes)
 */
export function parseKickoff(input: {
  readonly pairs: ReadonlyArray<readonly [string, string]>;
  readonly prefer: string;
  readonly level: ExportLevel;
  readonly access: AccessContext;
  readonly baseUrl: string;
  readonly policyExists: (name: string) => boolean;
}): ExportParams {
  const { pairs, access, level } = input;
  if (!/(^|[\s,;])respond-async\b/i.test(input.prefer)) throw bad('Bulk export requires the header Prefer: respond-async');
  const lenient = /(^|[\s,;])handling\s*=\s*lenient\b/i.test(input.prefer);
  const allowed = level === 'system' ? SYSTEM_TYPES : PATIENT_TYPES;

  let requested: string[] | undefined;
  let since: string | undefined;
  let deidPolicy: string | undefined;
  const filters: Array<{ type: string; pairs: Array<[string, string]> }> = [];
  for (const [name, value] of pairs) {
    switch (name) {
      case '_outputFormat':
        // An unencoded `+` in the query (`application/fhir+ndjson`) arrives as a space.
        if (!OUTPUT_FORMATS.has(value.replace(/ /g, '+'))) throw httpError(400, 'not-supported', '_outputFormat supports only application/fhir+ndjson');
        break;
      case '_type':
        for (const t of value.split(',').map((s) => s.trim()).filter((s) => s !== '')) {
          if (!TYPE_RE.test(t)) throw bad('_type must list resource types');
          if (!allowed.includes(t)) {
            if (lenient) continue;
            throw httpError(400, 'not-supported', `Resource type ${t} is not supported by this export`);
          }
          requested = [...(requested ?? []), t];
        }
        requested ??= [];
        break;
      case '_since': {
        if (!INSTANT_RE.test(value) || !fhirDateRange(value) || Number.isNaN(Date.parse(value))) throw bad('_since must be a FHIR instant, e.g. 2024-01-01T00:00:00Z');
        since = new Date(value).toISOString();
        break;
      }
      case '_typeFilter': {
        const q = value.indexOf('?');
        const type = q < 0 ? value : value.slice(0, q);
        if (!TYPE_RE.test(type) || q < 0) throw bad('_typeFilter must be Type?search-parameters');
        if (!allowed.includes(type)) {
          if (lenient) break;
          throw httpError(400, 'not-supported', `_typeFilter names an unsupported type ${type}`);
        }
        const fp = formPairs(value.slice(q + 1));
        // Validates against the search layer (strict: unknown parameters are errors here).
        const parsed = parseSearch(type, fp, { lenient: false, baseUrl: input.baseUrl });
        if (parsed.include.length || parsed.revinclude.length || parsed.chains.length || parsed.has.length || parsed.summaryCount || parsed.elements || parsed.cursor !== undefined || fp.some(([n]) => n === '_count')) {
          throw httpError(400, 'not-supported', '_typeFilter supports search parameters only (no chains, _include, _revinclude, _summary, _elements, _count)');
        }
        filters.push({ type, pairs: fp });
        break;
      }
      case '_deidentify':
        if (!POLICY_RE.test(value) || !input.policyExists(value)) throw httpError(400, 'not-supported', `Unknown de-identification policy '${value.slice(0, 64)}'`);
        deidPolicy = value;
        break;
      case '_format':
      case '_pretty':
        break;
      default:
        if (!lenient) throw httpError(400, 'not-supported', `Unsupported kick-off parameter: ${name.slice(0, 64)}`);
    }
  }

  const research = isResearch(access);
  // A research purpose gets de-identified data only.
  if (research && deidPolicy === undefined) throw bad('Exports for research (purpose of use HRESCH) require _deidentify, e.g. _deidentify=safe-harbor');

  let types: string[];
  if (requested !== undefined) {
    types = [...new Set(requested)];
    const denied = types.filter((t) => !systemScopeCovers(access.scopes, t));
    if (denied.length > 0) throw httpError(403, 'forbidden', 'The access token does not grant system read and search on every requested type');
  } else {
    types = allowed.filter((t) => systemScopeCovers(access.scopes, t));
  }
  if (types.length === 0) throw httpError(403, 'forbidden', 'The access token grants no system scope for any exportable type');
  if (filters.some((f) => !types.includes(f.type)) && !lenient) throw bad('_typeFilter names a type that is not exported (see _type)');

  const typeFilters: Record<string, Array<Array<[string, string]>>> = {};
  for (const f of filters) {
    if (!types.includes(f.type)) continue;
    const list = (typeFilters[f.type] ??= []);
    if (list.length >= MAX_FILTERS_PER_TYPE) throw httpError(400, 'too-costly', `At most ${MAX_FILTERS_PER_TYPE} _typeFilter values per type`);
    list.push(f.pairs);
  }
  return { types, ...(since !== undefined ? { since } : {}), typeFilters, ...(deidPolicy !== undefined ? { deidPolicy } : {}), research };
}

/** Whether the token may use the Group (`system/Group.rs` or a wildcard). */
export function mayReadGroup(scopes: readonly SmartScope[]): boolean {
  return scopesAllow(scopes, { context: 'system', resourceType: 'Group', interaction: 'read' });
}
