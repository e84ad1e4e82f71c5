/**
 * Migration 010: large values of the hot tables are compressed with LZ4 where the server supports it
 * (PostgreSQL's build option), and stay readable whatever their compression.
 */
import pg from 'pg';
import type { Resource } from '@medplum/fhirtypes';
import { ManualClock } from '../../src/platform/clock.js';
import { openDatabase, type Database } from '../../src/store/index.js';
import { TEST_DATABASE_URL, dropSchema, randomNamespace, silentLogger } from '../helpers/env.js';

describe('LZ4 compression of large values (migration 010)', () => {
  const schema = randomNamespace('tlz');
  let db: Database;
  let sql: pg.Client;

  beforeAll(async () => {
    db = await openDatabase({
      config: { database: { kind: 'external', url: TEST_DATABASE_URL }, databaseSchema: schema, databasePoolMax: 2 },
      logger: silentLogger,
      clock: new ManualClock(new Date('2026-01-01T00:00:00Z')),
    });
    sql = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await sql.connect();
    await sql.query(`SET search_path TO "${schema}"`);
  });
  afterAll(async () => {
    await sql.end();
    await db.close();
    await dropSchema(schema);
  });

  it('compresses resource bodies (head and history) and raw notifications with LZ4 when the server has it', async () => {
    const lz4 = (await sql.query<{ ok: boolean }>(`SELECT 'lz4' = ANY (enumvals) AS ok FROM pg_settings WHERE name = 'default_toast_compression'`)).rows[0]!.ok;
    // Well over PostgreSQL's 2 KB compression threshold, and compressible (repeated non-ASCII text).
    const note = Array.from({ length: 200 }, (_, i) => `Blutdruck gemessen — Zeile ${i}; `).join('');
    const resource = { resourceType: 'Observation', id: 'lz4-obs', status: 'final', code: { text: 'BP' }, note: [{ text: note }] } as Resource;
    await db.store.resources.putVersion({ resourceType: 'Observation', id: 'lz4-obs', resource });
    await db.store.inbox.receive({ sourceId: 'src', kind: 'resource', contentType: 'application/fhir+json', body: Buffer.from(JSON.stringify(resource)) });

    const expected = lz4 ? 'lz4' : 'pglz';
    const head = await sql.query<{ c: string | null }>(`SELECT pg_column_compression(content) AS c FROM resource WHERE id = 'lz4-obs'`);
    const history = await sql.query<{ c: string | null }>(`SELECT pg_column_compression(content) AS c FROM resource_history WHERE id = 'lz4-obs'`);
    const inbox = await sql.query<{ c: string | null }>(`SELECT pg_column_compression(body) AS c FROM inbox`);
    expect(head.rows.map((r) => r.c)).toEqual([expected]);
    expect(history.rows.map((r) => r.c)).toEqual([expected]);
    expect(inbox.rows.map((r) => r.c)).toEqual([expected]);

    // Read back intact.
    const read = await db.store.resources.readCurrent('Observation', 'lz4-obs');
    expect((read?.resource as { note?: Array<{ text?: string }> } | undefined)?.note?.[0]?.text).toBe(note);
  });

  it('keeps values written before the migration (pglz) readable next to new ones', async () => {
    const lz4 = (await sql.query<{ ok: boolean }>(`SELECT 'lz4' = ANY (enumvals) AS ok FROM pg_settings WHERE name = 'default_toast_compression'`)).rows[0]!.ok;
    if (!lz4) return; // nothing to mix on a server without LZ4
    const note = Array.from({ length: 200 }, (_, i) => `older row ${i}; `).join('');
    const content = { resourceType: 'Observation', id: 'old-obs', status: 'final', code: { text: 'x' }, note: [{ text: note }], meta: { versionId: '1' } };
    // A value compressed with pglz, as every value stored before migration 010 was.
    await sql.query(`ALTER TABLE resource ALTER COLUMN content SET COMPRESSION pglz`);
    await sql.query(
      `INSERT INTO resource (resource_type, id, version_id, last_version, last_updated, deleted, content) VALUES ('Observation', 'old-obs', 1, 1, now(), false, $1)`,
      [JSON.stringify(content)],
    );
    await sql.query(`ALTER TABLE resource ALTER COLUMN content SET COMPRESSION lz4`);
    const c = await sql.query<{ c: string }>(`SELECT pg_column_compression(content) AS c FROM resource WHERE id = 'old-obs'`);
    expect(c.rows[0]!.c).toBe('pglz');
    const read = await db.store.resources.readCurrent('Observation', 'old-obs');
    expect((read?.resource as { note?: Array<{ text?: string }> } | undefined)?.note?.[0]?.text).toBe(note);
  });
});
