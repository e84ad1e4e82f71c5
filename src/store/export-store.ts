/**
 * Bulk Data `$export` jobs and their per-patient research-consent record (migration 006). Ids,
 * references, counts and resume cursors only: resource bodies are never stored here (the output
 * files live under the export directory) and the access token is never stored at all.
 *
 * Each page an export writes is recorded by {@link ExportStore.savePage} in one transaction: the
 * resume cursor, the running count and the consent decisions of the page's patients. A restarted
 * job therefore resumes exactly after the last saved page, and the decision counts never double.
 *
 * @see docs/research.md
 */
import type pg from 'pg';
import type { Clock } from '../platform/clock.js';
import { createPool } from './postgres-store.js';

/** Lifecycle of an export (`accepted` → `in-progress` → `completed` | `failed`; `cancelled`, `expired` are final). */
export type ExportState = 'accepted' | 'in-progress' | 'completed' | 'failed' | 'cancelled' | 'expired';

/** Kick-off level (Bulk Data 2.0): system, all patients, or one Group's members. */
export type ExportLevel = 'system' | 'patient' | 'group';

/** One export as stored. `params`, `access`, `cursor` and `manifest` are opaque JSON owned by src/research/export. */
export interface ExportRecord {
  readonly id: string;
  readonly issuer: string;
  readonly clientId: string;
  readonly level: ExportLevel;
  readonly groupId: string | undefined;
  readonly groupVersion: string | undefined;
  readonly requestUrl: string;
  readonly params: unknown;
  readonly access: unknown;
  readonly state: ExportState;
  readonly cursor: unknown;
  /** Resources written so far. */
  readonly exported: number;
  readonly manifest: unknown;
  /** `Basic/{id}/_history/{vid}` of the committed manifest resource. */
  readonly manifestRef: string | undefined;
  /** Generic failure text (no PHI). */
  readonly error: string | undefined;
  readonly transactionTime: Date;
  readonly createdAt: Date;
  readonly updatedAt: Date;
  readonly completedAt: Date | undefined;
  readonly expiresAt: Date | undefined;
}

/** What a kick-off writes. */
export interface ExportInput {
  readonly id: string;
  readonly issuer: string;
  readonly clientId: string;
  readonly level: ExportLevel;
  readonly groupId?: string;
  readonly groupVersion?: string;
  readonly requestUrl: string;
  readonly params: unknown;
  readonly access: unknown;
  readonly transactionTime: Date;
}

/** Consent outcome of one page for one patient (added to the running totals). */
export interface PatientDecisionDelta {
  readonly patientId: string;
  readonly included: number;
  readonly excluded: number;
  /** Consent references or default-policy URIs that decided. */
  readonly policy: readonly string[];
}

/** The recorded decision for one patient of one export. */
export interface PatientDecision {
  readonly patientId: string;
  readonly included: number;
  readonly excluded: number;
  readonly policy: readonly string[];
}

/** Storage of exports. */
export interface ExportStore {
  create(input: ExportInput): Promise<ExportRecord>;
  get(id: string): Promise<ExportRecord | undefined>;
  /** Exports of a client that are accepted or in progress (the concurrency limit). */
  countActive(issuer: string, clientId: string): Promise<number>;
  /** Moves an accepted (or resumed in-progress) export to in-progress; undefined when it is in any other state. */
  start(id: string): Promise<ExportRecord | undefined>;
  /**
   * Records one written page atomically: the new cursor, `exportedDelta` more resources, and the
   * page's patient decisions. Returns false (and writes nothing) when the export is no longer in
   * progress (cancelled meanwhile).
   */
  savePage(id: string, cursor: unknown, exportedDelta: number, decisions: readonly PatientDecisionDelta[]): Promise<boolean>;
  /** in-progress → completed with the manifest; false when no longer in progress. */
  complete(id: string, result: { readonly manifest: unknown; readonly manifestRef: string; readonly expiresAt: Date }): Promise<boolean>;
  /** accepted / in-progress → failed; false otherwise. */
  fail(id: string, error: string, expiresAt: Date): Promise<boolean>;
  /** Any live state → cancelled; false when absent, already cancelled or expired. */
  cancel(id: string): Promise<boolean>;
  /**
   * Exports accepted or in progress that have not moved since `updatedBefore` (no page saved), oldest
   * first: for the reconciler, which re-runs those whose job was lost.
   */
  listStale(updatedBefore: Date, limit: number): Promise<string[]>;
  /** Completed and failed exports whose expiry passed → expired; returns their ids. */
  expireDue(now: Date, limit: number): Promise<string[]>;
  /** Recorded per-patient decisions, in patient id order (keyset paging). */
  patientDecisions(id: string, options: { readonly after?: string; readonly limit: number }): Promise<PatientDecision[]>;
  /** Patients with at least one included resource, and patients with only exclusions. */
  patientSummary(id: string): Promise<{ readonly included: number; readonly excluded: number }>;
  close(): Promise<void>;
}

