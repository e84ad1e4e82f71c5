/**
 * C2SP tlog-proof (`c2sp.org/tlog-proof@v1`): an offline-verifiable proof that
 * an entry is in a transparency log, bundling the entry index, its RFC 6962 /
 * RFC 9162 inclusion proof, and the signed checkpoint it is relative to.
 *
 * Text form (lines separated by U+000A):
 * ```
 * c2sp.org/tlog-proof@v1
 * extra <base64 opaque data>          (optional, unauthenticated)
 * index <decimal, no leading zeroes>
 * <base64 hash>                        (zero or more, leaf's sibling first)
 * <empty line>
 * <signed checkpoint, verbatim>
 * ```
 *
 * @see https://c2sp.org/tlog-proof
 * @packageDocumentation
 */
import { openCheckpoint } from './checkpoint.js';
import type { Checkpoint } from './checkpoint.js';
import { decodeBase64Strict, encodeBase64 } from './encoding.js';
import { HASH_SIZE, verifyInclusion } from './merkle.js';
import type { NoteVerifier, OpenedNote } from './note.js';

/** First line of every v1 proof. */
export const TLOG_PROOF_HEADER = 'c2sp.org/tlog-proof@v1';

/** A parsed (not yet verified) tlog-proof. */
export interface TlogProof {
  /** 0-based index of the entry in the log. */
  readonly index: number;
  /** Inclusion proof hashes (32 bytes each), leaf's sibling first. */
  readonly inclusionProof: readonly Uint8Array[];
  /** The signed checkpoint note, verbatim (ends in a newline). */
  readonly checkpoint: string;
  /** Optional opaque extra data. Not authenticated: never trust it implicitly. */
  readonly extra?: Uint8Array;
}

/** Raised for a malformed or unverifiable tlog-proof. */
export class TlogProofError extends Error {
  override readonly name = 'TlogProofError';
}

const DECIMAL_RE = /^(?:0|[1-9][0-9]*)$/;

/**
 * Formats a tlog-proof.
 *
 * @param proof - index, inclusion proof, signed checkpoint, optional extra data.
 * @returns the proof text (suggested file extension `.tlog-proof`).
 * @throws TlogProofError for a bad index, hash length or checkpoint.
 */
export function formatTlogProof(proof: TlogProof): string {
  if (!Number.isSafeInteger(proof.index) || proof.index < 0) throw new TlogProofError('index must be a non-negative safe integer');
  if (!proof.checkpoint.endsWith('\n') || proof.checkpoint.startsWith('\n')) {
    throw new TlogProofError('checkpoint must be a signed note');
  }
  let out = `${TLOG_PROOF_HEADER}\n`;
  if (proof.extra !== undefined) out += `extra ${encodeBase64(proof.extra)}\n`;
  out += `index ${proof.index}\n`;
  for (const h of proof.inclusionProof) {
    if (h.length !== HASH_SIZE) throw new TlogProofError('inclusion proof hashes must be 32 bytes');
    out += `${encodeBase64(h)}\n`;
  }
  return `${out}\n${proof.checkpoint}`;
}

/**
 * Parses a tlog-proof strictly (structure only; see {@link verifyTlogProof}).
 *
 * @param text - the proof text.
 * @returns the parsed proof.
 * @throws TlogProofError when the text is malformed.
 */
export function parseTlogProof(text: string): TlogProof {
  let pos = 0;
  const nextLine = (): string => {
    const nl = text.indexOf('\n', pos);
    if (nl < 0) throw new TlogProofError('truncated tlog-proof');
    const line = text.slice(pos, nl);
    pos = nl + 1;
    return line;
  };
  if (nextLine() !== TLOG_PROOF_HEADER) throw new TlogProofError(`missing ${TLOG_PROOF_HEADER} header`);
  let line = nextLine();
  let extra: Uint8Array | undefined;
  if (line.startsWith('extra ')) {
    extra = decodeBase64Strict(line.slice('extra '.length));
    if (extra === undefined) throw new TlogProofError('extra data is not base64');
    line = nextLine();
  }
  if (!line.startsWith('index ')) throw new TlogProofError('missing index line');
  const indexText = line.slice('index '.length);
  const index = Number(indexText);
  if (!DECIMAL_RE.test(indexText) || !Number.isSafeInteger(index)) throw new TlogProofError('malformed index');
  const inclusionProof: Uint8Array[] = [];
  for (line = nextLine(); line !== ''; line = nextLine()) {
    const h = decodeBase64Strict(line);
    if (h === undefined || h.length !== HASH_SIZE) throw new TlogProofError('inclusion proof line is not a base64 32-byte hash');
    inclusionProof.push(h);
  }
  const checkpoint = text.slice(pos);
  if (checkpoint.length === 0) throw new TlogProofError('missing checkpoint');
  return extra === undefined ? { index, inclusionProof, checkpoint } : { index, inclusionProof, checkpoint, extra };
}

/** Result of a successful {@link verifyTlogProof}. */
export interface VerifiedTlogProof {
  /** The entry index. */
  readonly index: number;
  /** The verified checkpoint. */
  readonly checkpoint: Checkpoint;
  /** The opened checkpoint note (which signatures verified). */
  readonly note: OpenedNote;
  /** Unauthenticated extra data, if present. */
  readonly extra?: Uint8Array;
}

/**
 * Verifies a tlog-proof for a given leaf hash: the checkpoint must carry a
 * valid signature from a trusted key and the expected origin, and the
 * inclusion proof must connect `leafHash` at `index` to its root.
 *
 * @param text - the proof text.
 * @param leafHash - the RFC 9162 leaf hash of the entry (`leafHash(commitment)`).
 * @param origin - the log's expected origin.
 * @param verifiers - trusted keys (the log key, optionally witnesses).
 * @returns the verified parts.
 * @throws TlogProofError, NoteError or CheckpointError when anything fails.
 */
export function verifyTlogProof(
  text: string,
  leafHash: Uint8Array,
  origin: string,
  verifiers: readonly NoteVerifier[],
): VerifiedTlogProof {
  const proof = parseTlogProof(text);
  const { checkpoint, note } = openCheckpoint(proof.checkpoint, origin, verifiers);
  if (!verifyInclusion(proof.index, checkpoint.size, leafHash, proof.inclusionProof, checkpoint.rootHash)) {
    throw new TlogProofError('inclusion proof does not match the checkpoint');
  }
  const base = { index: proof.index, checkpoint, note };
  return proof.extra === undefined ? base : { ...base, extra: proof.extra };
}
