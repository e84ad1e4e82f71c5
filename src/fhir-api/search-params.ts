/**
 * FHIR search parameters from an HTTP request (query string or `_search` form body) into a typed
 * {@link ParsedSearch}. Every value is validated here: ids against the FHIR id grammar, dates
 * against the FHIR date grammar (years 0001–9999), tokens and references by shape and length.
 * Anything else is a 400 OperationOutcome, so no malformed value ever reaches SQL (which binds
 * every value anyway).
 *
 * Unknown or unsupported parameters are a 400 by default (FHIR `handling=strict`); with
 * `Prefer: handling=lenient` they are ignored and reported as a warning in the Bundle.
 *
 * @see http://hl7.org/fhir/R4/search.html
 */
import type { CapabilityStatementRestResource } from '@medplum/fhirtypes';
import type { DateComparison, DatePrefix, SearchClause, SearchSort } from '../store/types.js';
import { COMMON_PARAMETERS, SEARCH_PARAMETERS, fhirDateRange, normalizeSearchString, referenceKey, searchParamKind } from '../store/search-store.js';
import { httpError } from '../platform/errors.js';

/** FHIR id grammar (R4 `id`). */
export const ID_RE = /^[A-Za-z0-9\-.]{1,64}$/;
/** A resource type name. */
export const TYPE_RE = /^[A-Z][A-Za-z]{1,63}$/;

/** Page size when `_count` is absent. */
export const DEFAULT_COUNT = 50;
/** Largest page served; a larger `_count` is reduced to this (FHIR lets the server cap it). */
export const MAX_COUNT = 200;
/** Guards against pathological requests: parameters per request, values per parameter, characters per value. */
const MAX_PARAMS = 40;
const MAX_VALUES = 20;
const MAX_VALUE_CHARS = 512;

// eslint-disable-next-line no-control-regex
const CONTROL_RE = /[\u0000-\u001f\u007f]/;
const PREFIXES: ReadonlySet<string> = new Set<DatePrefix>(['eq', 'ne', 'gt', 'lt', 'ge', 'le', 'sa', 'eb']);
/** Parameters accepted and ignored (they do not change results). */
const IGNORED: ReadonlySet<string> = new Set(['_format', '_pretty']);

/** `_include` / `_revinclude` target: `Source:param[:Target]`. */
export interface IncludeSpec {
  readonly sourceType: string;
  readonly param: string;
  readonly targetType?: string;
}

/**
 * A chained parameter, one level (`Observation?patient.identifier=…`): the resources whose `param`
 * references a `targetType` resource matching `clause`. The consent-narrowed repository resolves the
 * chain to the targets the requester may itself search, so a chain never tests data it could not see.
 */
export interface ChainSpec {
  readonly param: string;
  readonly targetType: string;
  readonly clause: SearchClause;
}

/**
 * A reverse chain, one level (`Patient?_has:Observation:patient:code=1234-5`): the resources that a
 * `sourceType` resource matching `clause` references through `param`. Resolved, like a chain, through
 * the gate: only sources the requester may itself search count.
 */
export interface HasSpec {
  readonly sourceType: string;
  readonly param: string;
  readonly clause: SearchClause;
}

/** A validated search request. */
export interface ParsedSearch {
  readonly resourceType: string;
  readonly clauses: readonly SearchClause[];
  /** Page size, 0..{@link MAX_COUNT}. */
  readonly count: number;
  readonly cursor?: string;
  readonly summaryCount: boolean;
  /** `_summary=true` (the summary elements) or `data` (all but the narrative); each match is a SUBSETTED projection. */
  readonly summary?: 'true' | 'data';
  /** `_elements`: top-level element names to keep. */
  readonly elements?: readonly string[];
  readonly include: readonly IncludeSpec[];
  readonly revinclude: readonly IncludeSpec[];
  /** Chained parameters, each AND-ed with the clauses. */
  readonly chains: readonly ChainSpec[];
  /** `_has` reverse chains, each AND-ed with the clauses. */
  readonly has: readonly HasSpec[];
  /** `_sort` (by `_lastUpdated` or `date`, either direction); absent: id order. */
  readonly sort?: SearchSort;
  /** Parameters ignored under `handling=lenient`. */
  readonly warnings: readonly string[];
  /** The parameters that define the result set (sorted, without `_cursor`): binds cursors, builds links. */
  readonly canonical: ReadonlyArray<readonly [string, string]>;
}

