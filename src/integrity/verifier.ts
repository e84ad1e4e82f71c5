/**
 * The offline verifier: checks that a FHIR resource version is committed in the log, using only
 * public data and what `$verify` disclosed. No database; no network unless an anchor verifier
 * (e.g. EVM, given an RPC URL) needs one.
 *
 * Checks, in order: the resource is JSON; the salt is 32 bytes; the verifier key parses;
 * `commitment = SHA-256(salt ‖ JCS(resource))`; the tlog-proof's checkpoint is signed by the key
 * with the key's name as origin; the RFC 9162 inclusion proof connects the commitment's leaf hash
 * to the checkpoint root; and every anchor receipt given is for that checkpoint and verifies.
 *
 * @see https://www.rfc-editor.org/rfc/rfc8785, https://www.rfc-editor.org/rfc/rfc9162
 * @see https://c2sp.org/tlog-proof, https://c2sp.org/tlog-checkpoint, https://c2sp.org/signed-note
 * @packageDocumentation
 */
import type { AnchorCheckpoint, AnchorReceipt, AnchorVerification } from './anchor.js';
import { LOG_ANCHOR_KIND, verifyLogAnchorReceipt } from './anchors/log-receipt.js';
import { openCheckpoint, type Checkpoint } from './checkpoint.js';
import { SALT_LENGTH, computeCommitment } from './commitment.js';
import { decodeBase64Strict, encodeBase64, toHex } from './encoding.js';
import { leafHash, verifyInclusion } from './merkle.js';
import { parseVerifierKey, type NoteVerifier } from './note.js';
import { parseTlogProof, type TlogProof } from './proof.js';

/** Verifies one anchor receipt for a checkpoint (registered per anchor kind, e.g. `evm`). */
export type AnchorReceiptVerifier = (
  checkpoint: AnchorCheckpoint,
  receipt: AnchorReceipt,
  context: { readonly verifiers: readonly NoteVerifier[]; readonly rpcUrl?: string },
) => Promise<AnchorVerification>;

/** Input of {@link verifyOffline}. */
export interface OfflineVerifyInput {
  /** The version exactly as served by `/{type}/{id}/_history/{vid}` (or the delete-marker object), as JSON text. */
  readonly resourceJson: string;
  /** The version's salt, base64 (the `salt` parameter of `$verify`). */
  readonly saltB64: string;
  /** The C2SP tlog-proof@v1 text (the `receipt` parameter of `$verify`). */
  readonly receiptText: string;
  /** The log's verifier key (`GET /ledger/key`); its name is the expected origin. */
  readonly vkey: string;
  /** Expected origin when it differs from the key name. */
  readonly origin?: string;
  /** Anchor receipts (objects or JSON text), e.g. the `anchorReceipt` parameters of `$verify`. */
  readonly anchorReceipts?: ReadonlyArray<AnchorReceipt | string>;
  /** JSON-RPC URL for anchors that read a chain (EVM). */
  readonly rpcUrl?: string;
  /** Verifiers by anchor kind, in addition to the built-in `log` kind. */
  readonly anchorVerifiers?: Readonly<Record<string, AnchorReceiptVerifier>>;
}

/** One check and its outcome. */
export interface VerifyCheck {
  readonly name: string;
  readonly ok: boolean;
  readonly detail: string;
}

/** Result of {@link verifyOffline}: ok only when every check passed. */
export interface OfflineVerifyResult {
  readonly ok: boolean;
  readonly checks: VerifyCheck[];
}

function isReceipt(value: unknown): value is AnchorReceipt {
  const r = value as Partial<AnchorReceipt> | null;
  return (
    typeof r === 'object' && r !== null && typeof r.kind === 'string' && typeof r.anchor === 'string' && typeof r.size === 'number' &&
    typeof r.rootHash === 'string' && typeof r.anchoredAt === 'string' && typeof r.evidence === 'object' && r.evidence !== null
  );
}

/**
 * Verifies a record offline; see the module comment.
 *
 * @param input - the record, its salt, the tlog-proof, the log key and optional anchor receipts.
 * @returns every check with a reason; `ok` only when all passed.
 */
