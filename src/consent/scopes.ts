/**
 * SMART App Launch scopes for FHIR resources: v1 (`patient/Observation.read`) and v2
 * (`patient/Observation.rs`, granular `?category=...`) parsed into one model.
 *
 * Scopes are half of the gate: a read is disclosed only when the token's scopes allow it AND the
 * patient's consent permits it (see `engine.ts`).
 *
 * @see https://hl7.org/fhir/smart-app-launch/STU2/scopes-and-launch-context.html
 */
import type { Resource } from '@medplum/fhirtypes';
import { categoryCodings, primaryCodings } from './fhir-values.js';

/** Whose data a scope covers: the launch patient, whatever the user may see, or a backend system. */
export type ScopeContext = 'patient' | 'user' | 'system';

/** SMART v2 permissions, in the order the grammar requires them: create, read, update, delete, search. */
export type ScopePermission = 'c' | 'r' | 'u' | 'd' | 's';

/** A FHIR REST interaction to be checked against scopes. */
export type ScopeInteraction = 'read' | 'search' | 'create' | 'update' | 'delete';

/**
 * One token value of a granular constraint: `system|code`, `|code` (no system) or `code` (any
 * system), as in FHIR token search.
 */
export interface TokenValue {
  /** undefined: any system; '': the coding must have no system. */
  readonly system?: string;
  readonly code: string;
}

/** Granular-scope search parameters the model can evaluate against a resource. */
export type ConstraintParameter = 'category' | 'code';

/** One `param=value[,value]` of a v2 scope: the resource must match at least one of `values`. */
export interface ScopeConstraint {
  readonly parameter: ConstraintParameter;
  readonly values: readonly TokenValue[];
}

/** A parsed resource scope. */
export interface SmartScope {
  /** The scope as granted. */
  readonly raw: string;
  /** 1 for `.read` / `.write` / `.*`, 2 for `.cruds` letters. */
  readonly version: 1 | 2;
  readonly context: ScopeContext;
  /** A resource type or `*`. */
  readonly resourceType: string;
  /** Granted permissions in `cruds` order; v1 `read` = `rs`, `write` = `cud`, `*` = `cruds`. */
  readonly permissions: readonly ScopePermission[];
  /** All must hold (FHIR `&` semantics); empty for an unconstrained scope. */
  readonly constraints: readonly ScopeConstraint[];
}

/** Result of {@link parseScope}. */
export type ScopeParseResult =
  | { readonly ok: true; readonly scope: SmartScope }
  | { readonly ok: false; readonly raw: string; readonly reason: string };

/** Result of {@link parseScopes}. */
export interface ParsedScopes {
  /** Resource scopes that parsed. */
  readonly scopes: readonly SmartScope[];
  /** Resource scopes that did not; they grant nothing. */
  readonly rejected: readonly { readonly raw: string; readonly reason: string }[];
  /** Scopes that are not about FHIR resources (`openid`, `fhirUser`, `launch/patient`, `offline_access`...). */
  readonly other: readonly string[];
}

const V1_PERMISSIONS: Readonly<Record<string, readonly ScopePermission[]>> = {
  read: ['r', 's'],
  write: ['c', 'u', 'd'],
  '*': ['c', 'r', 'u', 'd', 's'],
};

const ORDER = 'cruds';
const RESOURCE_TYPE_RE = /^[A-Z][A-Za-z]{1,63}$/;
const SUPPORTED_PARAMETERS: ReadonlySet<string> = new Set<ConstraintParameter>(['category', 'code']);

function fail(raw: string, reason: string): ScopeParseResult {
  return { ok: false, raw, reason };
}

function parseToken(raw: string): TokenValue | undefined {
  if (raw === '') return undefined;
  const bar = raw.indexOf('|');
  if (bar < 0) return { code: raw };
  const system = raw.slice(0, bar);
  const code = raw.slice(bar + 1);
  if (code === '' || code.includes('|')) return undefined;
  return { system, code };
}

function parseQuery(query: string): ScopeConstraint[] | string {
  if (query === '') return 'empty query after "?"';
  const constraints: ScopeConstraint[] = [];
  for (const pair of query.split('&')) {
    const eq = pair.indexOf('=');
    if (eq <= 0) return `constraint "${pair}" is not param=value`;
    const parameter = pair.slice(0, eq);
    let value: string;
    try {
      value = decodeURIComponent(pair.slice(eq + 1).replace(/\+/g, ' '));
    } catch {
      return `constraint "${pair}" is not valid URL encoding`;
    }
    if (parameter.includes(':')) return `search modifiers are not supported in scopes ("${parameter}")`;
    if (!SUPPORTED_PARAMETERS.has(parameter)) {
      return `unsupported constraint parameter "${parameter}" (supported: ${[...SUPPORTED_PARAMETERS].join(', ')})`;
    }
    const values: TokenValue[] = [];
    for (const part of value.split(',')) {
      const token = parseToken(part);
      if (!token) return `"${parameter}" value "${part}" is not a token (system|code, |code or code)`;
      values.push(token);
    }
    constraints.push({ parameter: parameter as ConstraintParameter, values });
  }
  return constraints;
}

/**
 * Parses one SMART resource scope, v1 or v2. Returns a readable reason for anything malformed:
 * unknown context, bad resource type, permissions out of `cruds` order or repeated, v1 words mixed
 * with v2 letters, query constraints on v1 scopes, unsupported constraint parameters.
 */