function bad(message: string): Error {
  return httpError(400, 'invalid', message);
}

function shortName(name: string): string {
  return name.length > 64 ? `${name.slice(0, 64)}…` : name;
}

/** Splits on a separator not escaped with `\` (R4 search escaping); escapes are kept for {@link unescape}. */
function splitEscaped(value: string, sep: ',' | '|'): string[] {
  const out: string[] = [];
  let cur = '';
  for (let i = 0; i < value.length; i++) {
    const ch = value[i]!;
    if (ch === '\\' && i + 1 < value.length) {
      cur += ch + value[i + 1]!;
      i++;
    } else if (ch === sep) {
      out.push(cur);
      cur = '';
    } else cur += ch;
  }
  out.push(cur);
  return out;
}

function unescape(s: string): string {
  return s.replace(/\\([,|$\\])/g, '$1');
}

function dateValues(name: string, raw: string): DateComparison[] {
  return splitEscaped(raw, ',').map((v) => {
    let prefix: DatePrefix = 'eq';
    let rest = v;
    if (/^[a-z]{2}/.test(v)) {
      const p = v.slice(0, 2);
      if (!PREFIXES.has(p)) throw bad(`Unknown prefix in ${name}`);
      prefix = p as DatePrefix;
      rest = v.slice(2);
    }
    const range = fhirDateRange(rest);
    if (!range) throw bad(`${name} must be a FHIR date or dateTime (years 0001-9999), optionally with a prefix eq, ne, gt, lt, ge, le, sa or eb`);
    return { prefix, lo: range.lo, hi: range.hi };
  });
}

function tokenValues(name: string, raw: string): Array<{ system?: string; code?: string }> {
  return splitEscaped(raw, ',').map((v) => {
    const parts = splitEscaped(v, '|');
    if (parts.length === 1) {
      if (parts[0] === '') throw bad(`Empty value in ${name}`);
      return { code: unescape(parts[0]!) };
    }
    if (parts.length !== 2) throw bad(`${name} must be code, system|code, |code or system|`);
    const [system, code] = parts as [string, string];
    if (system === '' && code === '') throw bad(`Empty value in ${name}`);
    return { system: unescape(system), ...(code === '' ? {} : { code: unescape(code) }) };
  });
}

/** String search values (R4: `,` separates alternatives, `\` escapes); a value that normalises to nothing matches nothing useful. */
function stringValues(name: string, raw: string): string[] {
  return splitEscaped(raw, ',').map((v) => {
    const value = unescape(v);
    if (normalizeSearchString(value) === '') throw bad(`Empty value in ${name}`);
    return value;
  });
}

function referenceValues(name: string, raw: string, targetType: string | undefined, baseUrl: string): Array<{ type?: string; id: string }> {
  return splitEscaped(raw, ',').map((v) => {
    if (ID_RE.test(v)) return { ...(targetType ? { type: targetType } : {}), id: v };
    let ref = v;
    if (/^https?:\/\//.test(v)) {
      const base = baseUrl.replace(/\/+$/, '');
      if (!v.startsWith(`${base}/`)) throw bad(`${name} must reference a resource on this server`);
      ref = v.slice(base.length + 1);
    }
    const key = /^[A-Z][A-Za-z]{1,63}\/[A-Za-z0-9\-.]{1,64}$/.test(ref) ? referenceKey(ref) : undefined;
    if (!key) throw bad(`${name} must be an id, Type/id or an absolute URL of a resource on this server`);
    if (targetType && key.type !== targetType) throw bad(`${name} names a ${key.type}, but the modifier says ${targetType}`);
    return key;
  });
}

