/**
 * The PostgreSQL implementation of {@link Store}. Used for both the embedded and the external server.
 */
import { createHash } from 'node:crypto';
import pg from 'pg';
import type { Resource } from '@medplum/fhirtypes';
import type { Clock } from '../platform/clock.js';
import { timeOrderedId } from '../platform/ids.js';
import { PgBackfillStore, PgDeadLetterStore, PgSourceStore, PgSubscriptionStatusStore } from './ingest-store.js';
import { INDEX_DELETE_CTES, PgSearchStore, indexArrays, indexInsertCtes, indexInsertValues } from './search-store.js';
import { StoreConflictError, asStoreDataError } from './errors.js';
import { BEGIN_INDEX_PLANS, INDEX_PLAN_MAX_BATCH, quoteIdent } from './sql.js';
import type {
  AuditOutboxRecord,
  AuditOutboxStore,
  BackfillStore,
  DeadLetterStore,
  SourceStore,
  SubscriptionStatusStore,
  HistoryOptions,
  InboxItem,
  InboxReceiveInput,
  InboxState,
  InboxStore,
  NewResourceInput,
  PutVersionInput,
  PutVersionResult,
  PutVersionsOptions,
  ResourceStore,
  SearchStore,
  Store,
  StoredVersion,
  VersionCommitter,
} from './types.js';
import { toVersion, type VersionRow } from './rows.js';

// Return bigint columns as JS numbers (version numbers stay far below 2^53) and keep timestamps as Date.
pg.types.setTypeParser(pg.types.builtins.INT8, (v) => Number(v));

export interface PoolOptions {
  readonly connectionString: string;
  readonly schema: string;
  readonly max: number;
  readonly applicationName?: string;
}

/** A pool whose every connection has `search_path` pinned to the schema. */
export function createPool(options: PoolOptions): pg.Pool {
  const pool = new pg.Pool({
    connectionString: options.connectionString,
    max: options.max,
    application_name: options.applicationName ?? 'fhir-anchor',
    options: `-c search_path=${quoteIdent(options.schema)},public`,
    connectionTimeoutMillis: 10_000,
    idleTimeoutMillis: 30_000,
  });
  // An idle client losing its connection (database restart) must not crash the process; the next
  // query reconnects and readiness reports the database as down meanwhile.
  pool.on('error', () => undefined);
  // pg-pool removes its own error listener while a client is checked out: a server restart between
  // two queries would then emit an unhandled 'error' and kill the process. The failed query rejects
  // anyway; the listener only keeps the process alive.
  pool.on('connect', (client) => {
    client.on('error', () => undefined);
  });
  return pool;
}


const VERSION_COLUMNS = 'resource_type, id, version_id, last_updated, deleted, content';

/** A version's content as stored: the resource with its type, id, versionId and lastUpdated set. */
function stamped(resourceType: string, id: string, resource: Resource, versionId: number, lastUpdated: Date): Resource {
  return { ...resource, resourceType, id, meta: { ...resource.meta, versionId: String(versionId), lastUpdated: lastUpdated.toISOString() } } as Resource;
}

/** A resource's head row while a batch is applied (locked for the transaction). */
interface Head {
  versionId: number | null;
  lastVersion: number;
  sourceTime: Date | null;
  changed: boolean;
  /** The version that is current at the end of the batch, when the batch moved it. */
  current: { versionId: number; sourceTime: Date | null; deleted: boolean; content: Resource | null; text: string | null; valid: boolean | null } | undefined;
}

/** One version to insert. */
interface HistoryInsert {
  readonly input: PutVersionInput;
  readonly versionId: number;
  readonly sourceTime: Date | null;
  readonly deleted: boolean;
  readonly content: Resource | null;
  /** `JSON.stringify(content)`, made once for the INSERT, the head UPDATE and the returned version. */
  readonly text: string | null;
  readonly valid: boolean | null;
  readonly validation: string | null;
  readonly status: 'created' | 'updated' | 'historical';
}

