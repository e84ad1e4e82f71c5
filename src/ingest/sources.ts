/**
 * The source registry: validated source definitions in PostgreSQL, a short-lived cache for the hot
 * hook path, and loading from a JSON config file at start-up (`SOURCES_FILE`).
 *
 * Secrets at rest: with a {@link Sealer} (config `SECRETS_KEY`; embedded mode always has one), the
 * stored definition holds each secret (hook bearer token and HMAC secret, callback bearer token and
 * private JWK) as an AES-256-GCM envelope bound to its source and field; everything else stays
 * readable for operators. Definitions stored before a key was configured are sealed at start-up
 * ({@link SourceRegistry.sealStored}).
 */
import { readFile } from 'node:fs/promises';
import type { Clock } from '../platform/clock.js';
import { httpError } from '../platform/errors.js';
import { isSealed, type Sealer } from '../platform/seal.js';
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

/** The secret fields of a stored source definition; `json` ones are objects sealed as JSON text. */
const SECRET_FIELDS: ReadonlyArray<{ readonly parent: 'hookAuth' | 'callbackAuth'; readonly field: string; readonly json?: boolean }> = [
  { parent: 'hookAuth', field: 'bearerToken' },
  { parent: 'hookAuth', field: 'hmacSecret' },
  { parent: 'callbackAuth', field: 'token' },
  { parent: 'callbackAuth', field: 'privateKeyJwk', json: true },
];

type Definition = Record<string, unknown>;
const asObject = (v: unknown): Record<string, unknown> | undefined => (typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined);

/** Applies `fn` to each secret field present in a stored definition (a copy is returned). */
function mapSecrets(definition: unknown, fn: (value: unknown, context: string, json: boolean) => unknown): unknown {
  const def = asObject(definition);
  if (!def) return definition;
  const out: Definition = { ...def };
  for (const { parent, field, json } of SECRET_FIELDS) {
    const holder = asObject(out[parent]);
    if (!holder || holder[field] === undefined) continue;
    out[parent] = { ...holder, [field]: fn(holder[field], `source:${String(def.id)}:${parent}.${field}`, json === true) };
  }
  return out;
}

/** Whether a stored definition holds any secret not sealed yet. */
function hasPlainSecrets(definition: unknown): boolean {
  let plain = false;
  mapSecrets(definition, (v) => {
    if (!isSealed(v)) plain = true;
    return v;
  });
  return plain;
}

export class SourceRegistry {
  private readonly cache = new Map<string, { source: Source | undefined; at: number }>();

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    /** Seals secrets at rest; without one they are stored as given (production without SECRETS_KEY). */
    private readonly sealer?: Sealer,
  ) {}

  /** The stored form of a source: its secrets sealed when there is a sealer. */
  private stored(source: Source): unknown {
    const sealer = this.sealer;
    if (!sealer) return source;
    return mapSecrets(source, (v, context, json) => (isSealed(v) ? v : sealer.seal(json ? JSON.stringify(v) : String(v), context)));
  }

  /** A stored definition with its secrets opened, validated. */
  private parse(id: string, definition: unknown): Source {
    const sealer = this.sealer;
    const opened = mapSecrets(definition, (v, context, json) => {
      if (!isSealed(v)) return v;
      if (!sealer) throw new Error(`source ${id}: its secrets are encrypted and SECRETS_KEY is not set`);
      const text = sealer.open(v, context);
      return json ? (JSON.parse(text) as unknown) : text;
    });
    return sourceSchema.parse(opened);
  }

  async get(id: string): Promise<Source | undefined> {
    const hit = this.cache.get(id);
    const now = this.clock.now().getTime();
    if (hit && now - hit.at < SOURCE_CACHE_TTL_MS) return hit.source;
    const record = await this.store.sources.get(id);
    const source = record ? this.parse(record.id, record.definition) : undefined;
    this.cache.set(id, { source, at: now });
    return source;
  }

  async list(): Promise<Source[]> {
    return (await this.store.sources.list()).map((r) => this.parse(r.id, r.definition));
  }

  async put(source: Source): Promise<{ created: boolean }> {
    const r = await this.store.sources.upsert(source.id, this.stored(source));
    this.cache.delete(source.id);
    return r;
  }

  /**
   * Start-up check of the stored definitions. With a sealer: seals the secrets of definitions stored
   * without one, and checks every sealed one opens (a wrong SECRETS_KEY fails here, not at the first
   * notification). Without one: fails if any secret is sealed. Returns how many were sealed now.
   */
  async sealStored(): Promise<number> {
    let sealedNow = 0;
    for (const record of await this.store.sources.list()) {
      const source = this.parse(record.id, record.definition);
      if (this.sealer && hasPlainSecrets(record.definition)) {
        await this.store.sources.upsert(record.id, this.stored(source));
        sealedNow += 1;
      }
    }
    this.cache.clear();
    return sealedNow;
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