function includeSpec(name: string, raw: string, searchType: string, reverse: boolean): IncludeSpec {
  const parts = raw.split(':');
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => p === '')) throw bad(`${name} must be Type:parameter[:TargetType]`);
  const [sourceType, param, targetType] = parts as [string, string, string | undefined];
  if (param === '*' || targetType === 'iterate' || name.includes(':')) throw bad(`${name} with * or :iterate is not supported`);
  if (!TYPE_RE.test(sourceType) || (targetType !== undefined && !TYPE_RE.test(targetType))) throw bad(`${name} names an invalid resource type`);
  if (!reverse && sourceType !== searchType) throw bad(`_include must start with the searched type ${searchType}`);
  if (searchParamKind(sourceType, param) !== 'reference') throw bad(`${name}: ${sourceType}:${shortName(param)} is not a supported reference parameter`);
  return { sourceType, param, ...(targetType ? { targetType } : {}) };
}

/** The type a chain's reference parameter points at when the request does not say (`patient.name`, `subject.identifier`). */
const CHAIN_TARGET: Readonly<Record<string, string>> = {
  patient: 'Patient',
  subject: 'Patient',
  practitioner: 'Practitioner',
  organization: 'Organization',
  medication: 'Medication',
  encounter: 'Encounter',
  location: 'Location',
  endpoint: 'Endpoint',
};

/** The clause of one known parameter of `resourceType` (`base`, with its `modifier`), or 'unsupported' for a modifier it does not take. */
function clauseOf(resourceType: string, name: string, base: string, modifier: string | undefined, value: string, baseUrl: string): SearchClause | 'unsupported' {
  const common = COMMON_PARAMETERS[base];
  const kind = common ? undefined : searchParamKind(resourceType, base);
  const referenceModifier = kind === 'reference' && modifier !== undefined && TYPE_RE.test(modifier);
  const stringModifier = kind === 'string' && (modifier === 'exact' || modifier === 'contains');
  const notModifier = kind === 'token' && modifier === 'not';
  if (modifier === 'missing' && kind) {
    if (value !== 'true' && value !== 'false') throw bad(`${shortName(name)} must be true or false`);
    return { kind: 'missing', param: base, index: kind === 'string' ? 'token' : kind, missing: value === 'true' };
  }
  if (modifier !== undefined && !referenceModifier && !stringModifier && !notModifier) return 'unsupported';
  if (common === 'id') {
    const ids = splitEscaped(value, ',');
    if (!ids.every((i) => ID_RE.test(i))) throw bad('_id must be FHIR ids ([A-Za-z0-9-.], at most 64 characters)');
    return { kind: 'id', values: ids };
  }
  if (common === 'lastUpdated') return { kind: 'lastUpdated', values: dateValues(name, value) };
  if (kind === 'token') return { kind: 'token', param: base, values: tokenValues(name, value), ...(notModifier ? { not: true } : {}) };
  if (kind === 'date') return { kind: 'date', param: base, values: dateValues(name, value) };
  if (kind === 'string') return { kind: 'string', param: base, match: modifier === 'exact' ? 'exact' : modifier === 'contains' ? 'contains' : 'start', values: stringValues(name, value) };
  const implied = referenceModifier ? modifier : base === 'patient' ? 'Patient' : undefined;
  return { kind: 'reference', param: base, values: referenceValues(name, value, implied, baseUrl) };
}

/**
 * The clause a chain or `_has` tests on `type`: one of its token, string or date parameters (no
 * `:missing`, no further chain); otherwise why not, as a message.
 */
