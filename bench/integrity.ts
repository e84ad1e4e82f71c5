/**
 * Integrity benchmarks on the local PostgreSQL (a fresh schema per measurement, removed afterwards):
 *
 * - commitments/s: `SHA-256(salt ‖ JCS(version))` on real Synthea resources (CPU only), and the
 *   `integrity` job's work end to end (`IntegrityLog.commit`: re-read the version, hash, insert pending);
 * - appends/s: sequencing a backlog of pending commitments into the Merkle log (`IntegrityLog.flush`:
 *   tiles, leaf indices, head, signed checkpoint per 10,000 leaves);
 * - inclusion-proof generation (from PostgreSQL tiles, through the production `IntegrityLog.proveInclusion`
 *   with its tile cache) and verification (RFC 9162 path check; and the full C2SP tlog-proof check with
 *   the checkpoint signature) at 10^3, 10^5 and 10^6 leaves;
 * - EVM gas per anchored record (bench/integrity-gas.ts).
 *
 * Baseline: SHA-256 rate (node:crypto) in the same run.
 *
 * How the 10^5 / 10^6 logs are built: through the same tile writes the sequencer uses
 * (`appendLeafHashes` + `tileAppendsFor` + `SequencerTransaction.appendTiles/setState/insertCheckpoint`,
 * under the log lock, 100,000 leaves per transaction), with synthetic leaves and without commitment
 * rows (a proof reads only tiles and the checkpoint). The stored tiles are exactly what sequencing the
 * same leaves one checkpoint at a time would store.
 *
 *   node --import tsx bench/integrity.ts
 */
import { createHash, randomBytes } from 'node:crypto';
import pg from 'pg';
import { signCheckpoint } from '../src/integrity/checkpoint.js';
import { computeCommitment, newSalt } from '../src/integrity/commitment.js';
import { loadLogKey, type LogKey } from '../src/integrity/keys.js';
import { IntegrityLog, tileAppendsFor } from '../src/integrity/log.js';
import { TileHashReader, appendLeafHashes, leafHash, verifyInclusion } from '../src/integrity/merkle.js';
import { parseVerifierKey } from '../src/integrity/note.js';
import { formatTlogProof, verifyTlogProof } from '../src/integrity/proof.js';
import { systemClock } from '../src/platform/clock.js';
import { openDatabase, type Database } from '../src/store/index.js';
import { openIntegrityStore, type PgIntegrityStore } from '../src/store/integrity-store.js';
import type { StoredVersion } from '../src/store/types.js';
import { runGas, type GasResult } from './integrity-gas.js';
import { loadSynthea } from './ingest.js';
import { DATABASE_URL, LOG_KEY, LOG_ORIGIN, QUICK, RUNS, dropSchema, fmt, isMain, logger, median, ms, ns, percentile, ratio, repeat, say, type Section } from './lib.js';

interface Env {
  readonly schema: string;
  readonly db: Database;
  readonly store: PgIntegrityStore;
  readonly key: LogKey;
  log(overrides?: Partial<ConstructorParameters<typeof IntegrityLog>[0]>): IntegrityLog;
  close(): Promise<void>;
}

async function openEnv(): Promise<Env> {
  const schema = ns();
  const db = await openDatabase({ config: { database: { kind: 'external', url: DATABASE_URL }, databaseSchema: schema, databasePoolMax: 10 }, logger, clock: systemClock });
  const store = openIntegrityStore({ connectionString: DATABASE_URL, schema, max: 8 });
  const key = await loadLogKey({ origin: LOG_ORIGIN, signerKey: LOG_KEY.signerKey });
  const logs: IntegrityLog[] = [];
  return {
    schema,
    db,
    store,
    key,
    log(overrides = {}) {
      const l = new IntegrityLog({ store, resources: db.store.resources, clock: systemClock, logger, origin: LOG_ORIGIN, key, batchIntervalMs: 3_600_000, batchLeaves: 10_000_000, ...overrides });
      logs.push(l);
      return l;
    },
    async close() {
      for (const l of logs) await l.stop().catch(() => undefined);
      await store.close();
      await db.close();
      await dropSchema(schema);
    },
  };
}

/** Real resources to commit: the entries of a few Synthea bundles (varied types and sizes). */
function syntheaResources(n: number): Array<Record<string, unknown>> {
  const out: Array<Record<string, unknown>> = [];
  for (const b of loadSynthea().patients) {
    const bundle = JSON.parse(b.body.toString('utf8')) as { entry?: Array<{ resource?: Record<string, unknown> }> };
    for (const e of bundle.entry ?? []) if (e.resource) out.push(e.resource);
    if (out.length >= n) break;
  }
  return out.slice(0, n);
}

