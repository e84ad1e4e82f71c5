/**
 * The anonymizer's rule paths, compiled once into matchers over a {@link ResourceIndex}.
 *
 * A rule path is split as the Microsoft tool splits it: a leading type name (`Patient.address`,
 * `Resource.id`) selects the resources the rule applies to and is stripped; `nodesByType('T')` and
 * `nodesByName('n')`, optionally followed by one child name, are answered from the resource's lookup
 * tables (descendants, not inside sub-resources). Everything else is a FHIRPath subset evaluated
 * over the typed tree: child names, unions `|`, parentheses, `nodesByType()` / `nodesByName()` at
 * any step, `where(…)` (its argument is full FHIRPath, evaluated by @medplum/core), `ofType(T)`,
 * `as T`, `first()`, `last()`. Unsupported syntax is a configuration error, found at compile time.
 */
import { evalFhirPathTyped, parseFhirPath, type TypedValue } from '@medplum/core';
import { pushAll } from '../../platform/arrays.js';
import type { DNode, ResourceIndex } from './tree.js';

type FhirPathAtom = ReturnType<typeof parseFhirPath>;

type Step =
  | { readonly k: 'name'; readonly name: string }
  | { readonly k: 'byType'; readonly type: string }
  | { readonly k: 'byName'; readonly name: string }
  | { readonly k: 'where'; readonly atom: FhirPathAtom }
  | { readonly k: 'ofType'; readonly type: string }
  | { readonly k: 'first' }
  | { readonly k: 'last' }
  | { readonly k: 'paren'; readonly expr: Expr };

type Expr = { readonly k: 'union'; readonly parts: readonly Expr[] } | { readonly k: 'chain'; readonly steps: readonly Step[] };

/** A compiled rule path. */
export interface CompiledPath {
  /** The rule's resource type ('' for rules on every resource; `Resource`/`DomainResource` likewise). */
  readonly resourceType: string;
  /** True when the whole path is a resource type (`Patient`): the rule matches the resource node. */
  readonly resourceTypeRule: boolean;
  /** Nodes the path selects in one resource. */
  match(idx: ResourceIndex): DNode[];
}

/** A path that could not be compiled. */
export class PathSyntaxError extends Error {}

