/**
 * PostgreSQL stores the ingest stage uses besides resources and the inbox: sources, subscription
 * status (handshakes, heartbeats, event numbers and gaps), dead letters and backfill cursors.
 */
import type pg from 'pg';
import type { Clock } from '../platform/clock.js';
import type {
  BackfillCursor,
  BackfillStore,
  DeadLetter,
  DeadLetterStore,
  SourceRecord,
  SourceStore,
  SubscriptionGap,
  SubscriptionRestart,
  SubscriptionStatusRecord,
  SubscriptionStatusStore,
} from './types.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export class PgSourceStore implements SourceStore {
  constructor(
    private readonly pool: pg.Pool,
    private readonly clock: Clock,
  ) {}

  async upsert(id: string, definition: unknown): Promise<{ created: boolean }> {
    const now = this.clock.now();
    const r = await this.pool.query<{ created: boolean }>(
      `INSERT INTO source (id, definition, created_at, updated_at) VALUES ($1, $2, $3, $3)
       ON CONFLICT (id) DO UPDATE SET definition = EXCLUDED.definition, updated_at = EXCLUDED.updated_at
       RETURNING (xmax = 0) AS created`,
      [id, JSON.stringify(definition), now],
    );
    return { created: r.rows[0]!.created };
  }

  async get(id: string): Promise<SourceRecord | undefined> {
    const r = await this.pool.query(`SELECT id, definition, created_at, updated_at FROM source WHERE id = $1`, [id]);
    return r.rows[0] ? toSource(r.rows[0]) : undefined;
  }

  async list(): Promise<SourceRecord[]> {
    const r = await this.pool.query(`SELECT id, definition, created_at, updated_at FROM source ORDER BY id`);
    return r.rows.map(toSource);
  }

  async delete(id: string): Promise<boolean> {
    const r = await this.pool.query(`DELETE FROM source WHERE id = $1`, [id]);
    return (r.rowCount ?? 0) > 0;
  }
}

function toSource(row: { id: string; definition: unknown; created_at: Date; updated_at: Date }): SourceRecord {
  return { id: row.id, definition: row.definition, createdAt: row.created_at, updatedAt: row.updated_at };
}

export class PgSubscriptionStatusStore implements SubscriptionStatusStore {
  constructor(
    private readonly pool: pg.Pool,
    private readonly clock: Clock,
  ) {}

  async touch(input: Parameters<SubscriptionStatusStore['touch']>[0]): Promise<{ lastEventNumber: number | undefined }> {
    const now = this.clock.now();
    const reported = input.reported?.events ?? null;
    // $7 the count reported (or NULL), $8 whether a handshake reported it. A restart: a count below the
    // last number, from a handshake or from a heartbeat reporting fewer events than the report before.
    const restart = `$7::bigint IS NOT NULL AND s.last_event_number IS NOT NULL AND $7::bigint < s.last_event_number
                     AND ($8::boolean OR $7::bigint < COALESCE(s.reported_events, -1))`;
    const r = await this.pool.query<{ last_event_number: string | number | null }>(
      `INSERT INTO source_subscription AS s (source_id, subscription, topic, status, last_seen, last_heartbeat, updated_at, last_event_number, reported_events)
       VALUES ($1, $2, $3, $4, $5, CASE WHEN $6 THEN $5::timestamptz END, $5, $7::bigint, $7::bigint)
       ON CONFLICT (source_id, subscription) DO UPDATE SET
         topic = COALESCE(EXCLUDED.topic, s.topic),
         status = COALESCE(EXCLUDED.status, s.status),
         last_seen = EXCLUDED.last_seen,
         last_heartbeat = COALESCE(EXCLUDED.last_heartbeat, s.last_heartbeat),
         updated_at = EXCLUDED.updated_at,
         restarts = CASE WHEN ${restart}
                         THEN s.restarts || jsonb_build_array(jsonb_build_object('detectedAt', $9::text, 'from', s.last_event_number, 'to', $7::bigint, 'by', $10::text))
                         ELSE s.restarts END,
         last_event_number = CASE WHEN $7::bigint IS NULL THEN s.last_event_number
                                  WHEN s.last_event_number IS NULL OR (${restart}) THEN $7::bigint
                                  ELSE s.last_event_number END,
         reported_events = COALESCE($7::bigint, s.reported_events)
       RETURNING last_event_number`,
      [
        input.sourceId,
        input.subscription,
        input.topic ?? null,
        input.status ?? null,
        now,
        input.heartbeat ?? false,
        reported,
        input.reported?.by === 'handshake',
        now.toISOString(),
        input.reported?.by ?? null,
      ],
    );
    const last = r.rows[0]?.last_event_number;
    return { lastEventNumber: last === null || last === undefined ? undefined : Number(last) };
  }