export async function verifyOffline(input: OfflineVerifyInput): Promise<OfflineVerifyResult> {
  const checks: VerifyCheck[] = [];
  const add = (name: string, ok: boolean, detail: string): boolean => {
    checks.push({ name, ok, detail });
    return ok;
  };
  const done = (): OfflineVerifyResult => ({ ok: checks.length > 0 && checks.every((c) => c.ok), checks });

  let resource: unknown;
  try {
    resource = JSON.parse(input.resourceJson) as unknown;
    const r = resource as { resourceType?: unknown; id?: unknown; meta?: { versionId?: unknown }; versionId?: unknown; deleted?: unknown };
    const label = `${String(r.resourceType)}/${String(r.id)}/_history/${String(r.meta?.versionId ?? r.versionId)}${r.deleted === true ? ' (delete marker)' : ''}`;
    add('resource', true, label);
  } catch (err) {
    add('resource', false, `not JSON: ${(err as Error).message}`);
  }
  const salt = decodeBase64Strict(input.saltB64.trim());
  add('salt', salt !== undefined && salt.length === SALT_LENGTH, salt === undefined ? 'not canonical base64' : `${salt.length} bytes`);

  let verifier: NoteVerifier | undefined;
  try {
    verifier = parseVerifierKey(input.vkey.trim());
    add('key', true, `${verifier.name} (key id ${verifier.keyId.toString(16).padStart(8, '0')})`);
  } catch (err) {
    add('key', false, (err as Error).message);
  }

  let commitment: Uint8Array | undefined;
  if (resource !== undefined && salt !== undefined && salt.length === SALT_LENGTH) {
    try {
      commitment = computeCommitment(resource, salt);
      add('commitment', true, toHex(commitment));
    } catch (err) {
      add('commitment', false, `cannot canonicalise the resource: ${(err as Error).message}`);
    }
  }

  let proof: TlogProof | undefined;
  try {
    proof = parseTlogProof(input.receiptText);
  } catch (err) {
    add('receipt', false, (err as Error).message);
  }
  let checkpoint: Checkpoint | undefined;
  if (proof && verifier) {
    const origin = input.origin ?? verifier.name;
    try {
      checkpoint = openCheckpoint(proof.checkpoint, origin, [verifier]).checkpoint;
      add('checkpoint', true, `${origin} size ${checkpoint.size} root ${encodeBase64(checkpoint.rootHash)}`);
    } catch (err) {
      add('checkpoint', false, `signed checkpoint does not verify: ${(err as Error).message}`);
    }
  }
  if (proof && checkpoint && commitment) {
    const ok = verifyInclusion(proof.index, checkpoint.size, leafHash(commitment), proof.inclusionProof, checkpoint.rootHash);
    add('inclusion', ok, ok ? `leaf ${proof.index} of ${checkpoint.size}` : `the commitment is not leaf ${proof.index} under this checkpoint`);
  } else {
    add('inclusion', false, 'not checked: an earlier check failed');
  }

  for (const [i, raw] of (input.anchorReceipts ?? []).entries()) {
    let receipt: unknown = raw;
    if (typeof raw === 'string') {
      try {
        receipt = JSON.parse(raw) as unknown;
      } catch {
        add(`anchor[${i}]`, false, 'receipt is not JSON');
        continue;
      }
    }
    if (!isReceipt(receipt)) {
      add(`anchor[${i}]`, false, 'not an anchor receipt');
      continue;
    }
    const name = `anchor ${receipt.anchor} (${receipt.kind})`;
    if (!checkpoint || !proof || !verifier) {
      add(name, false, 'no verified checkpoint to compare with');
      continue;
    }
    const cp: AnchorCheckpoint = { origin: checkpoint.origin, size: checkpoint.size, rootHash: checkpoint.rootHash, signedNote: proof.checkpoint };
    let result: AnchorVerification;
    try {
      if (receipt.kind === LOG_ANCHOR_KIND) {
        result = verifyLogAnchorReceipt(cp, receipt, [verifier]);
      } else {
        const fn = input.anchorVerifiers?.[receipt.kind];
        result = fn
          ? await fn(cp, receipt, { verifiers: [verifier], ...(input.rpcUrl !== undefined ? { rpcUrl: input.rpcUrl } : {}) })
          : { valid: false, reason: `no verifier for anchor kind ${JSON.stringify(receipt.kind)}` };
      }
    } catch (err) {
      result = { valid: false, reason: (err as Error).message };
    }
    add(name, result.valid, result.valid ? `recorded ${receipt.anchoredAt}` : result.reason);
  }
  return done();
}
