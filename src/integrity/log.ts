/**
 * The integrity log: commits stored versions, sequences them into an RFC 9162 Merkle log kept in
 * PostgreSQL as C2SP tlog-tiles, signs a C2SP checkpoint after every batch, hands checkpoints to the
 * ledger anchors, and serves inclusion and consistency proofs.
 *
 * Two phases, so that committing is cheap and sequencing is serialised:
 * 1. {@link IntegrityLog.commit} (the `integrity` job) re-reads the version through the
 *    `ResourceStore`, computes `SHA-256(salt ‖ JCS(version))` with a fresh salt and inserts it as
 *    *pending*. The primary key (type, id, version) means a version is committed at most once.
 * 2. {@link IntegrityLog.flush} (every `batchLeaves` local commits or every `batchIntervalMs`,
 *    whichever comes first, in every process) locks the single `log_state` row, takes the pending
 *    commitments oldest first, gives them the next leaf indices, writes the new tile entries (O(log n)
 *    reads of the old tree's frontier plus the new hashes), moves the head and stores the signed
 *    checkpoint, all in one transaction. The row lock serialises sequencers across processes, so
 *    leaf indices are dense and unique.
 *
 * Only origin, size and root ever leave the process (to anchors); never a record or an identifier.
 *
 * @see https://www.rfc-editor.org/rfc/rfc9162 (Merkle tree)
 * @see https://c2sp.org/tlog-tiles, https://c2sp.org/tlog-checkpoint, https://c2sp.org/tlog-proof
 * @packageDocumentation
 */
import { Counter, Gauge, type Registry } from 'prom-client';
import type { AnchorReceipt, LedgerAnchor } from './anchor.js';
import { LogAnchor } from './anchors/log.js';
import { signCheckpoint } from './checkpoint.js';
import { computeCommitment, newSalt, type RandomBytes } from './commitment.js';
import { bytesEqual } from './encoding.js';
import type { LogKey } from './keys.js';
import {
  HASH_SIZE,
  TILE_HEIGHT,
  TILE_WIDTH,
  TileHashReader,
  appendLeafHashes,
  leafHash,
  newTiles,
  proveConsistency,
  proveInclusion,
  treeHash,
  type HashReader,
  type StoredHash,
  type Tile,
} from './merkle.js';
import { parseVerifierKey, type NoteVerifier } from './note.js';
import { formatTlogProof, verifyTlogProof } from './proof.js';
import { committedValue } from './record.js';
import { CachedTileHashReader, DEFAULT_TILE_CACHE_TILES } from './tile-cache.js';
import type { Clock } from '../platform/clock.js';
import type { Logger } from '../platform/logger.js';
import type {
  CheckpointRecord,
  CommitmentRecord,
  IntegrityStore,
  NewCommitment,
  SequencerTransaction,
  TileAppend,
  VersionKey,
} from '../store/integrity-types.js';
import type { ResourceStore, StoredVersion } from '../store/types.js';

/** Default N: sequence as soon as this many versions were committed by this process (leaves). */
export const DEFAULT_BATCH_LEAVES = 512;
/** Default T: sequence pending commitments at least this often (ms); bounds the wait for a receipt. */
export const DEFAULT_BATCH_INTERVAL_MS = 1000;
/**
 * Most leaves per sequencing transaction (and so per checkpoint). Bounds the transaction's size and
 * lock time (about 20 ms per 10,000 leaves); a larger backlog is sequenced in several checkpoints.
 */
export const DEFAULT_MAX_LEAVES_PER_CHECKPOINT = 10_000;

/** Options of {@link IntegrityLog}. */
export interface IntegrityLogOptions {
  readonly store: IntegrityStore;
  /** Where committed versions are read (re-read inside the job, never taken from the queue). */
  readonly resources: Pick<ResourceStore, 'readVersion'>;
  readonly clock: Clock;
  readonly logger: Logger;
  /** Log origin (C2SP tlog-checkpoint), e.g. `fhir-anchor.example.org/log`; the key's name. */
  readonly origin: string;
  /** The log's signing key (see `loadLogKey`). */
  readonly key: LogKey;
  /** N: sequence after this many local commits (default {@link DEFAULT_BATCH_LEAVES}). */
  readonly batchLeaves?: number;
  /** T: sequence at least this often, in ms (default {@link DEFAULT_BATCH_INTERVAL_MS}). */
  readonly batchIntervalMs?: number;
  /** Most leaves per checkpoint (default {@link DEFAULT_MAX_LEAVES_PER_CHECKPOINT}). */
  readonly maxLeavesPerCheckpoint?: number;
  /** Further ledger anchors (e.g. EVM); the built-in log anchor is always on. */
  readonly anchors?: readonly LedgerAnchor[];
  /** Metrics registry (prom-client); metrics are skipped when absent. */
  readonly registry?: Registry;
  /** Full tiles cached in memory for proofs (16 KiB each; default 1024; 0 disables). */
  readonly tileCacheTiles?: number;
  /** CSPRNG for salts; inject only in tests. */
  readonly random?: RandomBytes;
}