interface ExportRow {
  id: string;
  issuer: string;
  client_id: string;
  level: ExportLevel;
  group_id: string | null;
  group_version: string | null;
  request_url: string;
  params: unknown;
  access: unknown;
  state: ExportState;
  cursor: unknown;
  exported: string;
  manifest: unknown;
  manifest_ref: string | null;
  error: string | null;
  transaction_time: Date;
  created_at: Date;
  updated_at: Date;
  completed_at: Date | null;
  expires_at: Date | null;
}

function toRecord(r: ExportRow): ExportRecord {
  return {
    id: r.id,
    issuer: r.issuer,
    clientId: r.client_id,
    level: r.level,
    groupId: r.group_id ?? undefined,
    groupVersion: r.group_version ?? undefined,
    requestUrl: r.request_url,
    params: r.params,
    access: r.access,
    state: r.state,
    cursor: r.cursor,
    exported: Number(r.exported),
    manifest: r.manifest ?? undefined,
    manifestRef: r.manifest_ref ?? undefined,
    error: r.error ?? undefined,
    transactionTime: r.transaction_time,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    completedAt: r.completed_at ?? undefined,
    expiresAt: r.expires_at ?? undefined,
  };
}

class PgExportStore implements ExportStore {
  constructor(
    private readonly pool: pg.Pool,
    private readonly clock: Clock,
  ) {}

  async create(input: ExportInput): Promise<ExportRecord> {
    const now = this.clock.now();
    const r = await this.pool.query<ExportRow>(
      `INSERT INTO bulk_export (id, issuer, client_id, level, group_id, group_version, request_url, params, access, state, transaction_time, created_at, updated_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'accepted', $10, $11, $11) RETURNING *`,
      [
        input.id,
        input.issuer,
        input.clientId,
        input.level,
        input.groupId ?? null,
        input.groupVersion ?? null,
        input.requestUrl,
        JSON.stringify(input.params),
        JSON.stringify(input.access),
        input.transactionTime,
        now,
      ],
    );
    return toRecord(r.rows[0]!);
  }

  async get(id: string): Promise<ExportRecord | undefined> {
    const r = await this.pool.query<ExportRow>('SELECT * FROM bulk_export WHERE id = $1', [id]);
    return r.rows[0] ? toRecord(r.rows[0]) : undefined;
  }

  async countActive(issuer: string, clientId: string): Promise<number> {
    const r = await this.pool.query<{ n: string }>(
      `SELECT count(*) AS n FROM bulk_export WHERE issuer = $1 AND client_id = $2 AND state IN ('accepted', 'in-progress')`,
      [issuer, clientId],
    );
    return Number(r.rows[0]?.n ?? 0);
  }

  async listStale(updatedBefore: Date, limit: number): Promise<string[]> {
    const r = await this.pool.query<{ id: string }>(
      `SELECT id FROM bulk_export WHERE state IN ('accepted', 'in-progress') AND updated_at < $1 ORDER BY updated_at LIMIT $2`,
      [updatedBefore, limit],
    );
    return r.rows.map((row) => row.id);
  }

  async start(id: string): Promise<ExportRecord | undefined> {
    const r = await this.pool.query<ExportRow>(
      `UPDATE bulk_export SET state = 'in-progress', updated_at = $2 WHERE id = $1 AND state IN ('accepted', 'in-progress') RETURNING *`,
      [id, this.clock.now()],
    );
    return r.rows[0] ? toRecord(r.rows[0]) : undefined;
  }

