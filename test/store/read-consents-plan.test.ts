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
import { CONSENTS_FOR_SQL, READ_WITH_CONSENTS_SQL } from '../../src/store/search-store.js';
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

/**
 * The plan of `sql` for `params`: the custom plan, or with `generic` the plan a prepared statement
 * switches to after five executions (parameters unknown when planning).
 */
async function plan(sql: string, params: string, generic: boolean): Promise<PlanNode[]> {
  const name = `p${Math.random().toString(36).slice(2)}`;
  await client.query(`SET plan_cache_mode = ${generic ? 'force_generic_plan' : 'force_custom_plan'}`);
  await client.query(`PREPARE ${name} AS ${sql}`);
  try {
    const r = await client.query<{ 'QUERY PLAN': Array<{ Plan: PlanNode }> }>(`EXPLAIN (FORMAT JSON) EXECUTE ${name}(${params})`);
    return nodes(r.rows[0]!['QUERY PLAN'][0]!.Plan);
  } finally {
    await client.query(`DEALLOCATE ${name}`);
  }
}

/** Every scan of Consent index entries has the patient id as an index condition, never a filter. */
function expectPatientIndexCondition(all: readonly PlanNode[]): void {
  const consentScans = all.filter((n) => n['Relation Name'] === 'search_reference' && (n['Index Cond'] ?? '').includes("'Consent'"));
  expect(consentScans.length).toBeGreaterThan(0);
  for (const scan of consentScans) expect(scan['Index Cond']).toMatch(/target_id = /);
  expect(all.some((n) => /target_id = /.test(n['Join Filter'] ?? '') || /target_id = /.test(n.Filter ?? ''))).toBe(false);
}

describe('the Consent look-ups of reads and searches', () => {
  it.each([
    ['without statistics (right after a bulk load)', false, false],
    ['without statistics, generic plan', false, true],
    ['with statistics', true, false],
    ['with statistics, generic plan', true, true],
  ])('find Consents by an index condition on the patient id, %s', async (_label, analyze, generic) => {
    if (analyze) await client.query('ANALYZE search_reference; ANALYZE resource');
    expectPatientIndexCondition(await plan(READ_WITH_CONSENTS_SQL, "'Observation', 'po-7'", generic));
    expectPatientIndexCondition(await plan(CONSENTS_FOR_SQL, "ARRAY['pp-7', 'pp-8']", generic));
  });

  it('returns the resource, its patient and that patient\'s Consent only', async () => {
    const r = await db.store.search.readCurrentWithConsents('Observation', 'po-7');
    expect(r.version?.id).toBe('po-7');
    expect([...r.consents.entries()].map(([p, list]) => [p, list.map((v) => v.id)])).toEqual([['pp-7', ['pc-7']]]);
    const c = await db.store.search.consentsFor(['pp-7', 'pp-8', 'nobody']);
    expect(c.map((x) => [x.patient, x.version.id]).sort()).toEqual([['pp-7', 'pc-7'], ['pp-8', 'pc-8']]);
  });
});
