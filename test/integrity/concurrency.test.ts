/**
 * Several appenders (separate pools, as separate worker processes would be) commit thousands of
 * versions concurrently, with duplicates: leaf indices are dense and unique, each version is in the
 * log once, the root equals an independently computed RFC 9162 root, every inclusion proof verifies
 * and every checkpoint is consistent with the previous one. Also measures throughput and proof time
 * (reported, not asserted).
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import type { StoredVersion } from '../../src/store/types.js';
import { MemoryHashStore, leafHash, treeHash, verifyConsistency, verifyInclusion } from '../../src/integrity/merkle.js';
import { openCheckpoint } from '../../src/integrity/checkpoint.js';
import { parseVerifierKey } from '../../src/integrity/note.js';
import { IntegrityLog } from '../../src/integrity/log.js';
import { TEST_DATABASE_URL, silentLogger } from '../helpers/env.js';
import { ORIGIN, openIntegrityEnv, type IntegrityEnv } from './integrity-env.js';

import { jest } from '@jest/globals';
jest.setTimeout(180_000);

describe('integrity log under concurrency', () => {
  let env: IntegrityEnv;
  beforeAll(async () => {
    env = await openIntegrityEnv();
  });
  afterAll(async () => {
    await env.close();
  });

  it('gives dense unique leaf indices, one leaf per version, a correct root and valid proofs', async () => {
    const N = 4000;
    const APPENDERS = 4;
    const versions: StoredVersion[] = [];
    for (let i = 0; i < N; i += 100) {
      const chunk = await Promise.all(
        Array.from({ length: Math.min(100, N - i) }, (_, j) =>
          env.db.store.resources.putVersion({ resourceType: 'Observation', id: `o${i + j}`, resource: { resourceType: 'Observation', status: 'final', code: { text: `c${i + j}` } } }),
        ),
      );
      versions.push(...chunk.map((c) => c.version));
    }
    const logs = Array.from({ length: APPENDERS }, () =>
      new IntegrityLog({
        store: env.openStore(5),
        resources: env.db.store.resources,
        clock: env.clock,
        logger: silentLogger,
        origin: ORIGIN,
        key: env.key,
        batchLeaves: 256,
        batchIntervalMs: 25,
        maxLeavesPerCheckpoint: 300,
      }),
    );
    await Promise.all(logs.map((l) => l.start()));
    const started = performance.now();
    // Each appender commits its own share plus half of the next one's (duplicates across processes),
    // in concurrent chunks of 25 as concurrent jobs would.
    await Promise.all(
      logs.map(async (log, a) => {
        const share = N / APPENDERS;
        const mine = versions.slice(a * share, (a + 1) * share);
        const next = versions.slice(((a + 1) % APPENDERS) * share, ((a + 1) % APPENDERS) * share + share / 2);
        const all = [...mine, ...next];
        const chunks: StoredVersion[][] = [];
        for (let i = 0; i < all.length; i += 25) chunks.push(all.slice(i, i + 25));
        await Promise.all(chunks.map((c) => log.commitVersions(c)));
      }),
    );
    while ((await env.integrity.logState()).size < N) await new Promise((r) => setTimeout(r, 10));
    const elapsed = performance.now() - started;
    await Promise.all(logs.map((l) => l.stop()));
    console.log(`[integrity] ${N} versions (+${N / 2} duplicate commits) by ${APPENDERS} appenders: ${(N / (elapsed / 1000)).toFixed(0)} leaves/s (${elapsed.toFixed(0)} ms)`);

    const state = await env.integrity.logState();
    expect(state.size).toBe(N);
    const rows = await env.integrity.auditPage(undefined, N + 10);
    expect(rows).toHaveLength(N);
    const indices = rows.map((r) => r.leafIndex!).sort((a, b) => a - b);
    expect(indices).toEqual([...Array(N).keys()]);

    const reference = new MemoryHashStore();
    for (const r of [...rows].sort((a, b) => a.leafIndex! - b.leafIndex!)) reference.appendLeafData(r.commitment);
    const latest = (await env.integrity.latestCheckpoint())!;
    expect(latest.size).toBe(N);
    const { checkpoint } = openCheckpoint(latest.signedNote, ORIGIN, [parseVerifierKey(env.key.verifierKey)]);
    expect(Buffer.from(checkpoint.rootHash)).toEqual(Buffer.from(await treeHash(N, reference)));
    expect(Buffer.from(state.rootHash)).toEqual(Buffer.from(checkpoint.rootHash));

    const log = logs[0]!;
    for (const r of rows) {
      const proof = await log.proveInclusion(r.leafIndex!, N);
      expect(verifyInclusion(r.leafIndex!, N, leafHash(r.commitment), proof, checkpoint.rootHash)).toBe(true);
    }
    const cps = await env.integrity.checkpointsAfter(-1, 100_000);
    expect(cps[0]!.size).toBe(0);
    for (let i = 1; i < cps.length; i++) {
      const a = cps[i - 1]!;
      const b = cps[i]!;
      expect(b.size).toBeGreaterThan(a.size);
      const proof = await log.proveConsistency(a.size, b.size);
      expect(verifyConsistency(a.size, b.size, proof, a.rootHash, b.rootHash)).toBe(true);
    }
    expect(cps.length).toBeGreaterThan(N / 300);
    console.log(`[integrity] ${cps.length - 1} checkpoints for ${N} leaves`);
  });
});

describe('integrity log at 10^5 leaves', () => {
  let env: IntegrityEnv;
  beforeAll(async () => {
    env = await openIntegrityEnv();
  });
  afterAll(async () => {
    await env.close();
  });

  /** Test-only: inserts commitments for versions that do not exist, straight into the table. */
  async function bulkCommitments(n: number): Promise<void> {
    const client = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await client.connect();
    try {
      await client.query(`SET search_path TO "${env.schema}"`);
      for (let i = 0; i < n; i += 20_000) {
        const count = Math.min(20_000, n - i);
        await client.query(
          `INSERT INTO commitment (resource_type, id, version_id, salt, commitment, created_at)
           SELECT 'Bulk', 'b' || g, 1, $1, sha256(int8send(g)), now() FROM generate_series($2::bigint, $3::bigint) AS g ORDER BY g`,
          [randomBytes(32), i, i + count - 1],
        );
      }
    } finally {
      await client.end();
    }
  }

  it('sequences in bulk and generates proofs from PostgreSQL quickly', async () => {
    const N = 100_000;
    await bulkCommitments(N);
    const log = env.newLog({ maxLeavesPerCheckpoint: 10_000, batchLeaves: 1_000_000 });
    await log.start();
    const t0 = performance.now();
    const r = await log.flush();
    const seqMs = performance.now() - t0;
    expect(r.appended).toBe(N);
    console.log(`[integrity] sequenced ${N} pending leaves in ${seqMs.toFixed(0)} ms (${(N / (seqMs / 1000)).toFixed(0)} leaves/s, 10 checkpoints)`);

    const latest = (await log.latestCheckpoint())!;
    const verifier = parseVerifierKey(env.key.verifierKey);
    const { checkpoint } = openCheckpoint(latest.signedNote, ORIGIN, [verifier]);
    const sample = await env.integrity.auditPage(undefined, 500);
    // Warm up the connection and JIT.
    for (const s of sample.slice(0, 20)) await log.proveInclusion(s.leafIndex!, N);
    const times: number[] = [];
    for (const s of sample) {
      const t = performance.now();
      const proof = await log.proveInclusion(s.leafIndex!, N);
      times.push(performance.now() - t);
      expect(verifyInclusion(s.leafIndex!, N, leafHash(s.commitment), proof, checkpoint.rootHash)).toBe(true);
    }
    times.sort((a, b) => a - b);
    const cTimes: number[] = [];
    for (let i = 0; i < 200; i++) {
      const from = 1 + Math.floor(Math.random() * (N - 1));
      const t = performance.now();
      await log.proveConsistency(from, N);
      cTimes.push(performance.now() - t);
    }
    cTimes.sort((a, b) => a - b);
    const p = (xs: number[], q: number): string => xs[Math.floor(xs.length * q)]!.toFixed(3);
    console.log(`[integrity] inclusion proof at ${N} leaves from PostgreSQL: median ${p(times, 0.5)} ms, p95 ${p(times, 0.95)} ms`);
    console.log(`[integrity] consistency proof at ${N} leaves from PostgreSQL: median ${p(cTimes, 0.5)} ms, p95 ${p(cTimes, 0.95)} ms`);
  });
});
