/**
 * Bulk ingestion paths that do not come through a hook: `fhir-anchor import FILE|DIR` (bundles or
 * NDJSON from disk — the demo path with ../shared/data) and `fhir-anchor backfill --source ID`
 * (pages through the source's FHIR search API, resumable). Both write into the same durable inbox
 * as the hooks and let the same `ingest` workers do the rest, so every rule (dedup, ordering,
 * normalisation, validation, dead letters) applies unchanged.
 */
import { isUtf8 } from 'node:buffer';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Resource } from '@medplum/fhirtypes';
import type { Logger } from '../platform/logger.js';
import type { QueueRegistry } from '../queue/index.js';
import type { InboxState, Store } from '../store/index.js';
import type { Source } from './source.js';
import { createSourceClient } from './source-client.js';
import type { SourceRegistry } from './sources.js';

/** Resources per inbox item when NDJSON or search pages are grouped into collection Bundles. */
export const BULK_CHUNK = 200;
/** Pages one backfill search follows per type: the bound only stops a source whose `next` links never end. */
const BACKFILL_MAX_PAGES = 100_000;
/** The source used by `import` when none is named. */
export const FILE_IMPORT_SOURCE = 'file-import';

export interface BulkDeps {
  readonly store: Store;
  readonly queues: QueueRegistry;
  readonly registry: SourceRegistry;
  readonly logger: Logger;
  /** Progress callback (the CLI draws a progress line). */
  readonly progress?: (p: { phase: string; done: number; total?: number; detail?: string }) => void;
}

export interface BulkSummary {
  items: number;
  /** Items whose exact bytes were received before (counted, not processed again). */
  alreadyReceived: number;
  done: number;
  dead: number;
  stored: number;
  duplicates: number;
  invalid: number;
  deadLetters: number;
}

/** Ensures the file-import source exists (its hook credentials are random and never used). */
export async function ensureImportSource(registry: SourceRegistry, sourceId: string): Promise<Source> {
  const existing = await registry.get(sourceId);
  if (existing) return existing;
  if (sourceId !== FILE_IMPORT_SOURCE) throw new Error(`source ${sourceId} is not registered`);
  const source = {
    id: FILE_IMPORT_SOURCE,
    name: 'Files imported with fhir-anchor import',
    baseUrl: 'https://file-import.fhir-anchor.invalid/fhir',
    hookAuth: { bearerToken: randomBytes(24).toString('base64url'), replayWindowSeconds: 300 },
    callbackAuth: { type: 'none' as const },
    rateLimitPerSecond: 20,
  };
  await registry.put(source);
  return (await registry.get(sourceId))!;
}

async function listFiles(target: string): Promise<string[]> {
  const s = await stat(target);
  if (s.isFile()) return [target];
  const out: string[] = [];
  for (const name of (await readdir(target)).sort()) {
    const full = path.join(target, name);
    const st = await stat(full);
    if (st.isDirectory()) out.push(...(await listFiles(full)));
    else if (/\.(json|ndjson)$/i.test(name) && name !== 'package.json') out.push(full);
  }
  return out;
}

/**
 * Writes `body` to the inbox as an item of `kind` (deduplicated by the SHA-256 of its bytes) and
 * enqueues its ingest job. Returns the inbox id; a duplicate is reported with a leading `=` so
 * settle() does not count it twice. A lost enqueue is harmless: the ingest reconciler re-runs
 * unfinished items.
 */
export async function submit(deps: Pick<BulkDeps, 'store' | 'queues'>, sourceId: string, body: Buffer, kind: string): Promise<string> {
  const { id, duplicate } = await deps.store.inbox.receive({
    sourceId,
    kind,
    contentType: 'application/fhir+json',
    body,
    dedupKey: `sha256:${createHash('sha256').update(body).digest('hex')}`,
  });
  if (duplicate) return `=${id}`;
  await deps.queues.enqueue('ingest', { inboxId: id }, { jobId: id });
  return id;
}

