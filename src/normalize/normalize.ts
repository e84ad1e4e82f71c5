/**
 * Normalising one FHIR R4 resource from a source EHR to fhir-anchor's form and US Core 6.1.0: anchored
 * ids, source provenance in meta, namespaced identifiers, references that resolve in our store, mapped
 * codes, UCUM units, derivable required elements and the target profile. Pure: one pass over a copy of
 * the tree, driven by the compiled {@link NormalizationRules}; never mutates its input and never throws
 * on a JSON object with a valid resourceType (it may produce a resource that then fails validation).
 */
import type { Coding, Resource } from '@medplum/fhirtypes';
import { anchorId } from './anchor-id.js';
import type { NormalizationRules } from './rules.js';

/** What the normaliser needs to know about where a resource came from. */
export interface NormalizeContext {
  /** The source's configured id, e.g. `ehr-a`; part of every anchored id. */
  readonly sourceId: string;
  /** The source's FHIR base, e.g. `https://ehr-a.example/fhir` (a trailing slash is ignored). */
  readonly sourceBaseUrl: string;
  /** System given to local identifiers (MRNs) that carry none; overrides the source rules file. */
  readonly identifierSystem?: string;
  /**
   * Original reference string (as found in the resource, e.g.
   * `Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|999` or `urn:uuid:...`) → final
   * `Type/anchorId`, resolved by the caller (bundle fullUrls, conditional references).
   */
  readonly resolvedReferences?: ReadonlyMap<string, string>;
  /** Rules loaded once with `loadNormalizationRules`. */
  readonly rules: NormalizationRules;
}

/** The normalised resource and what happened to it. */
export interface NormalizeResult {
  readonly resource: Resource;
  /** The US Core 6.1.0 profile now in meta.profile, if the type has one. */
  readonly targetProfile: string | undefined;
  /** Human-readable notes (unresolved references, unmapped local codes, units not recognised, …). */
  readonly notes: string[];
  /** The source's meta.lastUpdated, for the caller to use as the ordering key (never kept in meta). */
  readonly sourceLastUpdated?: string;
}

