import { beforeAll, describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { createHash } from 'node:crypto';
import { MerkleTree } from 'merkletreejs';
import { fromHex, toHex } from '../../src/integrity/encoding.js';
import {
  EMPTY_TREE_HASH,
  MemoryHashStore,
  TILE_WIDTH,
  TileHashReader,
  appendLeafHashes,
  hashFromTile,
  leafHash,
  newTiles,
  nodeHash,
  proveConsistency,
  proveInclusion,
  readTileData,
  rootFromInclusionProof,
  splitStoredHashLinearIndex,
  storedHashCount,
  storedHashLinearIndex,
  storedHashesForAppend,
  tileForStoredHash,
  tilePath,
  treeHash,
  verifyConsistency,
  verifyInclusion,
} from '../../src/integrity/merkle.js';
import type { HashReader, StoredHashIndex, Tile, TileReader } from '../../src/integrity/merkle.js';
import {
  CONSISTENCY_PROOFS,
  INCLUSION_PROOFS,
  LEAF_INPUTS_HEX,
  NODE_HASHES_HEX,
  ROOTS_HEX,
} from '../fixtures/integrity/rfc6962.js';

// ---------------------------------------------------------------------------
// Naive reference written straight from RFC 9162 §2.1 (recursive definitions).
// ---------------------------------------------------------------------------
function sha(...parts: Uint8Array[]): Uint8Array {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return new Uint8Array(h.digest());
}
function k(n: number): number {
  let x = 1;
  while (x * 2 < n) x *= 2;
  return x;
}
/** MTH(D[n]) over leaf *inputs*. */
function refMth(d: Uint8Array[]): Uint8Array {
  if (d.length === 0) return sha();
  if (d.length === 1) return sha(new Uint8Array([0]), d[0] as Uint8Array);
  const s = k(d.length);
  return sha(new Uint8Array([1]), refMth(d.slice(0, s)), refMth(d.slice(s)));
}
/** PATH(m, D[n]). */
function refPath(m: number, d: Uint8Array[]): Uint8Array[] {
  if (d.length <= 1) return [];
  const s = k(d.length);
  return m < s ? [...refPath(m, d.slice(0, s)), refMth(d.slice(s))] : [...refPath(m - s, d.slice(s)), refMth(d.slice(0, s))];
}
/** SUBPROOF(m, D[n], b). */
function refSubproof(m: number, d: Uint8Array[], b: boolean): Uint8Array[] {
  if (m === d.length) return b ? [] : [refMth(d)];
  const s = k(d.length);
  return m <= s
    ? [...refSubproof(m, d.slice(0, s), b), refMth(d.slice(s))]
    : [...refSubproof(m - s, d.slice(s), false), refMth(d.slice(0, s))];
}

const hex = (list: readonly Uint8Array[]): string[] => list.map(toHex);
const leafInput = (i: number): Uint8Array => new TextEncoder().encode(`leaf ${i}`);

function buildStore(count: number, input: (i: number) => Uint8Array = leafInput): MemoryHashStore {
  const store = new MemoryHashStore();
  for (let i = 0; i < count; i++) store.appendLeafData(input(i));
  return store;
}

function flipBit(b: Uint8Array, bit: number): Uint8Array {
  const c = b.slice();
  const byte = Math.floor(bit / 8) % c.length;
  c[byte] = (c[byte] as number) ^ (1 << bit % 8);
  return c;
}

// ---------------------------------------------------------------------------

describe('RFC 6962 reference vectors', () => {
  const inputs = LEAF_INPUTS_HEX.map((h) => fromHex(h));
  const store = buildStore(inputs.length, (i) => inputs[i] as Uint8Array);

  it('hashes leaves and nodes with 0x00 / 0x01 prefixes', () => {
    expect(toHex(leafHash(new Uint8Array(0)))).toBe(NODE_HASHES_HEX[0][0]);
    expect(toHex(EMPTY_TREE_HASH)).toBe(ROOTS_HEX[0]);
    const l0 = leafHash(inputs[0] as Uint8Array);
    const l1 = leafHash(inputs[1] as Uint8Array);
    expect(toHex(nodeHash(l0, l1))).toBe(NODE_HASHES_HEX[1][0]);
  });

  it('stores exactly the published complete-subtree hashes', () => {
    NODE_HASHES_HEX.forEach((level, l) =>
      level.forEach((h, n) => expect(toHex(store.readSync([{ level: l, n }])[0] as Uint8Array)).toBe(h)),
    );
    expect(storedHashCount(8)).toBe(8 + 4 + 2 + 1);
  });

  it.each(ROOTS_HEX.map((r, size) => [size, r] as const))('root of size %d', async (size, root) => {
    expect(toHex(await treeHash(size, store))).toBe(root);
    expect(toHex(refMth(inputs.slice(0, size)))).toBe(root);
  });

  it.each(INCLUSION_PROOFS.map((v) => [v.index, v.size, v] as const))(
    'inclusion proof for leaf %d in tree %d',
    async (index, size, v) => {
      const proof = await proveInclusion(size, index, store);
      expect(hex(proof)).toEqual(v.proof);
      const leaf = leafHash(inputs[index] as Uint8Array);
      const root = fromHex(ROOTS_HEX[size] as string);
      expect(verifyInclusion(index, size, leaf, v.proof.map(fromHex), root)).toBe(true);
    },
  );

  it.each(CONSISTENCY_PROOFS.map((v) => [v.oldSize, v.newSize, v] as const))(
    'consistency proof %d → %d',
    async (oldSize, newSize, v) => {
      const proof = await proveConsistency(oldSize, newSize, store);
      expect(hex(proof)).toEqual(v.proof);
      const r1 = fromHex(ROOTS_HEX[oldSize] as string);
      const r2 = fromHex(ROOTS_HEX[newSize] as string);
      expect(verifyConsistency(oldSize, newSize, v.proof.map(fromHex), r1, r2)).toBe(true);
    },
  );

  it('rejects corrupted inclusion proofs (transparency-dev probes)', () => {
    for (const v of INCLUSION_PROOFS.filter((x) => x.proof.length > 0)) {
      const proof = v.proof.map(fromHex);
      const root = fromHex(ROOTS_HEX[v.size] as string);
      const leaf = leafHash(inputs[v.index] as Uint8Array);
      const bad: Array<[number, number, Uint8Array, Uint8Array[], Uint8Array]> = [
        [v.index - 1, v.size, leaf, proof, root],
        [v.index + 1, v.size, leaf, proof, root],
        [v.index ^ 2, v.size, leaf, proof, root],
        [v.index, v.size * 2, leaf, proof, root],
        [v.index, Math.floor(v.size / 2), leaf, proof, root],
        [v.index, v.size, leafHash(new TextEncoder().encode('WrongLeaf')), proof, root],
        [v.index, v.size, leaf, proof, EMPTY_TREE_HASH],
        [v.index, v.size, leaf, [...proof, root], root],
        [v.index, v.size, leaf, [root, ...proof], root],
        [v.index, v.size, leaf, proof.slice(0, -1), root],
        [v.index, v.size, leaf, [...proof, new Uint8Array(0)], root],
      ];
      for (const [i, s, l, p, r] of bad) expect(verifyInclusion(i, s, l, p, r)).toBe(false);
    }
  });

  it('rejects corrupted consistency proofs and handles edge sizes', () => {
    const roots = ROOTS_HEX.map((h) => fromHex(h));
    for (const v of CONSISTENCY_PROOFS.filter((x) => x.proof.length > 0)) {
      const proof = v.proof.map(fromHex);
      const r1 = roots[v.oldSize] as Uint8Array;
      const r2 = roots[v.newSize] as Uint8Array;
      const bad: Array<[number, number, Uint8Array[], Uint8Array, Uint8Array]> = [
        [v.oldSize - 1, v.newSize, proof, r1, r2],
        [v.oldSize + 1, v.newSize, proof, r1, r2],
        [v.oldSize ^ 2, v.newSize, proof, r1, r2],
        [v.oldSize, v.newSize * 2, proof, r1, r2],
        [v.oldSize, Math.floor(v.newSize / 2), proof, r1, r2],
        [v.oldSize, v.newSize, proof, r2, r1],
        [v.oldSize, v.newSize, [], r1, r2],
        [v.oldSize, v.newSize, [...proof, r1], r1, r2],
        [v.oldSize, v.newSize, [r2, ...proof], r1, r2],
        [v.oldSize, v.newSize, [proof[0] as Uint8Array, ...proof], r1, r2],
        [v.oldSize, v.newSize, proof.slice(0, -1), r1, r2],
      ];
      for (const [a, b, p, x, y] of bad) expect(verifyConsistency(a, b, p, x, y)).toBe(false);
    }
    const r = roots[3] as Uint8Array;
    expect(verifyConsistency(0, 0, [], EMPTY_TREE_HASH, EMPTY_TREE_HASH)).toBe(true);
    expect(verifyConsistency(0, 3, [], EMPTY_TREE_HASH, r)).toBe(true);
    expect(verifyConsistency(0, 3, [], r, r)).toBe(false);
    expect(verifyConsistency(0, 3, [r], EMPTY_TREE_HASH, r)).toBe(false);
    expect(verifyConsistency(3, 3, [], r, r)).toBe(true);
    expect(verifyConsistency(3, 3, [], r, EMPTY_TREE_HASH)).toBe(false);
    expect(verifyConsistency(3, 3, [r], r, r)).toBe(false);
    expect(verifyConsistency(4, 3, [], r, r)).toBe(false);
  });

  it('rejects out-of-range inclusion parameters', async () => {
    const some = leafHash(new Uint8Array([1]));
    for (const [i, s] of [[0, 0], [1, 0], [2, 1], [-1, 4], [0.5, 4]] as const) {
      expect(verifyInclusion(i, s, some, [], EMPTY_TREE_HASH)).toBe(false);
    }
    expect(verifyInclusion(0, 1, some, [], some)).toBe(true);
    expect(verifyInclusion(0, 1, some, [], new Uint8Array(0))).toBe(false);
    await expect(proveInclusion(8, 8, store)).rejects.toThrow(RangeError);
    await expect(proveConsistency(5, 4, store)).rejects.toThrow(RangeError);
  });
});

describe('cross-check against the naive RFC 9162 reference', () => {
  const N = 70;
  const inputs = Array.from({ length: N }, (_, i) => leafInput(i));
  const store = buildStore(N);

  it('roots, all inclusion proofs and all consistency proofs for sizes 1..70', async () => {
    for (let size = 1; size <= N; size++) {
      const d = inputs.slice(0, size);
      const root = await treeHash(size, store);
      expect(toHex(root)).toBe(toHex(refMth(d)));
      for (let m = 0; m < size; m++) {
        const proof = await proveInclusion(size, m, store);
        expect(hex(proof)).toEqual(hex(refPath(m, d)));
        expect(verifyInclusion(m, size, leafHash(d[m] as Uint8Array), proof, root)).toBe(true);
      }
      for (let m = 1; m < size; m++) {
        const proof = await proveConsistency(m, size, store);
        expect(hex(proof)).toEqual(hex(refSubproof(m, d, true)));
        expect(verifyConsistency(m, size, proof, refMth(d.slice(0, m)), root)).toBe(true);
      }
    }
  });
});

describe('cross-check against merkletreejs (independent npm implementation)', () => {
  // merkletreejs promotes a lone node unchanged to the next level, which yields
  // the RFC 6962 tree shape; we supply RFC 6962 leaf hashes and a 0x01-prefixed
  // node hash. Its proof (siblings bottom-up) is the RFC 9162 audit path.
  const nodeFn = (data: Buffer): Buffer =>
    createHash('sha256').update(Buffer.from([1])).update(data).digest();
  const store = buildStore(1100);

  it('matches roots and inclusion proofs for random sizes', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 1100 }), fc.nat(), async (size, seed) => {
        const leaves = Array.from({ length: size }, (_, i) => Buffer.from(leafHash(leafInput(i))));
        const tree = new MerkleTree(leaves, nodeFn, { hashLeaves: false });
        expect(toHex(await treeHash(size, store))).toBe(tree.getRoot().toString('hex'));
        const index = seed % size;
        const theirs = tree.getProof(leaves[index] as Buffer, index).map((p) => p.data.toString('hex'));
        expect(hex(await proveInclusion(size, index, store))).toEqual(theirs);
      }),
      { numRuns: 60 },
    );
  });
});