/** Result of {@link IntegrityLog.commit}. */
export type CommitOutcome =
  | { readonly status: 'committed' | 'duplicate'; readonly key: VersionKey }
  /** No such version in the store (the job is stale or wrong); nothing committed. */
  | { readonly status: 'not-found'; readonly key: VersionKey };

/** Result of {@link IntegrityLog.flush}. */
export interface FlushResult {
  /** Leaves appended by this call. */
  readonly appended: number;
  /** The newest checkpoint written by this call, if any. */
  readonly checkpoint: CheckpointRecord | undefined;
}

/** Where a version stands in the log. */
export type VersionProof =
  /** No commitment yet (the integrity job has not run). */
  | { readonly status: 'uncommitted' }
  /** Committed, waiting for the next checkpoint. */
  | { readonly status: 'pending'; readonly commitment: CommitmentRecord }
  | {
      readonly status: 'included';
      readonly commitment: CommitmentRecord & { readonly leafIndex: number };
      /** The checkpoint the proof is relative to (the latest). */
      readonly checkpoint: CheckpointRecord;
      readonly inclusionProof: Uint8Array[];
      /** C2SP tlog-proof@v1 text. */
      readonly tlogProof: string;
      /** Whether the proof verifies against the signed checkpoint (false means stored hashes were altered). */
      readonly proofValid: boolean;
      /** Receipts of every anchor that recorded this checkpoint. */
      readonly anchorReceipts: AnchorReceipt[];
    };

/** Raised when the stored log contradicts itself (tampering or corruption); never retried silently. */
export class LogIntegrityError extends Error {
  override readonly name = 'LogIntegrityError';
}

function counter(registry: Registry | undefined, name: string, help: string, labelNames: string[] = []): Counter<string> | undefined {
  if (!registry) return undefined;
  const existing = registry.getSingleMetric(name);
  return (existing as Counter<string> | undefined) ?? new Counter({ name, help, labelNames, registers: [registry] });
}

function gauge(registry: Registry | undefined, name: string, help: string): Gauge | undefined {
  if (!registry) return undefined;
  const existing = registry.getSingleMetric(name);
  return (existing as Gauge | undefined) ?? new Gauge({ name, help, registers: [registry] });
}

/**
 * Turns the stored hashes of an append into tile appends (entries of tree levels 0, 8, 16, …) and
 * checks them against the tiles C2SP tlog-tiles says must grow from `oldSize` to `newSize`.
 */
export function tileAppendsFor(storedHashes: readonly StoredHash[], oldSize: number, newSize: number): TileAppend[] {
  const byTile = new Map<string, { level: number; index: number; first: number; hashes: Uint8Array[] }>();
  for (const h of storedHashes) {
    if (h.level % TILE_HEIGHT !== 0) continue;
    const level = h.level / TILE_HEIGHT;
    const index = Math.floor(h.n / TILE_WIDTH);
    const key = `${level}/${index}`;
    let t = byTile.get(key);
    if (!t) {
      t = { level, index, first: h.n % TILE_WIDTH, hashes: [] };
      byTile.set(key, t);
    }
    if (h.n % TILE_WIDTH !== t.first + t.hashes.length) throw new LogIntegrityError('merkle: tile entries out of order');
    t.hashes.push(h.hash);
  }
  const expected: Tile[] = newTiles(oldSize, newSize);
  if (expected.length !== byTile.size) throw new LogIntegrityError('merkle: unexpected tile set for append');
  return expected.map((tile) => {
    const t = byTile.get(`${tile.level}/${tile.index}`);
    if (!t || t.first + t.hashes.length !== tile.width) throw new LogIntegrityError('merkle: unexpected tile width for append');
    const data = new Uint8Array(t.hashes.length * HASH_SIZE);
    t.hashes.forEach((h, i) => data.set(h, i * HASH_SIZE));
    return { level: tile.level, index: tile.index, oldWidth: t.first, width: tile.width, data };
  });
}