async function inTransaction<T>(pool: pg.Pool, fn: (client: pg.PoolClient) => Promise<T>, begin = 'BEGIN'): Promise<T> {
  const client = await pool.connect();
  try {
    await client.query(begin);
    const result = await fn(client);
    await client.query('COMMIT');
    return result;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
}

/**
 * The INSERT of pending commitments over parameters `$n`..`$n+4` (type, id, version, salt,
 * commitment arrays) and the creation time `at`; a repeat of a version is ignored. One statement
 * text for every writer: the store's version writes (as a CTE) and `IntegrityStore.insertCommitments`.
 */
export function commitmentInsertSql(n: number, at: string, guard?: string): string {
  return `INSERT INTO commitment (resource_type, id, version_id, salt, commitment, created_at)
          SELECT u.t, u.i, u.v, u.s, u.c, ${at}
          FROM unnest($${n}::text[], $${n + 1}::text[], $${n + 2}::bigint[], $${n + 3}::bytea[], $${n + 4}::bytea[]) AS u(t, i, v, s, c)${guard ? `
          WHERE ${guard}` : ''}
          ORDER BY 1, 2, 3
          ON CONFLICT (resource_type, id, version_id) DO NOTHING`;
}

/** The five array parameters of {@link commitmentInsertSql}. */
export function commitmentValues(rows: ReadonlyArray<{ resourceType: string; id: string; versionId: string; salt: Uint8Array; commitment: Uint8Array }>): unknown[] {
  const buf = (b: Uint8Array): Buffer => Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  return [rows.map((r) => r.resourceType), rows.map((r) => r.id), rows.map((r) => Number(r.versionId)), rows.map((r) => buf(r.salt)), rows.map((r) => buf(r.commitment))];
}

/**
 * Many JSON documents as ONE `json`/`jsonb` parameter (a JSON array of them), split in SQL with
 * `json(b)_array_elements` and zipped with the other columns by `ROWS FROM`. A `jsonb[]` parameter is
 * an array literal in which node-pg escapes every quote and backslash of every document, a measurable
 * share of the CPU of every write; the array needs no escaping. A `null` entry is JSON null: map it
 * back with `NULLIF(x, 'null'::jsonb)` where SQL NULL is meant (no stored document is JSON null).
 */
function jsonArrayParam(texts: ReadonlyArray<string | null>): string {
  return `[${texts.map((t) => t ?? 'null').join(',')}]`;
}

/** Commits `versions` with `committer` and returns the parameters of {@link commitmentInsertSql}. */
function commitmentArrays(versions: readonly StoredVersion[], committer: VersionCommitter): unknown[] {
  return commitmentValues(versions.map((v) => ({ resourceType: v.resourceType, id: v.id, versionId: v.versionId, ...committer(v) })));
}

/** {@link commitmentInsertSql} as the data-modifying CTE `c`. */
function commitmentInsertCte(n: number, at: string, guard?: string): string {
  return `c AS (${commitmentInsertSql(n, at, guard)})`;
}

/**
 * The audit outbox (see migration 008): `append` is the one small INSERT a request waits for;
 * `materialise` moves the oldest rows into AuditEvent resources in one transaction.
 */
class PgAuditOutboxStore implements AuditOutboxStore {
  constructor(
    private readonly pool: pg.Pool,
    private readonly appendPool: pg.Pool,
    private readonly resources: PgResourceStore,
  ) {}

  async append(records: readonly AuditOutboxRecord[]): Promise<void> {
    if (records.length === 0) return;
    await this.appendPool.query({
      name: 'fa_audit_outbox_append',
      text: `INSERT INTO audit_outbox (id, recorded, record)
             SELECT i, r, c FROM ROWS FROM (unnest($1::uuid[]), unnest($2::timestamptz[]), json_array_elements($3::json)) WITH ORDINALITY AS u(i, r, c, n) ORDER BY n`,
      values: [records.map((r) => r.id), records.map((r) => r.recorded), jsonArrayParam(records.map((r) => JSON.stringify(r.record)))],
    });
  }

  async materialise(limit: number, build: (record: AuditOutboxRecord) => NewResourceInput, options: { wait?: boolean } = {}): Promise<StoredVersion[]> {
    return inTransaction(this.pool, async (client) => {
      // SKIP LOCKED: concurrent materialisers take disjoint rows. `wait` (a flush) blocks on rows another
      // one holds instead, so that when it returns every row older than the call is a resource.
      const rows = await client.query<{ id: string; recorded: Date; record: unknown }>({
        name: options.wait ? 'fa_audit_outbox_take_wait' : 'fa_audit_outbox_take',
        text: `DELETE FROM audit_outbox WHERE seq IN (
                 SELECT seq FROM audit_outbox ORDER BY seq LIMIT $1 FOR UPDATE${options.wait ? '' : ' SKIP LOCKED'})
               RETURNING id, recorded, record`,
        values: [limit],
      });
      if (rows.rows.length === 0) return [];
      return this.resources.createResourcesOn(
        client,
        rows.rows.map((r) => build({ id: r.id, recorded: r.recorded, record: r.record })),
      );
    });
  }

  async pending(): Promise<number> {
    const r = await this.pool.query<{ n: string }>('SELECT count(*) AS n FROM audit_outbox');
    return Number(r.rows[0]!.n);
  }
}

/**
 * {@link PgResourceStore.createResources}' statement, with or without the commitments CTE. Hot
 * statements are named (prepared once per connection): re-parsing and re-planning them on every call
 * cost PostgreSQL more CPU than executing them for single-resource notifications.
 */
function createResourcesSql(withCommitments: boolean): string {
  return `WITH u AS MATERIALIZED (SELECT * FROM ROWS FROM (unnest($1::text[]), unnest($2::text[]), unnest($4::text[]), jsonb_array_elements($5::jsonb)) AS u(t, i, src, c)),
            h AS (INSERT INTO resource_history (resource_type, id, version_id, last_updated, deleted, source_id, content)
                  SELECT t, i, 1, $3, false, src, c FROM u),
            r AS (INSERT INTO resource (resource_type, id, version_id, last_version, last_updated, deleted, content)
                  SELECT t, i, 1, 1, $3, false, c FROM u),
            ${indexInsertCtes(6)}${withCommitments ? `,
            ${commitmentInsertCte(21, '$3::timestamptz')}` : ''}
       SELECT 1`;
}

class PgResourceStore implements ResourceStore {
  readonly commitsVersions: boolean;

  constructor(
    private readonly pool: pg.Pool,
    private readonly clock: Clock,
    private readonly committer?: VersionCommitter,
  ) {
    this.commitsVersions = committer !== undefined;
  }

  async createResources(inputs: readonly NewResourceInput[]): Promise<StoredVersion[]> {
    return this.createResourcesOn(this.pool, inputs);
  }

  /** {@link createResources} on a given connection (a transaction of the audit outbox). */
  async createResourcesOn(db: pg.Pool | pg.PoolClient, inputs: readonly NewResourceInput[]): Promise<StoredVersion[]> {
    if (inputs.length === 0) return [];
    const lastUpdated = this.clock.now();
    const texts: string[] = [];
    const versions: StoredVersion[] = inputs.map((input) => {
      const text = JSON.stringify(stamped(input.resourceType, input.id, input.resource, 1, lastUpdated));
      texts.push(text);
      // What a read of the stored jsonb returns (JSON drops undefined members), so the commitment
      // computed here is the one a verifier recomputes from the stored version.
      return { resourceType: input.resourceType, id: input.id, versionId: '1', lastUpdated, deleted: false, resource: JSON.parse(text) as Resource };
    });
    const committer = this.committer;
    const values: unknown[] = [
      inputs.map((x) => x.resourceType),
      inputs.map((x) => x.id),
      lastUpdated,
      inputs.map((x) => x.sourceId ?? null),
      jsonArrayParam(texts),
      ...indexInsertValues(indexArrays(versions.map((v) => ({ resourceType: v.resourceType, id: v.id, content: v.resource })))),
      ...(committer ? commitmentArrays(versions, committer) : []),
    ];
    // One statement, so one round trip and an implicit transaction (on the pool): all of it or nothing.
    await db.query({ name: committer ? 'fa_create_resources_c' : 'fa_create_resources', text: createResourcesSql(committer !== undefined), values });
    return versions;
  }

  async putVersion(input: PutVersionInput): Promise<PutVersionResult> {
    const [result] = await this.putVersions([input]);
    return result!;
  }

  async putVersions(inputs: readonly PutVersionInput[], options: PutVersionsOptions = {}): Promise<PutVersionResult[]> {
    for (const input of inputs) {
      if (!(input.deleted ?? false) && !input.resource) {
        throw new Error('putVersion: a resource body is required unless deleted');
      }
    }
    const done = options.inboxDone;
    if (inputs.length === 0) {
      if (done) await markInboxDone(this.pool, done.id, done.outcome([]), this.clock.now());
      return [];
    }
    try {
      if (inputs.length === 1) {
        const created = await this.createIfAbsent(inputs[0]!, done);
        if (created) return [created];
      }
      return await this.putVersionsTx(inputs, options);
    } catch (err) {
      throw asStoreDataError(err);
    }
  }

  /**
   * The first version of a resource not stored yet (a rest-hook notification's new Observation, the
   * common case), in one statement: its head, history row, index rows, pending commitment and the
   * inbox item's completion, each inserted only if the head insert did not conflict. One round trip
   * and an implicit transaction instead of the five or six of {@link putVersionsTx} (begin, head
   * insert, head lock, dedup look-up, write, commit), which is what a resource that exists takes.
   * Undefined when the head existed (nothing was written).
   * Nothing here looks a row up through a join, so no plan choice depends on the tables' size
   * (see BEGIN_INDEX_PLANS).
   */
  private async createIfAbsent(input: PutVersionInput, done: PutVersionsOptions['inboxDone']): Promise<PutVersionResult | undefined> {
    if (input.deleted || !input.resource || input.ifMatch !== undefined) return undefined;
    const lastUpdated = this.clock.now();
    const text = JSON.stringify(stamped(input.resourceType, input.id, input.resource, 1, lastUpdated));
    const version: StoredVersion = { resourceType: input.resourceType, id: input.id, versionId: '1', lastUpdated, deleted: false, resource: JSON.parse(text) as Resource };
    const result: PutVersionResult = { status: 'created', version };
    const committer = this.committer;
    const values: unknown[] = [
      input.resourceType,
      input.id,
      lastUpdated,
      input.sourceTime ?? null,
      text,
      input.validation ? input.validation.valid : null,
      input.dedupKey ?? null,
      input.sourceId ?? null,
      input.validation ? JSON.stringify(input.validation.outcome ?? null) : null,
      ...indexInsertValues(indexArrays([{ resourceType: version.resourceType, id: version.id, content: version.resource }])),
      ...(committer ? commitmentArrays([version], committer) : []),
      ...(done ? [done.id, JSON.stringify(done.outcome([result]) ?? null)] : []),
    ];
    const guard = 'EXISTS (SELECT 1 FROM ins)';
    const n = committer ? 30 : 25;
    const r = await this.pool.query<{ n: number }>({
      name: `fa_create_if_absent${committer ? '_c' : ''}${done ? '_d' : ''}`,
      text: `WITH ins AS (INSERT INTO resource (resource_type, id, version_id, last_version, last_updated, source_time, deleted, content, valid)
                          VALUES ($1, $2, 1, 1, $3, $4, false, $5::jsonb, $6) ON CONFLICT DO NOTHING RETURNING 1),
                  h AS (INSERT INTO resource_history (resource_type, id, version_id, last_updated, source_time, deleted, dedup_key, source_id, content, valid, validation)
                        SELECT $1, $2, 1, $3, $4, false, $7, $8, $5::jsonb, $6, $9::jsonb FROM ins),
                  ${indexInsertCtes(10, guard)}${committer ? `,
                  ${commitmentInsertCte(25, '$3::timestamptz', guard)}` : ''}${done ? `,
                  dn AS (${inboxDoneSql(`$${n}`, `$${n + 1}`, '$3', guard)})` : ''}
             SELECT count(*)::int AS n FROM ins`,
      values,
    });
    return r.rows[0]?.n === 1 ? result : undefined;
  }

  private async putVersionsTx(inputs: readonly PutVersionInput[], options: PutVersionsOptions): Promise<PutVersionResult[]> {
    const done = options.inboxDone;
    // A small batch (a rest-hook notification's one resource) looks its rows up by index, under
    // statement names of its own: see BEGIN_INDEX_PLANS.
    const small = inputs.length <= INDEX_PLAN_MAX_BATCH;
    const named = (name: string): string => (small ? `${name}_small` : name);
    return inTransaction(this.pool, async (client) => {
      // Lock (creating if needed) every head row, in a fixed order so concurrent batches cannot deadlock,
      // and read the heads in the same statement.
      const keys = [...new Set(inputs.map((i) => `${i.resourceType}\u0000${i.id}`))].sort();
      const types = keys.map((k) => k.split('\u0000')[0]!);
      const ids = keys.map((k) => k.split('\u0000')[1]!);
      // Heads inserted here are new: no version of them can exist yet, so they need no dedup look-up.
      const created = new Set(
        (
          await client.query<{ resource_type: string; id: string }>({
            name: named('fa_put_heads_insert'),
            text: `INSERT INTO resource (resource_type, id, last_version)
                   SELECT t, i, 0 FROM unnest($1::text[], $2::text[]) AS u(t, i) ORDER BY t, i ON CONFLICT DO NOTHING
                   RETURNING resource_type, id`,
            values: [types, ids],
          })
        ).rows.map((h) => `${h.resource_type}\u0000${h.id}`),
      );
      const heads = new Map<string, Head>();
      for (const h of (
        await client.query<{ resource_type: string; id: string; version_id: number | null; last_version: number; source_time: Date | null }>({
          name: named('fa_put_heads_lock'),
          text: `SELECT r.resource_type, r.id, r.version_id, r.last_version, r.source_time
                 FROM resource r JOIN unnest($1::text[], $2::text[]) AS u(t, i) ON r.resource_type = u.t AND r.id = u.i
                 ORDER BY r.resource_type, r.id FOR UPDATE OF r`,
          values: [types, ids],
        })
      ).rows) {
        heads.set(`${h.resource_type}\u0000${h.id}`, { versionId: h.version_id, lastVersion: h.last_version, sourceTime: h.source_time, changed: false, current: undefined });
      }

      // Version-aware writes: under the lock, the current version must be one the writer holds.
      for (const input of inputs) {
        if (input.ifMatch === undefined) continue;
        const current = heads.get(`${input.resourceType}\u0000${input.id}`)?.versionId;
        const currentId = current === null || current === undefined ? undefined : String(current);
        if (currentId === undefined || !input.ifMatch.includes(currentId)) throw new StoreConflictError(input.resourceType, input.id, currentId);
      }

      // Versions already stored under the dedup keys asked for: one query for the whole batch.
      const withKey = inputs.filter((i) => i.dedupKey !== undefined && !created.has(`${i.resourceType}\u0000${i.id}`));
      const existing = new Map<string, VersionRow>();
      if (withKey.length > 0) {
        for (const row of (
          await client.query<VersionRow & { dedup_key: string }>({
            name: named('fa_put_dedup'),
            text: `SELECT ${VERSION_COLUMNS.split(', ').map((c) => `h.${c}`).join(', ')}, h.dedup_key
                   FROM resource_history h JOIN unnest($1::text[], $2::text[], $3::text[]) AS u(t, i, k)
                     ON h.resource_type = u.t AND h.id = u.i AND h.dedup_key = u.k`,
            values: [withKey.map((i) => i.resourceType), withKey.map((i) => i.id), withKey.map((i) => i.dedupKey!)],
          })
        ).rows) {
          existing.set(`${row.resource_type}\u0000${row.id}\u0000${row.dedup_key}`, row);
        }
      }

      // Assign versions in input order (dense per resource), decide which become current.
      const lastUpdated = this.clock.now();
      const results: Array<PutVersionResult | { pending: number }> = [];
      const rows: HistoryInsert[] = [];
      const batchKeys = new Map<string, number>(); // dedup key → index in rows (a repeat within the batch)
      for (const input of inputs) {
        const key = `${input.resourceType}\u0000${input.id}`;
        if (input.dedupKey !== undefined) {
          const dk = `${key}\u0000${input.dedupKey}`;
          const hit = existing.get(dk);
          if (hit) {
            results.push({ status: 'duplicate', version: toVersion(hit) });
            continue;
          }
          const inBatch = batchKeys.get(dk);
          if (inBatch !== undefined) {
            results.push({ pending: -1 - inBatch });
            continue;
          }
        }
        const head = heads.get(key)!;
        const deleted = input.deleted ?? false;
        const versionId = head.lastVersion + 1;
        head.lastVersion = versionId;
        const content: Resource | null = deleted ? null : stamped(input.resourceType, input.id, input.resource!, versionId, lastUpdated);
        const text = content === null ? null : JSON.stringify(content);
        const sourceTime = input.sourceTime ?? null;
        // A late, older version goes to history only; without source times, arrival order decides.
        const becomesCurrent = head.versionId === null || sourceTime === null || head.sourceTime === null || sourceTime.getTime() >= head.sourceTime.getTime();
        const wasNew = head.versionId === null;
        head.changed = true;
        const valid = input.validation ? input.validation.valid : null;
        if (becomesCurrent) {
          head.versionId = versionId;
          head.sourceTime = sourceTime;
          head.current = { versionId, sourceTime, deleted, content, text, valid };
        }
        if (input.dedupKey !== undefined) batchKeys.set(`${key}\u0000${input.dedupKey}`, rows.length);
        rows.push({
          input,
          versionId,
          sourceTime,
          deleted,
          content,
          text,
          valid,
          validation: input.validation ? JSON.stringify(input.validation.outcome ?? null) : null,
          status: !becomesCurrent ? 'historical' : wasNew ? 'created' : 'updated',
        });
        results.push({ pending: rows.length - 1 });
      }

      // Every version is returned as `JSON.parse` of the text sent, which is what a read of the stored
      // jsonb yields.
      const versionOf = (row: HistoryInsert): StoredVersion =>
        toVersion({ resource_type: row.input.resourceType, id: row.input.id, version_id: row.versionId, last_updated: lastUpdated, deleted: row.deleted, content: row.text === null ? null : (JSON.parse(row.text) as Resource) });
      const insertedVersions = rows.map(versionOf);
      const final = results.map((r): PutVersionResult => {
        if ('status' in r) return r;
        const k = r.pending < 0 ? -1 - r.pending : r.pending;
        return r.pending < 0 ? { status: 'duplicate' as const, version: insertedVersions[k]! } : { status: rows[k]!.status, version: insertedVersions[k]! };
      });
      const touched = [...heads.entries()].filter(([, h]) => h.changed);
      if (rows.length === 0) {
        // Every input was a duplicate: nothing to write but the inbox item's completion.
        if (done) await markInboxDone(client, done.id, done.outcome(final), lastUpdated);
        return final;
      }
      // One statement writes the rest: every new version's history row, every touched head (its final
      // current version, if it moved, and last version), the pending commitments (with a committer),
      // the search index of the heads whose current version moved (same transaction, so it never lags)
      // and the inbox item's completion.
      const commit = this.committer ? commitmentArrays(insertedVersions, this.committer) : undefined;
      const moved = touched.filter(([, h]) => h.current !== undefined);
      const values: unknown[] = [
        rows.map((r) => r.input.resourceType),
        rows.map((r) => r.input.id),
        rows.map((r) => r.versionId),
        lastUpdated,
        rows.map((r) => r.sourceTime),
        rows.map((r) => r.deleted),
        rows.map((r) => r.input.dedupKey ?? null),
        rows.map((r) => r.input.sourceId ?? null),
        jsonArrayParam(rows.map((r) => r.text)),
        rows.map((r) => r.valid),
        rows.map((r) => r.validation),
        touched.map(([k]) => k.split('\u0000')[0]!),
        touched.map(([k]) => k.split('\u0000')[1]!),
        touched.map(([, h]) => h.lastVersion),
        touched.map(([, h]) => h.current !== undefined),
        touched.map(([, h]) => h.current?.versionId ?? null),
        touched.map(([, h]) => h.current?.sourceTime ?? null),
        touched.map(([, h]) => h.current?.deleted ?? false),
        jsonArrayParam(touched.map(([, h]) => h.current?.text ?? null)),
        touched.map(([, h]) => h.current?.valid ?? null),
        moved.map(([k]) => k.split('\u0000')[0]!),
        moved.map(([k]) => k.split('\u0000')[1]!),
        ...indexInsertValues(indexArrays(moved.map(([k, h]) => ({ resourceType: k.split('\u0000')[0]!, id: k.split('\u0000')[1]!, content: h.current!.content ?? undefined })))),
        ...(commit ?? []),
        ...(done ? [done.id, JSON.stringify(done.outcome(final) ?? null)] : []),
      ];
      const n = commit ? 43 : 38;
      await client.query({
        name: named(`fa_put_write${commit ? '_c' : ''}${done ? '_d' : ''}`),
        text: `WITH h AS (INSERT INTO resource_history (resource_type, id, version_id, last_updated, source_time, deleted, dedup_key, source_id, content, valid, validation)
                 SELECT t, i, v, $4, st, d, dk, src, NULLIF(c, 'null'::jsonb), ok, val
                 FROM ROWS FROM (unnest($1::text[], $2::text[], $3::bigint[], $5::timestamptz[], $6::boolean[], $7::text[], $8::text[]),
                                 jsonb_array_elements($9::jsonb), unnest($10::boolean[], $11::jsonb[]))
                   AS u(t, i, v, st, d, dk, src, c, ok, val)),
               hd AS (UPDATE resource r SET
                 last_version = u.lv,
                 version_id = CASE WHEN u.moved THEN u.v ELSE r.version_id END,
                 last_updated = CASE WHEN u.moved THEN $4 ELSE r.last_updated END,
                 source_time = CASE WHEN u.moved THEN u.st ELSE r.source_time END,
                 deleted = CASE WHEN u.moved THEN u.d ELSE r.deleted END,
                 content = CASE WHEN u.moved THEN NULLIF(u.c, 'null'::jsonb) ELSE r.content END,
                 valid = CASE WHEN u.moved THEN u.ok ELSE r.valid END
               FROM ROWS FROM (unnest($12::text[], $13::text[], $14::bigint[], $15::boolean[], $16::bigint[], $17::timestamptz[], $18::boolean[]),
                               jsonb_array_elements($19::jsonb), unnest($20::boolean[]))
                 AS u(t, i, lv, moved, v, st, d, c, ok)
               WHERE r.resource_type = u.t AND r.id = u.i),
               k AS (SELECT * FROM unnest($21::text[], $22::text[]) AS k(t, i)),
               ${INDEX_DELETE_CTES},
               ${indexInsertCtes(23)}${commit ? `,
               ${commitmentInsertCte(38, '$4::timestamptz')}` : ''}${done ? `,
               dn AS (${inboxDoneSql(`$${n}`, `$${n + 1}`, '$4')})` : ''}
             SELECT 1`,
        values,
      });
      return final;
    }, small ? BEGIN_INDEX_PLANS : 'BEGIN');
  }

  async findByIdentifier(resourceType: string, system: string, value: string, limit = 10): Promise<StoredVersion[]> {
    const r = await this.pool.query<VersionRow>(
      `SELECT ${VERSION_COLUMNS} FROM resource
       WHERE resource_type = $1 AND NOT deleted AND version_id IS NOT NULL AND (content -> 'identifier') @> $2::jsonb
       ORDER BY id LIMIT $3`,
      [resourceType, JSON.stringify([{ system, value }]), limit],
    );
    return r.rows.map(toVersion);
  }

  async readValidation(resourceType: string, id: string, versionId: string): Promise<{ valid: boolean | null; outcome: unknown } | undefined> {
    if (!/^[1-9]\d{0,14}$/.test(versionId)) return undefined;
    const r = await this.pool.query<{ valid: boolean | null; validation: unknown }>(
      `SELECT valid, validation FROM resource_history WHERE resource_type = $1 AND id = $2 AND version_id = $3`,
      [resourceType, id, Number(versionId)],
    );
    return r.rows[0] ? { valid: r.rows[0].valid, outcome: r.rows[0].validation } : undefined;
  }

  async readCurrent(resourceType: string, id: string): Promise<StoredVersion | undefined> {
    const r = await this.pool.query<VersionRow>(
      `SELECT ${VERSION_COLUMNS} FROM resource WHERE resource_type = $1 AND id = $2 AND version_id IS NOT NULL`,
      [resourceType, id],
    );
    return r.rows[0] ? toVersion(r.rows[0]) : undefined;
  }

  async readVersion(resourceType: string, id: string, versionId: string): Promise<StoredVersion | undefined> {
    if (!/^[1-9]\d{0,14}$/.test(versionId)) {
      return undefined;
    }
    const r = await this.pool.query<VersionRow>(
      `SELECT ${VERSION_COLUMNS} FROM resource_history WHERE resource_type = $1 AND id = $2 AND version_id = $3`,
      [resourceType, id, Number(versionId)],
    );
    return r.rows[0] ? toVersion(r.rows[0]) : undefined;
  }

  async history(resourceType: string, id: string, options: HistoryOptions = {}): Promise<StoredVersion[]> {
    const count = Math.max(1, Math.min(options.count ?? 100, 1000));
    const r = await this.pool.query<VersionRow>(
      `SELECT ${VERSION_COLUMNS} FROM resource_history
       WHERE resource_type = $1 AND id = $2 AND ($3::bigint IS NULL OR version_id < $3)
       ORDER BY version_id DESC LIMIT $4`,
      [resourceType, id, options.beforeVersion ?? null, count],
    );
    return r.rows.map(toVersion);
  }

  async countsByType(): Promise<Array<{ resourceType: string; resources: number; versions: number }>> {
    const r = await this.pool.query<{ resource_type: string; resources: number; versions: number }>(
      `SELECT h.resource_type,
              (SELECT count(*) FROM resource c WHERE c.resource_type = h.resource_type AND c.version_id IS NOT NULL AND NOT c.deleted)::int AS resources,
              count(*)::int AS versions
       FROM resource_history h GROUP BY h.resource_type ORDER BY h.resource_type`,
    );
    return r.rows.map((row) => ({ resourceType: row.resource_type, resources: row.resources, versions: row.versions }));
  }
}

interface InboxRow {
  id: string;
  source_id: string;
  kind: string;
  content_type: string | null;
  body: Buffer;
  body_sha256: Buffer;
  dedup_key: string | null;
  meta: Record<string, unknown>;
  received_at: Date;
  stage: string;
  state: InboxState;
  outcome: unknown;
  attempts: number;
  updated_at: Date;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function inboxItemOf(row: InboxRow): InboxItem {
  return {
    id: row.id,
    sourceId: row.source_id,
    kind: row.kind,
    contentType: row.content_type ?? undefined,
    body: row.body,
    bodySha256: row.body_sha256.toString('hex'),
    dedupKey: row.dedup_key ?? undefined,
    meta: row.meta,
    receivedAt: row.received_at,
    stage: row.stage,
    state: row.state,
    outcome: row.outcome,
    attempts: row.attempts,
    updatedAt: row.updated_at,
  };
}

/** The inbox item's completion (stage `stored`, state `done`), on a pool or inside a transaction. */
/**
 * The UPDATE that marks an inbox item done (stage `stored`): item id, outcome and time as SQL
 * expressions; with `guard`, only when it holds. Alone ({@link markInboxDone}) or as a CTE of the
 * statement that stores the item's versions.
 */
function inboxDoneSql(id: string, outcome: string, at: string, guard?: string): string {
  return `UPDATE inbox SET stage = 'stored', state = 'done', outcome = ${outcome}, updated_at = ${at} WHERE id = ${id}${guard ? ` AND ${guard}` : ''}`;
}

async function markInboxDone(db: pg.Pool | pg.PoolClient, id: string, outcome: unknown, at: Date): Promise<void> {
  await db.query({
    name: 'fa_inbox_done',
    text: inboxDoneSql('$1', '$2', '$3'),
    values: [id, JSON.stringify(outcome ?? null), at],
  });
}

class PgInboxStore implements InboxStore {
  constructor(
    private readonly pool: pg.Pool,
    private readonly clock: Clock,
  ) {}

  async receive(input: InboxReceiveInput): Promise<{ id: string; duplicate: boolean }> {
    const now = this.clock.now();
    const sha = createHash('sha256').update(input.body).digest();
    const r = await this.pool.query<{ id: string }>({
      name: 'fa_inbox_receive',
      text: `INSERT INTO inbox (id, source_id, kind, content_type, body, body_sha256, dedup_key, meta, received_at, updated_at)
             VALUES ($9, $1, $2, $3, $4, $5, $6, $7, $8, $8)
             ON CONFLICT (source_id, dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING
             RETURNING id`,
      values: [input.sourceId, input.kind, input.contentType ?? null, input.body, sha, input.dedupKey ?? null, input.meta ?? {}, now, timeOrderedId()],
    });
    if (r.rows[0]) {
      return { id: r.rows[0].id, duplicate: false };
    }
    const existing = await this.pool.query<{ id: string }>(`SELECT id FROM inbox WHERE source_id = $1 AND dedup_key = $2`, [
      input.sourceId,
      input.dedupKey,
    ]);
    return { id: existing.rows[0]!.id, duplicate: true };
  }

  async get(id: string): Promise<InboxItem | undefined> {
    if (!UUID.test(id)) {
      return undefined;
    }
    const r = await this.pool.query<InboxRow>(`SELECT * FROM inbox WHERE id = $1`, [id]);
    return r.rows[0] ? inboxItemOf(r.rows[0]) : undefined;
  }

  async claim(id: string, stage: string): Promise<InboxItem | undefined> {
    if (!UUID.test(id)) return undefined;
    const r = await this.pool.query<InboxRow>({
      name: 'fa_inbox_claim',
      text: `UPDATE inbox SET stage = $2, state = 'processing', attempts = attempts + 1, updated_at = $3
             WHERE id = $1 AND state NOT IN ('done', 'dead') RETURNING *`,
      values: [id, stage, this.clock.now()],
    });
    return r.rows[0] ? inboxItemOf(r.rows[0]) : undefined;
  }

  async update(id: string, change: { stage?: string; state: InboxState; outcome?: unknown; attempt?: boolean }, options: { durable?: boolean } = {}): Promise<void> {
    // A progress mark commits asynchronously: `set_config(…, true)` lasts until the end of this
    // statement's own transaction, so only this UPDATE skips waiting for the WAL flush.
    const durable = options.durable !== false;
    await this.pool.query({
      name: durable ? 'fa_inbox_update' : 'fa_inbox_update_async',
      text: `${durable ? '' : `WITH async AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true)) `}UPDATE inbox
             SET stage = COALESCE($2, stage), state = $3, outcome = COALESCE($4, outcome), attempts = attempts + $5, updated_at = $6
             WHERE id = $1 AND (state NOT IN ('done', 'dead') OR $3 = 'pending')${durable ? '' : ' AND EXISTS (SELECT 1 FROM async)'}`,
      values: [id, change.stage ?? null, change.state, change.outcome === undefined ? null : JSON.stringify(change.outcome), change.attempt ? 1 : 0, this.clock.now()],
    });
  }

  async latestDone(sourceId: string, kind: string, receivedBefore: Date): Promise<Date | undefined> {
    const r = await this.pool.query<{ at: Date | null }>(
      `SELECT max(received_at) AS at FROM inbox WHERE source_id = $1 AND kind = $2 AND state = 'done' AND received_at < $3
         AND COALESCE(outcome ->> 'incomplete', 'false') <> 'true'`,
      [sourceId, kind, receivedBefore],
    );
    return r.rows[0]?.at ?? undefined;
  }

  async listUnfinished(options: { updatedBefore: Date; limit: number }): Promise<Array<Pick<InboxItem, 'id' | 'state' | 'stage'>>> {
    const r = await this.pool.query<{ id: string; state: InboxState; stage: string }>(
      `SELECT id, state, stage FROM inbox WHERE state IN ('pending', 'processing', 'failed') AND updated_at < $1
       ORDER BY received_at LIMIT $2`,
      [options.updatedBefore, options.limit],
    );
    return r.rows;
  }

  async sourceSummary(sourceId: string): Promise<{ lastReceived: Date | undefined; byState: Partial<Record<InboxState, number>> }> {
    const r = await this.pool.query<{ state: InboxState; count: number; last: Date }>(
      `SELECT state, count(*)::int AS count, max(received_at) AS last FROM inbox WHERE source_id = $1 GROUP BY state`,
      [sourceId],
    );
    const byState: Partial<Record<InboxState, number>> = {};
    let lastReceived: Date | undefined;
    for (const row of r.rows) {
      byState[row.state] = row.count;
      if (!lastReceived || row.last > lastReceived) lastReceived = row.last;
    }
    return { lastReceived, byState };
  }

  async countsByStageAndState(): Promise<Array<{ stage: string; state: InboxState; count: number }>> {
    const r = await this.pool.query<{ stage: string; state: InboxState; count: number }>(
      `SELECT stage, state, count(*)::int AS count FROM inbox GROUP BY stage, state ORDER BY stage, state`,
    );
    return r.rows;
  }
}

