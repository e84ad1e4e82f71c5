/**
 * The integrity stage's storage interface: commitments, the Merkle log's tiles and head, signed
 * checkpoints and anchor receipts. Implemented by {@link PgIntegrityStore} (src/store/integrity-store.ts);
 * the Merkle and signing logic lives in src/integrity and never sees SQL.
 *
 * Byte values are `Uint8Array`s (32-byte hashes and salts); sizes and leaf indices are safe integers.
 */

/** Identifies one stored version (`/{resourceType}/{id}/_history/{versionId}`). */
export interface VersionKey {
  readonly resourceType: string;
  readonly id: string;
  /** Decimal version number, as in `meta.versionId`. */
  readonly versionId: string;
}

/** A commitment to write (before sequencing). */
export interface NewCommitment extends VersionKey {
  /** 32 random bytes. */
  readonly salt: Uint8Array;
  /** SHA-256(salt ‖ JCS(version)), 32 bytes. */
  readonly commitment: Uint8Array;
}

/** A stored commitment. */
export interface CommitmentRecord extends NewCommitment {
  /** Leaf index in the Merkle log; `undefined` while pending (not yet sequenced). */
  readonly leafIndex: number | undefined;
  readonly createdAt: Date;
  readonly sequencedAt: Date | undefined;
}

/** A pending commitment handed to the sequencer, oldest first. */
export interface PendingLeaf extends VersionKey {
  readonly commitment: Uint8Array;
}

/** The log head. */
export interface LogState {
  /** Tree size in leaves. */
  readonly size: number;
  /** RFC 9162 root of the tree of `size` leaves. */
  readonly rootHash: Uint8Array;
  readonly updatedAt: Date;
}

/** A C2SP tlog-tiles tile address with the width wanted (as merkle.ts's `Tile`). */
export interface TileAddress {
  readonly level: number;
  readonly index: number;
  readonly width: number;
}

/** Entries appended to a tile: `data` (whole 32-byte hashes) goes at entry `oldWidth`. */
export interface TileAppend {
  readonly level: number;
  readonly index: number;
  /** Width before this append (0 = new tile). */
  readonly oldWidth: number;
  /** Width after this append. */
  readonly width: number;
  /** The new entries only, `(width − oldWidth) × 32` bytes. */
  readonly data: Uint8Array;
}

/** A stored tile. */
export interface TileRecord {
  readonly level: number;
  readonly index: number;
  readonly width: number;
  readonly data: Uint8Array;
}

/** A signed checkpoint as stored. */
export interface CheckpointRecord {
  readonly size: number;
  readonly rootHash: Uint8Array;
  /** The C2SP signed note, verbatim. */
  readonly signedNote: string;
  readonly createdAt: Date;
}

/** An anchor receipt as stored (the receipt itself is JSON). */
export interface AnchorReceiptRecord {
  readonly anchor: string;
  readonly size: number;
  readonly receipt: unknown;
  readonly createdAt: Date;
}

/** One row of the audit sweep: a commitment with the stored version it commits to. */
export interface AuditRow extends CommitmentRecord {
  /** `undefined` when the history row is missing. */
  readonly version:
    | { readonly lastUpdated: Date; readonly deleted: boolean; readonly content: unknown }
    | undefined;
}

/**
 * What a sequencer may do while it holds the log lock (`log_state FOR UPDATE`). Everything runs in
 * one transaction: either the whole batch (tiles, leaf indices, head, checkpoint) is stored, or none.
 */
export interface SequencerTransaction {
  /** The head, read under the lock. */
  readonly state: LogState;
  /** Pending commitments, oldest first, at most `limit`. */
  takePending(limit: number): Promise<PendingLeaf[]>;
  /** Tiles (at least the requested width each), in request order; throws when one is missing. */
  readTiles(tiles: readonly TileAddress[]): Promise<Uint8Array[]>;
  /** Appends entries to tiles; throws when a tile's stored width is not `oldWidth`. */
  appendTiles(appends: readonly TileAppend[]): Promise<void>;
  /** Sets leaf indices of sequenced commitments. */
  assignLeaves(leaves: ReadonlyArray<{ readonly key: VersionKey; readonly leafIndex: number }>, now: Date): Promise<void>;
  /** Moves the head. */
  setState(size: number, rootHash: Uint8Array, now: Date): Promise<void>;
  /** Records a signed checkpoint (fails when one exists at that size). */
  insertCheckpoint(checkpoint: CheckpointRecord): Promise<void>;
}

/** Storage for the integrity stage. All SQL is in src/store/integrity-store.ts. */
export interface IntegrityStore {
  /** Inserts commitments; a version already committed is left unchanged. Returns the keys inserted. */
  insertCommitments(rows: readonly NewCommitment[], now: Date): Promise<VersionKey[]>;
  getCommitment(key: VersionKey): Promise<CommitmentRecord | undefined>;
  /** Whether any commitment awaits sequencing. */
  hasPending(): Promise<boolean>;
  /**
   * Stored versions that have no commitment yet and were stored before `before` (their integrity job
   * was lost, e.g. Redis restarted empty): for the integrity reconciler to re-enqueue.
   */
  uncommittedVersions(before: Date, limit: number): Promise<Array<{ resourceType: string; id: string; versionId: string }>>;
  /** Number of pending commitments and the creation time of the oldest. */
  pendingStats(): Promise<{ readonly count: number; readonly oldest: Date | undefined }>;
  /**
   * Runs `fn` holding the log lock, in one transaction. `fn` returning `undefined` or throwing rolls
   * back; any other value commits.
   */
  sequence<T>(fn: (tx: SequencerTransaction) => Promise<T | undefined>): Promise<T | undefined>;
  logState(): Promise<LogState>;
  /** Tiles (at least the requested width each), in request order; throws when one is missing. */
  readTiles(tiles: readonly TileAddress[]): Promise<Uint8Array[]>;
  /** Tiles of one level after `afterIndex` (exclusive), ascending, at most `limit`. For the audit. */
  listTiles(level: number, afterIndex: number, limit: number): Promise<TileRecord[]>;
  latestCheckpoint(): Promise<CheckpointRecord | undefined>;
  checkpointAt(size: number): Promise<CheckpointRecord | undefined>;
  /** Checkpoints with size > `afterSize`, ascending, at most `limit`. */
  checkpointsAfter(afterSize: number, limit: number): Promise<CheckpointRecord[]>;
  /** Inserts a checkpoint unless one exists at its size; returns the stored row either way. */
  putCheckpoint(checkpoint: CheckpointRecord): Promise<CheckpointRecord>;
  putAnchorReceipt(anchor: string, size: number, receipt: unknown, now: Date): Promise<void>;
  anchorReceipts(size: number): Promise<AnchorReceiptRecord[]>;
  /** Largest checkpoint size an anchor has a receipt for. */
  latestAnchoredSize(anchor: string): Promise<number | undefined>;
  /** Commitments after `after` in key order (with their stored versions), at most `limit`. */
  auditPage(after: VersionKey | undefined, limit: number): Promise<AuditRow[]>;
  getAuditCursor(name: string): Promise<unknown>;
  setAuditCursor(name: string, cursor: unknown, now: Date): Promise<void>;
  ping(): Promise<void>;
  /** Ends the pool if this store owns it. */
  close(): Promise<void>;
}
