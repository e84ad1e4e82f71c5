/**
 * A cheap structural gate run before normalisation and validation: is this value shaped like a FHIR R4
 * resource at all? It checks only the top level against the base R4 definitions, plus, in the whole
 * tree, keys that are never legal in FHIR JSON and could poison prototypes, and text or numbers that
 * cannot be stored as sent (NUL, lone surrogates, numbers beyond a double).
 */
import type { OperationOutcome, OperationOutcomeIssue, Resource } from '@medplum/fhirtypes';
import { PRIMITIVE_JS_TYPE, r4Index } from './r4-index.js';
import { UNSTORABLE_TEXT, unrepresentableNumber, unstorable } from '../platform/json-text.js';

const ID = /^[A-Za-z0-9\-.]{1,64}$/;
/** Keys that JSON.parse turns into own properties but that no FHIR element is named (prototype pollution). */
const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);
/** Deep trees are rejected rather than risking a stack overflow in later recursive passes. */
export const MAX_DEPTH = 64;

function issue(code: OperationOutcomeIssue['code'], text: string, expression?: string): OperationOutcomeIssue {
  return { severity: 'error', code, details: { text }, ...(expression ? { expression: [expression] } : {}) };
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function scanKeys(value: unknown, path: string, depth: number, issues: OperationOutcomeIssue[]): void {
  if (issues.length >= 20) return;
  if (depth > MAX_DEPTH) {
    issues.push(issue('too-costly', `nesting deeper than ${MAX_DEPTH} levels`, path));
    return;
  }
  if (typeof value === 'string') {
    const why = unstorable(value);
    if (why) issues.push(issue('invalid', `string ${why}`, path));
  } else if (typeof value === 'number') {
    const why = unrepresentableNumber(value);
    if (why) issues.push(issue('invalid', why, path));
  } else if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) scanKeys(value[i], `${path}[${i}]`, depth + 1, issues);
  } else if (isPlainObject(value)) {
    for (const key of Object.keys(value)) {
      const why = unstorable(key);
      if (why) issues.push(issue('invalid', `property name ${why}`, `${path}.${key.replace(UNSTORABLE_TEXT, '?')}`));
      else if (FORBIDDEN_KEYS.has(key)) issues.push(issue('security', `forbidden property "${key}"`, `${path}.${key}`));
      else scanKeys(value[key], `${path}.${key}`, depth + 1, issues);
    }
  }
}

function describe(v: unknown): string {
  return v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v;
}

/**
 * Builds what {@link isStructurallyFhir} needs (the R4 index, about 0.3 s of synchronous work) now
 * rather than in the first request that needs it: start-up calls this, so that the first notification
 * after a start does not stall every other request on the event loop for that long.
 */
export function prepareStructuralCheck(): void {
  r4Index();
}

/**
 * Checks that `value` is a JSON object with a known R4 `resourceType`, whose top-level properties are
 * all R4 elements of that type with the right JSON shape (array or not; string, number, boolean or
 * object), with no `__proto__` / `constructor` / `prototype` key anywhere, and with no string or key
 * that cannot be stored ({@link unstorableValue}).
 *
 * @param value - anything, typically the result of `JSON.parse`
 * @returns the value typed as a Resource, or an OperationOutcome listing what is wrong
 */
export function isStructurallyFhir(value: unknown): { ok: true; resource: Resource } | { ok: false; outcome: OperationOutcome } {
  const fail = (issues: OperationOutcomeIssue[]): { ok: false; outcome: OperationOutcome } => ({
    ok: false,
    outcome: { resourceType: 'OperationOutcome', issue: issues },
  });
  if (!isPlainObject(value)) return fail([issue('structure', `expected a JSON object, got ${describe(value)}`)]);
  const issues: OperationOutcomeIssue[] = [];
  scanKeys(value, '', 0, issues);
  const resourceType = value.resourceType;
  if (typeof resourceType !== 'string') {
    issues.push(issue('required', resourceType === undefined ? 'missing resourceType' : `resourceType must be a string, got ${describe(resourceType)}`, 'resourceType'));
    return fail(issues);
  }
  const elements = r4Index().get(resourceType);
  if (!elements) {
    issues.push(issue('not-supported', `unknown resourceType "${resourceType.slice(0, 64)}"`, 'resourceType'));
    return fail(issues);
  }
  for (const [key, v] of Object.entries(value)) {
    if (key === 'resourceType' || FORBIDDEN_KEYS.has(key) || v === undefined) continue; // undefined = absent, as in JSON
    const path = `${resourceType}.${key}`;
    const el = elements.get(key.startsWith('_') ? key.slice(1) : key);
    if (!el) {
      issues.push(issue('structure', `unknown property "${key}" for ${resourceType}`, path));
      continue;
    }
    if (key.startsWith('_')) {
      if (!(isPlainObject(v) || Array.isArray(v))) issues.push(issue('structure', `primitive extension must be an object or array, got ${describe(v)}`, path));
      continue;
    }
    if (el.array !== Array.isArray(v)) {
      issues.push(issue('structure', el.array ? `expected an array, got ${describe(v)}` : `expected a single value, got an array`, path));
      continue;
    }
    const jsType = PRIMITIVE_JS_TYPE[el.type];
    for (const item of Array.isArray(v) ? v : [v]) {
      if (item === null && Array.isArray(v) && jsType) continue; // allowed when _key carries the extension
      const ok = jsType ? typeof item === jsType : isPlainObject(item);
      if (!ok) {
        issues.push(issue('structure', `expected ${jsType ?? `${el.type} object`}, got ${describe(item)}`, path));
        break;
      }
    }
  }
  if (typeof value.id === 'string' && !ID.test(value.id)) issues.push(issue('value', 'id must match [A-Za-z0-9\\-.]{1,64}', `${resourceType}.id`));
  if (Array.isArray(value.contained)) {
    value.contained.forEach((c, i) => {
      if (!isPlainObject(c) || typeof c.resourceType !== 'string' || !r4Index().has(c.resourceType)) {
        issues.push(issue('structure', 'contained entry must be a resource with a known resourceType', `${resourceType}.contained[${i}]`));
      }
    });
  }
  return issues.length > 0 ? fail(issues) : { ok: true, resource: value as unknown as Resource };
}
