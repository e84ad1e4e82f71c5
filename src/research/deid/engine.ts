/**
 * The anonymization engine: applies a compiled configuration to one root (a resource or a Bundle)
 * with the reference tool's semantics, then runs fhir-anchor's safety net over the result.
 *
 * Semantics kept from Microsoft FHIR Tools for Anonymization:
 * - resources are visited in pre-order (a Bundle before its entries, a resource before its contained
 *   resources); each gets the rules whose type prefix is its type, `Resource`/`DomainResource`, or none;
 * - rules run in file order and the first rule to reach a node wins: a processed node (and, for a
 *   complex node, its whole subtree, sub-resources excepted) is never touched by a later rule;
 * - a redacted value is removed, and elements left without value or children are removed at the end;
 * - each resource (contained ones excepted) gets `meta.security` labels for the operations applied to
 *   it and to its sub-resources.
 *
 * @packageDocumentation
 */
import { getResourceTypes } from '@medplum/core';
import type { Coding } from '@medplum/fhirtypes';
import {
  cachedHasher,
  dateShiftOffset,
  encrypt,
  perturb as perturbValue,
  redactAge,
  redactDate,
  redactPostalCode,
  shiftDate,
  transformReferenceId,
} from './algorithms.js';
import { evalFhirPathTyped, type TypedValue } from '@medplum/core';
import type { CompiledConfig, CompiledRule } from './config.js';
import { patientIdOf } from './patient.js';
import { buildTree, DNode, PRIMITIVE_TYPES, type ResourceIndex, type Tree } from './tree.js';

type Json = Record<string, unknown>;

/** Operations recorded per resource; they decide the security labels. */
export type Operation = 'REDACT' | 'ABSTRACT' | 'CRYPTOHASH' | 'ENCRYPT' | 'PERTURB' | 'SUBSTITUTE' | 'GENERALIZE';

const OBSERVATION_VALUE = 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue';

/**
 * The labels the tool adds, in its order. Its own definitions give a system only to REDACTED,
 * ABSTRED, CRYTOHASH (sic) and MASKED; PERTURBED, SUBSTITUTED and GENERALIZED are code-only there.
 */
export const SECURITY_LABELS: Readonly<Record<Operation, Coding>> = {
  REDACT: { system: OBSERVATION_VALUE, code: 'REDACTED', display: 'redacted' },
  ABSTRACT: { system: OBSERVATION_VALUE, code: 'ABSTRED', display: 'abstracted' },
  CRYPTOHASH: { system: OBSERVATION_VALUE, code: 'CRYTOHASH', display: 'cryptographic hash function' },
  ENCRYPT: { system: OBSERVATION_VALUE, code: 'MASKED', display: 'masked' },
  PERTURB: { code: 'PERTURBED', display: 'exact value is replaced with another exact value' },
  SUBSTITUTE: { code: 'SUBSTITUTED', display: 'exact value is replaced with a predefined value' },
  GENERALIZE: { code: 'GENERALIZED', display: 'exact value is replaced with a general value' },
};
const LABEL_ORDER: readonly Operation[] = ['REDACT', 'ABSTRACT', 'CRYPTOHASH', 'ENCRYPT', 'PERTURB', 'SUBSTITUTE', 'GENERALIZE'];

/** A rule failed on this input (the tool's AnonymizerProcessingException). */
export class DeidProcessingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DeidProcessingError';
  }
}

/** A rule cannot apply to the node it matched (the tool's AnonymizerRuleNotApplicableException): a policy bug. */
export class RuleNotApplicableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RuleNotApplicableError';
  }
}

/** Per-call context (scope prefixes and the clock). */
export interface RunContext {
  /** Prefix for dateShiftScope `file` (the file name) or `folder` (the input folder name). */
  readonly dateShiftKeyPrefix?: string;
  readonly now: Date;
}

/** What survived that the policy did not decide on, per reported resource. */
export interface Violation {
  /** The resource reported (contained resources report their container). */
  readonly resource: Json;
  /** Element paths (no values). */
  readonly paths: string[];
}

/** The result of one run. */
export interface RunResult {
  readonly output: Json;
  readonly violations: Violation[];
  /** The entry objects of Bundle.entry whose resources violated (for dropping). */
  readonly tree: Tree;
}

interface State {
  readonly cfg: CompiledConfig;
  readonly ctx: RunContext;
  readonly tree: Tree;
  readonly visited: Set<DNode>;
  readonly patientKeys: Map<DNode, string>;
  current: ResourceIndex;
  readonly hash: (input: string) => string;
}

let resourceTypes: readonly string[] | undefined;

