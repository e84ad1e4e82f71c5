/**
 * Ledger anchors: where signed checkpoints are recorded so that anyone can later check that a
 * checkpoint (and so every record under its root) existed no later than the anchor's time.
 *
 * Only the checkpoint's origin, tree size and root hash ever leave the process — never a record,
 * never an identifier. Each anchor kind is configured and switched on independently and passes the
 * shared conformance suite (test/integrity/anchor-conformance.ts).
 */

/** What an anchor receives: the public facts of one signed checkpoint. */
export interface AnchorCheckpoint {
  /** The log's origin line (C2SP tlog-checkpoint). */
  readonly origin: string;
  /** Number of leaves. */
  readonly size: number;
  /** RFC 9162 root hash (32 bytes). */
  readonly rootHash: Uint8Array;
  /** The full signed checkpoint note text, for anchors that store it (the built-in log). */
  readonly signedNote: string;
}

/** A receipt: JSON-serialisable evidence that an anchor recorded a checkpoint. */
export interface AnchorReceipt {
  /** Anchor kind, e.g. `log` (the built-in log) or `evm`. */
  readonly kind: string;
  /** Anchor instance name from config (several EVM chains may be configured). */
  readonly anchor: string;
  readonly size: number;
  /** Hex root hash. */
  readonly rootHash: string;
  /** When the anchor says the checkpoint was recorded (ISO 8601). */
  readonly anchoredAt: string;
  /** Kind-specific evidence (e.g. chain id, contract, tx hash, block number/hash/timestamp). */
  readonly evidence: Readonly<Record<string, string | number>>;
}

export type AnchorVerification = { readonly valid: true } | { readonly valid: false; readonly reason: string };

export interface LedgerAnchor {
  readonly kind: string;
  readonly name: string;
  /** Records the checkpoint; idempotent for the same (size, root). */
  anchor(checkpoint: AnchorCheckpoint): Promise<AnchorReceipt>;
  /** Checks a receipt against the anchor (e.g. reads the chain) and against the checkpoint. */
  verify(checkpoint: AnchorCheckpoint, receipt: AnchorReceipt): Promise<AnchorVerification>;
  /** Throws when the anchor does not answer (readiness). */
  ping(): Promise<void>;
  close(): Promise<void>;
}

/**
 * Raised by {@link LedgerAnchor.anchor} when a checkpoint contradicts what the anchor already holds:
 * a different root at an anchored size, or a size below the largest anchored one (a log never shrinks).
 * Retrying cannot fix it; it is evidence of a forked or rolled-back log.
 */
export class AnchorConflictError extends Error {
  override readonly name = 'AnchorConflictError';
}

/** Raised by {@link LedgerAnchor.anchor} for a checkpoint that is malformed or not signed by the log. */
export class AnchorInputError extends Error {
  override readonly name = 'AnchorInputError';
}
