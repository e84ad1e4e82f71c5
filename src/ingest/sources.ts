/**
 * The source registry: validated source definitions in PostgreSQL, a short-lived cache for the hot
 * hook path, and loading from a JSON config file at start-up (`SOURCES_FILE`).
 */
import { readFile } from 'node:fs/promises';
import type { Clock } from '../platform/clock.js';
import { httpError } from '../platform/errors.js';
import type { Store } from '../store/index.js';
import { sourceSchema, type Source } from './source.js';

/** How long a source definition is cached by the hook path (admin changes invalidate at once locally). */
export const SOURCE_CACHE_TTL_MS = 5_000;

export function parseSource(input: unknown): Source {
  const r = sourceSchema.safeParse(input);
  if (!r.success) {
    const problems = r.error.issues.map((i) => `${i.path.join('.') || 'source'}: ${i.message}`);
    throw httpError(400, 'invalid', `Invalid source definition: ${problems.join('; ')}`);
  }
  return r.data;
}

export class SourceRegistry {
  private readonly cache = new Map<string, { source: Source | undefined; at: number }>();

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
  ) {}

  async get(id: string): Promise<Source | undefined> {
    const hit = this.cache.get(id);
    const now = this.clock.now().getTime();
    if (hit && now - hit.at < SOURCE_CACHE_TTL_MS) return hit.source;
    const record = await this.store.sources.get(id);
    const source = record ? sourceSchema.parse(record.definition) : undefined;
    this.cache.set(id, { source, at: now });
    return source;
  }

  async list(): Promise<Source[]> {
    return (await this.store.sources.list()).map((r) => sourceSchema.parse(r.definition));
  }

  async put(source: Source): Promise<{ created: boolean }> {
    const r = await this.store.sources.upsert(source.id, source);
    this.cache.delete(source.id);
    return r;
  }

  async delete(id: string): Promise<boolean> {
    this.cache.delete(id);
    return this.store.sources.delete(id);
  }

  /** Loads `[{...source}, ...]` (or `{ "sources": [...] }`) from a JSON file; every problem is listed. */
  async loadFile(path: string): Promise<number> {
    const raw = JSON.parse((await readFile(path, 'utf8')).replace(/^\uFEFF/, '')) as unknown;
    const list = Array.isArray(raw) ? raw : (raw as { sources?: unknown }).sources;
    if (!Array.isArray(list)) throw new Error(`${path}: expected an array of sources or {"sources": [...]}`);
    const problems: string[] = [];
    const sources: Source[] = [];
    list.forEach((item, i) => {
      const r = sourceSchema.safeParse(item);
      if (r.success) sources.push(r.data);
      else problems.push(...r.error.issues.map((iss) => `${path}: sources[${i}].${iss.path.join('.')}: ${iss.message}`));
    });
    if (problems.length > 0) throw new Error(`invalid sources file:\n  - ${problems.join('\n  - ')}`);
    for (const s of sources) await this.put(s);
    return sources.length;
  }
}