export class PostgresStore implements Store {
  readonly resources: ResourceStore;
  readonly search: SearchStore;
  readonly inbox: InboxStore;
  readonly sources: SourceStore;
  readonly subscriptions: SubscriptionStatusStore;
  readonly deadLetters: DeadLetterStore;
  readonly backfill: BackfillStore;
  readonly auditOutbox: AuditOutboxStore;

  /**
   * @param committer - commits every new version in its own transaction (see {@link VersionCommitter}).
   * @param auditPool - connections reserved for the audit outbox's appends (default: the main pool).
   */
  constructor(
    private readonly pool: pg.Pool,
    clock: Clock,
    committer?: VersionCommitter,
    private readonly auditPool: pg.Pool = pool,
  ) {
    const resources = new PgResourceStore(pool, clock, committer);
    this.resources = resources;
    this.auditOutbox = new PgAuditOutboxStore(pool, auditPool, resources);
    this.search = new PgSearchStore(pool);
    this.inbox = new PgInboxStore(pool, clock);
    this.sources = new PgSourceStore(pool, clock);
    this.subscriptions = new PgSubscriptionStatusStore(pool, clock);
    this.deadLetters = new PgDeadLetterStore(pool, clock);
    this.backfill = new PgBackfillStore(pool, clock);
  }

  async ping(): Promise<void> {
    await this.pool.query('SELECT 1');
  }

  async close(): Promise<void> {
    if (this.auditPool !== this.pool) await this.auditPool.end();
    await this.pool.end();
  }
}
