import { describe, expect, it } from '@jest/globals';
import { signCheckpoint } from '../../src/integrity/checkpoint.js';
import { CheckpointError } from '../../src/integrity/checkpoint.js';
import { computeCommitment } from '../../src/integrity/commitment.js';
import { toHex } from '../../src/integrity/encoding.js';
import { MemoryHashStore, leafHash, proveInclusion, treeHash } from '../../src/integrity/merkle.js';
import { InvalidSignatureError, NoteError, generateEd25519Key, parseSignerKey, parseVerifierKey } from '../../src/integrity/note.js';
import { TLOG_PROOF_HEADER, TlogProofError, formatTlogProof, parseTlogProof, verifyTlogProof } from '../../src/integrity/proof.js';

const ORIGIN = 'fhir-anchor.example/log';
const key = generateEd25519Key(ORIGIN, (n) => new Uint8Array(n).fill(5));
const signer = parseSignerKey(key.signerKey);
const verifier = parseVerifierKey(key.verifierKey);

async function fixture(size = 1000, index = 737) {
  const store = new MemoryHashStore();
  const commitments: Uint8Array[] = [];
  for (let i = 0; i < size; i++) {
    const c = computeCommitment({ resourceType: 'Observation', id: `o${i}` }, new Uint8Array(32).fill(i % 251));
    commitments.push(c);
    store.appendLeafData(c);
  }
  const checkpoint = signCheckpoint({ origin: ORIGIN, size, rootHash: await treeHash(size, store) }, signer);
  const inclusionProof = await proveInclusion(size, index, store);
  return { index, checkpoint, inclusionProof, leaf: leafHash(commitments[index] as Uint8Array) };
}