/** The integrity log of one fhir-anchor deployment (one per process; all share the database). */
export class IntegrityLog {
  readonly origin: string;
  /** The published verifier key (C2SP signed-note vkey). */
  readonly verifierKey: string;
  readonly verifiers: readonly NoteVerifier[];
  readonly batchIntervalMs: number;
  private readonly batchLeaves: number;
  private readonly maxLeaves: number;
  private readonly logAnchor: LogAnchor;
  private readonly anchors: readonly LedgerAnchor[];
  private readonly reader: HashReader;
  private localPending = 0;
  private current: Promise<unknown> = Promise.resolve();
  private queued: Promise<FlushResult> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly anchoring = new Set<string>();
  private readonly leavesTotal: Counter<string> | undefined;
  private readonly sizeGauge: Gauge | undefined;
  private readonly anchorFailures: Counter<string> | undefined;

  /** @param options - see {@link IntegrityLogOptions}. */
  constructor(private readonly options: IntegrityLogOptions) {
    if (options.key.signer.name !== options.origin) throw new Error('the log key name must equal the origin');
    this.origin = options.origin;
    this.verifierKey = options.key.verifierKey;
    this.verifiers = [parseVerifierKey(options.key.verifierKey)];
    this.batchLeaves = Math.max(1, options.batchLeaves ?? DEFAULT_BATCH_LEAVES);
    this.batchIntervalMs = Math.max(1, options.batchIntervalMs ?? DEFAULT_BATCH_INTERVAL_MS);
    this.maxLeaves = Math.max(1, options.maxLeavesPerCheckpoint ?? DEFAULT_MAX_LEAVES_PER_CHECKPOINT);
    this.logAnchor = new LogAnchor({ store: options.store, clock: options.clock, verifiers: this.verifiers });
    this.anchors = [this.logAnchor, ...(options.anchors ?? [])];
    this.reader = new CachedTileHashReader({ readTiles: (tiles) => options.store.readTiles(tiles) }, options.tileCacheTiles ?? DEFAULT_TILE_CACHE_TILES);
    this.leavesTotal = counter(options.registry, 'fhir_anchor_integrity_leaves_total', 'Leaves appended to the integrity log by this process');
    this.sizeGauge = gauge(options.registry, 'fhir_anchor_integrity_log_size', 'Size of the integrity log at the last checkpoint written by this process');
    this.anchorFailures = counter(options.registry, 'fhir_anchor_integrity_anchor_failures_total', 'Failed attempts to anchor a checkpoint', ['anchor']);
  }

  /**
   * Ensures a signed checkpoint exists (one of the current head; size 0 on a new log) and starts
   * the interval timer. Call once per process after migrations.
   */
  async start(): Promise<void> {
    if ((await this.options.store.latestCheckpoint()) === undefined) {
      await this.options.store.sequence(async (tx) => {
        if (tx.state.size !== 0) return undefined; // a head without a checkpoint: the next flush signs one
        await this.writeCheckpoint(tx, 0, tx.state.rootHash);
        return true;
      }).catch((err: unknown) => {
        // Another process signed it first (unique size): fine.
        this.options.logger.debug({ err: (err as Error).message }, 'initial checkpoint not written');
      });
    }
    if (this.timer === undefined) {
      this.timer = setInterval(() => void this.tick(), this.batchIntervalMs);
      this.timer.unref();
    }
  }

  /** Stops the timer and sequences what this process committed. Anchors are not closed (the caller owns them). */
  async stop(): Promise<void> {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    await this.flush().catch((err: unknown) => this.options.logger.error({ err: (err as Error).message }, 'final integrity flush failed'));
  }

  private async tick(): Promise<void> {
    try {
      if (this.localPending > 0 || (await this.options.store.hasPending())) await this.flush();
      else await this.catchUpAnchors();
    } catch (err) {
      this.options.logger.error({ err: (err as Error).message }, 'integrity log flush failed');
    }
  }

  /**
   * An anchor that failed (e.g. its chain was down) is retried on the next tick even when no new
   * checkpoint is written, so anchoring catches up as soon as the anchor is back.
   */
  private async catchUpAnchors(): Promise<void> {
    if (this.anchors.length === 0) return;
    const latest = await this.options.store.latestCheckpoint();
    if (!latest || latest.size === 0) return;
    const have = new Set((await this.options.store.anchorReceipts(latest.size)).map((r) => r.anchor));
    if (this.anchors.every((a) => have.has(a.name))) return;
    await this.anchorLatest(latest, have);
  }

