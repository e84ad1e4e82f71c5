/**
 * Scope granting for the token endpoint: what a client asks for, intersected with what it is allowed.
 *
 * The intersection is computed on the parsed SMART model (v1 and v2 mixed): context equal, resource
 * type the narrower of the two, permissions the common letters, constraints of both (AND). A result
 * equal to the requested scope keeps its spelling (so a v1 request stays v1); any other result is
 * written in v2 syntax.
 *
 * @see https://hl7.org/fhir/smart-app-launch/STU2/scopes-and-launch-context.html
 */
import { parseScopes, type ScopeConstraint, type ScopePermission, type SmartScope, type TokenValue } from '../../consent/index.js';

const ORDER: readonly ScopePermission[] = ['c', 'r', 'u', 'd', 's'];

function tokenKey(t: TokenValue): string {
  return `${t.system === undefined ? '*' : t.system}|${t.code}`;
}

function constraintKey(c: ScopeConstraint): string {
  return `${c.parameter}=${c.values.map(tokenKey).sort().join(',')}`;
}

function formatToken(t: TokenValue): string {
  const code = encodeURIComponent(t.code);
  if (t.system === undefined) return code;
  return `${encodeURIComponent(t.system)}|${code}`;
}

/** Writes a scope in SMART v2 syntax. */
export function formatScope(scope: Pick<SmartScope, 'context' | 'resourceType' | 'permissions' | 'constraints'>): string {
  const base = `${scope.context}/${scope.resourceType}.${scope.permissions.join('')}`;
  if (scope.constraints.length === 0) return base;
  return `${base}?${scope.constraints.map((c) => `${c.parameter}=${c.values.map(formatToken).join(',')}`).join('&')}`;
}

function sameScope(a: Omit<SmartScope, 'raw' | 'version'>, b: SmartScope): boolean {
  if (a.context !== b.context || a.resourceType !== b.resourceType) return false;
  if (a.permissions.join('') !== b.permissions.join('')) return false;
  const ka = a.constraints.map(constraintKey).sort();
  const kb = b.constraints.map(constraintKey).sort();
  return ka.length === kb.length && ka.every((k, i) => k === kb[i]);
}

/** The scope both `requested` and `allowed` grant, or undefined when they share nothing. */
export function intersectScope(requested: SmartScope, allowed: SmartScope): SmartScope | undefined {
  if (requested.context !== allowed.context) return undefined;
  let resourceType: string;
  if (allowed.resourceType === '*') resourceType = requested.resourceType;
  else if (requested.resourceType === '*' || requested.resourceType === allowed.resourceType) resourceType = allowed.resourceType;
  else return undefined;
  const permissions = ORDER.filter((p) => requested.permissions.includes(p) && allowed.permissions.includes(p));
  if (permissions.length === 0) return undefined;
  // Constraints of both apply (a granted scope is never wider than either side).
  const seen = new Set<string>();
  const constraints: ScopeConstraint[] = [];
  for (const c of [...requested.constraints, ...allowed.constraints]) {
    const k = constraintKey(c);
    if (!seen.has(k)) {
      seen.add(k);
      constraints.push(c);
    }
  }
  const result = { context: requested.context, resourceType, permissions, constraints };
  if (sameScope(result, requested)) return requested;
  if (sameScope(result, allowed)) return allowed;
  return { ...result, raw: formatScope(result), version: 2 };
}

/**
 * Grants the requested scopes within the allowed ones. Scopes that are not resource scopes, or do
 * not parse, are dropped; so are contexts the client cannot use (`patient/` without a patient,
 * `user/` without a fhirUser). Returns the granted scope strings, without duplicates.
 */
export function grantScopes(
  requested: string | readonly string[],
  allowed: readonly string[],
  usable: { readonly patient: boolean; readonly user: boolean } = { patient: true, user: true },
): string[] {
  const want = parseScopes(requested).scopes.filter((s) => (s.context !== 'patient' || usable.patient) && (s.context !== 'user' || usable.user));
  const may = parseScopes(allowed).scopes;
  const granted = new Set<string>();
  for (const r of want) {
    const parts = may.map((a) => intersectScope(r, a)).filter((g): g is SmartScope => g !== undefined);
    // Wholly allowed: grant it as asked; otherwise the parts of it that are allowed.
    if (parts.includes(r)) granted.add(r.raw);
    else for (const g of parts) granted.add(g.raw);
  }
  return [...granted];
}