// ---------------------------------------------------------------------------------------------------

/** SHA-256 baseline: node:crypto over `bytes`, per second. */
function shaRate(bytes: Buffer, n: number): number {
  const t = performance.now();
  for (let i = 0; i < n; i++) createHash('sha256').update(bytes).digest();
  return n / ((performance.now() - t) / 1000);
}

/** Commitments per second, CPU only (fresh salt, JCS, SHA-256), over stored-like versions. */
function commitmentRate(resources: ReadonlyArray<Record<string, unknown>>): number {
  const versions = resources.map((r, i) => ({ ...r, meta: { ...(r.meta as object | undefined), versionId: '1', lastUpdated: new Date(1_750_000_000_000 + i).toISOString() } }));
  const t = performance.now();
  for (const v of versions) computeCommitment(v, newSalt());
  return versions.length / ((performance.now() - t) / 1000);
}

/** The `integrity` job's work, end to end: IntegrityLog.commit (re-read + hash + insert), 8 concurrent. */
async function commitJobRate(resources: ReadonlyArray<Record<string, unknown>>): Promise<{ jobs: number; batched: number }> {
  const env = await openEnv();
  try {
    const versions: StoredVersion[] = [];
    for (let i = 0; i < resources.length; i += 200) {
      const chunk = resources.slice(i, i + 200).map((r, j) => ({ resourceType: String(r.resourceType), id: `c${i + j}`, resource: r as never, dedupKey: 'v1' }));
      versions.push(...(await env.db.store.resources.putVersions(chunk)).map((x) => x.version));
    }
    const log = env.log();
    const half = Math.floor(versions.length / 2);
    let next = 0;
    const t = performance.now();
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (next < half) {
          const v = versions[next++]!;
          await log.commit({ resourceType: v.resourceType, id: v.id, versionId: v.versionId });
        }
      }),
    );
    const jobs = half / ((performance.now() - t) / 1000);
    // The same work batched: 100 versions per insert (what a batched integrity job would do).
    const rest = versions.slice(half);
    const t2 = performance.now();
    for (let i = 0; i < rest.length; i += 100) await log.commitVersions(rest.slice(i, i + 100));
    const batched = rest.length / ((performance.now() - t2) / 1000);
    return { jobs, batched };
  } finally {
    await env.close();
  }
}

/** Inserts `n` pending commitments straight into the table (synthetic versions). */
async function bulkPending(schema: string, n: number): Promise<void> {
  const client = new pg.Client({ connectionString: DATABASE_URL });
  await client.connect();
  try {
    await client.query(`SET search_path TO "${schema}"`);
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

/** Appends (sequencing) per second: a backlog of `n` pending commitments → the log (10,000 per checkpoint). */
async function appendRate(n: number): Promise<number> {
  const env = await openEnv();
  try {
    await bulkPending(env.schema, n);
    const log = env.log();
    await log.start();
    const t = performance.now();
    const r = await log.flush();
    const s = (performance.now() - t) / 1000;
    if (r.appended !== n) throw new Error(`appended ${r.appended} of ${n}`);
    return n / s;
  } finally {
    await env.close();
  }
}

/** Commit + sequence, end to end: 8 concurrent committers (single-version commits) and the default batching (N = 512, T = 1 s). */
async function commitAndSequenceRate(resources: ReadonlyArray<Record<string, unknown>>): Promise<number> {
  const env = await openEnv();
  try {
    const versions: StoredVersion[] = [];
    for (let i = 0; i < resources.length; i += 200) {
      const chunk = resources.slice(i, i + 200).map((r, j) => ({ resourceType: String(r.resourceType), id: `s${i + j}`, resource: r as never, dedupKey: 'v1' }));
      versions.push(...(await env.db.store.resources.putVersions(chunk)).map((x) => x.version));
    }
    const log = env.log({ batchLeaves: 512, batchIntervalMs: 1000 });
    await log.start();
    let next = 0;
    const t = performance.now();
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (next < versions.length) {
          const v = versions[next++]!;
          await log.commit({ resourceType: v.resourceType, id: v.id, versionId: v.versionId });
        }
      }),
    );
    await log.flush();
    return versions.length / ((performance.now() - t) / 1000);
  } finally {
    await env.close();
  }
}

// ---------------------------------------------------------------------------------------------------
// Proofs at 10^3, 10^5, 10^6 leaves

