/**
 * Receipts of the built-in log anchor (`kind: 'log'`), checked with public data only: the receipt is
 * the stored signed checkpoint itself, so checking it means opening that note with the log's verifier
 * key and comparing origin, size and root with the checkpoint being proven.
 *
 * @see https://c2sp.org/tlog-checkpoint
 * @packageDocumentation
 */
import type { AnchorCheckpoint, AnchorReceipt, AnchorVerification } from '../anchor.js';
import { openCheckpoint } from '../checkpoint.js';
import { bytesEqual, toHex } from '../encoding.js';
import type { NoteVerifier } from '../note.js';

/** The anchor kind of the built-in log. */
export const LOG_ANCHOR_KIND = 'log';

/**
 * Builds a log-anchor receipt for a stored checkpoint.
 *
 * @param name - anchor instance name (normally `log`).
 * @param checkpoint - the checkpoint as stored.
 * @param anchoredAt - when it was stored.
 * @returns the receipt; `evidence.checkpoint` is the signed note verbatim.
 */
export function logAnchorReceipt(name: string, checkpoint: AnchorCheckpoint, anchoredAt: Date): AnchorReceipt {
  return {
    kind: LOG_ANCHOR_KIND,
    anchor: name,
    size: checkpoint.size,
    rootHash: toHex(checkpoint.rootHash),
    anchoredAt: anchoredAt.toISOString(),
    evidence: { origin: checkpoint.origin, checkpoint: checkpoint.signedNote },
  };
}

/**
 * Verifies a log-anchor receipt against a checkpoint without any database or network.
 *
 * @param checkpoint - the checkpoint the receipt should be for (origin, size, root).
 * @param receipt - the receipt.
 * @param verifiers - the log's verifier key(s).
 * @returns valid, or the reason it is not.
 */
export function verifyLogAnchorReceipt(
  checkpoint: Pick<AnchorCheckpoint, 'origin' | 'size' | 'rootHash'>,
  receipt: AnchorReceipt,
  verifiers: readonly NoteVerifier[],
): AnchorVerification {
  if (receipt.kind !== LOG_ANCHOR_KIND) return { valid: false, reason: `receipt kind ${JSON.stringify(receipt.kind)} is not ${LOG_ANCHOR_KIND}` };
  if (receipt.size !== checkpoint.size) return { valid: false, reason: `receipt is for size ${receipt.size}, checkpoint has ${checkpoint.size}` };
  if (receipt.rootHash !== toHex(checkpoint.rootHash)) return { valid: false, reason: 'receipt root differs from the checkpoint root' };
  const note = receipt.evidence.checkpoint;
  if (typeof note !== 'string') return { valid: false, reason: 'receipt carries no signed checkpoint' };
  try {
    const opened = openCheckpoint(note, checkpoint.origin, verifiers).checkpoint;
    if (opened.size !== checkpoint.size || !bytesEqual(opened.rootHash, checkpoint.rootHash)) {
      return { valid: false, reason: 'signed checkpoint in the receipt differs from the checkpoint' };
    }
  } catch (err) {
    return { valid: false, reason: `signed checkpoint in the receipt does not verify: ${(err as Error).message}` };
  }
  return { valid: true };
}