/** A configuration compiled into an engine. */
export class Engine {
  private readonly rulesByType = new Map<string, readonly CompiledRule[]>();
  private readonly hash: (input: string) => string;

  constructor(readonly config: CompiledConfig) {
    this.hash = cachedHasher(config.keys.cryptoHashKey);
  }

  private rulesFor(type: string): readonly CompiledRule[] {
    let rules = this.rulesByType.get(type);
    if (!rules) {
      rules = this.config.rules.filter(
        (r) => r.matcher.resourceType === '' || r.matcher.resourceType === type || r.matcher.resourceType === 'Resource' || r.matcher.resourceType === 'DomainResource',
      );
      this.rulesByType.set(type, rules);
    }
    return rules;
  }

  /**
   * Anonymizes `root` in place (pass a copy) and checks the result.
   *
   * @throws DeidProcessingError / RuleNotApplicableError from the rules.
   */
  run(root: Json, ctx: RunContext): RunResult {
    const tree = buildTree(root); // loads the R4 schemas first
    if (!resourceTypes || resourceTypes.length === 0) resourceTypes = getResourceTypes();
    const state: State = { cfg: this.config, ctx, tree, visited: new Set(), patientKeys: new Map(), current: tree.resources[0]!, hash: this.hash };
    if (this.config.dateShiftScope === 'patient') computePatientKeys(tree, state.patientKeys);
    this.processResource(tree.resources[0]!, state);
    const violations = safetyNet(tree, state.visited);
    cleanup(root);
    return { output: root, violations, tree };
  }

  private processResource(idx: ResourceIndex, st: State): Set<Operation> {
    const ops = new Set<Operation>();
    st.current = idx;
    for (const rule of this.rulesFor(idx.node.type)) {
      const matches = rule.matcher.match(idx);
      for (const m of matches) processRecursive(m, rule, st, ops);
    }
    for (const sub of idx.subResources) {
      const subIdx = st.tree.indexOf.get(sub);
      if (!subIdx) continue;
      for (const op of this.processResource(subIdx, st)) ops.add(op);
      st.current = idx;
    }
    if (idx.node.name !== 'contained') addSecurityLabels(idx.node.value as Json, ops);
    return ops;
  }
}

function processRecursive(node: DNode, rule: CompiledRule, st: State, ops: Set<Operation>, matched = true): void {
  if (st.visited.has(node)) return;
  applyMethod(node, rule, st, ops, matched);
  st.visited.add(node);
  for (const c of node.children) if (!c.isResource) processRecursive(c, rule, st, ops, false);
}

const isEmptyValue = (v: unknown): boolean => v === null || v === undefined || v === '' || typeof v === 'object';

/** .NET's ToString of a primitive value (booleans are True/False there). */
function valueString(v: unknown): string {
  if (typeof v === 'boolean') return v ? 'True' : 'False';
  return String(v);
}

function applyMethod(node: DNode, rule: CompiledRule, st: State, ops: Set<Operation>, matched: boolean): void {
  switch (rule.method) {
    case 'keep':
      return;
    case 'redact':
      return redact(node, st, ops);
    case 'dateshift':
      return dateShift(node, st, ops);
    case 'cryptohash': {
      if (isEmptyValue(node.value)) return;
      const input = valueString(node.value);
      const hash = st.hash;
      node.value = node.name === 'reference' && node.parent?.type === 'Reference' ? transformReferenceId(input, hash, resourceTypes ?? []) : hash(input);
      ops.add('CRYPTOHASH');
      return;
    }
    case 'encrypt':
      if (isEmptyValue(node.value)) return;
      node.value = encrypt(valueString(node.value), st.cfg.keys.encryptKey);
      ops.add('ENCRYPT');
      return;
    case 'perturb':
      return perturbNode(node, rule, st, ops);
    case 'substitute':
      return substitute(node, rule, st, ops);
    case 'generalize':
      // Descendants of a matched primitive (its extensions) are not generalizable; only a match is checked.
      if (!matched && (!node.primitive || !PRIMITIVE_TYPES.has(node.type))) return;
      return generalize(node, rule, ops);
  }
}

function isDateKind(t: string): t is 'date' | 'dateTime' | 'instant' {
  return t === 'date' || t === 'dateTime' || t === 'instant';
}