  /**
   * Commits one stored version (the `integrity` job's work). Re-reads the version, so a stale or
   * repeated job commits nothing new.
   *
   * @param key - the version.
   * @returns whether it was committed now, was committed before, or does not exist.
   */
  async commit(key: VersionKey): Promise<CommitOutcome> {
    const version = await this.options.resources.readVersion(key.resourceType, key.id, key.versionId);
    if (version === undefined) return { status: 'not-found', key };
    const [outcome] = await this.commitVersions([version]);
    return outcome as CommitOutcome;
  }

  /**
   * Commits versions already read from the store (one insert for all).
   *
   * @param versions - versions exactly as `ResourceStore.readVersion` returns them.
   * @returns one outcome per version, in order.
   */
  async commitVersions(versions: readonly StoredVersion[]): Promise<CommitOutcome[]> {
    const rows: NewCommitment[] = versions.map((v) => {
      const salt = newSalt(this.options.random);
      return { resourceType: v.resourceType, id: v.id, versionId: v.versionId, salt, commitment: computeCommitment(committedValue(v), salt) };
    });
    const inserted = await this.options.store.insertCommitments(rows, this.options.clock.now());
    const keys = new Set(inserted.map((k) => `${k.resourceType}/${k.id}/${k.versionId}`));
    this.localPending += inserted.length;
    if (this.localPending >= this.batchLeaves) {
      this.flush().catch((err: unknown) => this.options.logger.error({ err: (err as Error).message }, 'integrity log flush failed'));
    }
    return rows.map((r) => {
      const key = { resourceType: r.resourceType, id: r.id, versionId: r.versionId };
      return { status: keys.has(`${r.resourceType}/${r.id}/${r.versionId}`) ? 'committed' : 'duplicate', key };
    });
  }

  /**
   * Sequences every pending commitment (of any process) into the log, one checkpoint per
   * `maxLeavesPerCheckpoint` leaves, then anchors the newest checkpoint. Calls in one process are
   * serialised and coalesced.
   *
   * @returns leaves appended and the newest checkpoint written.
   */
  flush(): Promise<FlushResult> {
    if (this.queued) return this.queued;
    const run = this.current.then(async () => {
      this.queued = undefined;
      return this.flushAll();
    });
    this.queued = run;
    this.current = run.catch(() => undefined);
    return run;
  }

  private async flushAll(): Promise<FlushResult> {
    this.localPending = 0;
    let appended = 0;
    let checkpoint: CheckpointRecord | undefined;
    for (;;) {
      const r = await this.options.store.sequence((tx) => this.sequenceBatch(tx));
      if (r === undefined) break;
      appended += r.appended;
      checkpoint = r.checkpoint;
      if (r.appended < this.maxLeaves) break;
    }
    if (checkpoint) {
      this.leavesTotal?.inc(appended);
      this.sizeGauge?.set(checkpoint.size);
      await this.anchorLatest(checkpoint);
    }
    return { appended, checkpoint };
  }

  private async sequenceBatch(tx: SequencerTransaction): Promise<{ appended: number; checkpoint: CheckpointRecord } | undefined> {
    const pending = await tx.takePending(this.maxLeaves);
    if (pending.length === 0) return undefined;
    const oldSize = tx.state.size;
    const reader = new TileHashReader({ readTiles: (tiles) => tx.readTiles(tiles) });
    // The head must agree with the stored tiles before anything is built on them.
    const oldRoot = await treeHash(oldSize, reader);
    if (!bytesEqual(oldRoot, tx.state.rootHash)) {
      this.options.logger.error({ size: oldSize }, 'integrity log: stored tiles do not match the log head; refusing to append');
      throw new LogIntegrityError(`stored tiles do not match the log head at size ${oldSize}`);
    }
    const { storedHashes, rootHash, size } = await appendLeafHashes(oldSize, pending.map((p) => leafHash(p.commitment)), reader);
    await tx.appendTiles(tileAppendsFor(storedHashes, oldSize, size));
    const now = this.options.clock.now();
    await tx.assignLeaves(pending.map((key, i) => ({ key, leafIndex: oldSize + i })), now);
    await tx.setState(size, rootHash, now);
    const checkpoint = await this.writeCheckpoint(tx, size, rootHash);
    return { appended: pending.length, checkpoint };
  }

  private async writeCheckpoint(tx: SequencerTransaction, size: number, rootHash: Uint8Array): Promise<CheckpointRecord> {
    const signedNote = signCheckpoint({ origin: this.origin, size, rootHash }, this.options.key.signer);
    const record: CheckpointRecord = { size, rootHash, signedNote, createdAt: this.options.clock.now() };
    await tx.insertCheckpoint(record);
    return record;
  }

