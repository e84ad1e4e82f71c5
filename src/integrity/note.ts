/**
 * C2SP signed notes with Ed25519 signatures.
 *
 * A signed note is `text` (ending in a newline), a blank line, then one or
 * more lines `— <key name> <base64(4-byte key ID ‖ signature)>`. Ed25519
 * (signature type 0x01) is the only algorithm supported: the spec advises
 * implementations to support only the types they need.
 *
 * Key strings follow Go's golang.org/x/mod/sumdb/note, which the C2SP
 * ecosystem (witnesses, tlog tools) uses:
 * - verifier key: `<name>+<8 hex digit key ID>+<base64(0x01 ‖ 32-byte public key)>`
 * - signer key: `PRIVATE+KEY+<name>+<key ID>+<base64(0x01 ‖ 32-byte seed)>`
 *
 * @see https://c2sp.org/signed-note
 * @see https://pkg.go.dev/golang.org/x/mod/sumdb/note
 * @packageDocumentation
 */
import { ed25519 } from '@noble/curves/ed25519.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { randomBytes } from '@noble/hashes/utils.js';
import { decodeBase64Strict, encodeBase64, utf8DecodeStrict, utf8Encode } from './encoding.js';

/** Signature type identifier byte for Ed25519 (C2SP signed-note). */
export const ALG_ED25519 = 0x01;

/**
 * Maximum number of signature lines accepted by {@link openNote}. The spec
 * requires accepting at least 16; Go's implementation caps at 100.
 */
export const MAX_SIGNATURES = 100;

const EM_DASH_PREFIX = '\u2014 ';

/** Raised for malformed notes and keys, and for rejected signatures. */
export class NoteError extends Error {
  override readonly name: string = 'NoteError';
}

/** Raised when no signature from a known key verifies (the note must be rejected). */
export class UnverifiedNoteError extends NoteError {
  override readonly name = 'UnverifiedNoteError';
}

/** Raised when a signature by a known key (matching name and ID) fails to verify. */
export class InvalidSignatureError extends NoteError {
  override readonly name = 'InvalidSignatureError';
}

/** Something that can sign note text under a key name and key ID. */
export interface NoteSigner {
  /** Key name (see {@link isValidKeyName}). */
  readonly name: string;
  /** 32-bit key ID (unsigned). */
  readonly keyId: number;
  /**
   * @param message - the UTF-8 note text.
   * @returns the raw signature bytes (without key ID).
   */
  sign(message: Uint8Array): Uint8Array;
}

/** Something that can verify signatures by one key. */
export interface NoteVerifier {
  /** Key name. */
  readonly name: string;
  /** 32-bit key ID (unsigned). */
  readonly keyId: number;
  /**
   * @param message - the UTF-8 note text.
   * @param signature - raw signature bytes (without key ID).
   * @returns whether the signature is valid.
   */
  verify(message: Uint8Array, signature: Uint8Array): boolean;
}

/** One signature line of a note. */
export interface NoteSignature {
  /** Key name from the signature line. */
  readonly name: string;
  /** Key ID (first 4 bytes of the decoded signature, big-endian). */
  readonly keyId: number;
  /** The base64 text of the signature line (key ID ‖ signature). */
  readonly base64: string;
}

/** Result of {@link openNote}. */
export interface OpenedNote {
  /** The signed text, including its final newline. */
  readonly text: string;
  /** Signatures from known keys, all verified. */
  readonly verifiedSignatures: NoteSignature[];
  /** Signatures from unknown keys (ignored, not verified). */
  readonly unverifiedSignatures: NoteSignature[];
}

// Unicode White_Space as Go's unicode.IsSpace sees it (JS `\s` plus U+0085).
const SPACE_OR_PLUS_RE = /[\s\u0085+]/u;
/**
 * Whether `s` contains an ASCII control character (below U+0020) other than
 * newline, which signed notes forbid.
 */
function hasForbiddenControl(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 && c !== 0x0a) return true;
  }
  return false;
}

/**
 * Key name rule (C2SP signed-note): non-empty, well-formed, and without
 * Unicode spaces or `+`.
 *
 * @param name - candidate key name.
 * @returns whether it is a valid key name.
 */
