/**
 * DS4P sensitivity labelling: which `meta.security` labels a resource should carry, from code lists
 * (HIV, PSY, SUD, ETH, ...). Runs at ingest (not on reads), so that consent provisions with a
 * `securityLabel` can be enforced by the engine and by search filters on `_security`.
 *
 * A resource gets a sensitivity label when any Coding anywhere in it (code, reasonCode, valueCodeableConcept,
 * contained resources...) is in a code list, and then also the confidentiality code R (restricted).
 * A higher confidentiality already present (V) is kept.
 *
 * @see https://hl7.org/fhir/uv/security-label-ds4p/
 * @see http://terminology.hl7.org/CodeSystem/v3-ActCode (sensitivity codes), http://terminology.hl7.org/CodeSystem/v3-Confidentiality
 */
import type { Coding, Resource } from '@medplum/fhirtypes';
import { z } from 'zod';
import { CONFIDENTIALITY_SYSTEM } from './engine.js';
import { allCodings, codingKey } from './fhir-values.js';

const CodeEntry = z.object({
  system: z.string().min(1),
  code: z.string().min(1),
  display: z.string().optional(),
  /** `prefix`: the code and every code starting with it (ICD-10 categories such as F33). */
  match: z.enum(['exact', 'prefix']).optional(),
});

const CodeList = z.object({
  id: z.string().min(1),
  title: z.string().optional(),
  /** Where the codes come from (value set URL / OID, file); kept with the data on purpose. */
  source: z.string().min(1),
  /** The label to assign, normally a v3-ActCode sensitivity code (HIV, PSY, SUD, ETH...). */
  label: z.object({ system: z.string().min(1), code: z.string().min(1), display: z.string().optional() }),
  codes: z.array(CodeEntry).min(1),
});

/** The JSON code-list format (see test/fixtures/consent/sensitivity-code-lists.json). */
export const CodeListFileSchema = z.object({
  description: z.string().optional(),
  lists: z.array(CodeList).min(1),
});

/** A parsed code-list file. */
export type CodeListFile = z.infer<typeof CodeListFileSchema>;

/** Code lists indexed for labelling. Build once with {@link compileCodeLists}. */
export interface SensitivityCodeIndex {
  /** `system|code` → labels. */
  readonly exact: ReadonlyMap<string, readonly Coding[]>;
  /** system → [prefix, labels]. */
  readonly prefixes: ReadonlyMap<string, readonly (readonly [string, readonly Coding[]])[]>;
}

/** Thrown by {@link compileCodeLists} with every problem of the file, one per line. */
export class CodeListError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(`invalid sensitivity code lists:\n${problems.join('\n')}`);
    this.name = 'CodeListError';
  }
}

/**
 * Validates a code-list file (already JSON-parsed) and indexes it.
 *
 * @throws {@link CodeListError} listing every problem (path: message)
 */
export function compileCodeLists(json: unknown): SensitivityCodeIndex {
  const parsed = CodeListFileSchema.safeParse(json);
  if (!parsed.success) {
    throw new CodeListError(parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`));
  }
  const exact = new Map<string, Coding[]>();
  const prefixes = new Map<string, [string, Coding[]][]>();
  for (const list of parsed.data.lists) {
    const label: Coding = { system: list.label.system, code: list.label.code, ...(list.label.display ? { display: list.label.display } : {}) };
    for (const entry of list.codes) {
      if (entry.match === 'prefix') {
        const forSystem = prefixes.get(entry.system) ?? [];
        const existing = forSystem.find(([p]) => p === entry.code);
        if (existing) existing[1].push(label);
        else forSystem.push([entry.code, [label]]);
        prefixes.set(entry.system, forSystem);
      } else {
        const key = codingKey(entry.system, entry.code);
        exact.set(key, [...(exact.get(key) ?? []), label]);
      }
    }
  }
  return { exact, prefixes };
}

/** Confidentiality "restricted", added with any sensitivity label. */
export const RESTRICTED: Readonly<Coding> = Object.freeze({ system: CONFIDENTIALITY_SYSTEM, code: 'R', display: 'restricted' });

/**
 * The DS4P labels a resource should carry according to the code lists: the sensitivity codings of
 * every list one of its codings is in (sorted, no duplicates), plus confidentiality R when there is
 * at least one. Empty when nothing is sensitive.
 */
export function sensitivityLabels(resource: Resource, index: SensitivityCodeIndex): Coding[] {
  const found = new Map<string, Coding>();
  for (const c of allCodings(resource)) {
    if (!c.code) continue;
    for (const label of index.exact.get(codingKey(c.system, c.code)) ?? []) found.set(codingKey(label.system, label.code!), label);
    if (c.system !== undefined) {
      for (const [prefix, labels] of index.prefixes.get(c.system) ?? []) {
        if (c.code.startsWith(prefix)) for (const label of labels) found.set(codingKey(label.system, label.code!), label);
      }
    }
  }
  if (found.size === 0) return [];
  const labels = [...found.values()].sort((a, b) => (a.code! < b.code! ? -1 : a.code! > b.code! ? 1 : 0));
  return [...labels.map((l) => ({ ...l })), { ...RESTRICTED }];
}

const CONFIDENTIALITY_ORDER = ['U', 'L', 'M', 'N', 'R', 'V'];

/**
 * A copy of the resource with {@link sensitivityLabels} merged into `meta.security`: existing
 * labels are kept, new sensitivity labels added, and the one confidentiality code raised to R unless
 * it is already R or V. The input is not modified.
 */
export function applySensitivityLabels<T extends Resource>(resource: T, index: SensitivityCodeIndex): T {
  const labels = sensitivityLabels(resource, index);
  if (labels.length === 0) return resource;
  const existing = resource.meta?.security ?? [];
  const isConf = (c: Coding): boolean => c.system === CONFIDENTIALITY_SYSTEM;
  const currentConf = existing.filter(isConf).reduce((max, c) => Math.max(max, CONFIDENTIALITY_ORDER.indexOf(c.code ?? '')), -1);
  const keys = new Set(existing.map((c) => codingKey(c.system, c.code ?? '')));
  const security: Coding[] = existing.filter((c) => !isConf(c) || CONFIDENTIALITY_ORDER.indexOf(c.code ?? '') === currentConf);
  for (const l of labels) {
    if (isConf(l)) continue;
    if (!keys.has(codingKey(l.system, l.code!))) security.push(l);
  }
  if (currentConf < CONFIDENTIALITY_ORDER.indexOf('R')) {
    const withoutConf = security.filter((c) => !isConf(c));
    withoutConf.push({ ...RESTRICTED });
    return { ...resource, meta: { ...resource.meta, security: withoutConf } };
  }
  return { ...resource, meta: { ...resource.meta, security } };
}
