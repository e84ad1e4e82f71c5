/**
 * Loading the declarative normalisation rules from `fhir-profiles/` (validated with zod) and compiling
 * them into lookup tables, so that normalising one resource is a handful of Map look-ups.
 */
import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import type { Coding } from '@medplum/fhirtypes';
import { r4Index } from './r4-index.js';

/** `<repo>/fhir-profiles/`, found from this module (works from src/ and from dist/). */
export const DEFAULT_PROFILES_DIR = fileURLToPath(new URL('../../fhir-profiles/', import.meta.url));

const SOURCE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

// --- file schemas ------------------------------------------------------------------------------

const CodeList = z.strictObject({ description: z.string().optional(), system: z.string().min(1), codes: z.array(z.string().min(1)).min(1) });
const CodingSchema = z.strictObject({ system: z.string().min(1), code: z.string().min(1), display: z.string().optional() });

const ProfileSelectionFile = z.strictObject({
  description: z.string().optional(),
  profileBase: z.string().url(),
  codeLists: z.record(z.string(), CodeList),
  categoryFill: z.array(z.strictObject({ resourceType: z.string().min(1), codeIn: z.string().min(1), category: CodingSchema })),
  rules: z.array(
    z.strictObject({
      resourceType: z.string().min(1),
      /** any coding of `code` in `codeSystem` (default LOINC) has one of these codes */
      code: z.array(z.string().min(1)).min(1).optional(),
      codeSystem: z.string().min(1).optional(),
      /** any coding of any `category` has one of these codes */
      category: z.array(z.string().min(1)).min(1).optional(),
      profile: z.string().min(1),
    }),
  ),
  retiredProfiles: z.strictObject({ description: z.string().optional(), urls: z.record(z.string(), z.string()) }).optional(),
});

const UcumFile = z.strictObject({
  description: z.string().optional(),
  system: z.literal('http://unitsofmeasure.org'),
  quantityKeys: z.array(z.string().min(1)).min(1),
  units: z.array(z.strictObject({ code: z.string().min(1), aliases: z.array(z.string().min(1)) })).min(1),
});

const ConceptMapFile = z.object({
  resourceType: z.literal('ConceptMap'),
  url: z.string().optional(),
  group: z
    .array(
      z.object({
        source: z.string().min(1),
        target: z.string().min(1).optional(),
        element: z.array(
          z.object({
            code: z.string().min(1),
            target: z
              .array(z.object({ code: z.string().min(1).optional(), display: z.string().optional(), equivalence: z.string().min(1) }))
              .optional(),
          }),
        ),
      }),
    )
    .min(1),
});

const SourceFile = z.strictObject({
  description: z.string().optional(),
  identifierSystem: z.string().min(1).optional(),
  localCodeSystems: z.array(z.string().min(1)).default([]),
  extraConceptMaps: z.array(z.string().min(1)).default([]),
});

// --- compiled rules ------------------------------------------------------------------------------

/** One profile-selection rule, compiled. */
export interface CompiledProfileRule {
  readonly codeSystem: string;
  readonly codes?: ReadonlySet<string>;
  readonly categories?: ReadonlySet<string>;
  readonly profile: string;
}

/** A category to add when an Observation's code is in a code list. */
export interface CompiledCategoryFill {
  readonly system: string;
  readonly codes: ReadonlySet<string>;
  readonly category: Coding;
}

/**
 * The normalisation rules for one source, compiled from `fhir-profiles/`. Build with
 * {@link loadNormalizationRules}; treat as opaque and immutable.
 */