  /** Hands the checkpoint to every anchor not already busy; failures are logged and retried next time. */
  private async anchorLatest(cp: CheckpointRecord, done: ReadonlySet<string> = new Set()): Promise<void> {
    const input = { origin: this.origin, size: cp.size, rootHash: cp.rootHash, signedNote: cp.signedNote };
    await Promise.all(
      this.anchors.map(async (anchor) => {
        if (this.anchoring.has(anchor.name) || done.has(anchor.name)) return;
        this.anchoring.add(anchor.name);
        try {
          const receipt = await anchor.anchor(input);
          await this.options.store.putAnchorReceipt(anchor.name, cp.size, receipt, this.options.clock.now());
        } catch (err) {
          this.anchorFailures?.inc({ anchor: anchor.name });
          this.options.logger.warn({ anchor: anchor.name, size: cp.size, err: (err as Error).message }, 'anchoring a checkpoint failed');
        } finally {
          this.anchoring.delete(anchor.name);
        }
      }),
    );
  }

  /** The newest signed checkpoint, if any. */
  latestCheckpoint(): Promise<CheckpointRecord | undefined> {
    return this.options.store.latestCheckpoint();
  }

  /** The signed checkpoint of exactly `size` leaves, if one was written. */
  checkpointAt(size: number): Promise<CheckpointRecord | undefined> {
    return this.options.store.checkpointAt(size);
  }

  /** Receipts of the anchors that recorded the checkpoint of `size`. */
  async anchorReceipts(size: number): Promise<AnchorReceipt[]> {
    return (await this.options.store.anchorReceipts(size)).map((r) => r.receipt as AnchorReceipt);
  }

  /**
   * RFC 9162 inclusion proof from stored tiles (one query).
   *
   * @param leafIndex - the leaf.
   * @param size - tree size (> leafIndex, ≤ the log's size).
   */
  proveInclusion(leafIndex: number, size: number): Promise<Uint8Array[]> {
    return proveInclusion(size, leafIndex, this.reader);
  }

  /**
   * RFC 9162 consistency proof from stored tiles (one query).
   *
   * @param from - older size.
   * @param to - newer size (≤ the log's size).
   */
  proveConsistency(from: number, to: number): Promise<Uint8Array[]> {
    return proveConsistency(from, to, this.reader);
  }

  /** Current head (may be ahead of the newest checkpoint only inside a sequencing transaction). */
  async size(): Promise<number> {
    return (await this.options.store.logState()).size;
  }

  /**
   * Where a version stands: uncommitted, pending, or included with a tlog-proof against the newest
   * checkpoint and the anchor receipts for that checkpoint.
   *
   * @param key - the version.
   */
  async proofFor(key: VersionKey): Promise<VersionProof> {
    const commitment = await this.options.store.getCommitment(key);
    if (commitment === undefined) return { status: 'uncommitted' };
    const checkpoint = await this.options.store.latestCheckpoint();
    const leafIndex = commitment.leafIndex;
    if (leafIndex === undefined || checkpoint === undefined || leafIndex >= checkpoint.size) return { status: 'pending', commitment };
    const inclusionProof = await this.proveInclusion(leafIndex, checkpoint.size);
    const tlogProof = formatTlogProof({ index: leafIndex, inclusionProof, checkpoint: checkpoint.signedNote });
    let proofValid = true;
    try {
      verifyTlogProof(tlogProof, leafHash(commitment.commitment), this.origin, this.verifiers);
    } catch (err) {
      proofValid = false;
      this.options.logger.error(
        { resourceType: key.resourceType, id: key.id, versionId: key.versionId, leafIndex, size: checkpoint.size, err: (err as Error).message },
        'integrity log: a generated inclusion proof does not verify (stored hashes altered?)',
      );
    }
    const anchorReceipts = await this.anchorReceipts(checkpoint.size);
    return { status: 'included', commitment: { ...commitment, leafIndex }, checkpoint, inclusionProof, tlogProof, proofValid, anchorReceipts };
  }

  /**
   * Readiness: throws when commitments have waited far longer than the batch interval (the
   * sequencer is stuck or failing).
   *
   * @param maxWaitMs - tolerated age of the oldest pending commitment (default 10·T + 60 s).
   */
  async checkReady(maxWaitMs = this.batchIntervalMs * 10 + 60_000): Promise<void> {
    const { oldest } = await this.options.store.pendingStats();
    if (oldest !== undefined && this.options.clock.now().getTime() - oldest.getTime() > maxWaitMs) {
      throw new Error(`integrity log: commitments have waited more than ${maxWaitMs} ms for a checkpoint`);
    }
  }
}