describe('property tests (sizes up to 3000)', () => {
  const MAX = 3000;
  let store: MemoryHashStore;
  let roots: Uint8Array[];
  beforeAll(async () => {
    store = buildStore(MAX);
    roots = [];
    for (let s = 0; s <= MAX; s++) roots.push(await treeHash(s, store));
  });

  const sizeAndIndex = fc
    .integer({ min: 1, max: MAX })
    .chain((size) => fc.tuple(fc.constant(size), fc.integer({ min: 0, max: size - 1 })));
  const sizes = fc
    .tuple(fc.integer({ min: 1, max: MAX }), fc.integer({ min: 1, max: MAX }))
    .map(([a, b]) => (a <= b ? ([a, b] as const) : ([b, a] as const)));

  it('every inclusion proof verifies; any single-bit change fails', async () => {
    await fc.assert(
      fc.asyncProperty(sizeAndIndex, fc.nat(), async ([size, index], bitSeed) => {
        const proof = await proveInclusion(size, index, store);
        const leaf = leafHash(leafInput(index));
        const root = roots[size] as Uint8Array;
        expect(verifyInclusion(index, size, leaf, proof, root)).toBe(true);
        expect(toHex(rootFromInclusionProof(index, size, leaf, proof) as Uint8Array)).toBe(toHex(root));
        const bit = bitSeed % 256;
        expect(verifyInclusion(index, size, flipBit(leaf, bit), proof, root)).toBe(false);
        expect(verifyInclusion(index, size, leaf, proof, flipBit(root, bit))).toBe(false);
        if (proof.length > 0) {
          const i = bitSeed % proof.length;
          const tampered = proof.slice();
          tampered[i] = flipBit(proof[i] as Uint8Array, bit);
          expect(verifyInclusion(index, size, leaf, tampered, root)).toBe(false);
        }
      }),
      { numRuns: 400 },
    );
  });

  it('every consistency proof verifies; any single-bit change fails', async () => {
    await fc.assert(
      fc.asyncProperty(sizes, fc.nat(), async ([oldSize, newSize], bitSeed) => {
        const proof = await proveConsistency(oldSize, newSize, store);
        const r1 = roots[oldSize] as Uint8Array;
        const r2 = roots[newSize] as Uint8Array;
        expect(verifyConsistency(oldSize, newSize, proof, r1, r2)).toBe(true);
        const bit = bitSeed % 256;
        expect(verifyConsistency(oldSize, newSize, proof, flipBit(r1, bit), r2)).toBe(false);
        expect(verifyConsistency(oldSize, newSize, proof, r1, flipBit(r2, bit))).toBe(false);
        if (proof.length > 0) {
          const i = bitSeed % proof.length;
          const tampered = proof.slice();
          tampered[i] = flipBit(proof[i] as Uint8Array, bit);
          expect(verifyConsistency(oldSize, newSize, tampered, r1, r2)).toBe(false);
        }
      }),
      { numRuns: 400 },
    );
  });
});

