import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import {
  InvalidSignatureError,
  NoteError,
  UnverifiedNoteError,
  ed25519KeyId,
  ed25519VerifierKey,
  generateEd25519Key,
  isValidKeyName,
  openNote,
  parseSignerKey,
  parseVerifierKey,
  signNote,
  verifierKeyFromSignerKey,
} from '../../src/integrity/note.js';
import { decodeBase64Strict } from '../../src/integrity/encoding.js';
import {
  PETER_NEUMANN_SIGNED_NOTE,
  PETER_NEUMANN_SIGNER_KEY,
  PETER_NEUMANN_TEXT,
  PETER_NEUMANN_VERIFIER_KEY,
} from '../fixtures/integrity/signed-note.js';

const deterministic = (byte: number) => (n: number) => new Uint8Array(n).fill(byte);

describe('signed note: published PeterNeumann example (Go sumdb/note)', () => {
  it('parses the published keys and derives the published key ID c74f20a3', () => {
    const signer = parseSignerKey(PETER_NEUMANN_SIGNER_KEY);
    const verifier = parseVerifierKey(PETER_NEUMANN_VERIFIER_KEY);
    expect(signer.name).toBe('PeterNeumann');
    expect(signer.keyId).toBe(0xc74f20a3);
    expect(verifier.keyId).toBe(0xc74f20a3);
    expect(verifierKeyFromSignerKey(PETER_NEUMANN_SIGNER_KEY)).toBe(PETER_NEUMANN_VERIFIER_KEY);
    const pub = (decodeBase64Strict(PETER_NEUMANN_VERIFIER_KEY.split('+')[2] as string) as Uint8Array).slice(1);
    expect(ed25519KeyId('PeterNeumann', pub)).toBe(0xc74f20a3);
    expect(ed25519VerifierKey('PeterNeumann', pub)).toBe(PETER_NEUMANN_VERIFIER_KEY);
  });

  it('produces the identical signed note (Ed25519 is deterministic)', () => {
    expect(signNote(PETER_NEUMANN_TEXT, parseSignerKey(PETER_NEUMANN_SIGNER_KEY))).toBe(PETER_NEUMANN_SIGNED_NOTE);
  });

  it('verifies the published signed note', () => {
    const opened = openNote(PETER_NEUMANN_SIGNED_NOTE, [parseVerifierKey(PETER_NEUMANN_VERIFIER_KEY)]);
    expect(opened.text).toBe(PETER_NEUMANN_TEXT);
    expect(opened.verifiedSignatures).toEqual([
      { name: 'PeterNeumann', keyId: 0xc74f20a3, base64: PETER_NEUMANN_SIGNED_NOTE.split(' ').pop()?.trim() },
    ]);
    expect(opened.unverifiedSignatures).toEqual([]);
    // Also as UTF-8 bytes.
    expect(openNote(new TextEncoder().encode(PETER_NEUMANN_SIGNED_NOTE), [parseVerifierKey(PETER_NEUMANN_VERIFIER_KEY)]).text).toBe(
      PETER_NEUMANN_TEXT,
    );
  });
});