describe('tlog-proof@v1', () => {
  it('formats the spec layout and round-trips', async () => {
    const f = await fixture();
    const text = formatTlogProof({ index: f.index, inclusionProof: f.inclusionProof, checkpoint: f.checkpoint });
    const lines = text.split('\n');
    expect(lines[0]).toBe(TLOG_PROOF_HEADER);
    expect(lines[1]).toBe('index 737');
    expect(lines.slice(2, 2 + f.inclusionProof.length).every((l) => /^[A-Za-z0-9+/]{43}=$/.test(l))).toBe(true);
    expect(lines[2 + f.inclusionProof.length]).toBe('');
    expect(text.endsWith(`\n\n${f.checkpoint}`)).toBe(true);
    const parsed = parseTlogProof(text);
    expect(parsed.index).toBe(737);
    expect(parsed.inclusionProof.map(toHex)).toEqual(f.inclusionProof.map(toHex));
    expect(parsed.checkpoint).toBe(f.checkpoint);
    expect(parsed.extra).toBeUndefined();
    const verified = verifyTlogProof(text, f.leaf, ORIGIN, [verifier]);
    expect(verified.index).toBe(737);
    expect(verified.checkpoint.size).toBe(1000);
  });

  it('carries optional extra data', async () => {
    const f = await fixture(10, 3);
    const extra = new TextEncoder().encode('age-v1.2.1-darwin-arm64.tar.gz');
    const text = formatTlogProof({ index: 3, inclusionProof: f.inclusionProof, checkpoint: f.checkpoint, extra });
    expect(text.split('\n')[1]).toBe(`extra ${Buffer.from(extra).toString('base64')}`);
    expect(text.split('\n')[2]).toBe('index 3');
    expect(Buffer.from(verifyTlogProof(text, f.leaf, ORIGIN, [verifier]).extra as Uint8Array).toString()).toBe(
      'age-v1.2.1-darwin-arm64.tar.gz',
    );
  });

  it('parses the spec example structure', () => {
    const example = [
      'c2sp.org/tlog-proof@v1',
      'extra YWdlLXYxLjIuMS1kYXJ3aW4tYXJtNjQudGFyLmd6',
      'index 73894',
      'gSKyXoYZUgZ6jduWYrkDOARinOMGJveXjgMkBTcdPlQ=',
      'B95lDa8R83lS8n0eG+o0buTxRKQTYFi//1U8anccXmA=',
      '',
      'example.com/fancylog',
      '109482',
      'sFodV/vSp5O8n9a8QpW6PRY97tfOSW5bsc2Xl/EQi08=',
      '',
      '\u2014 example.com/fancylog hI2DJw==',
      '',
    ].join('\n');
    const p = parseTlogProof(example);
    expect(p.index).toBe(73894);
    expect(p.inclusionProof).toHaveLength(2);
    expect(p.checkpoint.startsWith('example.com/fancylog\n109482\n')).toBe(true);
  });

  it('single-leaf tree: empty inclusion proof', async () => {
    const f = await fixture(1, 0);
    const text = formatTlogProof({ index: 0, inclusionProof: [], checkpoint: f.checkpoint });
    expect(text.startsWith(`${TLOG_PROOF_HEADER}\nindex 0\n\n`)).toBe(true);
    expect(verifyTlogProof(text, f.leaf, ORIGIN, [verifier]).index).toBe(0);
  });

  it('rejects tampering', async () => {
    const f = await fixture();
    const text = formatTlogProof({ index: f.index, inclusionProof: f.inclusionProof, checkpoint: f.checkpoint });
    // Wrong leaf, index, proof hash, root or signature.
    const wrongLeaf = f.leaf.slice();
    wrongLeaf[0] = (wrongLeaf[0] as number) ^ 1;
    expect(() => verifyTlogProof(text, wrongLeaf, ORIGIN, [verifier])).toThrow(TlogProofError);
    expect(() => verifyTlogProof(text.replace('index 737', 'index 736'), f.leaf, ORIGIN, [verifier])).toThrow(TlogProofError);
    const hashLine = text.split('\n')[3] as string;
    const flipped = Buffer.from(hashLine, 'base64');
    flipped[5] = (flipped[5] as number) ^ 0x10;
    expect(() => verifyTlogProof(text.replace(hashLine, flipped.toString('base64')), f.leaf, ORIGIN, [verifier])).toThrow(TlogProofError);
    const rootLine = f.checkpoint.split('\n')[2] as string;
    const badRoot = Buffer.from(rootLine, 'base64');
    badRoot[0] = (badRoot[0] as number) ^ 1;
    expect(() => verifyTlogProof(text.replace(rootLine, badRoot.toString('base64')), f.leaf, ORIGIN, [verifier])).toThrow(
      InvalidSignatureError,
    );
    expect(() => verifyTlogProof(text, f.leaf, 'other.example/log', [verifier])).toThrow(CheckpointError);
    const stranger = parseVerifierKey(generateEd25519Key(ORIGIN, (n) => new Uint8Array(n).fill(6)).verifierKey);
    expect(() => verifyTlogProof(text, f.leaf, ORIGIN, [stranger])).toThrow(NoteError);
  });

  it('rejects malformed proofs', async () => {
    const f = await fixture(10, 3);
    const text = formatTlogProof({ index: 3, inclusionProof: f.inclusionProof, checkpoint: f.checkpoint });
    const bad = [
      text.replace(TLOG_PROOF_HEADER, 'c2sp.org/tlog-proof@v2'),
      text.replace('index 3', 'index 03'),
      text.replace('index 3', 'index -3'),
      text.replace('index 3', 'index  3'),
      text.replace('index 3', 'idx 3'),
      text.replace('index 3\n', 'index 3\nnot-base64!\n'),
      text.replace('index 3\n', 'index 3\nAAAA\n'),
      text.replace(`index 3\n`, `extra @@\nindex 3\n`),
      text.slice(0, text.indexOf('\n\n') + 2), // no checkpoint
      text.slice(0, text.indexOf('\n\n')), // no blank line
    ];
    for (const b of bad) expect(() => parseTlogProof(b)).toThrow(TlogProofError);
    expect(() => formatTlogProof({ index: -1, inclusionProof: [], checkpoint: f.checkpoint })).toThrow(TlogProofError);
    expect(() => formatTlogProof({ index: 0, inclusionProof: [new Uint8Array(31)], checkpoint: f.checkpoint })).toThrow(TlogProofError);
  });
});