export function isValidKeyName(name: string): boolean {
  return name.length > 0 && !SPACE_OR_PLUS_RE.test(name) && !/\p{Cs}/u.test(name) && !hasForbiddenControl(name);
}

function assertKeyName(name: string): void {
  if (!isValidKeyName(name)) throw new NoteError(`invalid key name ${JSON.stringify(name)}`);
}

/**
 * Key ID for an Ed25519 key: first 4 bytes (big-endian) of
 * `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)`.
 *
 * @param name - key name.
 * @param publicKey - 32-byte Ed25519 public key.
 * @returns the key ID as an unsigned 32-bit number.
 */
export function ed25519KeyId(name: string, publicKey: Uint8Array): number {
  assertKeyName(name);
  if (publicKey.length !== 32) throw new NoteError('Ed25519 public key must be 32 bytes');
  const h = sha256.create().update(utf8Encode(name)).update(new Uint8Array([0x0a, ALG_ED25519])).update(publicKey).digest();
  return readUint32(h, 0);
}

function readUint32(b: Uint8Array, off: number): number {
  return (((b[off] as number) << 24) | ((b[off + 1] as number) << 16) | ((b[off + 2] as number) << 8) | (b[off + 3] as number)) >>> 0;
}

/**
 * Splits `s` on the first `count - 1` plus signs; the last part keeps the
 * rest, because standard base64 key data may itself contain `+`.
 */
function splitPlus(s: string, count: number): string[] | undefined {
  const parts: string[] = [];
  let rest = s;
  for (let i = 0; i < count - 1; i++) {
    const at = rest.indexOf('+');
    if (at < 0) return undefined;
    parts.push(rest.slice(0, at));
    rest = rest.slice(at + 1);
  }
  parts.push(rest);
  return parts;
}

function keyIdHex(id: number): string {
  return id.toString(16).padStart(8, '0');
}

function parseKeyIdHex(hex: string): number | undefined {
  // Exactly 8 lower-case hex digits, as Go formats them; anything else is ambiguous.
  return /^[0-9a-f]{8}$/.test(hex) ? Number.parseInt(hex, 16) : undefined;
}

/**
 * Builds the verifier key string for an Ed25519 public key.
 *
 * @param name - key name.
 * @param publicKey - 32-byte Ed25519 public key.
 * @returns `<name>+<hex key ID>+<base64(0x01 ‖ public key)>`.
 */
export function ed25519VerifierKey(name: string, publicKey: Uint8Array): string {
  const id = ed25519KeyId(name, publicKey);
  return `${name}+${keyIdHex(id)}+${encodeBase64(concat(ALG_ED25519, publicKey))}`;
}

function concat(alg: number, key: Uint8Array): Uint8Array {
  const out = new Uint8Array(1 + key.length);
  out[0] = alg;
  out.set(key, 1);
  return out;
}

/** A freshly generated key pair in string form. */
export interface GeneratedKey {
  /** `PRIVATE+KEY+…` signer key (secret). */
  readonly signerKey: string;
  /** Public verifier key. */
  readonly verifierKey: string;
}

/**
 * Generates an Ed25519 note key pair.
 *
 * @param name - key name (for a log: its origin, e.g. `fhir-anchor.example/log`).
 * @param random - CSPRNG; inject only in tests.
 * @returns signer and verifier key strings.
 */
export function generateEd25519Key(name: string, random: (n: number) => Uint8Array = randomBytes): GeneratedKey {
  assertKeyName(name);
  const seed = random(32);
  if (seed.length !== 32) throw new NoteError('seed must be 32 bytes');
  const publicKey = ed25519.getPublicKey(seed);
  const id = ed25519KeyId(name, publicKey);
  return {
    signerKey: `PRIVATE+KEY+${name}+${keyIdHex(id)}+${encodeBase64(concat(ALG_ED25519, seed))}`,
    verifierKey: ed25519VerifierKey(name, publicKey),
  };
}

/**
 * Parses a verifier key string (Go's `note.NewVerifier`).
 *
 * @param vkey - `<name>+<hex key ID>+<base64(0x01 ‖ public key)>`.
 * @returns a verifier using strict RFC 8032 Ed25519 verification.
 * @throws NoteError when the key is malformed, not Ed25519, or its key ID
 *   does not match the name and public key.
 */