const UCUM = 'http://unitsofmeasure.org';
const ABSOLUTE = /^[a-z][a-z0-9+.-]*:/i;
const RELATIVE = /^([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/([A-Za-z0-9\-.]{1,64}))?$/;
/** Beyond this depth a subtree is copied by reference and not normalised (no stack overflow on hostile input). */
const MAX_DEPTH = 64;
const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

/**
 * The identifier system under which a resource's original source id is kept:
 * `urn:fhir-anchor:source:<sourceId>:<Type>`.
 */
export function sourceIdentifierSystem(sourceId: string, resourceType: string): string {
  return `urn:fhir-anchor:source:${sourceId}:${resourceType}`;
}

type Json = unknown;
type JsonObject = Record<string, Json>;

function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

class Walker {
  private readonly base: string;
  private readonly identifierSystem: string | undefined;
  private readonly mapCodes: boolean;

  constructor(
    private readonly ctx: NormalizeContext,
    private readonly notes: Set<string>,
  ) {
    this.base = ctx.sourceBaseUrl.replace(/\/+$/, '');
    this.identifierSystem = ctx.identifierSystem ?? ctx.rules.identifierSystem;
    this.mapCodes = ctx.rules.conceptMaps.size > 0 || ctx.rules.localCodeSystems.size > 0;
  }

  /** Deep copy of `v` with every normalisation applied; `key` is the property `v` sits under. */
  value(v: Json, key: string, depth: number): Json {
    if (typeof v !== 'object' || v === null) return v;
    if (depth > MAX_DEPTH) {
      this.notes.add(`nesting deeper than ${MAX_DEPTH} levels left unnormalised`);
      return v;
    }
    if (Array.isArray(v)) {
      const out: Json[] = new Array<Json>(v.length);
      for (let i = 0; i < v.length; i++) out[i] = this.value(v[i], key, depth + 1);
      if (key === 'coding' && this.mapCodes) this.mapCodings(out);
      return out;
    }
    const src = v as JsonObject;
    const out: JsonObject = {};
    for (const k of Object.keys(src)) {
      if (FORBIDDEN_KEYS.has(k)) {
        this.notes.add(`dropped forbidden property "${k}"`);
        continue;
      }
      out[k] = this.value(src[k], k, depth + 1);
    }
    if (typeof out.reference === 'string') this.rewriteReference(out);
    if (key === 'identifier') this.namespaceIdentifier(out);
    if (this.ctx.rules.quantityKeys.has(key)) this.normalizeQuantity(out);
    return out;
  }

  private namespaceIdentifier(id: JsonObject): void {
    // An empty system (`"system": ""`, seen in real transaction bundles) names no system either.
    if ((id.system === undefined || id.system === '') && this.identifierSystem !== undefined && typeof id.value === 'string') {
      id.system = this.identifierSystem;
    }
  }

  private rewriteReference(ref: JsonObject): void {
    const original = ref.reference as string;
    if (original.startsWith('#')) return;
    const resolved = this.ctx.resolvedReferences?.get(original);
    if (resolved !== undefined) {
      ref.reference = resolved;
      return;
    }
    let relative = original;
    if (this.base && original.startsWith(this.base + '/')) relative = original.slice(this.base.length + 1);
    else if (ABSOLUTE.test(original)) {
      if (/^urn:/i.test(original)) this.notes.add(`unresolved reference ${original}`);
      return; // another server's resource: kept as it is
    }
    const m = RELATIVE.exec(relative);
    if (m && this.ctx.rules.resourceTypes.has(m[1]!)) {
      ref.reference = `${m[1]}/${anchorId(this.ctx.sourceId, m[1]!, m[2]!)}`;
      if (m[3] !== undefined) this.notes.add(`version-specific reference ${original} now points at the current version`);
      return;
    }
    this.notes.add(relative.includes('?') ? `unresolved conditional reference ${original}` : `unrecognised reference ${original}`);
  }

  private mapCodings(codings: Json[]): void {
    const { conceptMaps, localCodeSystems } = this.ctx.rules;
    const n = codings.length;
    for (let i = 0; i < n; i++) {
      const c = codings[i];
      if (!isObject(c) || typeof c.system !== 'string' || typeof c.code !== 'string') continue;
      const targets = conceptMaps.get(c.system)?.get(c.code);
      if (targets) {
        for (const t of targets) {
          if (!codings.some((x) => isObject(x) && x.system === t.system && x.code === t.code)) codings.push({ ...t });
        }
      } else if (localCodeSystems.has(c.system)) {
        this.notes.add(`no mapping for local code ${c.system}|${c.code}`);
      }
    }
  }

  private normalizeQuantity(q: JsonObject): void {
    if (q.system !== undefined && q.system !== UCUM) return;
    const { ucumExact, ucumFolded } = this.ctx.rules;
    const lookup = (s: unknown): string | undefined =>
      typeof s === 'string' ? (ucumExact.get(s) ?? ucumFolded.get(s.trim().toLowerCase())) : undefined;
    const code = lookup(q.code) ?? lookup(q.unit);
    if (code === undefined) {
      if (q.system === undefined && (typeof q.unit === 'string' || typeof q.code === 'string')) {
        this.notes.add(`unit "${String(q.code ?? q.unit)}" is not in ucum-units.json`);
      }
      return;
    }
    if (q.code !== code && q.code !== undefined) this.notes.add(`unit code "${String(q.code)}" normalised to UCUM "${code}"`);
    q.system = UCUM;
    q.code = code;
    if (q.unit === undefined) q.unit = code;
  }
}

function codings(concept: unknown): JsonObject[] {
  if (!isObject(concept) || !Array.isArray(concept.coding)) return [];
  return concept.coding.filter(isObject);
}

function hasCodeIn(concept: unknown, system: string, codes: ReadonlySet<string>): boolean {
  return codings(concept).some((c) => c.system === system && typeof c.code === 'string' && codes.has(c.code));
}

function hasCategoryIn(categories: unknown, codes: ReadonlySet<string>): boolean {
  const list = Array.isArray(categories) ? categories : [categories];
  return list.some((cat) => codings(cat).some((c) => typeof c.code === 'string' && codes.has(c.code)));
}

/**
 * Normalises one resource from `ctx.sourceId`. The id becomes {@link anchorId}; the source id is kept
 * as an identifier ({@link sourceIdentifierSystem}) and in `meta.source`
 * (`<sourceBaseUrl>/<Type>/<id>[/_history/<vid>]`); the source's meta.versionId and meta.lastUpdated
 * are dropped (the store assigns ours) and lastUpdated is returned as `sourceLastUpdated`.
 *
 * @param resource - a FHIR R4 resource as the source sent it (not modified)
 * @param ctx - the source and the compiled rules
 * @returns the normalised copy, its target US Core profile, and notes
 */
export function normalizeResource(resource: Resource, ctx: NormalizeContext): NormalizeResult {
  const notes = new Set<string>();
  const rules = ctx.rules;
  const input = resource as unknown as JsonObject;
  const type = String(input.resourceType);
  const out = new Walker(ctx, notes).value(input, '', 0) as JsonObject;

  // --- id, source identifier, meta -----------------------------------------------------------
  const originalId = typeof input.id === 'string' && input.id.length > 0 ? input.id : undefined;
  const sourceMeta = isObject(input.meta) ? input.meta : undefined;
  if (input.meta !== undefined && !sourceMeta) notes.add('meta was not an object and was replaced');
  const versionId = typeof sourceMeta?.versionId === 'string' ? sourceMeta.versionId : undefined;
  const sourceLastUpdated = typeof sourceMeta?.lastUpdated === 'string' ? sourceMeta.lastUpdated : undefined;
  if (originalId !== undefined) {
    out.id = anchorId(ctx.sourceId, type, originalId);
    if (rules.identifierArrayTypes.has(type)) {
      const system = sourceIdentifierSystem(ctx.sourceId, type);
      const ids = (Array.isArray(out.identifier) ? out.identifier : []).filter((i) => !(isObject(i) && i.system === system));
      ids.push({ use: 'secondary', system, value: originalId });
      out.identifier = ids;
    }
  } else {
    delete out.id;
    notes.add('resource has no source id: it cannot be anchored');
  }
  const meta: JsonObject = isObject(out.meta) ? out.meta : {};
  delete meta.versionId;
  delete meta.lastUpdated;
  delete meta.source;
  if (originalId !== undefined) {
    const base = ctx.sourceBaseUrl.replace(/\/+$/, '');
    meta.source = `${base}/${type}/${originalId}${versionId !== undefined ? `/_history/${versionId}` : ''}`;
  }

  // --- required elements derivable from the code -------------------------------------------------
  for (const fill of rules.categoryFill.get(type) ?? []) {
    if (!hasCodeIn(out.code, fill.system, fill.codes)) continue;
    const categories = Array.isArray(out.category) ? out.category : out.category === undefined ? [] : [out.category];
    const present = categories.some((cat) => codings(cat).some((c) => c.system === fill.category.system && c.code === fill.category.code));
    if (!present) {
      categories.push({ coding: [{ ...fill.category }] as Coding[] });
      out.category = categories;
      notes.add(`added category ${fill.category.code}`);
    }
  }

  // --- target profile ------------------------------------------------------------------------------
  let targetProfile: string | undefined;
  for (const rule of rules.profilesByType.get(type) ?? []) {
    if (rule.codes && !hasCodeIn(out.code, rule.codeSystem, rule.codes)) continue;
    if (rule.categories && !hasCategoryIn(out.category, rule.categories)) continue;
    targetProfile = rule.profile;
    break;
  }
  const claimed = Array.isArray(meta.profile) ? meta.profile.filter((p): p is string => typeof p === 'string') : [];
  const kept: string[] = [];
  for (const p of claimed) {
    if (!p.startsWith(rules.usCoreBase)) kept.push(p);
    else if (p.split('|')[0] !== targetProfile) {
      const retired = rules.retiredProfiles.get(p.split('|')[0]!);
      notes.add(retired ? `replaced retired profile ${p} (→ ${retired})` : `replaced profile claim ${p}`);
    }
  }
  const profiles = targetProfile ? [targetProfile, ...kept] : kept;
  if (profiles.length > 0) meta.profile = profiles;
  else delete meta.profile;
  if (Object.keys(meta).length > 0) out.meta = meta;
  else delete out.meta;

  return {
    resource: out as unknown as Resource,
    targetProfile,
    notes: [...notes],
    ...(sourceLastUpdated !== undefined ? { sourceLastUpdated } : {}),
  };
}