export interface NormalizationRules {
  readonly sourceId: string | undefined;
  /** Default system for identifiers that carry none (from sources/<id>.json). */
  readonly identifierSystem: string | undefined;
  /** Code systems this source uses locally; an unmapped coding in one of them gets a note. */
  readonly localCodeSystems: ReadonlySet<string>;
  /** source system → source code → target codings (all ConceptMaps that apply to this source, merged). */
  readonly conceptMaps: ReadonlyMap<string, ReadonlyMap<string, readonly Coding[]>>;
  /** exact unit string → UCUM code; lower-cased alias → UCUM code. */
  readonly ucumExact: ReadonlyMap<string, string>;
  readonly ucumFolded: ReadonlyMap<string, string>;
  readonly quantityKeys: ReadonlySet<string>;
  readonly profilesByType: ReadonlyMap<string, readonly CompiledProfileRule[]>;
  readonly categoryFill: ReadonlyMap<string, readonly CompiledCategoryFill[]>;
  /** Every US Core 6.1.0 profile URL the rules may select, and the canonical prefix of US Core. */
  readonly usCoreBase: string;
  readonly retiredProfiles: ReadonlyMap<string, string>;
  /** Every R4 resource type (for recognising relative references). */
  readonly resourceTypes: ReadonlySet<string>;
  /** Resource types whose `identifier` is 0..* (others have 0..1 or none). */
  readonly identifierArrayTypes: ReadonlySet<string>;
  /** Names of the files the rules came from, relative to the profiles directory. */
  readonly files: readonly string[];
}

/** Thrown when a rules file is missing, unreadable or does not match its schema; lists every problem. */
export class RulesError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(`invalid normalisation rules:\n  - ${problems.join('\n  - ')}`);
    this.name = 'RulesError';
  }
}

async function readJsonFile(file: string, problems: string[], label: string): Promise<unknown> {
  try {
    return JSON.parse((await readFile(file, 'utf8')).replace(/^\uFEFF/, '')) as unknown;
  } catch (err) {
    problems.push(`${label}: ${err instanceof Error ? err.message : String(err)}`);
    return undefined;
  }
}

function parseWith<T>(schema: z.ZodType<T>, value: unknown, label: string, problems: string[]): T | undefined {
  if (value === undefined) return undefined;
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  for (const i of r.error.issues) problems.push(`${label}: ${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`);
  return undefined;
}

function addConceptMap(into: Map<string, Map<string, Coding[]>>, cm: z.infer<typeof ConceptMapFile>): void {
  for (const group of cm.group) {
    if (!group.target) continue;
    let bySource = into.get(group.source);
    if (!bySource) into.set(group.source, (bySource = new Map()));
    for (const el of group.element) {
      for (const t of el.target ?? []) {
        // Only mappings that say the concepts mean the same (or the target is wider/narrower but still right to add).
        if (!t.code || !['equivalent', 'equal', 'wider', 'subsumes', 'relatedto', 'inexact', 'narrower', 'specializes'].includes(t.equivalence)) continue;
        const list = bySource.get(el.code) ?? [];
        if (!list.some((c) => c.system === group.target && c.code === t.code)) {
          list.push({ system: group.target, code: t.code, ...(t.display ? { display: t.display } : {}) });
        }
        bySource.set(el.code, list);
      }
    }
  }
}

/**
 * Loads and compiles the rules in `dir` for one source: `profile-selection.json`, `ucum-units.json`,
 * every `conceptmaps/*.json`, and `sources/<sourceId>.json` (or `sources/default.json` when that file
 * does not exist), plus the extra ConceptMaps that source file names.
 *
 * @param dir - the profiles directory (default `<repo>/fhir-profiles/`)
 * @param sourceId - the source whose per-source rules apply
 * @returns the compiled rules
 * @throws RulesError listing every problem found (all files are checked before throwing)
 */
