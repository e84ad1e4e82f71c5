/**
 * The plan of the read path's one statement (a resource and its patients' Consents): the Consents must
 * be found by an index condition on the patient id, also right after a bulk load when PostgreSQL has no
 * statistics yet. With `target_id IN (SELECT …)` the planner walked every Consent's index entry and
 * filtered: 2.3 ms per read at 300 Consents, which made gated reads slower the more patients there were.
 */
import pg from 'pg';
import type { Resource } from '@medplum/fhirtypes';
import { ManualClock } from '../../src/platform/clock.js';
import { openDatabase, type Database } from '../../src/store/index.js';
import { READ_WITH_CONSENTS_SQL } from '../../src/store/search-store.js';
import { TEST_DATABASE_URL, dropSchema, randomNamespace, silentLogger } from '../helpers/env.js';

const PATIENTS = 300;
let schema: string;
let db: Database;
let client: pg.Client;

beforeAll(async () => {
  schema = randomNamespace('tp');
  db = await openDatabase({
    config: { database: { kind: 'external', url: TEST_DATABASE_URL }, databaseSchema: schema, databasePoolMax: 2 },
    logger: silentLogger,
    clock: new ManualClock(new Date('2026-03-01T10:00:00Z')),
  });
  const inputs = [];
  for (let i = 0; i < PATIENTS; i++) {
    const p = `pp-${i}`;
    inputs.push({ resourceType: 'Patient', id: p, resource: { resourceType: 'Patient', id: p } as Resource, sourceId: 't' });
    inputs.push({
      resourceType: 'Observation',
      id: `po-${i}`,
      resource: { resourceType: 'Observation', id: `po-${i}`, status: 'final', code: { text: 'x' }, subject: { reference: `Patient/${p}` } } as Resource,
      sourceId: 't',
    });
    inputs.push({
      resourceType: 'Consent',
      id: `pc-${i}`,
      resource: { resourceType: 'Consent', id: `pc-${i}`, status: 'active', scope: { text: 'privacy' }, category: [{ text: 'c' }], patient: { reference: `Patient/${p}` } } as Resource,
      sourceId: 't',
    });
  }
  await db.store.resources.putVersions(inputs);
  client = new pg.Client({ connectionString: TEST_DATABASE_URL });
  await client.connect();
  await client.query(`SET search_path TO "${schema}"`);
});

afterAll(async () => {
  await client?.end();
  await db?.close();
  await dropSchema(schema);
});

interface PlanNode {
  'Node Type': string;
  'Relation Name'?: string;
  'Index Cond'?: string;
  Filter?: string;
  'Join Filter'?: string;
  Plans?: PlanNode[];
}

function nodes(n: PlanNode): PlanNode[] {
  return [n, ...(n.Plans ?? []).flatMap(nodes)];
}

async function plan(type: string, id: string): Promise<PlanNode[]> {
  const r = await client.query<{ 'QUERY PLAN': Array<{ Plan: PlanNode }> }>(`EXPLAIN (FORMAT JSON) ${READ_WITH_CONSENTS_SQL}`, [type, id]);
  return nodes(r.rows[0]!['QUERY PLAN'][0]!.Plan);
}

describe('the read-with-Consents statement', () => {
  it.each([
    ['without statistics (right after a bulk load)', false],
    ['with statistics', true],
  ])('finds Consents by an index condition on the patient id, %s', async (_label, analyze) => {
    if (analyze) await client.query('ANALYZE search_reference; ANALYZE resource');
    const all = await plan('Observation', 'po-7');
    const consentScans = all.filter((n) => n['Relation Name'] === 'search_reference' && (n['Index Cond'] ?? '').includes("'Consent'"));
    expect(consentScans.length).toBeGreaterThan(0);
    for (const scan of consentScans) expect(scan['Index Cond']).toMatch(/target_id = /);
    expect(all.some((n) => /target_id = /.test(n['Join Filter'] ?? '') || /target_id = /.test(n.Filter ?? ''))).toBe(false);
  });

  it('returns the resource, its patient and that patient\'s Consent only', async () => {
    const r = await db.store.search.readCurrentWithConsents('Observation', 'po-7');
    expect(r.version?.id).toBe('po-7');
    expect([...r.consents.entries()].map(([p, list]) => [p, list.map((v) => v.id)])).toEqual([['pp-7', ['pc-7']]]);
  });
});
