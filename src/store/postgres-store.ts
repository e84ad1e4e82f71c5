/**
 * The PostgreSQL implementation of {@link Store}. Used for both the embedded and the external server.
 */
import { createHash } from 'node:crypto';
import pg from 'pg';
import type { Resource } from '@medplum/fhirtypes';
import type { Clock } from '../platform/clock.js';
import { PgBackfillStore, PgDeadLetterStore, PgSourceStore, PgSubscriptionStatusStore } from './ingest-store.js';
import { PgSearchStore, indexResource } from './search-store.js';
import { quoteIdent } from './sql.js';
import type {
  BackfillStore,
  DeadLetterStore,
  SourceStore,
  SubscriptionStatusStore,
  HistoryOptions,
  InboxItem,
  InboxReceiveInput,
  InboxState,
  InboxStore,
  PutVersionInput,
  PutVersionResult,
  ResourceStore,
  SearchStore,
  Store,
  StoredVersion,
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

async function inTransaction<T>(pool: pg.Pool, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
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

class PgResourceStore implements ResourceStore {
  constructor(
    private readonly pool: pg.Pool,
    private readonly clock: Clock,
  ) {}

  async putVersion(input: PutVersionInput): Promise<PutVersionResult> {
    const [result] = await this.putVersions([input]);
    return result!;
  }

  async putVersions(inputs: readonly PutVersionInput[]): Promise<PutVersionResult[]> {
    for (const input of inputs) {
      if (!(input.deleted ?? false) && !input.resource) {
        throw new Error('putVersion: a resource body is required unless deleted');
      }
    }
    if (inputs.length === 0) return [];
    return inTransaction(this.pool, async (client) => {
      // Lock (creating if needed) every head row, in a fixed order so concurrent batches cannot deadlock.
      const keys = [...new Set(inputs.map((i) => `${i.resourceType}\u0000${i.id}`))].sort();
      const types = keys.map((k) => k.split('\u0000')[0]!);
      const ids = keys.map((k) => k.split('\u0000')[1]!);
      await client.query(
        `INSERT INTO resource (resource_type, id, last_version)
         SELECT t, i, 0 FROM unnest($1::text[], $2::text[]) AS u(t, i) ORDER BY t, i ON CONFLICT DO NOTHING`,
        [types, ids],
      );
      await client.query(
        `SELECT 1 FROM resource r JOIN unnest($1::text[], $2::text[]) AS u(t, i) ON r.resource_type = u.t AND r.id = u.i
         ORDER BY r.resource_type, r.id FOR UPDATE OF r`,
        [types, ids],
      );
      const results: PutVersionResult[] = [];
      for (const input of inputs) results.push(await this.applyLocked(client, input));
      return results;
    });
  }

  /** Writes one version; the caller holds the head row lock. */
  private async applyLocked(client: pg.PoolClient, input: PutVersionInput): Promise<PutVersionResult> {
    const deleted = input.deleted ?? false;
    const head = (
      await client.query<{ version_id: number | null; last_version: number; source_time: Date | null }>(
        `SELECT version_id, last_version, source_time FROM resource WHERE resource_type = $1 AND id = $2`,
        [input.resourceType, input.id],
      )
    ).rows[0]!;

    if (input.dedupKey !== undefined) {
      const existing = await client.query<VersionRow>(
        `SELECT ${VERSION_COLUMNS} FROM resource_history WHERE resource_type = $1 AND id = $2 AND dedup_key = $3`,
        [input.resourceType, input.id, input.dedupKey],
      );
      if (existing.rows[0]) {
        return { status: 'duplicate', version: toVersion(existing.rows[0]) };
      }
    }

    const versionId = head.last_version + 1;
    const lastUpdated = this.clock.now();
    const content: Resource | null = deleted
      ? null
      : ({
          ...input.resource,
          resourceType: input.resourceType,
          id: input.id,
          meta: { ...input.resource!.meta, versionId: String(versionId), lastUpdated: lastUpdated.toISOString() },
        } as Resource);
    const sourceTime = input.sourceTime ?? null;
    // A late, older version goes to history only; without source times, arrival order decides.
    const becomesCurrent =
      head.version_id === null || sourceTime === null || head.source_time === null || sourceTime.getTime() >= head.source_time.getTime();
    const valid = input.validation ? input.validation.valid : null;
    const validation = input.validation ? JSON.stringify(input.validation.outcome ?? null) : null;

    const inserted = await client.query<VersionRow>(
      `INSERT INTO resource_history (resource_type, id, version_id, last_updated, source_time, deleted, dedup_key, source_id, content, valid, validation)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING ${VERSION_COLUMNS}`,
      [input.resourceType, input.id, versionId, lastUpdated, sourceTime, deleted, input.dedupKey ?? null, input.sourceId ?? null, content, valid, validation],
    );
    if (becomesCurrent) {
      await client.query(
        `UPDATE resource SET version_id = $3, last_version = $3, last_updated = $4, source_time = $5, deleted = $6, content = $7, valid = $8
         WHERE resource_type = $1 AND id = $2`,
        [input.resourceType, input.id, versionId, lastUpdated, sourceTime, deleted, content, valid],
      );
      // The search index describes the current version; same transaction, so it never lags.
      await indexResource(client, input.resourceType, input.id, content ?? undefined);
    } else {
      await client.query(`UPDATE resource SET last_version = $3 WHERE resource_type = $1 AND id = $2`, [input.resourceType, input.id, versionId]);
    }
    const version = toVersion(inserted.rows[0]!);
    const status = !becomesCurrent ? 'historical' : head.version_id === null ? 'created' : 'updated';
    return { status, version };
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

class PgInboxStore implements InboxStore {
  constructor(
    private readonly pool: pg.Pool,
    private readonly clock: Clock,
  ) {}

  async receive(input: InboxReceiveInput): Promise<{ id: string; duplicate: boolean }> {
    const now = this.clock.now();
    const sha = createHash('sha256').update(input.body).digest();
    const r = await this.pool.query<{ id: string }>(
      `INSERT INTO inbox (source_id, kind, content_type, body, body_sha256, dedup_key, meta, received_at, updated_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
       ON CONFLICT (source_id, dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING
       RETURNING id`,
      [input.sourceId, input.kind, input.contentType ?? null, input.body, sha, input.dedupKey ?? null, input.meta ?? {}, now],
    );
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
    const row = r.rows[0];
    if (!row) return undefined;
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

  async update(id: string, change: { stage?: string; state: InboxState; outcome?: unknown; attempt?: boolean }): Promise<void> {
    await this.pool.query(
      `UPDATE inbox SET stage = COALESCE($2, stage), state = $3, outcome = COALESCE($4, outcome),
              attempts = attempts + $5, updated_at = $6 WHERE id = $1`,
      [id, change.stage ?? null, change.state, change.outcome === undefined ? null : JSON.stringify(change.outcome), change.attempt ? 1 : 0, this.clock.now()],
    );
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

  constructor(
    private readonly pool: pg.Pool,
    clock: Clock,
  ) {
    this.resources = new PgResourceStore(pool, clock);
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
    await this.pool.end();
  }
}