export function parseVerifierKey(vkey: string): NoteVerifier {
  const parts = splitPlus(vkey, 3);
  if (parts === undefined) throw new NoteError('malformed verifier key');
  const [name, idHex, b64] = parts as [string, string, string];
  assertKeyName(name);
  const id = parseKeyIdHex(idHex);
  const key = decodeBase64Strict(b64);
  if (id === undefined || key === undefined || key.length === 0) throw new NoteError('malformed verifier key');
  if (key[0] !== ALG_ED25519 || key.length !== 33) throw new NoteError('unsupported verifier key type');
  const publicKey = key.slice(1);
  if (ed25519KeyId(name, publicKey) !== id) throw new NoteError('verifier key ID does not match key');
  return {
    name,
    keyId: id,
    verify(message, signature) {
      if (signature.length !== 64) return false;
      try {
        // zip215: false → RFC 8032 strict (canonical encodings only), like Go's crypto/ed25519.
        return ed25519.verify(signature, message, publicKey, { zip215: false });
      } catch {
        return false;
      }
    },
  };
}

/**
 * Parses a signer key string (Go's `note.NewSigner`).
 *
 * @param skey - `PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 ‖ 32-byte seed)>`.
 * @returns a deterministic Ed25519 signer.
 * @throws NoteError when the key is malformed, not Ed25519, or its key ID
 *   does not match the derived public key.
 */
export function parseSignerKey(skey: string): NoteSigner {
  const parts = splitPlus(skey, 5);
  if (parts === undefined || parts[0] !== 'PRIVATE' || parts[1] !== 'KEY') throw new NoteError('malformed signer key');
  const [, , name, idHex, b64] = parts as [string, string, string, string, string];
  assertKeyName(name);
  const id = parseKeyIdHex(idHex);
  const key = decodeBase64Strict(b64);
  if (id === undefined || key === undefined || key.length === 0) throw new NoteError('malformed signer key');
  if (key[0] !== ALG_ED25519 || key.length !== 33) throw new NoteError('unsupported signer key type');
  const seed = key.slice(1);
  const publicKey = ed25519.getPublicKey(seed);
  if (ed25519KeyId(name, publicKey) !== id) throw new NoteError('signer key ID does not match key');
  return {
    name,
    keyId: id,
    sign: (message) => ed25519.sign(message, seed),
  };
}

/**
 * Derives the verifier key string that matches a signer key string.
 *
 * @param skey - a `PRIVATE+KEY+…` signer key.
 * @returns the corresponding verifier key.
 */
export function verifierKeyFromSignerKey(skey: string): string {
  const signer = parseSignerKey(skey); // validates
  const parts = splitPlus(skey, 5) as string[];
  const seed = (decodeBase64Strict(parts[4] as string) as Uint8Array).slice(1);
  return ed25519VerifierKey(signer.name, ed25519.getPublicKey(seed));
}

function checkNoteText(text: string): void {
  if (!text.endsWith('\n')) throw new NoteError('note text must end in a newline');
  if (hasForbiddenControl(text)) throw new NoteError('note text contains control characters');
  if (/\p{Cs}/u.test(text)) throw new NoteError('note text is not well-formed Unicode');
}

/**
 * Signs note text (Go's `note.Sign`).
 *
 * @param text - the note text; must end in a newline and contain no ASCII
 *   control characters other than newline.
 * @param signers - one or more signers; signature lines appear in this order.
 * @returns the signed note: text, blank line, one `— name base64` line per signer.
 * @throws NoteError for invalid text, key names, or duplicate signers.
 */
export function signNote(text: string, signers: NoteSigner | readonly NoteSigner[]): string {
  checkNoteText(text);
  const list = Array.isArray(signers) ? (signers as readonly NoteSigner[]) : [signers as NoteSigner];
  if (list.length === 0) throw new NoteError('at least one signer is required');
  const message = utf8Encode(text);
  const seen = new Set<string>();
  let out = `${text}\n`;
  for (const s of list) {
    assertKeyName(s.name);
    const key = `${s.name}+${s.keyId}`;
    if (seen.has(key)) throw new NoteError(`duplicate signer ${s.name}`);
    seen.add(key);
    const sig = s.sign(message);
    const blob = new Uint8Array(4 + sig.length);
    new DataView(blob.buffer).setUint32(0, s.keyId >>> 0, false);
    blob.set(sig, 4);
    out += `${EM_DASH_PREFIX}${s.name} ${encodeBase64(blob)}\n`;
  }
  return out;
}