function redact(node: DNode, st: State, ops: Set<Operation>): void {
  const v = node.value;
  if (isEmptyValue(v)) return;
  const cfg = st.cfg;
  if (isDateKind(node.type)) {
    const r = redactDate(valueString(v), node.type, cfg.enablePartialDatesForRedact, st.ctx.now);
    node.value = r.value;
    ops.add('REDACT');
  } else if (node.type === 'decimal' && node.parent?.type === 'Age') {
    node.value = redactAge(v as number, cfg.enablePartialAgesForRedact);
    ops.add('REDACT');
  } else if (node.name === 'postalCode') {
    if (cfg.enablePartialZipCodesForRedact) {
      node.value = redactPostalCode(valueString(v), cfg.restrictedZipCodeTabulationAreas);
      ops.add('ABSTRACT');
    } else {
      node.value = null;
      ops.add('REDACT');
    }
  } else {
    node.value = null;
    ops.add('REDACT');
  }
}

function dateShiftPrefix(st: State): string {
  switch (st.cfg.dateShiftScope) {
    case 'file':
    case 'folder':
      return st.ctx.dateShiftKeyPrefix ?? '';
    case 'patient':
      return st.patientKeys.get(st.current.node) ?? '';
    case 'resource': {
      // The tool reads the id of the root it was given, at the time the date is processed.
      const id = (st.tree.root.value as Json).id;
      return typeof id === 'string' ? id : '';
    }
  }
}

function dateShift(node: DNode, st: State, ops: Set<Operation>): void {
  const v = node.value;
  if (isEmptyValue(v) || !isDateKind(node.type)) return;
  const offset = dateShiftOffset(st.cfg.keys.dateShiftKey, dateShiftPrefix(st));
  const r = shiftDate(valueString(v), node.type, offset, st.cfg.enablePartialDatesForRedact, st.ctx.now);
  node.value = r.value;
  ops.add(r.op === 'perturb' ? 'PERTURB' : 'REDACT');
}

const NUMERIC = new Set(['decimal', 'integer', 'positiveInt', 'unsignedInt']);
const QUANTITIES = new Set(['Quantity', 'SimpleQuantity', 'Age', 'Count', 'Distance', 'Duration', 'Money', 'MoneyQuantity']);

function perturbNode(node: DNode, rule: CompiledRule, st: State, ops: Set<Operation>): void {
  let valueNode: DNode | undefined;
  if (NUMERIC.has(node.type)) valueNode = node;
  else if (QUANTITIES.has(node.type)) valueNode = node.children.find((c) => c.name === 'value');
  if (!valueNode || valueNode.value === null || valueNode.value === undefined || st.visited.has(valueNode)) return;
  const n = Number(valueNode.value);
  if (!Number.isFinite(n)) throw new DeidProcessingError(`perturb: ${rule.path} matched a non-numeric value`);
  const s = rule.perturb!;
  valueNode.value = perturbValue(n, valueNode.type, s.span, s.rangeType, s.roundTo);
  markSubtree(node, st.visited);
  ops.add('PERTURB');
}

function markSubtree(node: DNode, visited: Set<DNode>): void {
  for (const c of node.children) {
    if (c.isResource) continue;
    visited.add(c);
    markSubtree(c, visited);
  }
}

function hasVisited(node: DNode, visited: Set<DNode>): boolean {
  if (visited.has(node)) return true;
  return node.children.some((c) => !c.isResource && hasVisited(c, visited));
}

/**
 * Substitute: a primitive gets `replaceWith`; a complex element becomes the `replaceWith` fragment,
 * except that parts an earlier rule already processed are kept (the tool's semantics).
 */
function substitute(node: DNode, rule: CompiledRule, st: State, ops: Set<Operation>): void {
  const replaceWith = rule.replaceWith;
  if (node.primitive) {
    node.value = replaceWith === null || replaceWith === undefined ? null : typeof replaceWith === 'object' ? JSON.stringify(replaceWith) : replaceWith;
  } else {
    let fragment: unknown = replaceWith ?? {};
    if (typeof fragment === 'string') {
      try {
        fragment = JSON.parse(fragment) as unknown;
      } catch {
        throw new DeidProcessingError(`substitute: replaceWith of ${rule.path} is not a JSON object`);
      }
    }
    if (typeof fragment !== 'object' || fragment === null || Array.isArray(fragment)) {
      throw new DeidProcessingError(`substitute: replaceWith of ${rule.path} must be a JSON object for a ${node.type}`);
    }
    substituteObject(node, fragment as Json, st.visited);
  }
  markSubtree(node, st.visited);
  ops.add('SUBSTITUTE');
}

