/**
 * The built-in log anchor (`kind: 'log'`, always on): records each signed checkpoint in PostgreSQL
 * (`checkpoint` table). Its receipt is the stored signed checkpoint. It refuses a different root at a
 * recorded size and a size below the largest recorded one, so the stored checkpoints form one
 * append-only history that the audit checks with consistency proofs.
 *
 * @packageDocumentation
 */
import type { AnchorCheckpoint, AnchorReceipt, AnchorVerification, LedgerAnchor } from '../anchor.js';
import { AnchorConflictError, AnchorInputError } from '../anchor.js';
import { openCheckpoint } from '../checkpoint.js';
import { bytesEqual, encodeBase64 } from '../encoding.js';
import type { NoteVerifier } from '../note.js';
import type { Clock } from '../../platform/clock.js';
import type { IntegrityStore } from '../../store/integrity-types.js';
import { LOG_ANCHOR_KIND, logAnchorReceipt, verifyLogAnchorReceipt } from './log-receipt.js';

/** Options of {@link LogAnchor}. */
export interface LogAnchorOptions {
  readonly store: Pick<IntegrityStore, 'checkpointAt' | 'latestCheckpoint' | 'putCheckpoint' | 'ping'>;
  readonly clock: Clock;
  /** The log's verifier key(s): only checkpoints they sign are recorded. */
  readonly verifiers: readonly NoteVerifier[];
  /** Instance name (default `log`). */
  readonly name?: string;
}

/** The built-in PostgreSQL log anchor. */
export class LogAnchor implements LedgerAnchor {
  readonly kind = LOG_ANCHOR_KIND;
  readonly name: string;

  /** @param options - store, clock, verifier keys. */
  constructor(private readonly options: LogAnchorOptions) {
    this.name = options.name ?? LOG_ANCHOR_KIND;
  }

  /** {@inheritDoc LedgerAnchor.anchor} */
  async anchor(checkpoint: AnchorCheckpoint): Promise<AnchorReceipt> {
    let opened;
    try {
      opened = openCheckpoint(checkpoint.signedNote, checkpoint.origin, this.options.verifiers).checkpoint;
    } catch (err) {
      throw new AnchorInputError(`checkpoint is not signed by the log: ${(err as Error).message}`);
    }
    if (opened.size !== checkpoint.size || !bytesEqual(opened.rootHash, checkpoint.rootHash)) {
      throw new AnchorInputError('signed note does not match the checkpoint size and root');
    }
    const { store } = this.options;
    const existing = await store.checkpointAt(checkpoint.size);
    if (existing === undefined) {
      const latest = await store.latestCheckpoint();
      if (latest !== undefined && latest.size > checkpoint.size) {
        throw new AnchorConflictError(`checkpoint size ${checkpoint.size} is below the recorded size ${latest.size}`);
      }
    }
    const stored =
      existing ??
      (await store.putCheckpoint({
        size: checkpoint.size,
        rootHash: checkpoint.rootHash,
        signedNote: checkpoint.signedNote,
        createdAt: this.options.clock.now(),
      }));
    if (!bytesEqual(stored.rootHash, checkpoint.rootHash)) {
      throw new AnchorConflictError(`a different root is recorded at size ${checkpoint.size}: ${encodeBase64(stored.rootHash)}`);
    }
    return logAnchorReceipt(this.name, { ...checkpoint, signedNote: stored.signedNote }, stored.createdAt);
  }

  /** {@inheritDoc LedgerAnchor.verify} */
  async verify(checkpoint: AnchorCheckpoint, receipt: AnchorReceipt): Promise<AnchorVerification> {
    const offline = verifyLogAnchorReceipt(checkpoint, receipt, this.options.verifiers);
    if (!offline.valid) return offline;
    if (receipt.anchor !== this.name) return { valid: false, reason: `receipt is from anchor ${JSON.stringify(receipt.anchor)}` };
    const stored = await this.options.store.checkpointAt(checkpoint.size);
    if (stored === undefined) return { valid: false, reason: `no checkpoint of size ${checkpoint.size} is recorded` };
    if (!bytesEqual(stored.rootHash, checkpoint.rootHash) || stored.signedNote !== receipt.evidence.checkpoint) {
      return { valid: false, reason: 'the recorded checkpoint differs from the receipt' };
    }
    return { valid: true };
  }

  /** {@inheritDoc LedgerAnchor.ping} */
  async ping(): Promise<void> {
    await this.options.store.ping();
  }

  /** Nothing to close: the store is owned by the caller. */
  async close(): Promise<void> {}
}