/** Synthetic commitment of leaf i (as bulkPending would store it). */
const syntheticCommitment = (i: number): Uint8Array => {
  const b = Buffer.alloc(8);
  b.writeBigInt64BE(BigInt(i));
  return new Uint8Array(createHash('sha256').update(b).digest());
};

/** Grows the log to `target` leaves through the sequencer's tile writes, 100,000 leaves per transaction. */
async function growLog(store: PgIntegrityStore, key: LogKey, target: number): Promise<{ seconds: number }> {
  const t = performance.now();
  for (;;) {
    const done = await store.sequence(async (tx) => {
      const oldSize = tx.state.size;
      if (oldSize >= target) return undefined;
      const count = Math.min(100_000, target - oldSize);
      const leaves = Array.from({ length: count }, (_, k) => leafHash(syntheticCommitment(oldSize + k)));
      const reader = new TileHashReader({ readTiles: (tiles) => tx.readTiles(tiles) });
      const { storedHashes, rootHash, size } = await appendLeafHashes(oldSize, leaves, reader);
      await tx.appendTiles(tileAppendsFor(storedHashes, oldSize, size));
      const now = new Date();
      await tx.setState(size, rootHash, now);
      await tx.insertCheckpoint({ size, rootHash, signedNote: signCheckpoint({ origin: LOG_ORIGIN, size, rootHash }, key.signer), createdAt: now });
      return size;
    });
    if (done === undefined) break;
  }
  return { seconds: (performance.now() - t) / 1000 };
}

interface ProofStats {
  readonly size: number;
  readonly genMedian: number;
  readonly genP99: number;
  /** First proofs with an empty tile cache (every tile read from PostgreSQL). */
  readonly genColdMedian: number;
  readonly verifyMedian: number;
  readonly tlogVerifyMedian: number;
  readonly consistencyMedian: number;
  readonly proofHashes: number;
  readonly buildSeconds: number;
}

async function proofStats(env: Env, size: number, buildSeconds: number, samples: number): Promise<ProofStats> {
  const cp = (await env.store.checkpointAt(size))!;
  const verifiers = [parseVerifierKey(env.key.verifierKey)];
  const log = env.log();
  const pick = (): number => Math.floor(Math.random() * size);
  // Cold: a fresh log (empty tile cache), first proofs.
  const cold: number[] = [];
  for (let i = 0; i < Math.min(50, samples); i++) {
    const idx = pick();
    const t = performance.now();
    await log.proveInclusion(idx, size);
    cold.push(performance.now() - t);
  }
  const gen: number[] = [];
  const ver: number[] = [];
  const tlog: number[] = [];
  let hashes = 0;
  for (let i = 0; i < samples; i++) {
    const idx = pick();
    const t = performance.now();
    const proof = await log.proveInclusion(idx, size);
    gen.push(performance.now() - t);
    hashes = proof.length;
    const leaf = leafHash(syntheticCommitment(idx));
    const t2 = performance.now();
    const ok = verifyInclusion(idx, size, leaf, proof, cp.rootHash);
    ver.push(performance.now() - t2);
    if (!ok) throw new Error(`inclusion proof for leaf ${idx} of ${size} does not verify`);
    const text = formatTlogProof({ index: idx, inclusionProof: proof, checkpoint: cp.signedNote });
    const t3 = performance.now();
    verifyTlogProof(text, leaf, LOG_ORIGIN, verifiers);
    tlog.push(performance.now() - t3);
  }
  const cons: number[] = [];
  for (let i = 0; i < Math.min(200, samples); i++) {
    const from = 1 + Math.floor(Math.random() * (size - 1));
    const t = performance.now();
    await log.proveConsistency(from, size);
    cons.push(performance.now() - t);
  }
  return {
    size,
    genMedian: median(gen),
    genP99: percentile(gen, 0.99),
    genColdMedian: median(cold),
    verifyMedian: median(ver),
    tlogVerifyMedian: median(tlog),
    consistencyMedian: median(cons),
    proofHashes: hashes,
    buildSeconds,
  };
}

async function proofsAtScale(sizes: readonly number[], samples: number): Promise<ProofStats[]> {
  const env = await openEnv();
  try {
    const out: ProofStats[] = [];
    for (const size of sizes) {
      const { seconds } = await growLog(env.store, env.key, size);
      say(`    log grown to ${fmt(size)} leaves in ${seconds.toFixed(1)} s`);
      out.push(await proofStats(env, size, seconds, samples));
    }
    return out;
  } finally {
    await env.close();
  }
}

// ---------------------------------------------------------------------------------------------------

