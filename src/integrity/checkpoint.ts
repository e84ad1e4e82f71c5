/**
 * C2SP tlog-checkpoint: the signed tree head of a transparency log.
 *
 * The note text is, one per line: the log's origin, the tree size in ASCII
 * decimal (no leading zeroes), the base64 RFC 6962/9162 root hash, then
 * optional non-empty extension lines. It is signed as a C2SP signed note.
 *
 * @see https://c2sp.org/tlog-checkpoint
 * @packageDocumentation
 */
import { decodeBase64Strict, encodeBase64 } from './encoding.js';
import { HASH_SIZE } from './merkle.js';
import { openNote, signNote } from './note.js';
import type { NoteSigner, NoteVerifier, OpenedNote } from './note.js';

/** A parsed checkpoint body. */
export interface Checkpoint {
  /** Unique log identity, e.g. `fhir-anchor.example/log` (also the log key's name). */
  readonly origin: string;
  /** Tree size in leaves (a safe integer). */
  readonly size: number;
  /** 32-byte Merkle tree hash at `size`. */
  readonly rootHash: Uint8Array;
  /** Opaque extension lines (NOT RECOMMENDED by the spec; usually empty). */
  readonly extensions?: readonly string[];
}

/** Raised for a malformed checkpoint or one from an unexpected origin. */
export class CheckpointError extends Error {
  override readonly name = 'CheckpointError';
}

const DECIMAL_RE = /^(?:0|[1-9][0-9]*)$/;

function isValidLine(line: string): boolean {
  if (line.length === 0) return false;
  for (let i = 0; i < line.length; i++) {
    if (line.charCodeAt(i) < 0x20) return false; // includes newline; notes forbid other controls
  }
  return !/\p{Cs}/u.test(line);
}

/**
 * Formats a checkpoint body (the note text to be signed).
 *
 * @param checkpoint - the checkpoint.
 * @returns the note text, ending in a newline.
 * @throws CheckpointError for an empty/multi-line origin or extension, a
 *   size that is not a safe non-negative integer, or a root that is not 32 bytes.
 */
export function formatCheckpoint(checkpoint: Checkpoint): string {
  const { origin, size, rootHash, extensions = [] } = checkpoint;
  if (!isValidLine(origin)) throw new CheckpointError('origin must be a non-empty single line');
  if (!Number.isSafeInteger(size) || size < 0) throw new CheckpointError('size must be a non-negative safe integer');
  if (rootHash.length !== HASH_SIZE) throw new CheckpointError('root hash must be 32 bytes');
  for (const ext of extensions) {
    if (!isValidLine(ext)) throw new CheckpointError('extension lines must be non-empty single lines');
  }
  return [origin, String(size), encodeBase64(rootHash), ...extensions].map((l) => `${l}\n`).join('');
}

/**
 * Parses a checkpoint body strictly.
 *
 * @param text - the note text (as returned by `openNote`).
 * @returns the checkpoint.
 * @throws CheckpointError when the text is not a well-formed checkpoint.
 */
export function parseCheckpoint(text: string): Checkpoint {
  if (!text.endsWith('\n')) throw new CheckpointError('checkpoint must end in a newline');
  const lines = text.slice(0, -1).split('\n');
  if (lines.length < 3) throw new CheckpointError('checkpoint needs origin, size and root hash lines');
  if (!lines.every(isValidLine)) throw new CheckpointError('checkpoint lines must be non-empty');
  const [origin, sizeText, rootText, ...extensions] = lines as [string, string, string, ...string[]];
  if (!DECIMAL_RE.test(sizeText)) throw new CheckpointError('tree size must be decimal without leading zeroes');
  const size = Number(sizeText);
  if (!Number.isSafeInteger(size)) throw new CheckpointError('tree size exceeds 2^53 - 1');
  const rootHash = decodeBase64Strict(rootText);
  if (rootHash === undefined || rootHash.length !== HASH_SIZE) {
    throw new CheckpointError('root hash must be base64 of 32 bytes');
  }
  return { origin, size, rootHash, extensions };
}

/**
 * Formats and signs a checkpoint.
 *
 * @param checkpoint - the checkpoint.
 * @param signers - the log key (its name SHOULD equal the origin), optionally more.
 * @returns the signed checkpoint note.
 */
export function signCheckpoint(checkpoint: Checkpoint, signers: NoteSigner | readonly NoteSigner[]): string {
  return signNote(formatCheckpoint(checkpoint), signers);
}

/**
 * Verifies a signed checkpoint and parses it.
 *
 * @param signedNote - the signed checkpoint.
 * @param origin - the expected origin; any other origin is rejected.
 * @param verifiers - trusted keys (the log's key; witnesses are optional).
 * @returns the parsed checkpoint and the opened note (which signatures verified).
 * @throws NoteError when the signatures do not verify; CheckpointError when
 *   the body is malformed or the origin differs.
 */
export function openCheckpoint(
  signedNote: string | Uint8Array,
  origin: string,
  verifiers: readonly NoteVerifier[],
): { checkpoint: Checkpoint; note: OpenedNote } {
  const note = openNote(signedNote, verifiers);
  const checkpoint = parseCheckpoint(note.text);
  if (checkpoint.origin !== origin) {
    throw new CheckpointError(`checkpoint origin ${JSON.stringify(checkpoint.origin)} is not ${JSON.stringify(origin)}`);
  }
  return { checkpoint, note };
}