function linkedClause(what: 'chained' | '_has', type: string, name: string, param: string, modifier: string | undefined, value: string, baseUrl: string): SearchClause | string {
  const kind = searchParamKind(type, param);
  if (!kind || kind === 'reference' || COMMON_PARAMETERS[param] || param.includes('.')) return `Unsupported ${what} parameter (a token, string or date parameter of ${type})`;
  const clause = clauseOf(type, name, param, modifier, value, baseUrl);
  return clause === 'unsupported' || clause.kind === 'missing' ? 'Unsupported search modifier' : clause;
}

/**
 * Validates search parameters for `resourceType`.
 *
 * @param params - name/value pairs in request order (query string, or form body of `_search`)
 * @param options.lenient - `Prefer: handling=lenient`: ignore unknown parameters with a warning
 * @param options.baseUrl - this server's base, for absolute references
 * @throws HttpError 400 for unknown parameters (strict), unsupported modifiers or chains (more than one level), and bad values
 */
export function parseSearch(
  resourceType: string,
  params: ReadonlyArray<readonly [string, string]>,
  options: { readonly lenient: boolean; readonly baseUrl: string },
): ParsedSearch {
  if (params.length > MAX_PARAMS) throw httpError(400, 'too-costly', `At most ${MAX_PARAMS} search parameters are accepted`);
  const clauses: SearchClause[] = [];
  const include: IncludeSpec[] = [];
  const revinclude: IncludeSpec[] = [];
  const chains: ChainSpec[] = [];
  const has: HasSpec[] = [];
  const warnings: string[] = [];
  const canonical: Array<[string, string]> = [];
  let count = DEFAULT_COUNT;
  let cursor: string | undefined;
  let summaryCount = false;
  let elements: string[] | undefined;
  let sort: SearchSort | undefined;
  let summary: 'true' | 'data' | undefined;

  const unsupported = (name: string, why: string): void => {
    if (!options.lenient) throw httpError(400, 'not-supported', `${why}: ${shortName(name)}`);
    warnings.push(`Ignored ${why.toLowerCase()}: ${shortName(name)}`);
  };

  for (const [name, value] of params) {
    if (value.length > MAX_VALUE_CHARS) throw bad(`Value of ${shortName(name)} is too long`);
    // Control characters (NUL above all: PostgreSQL text cannot hold it) are never valid search input.
    if (CONTROL_RE.test(value) || CONTROL_RE.test(name)) throw bad('Search parameters must not contain control characters');
    if (name === '_cursor') {
      cursor = value;
      continue;
    }
    if (IGNORED.has(name)) continue;
    if (value === '') continue; // R4: a parameter without a value is ignored
    if (splitEscaped(value, ',').length > MAX_VALUES) throw bad(`At most ${MAX_VALUES} values per parameter`);
    const keep = (): void => {
      canonical.push([name, value]);
    };

    switch (name) {
      case '_count': {
        if (!/^\d{1,9}$/.test(value)) throw bad('_count must be a non-negative integer');
        count = Math.min(Number(value), MAX_COUNT);
        keep();
        continue;
      }
      case '_summary':
        if (value === 'count') summaryCount = true;
        else if (value === 'true' || value === 'data') summary = value;
        else if (value !== 'false') throw httpError(400, 'not-supported', '_summary supports count, true, data and false');
        keep();
        continue;
      case '_total':
        // A hint (R4: the server may leave the total out). Pages never carry one, since a total over
        // consent-filtered matches costs a scan of them all; `_summary=count` asks for exactly that.
        if (value !== 'none' && value !== 'estimate' && value !== 'accurate') throw bad('_total must be none, estimate or accurate');
        if (value !== 'none') warnings.push(`_total=${value} ignored: search pages carry no total (use _summary=count)`);
        continue;
      case '_elements': {
        const list = value.split(',');
        if (!list.every((e) => /^[a-z][A-Za-z0-9]{0,63}$/.test(e))) throw bad('_elements must list top-level element names');
        elements = [...(elements ?? []), ...list];
        keep();
        continue;
      }
      case '_sort': {
        // One key, `_lastUpdated` or (where the type has it) `date`, `-` for descending; `_id` after it
        // is the order ties get anyway. Other keys: not supported (ignored under handling=lenient).
        const keys = value.split(',');
        const first = keys[0]!.replace(/^-/, '');
        const tail = keys.slice(1);
        const sortable = first === '_lastUpdated' || (first === 'date' && searchParamKind(resourceType, 'date') === 'date');
        if (!sortable || tail.some((k) => k !== '_id') || sort) {
          unsupported(`_sort=${value}`, `Unsupported sort (only one of _lastUpdated or date${searchParamKind(resourceType, 'date') === 'date' ? '' : ' where the type has it'}, optionally descending with -)`);
          continue;
        }
        sort = { key: first, descending: keys[0]!.startsWith('-') };
        keep();
        continue;
      }
      case '_include':
        include.push(includeSpec(name, value, resourceType, false));
        keep();
        continue;
      case '_revinclude':
        revinclude.push(includeSpec(name, value, resourceType, true));
        keep();
        continue;
      default:
        break;
    }
    if (name.startsWith('_include:') || name.startsWith('_revinclude:')) throw bad(`${shortName(name)}: :iterate is not supported`);
    if (name.startsWith('_has:')) {
      // Reverse chain, one level: `Patient?_has:Observation:patient:code=1234-5`.
      const parts = name.split(':');
      const [, sourceType, param, tail] = parts as [string, string | undefined, string | undefined, string | undefined];
      if (parts.length !== 4 || !sourceType || !TYPE_RE.test(sourceType) || !param || !tail || tail.startsWith('_has')) {
        unsupported(name, '_has must be _has:Type:referenceParameter:parameter (one level)');
        continue;
      }
      if (searchParamKind(sourceType, param) !== 'reference') {
        unsupported(name, `_has needs a reference parameter of ${sourceType}`);
        continue;
      }
      const clause = linkedClause('_has', sourceType, name, tail, undefined, value, options.baseUrl);
      if (typeof clause === 'string') {
        unsupported(name, clause);
        continue;
      }
      has.push({ sourceType, param, clause });
      keep();
      continue;
    }

    const dot = name.indexOf('.');
    if (dot >= 0) {
      // A chain, one level: `patient.identifier=…`, `subject:Patient.name=…`, `practitioner.name:exact=…`.
      const head = name.slice(0, dot);
      const tail = name.slice(dot + 1);
      const hc = head.indexOf(':');
      const param = hc < 0 ? head : head.slice(0, hc);
      const typed = hc < 0 ? undefined : head.slice(hc + 1);
      if (searchParamKind(resourceType, param) !== 'reference' || (typed !== undefined && !TYPE_RE.test(typed))) {
        unsupported(name, `Chained search needs a reference parameter of ${resourceType} (optionally :TargetType) before the dot`);
        continue;
      }
      const targetType = typed ?? CHAIN_TARGET[param];
      if (!targetType) {
        unsupported(name, `Name the chain's target type (e.g. ${param}:Patient.identifier)`);
        continue;
      }
      if (tail.includes('.')) {
        unsupported(name, 'Chains of more than one level are not supported');
        continue;
      }
      const tc = tail.indexOf(':');
      const clause = linkedClause('chained', targetType, name, tc < 0 ? tail : tail.slice(0, tc), tc < 0 ? undefined : tail.slice(tc + 1), value, options.baseUrl);
      if (typeof clause === 'string') {
        unsupported(name, clause);
        continue;
      }
      chains.push({ param, targetType, clause });
      keep();
      continue;
    }
    const colon = name.indexOf(':');
    const base = colon < 0 ? name : name.slice(0, colon);
    const modifier = colon < 0 ? undefined : name.slice(colon + 1);
    if (!COMMON_PARAMETERS[base] && !searchParamKind(resourceType, base)) {
      unsupported(name, `Unknown or unsupported search parameter for ${resourceType}`);
      continue;
    }
    const clause = clauseOf(resourceType, name, base, modifier, value, options.baseUrl);
    if (clause === 'unsupported') {
      unsupported(name, 'Unsupported search modifier');
      continue;
    }
    clauses.push(clause);
    keep();
  }
  if (elements && summary) throw bad('_elements and _summary cannot be used together');
  canonical.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
  return {
    resourceType,
    clauses,
    count,
    ...(cursor !== undefined ? { cursor } : {}),
    summaryCount,
    ...(elements ? { elements } : {}),
    ...(sort ? { sort } : {}),
    ...(summary ? { summary } : {}),
    include,
    revinclude,
    chains,
    has,
    warnings,
    canonical,
  };
}