export async function runIntegrity(gas?: GasResult): Promise<Section> {
  const resources = syntheaResources(QUICK ? 1000 : 4000);
  const meanBytes = resources.reduce((s, r) => s + JSON.stringify(r).length, 0) / resources.length;
  const sampleBytes = Buffer.from(JSON.stringify(resources[Math.floor(resources.length / 2)]));
  const shaLeaf = await repeat(async () => shaRate(Buffer.alloc(33, 7), 200_000));
  const shaResource = await repeat(async () => {
    const t = performance.now();
    for (const r of resources) createHash('sha256').update(JSON.stringify(r)).digest();
    return resources.length / ((performance.now() - t) / 1000);
  });
  say(`  sha256 node:crypto: ${fmt(shaLeaf)}/s (33 B leaf input), ${fmt(shaResource)}/s (JSON.stringify + hash of a Synthea resource, mean ${fmt(meanBytes)} B); 1 KB: ${fmt(shaRate(sampleBytes, 50_000))}/s`);
  const commitCpu = await repeat(async () => commitmentRate(resources));
  say(`  commitments (CPU: salt + JCS + SHA-256): ${fmt(commitCpu)}/s`);
  const commitRuns: Array<{ jobs: number; batched: number }> = [];
  for (let i = 0; i < RUNS; i++) commitRuns.push(await commitJobRate(resources.slice(0, QUICK ? 1000 : 3000)));
  const commitJobs = median(commitRuns.map((r) => r.jobs));
  const commitBatched = median(commitRuns.map((r) => r.batched));
  say(`  integrity jobs (IntegrityLog.commit, 8 concurrent): ${fmt(commitJobs)}/s; batched commitVersions(100): ${fmt(commitBatched)}/s`);
  const backlog = QUICK ? 20_000 : 100_000;
  const appends = await repeat(() => appendRate(backlog));
  say(`  appends (sequencing a backlog of ${fmt(backlog)}): ${fmt(appends)} leaves/s`);
  const endToEnd = await repeat(() => commitAndSequenceRate(resources.slice(0, QUICK ? 1000 : 3000)));
  say(`  commit + sequence end to end: ${fmt(endToEnd)}/s`);
  const sizes = QUICK ? [1_000, 100_000] : [1_000, 100_000, 1_000_000];
  const proofs = await proofsAtScale(sizes, QUICK ? 300 : 2000);
  for (const p of proofs) say(`  proofs at ${fmt(p.size)}: generate median ${ms(p.genMedian)} ms (p99 ${ms(p.genP99)}, cold ${ms(p.genColdMedian)}), verify ${ms(p.verifyMedian)} ms, tlog-proof verify ${ms(p.tlogVerifyMedian)} ms`);
  const gasResult = gas ?? (await runGas());
  const at1e6 = proofs.find((p) => p.size === 1_000_000);
  const gas10k = gasResult.perRecord.get(10_000);

  const p1e5 = proofs.find((p) => p.size === 100_000);
  const meaning = [
    `Sequencing is not the bottleneck: the log appends ${fmt(appends)} leaves/s from a backlog (${(appends / 2000).toFixed(1)}× the 2,000/s target),`,
    `because a whole batch is one transaction with O(log n) tile reads. What limits the integrity stage is the per-version job: ${fmt(commitJobs)} jobs/s`,
    `when every version is its own job (a re-read, a JCS + SHA-256 commitment and a one-row INSERT each), against ${fmt(commitBatched)}/s when 100 versions`,
    `share one insert; and computing a commitment costs ${ms(1000 / commitCpu)} ms of CPU, ${ratio(shaResource, commitCpu)}× a plain SHA-256 of the same JSON (RFC 8785`,
    `canonicalisation in JavaScript and @noble/hashes instead of node:crypto).`,
    `Proof generation grows with log n as designed (${proofs.map((p) => `${p.proofHashes} hashes at ${fmt(p.size)}`).join(', ')}); its time is dominated by one`,
    `PostgreSQL round trip for the tiles not in the cache (the right-edge partial tiles are never cached)${at1e6 ? `, and at 10^6 leaves the median is ${ms(at1e6.genMedian)} ms (${at1e6.genMedian < 2 ? 'within' : 'outside'} the 2 ms target)` : p1e5 ? `, ${ms(p1e5.genMedian)} ms at 10^5` : ''}.`,
    `Verifying a proof is microseconds for the path and about a millisecond with the Ed25519 checkpoint signature. On chain, one checkpoint costs the same gas`,
    `whatever its size, so the cost per record falls linearly with batch size${gas10k !== undefined ? ` (${gas10k.toFixed(2)} gas per record at 10,000)` : ''}.`,
  ].join(' ');
  const summary = `Integrity: appends ${fmt(appends)}/s (target ≥ 2,000: ${appends >= 2000 ? 'met' : 'not met'}); proof generation ${at1e6 ? `${ms(at1e6.genMedian)} ms median at 10^6 leaves (target < 2 ms: ${at1e6.genMedian < 2 ? 'met' : 'not met'})` : 'not measured at 10^6 (quick run)'}; gas ${gas10k !== undefined ? gas10k.toFixed(2) : 'n/a'} per record at 10,000-record checkpoints (target < 100: ${gas10k !== undefined && gas10k < 100 ? 'met' : 'not met'}).`;

  const markdown = `## Integrity

Commitments are computed over real Synthea resources (${fmt(resources.length)} entries, mean ${fmt(meanBytes)} bytes of JSON).
PostgreSQL measurements each use a fresh schema. Medians of ${RUNS} runs unless stated.

| measured | median | target | | baseline (same run) | ratio |
|---|---:|---|---|---|---:|
| commitments/s, CPU only (32-byte salt, RFC 8785 JCS, SHA-256 via @noble/hashes) | ${fmt(commitCpu)} | | | SHA-256 of the same resources' JSON (node:crypto, incl. JSON.stringify) ${fmt(shaResource)}/s | ${ratio(commitCpu, shaResource)} |
| integrity jobs/s (\`IntegrityLog.commit\`: re-read version + commit + insert pending; 8 concurrent) | ${fmt(commitJobs)} | | | | |
| commitments/s batched (\`commitVersions\`, 100 per insert) | ${fmt(commitBatched)} | | | | |
| **appends/s** (sequencing a backlog of ${fmt(backlog)} pending leaves, 10,000 per signed checkpoint) | ${fmt(appends)} | ≥ 2,000 | ${appends >= 2000 ? 'met' : 'not met'} | SHA-256 of a 33-byte leaf input (node:crypto) ${fmt(shaLeaf)}/s | ${ratio(appends, shaLeaf)} |
| commit + sequence end to end (8 concurrent single-version commits, N = 512, T = 1 s) | ${fmt(endToEnd)} | | | | |

Inclusion proofs from PostgreSQL tiles through \`IntegrityLog.proveInclusion\` (the production path, with its tile cache
of 1,024 full tiles), ${QUICK ? 300 : 2000} random leaves per size after 50 "cold" proofs from an empty cache; verification is
the RFC 9162 path check alone, and the full C2SP tlog-proof check (parse, Ed25519 checkpoint signature, path):

| leaves | log built in | proof hashes | generate median (ms) | generate p99 (ms) | generate, cold cache median (ms) | verify path (ms) | verify tlog-proof incl. signature (ms) | consistency proof median (ms) |
|---:|---:|---:|---:|---:|---:|---:|---:|---:|
${proofs.map((p) => `| ${fmt(p.size)} | ${p.buildSeconds.toFixed(1)} s | ${p.proofHashes} | ${ms(p.genMedian)} | ${ms(p.genP99)} | ${ms(p.genColdMedian)} | ${ms(p.verifyMedian)} | ${ms(p.tlogVerifyMedian)} | ${ms(p.consistencyMedian)} |`).join('\n')}

Target: proof generation < 2 ms at 10^6 leaves: ${at1e6 ? `${at1e6.genMedian < 2 ? 'met' : 'not met'} (median ${ms(at1e6.genMedian)} ms, p99 ${ms(at1e6.genP99)} ms)` : 'not measured in this run (BENCH_QUICK)'}.
The ${sizes.length > 2 ? '10^5 and 10^6' : '10^5'} logs were built in bulk through the sequencer's own tile writes (\`appendLeafHashes\` +
\`tileAppendsFor\` + \`appendTiles\`/\`setState\`/\`insertCheckpoint\` under the log lock, 100,000 synthetic leaves per transaction,
no commitment rows: a proof reads only tiles and the checkpoint); build times are in the table.

${gasResult.markdown}

Target: gas per record < 100 at 10,000-record checkpoints: ${gas10k !== undefined ? `${gas10k < 100 ? 'met' : 'not met'} (${gas10k.toFixed(2)} gas per record)` : 'n/a'}.

**What this means.** ${meaning}
`;
  return { title: 'Integrity', markdown, summary };
}

if (isMain(import.meta.url)) {
  say(`integrity benchmarks: ${RUNS} runs each, medians`);
  const section = await runIntegrity();
  say(section.markdown);
  process.exit(0);
}