  async findGap(input: { sourceId: string; subscription: string; eventNumbers: readonly number[] }): Promise<{ from: number; to: number } | undefined> {
    if (input.eventNumbers.length === 0) return undefined;
    const r = await this.pool.query<{ last_event_number: string | number | null }>(
      `SELECT last_event_number FROM source_subscription WHERE source_id = $1 AND subscription = $2`,
      [input.sourceId, input.subscription],
    );
    const recorded = r.rows[0]?.last_event_number;
    if (recorded === undefined || recorded === null) return undefined; // the first numbers of a subscription
    const last = Number(recorded);
    // reduce, not Math.min(...): a notification may carry more event numbers than the call stack holds arguments.
    const lowest = input.eventNumbers.reduce((m, n) => (n > last && n < m ? n : m), Infinity);
    return Number.isFinite(lowest) && lowest > last + 1 ? { from: last + 1, to: lowest - 1 } : undefined;
  }

  async recordEvents(input: { sourceId: string; subscription: string; eventNumbers: readonly number[]; gap?: { from: number; to: number; detectedAt: Date; catchUp: string } }): Promise<void> {
    if (input.eventNumbers.length === 0) return;
    const now = this.clock.now();
    const gap: SubscriptionGap | undefined = input.gap ? { from: input.gap.from, to: input.gap.to, detectedAt: input.gap.detectedAt.toISOString(), catchUp: input.gap.catchUp } : undefined;
    // One statement: concurrent notifications of one subscription only ever raise the last number.
    await this.pool.query(
      `INSERT INTO source_subscription AS s (source_id, subscription, last_seen, updated_at, last_event_number, gaps)
       VALUES ($1, $2, $3, $3, $4, COALESCE($5::jsonb, '[]'::jsonb))
       ON CONFLICT (source_id, subscription) DO UPDATE SET
         last_event_number = GREATEST(s.last_event_number, EXCLUDED.last_event_number),
         last_seen = EXCLUDED.last_seen, updated_at = EXCLUDED.updated_at,
         gaps = CASE WHEN $5::jsonb IS NULL THEN s.gaps ELSE s.gaps || $5::jsonb END`,
      [input.sourceId, input.subscription, now, input.eventNumbers.reduce((m, n) => Math.max(m, n), -Infinity), gap ? JSON.stringify([gap]) : null],
    );
  }

  async summary(): Promise<Array<{ sourceId: string; subscriptions: number; gaps: number; restarts: number; lastHeartbeat: Date | undefined }>> {
    const r = await this.pool.query<{ source_id: string; subscriptions: number; gaps: number; restarts: number; last_heartbeat: Date | null }>(
      `SELECT source_id, count(*)::int AS subscriptions, sum(jsonb_array_length(gaps))::int AS gaps,
              sum(jsonb_array_length(restarts))::int AS restarts, max(last_heartbeat) AS last_heartbeat
       FROM source_subscription GROUP BY source_id ORDER BY source_id`,
    );
    return r.rows.map((row) => ({ sourceId: row.source_id, subscriptions: row.subscriptions, gaps: row.gaps, restarts: row.restarts, lastHeartbeat: row.last_heartbeat ?? undefined }));
  }

  async list(sourceId: string): Promise<SubscriptionStatusRecord[]> {
    const r = await this.pool.query<{
      source_id: string;
      subscription: string;
      topic: string | null;
      status: string | null;
      last_seen: Date | null;
      last_heartbeat: Date | null;
      last_event_number: number | null;
      reported_events: string | number | null;
      gaps: SubscriptionGap[];
      restarts: SubscriptionRestart[];
    }>(`SELECT * FROM source_subscription WHERE source_id = $1 ORDER BY subscription`, [sourceId]);
    return r.rows.map((row) => ({
      sourceId: row.source_id,
      subscription: row.subscription,
      topic: row.topic ?? undefined,
      status: row.status ?? undefined,
      lastSeen: row.last_seen ?? undefined,
      lastHeartbeat: row.last_heartbeat ?? undefined,
      lastEventNumber: row.last_event_number ?? undefined,
      reportedEvents: row.reported_events === null ? undefined : Number(row.reported_events),
      gaps: row.gaps,
      restarts: row.restarts,
    }));
  }
}

interface DeadLetterRow {
  id: string;
  inbox_id: string | null;
  source_id: string;
  reason: string;
  entry_index: number | null;
  outcome: unknown;
  created_at: Date;
  replayed_at: Date | null;
  replay_count: number;
}