/** Waits until every item is done or dead; returns the summary of their outcomes. */
async function settle(deps: BulkDeps, submitted: readonly string[], phase: string): Promise<BulkSummary> {
  const ids = submitted.filter((id) => !id.startsWith('='));
  const summary: BulkSummary = { items: submitted.length, alreadyReceived: submitted.length - ids.length, done: 0, dead: 0, stored: 0, duplicates: 0, invalid: 0, deadLetters: 0 };
  const pending = new Set(ids);
  for (;;) {
    for (const id of [...pending]) {
      const item = await deps.store.inbox.get(id);
      const state: InboxState | undefined = item?.state;
      if (state === 'done' || state === 'dead') {
        pending.delete(id);
        if (state === 'done') summary.done += 1;
        else summary.dead += 1;
        const o = (item?.outcome ?? {}) as Partial<Record<'stored' | 'duplicates' | 'invalid' | 'deadLetters', number>>;
        summary.stored += o.stored ?? 0;
        summary.duplicates += o.duplicates ?? 0;
        summary.invalid += o.invalid ?? 0;
        summary.deadLetters += o.deadLetters ?? 0;
      }
    }
    deps.progress?.({ phase, done: ids.length - pending.size, total: ids.length, detail: `${summary.stored} stored` });
    if (pending.size === 0) return summary;
    await new Promise((r) => setTimeout(r, 250));
  }
}

/**
 * Imports bundles (any of transaction, batch, collection…) and single resources from `.json` files
 * and resources from `.ndjson` files. Batch bundles (Synthea's organisation/practitioner support
 * files with conditional creates) are loaded and settled first so that conditional references in
 * the patient bundles resolve.
 */
export async function importFiles(deps: BulkDeps, target: string, sourceId = FILE_IMPORT_SOURCE): Promise<BulkSummary> {
  await ensureImportSource(deps.registry, sourceId);
  const files = await listFiles(target);
  if (files.length === 0) throw new Error(`no .json or .ndjson files under ${target}`);
  const first: string[] = [];
  const rest: string[] = [];
  const ndjson: string[] = [];
  for (const f of files) {
    if (/\.ndjson$/i.test(f)) {
      ndjson.push(f);
      continue;
    }
    const head = (await readFile(f, 'utf8')).slice(0, 4000);
    (/"type"\s*:\s*"batch"/.test(head) ? first : rest).push(f);
  }
  const total: BulkSummary = { items: 0, alreadyReceived: 0, done: 0, dead: 0, stored: 0, duplicates: 0, invalid: 0, deadLetters: 0 };
  const add = (s: BulkSummary): void => {
    for (const k of Object.keys(total) as Array<keyof BulkSummary>) total[k] += s[k];
  };
  const phases: Array<[string, string[]]> = [
    ['support bundles', first],
    ['bundles and resources', rest],
  ];
  for (const [phase, list] of phases) {
    if (list.length === 0) continue;
    const ids: string[] = [];
    for (const f of list) {
      ids.push(await submit(deps, sourceId, await readFile(f), 'import'));
      deps.progress?.({ phase: `${phase}: submitting`, done: ids.length, total: list.length });
    }
    add(await settle(deps, ids, phase));
  }
  if (ndjson.length > 0) {
    const ids: string[] = [];
    for (const f of ndjson) {
      let chunk: unknown[] = [];
      const flush = async (): Promise<void> => {
        if (chunk.length === 0) return;
        const bundle = { resourceType: 'Bundle', type: 'collection', entry: chunk.map((resource) => ({ resource })) };
        ids.push(await submit(deps, sourceId, Buffer.from(JSON.stringify(bundle)), 'import'));
        chunk = [];
      };
      let lineNo = 0;
      for await (const bytes of byteLines(f)) {
        lineNo += 1;
        // Decoding bytes that are not UTF-8 would turn them into U+FFFD: such a line is refused whole.
        const utf8 = isUtf8(bytes);
        const line = utf8 ? bytes.toString('utf8').replace(/^\uFEFF/, '').trim() : '';
        if (utf8 && !line) continue;
        let value: unknown;
        let why: string | undefined = utf8 ? undefined : 'is not valid UTF-8';
        if (!why) {
          try {
            value = JSON.parse(line);
          } catch {
            why = 'is not valid JSON';
          }
        }
        if (why) {
          // Kept, not lost: the line's bytes become their own (rejected) inbox item with a dead letter.
          const { id } = await deps.store.inbox.receive({ sourceId, kind: 'rejected', body: utf8 ? Buffer.from(line) : bytes, meta: { file: path.basename(f), line: lineNo } });
          await deps.store.inbox.update(id, { state: 'dead', outcome: { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'structure', details: { text: `line ${lineNo} of ${path.basename(f)} ${why}` } }] } });
          await deps.store.deadLetters.add({ inboxId: id, sourceId, reason: 'unparseable', outcome: { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'structure', details: { text: `line ${lineNo} ${why}` } }] } });
          ids.push(id);
        } else chunk.push(value);
        if (chunk.length >= BULK_CHUNK) await flush();
      }
      await flush();
      deps.progress?.({ phase: 'ndjson: submitting', done: ids.length });
    }
    add(await settle(deps, ids, 'ndjson'));
  }
  return total;
}

