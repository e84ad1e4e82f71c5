import { stat, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import type { Patient } from '@medplum/fhirtypes';
import { computeCommitment, verifyCommitment } from '../../src/integrity/commitment.js';
import { openCheckpoint } from '../../src/integrity/checkpoint.js';
import { canonicalize } from '../../src/integrity/canonical.js';
import { loadLogKey, LogKeyError } from '../../src/integrity/keys.js';
import { MemoryHashStore, leafHash, treeHash, verifyConsistency, verifyInclusion } from '../../src/integrity/merkle.js';
import { parseVerifierKey } from '../../src/integrity/note.js';
import { verifyTlogProof } from '../../src/integrity/proof.js';
import { deleteMarker } from '../../src/integrity/record.js';
import { ORIGIN, openIntegrityEnv, type IntegrityEnv } from './integrity-env.js';

describe('integrity log (PostgreSQL)', () => {
  let env: IntegrityEnv;
  beforeEach(async () => {
    env = await openIntegrityEnv();
  });
  afterEach(async () => {
    await env.close();
  });

  const patient = (family: string): Patient => ({ resourceType: 'Patient', name: [{ family }] });

  it('commits a version exactly as served, sequences it and proves it', async () => {
    const log = env.newLog();
    await log.start();
    const first = await log.latestCheckpoint();
    expect(first?.size).toBe(0);

    const put = await env.db.store.resources.putVersion({ resourceType: 'Patient', id: 'p1', resource: patient('Doe') });
    const key = { resourceType: 'Patient', id: 'p1', versionId: put.version.versionId };
    expect((await log.commit(key)).status).toBe('committed');
    expect((await log.commit(key)).status).toBe('duplicate');
    expect((await log.commit({ ...key, versionId: '9' })).status).toBe('not-found');

    const pending = await log.proofFor(key);
    expect(pending.status).toBe('pending');

    const flushed = await log.flush();
    expect(flushed.appended).toBe(1);
    expect(flushed.checkpoint?.size).toBe(1);

    const proof = await log.proofFor(key);
    if (proof.status !== 'included') throw new Error('not included');
    expect(proof.commitment.leafIndex).toBe(0);
    expect(proof.proofValid).toBe(true);
    const served = await env.db.store.resources.readVersion('Patient', 'p1', '1');
    // The commitment is over the served form, meta.versionId and meta.lastUpdated included.
    expect(served?.resource?.meta?.versionId).toBe('1');
    expect(verifyCommitment(served!.resource, proof.commitment.salt, proof.commitment.commitment)).toBe(true);
    expect(
      verifyTlogProof(proof.tlogProof, leafHash(proof.commitment.commitment), ORIGIN, [parseVerifierKey(log.verifierKey)]).index,
    ).toBe(0);
    // Built-in log anchor receipt.
    expect(proof.anchorReceipts).toEqual([expect.objectContaining({ kind: 'log', anchor: 'log', size: 1 })]);
  });

  it('commits delete markers as the documented canonical object', async () => {
    const log = env.newLog();
    await env.db.store.resources.putVersion({ resourceType: 'Patient', id: 'p2', resource: patient('A') });
    const del = await env.db.store.resources.putVersion({ resourceType: 'Patient', id: 'p2', deleted: true });
    await log.commit({ resourceType: 'Patient', id: 'p2', versionId: del.version.versionId });
    const c = await env.integrity.getCommitment({ resourceType: 'Patient', id: 'p2', versionId: '2' });
    const marker = deleteMarker(del.version);
    expect(canonicalize(marker)).toBe(
      `{"deleted":true,"id":"p2","lastUpdated":"${del.version.lastUpdated.toISOString()}","resourceType":"Patient","versionId":"2"}`,
    );
    expect(Buffer.from(computeCommitment(marker, c!.salt))).toEqual(Buffer.from(c!.commitment));
  });

  it('grows in batches; roots match an independent RFC 9162 tree; checkpoints are consistent', async () => {
    const log = env.newLog({ maxLeavesPerCheckpoint: 300, batchLeaves: 1_000_000 });
    await log.start();
    const reference = new MemoryHashStore();
    const checkpoints = [];
    for (const batch of [1, 2, 5, 255, 256, 257, 700, 3]) {
      const versions = [];
      for (let i = 0; i < batch; i++) {
        versions.push((await env.db.store.resources.putVersion({ resourceType: 'Patient', id: randomUUID(), resource: patient('X') })).version);
      }
      await log.commitVersions(versions);
      const r = await log.flush();
      expect(r.appended).toBe(batch);
      checkpoints.push(r.checkpoint!);
    }
    const n = (await log.latestCheckpoint())!.size;
    expect(n).toBe(1 + 2 + 5 + 255 + 256 + 257 + 700 + 3);
    // Independent root: leaves in leaf-index order.
    const page = await env.integrity.auditPage(undefined, 10_000);
    const byIndex = [...page].sort((a, b) => a.leafIndex! - b.leafIndex!);
    expect(byIndex.map((r) => r.leafIndex)).toEqual([...Array(n).keys()]);
    for (const r of byIndex) reference.appendLeafData(r.commitment);
    const latest = (await log.latestCheckpoint())!;
    const { checkpoint } = openCheckpoint(latest.signedNote, ORIGIN, [parseVerifierKey(log.verifierKey)]);
    expect(Buffer.from(checkpoint.rootHash)).toEqual(Buffer.from(await treeHash(n, reference)));
    // Every inclusion proof from PostgreSQL verifies; consistency between all stored checkpoints.
    for (const r of byIndex) {
      const p = await log.proveInclusion(r.leafIndex!, n);
      expect(verifyInclusion(r.leafIndex!, n, leafHash(r.commitment), p, checkpoint.rootHash)).toBe(true);
    }
    const all = await env.integrity.checkpointsAfter(-1, 1000);
    for (let i = 1; i < all.length; i++) {
      const a = all[i - 1]!;
      const b = all[i]!;
      const proof = await log.proveConsistency(a.size, b.size);
      expect(verifyConsistency(a.size, b.size, proof, a.rootHash, b.rootHash)).toBe(true);
    }
    expect(checkpoints.length).toBe(8);
    // 700 leaves with at most 300 per checkpoint: three checkpoints for that batch.
    expect(all.length).toBe(1 + 7 + 3);
  });

  it('flushes by count (N) and by interval (T)', async () => {
    const log = env.newLog({ batchLeaves: 3, batchIntervalMs: 60_000 });
    for (let i = 0; i < 3; i++) {
      const v = await env.db.store.resources.putVersion({ resourceType: 'Patient', id: `n${i}`, resource: patient('N') });
      await log.commit({ resourceType: 'Patient', id: `n${i}`, versionId: v.version.versionId });
    }
    for (let t = 0; t < 100 && (await env.integrity.logState()).size < 3; t++) await new Promise((r) => setTimeout(r, 20));
    expect((await env.integrity.logState()).size).toBe(3);

    const timed = env.newLog({ batchLeaves: 1000, batchIntervalMs: 50 });
    await timed.start();
    const v = await env.db.store.resources.putVersion({ resourceType: 'Patient', id: 't1', resource: patient('T') });
    await timed.commit({ resourceType: 'Patient', id: 't1', versionId: v.version.versionId });
    for (let t = 0; t < 100 && (await env.integrity.logState()).size < 4; t++) await new Promise((r) => setTimeout(r, 20));
    expect((await env.integrity.logState()).size).toBe(4);
  });
});

describe('log key', () => {
  it('generates a key file with mode 0600 on first start and reuses it', async () => {
    const file = path.join(os.tmpdir(), `fhir-anchor-key-${randomUUID()}`, 'log.key');
    try {
      const a = await loadLogKey({ origin: ORIGIN, keyFile: file });
      expect(a.source).toBe('generated');
      expect((await stat(file)).mode & 0o777).toBe(0o600);
      const b = await loadLogKey({ origin: ORIGIN, keyFile: file });
      expect(b.source).toBe('file');
      expect(b.verifierKey).toBe(a.verifierKey);
      expect((await readFile(file, 'utf8')).startsWith(`PRIVATE+KEY+${ORIGIN}+`)).toBe(true);
      await expect(loadLogKey({ origin: 'other.example/log', keyFile: file })).rejects.toThrow(LogKeyError);
    } finally {
      await rm(path.dirname(file), { recursive: true, force: true });
    }
  });

  it('rejects a malformed configured key without echoing it', async () => {
    await expect(loadLogKey({ origin: ORIGIN, signerKey: 'PRIVATE+KEY+nonsense' })).rejects.toThrow(/malformed/);
    await expect(loadLogKey({ origin: ORIGIN })).rejects.toThrow(LogKeyError);
  });
});