const TYPE_RULE = /^nodesByType\(['|"]([A-Za-z0-9]+)['|"]\)(?:\.([A-Za-z0-9]+))?$/;
const NAME_RULE = /^nodesByName\(['|"]([A-Za-z0-9]+)['|"]\)(?:\.([A-Za-z0-9]+))?$/;
const PATH_SPLIT = /^([A-Z][a-zA-Z]*)?(\.)?(.*?)$/s;
const QUANTITY_SUBTYPES = new Set(['Age', 'Count', 'Distance', 'Duration', 'MoneyQuantity', 'SimpleQuantity']);

/**
 * Compiles one rule path.
 *
 * @throws PathSyntaxError when the path uses syntax outside the supported subset.
 */
export function compilePath(path: string): CompiledPath {
  const m = PATH_SPLIT.exec(path);
  const resourceType = m?.[1] ?? '';
  let expression = m?.[3] ?? '';
  if (!expression) expression = path;
  const resourceTypeRule = path === resourceType;

  const typeMatch = TYPE_RULE.exec(path);
  if (typeMatch) return lookupRule(resourceType, 'byType', typeMatch[1]!, typeMatch[2]);
  const nameMatch = NAME_RULE.exec(path);
  if (nameMatch) return lookupRule(resourceType, 'byName', nameMatch[1]!, nameMatch[2]);
  if (resourceTypeRule) return { resourceType, resourceTypeRule, match: (idx) => [idx.node] };

  const expr = new Parser(expression).parseAll();
  return { resourceType, resourceTypeRule, match: (idx) => dedupe(evalExpr(expr, [idx.node], idx, true)) };
}

function lookupRule(resourceType: string, kind: 'byType' | 'byName', key: string, child: string | undefined): CompiledPath {
  return {
    resourceType,
    resourceTypeRule: false,
    match(idx) {
      const hits = (kind === 'byType' ? idx.byType : idx.byName).get(key);
      if (!hits) return [];
      if (!child) return hits;
      const out: DNode[] = [];
      for (const h of hits) for (const c of h.children) if (c.name === child) out.push(c);
      return out;
    },
  };
}

function dedupe(nodes: DNode[]): DNode[] {
  if (nodes.length < 2) return nodes;
  return [...new Set(nodes)];
}

/** Does a node of `actual` type satisfy `ofType(expected)` / `as expected`? */
function typeMatches(actual: string, expected: string): boolean {
  if (actual === expected) return true;
  const e = expected.replace(/^(FHIR|System)\./, '');
  if (actual === e) return true;
  if (e === 'Quantity' && QUANTITY_SUBTYPES.has(actual)) return true;
  // System types: `as String` on a FHIR string.
  return actual.toLowerCase() === e.toLowerCase() && /^[a-z]/.test(actual);
}

function selfAndDescendants(node: DNode, pred: (n: DNode) => boolean, out: DNode[]): void {
  if (pred(node)) out.push(node);
  for (const c of node.children) if (!c.isResource) selfAndDescendants(c, pred, out);
}

function typedOf(node: DNode): TypedValue {
  return { type: node.type, value: node.value };
}

function evalExpr(expr: Expr, input: DNode[], idx: ResourceIndex, atRoot: boolean): DNode[] {
  if (expr.k === 'union') {
    const out: DNode[] = [];
    for (const p of expr.parts) pushAll(out, evalExpr(p, input, idx, atRoot));
    return out;
  }
  let cur = input;
  let first = atRoot;
  for (const step of expr.steps) {
    cur = evalStep(step, cur, idx, first);
    first = false;
    if (cur.length === 0) return cur;
  }
  return cur;
}

function evalStep(step: Step, cur: DNode[], idx: ResourceIndex, first: boolean): DNode[] {
  switch (step.k) {
    case 'name': {
      // A leading type name filters the context resource (`Condition.abatement` inside a union).
      if (first && /^[A-Z]/.test(step.name)) {
        return step.name === 'Resource' || step.name === 'DomainResource' || cur.every((n) => n.type === step.name) ? cur : [];
      }
      const out: DNode[] = [];
      for (const n of cur) for (const c of n.children) if (c.name === step.name || c.jsonKey === step.name) out.push(c);
      return out;
    }
    case 'byType':
    case 'byName': {
      const out: DNode[] = [];
      const pred = step.k === 'byType' ? (n: DNode) => n.type === step.type : (n: DNode) => n.name === step.name;
      for (const n of cur) {
        if (n === idx.node) {
          if (pred(n)) out.push(n);
          const hits = (step.k === 'byType' ? idx.byType.get(step.type) : idx.byName.get(step.name)) ?? [];
          for (const h of hits) if (!h.isResource) out.push(h);
        } else selfAndDescendants(n, pred, out);
      }
      return out;
    }
    case 'where':
      return cur.filter((n) => {
        const tv = typedOf(n);
        const r = evalFhirPathTyped(step.atom, [tv], { $this: tv });
        return r.length === 1 && r[0]?.value === true;
      });
    case 'ofType':
      return cur.filter((n) => typeMatches(n.type, step.type));
    case 'first':
      return cur.slice(0, 1);
    case 'last':
      return cur.slice(-1);
    case 'paren':
      return evalExpr(step.expr, cur, idx, first);
  }
}

/** Recursive-descent parser of the supported subset. */
class Parser {
  private i = 0;
  constructor(private readonly src: string) {}

  parseAll(): Expr {
    const e = this.union();
    this.ws();
    if (this.i < this.src.length) this.fail(`unexpected '${this.src.slice(this.i, this.i + 12)}'`);
    return e;
  }

  private fail(msg: string): never {
    throw new PathSyntaxError(`${msg} at position ${this.i} of '${this.src}'`);
  }

  private ws(): void {
    while (this.i < this.src.length && /\s/.test(this.src[this.i]!)) this.i++;
  }

  private peek(s: string): boolean {
    this.ws();
    return this.src.startsWith(s, this.i);
  }

  private eat(s: string): void {
    if (!this.peek(s)) this.fail(`expected '${s}'`);
    this.i += s.length;
  }

  private union(): Expr {
    const parts = [this.chain()];
    while (this.peek('|')) {
      this.i++;
      parts.push(this.chain());
    }
    return parts.length === 1 ? parts[0]! : { k: 'union', parts };
  }

  private chain(): Expr {
    const steps: Step[] = [this.step()];
    for (;;) {
      if (this.peek('.')) {
        this.i++;
        steps.push(this.step());
        continue;
      }
      this.ws();
      const asMatch = /^as\s+([A-Za-z.]+)/.exec(this.src.slice(this.i));
      if (asMatch) {
        this.i += asMatch[0].length;
        steps.push({ k: 'ofType', type: asMatch[1]! });
        continue;
      }
      return { k: 'chain', steps };
    }
  }

  private ident(): string {
    this.ws();
    const m = /^[A-Za-z_][A-Za-z0-9_]*/.exec(this.src.slice(this.i)) ?? /^`[^`]+`/.exec(this.src.slice(this.i));
    if (!m) this.fail('expected a name');
    this.i += m[0].length;
    return m[0].replace(/`/g, '');
  }

  private stringArg(): string {
    this.ws();
    const m = /^(['"])([^'"]*)\1/.exec(this.src.slice(this.i));
    if (!m) this.fail('expected a quoted string');
    this.i += m[0].length;
    return m[2]!;
  }

  /** The raw text up to the matching ')', respecting quotes and nesting. */
  private rawArg(): string {
    const start = this.i;
    let depth = 0;
    while (this.i < this.src.length) {
      const c = this.src[this.i]!;
      if (c === "'" || c === '"') {
        const end = this.src.indexOf(c, this.i + 1);
        if (end < 0) this.fail('unterminated string');
        this.i = end + 1;
        continue;
      }
      if (c === '(') depth++;
      if (c === ')') {
        if (depth === 0) return this.src.slice(start, this.i);
        depth--;
      }
      this.i++;
    }
    return this.fail("missing ')'");
  }

  private step(): Step {
    if (this.peek('(')) {
      this.i++;
      const expr = this.union();
      this.eat(')');
      return { k: 'paren', expr };
    }
    const name = this.ident();
    if (!this.peek('(')) return { k: 'name', name };
    this.i++;
    let step: Step;
    switch (name) {
      case 'nodesByType':
        step = { k: 'byType', type: this.stringArg() };
        break;
      case 'nodesByName':
        step = { k: 'byName', name: this.stringArg() };
        break;
      case 'ofType':
        step = { k: 'ofType', type: this.ident() };
        break;
      case 'where': {
        const raw = this.rawArg();
        try {
          step = { k: 'where', atom: parseFhirPath(raw) };
        } catch (err) {
          this.fail(`invalid FHIRPath in where(): ${err instanceof Error ? err.message : String(err)}`);
        }
        break;
      }
      case 'first':
        step = { k: 'first' };
        break;
      case 'last':
        step = { k: 'last' };
        break;
      default:
        this.fail(`function ${name}() is not supported in rule paths`);
    }
    this.eat(')');
    return step;
  }
}
