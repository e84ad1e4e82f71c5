/**
 * Reference target types, which @medplum/core 4.5 does not check against a profile's
 * `targetProfile` (a US Core lab Observation whose subject is `Practitioner/x` passed). The HL7
 * validator reports a literal reference to a resource type the element does not allow as an error;
 * so does this check, for elements of type Reference (single-typed, not sliced, not in extensions)
 * whose target profiles all resolve to resource types. References without a literal type (only an
 * identifier or display, `#contained`, `urn:uuid:`) are not checked here.
 */
import type { ElementDefinition, OperationOutcomeIssue, StructureDefinition } from '@medplum/fhirtypes';
import { valuesAt } from './json-path.js';

const BASE = 'http://hl7.org/fhir/StructureDefinition/';

interface TargetCheck {
  readonly path: readonly string[];
  readonly types: ReadonlySet<string>;
}

/** The resource type a literal reference names (`Type/id`, absolute, versioned or conditional), if any. */
export function referencedType(reference: string): string | undefined {
  const conditional = /^([A-Z][A-Za-z]{1,63})\?/.exec(reference);
  if (conditional) return conditional[1];
  const m = /(?:^|\/)([A-Z][A-Za-z]{1,63})\/[A-Za-z0-9\-.]{1,64}(?:\/_history\/[A-Za-z0-9\-.]{1,64})?$/.exec(reference);
  return m?.[1];
}

export interface ReferenceTargets {
  check(resource: { readonly resourceType: string }): OperationOutcomeIssue[];
}

/**
 * The reference checks of `sd`. `typeOf` maps a target profile URL to the resource type it
 * constrains (undefined when unknown: that element is then not checked).
 */
export function referenceTargets(sd: StructureDefinition, typeOf: (profileUrl: string) => string | undefined): ReferenceTargets {
  const root = sd.type ?? '';
  const checks: TargetCheck[] = [];
  for (const el of (sd.snapshot?.element ?? []) as ElementDefinition[]) {
    if (!el.path?.startsWith(`${root}.`) || el.sliceName || el.max === '0') continue;
    const rel = el.path.slice(root.length + 1).split('.');
    if (rel.some((s) => s.endsWith('[x]') || s === 'extension' || s === 'modifierExtension' || s === 'contained')) continue;
    if (el.type?.length !== 1 || el.type[0]!.code !== 'Reference') continue;
    const targets = el.type[0]!.targetProfile ?? [];
    if (targets.length === 0) continue;
    const types = new Set<string>();
    let unknown = false;
    for (const t of targets) {
      const url = t.split('|')[0]!;
      if (url === `${BASE}Resource` || url === `${BASE}DomainResource`) unknown = true;
      const type = url.startsWith(BASE) ? url.slice(BASE.length) : typeOf(url);
      if (type) types.add(type);
      else unknown = true;
    }
    if (!unknown && types.size > 0) checks.push({ path: rel, types });
  }
  return {
    check(resource) {
      const issues: OperationOutcomeIssue[] = [];
      for (const c of checks) {
        for (const { value, expression } of valuesAt(resource, c.path)) {
          const ref = (value as { reference?: unknown } | null)?.reference;
          if (typeof ref !== 'string') continue;
          const type = referencedType(ref);
          if (type === undefined || c.types.has(type)) continue;
          issues.push({
            severity: 'error',
            code: 'structure',
            details: { text: `The type '${type}' implied by the reference ${ref.slice(0, 200)} is not a valid target for this element (must be one of ${[...c.types].join(', ')})` },
            expression: [`${resource.resourceType}${expression}`],
          });
        }
      }
      return issues;
    },
  };
}