function toDeadLetter(row: DeadLetterRow): DeadLetter {
  return {
    id: row.id,
    inboxId: row.inbox_id ?? undefined,
    sourceId: row.source_id,
    reason: row.reason,
    entryIndex: row.entry_index ?? undefined,
    outcome: row.outcome,
    createdAt: row.created_at,
    replayedAt: row.replayed_at ?? undefined,
    replayCount: row.replay_count,
  };
}

export class PgDeadLetterStore implements DeadLetterStore {
  constructor(
    private readonly pool: pg.Pool,
    private readonly clock: Clock,
  ) {}

  async add(input: { inboxId?: string; sourceId: string; reason: string; entryIndex?: number; outcome: unknown }): Promise<string> {
    const r = await this.pool.query<{ id: string }>(
      `INSERT INTO dead_letter (inbox_id, source_id, reason, entry_index, outcome, created_at) VALUES ($1, $2, $3, $4, $5, $6)
       ON CONFLICT (inbox_id, COALESCE(entry_index, -1), reason) WHERE replayed_at IS NULL DO UPDATE SET outcome = EXCLUDED.outcome
       RETURNING id`,
      [input.inboxId ?? null, input.sourceId, input.reason, input.entryIndex ?? null, JSON.stringify(input.outcome), this.clock.now()],
    );
    return r.rows[0]!.id;
  }

  async get(id: string): Promise<DeadLetter | undefined> {
    if (!UUID.test(id)) return undefined;
    const r = await this.pool.query<DeadLetterRow>(`SELECT * FROM dead_letter WHERE id = $1`, [id]);
    return r.rows[0] ? toDeadLetter(r.rows[0]) : undefined;
  }

  async list(options: { sourceId?: string; open?: boolean; limit: number; before?: Date }): Promise<DeadLetter[]> {
    const r = await this.pool.query<DeadLetterRow>(
      `SELECT * FROM dead_letter
       WHERE ($1::text IS NULL OR source_id = $1) AND ($2::boolean IS NULL OR ($2 AND replayed_at IS NULL) OR (NOT $2 AND replayed_at IS NOT NULL))
         AND ($3::timestamptz IS NULL OR created_at < $3)
       ORDER BY created_at DESC LIMIT $4`,
      [options.sourceId ?? null, options.open ?? null, options.before ?? null, Math.max(1, Math.min(options.limit, 1000))],
    );
    return r.rows.map(toDeadLetter);
  }

  async markReplayed(id: string): Promise<void> {
    await this.pool.query(`UPDATE dead_letter SET replayed_at = $2, replay_count = replay_count + 1 WHERE id = $1`, [id, this.clock.now()]);
  }

  async countsByReason(): Promise<Array<{ sourceId: string; reason: string; open: number; total: number }>> {
    const r = await this.pool.query<{ source_id: string; reason: string; open: number; total: number }>(
      `SELECT source_id, reason, count(*) FILTER (WHERE replayed_at IS NULL)::int AS open, count(*)::int AS total
       FROM dead_letter GROUP BY source_id, reason ORDER BY source_id, reason`,
    );
    return r.rows.map((row) => ({ sourceId: row.source_id, reason: row.reason, open: row.open, total: row.total }));
  }
}

export class PgBackfillStore implements BackfillStore {
  constructor(
    private readonly pool: pg.Pool,
    private readonly clock: Clock,
  ) {}

  async get(sourceId: string): Promise<BackfillCursor[]> {
    const r = await this.pool.query<{ resource_type: string; next_url: string | null; done: boolean; count: number }>(
      `SELECT resource_type, next_url, done, count FROM backfill_cursor WHERE source_id = $1 ORDER BY resource_type`,
      [sourceId],
    );
    return r.rows.map((row) => ({ resourceType: row.resource_type, nextUrl: row.next_url ?? undefined, done: row.done, count: row.count }));
  }

  async save(sourceId: string, cursor: BackfillCursor): Promise<void> {
    await this.pool.query(
      `INSERT INTO backfill_cursor (source_id, resource_type, next_url, done, count, updated_at) VALUES ($1, $2, $3, $4, $5, $6)
       ON CONFLICT (source_id, resource_type) DO UPDATE SET next_url = EXCLUDED.next_url, done = EXCLUDED.done, count = EXCLUDED.count, updated_at = EXCLUDED.updated_at`,
      [sourceId, cursor.resourceType, cursor.nextUrl ?? null, cursor.done, cursor.count, this.clock.now()],
    );
  }

  async reset(sourceId: string): Promise<void> {
    await this.pool.query(`DELETE FROM backfill_cursor WHERE source_id = $1`, [sourceId]);
  }
}