describe('signed note: rejection rules', () => {
  const verifier = parseVerifierKey(PETER_NEUMANN_VERIFIER_KEY);
  const signer = parseSignerKey(PETER_NEUMANN_SIGNER_KEY);
  const other = generateEd25519Key('witness.example/w1', deterministic(7));

  it('rejects tampered text, signature bits and key IDs', () => {
    const tamperedText = PETER_NEUMANN_SIGNED_NOTE.replace('answer', 'Answer');
    expect(() => openNote(tamperedText, [verifier])).toThrow(InvalidSignatureError);
    const sigStart = PETER_NEUMANN_SIGNED_NOTE.lastIndexOf(' ') + 1;
    const blob = decodeBase64Strict(PETER_NEUMANN_SIGNED_NOTE.slice(sigStart, -1)) as Uint8Array;
    for (const bit of [32, 100, 300, 511 + 32]) {
      const flipped = blob.slice();
      flipped[bit >> 3] = (flipped[bit >> 3] as number) ^ (1 << (bit & 7));
      const note = PETER_NEUMANN_SIGNED_NOTE.slice(0, sigStart) + Buffer.from(flipped).toString('base64') + '\n';
      expect(() => openNote(note, [verifier])).toThrow(InvalidSignatureError);
    }
    // Flipping a key-ID bit makes the signature "unknown" → no verified signature.
    const badId = blob.slice();
    badId[0] = (badId[0] as number) ^ 1;
    const note = PETER_NEUMANN_SIGNED_NOTE.slice(0, sigStart) + Buffer.from(badId).toString('base64') + '\n';
    expect(() => openNote(note, [verifier])).toThrow(UnverifiedNoteError);
  });

  it('any single-bit change of the signed note is rejected (property)', () => {
    const bytes = new TextEncoder().encode(PETER_NEUMANN_SIGNED_NOTE);
    fc.assert(
      fc.property(fc.integer({ min: 0, max: bytes.length * 8 - 1 }), (bit) => {
        const b = bytes.slice();
        b[bit >> 3] = (b[bit >> 3] as number) ^ (1 << (bit & 7));
        expect(() => openNote(b, [verifier])).toThrow(NoteError);
      }),
      { numRuns: 500 },
    );
  });

  it('rejects malformed notes', () => {
    const sigLine = PETER_NEUMANN_SIGNED_NOTE.slice(PETER_NEUMANN_TEXT.length + 1);
    const cases = [
      PETER_NEUMANN_TEXT, // no signatures
      PETER_NEUMANN_TEXT + '\n', // empty signature block
      PETER_NEUMANN_SIGNED_NOTE.slice(0, -1), // signature block not newline-terminated
      PETER_NEUMANN_SIGNED_NOTE.replace('\u2014', '-'), // hyphen instead of em dash
      PETER_NEUMANN_SIGNED_NOTE.replace('\u2014 ', '\u2014'), // missing space
      PETER_NEUMANN_SIGNED_NOTE.replace('then', 'th\ten'), // control character
      PETER_NEUMANN_SIGNED_NOTE.replace('then', 'th\ren'),
      PETER_NEUMANN_SIGNED_NOTE.replace('JnAM=', 'JnAM'), // unpadded base64
      PETER_NEUMANN_SIGNED_NOTE.replace('PeterNeumann x08', 'Peter+Neumann x08'), // bad key name
      PETER_NEUMANN_TEXT + '\n' + sigLine + '\n', // blank line after signatures
      PETER_NEUMANN_TEXT + '\n\u2014 PeterNeumann AAAA\n', // signature shorter than 5 bytes
      PETER_NEUMANN_TEXT + '\n' + sigLine + sigLine, // known key signed twice
      PETER_NEUMANN_TEXT + '\n' + sigLine.repeat(101), // too many signatures
    ];
    for (const c of cases) expect(() => openNote(c, [verifier])).toThrow(NoteError);
    expect(() => openNote(new Uint8Array([0xff, 0x0a, 0x0a]), [verifier])).toThrow(NoteError);
  });

  it('requires at least one known valid signature; ignores unknown keys', () => {
    expect(() => openNote(PETER_NEUMANN_SIGNED_NOTE, [])).toThrow(UnverifiedNoteError);
    expect(() => openNote(PETER_NEUMANN_SIGNED_NOTE, [parseVerifierKey(other.verifierKey)])).toThrow(UnverifiedNoteError);
    const cosigned = signNote(PETER_NEUMANN_TEXT, [signer, parseSignerKey(other.signerKey)]);
    const opened = openNote(cosigned, [verifier]);
    expect(opened.verifiedSignatures.map((s) => s.name)).toEqual(['PeterNeumann']);
    expect(opened.unverifiedSignatures.map((s) => s.name)).toEqual(['witness.example/w1']);
    const both = openNote(cosigned, [verifier, parseVerifierKey(other.verifierKey)]);
    expect(both.verifiedSignatures.map((s) => s.name)).toEqual(['PeterNeumann', 'witness.example/w1']);
  });

  it('ignores a signature whose name matches but key ID differs (and vice versa)', () => {
    // Same name, different key → different ID → unknown, not an error.
    const impostor = generateEd25519Key('PeterNeumann', deterministic(9));
    const note = signNote(PETER_NEUMANN_TEXT, [parseSignerKey(impostor.signerKey), signer]);
    expect(openNote(note, [verifier]).unverifiedSignatures).toHaveLength(1);
  });

  it('rejects invalid text and keys when signing', () => {
    expect(() => signNote('no newline', signer)).toThrow(NoteError);
    expect(() => signNote('bad \u0007 bell\n', signer)).toThrow(NoteError);
    expect(() => signNote('ok\n', [])).toThrow(NoteError);
    expect(() => signNote('ok\n', [signer, signer])).toThrow(NoteError);
    expect(() => parseVerifierKey('PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW')).toThrow(NoteError);
    expect(() => parseVerifierKey('PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW')).toThrow(NoteError);
    expect(() => parseVerifierKey('PeterNeumann+c74f20a3+Ahpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW')).toThrow(NoteError);
    expect(() => parseSignerKey(PETER_NEUMANN_SIGNER_KEY.replace('c74f20a3', 'c74f20a2'))).toThrow(NoteError);
    expect(() => parseSignerKey(PETER_NEUMANN_SIGNER_KEY.slice('PRIVATE+'.length))).toThrow(NoteError);
  });

  it('key name rules', () => {
    expect(isValidKeyName('example.com/log42')).toBe(true);
    expect(isValidKeyName('PeterNeumann')).toBe(true);
    expect(isValidKeyName('é.example')).toBe(true);
    for (const bad of ['', 'a b', 'a+b', 'a\u00a0b', 'a\u2003b', 'a\nb', 'a\u0085b', 'a\ud800']) {
      expect(isValidKeyName(bad)).toBe(false);
    }
  });

  it('round-trips generated keys and multi-line texts with blank lines', () => {
    const key = generateEd25519Key('fhir-anchor.example/log');
    const text = 'line one\n\nline three after a blank line\n';
    const note = signNote(text, parseSignerKey(key.signerKey));
    expect(openNote(note, [parseVerifierKey(key.verifierKey)]).text).toBe(text);
  });
});
