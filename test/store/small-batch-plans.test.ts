/**
 * Small batches (a rest-hook notification's one resource) must find their rows through the key
 * indexes however small the tables were when the connection planned the store's named statements.
 * With the planner's generic plan made on young tables (a hash join over a sequential scan), every
 * later single-resource write scanned the whole head, history and search-index tables: 13.8 ms per
 * write at 6,000 resources against 4.3 ms at the start. See BEGIN_INDEX_PLANS.
 */
import { jest } from '@jest/globals';
import pg from 'pg';
import type { Resource } from '@medplum/fhirtypes';
import { ManualClock } from '../../src/platform/clock.js';
import { openDatabase, type Database } from '../../src/store/index.js';
import { TEST_DATABASE_URL, dropSchema, randomNamespace, silentLogger } from '../helpers/env.js';

const TABLES = ['resource', 'resource_history', 'search_token', 'search_reference', 'search_date', 'commitment'];
let schema: string;
let db: Database;
let stats: pg.Client;

const obs = (id: string, patient: string): Resource =>
  ({ resourceType: 'Observation', id, status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] }, subject: { reference: `Patient/${patient}` }, effectiveDateTime: '2026-01-01T00:00:00Z' }) as Resource;
const one = (i: number, version = '1') => db.store.resources.putVersions([{ resourceType: 'Observation', id: `s-${i}`, resource: obs(`s-${i}`, `p-${i % 7}`), dedupKey: version, sourceId: 't' }]);

/** Sequential scans of the store's tables so far (the writing connection's counters flushed first). */
async function seqScans(): Promise<number> {
  // The pool's one connection is the writing one.
  const pool = (db.store as unknown as { pool: pg.Pool }).pool;
  const flush = await pool.query<{ f: string | null }>("SELECT to_regproc('pg_stat_force_next_flush') AS f");
  if (flush.rows[0]!.f) {
    await pool.query('SELECT pg_stat_force_next_flush()');
    await pool.query('SELECT 1'); // a transaction end, at which the forced flush happens
  } else {
    // Before PostgreSQL 15 the statistics collector receives the counters within half a second.
    await new Promise((resolve) => setTimeout(resolve, 1500));
  }
  await stats.query('SELECT pg_stat_clear_snapshot()');
  const r = await stats.query<{ n: string }>('SELECT coalesce(sum(seq_scan), 0) AS n FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = ANY($2)', [schema, TABLES]);
  return Number(r.rows[0]!.n);
}

beforeAll(async () => {
  schema = randomNamespace('tsb');
  db = await openDatabase({
    // One connection: the plans cached while the tables were empty are the ones used later.
    config: { database: { kind: 'external', url: TEST_DATABASE_URL }, databaseSchema: schema, databasePoolMax: 1 },
    logger: silentLogger,
    clock: new ManualClock(new Date('2026-03-01T10:00:00Z')),
    committer: () => ({ salt: new Uint8Array(32), commitment: new Uint8Array(32) }),
  });
  stats = new pg.Client({ connectionString: TEST_DATABASE_URL });
  await stats.connect();
});

afterAll(async () => {
  await stats?.end();
  await db?.close();
  await dropSchema(schema);
});

it('stores single resources without scanning the tables, also with plans made while they were empty', async () => {
  // More than five executions on empty tables: PostgreSQL switches the named statements to generic plans.
  for (let i = 0; i < 8; i++) await one(i);
  // The tables grow (a batch, which may use any plan).
  const batch = Array.from({ length: 3000 }, (_, i) => ({ resourceType: 'Observation', id: `b-${i}`, resource: obs(`b-${i}`, `p-${i % 50}`), dedupKey: '1', sourceId: 't' }));
  await db.store.resources.putVersions(batch);
  const before = await seqScans();
  for (let i = 8; i < 28; i++) await one(i);
  // New versions of existing resources take the transaction with the head lock, not the one-statement create.
  for (let i = 8; i < 28; i++) expect((await one(i, '2'))[0]!.status).toBe('updated');
  expect((await seqScans()) - before).toBe(0);
  // And they were stored, each with its current version and search index.
  expect((await db.store.resources.readCurrent('Observation', 's-27'))?.versionId).toBe('2');
  const found = await db.store.search.search({ resourceType: 'Observation', clauses: [{ kind: 'reference', param: 'patient', values: [{ type: 'Patient', id: 'p-6' }] }], limit: 500 });
  expect(found.map((v) => v.id)).toContain('s-27');
});

it('stores a new resource in one statement, a new version of an existing one in seven, a repeat in six', async () => {
  // Round trips are most of what a single-resource notification costs PostgreSQL and the worker.
  const query = jest.spyOn(pg.Client.prototype, 'query');
  try {
    query.mockClear();
    expect((await one(100))[0]!.status).toBe('created');
    expect(query).toHaveBeenCalledTimes(1);
    // The create that finds the head; then BEGIN, head insert, head lock, dedup look-up, one write
    // statement, COMMIT (before: nine in the transaction).
    query.mockClear();
    expect((await one(100, '2'))[0]!.status).toBe('updated');
    expect(query).toHaveBeenCalledTimes(7);
    // A duplicate: the create finds the head, the transaction finds the version; nothing is written.
    query.mockClear();
    expect((await one(100, '2'))[0]!.status).toBe('duplicate');
    expect(query).toHaveBeenCalledTimes(6);
  } finally {
    query.mockRestore();
  }
  const rows = await stats.query<{ v: string; n: number }>(`SELECT version_id::text AS v, count(*) AS n FROM ${schema}.resource_history WHERE id = 's-100' GROUP BY 1 ORDER BY 1`);
  expect(rows.rows).toEqual([{ v: '1', n: 1 }, { v: '2', n: 1 }]);
});