function substituteObject(node: DNode, fragment: Json, visited: Set<DNode>): void {
  const obj = node.value as Json;
  const byKey = new Map<string, DNode[]>();
  for (const c of node.children) {
    const list = byKey.get(c.jsonKey) ?? [];
    list.push(c);
    byKey.set(c.jsonKey, list);
  }
  // Children that an earlier rule processed stay; the others are replaced or removed.
  for (const [key, children] of byKey) {
    const keepers = children.filter((c) => hasVisited(c, visited));
    if (keepers.length === 0) {
      delete obj[key];
      continue;
    }
    for (const c of children) {
      if (visited.has(c)) continue;
      if (keepers.includes(c)) {
        if (c.primitive) c.value = null;
        else substituteObject(c, {}, visited);
      } else c.value = null;
    }
  }
  for (const [key, value] of Object.entries(fragment)) {
    const existing = obj[key];
    const copy = structuredClone(value);
    if (existing === undefined) obj[key] = copy;
    else if (Array.isArray(existing)) {
      const items = Array.isArray(copy) ? copy : [copy];
      let i = 0;
      for (let j = 0; j < existing.length && i < items.length; j++) if (existing[j] === null) existing[j] = items[i++];
      while (i < items.length) existing.push(items[i++]);
    } else if (existing === null) obj[key] = copy;
  }
}

function generalize(node: DNode, rule: CompiledRule, ops: Set<Operation>): void {
  if (PRIMITIVE_TYPES.has(node.type) && !node.primitive) {
    throw new DeidProcessingError(`generalize: ${rule.path} matched a ${node.type} whose JSON value is not a primitive`);
  }
  if (node.primitive && !PRIMITIVE_TYPES.has(node.type)) {
    throw new DeidProcessingError(`generalize: ${rule.path} matched a ${node.type} whose JSON value is a primitive`);
  }
  if (!node.primitive || !PRIMITIVE_TYPES.has(node.type)) {
    throw new RuleNotApplicableError(`generalize applies to primitive elements only; ${rule.path} matched a ${node.type}`);
  }
  if (node.value === null || node.value === undefined) return;
  const g = rule.generalize!;
  const tv: TypedValue = { type: node.type, value: node.value };
  for (const c of g.cases) {
    let hit: TypedValue[];
    try {
      hit = evalFhirPathTyped(c.condition, [tv], { $this: tv });
    } catch (err) {
      throw new DeidProcessingError(`generalize: case '${c.source}' failed: ${err instanceof Error ? err.message : String(err)}`);
    }
    if (hit.length === 1 && hit[0]?.value === true) {
      try {
        const out = evalFhirPathTyped(c.value, [tv], { $this: tv });
        node.value = out[0]?.value ?? null;
      } catch (err) {
        throw new DeidProcessingError(`generalize: value of case '${c.source}' failed: ${err instanceof Error ? err.message : String(err)}`);
      }
      ops.add('GENERALIZE');
      return;
    }
  }
  if (g.otherValues === 'redact') node.value = null;
  ops.add('GENERALIZE');
}

function addSecurityLabels(resource: Json, ops: Set<Operation>): void {
  if (ops.size === 0) return;
  let meta = resource.meta as Json | undefined | null;
  if (typeof meta !== 'object' || meta === null || Array.isArray(meta)) {
    meta = {};
    resource.meta = meta;
  }
  const security = Array.isArray(meta.security) ? (meta.security as unknown[]) : [];
  meta.security = security;
  const has = (code: string): boolean =>
    security.some((s) => typeof s === 'object' && s !== null && String((s as Coding).code ?? '').toLowerCase() === code.toLowerCase());
  for (const op of LABEL_ORDER) {
    if (!ops.has(op)) continue;
    const label = SECURITY_LABELS[op];
    if (!has(label.code!)) security.push({ ...label });
  }
}

function computePatientKeys(tree: Tree, out: Map<DNode, string>): void {
  for (const idx of tree.resources) {
    const node = idx.node;
    if (node.name === 'contained' && node.parent) {
      // Contained resources share their container's patient (resources are in pre-order).
      let container: DNode | undefined = node.parent;
      while (container && !container.isResource) container = container.parent;
      const key = container ? out.get(container) : undefined;
      if (key !== undefined) {
        out.set(node, key);
        continue;
      }
    }
    // Resources that name no patient (Organization, Provenance, …) fall back to their own id.
    const r = node.value as Json;
    out.set(node, patientIdOf(r) ?? (typeof r.id === 'string' ? `${String(r.resourceType)}/${r.id}` : ''));
  }
}

// ---------------------------------------------------------------------------------------------
// Safety net

const FLAG_TYPES = new Set(['Narrative', 'xhtml', 'Annotation', 'Extension', 'Identifier', 'HumanName', 'Address', 'ContactPoint', 'base64Binary']);
const FREE_TEXT_NAMES = new Set(['note', 'comment', 'description']);