export async function loadNormalizationRules(dir: string = DEFAULT_PROFILES_DIR, sourceId?: string): Promise<NormalizationRules> {
  const problems: string[] = [];
  const files: string[] = [];
  if (sourceId !== undefined && (!SOURCE_ID.test(sourceId) || sourceId.includes('..'))) {
    throw new RulesError([`sourceId "${sourceId}" must match ${SOURCE_ID.source} (it names a file)`]);
  }
  const at = (rel: string): string => path.join(dir, rel);

  files.push('profile-selection.json', 'ucum-units.json');
  const selection = parseWith(ProfileSelectionFile, await readJsonFile(at('profile-selection.json'), problems, 'profile-selection.json'), 'profile-selection.json', problems);
  const ucum = parseWith(UcumFile, await readJsonFile(at('ucum-units.json'), problems, 'ucum-units.json'), 'ucum-units.json', problems);

  let sourceRel = 'sources/default.json';
  if (sourceId !== undefined) {
    const own = `sources/${sourceId}.json`;
    const exists = await readFile(at(own)).then(
      () => true,
      () => false,
    );
    if (exists) sourceRel = own;
  }
  files.push(sourceRel);
  const source = parseWith(SourceFile, await readJsonFile(at(sourceRel), problems, sourceRel), sourceRel, problems);

  const conceptMaps = new Map<string, Map<string, Coding[]>>();
  let cmFiles: string[] = [];
  try {
    cmFiles = (await readdir(at('conceptmaps'))).filter((f) => f.endsWith('.json')).sort().map((f) => `conceptmaps/${f}`);
  } catch {
    // no global ConceptMaps is fine
  }
  for (const rel of [...cmFiles, ...(source?.extraConceptMaps ?? [])]) {
    if (path.isAbsolute(rel) || rel.split(/[\\/]/).includes('..')) {
      problems.push(`${sourceRel}: extraConceptMaps entry "${rel}" must be a relative path inside the profiles directory`);
      continue;
    }
    files.push(rel);
    const cm = parseWith(ConceptMapFile, await readJsonFile(at(rel), problems, rel), rel, problems);
    if (cm) addConceptMap(conceptMaps, cm);
  }

  // Cross-file checks: code lists referenced by categoryFill exist; selected profiles are shipped.
  if (selection) {
    for (const [i, f] of selection.categoryFill.entries()) {
      if (!selection.codeLists[f.codeIn]) problems.push(`profile-selection.json: categoryFill.${i}.codeIn: unknown code list "${f.codeIn}"`);
    }
    const shipped = new Set(
      await readdir(at('us-core-6.1.0')).then(
        (fs) => fs,
        () => [] as string[],
      ),
    );
    for (const [i, r] of selection.rules.entries()) {
      if (!shipped.has(`StructureDefinition-${r.profile}.json`)) problems.push(`profile-selection.json: rules.${i}.profile: no us-core-6.1.0/StructureDefinition-${r.profile}.json`);
    }
  }
  if (problems.length > 0 || !selection || !ucum || !source) throw new RulesError(problems);

  const ucumExact = new Map<string, string>();
  const ucumFolded = new Map<string, string>();
  for (const u of ucum.units) {
    ucumExact.set(u.code, u.code);
    for (const a of u.aliases) ucumFolded.set(a.toLowerCase(), u.code);
  }

  const profilesByType = new Map<string, CompiledProfileRule[]>();
  for (const r of selection.rules) {
    const list = profilesByType.get(r.resourceType) ?? [];
    list.push({
      profile: selection.profileBase + r.profile,
      codeSystem: r.codeSystem ?? 'http://loinc.org',
      ...(r.code ? { codes: new Set(r.code) } : {}),
      ...(r.category ? { categories: new Set(r.category) } : {}),
    });
    profilesByType.set(r.resourceType, list);
  }
  const categoryFill = new Map<string, CompiledCategoryFill[]>();
  for (const f of selection.categoryFill) {
    const list = categoryFill.get(f.resourceType) ?? [];
    const codeList = selection.codeLists[f.codeIn]!;
    list.push({ system: codeList.system, codes: new Set(codeList.codes), category: f.category });
    categoryFill.set(f.resourceType, list);
  }
  const identifierArrayTypes = new Set<string>();
  for (const [type, elements] of r4Index()) if (elements.get('identifier')?.array) identifierArrayTypes.add(type);

  return {
    sourceId,
    identifierSystem: source.identifierSystem,
    localCodeSystems: new Set(source.localCodeSystems),
    conceptMaps,
    ucumExact,
    ucumFolded,
    quantityKeys: new Set(ucum.quantityKeys),
    profilesByType,
    categoryFill,
    usCoreBase: selection.profileBase,
    retiredProfiles: new Map(Object.entries(selection.retiredProfiles?.urls ?? {}).map(([k, v]) => [selection.profileBase + k, v])),
    resourceTypes: new Set(r4Index().keys()),
    identifierArrayTypes,
    files,
  };
}
