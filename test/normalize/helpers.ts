/** Shared fixtures for the normalize tests: the two Synthea bundles and the US Core examples. */
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Bundle, Resource } from '@medplum/fhirtypes';
import { anchorId } from '../../src/normalize/index.js';

export const FIXTURES = fileURLToPath(new URL('../fixtures/normalize/', import.meta.url));
export const US_CORE_EXAMPLES = FIXTURES + 'us-core-6.1.0-examples/';
export const RUN1 = 'Jani266_Reynolds644_304f9946-5db8-dc6f-e060-48b9fea3ca5d.json';
export const LEGACY = 'Patria_Schimmel_d2f8f862-3856-490d-b56f-98e0ed984b1e.json';
export const SOURCE = 'synthea';
export const BASE = 'https://synthea.example/fhir';

export function readJson<T = unknown>(file: string): T {
  return JSON.parse(readFileSync(file, 'utf8').replace(/^\uFEFF/, '')) as T;
}

export function bundle(name: string): Bundle {
  return readJson<Bundle>(FIXTURES + name);
}

/**
 * What the ingest stage does before normalising a transaction bundle: map every fullUrl and every
 * conditional reference to its final `Type/anchorId`. Conditional references are resolved here by the
 * identifier value (the support bundles that hold their targets are not part of the fixtures).
 */
export function resolveBundle(b: Bundle, sourceId = SOURCE): Map<string, string> {
  const resolved = new Map<string, string>();
  for (const e of b.entry ?? []) {
    const r = e.resource!;
    if (e.fullUrl && r.id) resolved.set(e.fullUrl, `${r.resourceType}/${anchorId(sourceId, r.resourceType, r.id)}`);
  }
  const walk = (v: unknown): void => {
    if (Array.isArray(v)) v.forEach(walk);
    else if (v && typeof v === 'object') {
      const ref = (v as { reference?: unknown }).reference;
      if (typeof ref === 'string' && ref.includes('?identifier=')) {
        const [type, query] = ref.split('?identifier=') as [string, string];
        resolved.set(ref, `${type}/${anchorId(sourceId, type, query.split('|').pop()!)}`);
      }
      Object.values(v).forEach(walk);
    }
  };
  walk(b);
  return resolved;
}

export function resources(b: Bundle): Resource[] {
  return (b.entry ?? []).map((e) => e.resource!);
}

/** Every `reference` string anywhere in a value, with its JSON path. */
export function referencesIn(v: unknown, path = ''): { path: string; reference: string }[] {
  if (Array.isArray(v)) return v.flatMap((x, i) => referencesIn(x, `${path}[${i}]`));
  if (v && typeof v === 'object') {
    const out: { path: string; reference: string }[] = [];
    for (const [k, x] of Object.entries(v)) {
      if (k === 'reference' && typeof x === 'string') out.push({ path, reference: x });
      else out.push(...referencesIn(x, `${path}.${k}`));
    }
    return out;
  }
  return [];
}

export function usCoreExamples(): { file: string; resource: Resource }[] {
  return readdirSync(US_CORE_EXAMPLES)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((file) => ({ file, resource: readJson<Resource>(US_CORE_EXAMPLES + file) }));
}