function isFlagged(n: DNode): boolean {
  if (FLAG_TYPES.has(n.type)) return true;
  if (FREE_TEXT_NAMES.has(n.name)) return true;
  if (n.name === 'text' && (n.type === 'string' || n.type === 'markdown')) return true;
  const pt = n.parent?.type;
  if (n.name === 'display' && pt === 'Reference') return true;
  if (pt === 'Attachment' && (n.name === 'data' || n.name === 'url' || n.name === 'title')) return true;
  return false;
}

function pathOf(node: DNode): string {
  const parts: string[] = [];
  for (let n: DNode | undefined = node; n && !n.isResource; n = n.parent) {
    parts.push(typeof n.key === 'number' ? `${n.jsonKey}[${n.key}]` : n.jsonKey);
  }
  let res: DNode | undefined = node.parent;
  while (res && !res.isResource) res = res.parent;
  return `${res?.type ?? ''}.${parts.reverse().join('.')}`;
}

/**
 * After anonymization: any free text (narrative, `text`, `note`, `comment`, `description`,
 * attachment data/url/title, Reference.display), extension or identifier value still present that
 * no rule explicitly decided on (kept or transformed) is a violation of the resource.
 */
function safetyNet(tree: Tree, visited: Set<DNode>): Violation[] {
  const byResource = new Map<DNode, string[]>();
  for (const idx of tree.resources) {
    let reported = idx.node;
    while (reported.name === 'contained' && reported.parent) {
      let p: DNode | undefined = reported.parent;
      while (p && !p.isResource) p = p.parent;
      if (!p) break;
      reported = p;
    }
    for (const node of idx.nodes) {
      if (!node.primitive) continue;
      const v = node.value;
      if (v === null || v === undefined || v === '') continue;
      let flagged = false;
      let allowed = false;
      for (let n: DNode | undefined = node; n && !n.isResource; n = n.parent) {
        if (visited.has(n)) {
          allowed = true;
          break;
        }
        if (!flagged && isFlagged(n)) flagged = true;
      }
      if (flagged && !allowed) {
        const list = byResource.get(reported) ?? [];
        list.push(pathOf(node));
        byResource.set(reported, list);
      }
    }
  }
  return [...byResource].map(([node, paths]) => ({ resource: node.value as Json, paths }));
}

// ---------------------------------------------------------------------------------------------
// Cleanup: remove nulls and elements left empty (the tool's RemoveNullChildren).

function isEmptyObject(v: unknown): boolean {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  for (const _ in v) return false;
  return true;
}

/** Removes null values and empty objects/arrays, keeping `x` / `_x` arrays aligned. */
export function cleanup(obj: Json): void {
  for (const key of Object.keys(obj)) {
    const v = obj[key];
    if (v === null || v === undefined) {
      delete obj[key];
      continue;
    }
    if (Array.isArray(v)) {
      if (key.charCodeAt(0) === 95 && Array.isArray(obj[key.slice(1)])) continue; // handled with its pair
      const ext = obj[`_${key}`];
      if (Array.isArray(ext)) {
        compactPair(obj, key, v, ext as unknown[]);
        continue;
      }
      const kept: unknown[] = [];
      for (const item of v) {
        if (item === null || item === undefined) continue;
        if (typeof item === 'object' && !Array.isArray(item)) {
          cleanup(item as Json);
          if (isEmptyObject(item)) continue;
        }
        kept.push(item);
      }
      if (kept.length === 0) delete obj[key];
      else obj[key] = kept;
      continue;
    }
    if (typeof v === 'object') {
      cleanup(v as Json);
      if (isEmptyObject(v)) delete obj[key];
    }
  }
}

function compactPair(obj: Json, key: string, values: unknown[], exts: unknown[]): void {
  const outV: unknown[] = [];
  const outE: unknown[] = [];
  const n = Math.max(values.length, exts.length);
  for (let i = 0; i < n; i++) {
    const v = values[i] ?? null;
    let e = exts[i] ?? null;
    if (e !== null && typeof e === 'object') {
      cleanup(e as Json);
      if (isEmptyObject(e)) e = null;
    }
    if (v === null && e === null) continue;
    outV.push(v);
    outE.push(e);
  }
  const anyExt = outE.some((x) => x !== null);
  if (anyExt || outV.some((x) => x !== null)) obj[key] = outV;
  else delete obj[key];
  if (anyExt) obj[`_${key}`] = outE;
  else delete obj[`_${key}`];
}

export { DNode };