  async savePage(id: string, cursor: unknown, exportedDelta: number, decisions: readonly PatientDecisionDelta[]): Promise<boolean> {
    const client = await this.pool.connect();
    try {
      await client.query('BEGIN');
      const u = await client.query(
        `UPDATE bulk_export SET cursor = $2, exported = exported + $3, updated_at = $4 WHERE id = $1 AND state = 'in-progress'`,
        [id, JSON.stringify(cursor), exportedDelta, this.clock.now()],
      );
      if (u.rowCount !== 1) {
        await client.query('ROLLBACK');
        return false;
      }
      if (decisions.length > 0) {
        await client.query(
          `INSERT INTO bulk_export_patient AS p (export_id, patient_id, included, excluded, policy)
           SELECT $1, u.patient_id, u.included, u.excluded, ARRAY(SELECT jsonb_array_elements_text(u.policy))
             FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::jsonb[]) AS u(patient_id, included, excluded, policy)
           ON CONFLICT (export_id, patient_id) DO UPDATE SET
             included = p.included + EXCLUDED.included,
             excluded = p.excluded + EXCLUDED.excluded,
             policy = ARRAY(SELECT DISTINCT x FROM unnest(p.policy || EXCLUDED.policy) AS x ORDER BY x)`,
          [
            id,
            decisions.map((d) => d.patientId),
            decisions.map((d) => d.included),
            decisions.map((d) => d.excluded),
            decisions.map((d) => JSON.stringify(d.policy)),
          ],
        );
      }
      await client.query('COMMIT');
      return true;
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      client.release();
    }
  }

  async complete(id: string, result: { manifest: unknown; manifestRef: string; expiresAt: Date }): Promise<boolean> {
    const now = this.clock.now();
    const r = await this.pool.query(
      `UPDATE bulk_export SET state = 'completed', manifest = $2, manifest_ref = $3, expires_at = $4, completed_at = $5, updated_at = $5
        WHERE id = $1 AND state = 'in-progress'`,
      [id, JSON.stringify(result.manifest), result.manifestRef, result.expiresAt, now],
    );
    return r.rowCount === 1;
  }

  async fail(id: string, error: string, expiresAt: Date): Promise<boolean> {
    const now = this.clock.now();
    const r = await this.pool.query(
      `UPDATE bulk_export SET state = 'failed', error = $2, expires_at = $3, completed_at = $4, updated_at = $4
        WHERE id = $1 AND state IN ('accepted', 'in-progress')`,
      [id, error.slice(0, 500), expiresAt, now],
    );
    return r.rowCount === 1;
  }

  async cancel(id: string): Promise<boolean> {
    const r = await this.pool.query(
      `UPDATE bulk_export SET state = 'cancelled', updated_at = $2 WHERE id = $1 AND state IN ('accepted', 'in-progress', 'completed', 'failed')`,
      [id, this.clock.now()],
    );
    return r.rowCount === 1;
  }

  async expireDue(now: Date, limit: number): Promise<string[]> {
    const r = await this.pool.query<{ id: string }>(
      `UPDATE bulk_export SET state = 'expired', updated_at = $1
        WHERE id IN (SELECT id FROM bulk_export WHERE state IN ('completed', 'failed') AND expires_at <= $1 ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)
        RETURNING id`,
      [now, limit],
    );
    return r.rows.map((row) => row.id);
  }

  async patientDecisions(id: string, options: { after?: string; limit: number }): Promise<PatientDecision[]> {
    const r = await this.pool.query<{ patient_id: string; included: string; excluded: string; policy: string[] }>(
      `SELECT patient_id, included, excluded, policy FROM bulk_export_patient
        WHERE export_id = $1 AND patient_id COLLATE "C" > $2 ORDER BY patient_id COLLATE "C" LIMIT $3`,
      [id, options.after ?? '', Math.max(1, Math.min(options.limit, 10_000))],
    );
    return r.rows.map((row) => ({ patientId: row.patient_id, included: Number(row.included), excluded: Number(row.excluded), policy: row.policy }));
  }

  async patientSummary(id: string): Promise<{ included: number; excluded: number }> {
    const r = await this.pool.query<{ included: string; excluded: string }>(
      `SELECT count(*) FILTER (WHERE included > 0) AS included, count(*) FILTER (WHERE included = 0) AS excluded
         FROM bulk_export_patient WHERE export_id = $1`,
      [id],
    );
    return { included: Number(r.rows[0]?.included ?? 0), excluded: Number(r.rows[0]?.excluded ?? 0) };
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}

/**
 * Opens the export store on its own small pool (the schema must be migrated: migration 006).
 *
 * @param options - connection string, schema, clock; `max` pool size (default 4)
 */
export function openExportStore(options: { readonly connectionString: string; readonly schema: string; readonly clock: Clock; readonly max?: number }): ExportStore {
  const pool = createPool({ connectionString: options.connectionString, schema: options.schema, max: options.max ?? 4, applicationName: 'fhir-anchor-export' });
  return new PgExportStore(pool, options.clock);
}