/**
 * Parses and verifies a signed note (Go's `note.Open`), applying every
 * rejection rule of the C2SP spec:
 * - valid UTF-8, no ASCII control characters other than newline;
 * - text and signatures separated by the last blank line; text ends in a
 *   newline; signature block non-empty, newline-terminated, no empty lines;
 * - each signature line is `— <valid key name> <canonical base64>` decoding
 *   to a 4-byte key ID plus at least one signature byte;
 * - signatures whose (name, key ID) matches no verifier are ignored
 *   (returned as unverified; identical repeats dropped);
 * - a signature from a known key that fails verification rejects the note
 *   ({@link InvalidSignatureError}), as does a known key signing twice;
 * - at least one known key must have signed ({@link UnverifiedNoteError});
 * - at most {@link MAX_SIGNATURES} signature lines.
 *
 * @param signedNote - the note, as text or UTF-8 bytes.
 * @param verifiers - the trusted keys.
 * @returns the text and signatures.
 * @throws NoteError (or a subclass) when the note must be rejected.
 */
export function openNote(signedNote: string | Uint8Array, verifiers: readonly NoteVerifier[]): OpenedNote {
  let msg: string;
  if (typeof signedNote === 'string') {
    if (/\p{Cs}/u.test(signedNote)) throw new NoteError('malformed note: not well-formed Unicode');
    msg = signedNote;
  } else {
    const decoded = utf8DecodeStrict(signedNote);
    if (decoded === undefined) throw new NoteError('malformed note: invalid UTF-8');
    msg = decoded;
  }
  if (hasForbiddenControl(msg)) throw new NoteError('malformed note: control characters');

  const split = msg.lastIndexOf('\n\n');
  if (split < 0) throw new NoteError('malformed note: no signature block');
  const text = msg.slice(0, split + 1);
  const sigBlock = msg.slice(split + 2);
  if (sigBlock.length === 0 || !sigBlock.endsWith('\n')) throw new NoteError('malformed note: bad signature block');
  const lines = sigBlock.slice(0, -1).split('\n');
  if (lines.length > MAX_SIGNATURES) throw new NoteError('malformed note: too many signatures');

  const known = new Map<string, NoteVerifier>();
  for (const v of verifiers) known.set(`${v.name}+${v.keyId >>> 0}`, v);

  const message = utf8Encode(text);
  const verifiedSignatures: NoteSignature[] = [];
  const unverifiedSignatures: NoteSignature[] = [];
  const seenKnown = new Set<string>();
  const seenUnknownLines = new Set<string>();
  for (const line of lines) {
    if (!line.startsWith(EM_DASH_PREFIX)) throw new NoteError('malformed note: bad signature line');
    const rest = line.slice(EM_DASH_PREFIX.length);
    const space = rest.indexOf(' ');
    if (space <= 0) throw new NoteError('malformed note: bad signature line');
    const name = rest.slice(0, space);
    const b64 = rest.slice(space + 1);
    const blob = decodeBase64Strict(b64);
    if (!isValidKeyName(name) || blob === undefined || blob.length < 5) {
      throw new NoteError('malformed note: bad signature line');
    }
    const keyId = readUint32(blob, 0);
    const sig: NoteSignature = { name, keyId, base64: b64 };
    const key = `${name}+${keyId}`;
    const verifier = known.get(key);
    if (verifier === undefined) {
      // Unknown key (name or ID differs from every trusted key): ignored by spec.
      if (!seenUnknownLines.has(line)) {
        seenUnknownLines.add(line);
        unverifiedSignatures.push(sig);
      }
      continue;
    }
    if (seenKnown.has(key)) throw new NoteError(`malformed note: key ${name} signed twice`);
    seenKnown.add(key);
    if (!verifier.verify(message, blob.subarray(4))) {
      throw new InvalidSignatureError(`invalid signature for key ${name}+${keyIdHex(keyId)}`);
    }
    verifiedSignatures.push(sig);
  }
  if (verifiedSignatures.length === 0) throw new UnverifiedNoteError('note has no verified signature from a known key');
  return { text, verifiedSignatures, unverifiedSignatures };
}