/**
 * The interval a FHIR date, dateTime or instant covers (`$everything`'s `_since`, `start`, `end`), or
 * undefined when malformed: the store's own parser, so operations need not import the store.
 */
export const dateRange: (value: string) => { readonly lo: Date; readonly hi: Date } | undefined = fhirDateRange;

/** Name/value pairs of a URL-encoded string (a query string or a form body); 400 when undecodable. */
export function formPairs(encoded: string): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  if (encoded === '') return out;
  for (const part of encoded.split('&')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const rawName = eq < 0 ? part : part.slice(0, eq);
    const rawValue = eq < 0 ? '' : part.slice(eq + 1);
    try {
      out.push([decodeURIComponent(rawName.replace(/\+/g, ' ')), decodeURIComponent(rawValue.replace(/\+/g, ' '))]);
    } catch {
      throw bad('The query is not valid URL encoding');
    }
    if (out.length > MAX_PARAMS * 2) throw httpError(400, 'too-costly', `At most ${MAX_PARAMS} search parameters are accepted`);
  }
  return out;
}

/** The type a reference parameter points at, where its name says so. */
const REVERSE_TARGET: Readonly<Record<string, string>> = {
  patient: 'Patient',
  encounter: 'Encounter',
  practitioner: 'Practitioner',
  organization: 'Organization',
  medication: 'Medication',
  location: 'Location',
  endpoint: 'Endpoint',
};