describe('stored hash layout', () => {
  it('linear index matches append order and round-trips', () => {
    const order: StoredHashIndex[] = [];
    const store = new MemoryHashStore();
    for (let i = 0; i < 300; i++) order.push(...store.appendLeafData(leafInput(i)));
    order.forEach((idx, pos) => {
      expect(storedHashLinearIndex(idx)).toBe(pos);
      expect(splitStoredHashLinearIndex(pos)).toEqual({ level: idx.level, n: idx.n });
    });
    expect(storedHashCount(300)).toBe(order.length);
  });

  it('handles indexes beyond 2^32 without 32-bit overflow', () => {
    for (const idx of [
      { level: 0, n: 2 ** 33 + 5 },
      { level: 7, n: 2 ** 40 + 3 },
      { level: 40, n: 3 },
    ]) {
      expect(splitStoredHashLinearIndex(storedHashLinearIndex(idx))).toEqual(idx);
    }
  });

  it('storedHashesForAppend equals the in-memory append', async () => {
    // Leaf 1023 (0b1111111111) completes ten subtrees: 11 stored hashes, 10 sibling reads.
    const store = buildStore(1023);
    store.resetCounters();
    const next = await storedHashesForAppend(1023, leafInput(1023), store);
    expect(store.hashesRead).toBe(10);
    expect(next.map((s) => s.level)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    const copy = buildStore(1024);
    for (const s of next) expect(toHex(s.hash)).toBe(toHex(copy.readSync([s])[0] as Uint8Array));
    expect(toHex(next[10]?.hash as Uint8Array)).toBe(toHex(await treeHash(1024, copy)));
    // Leaf 1000 (even) completes nothing and reads nothing.
    const even = await storedHashesForAppend(1000, leafInput(1000), buildStore(1000));
    expect(even.map((s) => s.level)).toEqual([0]);
  });

  it('batch append reproduces sequential appends and the new root', async () => {
    const base = buildStore(777);
    const extra = Array.from({ length: 300 }, (_, i) => leafHash(leafInput(777 + i)));
    base.resetCounters();
    const { storedHashes, rootHash, size } = await appendLeafHashes(777, extra, base);
    expect(base.readCalls).toBe(1);
    const full = buildStore(1077);
    expect(size).toBe(1077);
    expect(toHex(rootHash)).toBe(toHex(await treeHash(1077, full)));
    expect(storedHashes.map((s) => storedHashLinearIndex(s))).toEqual(
      Array.from({ length: storedHashCount(1077) - storedHashCount(777) }, (_, i) => storedHashCount(777) + i),
    );
    for (const s of storedHashes) expect(toHex(s.hash)).toBe(toHex(full.readSync([s])[0] as Uint8Array));
    const empty = await appendLeafHashes(0, [], new MemoryHashStore());
    expect(toHex(empty.rootHash)).toBe(toHex(EMPTY_TREE_HASH));
  });
});

describe('O(log n) reads at n = 100,000', () => {
  const N = 100_000;
  let store: MemoryHashStore;
  beforeAll(() => {
    store = buildStore(N);
  });
  const log2 = Math.ceil(Math.log2(N)); // 17

  it('each operation makes one read call of at most 2·⌈log2 n⌉ + 1 hashes', async () => {
    const cases: Array<[string, () => Promise<unknown>]> = [];
    for (const size of [N, N - 1, 65_537, 99_999, 77_777]) {
      cases.push([`treeHash(${size})`, () => treeHash(size, store)]);
      for (const index of [0, 1, size >> 1, size - 2, size - 1]) {
        cases.push([`proveInclusion(${size}, ${index})`, () => proveInclusion(size, index, store)]);
      }
      for (const old of [1, 2, 3, 1000, 65_535, size - 1]) {
        cases.push([`proveConsistency(${old}, ${size})`, () => proveConsistency(old, size, store)]);
      }
    }
    cases.push(['storedHashesForAppend', () => storedHashesForAppend(N, leafInput(N), store)]);
    for (const [name, run] of cases) {
      store.resetCounters();
      await run();
      expect({ name, calls: store.readCalls }).toEqual({ name, calls: store.readCalls === 0 ? 0 : 1 });
      expect({ name, read: store.hashesRead <= 2 * log2 + 1 }).toEqual({ name, read: true });
    }
  });

  it('proofs at n = 100,000 verify', async () => {
    const root = await treeHash(N, store);
    const proof = await proveInclusion(N, 54_321, store);
    expect(verifyInclusion(54_321, N, leafHash(leafInput(54_321)), proof, root)).toBe(true);
    const old = await treeHash(12_345, store);
    expect(verifyConsistency(12_345, N, await proveConsistency(12_345, N, store), old, root)).toBe(true);
  });
});

describe('tlog-tiles helpers', () => {
  it('formats tile paths per C2SP tlog-tiles', () => {
    expect(tilePath({ level: 0, index: 1234067, width: 256 })).toBe('tile/0/x001/x234/067');
    expect(tilePath({ level: 1, index: 0, width: 8 })).toBe('tile/1/000.p/8');
    expect(tilePath({ level: 2, index: 1000, width: 256 })).toBe('tile/2/x001/000');
    expect(() => tilePath({ level: 0, index: 0, width: 0 })).toThrow(RangeError);
  });

  it('locates stored hashes in tiles', () => {
    expect(tileForStoredHash({ level: 0, n: 300 })).toEqual({ tile: { level: 0, index: 1, width: 45 }, offset: 44, count: 1 });
    expect(tileForStoredHash({ level: 3, n: 5 })).toEqual({ tile: { level: 0, index: 0, width: 48 }, offset: 40, count: 8 });
    expect(tileForStoredHash({ level: 8, n: 2 })).toEqual({ tile: { level: 1, index: 0, width: 3 }, offset: 2, count: 1 });
    expect(tileForStoredHash({ level: 15, n: 1 })).toEqual({ tile: { level: 1, index: 0, width: 256 }, offset: 128, count: 128 });
  });

  it('lists the tiles that change on growth', () => {
    expect(newTiles(0, 3)).toEqual([{ level: 0, index: 0, width: 3 }]);
    expect(newTiles(3, 3)).toEqual([]);
    expect(newTiles(255, 513)).toEqual([
      { level: 0, index: 0, width: 256 },
      { level: 0, index: 1, width: 256 },
      { level: 0, index: 2, width: 1 },
      { level: 1, index: 0, width: 2 },
    ]);
  });

  it('TileHashReader serves identical proofs from tiles with few tile reads', async () => {
    const N = 70_000;
    const store = buildStore(N);
    // Build all tiles of the tree from the stored hashes, as a database would hold them.
    const tiles = new Map<string, Uint8Array>();
    for (const t of newTiles(0, N)) tiles.set(`${t.level}/${t.index}`, await readTileData(t, store));
    let tileReads = 0;
    let calls = 0;
    const source: TileReader = {
      readTiles(list: readonly Tile[]) {
        calls++;
        tileReads += list.length;
        return Promise.resolve(list.map((t) => tiles.get(`${t.level}/${t.index}`) as Uint8Array));
      },
    };
    const reader: HashReader = new TileHashReader(source);
    for (const [size, index] of [
      [N, 12_345],
      [N - 1, N - 2],
      [50_001, 0],
    ] as const) {
      calls = 0;
      tileReads = 0;
      expect(hex(await proveInclusion(size, index, reader))).toEqual(hex(await proveInclusion(size, index, store)));
      expect(calls).toBe(1);
      expect(tileReads).toBeLessThanOrEqual(8);
      expect(toHex(await treeHash(size, reader))).toBe(toHex(await treeHash(size, store)));
      expect(hex(await proveConsistency(size - 777, size, reader))).toEqual(hex(await proveConsistency(size - 777, size, store)));
    }
    const tile0 = tiles.get('0/0') as Uint8Array;
    expect(tile0.length).toBe(TILE_WIDTH * 32);
    expect(() => hashFromTile(tile0.subarray(0, 64), tileForStoredHash({ level: 0, n: 5 }))).toThrow(RangeError);
  });
});
