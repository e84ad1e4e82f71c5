import { describe, expect, it } from '@jest/globals';
import {
  CheckpointError,
  formatCheckpoint,
  openCheckpoint,
  parseCheckpoint,
  signCheckpoint,
} from '../../src/integrity/checkpoint.js';
import { fromHex, toHex } from '../../src/integrity/encoding.js';
import { InvalidSignatureError, UnverifiedNoteError, generateEd25519Key, parseSignerKey, parseVerifierKey } from '../../src/integrity/note.js';

const ORIGIN = 'fhir-anchor.example/log';
const root = fromHex('5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328');
const key = generateEd25519Key(ORIGIN, (n) => new Uint8Array(n).fill(3));

describe('tlog-checkpoint', () => {
  it('formats the spec layout', () => {
    expect(formatCheckpoint({ origin: ORIGIN, size: 8, rootHash: root })).toBe(
      `${ORIGIN}\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n`,
    );
    expect(formatCheckpoint({ origin: ORIGIN, size: 0, rootHash: root, extensions: ['ext one'] })).toMatch(/\n0\n.*=\next one\n$/);
  });

  it('parses the spec example body', () => {
    const cp = parseCheckpoint('example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n');
    expect(cp.origin).toBe('example.com/behind-the-sofa');
    expect(cp.size).toBe(20852163);
    expect(cp.rootHash.length).toBe(32);
    expect(cp.extensions).toEqual([]);
  });

  it('round-trips', () => {
    const cp = { origin: ORIGIN, size: 123456789, rootHash: root, extensions: ['a', 'b c'] };
    const parsed = parseCheckpoint(formatCheckpoint(cp));
    expect({ ...parsed, rootHash: toHex(parsed.rootHash) }).toEqual({ ...cp, rootHash: toHex(root) });
  });

  it('rejects malformed bodies', () => {
    const good = formatCheckpoint({ origin: ORIGIN, size: 8, rootHash: root });
    const b64 = 'XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=';
    const bad = [
      good.slice(0, -1), // no final newline
      `${ORIGIN}\n8\n`, // missing root
      `\n8\n${b64}\n`, // empty origin
      `${ORIGIN}\n08\n${b64}\n`, // leading zero
      `${ORIGIN}\n-8\n${b64}\n`,
      `${ORIGIN}\n+8\n${b64}\n`,
      `${ORIGIN}\n8.0\n${b64}\n`,
      `${ORIGIN}\n 8\n${b64}\n`,
      `${ORIGIN}\n99999999999999999999\n${b64}\n`, // beyond 2^53
      `${ORIGIN}\n8\n${b64.slice(0, -1)}\n`, // bad base64
      `${ORIGIN}\n8\nAAAA\n`, // wrong hash length
      `${ORIGIN}\n8\n${b64}\n\n`, // empty extension line
      `${ORIGIN}\n8\n${b64}\next\twith tab\n`,
    ];
    for (const text of bad) expect(() => parseCheckpoint(text)).toThrow(CheckpointError);
    expect(() => formatCheckpoint({ origin: 'a\nb', size: 1, rootHash: root })).toThrow(CheckpointError);
    expect(() => formatCheckpoint({ origin: ORIGIN, size: -1, rootHash: root })).toThrow(CheckpointError);
    expect(() => formatCheckpoint({ origin: ORIGIN, size: 1, rootHash: root.subarray(1) })).toThrow(CheckpointError);
    expect(() => formatCheckpoint({ origin: ORIGIN, size: 1, rootHash: root, extensions: [''] })).toThrow(CheckpointError);
  });

  it('signs and opens, enforcing origin and signatures', () => {
    const signed = signCheckpoint({ origin: ORIGIN, size: 8, rootHash: root }, parseSignerKey(key.signerKey));
    const v = parseVerifierKey(key.verifierKey);
    const { checkpoint, note } = openCheckpoint(signed, ORIGIN, [v]);
    expect(checkpoint.size).toBe(8);
    expect(toHex(checkpoint.rootHash)).toBe(toHex(root));
    expect(note.verifiedSignatures[0]?.name).toBe(ORIGIN);
    expect(() => openCheckpoint(signed, 'other.example/log', [v])).toThrow(CheckpointError);
    expect(() => openCheckpoint(signed.replace('\n8\n', '\n9\n'), ORIGIN, [v])).toThrow(InvalidSignatureError);
    expect(() => openCheckpoint(signed, ORIGIN, [])).toThrow(UnverifiedNoteError);
    const flippedRoot = signed.replace('Xcna', 'Ycna');
    expect(() => openCheckpoint(flippedRoot, ORIGIN, [v])).toThrow(InvalidSignatureError);
  });
});