export function parseScope(raw: string): ScopeParseResult {
  const slash = raw.indexOf('/');
  if (slash < 0) return fail(raw, 'not a resource scope (expected context/ResourceType.permissions)');
  const context = raw.slice(0, slash);
  if (context !== 'patient' && context !== 'user' && context !== 'system') {
    return fail(raw, `unknown context "${context}" (expected patient, user or system)`);
  }
  const rest = raw.slice(slash + 1);
  const q = rest.indexOf('?');
  const head = q < 0 ? rest : rest.slice(0, q);
  const dot = head.lastIndexOf('.');
  if (dot < 0) return fail(raw, 'missing ".permissions" after the resource type');
  const resourceType = head.slice(0, dot);
  const perm = head.slice(dot + 1);
  if (resourceType !== '*' && !RESOURCE_TYPE_RE.test(resourceType)) {
    return fail(raw, `"${resourceType}" is not a FHIR resource type or "*"`);
  }
  if (perm === '') return fail(raw, 'empty permissions');

  const v1 = V1_PERMISSIONS[perm];
  if (v1) {
    if (q >= 0) return fail(raw, 'query constraints are only defined for SMART v2 scopes (use .rs / .cruds letters)');
    return { ok: true, scope: { raw, version: 1, context, resourceType, permissions: v1, constraints: [] } };
  }
  if (!/^[cruds]+$/.test(perm)) {
    return fail(raw, `permissions "${perm}" are neither v1 (read, write, *) nor v2 letters (c, r, u, d, s)`);
  }
  let last = -1;
  for (const ch of perm) {
    const i = ORDER.indexOf(ch);
    if (i === last) return fail(raw, `permission "${ch}" repeated`);
    if (i < last) return fail(raw, `permissions must appear in the order c, r, u, d, s (got "${perm}")`);
    last = i;
  }
  let constraints: ScopeConstraint[] = [];
  if (q >= 0) {
    const parsed = parseQuery(rest.slice(q + 1));
    if (typeof parsed === 'string') return fail(raw, parsed);
    constraints = parsed;
  }
  return {
    ok: true,
    scope: { raw, version: 2, context, resourceType, permissions: [...perm] as ScopePermission[], constraints },
  };
}

/**
 * Splits an OAuth `scope` string (space separated) into resource scopes, rejected resource scopes
 * (with reasons) and other scopes. A rejected scope grants nothing.
 */
export function parseScopes(scope: string | readonly string[]): ParsedScopes {
  const tokens = typeof scope === 'string' ? scope.split(/\s+/).filter((s) => s !== '') : scope;
  const scopes: SmartScope[] = [];
  const rejected: { raw: string; reason: string }[] = [];
  const other: string[] = [];
  for (const t of tokens) {
    if (!/^(patient|user|system)\//.test(t)) {
      // launch/patient and launch/encounter look like context/x but are launch-context requests.
      other.push(t);
      continue;
    }
    const r = parseScope(t);
    if (r.ok) scopes.push(r.scope);
    else rejected.push({ raw: r.raw, reason: r.reason });
  }
  return { scopes, rejected, other };
}

const PERMISSION_OF: Readonly<Record<ScopeInteraction, ScopePermission>> = {
  create: 'c',
  read: 'r',
  update: 'u',
  delete: 'd',
  search: 's',
};

/** The question {@link scopesAllow} answers. */
export interface ScopeCheck {
  readonly context: ScopeContext;
  readonly resourceType: string;
  readonly interaction: ScopeInteraction;
  /** Needed to satisfy granular (constrained) scopes; without it only unconstrained scopes count. */
  readonly resource?: Resource;
}

function tokenMatches(token: TokenValue, system: string | undefined, code: string | undefined): boolean {
  if (code !== token.code) return false;
  if (token.system === undefined) return true;
  if (token.system === '') return system === undefined || system === '';
  return system === token.system;
}

/** Whether the resource satisfies one constraint (any value, any coding of the parameter's element). */
export function constraintMatches(constraint: ScopeConstraint, resource: Resource): boolean {
  const codings = constraint.parameter === 'category' ? categoryCodings(resource) : primaryCodings(resource);
  for (const c of codings) for (const v of constraint.values) if (tokenMatches(v, c.system, c.code)) return true;
  return false;
}

function scopeCovers(scope: SmartScope, check: ScopeCheck): boolean {
  return (
    scope.context === check.context &&
    (scope.resourceType === '*' || scope.resourceType === check.resourceType) &&
    scope.permissions.includes(PERMISSION_OF[check.interaction])
  );
}

/**
 * Whether any scope allows the interaction. A scope's context must equal the request's context
 * exactly (the API layer decides which context a request runs in). A constrained v2 scope counts
 * only when `check.resource` is given and satisfies every constraint: without the resource the
 * answer is `false` for it (fail closed); use {@link searchConstraints} to narrow a search instead.
 */
export function scopesAllow(scopes: readonly SmartScope[], check: ScopeCheck): boolean {
  if (check.resource && check.resource.resourceType !== check.resourceType) return false;
  for (const scope of scopes) {
    if (!scopeCovers(scope, check)) continue;
    if (scope.constraints.length === 0) return true;
    if (check.resource && scope.constraints.every((c) => constraintMatches(c, check.resource!))) return true;
  }
  return false;
}

/**
 * How scopes narrow a search: `all` (an unconstrained scope allows the type), `none`, or the
 * alternatives (OR) of constraint sets (AND within a set) that a result must satisfy.
 */
export function searchConstraints(
  scopes: readonly SmartScope[],
  check: Omit<ScopeCheck, 'interaction' | 'resource'>,
): 'all' | 'none' | readonly (readonly ScopeConstraint[])[] {
  const alternatives: (readonly ScopeConstraint[])[] = [];
  for (const scope of scopes) {
    if (!scopeCovers(scope, { ...check, interaction: 'search' })) continue;
    if (scope.constraints.length === 0) return 'all';
    alternatives.push(scope.constraints);
  }
  return alternatives.length === 0 ? 'none' : alternatives;
}