/** CapabilityStatement resources of the read API: interactions and the supported search parameters per type. */
export function capabilityResources(): CapabilityStatementRestResource[] {
  return Object.entries(SEARCH_PARAMETERS).map(([type, params]) => ({
    type: type as CapabilityStatementRestResource['type'],
    interaction: [{ code: 'read' }, { code: 'vread' }, { code: 'history-instance' }, { code: 'search-type' }, ...(type === 'Consent' ? [{ code: 'create' as const }, { code: 'update' as const }, { code: 'delete' as const }] : [])],
    // Consent writes honour If-Match (version-aware updates).
    versioning: type === 'Consent' ? 'versioned-update' : 'versioned',
    readHistory: true,
    conditionalRead: 'full-support',
    searchInclude: Object.entries(params).filter(([, k]) => k === 'reference').map(([p]) => `${type}:${p}`),
    // What can point at this type: Provenance targets anything (US Core asks for Provenance:target on
    // every type); `patient`, `encounter`, `practitioner`, `organization` and `medication` point at their namesakes.
    searchRevInclude: Object.entries(SEARCH_PARAMETERS).flatMap(([source, sp]) =>
      Object.entries(sp)
        .filter(([p, k]) => k === 'reference' && (p === 'target' || REVERSE_TARGET[p] === type))
        .map(([p]) => `${source}:${p}`),
    ),
    searchParam: [
      { name: '_id', type: 'token' },
      { name: '_lastUpdated', type: 'date' },
      ...Object.entries(params).map(([name, kind]) => ({ name, type: kind })),
    ],
    ...(type === 'Patient' ? { operation: [{ name: 'everything', definition: 'http://hl7.org/fhir/OperationDefinition/Patient-everything' }] } : {}),
  }));
}
