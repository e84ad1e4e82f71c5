import pg from 'pg';
import { randomUUID } from 'node:crypto';
import { Registry } from 'prom-client';
import { Auditor } from '../../src/integrity/audit.js';
import { TEST_DATABASE_URL, silentLogger } from '../helpers/env.js';
import { ORIGIN, openIntegrityEnv, type IntegrityEnv } from './integrity-env.js';

describe('integrity audit (tamper detection)', () => {
  let env: IntegrityEnv;
  let sql: pg.Client;
  beforeEach(async () => {
    env = await openIntegrityEnv();
    sql = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await sql.connect();
    await sql.query(`SET search_path TO "${env.schema}"`);
  });
  afterEach(async () => {
    await sql.end();
    await env.close();
  });

  async function populate(n: number): Promise<void> {
    const log = env.newLog({ maxLeavesPerCheckpoint: 200, batchLeaves: 1_000_000 });
    await log.start();
    for (let i = 0; i < n; i += 50) {
      const puts = await Promise.all(
        Array.from({ length: Math.min(50, n - i) }, (_, j) =>
          env.db.store.resources.putVersion({ resourceType: 'Patient', id: `p${i + j}`, resource: { resourceType: 'Patient', name: [{ family: `F${i + j}` }] } }),
        ),
      );
      await log.commitVersions(puts.map((p) => p.version));
      await log.flush();
    }
    // A delete marker too.
    const del = await env.db.store.resources.putVersion({ resourceType: 'Patient', id: 'p0', deleted: true });
    await log.commitVersions([del.version]);
    await log.flush();
  }

  function auditor(registry = new Registry(), pageSize = 100): Auditor {
    return new Auditor({ store: env.integrity, origin: ORIGIN, verifierKey: env.key.verifierKey, logger: silentLogger, clock: env.clock, registry, pageSize, maxPages: 100 });
  }

  it('finds nothing in an untouched log, and resumes by cursor', async () => {
    await populate(600);
    const a = auditor(new Registry(), 50);
    const r = await a.run({ cursor: { tile: { level: 0, after: -1 } } });
    expect(r.findings).toEqual([]);
    expect(r.versionsChecked).toBe(601);
    expect(r.sweepComplete).toBe(true);
    expect(r.tilesChecked).toBeGreaterThan(0);
    expect(a.health().ok).toBe(true);
    // Persisted cursor: two small runs cover the rest.
    const small = new Auditor({ store: env.integrity, origin: ORIGIN, verifierKey: env.key.verifierKey, logger: silentLogger, clock: env.clock, registry: new Registry(), pageSize: 100, maxPages: 4 });
    const first = await small.run();
    expect(first.versionsChecked).toBe(400);
    expect(first.sweepComplete).toBe(false);
    const second = await small.run();
    expect(second.versionsChecked).toBe(201);
    expect(second.sweepComplete).toBe(true);
    expect(second.checkpointsChecked).toBe(0); // all audited by the first run
  });

  it('reports exactly the version whose stored content was altered, loudly', async () => {
    await populate(300);
    await sql.query(`UPDATE resource_history SET content = jsonb_set(content, '{name,0,family}', '"Mallory"') WHERE resource_type = 'Patient' AND id = 'p42' AND version_id = 1`);
    const registry = new Registry();
    const a = auditor(registry);
    const r = await a.run();
    expect(r.findings).toEqual([
      expect.objectContaining({ kind: 'commitment-mismatch', resourceType: 'Patient', id: 'p42', versionId: '1' }),
    ]);
    expect(a.health()).toMatchObject({ ok: false, findings: 1 });
    const metric = await registry.getSingleMetricAsString('fhir_anchor_integrity_audit_findings_total');
    expect(metric).toContain('kind="commitment-mismatch"} 1');
    // $verify's view: valid = false for that version.
    const log = env.newLog();
    const proof = await log.proofFor({ resourceType: 'Patient', id: 'p42', versionId: '1' });
    expect(proof.status).toBe('included');
  });

  it('reports a deleted history row and an altered delete marker time', async () => {
    await populate(60);
    await sql.query(`DELETE FROM resource_history WHERE resource_type = 'Patient' AND id = 'p7'`);
    await sql.query(`UPDATE resource_history SET last_updated = last_updated + interval '1 second' WHERE id = 'p0' AND version_id = 2`);
    const r = await auditor().run();
    expect(r.findings.map((f) => [f.kind, f.id, f.versionId]).sort()).toEqual([
      ['commitment-mismatch', 'p0', '2'],
      ['version-missing', 'p7', '1'],
    ]);
  });

  it('detects an altered leaf hash (tile entry): the tile and the leaf no longer match', async () => {
    await populate(600);
    // Flip a byte of leaf 10 in tile 0/0 (full).
    await sql.query(`UPDATE merkle_tile SET data = set_byte(data, 10 * 32, get_byte(data, 10 * 32) # 1) WHERE level = 0 AND idx = 0`);
    const r = await auditor().run();
    const kinds = new Set(r.findings.map((f) => f.kind));
    expect(kinds).toContain('tile-mismatch');
    expect(kinds).toContain('leaf-mismatch');
    expect(r.findings.find((f) => f.kind === 'leaf-mismatch')).toMatchObject({ leafIndex: 10 });
    // A fresh process (no tile cache) produces an inclusion proof that fails verification, loudly.
    const row = (await env.integrity.auditPage(undefined, 1000)).find((x) => x.leafIndex === 11)!;
    const proof = await env.newLog().proofFor(row);
    expect(proof.status === 'included' && proof.proofValid).toBe(false);
  });

  it('detects a tampered frontier hash: checkpoint roots and consistency fail', async () => {
    await populate(300);
    // The last (partial) level-0 tile is on the right edge: every new root depends on it.
    await sql.query(`UPDATE merkle_tile SET data = set_byte(data, 0, get_byte(data, 0) # 1) WHERE level = 0 AND idx = 1`);
    const r = await auditor().run({ cursor: { tile: { level: 0, after: -1 } } });
    const kinds = new Set(r.findings.map((f) => f.kind));
    expect(kinds).toContain('checkpoint-root');
    expect(kinds).toContain('head-mismatch');
    expect(kinds).toContain('checkpoint-inconsistent');
    // And the sequencer refuses to build on it.
    const put = await env.db.store.resources.putVersion({ resourceType: 'Patient', id: randomUUID(), resource: { resourceType: 'Patient' } });
    const log = env.newLog();
    await log.commitVersions([put.version]);
    await expect(log.flush()).rejects.toThrow(/do not match the log head/);
  });

  it('detects a rewritten checkpoint (bad signature) and a changed audited checkpoint', async () => {
    await populate(100);
    const a = auditor();
    expect((await a.run()).findings).toEqual([]);
    await sql.query(`UPDATE checkpoint SET root = sha256(root) WHERE size = (SELECT max(size) FROM checkpoint)`);
    const r = await a.run();
    expect(r.findings.map((f) => f.kind)).toEqual(expect.arrayContaining(['checkpoint-inconsistent']));
    expect(a.health().ok).toBe(false);
  });
});
