/**
 * PostgreSQL implementation of {@link IntegrityStore} (tables from migrations/002_integrity.sql).
 *
 * Sequencing across processes is serialised by `SELECT … FROM log_state FOR UPDATE`: the single head
 * row is the lock, so leaf indices are dense and unique however many workers append at once. Proof
 * reads go through `merkle_tile`: any RFC 9162 proof needs O(log n) tile rows, fetched in one query.
 */
import type pg from 'pg';
import { commitmentInsertSql, commitmentValues, createPool } from './postgres-store.js';
import type {
  AnchorReceiptRecord,
  AuditRow,
  CheckpointRecord,
  CommitmentRecord,
  IntegrityStore,
  LogState,
  NewCommitment,
  PendingLeaf,
  SequencerTransaction,
  TileAddress,
  TileAppend,
  TileRecord,
  VersionKey,
} from './integrity-types.js';

export type * from './integrity-types.js';

const VERSION_RE = /^[1-9]\d{0,14}$/;

function bytes(buf: Buffer): Uint8Array {
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

function buf(data: Uint8Array): Buffer {
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

interface CommitmentRow {
  resource_type: string;
  id: string;
  version_id: number;
  salt: Buffer;
  commitment: Buffer;
  leaf_index: number | null;
  created_at: Date;
  sequenced_at: Date | null;
}

const COMMITMENT_COLUMNS = 'c.resource_type, c.id, c.version_id, c.salt, c.commitment, c.leaf_index, c.created_at, c.sequenced_at';

function toCommitment(row: CommitmentRow): CommitmentRecord {
  return {
    resourceType: row.resource_type,
    id: row.id,
    versionId: String(row.version_id),
    salt: bytes(row.salt),
    commitment: bytes(row.commitment),
    leafIndex: row.leaf_index ?? undefined,
    createdAt: row.created_at,
    sequencedAt: row.sequenced_at ?? undefined,
  };
}

interface CheckpointRow {
  size: number;
  root: Buffer;
  signed_note: string;
  created_at: Date;
}

function toCheckpoint(row: CheckpointRow): CheckpointRecord {
  return { size: row.size, rootHash: bytes(row.root), signedNote: row.signed_note, createdAt: row.created_at };
}

type Queryable = Pick<pg.Pool, 'query'> | pg.PoolClient;

async function readTiles(db: Queryable, tiles: readonly TileAddress[]): Promise<Uint8Array[]> {
  if (tiles.length === 0) return [];
  const r = await db.query<{ level: number; idx: number; width: number; data: Buffer }>(
    `SELECT t.level, t.idx, t.width, t.data FROM merkle_tile t
     JOIN unnest($1::int[], $2::bigint[]) AS w(level, idx) ON t.level = w.level AND t.idx = w.idx`,
    [tiles.map((t) => t.level), tiles.map((t) => t.index)],
  );
  const byKey = new Map<string, { width: number; data: Buffer }>();
  for (const row of r.rows) byKey.set(`${row.level}/${row.idx}`, row);
  return tiles.map((t) => {
    const row = byKey.get(`${t.level}/${t.index}`);
    if (row === undefined || row.width < t.width) {
      throw new Error(`merkle tile ${t.level}/${t.index} (width ${t.width}) is not stored`);
    }
    return bytes(row.data);
  });
}

class PgSequencerTransaction implements SequencerTransaction {
  constructor(
    private readonly client: pg.PoolClient,
    readonly state: LogState,
  ) {}

  async takePending(limit: number): Promise<PendingLeaf[]> {
    const r = await this.client.query<{ resource_type: string; id: string; version_id: number; commitment: Buffer }>(
      `SELECT resource_type, id, version_id, commitment FROM commitment WHERE leaf_index IS NULL ORDER BY seq LIMIT $1`,
      [limit],
    );
    return r.rows.map((row) => ({
      resourceType: row.resource_type,
      id: row.id,
      versionId: String(row.version_id),
      commitment: bytes(row.commitment),
    }));
  }

  readTiles(tiles: readonly TileAddress[]): Promise<Uint8Array[]> {
    return readTiles(this.client, tiles);
  }

  async appendTiles(appends: readonly TileAppend[]): Promise<void> {
    const fresh = appends.filter((a) => a.oldWidth === 0);
    const grown = appends.filter((a) => a.oldWidth > 0);
    if (fresh.length > 0) {
      await this.client.query(
        `INSERT INTO merkle_tile (level, idx, width, data)
         SELECT * FROM unnest($1::int[], $2::bigint[], $3::int[], $4::bytea[])`,
        [fresh.map((a) => a.level), fresh.map((a) => a.index), fresh.map((a) => a.width), fresh.map((a) => buf(a.data))],
      );
    }
    if (grown.length > 0) {
      const r = await this.client.query(
        `UPDATE merkle_tile t SET data = t.data || u.data, width = u.width
         FROM unnest($1::int[], $2::bigint[], $3::int[], $4::int[], $5::bytea[]) AS u(level, idx, old_width, width, data)
         WHERE t.level = u.level AND t.idx = u.idx AND t.width = u.old_width`,
        [grown.map((a) => a.level), grown.map((a) => a.index), grown.map((a) => a.oldWidth), grown.map((a) => a.width), grown.map((a) => buf(a.data))],
      );
      if (r.rowCount !== grown.length) throw new Error('merkle tile widths do not match the log head');
    }
  }

  async assignLeaves(leaves: ReadonlyArray<{ key: VersionKey; leafIndex: number }>, now: Date): Promise<void> {
    if (leaves.length === 0) return;
    const r = await this.client.query(
      `UPDATE commitment c SET leaf_index = u.leaf_index, sequenced_at = $5
       FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS u(resource_type, id, version_id, leaf_index)
       WHERE c.resource_type = u.resource_type AND c.id = u.id AND c.version_id = u.version_id AND c.leaf_index IS NULL`,
      [
        leaves.map((l) => l.key.resourceType),
        leaves.map((l) => l.key.id),
        leaves.map((l) => Number(l.key.versionId)),
        leaves.map((l) => l.leafIndex),
        now,
      ],
    );
    if (r.rowCount !== leaves.length) throw new Error('a pending commitment was sequenced concurrently');
  }

  async setState(size: number, rootHash: Uint8Array, now: Date): Promise<void> {
    await this.client.query(`UPDATE log_state SET size = $1, root = $2, updated_at = $3`, [size, buf(rootHash), now]);
  }

  async insertCheckpoint(cp: CheckpointRecord): Promise<void> {
    await this.client.query(`INSERT INTO checkpoint (size, root, signed_note, created_at) VALUES ($1, $2, $3, $4)`, [
      cp.size,
      buf(cp.rootHash),
      cp.signedNote,
      cp.createdAt,
    ]);
  }
}

/** The PostgreSQL {@link IntegrityStore}. */
export class PgIntegrityStore implements IntegrityStore {
  /**
   * @param pool - a pool whose `search_path` is the fhir-anchor schema (see `createPool`).
   * @param ownsPool - end the pool on {@link PgIntegrityStore.close}.
   */
  constructor(
    private readonly pool: pg.Pool,
    private readonly ownsPool = false,
  ) {}

  async insertCommitments(rows: readonly NewCommitment[], now: Date): Promise<VersionKey[]> {
    if (rows.length === 0) return [];
    for (const row of rows) {
      if (!VERSION_RE.test(row.versionId)) throw new RangeError(`invalid version id ${JSON.stringify(row.versionId)}`);
    }
    const r = await this.pool.query<{ resource_type: string; id: string; version_id: number }>(
      `${commitmentInsertSql(1, '$6::timestamptz')} RETURNING resource_type, id, version_id`,
      [...commitmentValues(rows), now],
    );
    return r.rows.map((row) => ({ resourceType: row.resource_type, id: row.id, versionId: String(row.version_id) }));
  }

  async getCommitment(key: VersionKey): Promise<CommitmentRecord | undefined> {
    if (!VERSION_RE.test(key.versionId)) return undefined;
    const r = await this.pool.query<CommitmentRow>(
      `SELECT ${COMMITMENT_COLUMNS} FROM commitment c WHERE c.resource_type = $1 AND c.id = $2 AND c.version_id = $3`,
      [key.resourceType, key.id, Number(key.versionId)],
    );
    return r.rows[0] ? toCommitment(r.rows[0]) : undefined;
  }

  async hasPending(): Promise<boolean> {
    const r = await this.pool.query(`SELECT 1 FROM commitment WHERE leaf_index IS NULL LIMIT 1`);
    return (r.rowCount ?? 0) > 0;
  }

  async uncommittedVersions(before: Date, limit: number): Promise<Array<{ resourceType: string; id: string; versionId: string }>> {
    const r = await this.pool.query<{ resource_type: string; id: string; version_id: number }>(
      `SELECT h.resource_type, h.id, h.version_id FROM resource_history h
       WHERE h.last_updated < $1
         AND NOT EXISTS (SELECT 1 FROM commitment c WHERE c.resource_type = h.resource_type AND c.id = h.id AND c.version_id = h.version_id)
       ORDER BY h.last_updated LIMIT $2`,
      [before, limit],
    );
    return r.rows.map((row) => ({ resourceType: row.resource_type, id: row.id, versionId: String(row.version_id) }));
  }

  async pendingStats(): Promise<{ count: number; oldest: Date | undefined }> {
    const r = await this.pool.query<{ count: number; oldest: Date | null }>(
      `SELECT count(*)::int AS count, min(created_at) AS oldest FROM commitment WHERE leaf_index IS NULL`,
    );
    const row = r.rows[0];
    return { count: row?.count ?? 0, oldest: row?.oldest ?? undefined };
  }

  async sequence<T>(fn: (tx: SequencerTransaction) => Promise<T | undefined>): Promise<T | undefined> {
    const client = await this.pool.connect();
    try {
      await client.query('BEGIN');
      const head = await client.query<{ size: number; root: Buffer; updated_at: Date }>(
        `SELECT size, root, updated_at FROM log_state FOR UPDATE`,
      );
      const row = head.rows[0];
      if (!row) throw new Error('log_state row is missing');
      const result = await fn(new PgSequencerTransaction(client, { size: row.size, rootHash: bytes(row.root), updatedAt: row.updated_at }));
      await client.query(result === undefined ? 'ROLLBACK' : 'COMMIT');
      return result;
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      client.release();
    }
  }

  async logState(): Promise<LogState> {
    const r = await this.pool.query<{ size: number; root: Buffer; updated_at: Date }>(`SELECT size, root, updated_at FROM log_state`);
    const row = r.rows[0];
    if (!row) throw new Error('log_state row is missing');
    return { size: row.size, rootHash: bytes(row.root), updatedAt: row.updated_at };
  }

  readTiles(tiles: readonly TileAddress[]): Promise<Uint8Array[]> {
    return readTiles(this.pool, tiles);
  }

  async listTiles(level: number, afterIndex: number, limit: number): Promise<TileRecord[]> {
    const r = await this.pool.query<{ level: number; idx: number; width: number; data: Buffer }>(
      `SELECT level, idx, width, data FROM merkle_tile WHERE level = $1 AND idx > $2 ORDER BY idx LIMIT $3`,
      [level, afterIndex, limit],
    );
    return r.rows.map((row) => ({ level: row.level, index: row.idx, width: row.width, data: bytes(row.data) }));
  }

  async latestCheckpoint(): Promise<CheckpointRecord | undefined> {
    const r = await this.pool.query<CheckpointRow>(`SELECT size, root, signed_note, created_at FROM checkpoint ORDER BY size DESC LIMIT 1`);
    return r.rows[0] ? toCheckpoint(r.rows[0]) : undefined;
  }

  async checkpointAt(size: number): Promise<CheckpointRecord | undefined> {
    const r = await this.pool.query<CheckpointRow>(`SELECT size, root, signed_note, created_at FROM checkpoint WHERE size = $1`, [size]);
    return r.rows[0] ? toCheckpoint(r.rows[0]) : undefined;
  }

  async checkpointsAfter(afterSize: number, limit: number): Promise<CheckpointRecord[]> {
    const r = await this.pool.query<CheckpointRow>(
      `SELECT size, root, signed_note, created_at FROM checkpoint WHERE size > $1 ORDER BY size LIMIT $2`,
      [afterSize, limit],
    );
    return r.rows.map(toCheckpoint);
  }

  async putCheckpoint(cp: CheckpointRecord): Promise<CheckpointRecord> {
    await this.pool.query(
      `INSERT INTO checkpoint (size, root, signed_note, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (size) DO NOTHING`,
      [cp.size, buf(cp.rootHash), cp.signedNote, cp.createdAt],
    );
    const stored = await this.checkpointAt(cp.size);
    if (!stored) throw new Error(`checkpoint ${cp.size} vanished`);
    return stored;
  }

  async putAnchorReceipt(anchor: string, size: number, receipt: unknown, now: Date): Promise<void> {
    await this.pool.query(
      `INSERT INTO anchor_receipt (anchor, size, receipt, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (anchor, size) DO NOTHING`,
      [anchor, size, JSON.stringify(receipt), now],
    );
  }

  async anchorReceipts(size: number): Promise<AnchorReceiptRecord[]> {
    const r = await this.pool.query<{ anchor: string; size: number; receipt: unknown; created_at: Date }>(
      `SELECT anchor, size, receipt, created_at FROM anchor_receipt WHERE size = $1 ORDER BY anchor`,
      [size],
    );
    return r.rows.map((row) => ({ anchor: row.anchor, size: row.size, receipt: row.receipt, createdAt: row.created_at }));
  }

  async latestAnchoredSize(anchor: string): Promise<number | undefined> {
    const r = await this.pool.query<{ size: number | null }>(`SELECT max(size) AS size FROM anchor_receipt WHERE anchor = $1`, [anchor]);
    return r.rows[0]?.size ?? undefined;
  }

  async auditPage(after: VersionKey | undefined, limit: number): Promise<AuditRow[]> {
    const r = await this.pool.query<CommitmentRow & { h_last_updated: Date | null; h_deleted: boolean | null; h_content: unknown; h_present: boolean }>(
      `SELECT ${COMMITMENT_COLUMNS}, h.last_updated AS h_last_updated, h.deleted AS h_deleted, h.content AS h_content,
              (h.version_id IS NOT NULL) AS h_present
       FROM commitment c
       LEFT JOIN resource_history h ON h.resource_type = c.resource_type AND h.id = c.id AND h.version_id = c.version_id
       WHERE $1::text IS NULL OR (c.resource_type, c.id, c.version_id) > ($1::text, $2::text, $3::bigint)
       ORDER BY c.resource_type, c.id, c.version_id
       LIMIT $4`,
      [after?.resourceType ?? null, after?.id ?? null, after ? Number(after.versionId) : null, limit],
    );
    return r.rows.map((row) => ({
      ...toCommitment(row),
      version: row.h_present
        ? { lastUpdated: row.h_last_updated as Date, deleted: row.h_deleted ?? false, content: row.h_content ?? undefined }
        : undefined,
    }));
  }

  async getAuditCursor(name: string): Promise<unknown> {
    const r = await this.pool.query<{ cursor: unknown }>(`SELECT cursor FROM integrity_audit_state WHERE name = $1`, [name]);
    return r.rows[0]?.cursor;
  }

  async setAuditCursor(name: string, cursor: unknown, now: Date): Promise<void> {
    await this.pool.query(
      `INSERT INTO integrity_audit_state (name, cursor, updated_at) VALUES ($1, $2, $3)
       ON CONFLICT (name) DO UPDATE SET cursor = EXCLUDED.cursor, updated_at = EXCLUDED.updated_at`,
      [name, JSON.stringify(cursor), now],
    );
  }

  async ping(): Promise<void> {
    await this.pool.query('SELECT 1');
  }

  async close(): Promise<void> {
    if (this.ownsPool) await this.pool.end();
  }
}

/** Options for {@link openIntegrityStore}. */
export interface OpenIntegrityStoreOptions {
  readonly connectionString: string;
  /** The fhir-anchor schema (migrations must have run: `openDatabase` applies 002_integrity). */
  readonly schema: string;
  /** Pool size (default 5). */
  readonly max?: number;
  readonly applicationName?: string;
}

/**
 * Opens an {@link IntegrityStore} with its own pool on the fhir-anchor schema; `close()` ends the pool.
 *
 * @param options - connection string (from `Database.connectionString`) and schema.
 * @returns the store.
 */
export function openIntegrityStore(options: OpenIntegrityStoreOptions): PgIntegrityStore {
  const pool = createPool({
    connectionString: options.connectionString,
    schema: options.schema,
    max: options.max ?? 5,
    applicationName: options.applicationName ?? 'fhir-anchor-integrity',
  });
  return new PgIntegrityStore(pool, true);
}