/** The lines of a file as raw bytes (LF or CRLF), streamed: a line's bytes are checked before decoding. */
async function* byteLines(file: string): AsyncGenerator<Buffer> {
  let rest: Buffer = Buffer.alloc(0);
  for await (const chunk of createReadStream(file)) {
    let buf: Buffer = rest.length > 0 ? Buffer.concat([rest, chunk as Buffer]) : (chunk as Buffer);
    let nl: number;
    while ((nl = buf.indexOf(0x0a)) >= 0) {
      const end = nl > 0 && buf[nl - 1] === 0x0d ? nl - 1 : nl;
      yield buf.subarray(0, end);
      buf = buf.subarray(nl + 1);
    }
    rest = Buffer.from(buf);
  }
  if (rest.length > 0) yield rest.at(-1) === 0x0d ? rest.subarray(0, -1) : rest;
}

export interface BackfillOptions {
  readonly sourceId: string;
  readonly types?: readonly string[];
  readonly since?: Date;
  /** Start over instead of resuming from the saved cursors. */
  readonly restart?: boolean;
}

/** Types backfilled when none are given: the US Core resource types. */
export const DEFAULT_BACKFILL_TYPES = [
  'Patient', 'Organization', 'Practitioner', 'PractitionerRole', 'Location', 'Encounter', 'Condition', 'Observation',
  'DiagnosticReport', 'DocumentReference', 'MedicationRequest', 'Immunization', 'Procedure', 'AllergyIntolerance',
  'CarePlan', 'CareTeam', 'Goal', 'Device', 'Coverage', 'Provenance',
] as const;

/**
 * Pages through the source's search API type by type (`_lastUpdated=ge<cursor>`, oldest first where
 * the source honours `_sort`), submitting each page as an inbox item. The cursor (the latest
 * lastUpdated submitted) is saved after every page, so an interrupted backfill resumes where it
 * stopped; overlap at the cursor is harmless because versions are deduplicated.
 */
export async function backfill(deps: BulkDeps, options: BackfillOptions): Promise<BulkSummary> {
  const source = await deps.registry.get(options.sourceId);
  if (!source) throw new Error(`source ${options.sourceId} is not registered`);
  if (options.restart) await deps.store.backfill.reset(source.id);
  const client = createSourceClient(source, { logger: deps.logger });
  const types = options.types && options.types.length > 0 ? options.types : DEFAULT_BACKFILL_TYPES;
  const cursors = new Map((await deps.store.backfill.get(source.id)).map((c) => [c.resourceType, c]));
  const ids: string[] = [];
  for (const type of types) {
    const saved = cursors.get(type);
    if (saved?.done) {
      deps.progress?.({ phase: `${type}: already complete`, done: saved.count });
      continue;
    }
    let count = saved?.count ?? 0;
    let cursor = saved?.nextUrl ?? options.since?.toISOString();
    const params: Record<string, string> = { _sort: '_lastUpdated', _count: String(BULK_CHUNK) };
    if (cursor) params._lastUpdated = `ge${cursor}`;
    let page: Resource[] = [];
    const flush = async (): Promise<void> => {
      if (page.length === 0) return;
      const bundle = { resourceType: 'Bundle', type: 'collection', entry: page.map((resource) => ({ resource })) };
      ids.push(await submit(deps, source.id, Buffer.from(JSON.stringify(bundle)), 'backfill'));
      count += page.length;
      const latest = page.map((r) => r.meta?.lastUpdated).filter((d): d is string => typeof d === 'string').sort().pop();
      if (latest && (!cursor || latest > cursor)) cursor = latest;
      await deps.store.backfill.save(source.id, { resourceType: type, nextUrl: cursor, done: false, count });
      deps.progress?.({ phase: `${type}: fetching`, done: count });
      page = [];
    };
    // Pages are submitted (and the cursor saved) as they come, so memory does not grow with them; the
    // client's default guard of 1,000 pages (200,000 resources) would stop a large backfill midway.
    for await (const resource of client.search(type as Resource['resourceType'], params, { maxPages: BACKFILL_MAX_PAGES })) {
      page.push(resource);
      if (page.length >= BULK_CHUNK) await flush();
    }
    await flush();
    await deps.store.backfill.save(source.id, { resourceType: type, nextUrl: cursor, done: true, count });
  }
  return settle(deps, ids, 'backfill');
}
