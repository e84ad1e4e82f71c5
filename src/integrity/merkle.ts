/**
 * RFC 9162 (Certificate Transparency 2.0) Merkle tree hashing, inclusion and
 * consistency proofs, over a store of "stored hashes" (complete-subtree roots)
 * in the style of Go's golang.org/x/mod/sumdb/tlog, with C2SP tlog-tiles
 * helpers (tile height 8).
 *
 * Model. Leaves are numbered 0, 1, 2, …. The stored hash with index
 * `(level, n)` is the root of the complete subtree covering leaves
 * `[n·2^level, (n+1)·2^level)`; level 0 holds leaf hashes. Appending leaf `n`
 * stores its leaf hash plus one node hash for every subtree it completes
 * (one per trailing 1 bit of `n`), so a tree of `s` leaves has fewer than `2s`
 * stored hashes and they never change once written (append-only). Every
 * Merkle tree hash MTH(D[lo:hi]) that an RFC 9162 proof needs is either one
 * stored hash or a right-to-left fold of the O(log n) maximal complete
 * subtrees that tile `[lo, hi)`, which is what bounds every operation here
 * to O(log n) hash reads.
 *
 * All operations are split into a pure *plan* (which stored hashes are
 * needed, see {@link HashPlan}) and an async execution against a
 * {@link HashReader}, so a database-backed reader serves each proof with a
 * single batched read.
 *
 * Hashing uses node:crypto (several times faster than pure-JS SHA-256 here,
 * and this is the hot path of every append and proof).
 *
 * Integers: sizes and indexes are JavaScript numbers and must be safe
 * integers (< 2^53). No 32-bit bitwise operators are used on them, so trees
 * beyond 2^31 leaves are handled correctly.
 *
 * @see https://www.rfc-editor.org/rfc/rfc9162#section-2.1 (RFC 9162 §2.1)
 * @see https://pkg.go.dev/golang.org/x/mod/sumdb/tlog (stored-hash layout)
 * @see https://c2sp.org/tlog-tiles (tiles)
 * @packageDocumentation
 */
import { createHash } from 'node:crypto';
import { bytesEqual } from './encoding.js';

/** Size in bytes of every hash in the tree (SHA-256). */
export const HASH_SIZE = 32;

/** RFC 9162 §2.1.1 domain-separation prefix for leaf hashes. */
const LEAF_PREFIX = new Uint8Array([0x00]);
/** RFC 9162 §2.1.1 domain-separation prefix for interior node hashes. */
const NODE_PREFIX = new Uint8Array([0x01]);

/**
 * Merkle tree hash of the empty tree: SHA-256 of the empty string
 * (RFC 9162 §2.1.1, `MTH({}) = HASH()`).
 */
export const EMPTY_TREE_HASH: Uint8Array = sha256Bytes(new Uint8Array(0));

function sha256Bytes(data: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(data).digest());
}

/**
 * RFC 9162 §2.1.1 leaf hash: `SHA-256(0x00 ‖ data)`.
 *
 * @param data - the leaf input (for fhir-anchor: a 32-byte commitment).
 * @returns the 32-byte leaf hash.
 */
export function leafHash(data: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(LEAF_PREFIX).update(data).digest());
}

/**
 * RFC 9162 §2.1.1 interior node hash: `SHA-256(0x01 ‖ left ‖ right)`.
 *
 * @param left - 32-byte hash of the left subtree.
 * @param right - 32-byte hash of the right subtree.
 * @returns the 32-byte node hash.
 */
export function nodeHash(left: Uint8Array, right: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(NODE_PREFIX).update(left).update(right).digest());
}

// ---------------------------------------------------------------------------
// Integer helpers (no 32-bit bitwise operators: sizes may exceed 2^31).
// ---------------------------------------------------------------------------

function assertCount(name: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`${name} must be a non-negative safe integer, got ${value}`);
  }
}

function isOdd(x: number): boolean {
  return x % 2 === 1;
}

function half(x: number): number {
  return Math.floor(x / 2);
}

/** Largest power of two strictly less than n (n ≥ 2): RFC 9162's split point k. */
function splitPoint(n: number): number {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

/** Largest power of two ≤ n (n ≥ 1), with its exponent. */
function floorPow2(n: number): { k: number; level: number } {
  let k = 1;
  let level = 0;
  while (k * 2 <= n) {
    k *= 2;
    level++;
  }
  return { k, level };
}

function isPowerOfTwo(n: number): boolean {
  return n >= 1 && floorPow2(n).k === n;
}

/** Number of trailing 1 bits of n. */
function trailingOnes(n: number): number {
  let t = 0;
  while (isOdd(n)) {
    t++;
    n = half(n);
  }
  return t;
}

// ---------------------------------------------------------------------------
// Stored hash indexes.
// ---------------------------------------------------------------------------

/**
 * Identifies a stored hash: the root of the complete subtree at height
 * `level` covering leaves `[n·2^level, (n+1)·2^level)`.
 * Same meaning as Go tlog's `StoredHashIndex(level, n)` arguments.
 */
export interface StoredHashIndex {
  /** Height above the leaves (0 = leaf hash). */
  readonly level: number;
  /** Position of the subtree among the subtrees of that height (0-based). */
  readonly n: number;
}

/** A stored hash together with its index; what an append must persist. */
export interface StoredHash extends StoredHashIndex {
  /** The 32-byte subtree root. */
  readonly hash: Uint8Array;
}

/**
 * Reads previously stored hashes. Implementations return exactly one 32-byte
 * hash per requested index, in request order, and reject (throw) when a hash
 * is not stored. Each proof operation in this module makes at most one call.
 */
export interface HashReader {
  /**
   * @param indexes - the stored hashes wanted.
   * @returns their hashes, in the same order.
   */
  readHashes(indexes: readonly StoredHashIndex[]): Promise<Uint8Array[]>;
}

/**
 * Linear position of a stored hash in append order (Go tlog's
 * `StoredHashIndex`): the hashes are written leaf 0, leaf 1, node(1,0),
 * leaf 2, leaf 3, node(1,1), node(2,0), … . Useful as a single integer key.
 *
 * @param idx - the stored hash index.
 * @returns its 0-based position in append order.
 */
export function storedHashLinearIndex(idx: StoredHashIndex): number {
  assertCount('level', idx.level);
  assertCount('n', idx.n);
  // The hash (level, n) is written together with leaf m = (n+1)·2^level − 1,
  // the last leaf of its subtree, right after that leaf's own hash and the
  // hashes of the `level` − 1 lower subtrees that leaf completes.
  const lastLeaf = (idx.n + 1) * 2 ** idx.level - 1;
  return storedHashCount(lastLeaf) + idx.level;
}

/**
 * Inverse of {@link storedHashLinearIndex} (Go tlog's `SplitStoredHashIndex`).
 *
 * @param index - a 0-based position in append order.
 * @returns the stored hash index at that position.
 */
export function splitStoredHashLinearIndex(index: number): StoredHashIndex {
  assertCount('index', index);
  // storedHashCount(m) ≥ m, and ≤ 2m, so the leaf that wrote `index` is in
  // [index/2, index]; start low and walk forward (≤ log2(index) steps).
  let leaf = half(index);
  let first = storedHashCount(leaf);
  for (;;) {
    const next = first + 1 + trailingOnes(leaf);
    if (next > index) break;
    leaf++;
    first = next;
  }
  const level = index - first;
  return { level, n: Math.floor(leaf / 2 ** level) };
}

/**
 * Number of stored hashes for a tree of `size` leaves (Go tlog's
 * `StoredHashCount`): Σ_{k≥0} ⌊size / 2^k⌋, which is < 2·size.
 *
 * @param size - tree size in leaves.
 * @returns the stored-hash count.
 */
export function storedHashCount(size: number): number {
  assertCount('size', size);
  let total = 0;
  for (let m = size; m > 0; m = half(m)) total += m;
  return total;
}

/**
 * Maximal complete subtrees tiling `[lo, hi)`, left to right.
 * Requires that `lo` is aligned to the largest power of two ≤ hi − lo, which
 * holds for every range produced by the RFC 9162 recursion (each range starts
 * at a multiple of a power of two at least as large as itself).
 */
function rangeIndexes(lo: number, hi: number, out: StoredHashIndex[]): void {
  while (lo < hi) {
    const { k, level } = floorPow2(hi - lo);
    if (lo % k !== 0) throw new Error(`merkle: misaligned range [${lo}, ${hi})`);
    out.push({ level, n: lo / k });
    lo += k;
  }
}

/** MTH of a range from the hashes of its maximal complete subtrees (left to right). */
function foldRange(hashes: readonly Uint8Array[], start: number, count: number): Uint8Array {
  let h = hashes[start + count - 1] as Uint8Array;
  for (let i = start + count - 2; i >= start; i--) h = nodeHash(hashes[i] as Uint8Array, h);
  return h;
}

/**
 * A pure description of the stored hashes an operation needs and how to
 * finish it once they are read. Lets a store batch reads or run synchronously.
 */
export interface HashPlan<T> {
  /** Stored hashes to read (possibly empty). */
  readonly indexes: readonly StoredHashIndex[];
  /**
   * Completes the operation.
   *
   * @param hashes - the hashes for {@link HashPlan.indexes}, same order.
   */
  finish(hashes: readonly Uint8Array[]): T;
}

/** Plan that folds each of the given leaf ranges into its Merkle tree hash. */
function planRanges(ranges: ReadonlyArray<readonly [number, number]>): HashPlan<Uint8Array[]> {
  const indexes: StoredHashIndex[] = [];
  const bounds: number[] = [0];
  for (const [lo, hi] of ranges) {
    rangeIndexes(lo, hi, indexes);
    bounds.push(indexes.length);
  }
  return {
    indexes,
    finish(hashes) {
      checkHashes(hashes, indexes.length);
      const out: Uint8Array[] = [];
      for (let r = 0; r < ranges.length; r++) {
        const start = bounds[r] as number;
        out.push(foldRange(hashes, start, (bounds[r + 1] as number) - start));
      }
      return out;
    },
  };
}

function checkHashes(hashes: readonly Uint8Array[], expected: number): void {
  if (hashes.length !== expected) {
    throw new Error(`merkle: hash reader returned ${hashes.length} hashes, expected ${expected}`);
  }
  for (const h of hashes) {
    if (!(h instanceof Uint8Array) || h.length !== HASH_SIZE) {
      throw new Error('merkle: hash reader returned a hash that is not 32 bytes');
    }
  }
}

/**
 * Runs a plan against a reader with a single `readHashes` call (none when the
 * plan needs no hashes).
 *
 * @param plan - the plan.
 * @param reader - the stored-hash source.
 * @returns the plan's result.
 */
export async function runPlan<T>(plan: HashPlan<T>, reader: HashReader): Promise<T> {
  const hashes = plan.indexes.length === 0 ? [] : await reader.readHashes(plan.indexes);
  return plan.finish(hashes);
}

// ---------------------------------------------------------------------------
// Appends.
// ---------------------------------------------------------------------------

/**
 * Plans the stored hashes written when leaf `n` (the tree's current size) is
 * appended with leaf hash `leaf`: the leaf hash at (0, n), then one node hash
 * per subtree the leaf completes, lowest first. Reads the left siblings
 * (at most ⌊log2 n⌋ hashes).
 *
 * @param n - index of the new leaf (= tree size before the append).
 * @param leaf - its 32-byte leaf hash ({@link leafHash} of the leaf data).
 */
export function planStoredHashesForAppend(n: number, leaf: Uint8Array): HashPlan<StoredHash[]> {
  assertCount('n', n);
  if (leaf.length !== HASH_SIZE) throw new RangeError('leaf hash must be 32 bytes');
  const t = trailingOnes(n);
  // Left sibling at level i is (i, ⌊n/2^i⌋ − 1). Requested highest level first,
  // which is ascending linear (storage) order.
  const indexes: StoredHashIndex[] = [];
  for (let i = t - 1; i >= 0; i--) indexes.push({ level: i, n: Math.floor(n / 2 ** i) - 1 });
  return {
    indexes,
    finish(hashes) {
      checkHashes(hashes, indexes.length);
      const out: StoredHash[] = [{ level: 0, n, hash: leaf }];
      let h = leaf;
      for (let i = 0; i < t; i++) {
        h = nodeHash(hashes[t - 1 - i] as Uint8Array, h);
        out.push({ level: i + 1, n: Math.floor(n / 2 ** (i + 1)), hash: h });
      }
      return out;
    },
  };
}

/**
 * The new hashes to store when appending leaf `n` with data `leafData`
 * (Go tlog's `StoredHashes`). O(log n) reads, one reader call.
 *
 * @param n - index of the new leaf (= tree size before the append).
 * @param leafData - the leaf input; it is hashed with {@link leafHash}.
 * @param reader - source of the hashes already stored for leaves `[0, n)`.
 * @returns the stored hashes to persist, in storage order.
 */
export async function storedHashesForAppend(n: number, leafData: Uint8Array, reader: HashReader): Promise<StoredHash[]> {
  return runPlan(planStoredHashesForAppend(n, leafHash(leafData)), reader);
}

/**
 * Batch append: computes every stored hash for leaves `[oldSize, oldSize +
 * leafHashes.length)` and the new root, reading only the O(log n) "frontier"
 * of the old tree (its maximal complete subtrees) in one call.
 *
 * @param oldSize - tree size before the batch.
 * @param leafHashes - the new leaves' 32-byte leaf hashes, in order.
 * @param reader - source of the hashes already stored for `[0, oldSize)`.
 * @returns the hashes to persist (storage order) and the root of the new tree.
 */
export async function appendLeafHashes(
  oldSize: number,
  leafHashes: readonly Uint8Array[],
  reader: HashReader,
): Promise<{ storedHashes: StoredHash[]; rootHash: Uint8Array; size: number }> {
  assertCount('oldSize', oldSize);
  const frontierIdx: StoredHashIndex[] = [];
  rangeIndexes(0, oldSize, frontierIdx);
  const read = frontierIdx.length === 0 ? [] : await reader.readHashes(frontierIdx);
  checkHashes(read, frontierIdx.length);
  // Frontier stack: maximal complete subtrees of the current tree, left to right,
  // strictly decreasing in level. Appending a leaf pushes a level-0 entry and
  // merges equal-level neighbours, exactly reproducing the stored-hash sequence.
  const stack: StoredHash[] = frontierIdx.map((idx, i) => ({ ...idx, hash: read[i] as Uint8Array }));
  const storedHashes: StoredHash[] = [];
  let n = oldSize;
  for (const leaf of leafHashes) {
    if (leaf.length !== HASH_SIZE) throw new RangeError('leaf hash must be 32 bytes');
    let top: StoredHash = { level: 0, n, hash: leaf };
    storedHashes.push(top);
    for (;;) {
      const prev = stack[stack.length - 1];
      if (prev === undefined || prev.level !== top.level) break;
      stack.pop();
      top = { level: top.level + 1, n: prev.n / 2, hash: nodeHash(prev.hash, top.hash) };
      storedHashes.push(top);
    }
    stack.push(top);
    n++;
  }
  const rootHash = stack.length === 0 ? EMPTY_TREE_HASH : foldRange(stack.map((s) => s.hash), 0, stack.length);
  return { storedHashes, rootHash, size: n };
}

// ---------------------------------------------------------------------------
// Tree hash.
// ---------------------------------------------------------------------------

/**
 * Plans MTH(D[0:size]) (RFC 9162 §2.1.1): one read per maximal complete
 * subtree, at most ⌈log2 size⌉ + 1 hashes.
 *
 * @param size - tree size in leaves.
 */
export function planTreeHash(size: number): HashPlan<Uint8Array> {
  assertCount('size', size);
  if (size === 0) return { indexes: [], finish: () => EMPTY_TREE_HASH };
  const plan = planRanges([[0, size]]);
  return { indexes: plan.indexes, finish: (hashes) => plan.finish(hashes)[0] as Uint8Array };
}

/**
 * Root hash of the tree with the first `size` leaves (Go tlog's `TreeHash`).
 *
 * @param size - tree size in leaves (0 gives {@link EMPTY_TREE_HASH}).
 * @param reader - stored-hash source.
 * @returns the 32-byte Merkle tree hash.
 */
export async function treeHash(size: number, reader: HashReader): Promise<Uint8Array> {
  return runPlan(planTreeHash(size), reader);
}

// ---------------------------------------------------------------------------
// Inclusion proofs (RFC 9162 §2.1.3).
// ---------------------------------------------------------------------------

/**
 * Plans the inclusion proof PATH(index, D[0:size]) of RFC 9162 §2.1.3.1.
 * The proof lists sibling subtree hashes from the leaf's sibling up to the
 * root's child. Only the first subtree hash taken on the right spine of the
 * tree can be incomplete; all others are single stored hashes, so the plan
 * needs at most about 2·log2(size) hashes.
 *
 * @param size - tree size (> index).
 * @param index - 0-based leaf index.
 */
export function planInclusionProof(size: number, index: number): HashPlan<Uint8Array[]> {
  assertCount('size', size);
  assertCount('index', index);
  if (index >= size) throw new RangeError(`leaf index ${index} is not in a tree of size ${size}`);
  const rootToLeaf: Array<readonly [number, number]> = [];
  let lo = 0;
  let hi = size;
  while (hi - lo > 1) {
    const k = splitPoint(hi - lo);
    if (index < lo + k) {
      rootToLeaf.push([lo + k, hi]);
      hi = lo + k;
    } else {
      rootToLeaf.push([lo, lo + k]);
      lo += k;
    }
  }
  return planRanges(rootToLeaf.reverse());
}

/**
 * Generates the RFC 9162 inclusion proof for leaf `index` in the tree of
 * `size` leaves (Go tlog's `ProveRecord`). One reader call, O(log size) hashes.
 *
 * @param size - tree size (> index).
 * @param index - 0-based leaf index.
 * @param reader - stored-hash source.
 * @returns the audit path, leaf side first.
 * @throws RangeError when `index >= size`.
 */
export async function proveInclusion(size: number, index: number, reader: HashReader): Promise<Uint8Array[]> {
  return runPlan(planInclusionProof(size, index), reader);
}

function allHashSized(hashes: readonly Uint8Array[]): boolean {
  return hashes.every((h) => h instanceof Uint8Array && h.length === HASH_SIZE);
}

/**
 * Recomputes the root from an inclusion proof using the verification
 * algorithm of RFC 9162 §2.1.3.2.
 *
 * @param index - 0-based leaf index.
 * @param size - tree size.
 * @param leaf - the 32-byte leaf hash.
 * @param proof - the audit path.
 * @returns the implied root, or `undefined` when the proof is malformed
 *   (wrong length for this index/size, or hashes that are not 32 bytes).
 */
export function rootFromInclusionProof(
  index: number,
  size: number,
  leaf: Uint8Array,
  proof: readonly Uint8Array[],
): Uint8Array | undefined {
  if (!Number.isSafeInteger(index) || !Number.isSafeInteger(size) || index < 0 || index >= size) return undefined;
  if (leaf.length !== HASH_SIZE || !allHashSized(proof)) return undefined;
  let fn = index;
  let sn = size - 1;
  let r = leaf;
  for (const p of proof) {
    if (sn === 0) return undefined;
    if (isOdd(fn) || fn === sn) {
      r = nodeHash(p, r);
      // fn is a left child with no right sibling at these levels: climb them.
      if (!isOdd(fn)) {
        while (!isOdd(fn) && fn !== 0) {
          fn = half(fn);
          sn = half(sn);
        }
      }
    } else {
      r = nodeHash(r, p);
    }
    fn = half(fn);
    sn = half(sn);
  }
  return sn === 0 ? r : undefined;
}

/**
 * Verifies an RFC 9162 inclusion proof (§2.1.3.2; Go tlog's `CheckRecord`).
 *
 * @param index - 0-based leaf index.
 * @param size - tree size.
 * @param leaf - the 32-byte leaf hash ({@link leafHash} of the leaf data).
 * @param proof - the audit path, leaf side first.
 * @param root - the trusted 32-byte root for `size` (e.g. from a checkpoint).
 * @returns true only when the proof is well-formed and yields `root`.
 */
export function verifyInclusion(
  index: number,
  size: number,
  leaf: Uint8Array,
  proof: readonly Uint8Array[],
  root: Uint8Array,
): boolean {
  const computed = rootFromInclusionProof(index, size, leaf, proof);
  return computed !== undefined && root.length === HASH_SIZE && bytesEqual(computed, root);
}

// ---------------------------------------------------------------------------
// Consistency proofs (RFC 9162 §2.1.4).
// ---------------------------------------------------------------------------

/**
 * Plans the consistency proof PROOF(oldSize, D[0:newSize]) =
 * SUBPROOF(oldSize, D[0:newSize], true) of RFC 9162 §2.1.4.1. The proof is
 * empty when `oldSize` is 0 or equals `newSize`.
 *
 * @param oldSize - size of the earlier tree.
 * @param newSize - size of the later tree (≥ oldSize).
 */
export function planConsistencyProof(oldSize: number, newSize: number): HashPlan<Uint8Array[]> {
  assertCount('oldSize', oldSize);
  assertCount('newSize', newSize);
  if (oldSize > newSize) throw new RangeError(`old size ${oldSize} exceeds new size ${newSize}`);
  if (oldSize === 0 || oldSize === newSize) return planRanges([]);
  // Walk down SUBPROOF(m, D[lo:hi], b). Each step emits one subtree hash that
  // comes *after* the deeper part of the proof, so collect and reverse.
  const descent: Array<readonly [number, number]> = [];
  let lo = 0;
  let hi = newSize;
  let m = oldSize; // old tree size relative to lo
  let startFromOldRoot = true; // RFC 9162's flag b
  while (m !== hi - lo) {
    const k = splitPoint(hi - lo);
    if (m <= k) {
      descent.push([lo + k, hi]);
      hi = lo + k;
    } else {
      descent.push([lo, lo + k]);
      lo += k;
      m -= k;
      startFromOldRoot = false;
    }
  }
  const ranges: Array<readonly [number, number]> = startFromOldRoot ? [] : [[lo, hi]];
  return planRanges(ranges.concat(descent.reverse()));
}

/**
 * Generates the RFC 9162 consistency proof between the trees of `oldSize`
 * and `newSize` leaves (Go tlog's `ProveTree`). One reader call, O(log n).
 *
 * @param oldSize - size of the earlier tree (0 or equal sizes give `[]`).
 * @param newSize - size of the later tree.
 * @param reader - stored-hash source.
 * @returns the consistency proof hashes.
 * @throws RangeError when `oldSize > newSize`.
 */
export async function proveConsistency(oldSize: number, newSize: number, reader: HashReader): Promise<Uint8Array[]> {
  return runPlan(planConsistencyProof(oldSize, newSize), reader);
}

/**
 * Verifies an RFC 9162 consistency proof (§2.1.4.2; Go tlog's `CheckTree`).
 *
 * Edge cases (not covered by the RFC algorithm, which assumes
 * 0 < oldSize < newSize): equal sizes require an empty proof and equal roots;
 * `oldSize` 0 requires an empty proof and `oldRoot` equal to
 * {@link EMPTY_TREE_HASH} (every tree extends the empty tree).
 *
 * @param oldSize - size of the earlier tree.
 * @param newSize - size of the later tree.
 * @param proof - the consistency proof.
 * @param oldRoot - trusted 32-byte root of the earlier tree.
 * @param newRoot - trusted 32-byte root of the later tree.
 * @returns true only when the proof shows the old tree is a prefix of the new.
 */
export function verifyConsistency(
  oldSize: number,
  newSize: number,
  proof: readonly Uint8Array[],
  oldRoot: Uint8Array,
  newRoot: Uint8Array,
): boolean {
  if (!Number.isSafeInteger(oldSize) || !Number.isSafeInteger(newSize)) return false;
  if (oldSize < 0 || oldSize > newSize) return false;
  if (oldRoot.length !== HASH_SIZE || newRoot.length !== HASH_SIZE || !allHashSized(proof)) return false;
  if (oldSize === 0) return proof.length === 0 && bytesEqual(oldRoot, EMPTY_TREE_HASH);
  if (oldSize === newSize) return proof.length === 0 && bytesEqual(oldRoot, newRoot);
  if (proof.length === 0) return false;
  // When the old tree is a complete subtree its root is not sent; it is the
  // starting point of both running hashes.
  const path = isPowerOfTwo(oldSize) ? [oldRoot, ...proof] : proof;
  let fn = oldSize - 1;
  let sn = newSize - 1;
  while (isOdd(fn)) {
    fn = half(fn);
    sn = half(sn);
  }
  let fr = path[0] as Uint8Array;
  let sr = fr;
  for (let i = 1; i < path.length; i++) {
    const c = path[i] as Uint8Array;
    if (sn === 0) return false;
    if (isOdd(fn) || fn === sn) {
      fr = nodeHash(c, fr);
      sr = nodeHash(c, sr);
      if (!isOdd(fn)) {
        while (!isOdd(fn) && fn !== 0) {
          fn = half(fn);
          sn = half(sn);
        }
      }
    } else {
      sr = nodeHash(sr, c);
    }
    fn = half(fn);
    sn = half(sn);
  }
  return sn === 0 && bytesEqual(fr, oldRoot) && bytesEqual(sr, newRoot);
}

// ---------------------------------------------------------------------------
// In-memory store (tests, tools).
// ---------------------------------------------------------------------------

/**
 * An in-memory, append-only stored-hash store implementing {@link HashReader}.
 * Counts reads so tests can assert the O(log n) bounds. Not for production
 * persistence (everything lives in one array).
 */
export class MemoryHashStore implements HashReader {
  /** Stored hashes by {@link storedHashLinearIndex}. */
  private readonly hashes: Uint8Array[] = [];
  private leaves = 0;
  /** Number of `readHashes` calls since the last {@link MemoryHashStore.resetCounters}. */
  readCalls = 0;
  /** Number of hashes returned by `readHashes` since the last reset. */
  hashesRead = 0;

  /** Current tree size in leaves. */
  get size(): number {
    return this.leaves;
  }

  /**
   * Appends one leaf by its leaf hash.
   *
   * @param leaf - the 32-byte leaf hash.
   * @returns the stored hashes written.
   */
  appendLeafHash(leaf: Uint8Array): StoredHash[] {
    const plan = planStoredHashesForAppend(this.leaves, leaf);
    const stored = plan.finish(this.readSync(plan.indexes));
    for (const s of stored) this.hashes.push(s.hash);
    this.leaves++;
    return stored;
  }

  /**
   * Appends one leaf by its data (hashed with {@link leafHash}).
   *
   * @param data - the leaf input.
   * @returns the stored hashes written.
   */
  appendLeafData(data: Uint8Array): StoredHash[] {
    return this.appendLeafHash(leafHash(data));
  }

  /**
   * Synchronous read (does not touch the counters).
   *
   * @param indexes - stored hashes wanted.
   * @returns their hashes.
   * @throws RangeError when a hash is not stored.
   */
  readSync(indexes: readonly StoredHashIndex[]): Uint8Array[] {
    return indexes.map((idx) => {
      const h = this.hashes[storedHashLinearIndex(idx)];
      if (h === undefined) throw new RangeError(`stored hash (${idx.level}, ${idx.n}) not present`);
      return h;
    });
  }

  /** {@inheritDoc HashReader.readHashes} */
  readHashes(indexes: readonly StoredHashIndex[]): Promise<Uint8Array[]> {
    this.readCalls++;
    this.hashesRead += indexes.length;
    try {
      return Promise.resolve(this.readSync(indexes));
    } catch (err) {
      return Promise.reject(err as Error);
    }
  }

  /** Resets {@link MemoryHashStore.readCalls} and {@link MemoryHashStore.hashesRead}. */
  resetCounters(): void {
    this.readCalls = 0;
    this.hashesRead = 0;
  }
}

// ---------------------------------------------------------------------------
// C2SP tlog-tiles helpers (tile height 8).
// ---------------------------------------------------------------------------

/** Tile height (C2SP tlog-tiles fixes it at 8). */
export const TILE_HEIGHT = 8;
/** Hashes in a full tile (2^8). */
export const TILE_WIDTH = 256;

/**
 * A tile (C2SP tlog-tiles): tile level `level` stores the stored hashes of
 * tree level `8·level`, 256 per tile; tile `index` holds hashes
 * `[index·256, index·256 + width)` of that tree level. `width` < 256 means a
 * partial tile.
 */
export interface Tile {
  /** Tile level L (tree level 8·L). */
  readonly level: number;
  /** Tile index N within its level. */
  readonly index: number;
  /** Number of hashes W, 1..256. */
  readonly width: number;
}

/** Where a stored hash can be computed from within one tile. */
export interface TileLocation {
  /** The smallest tile (minimal width) that contains the needed hashes. */
  readonly tile: Tile;
  /** First tile entry used. */
  readonly offset: number;
  /**
   * Number of consecutive tile entries whose complete-subtree root is the
   * stored hash (a power of two ≤ 128; 1 when the level is a multiple of 8,
   * in which case the hash is literally the entry at `offset`).
   */
  readonly count: number;
}

/**
 * Locates a stored hash in the tile layout (Go tlog's `TileForIndex`).
 * Hashes whose level is a multiple of 8 are tile entries; hashes at the 7
 * levels in between are not stored but recomputed from up to 128 entries of
 * one tile, so any stored hash costs one tile (one database row) to read.
 *
 * @param idx - the stored hash index.
 * @returns the tile and the entry range that hash covers.
 */
export function tileForStoredHash(idx: StoredHashIndex): TileLocation {
  assertCount('level', idx.level);
  assertCount('n', idx.n);
  const tileLevel = Math.floor(idx.level / TILE_HEIGHT);
  const levelInTile = idx.level - tileLevel * TILE_HEIGHT;
  const count = 2 ** levelInTile;
  const firstEntry = idx.n * count; // index among tree-level-8L hashes
  const index = Math.floor(firstEntry / TILE_WIDTH);
  const offset = firstEntry - index * TILE_WIDTH;
  return { tile: { level: tileLevel, index, width: offset + count }, offset, count };
}

/**
 * Computes a stored hash from tile data (Go tlog's `HashFromTile`).
 *
 * @param data - the tile's concatenated 32-byte hashes (at least
 *   `location.tile.width` of them; a wider version of the same tile is fine
 *   since tile entries never change).
 * @param location - from {@link tileForStoredHash}.
 * @returns the stored hash.
 * @throws RangeError when `data` is too short.
 */
export function hashFromTile(data: Uint8Array, location: TileLocation): Uint8Array {
  const { offset, count } = location;
  if (data.length % HASH_SIZE !== 0 || data.length < (offset + count) * HASH_SIZE) {
    throw new RangeError(
      `tile ${location.tile.level}/${location.tile.index} has ${data.length / HASH_SIZE} hashes, need ${offset + count}`,
    );
  }
  let level: Uint8Array[] = [];
  for (let i = offset; i < offset + count; i++) level.push(data.subarray(i * HASH_SIZE, (i + 1) * HASH_SIZE));
  while (level.length > 1) {
    const next: Uint8Array[] = [];
    for (let i = 0; i < level.length; i += 2) next.push(nodeHash(level[i] as Uint8Array, level[i + 1] as Uint8Array));
    level = next;
  }
  return new Uint8Array(level[0] as Uint8Array);
}

/**
 * Tile URL path per C2SP tlog-tiles: `tile/<L>/<N>[.p/<W>]`, with N written
 * as 3-digit groups, all but the last prefixed by `x` (e.g. 1234067 →
 * `x001/x234/067`).
 *
 * @param tile - the tile.
 * @returns the relative path.
 */
export function tilePath(tile: Tile): string {
  assertCount('tile level', tile.level);
  assertCount('tile index', tile.index);
  if (!Number.isInteger(tile.width) || tile.width < 1 || tile.width > TILE_WIDTH) {
    throw new RangeError(`tile width must be 1..${TILE_WIDTH}`);
  }
  let n = tile.index;
  const groups: string[] = [];
  do {
    groups.unshift((n % 1000).toString().padStart(3, '0'));
    n = Math.floor(n / 1000);
  } while (n > 0);
  const path = groups.map((g, i) => (i < groups.length - 1 ? `x${g}` : g)).join('/');
  return `tile/${tile.level}/${path}${tile.width < TILE_WIDTH ? `.p/${tile.width}` : ''}`;
}

/**
 * The tiles that gain entries when the tree grows from `oldSize` to
 * `newSize` leaves (Go tlog's `NewTiles`), each with its new width.
 *
 * @param oldSize - previous tree size.
 * @param newSize - new tree size (≥ oldSize).
 * @returns tiles to (re)write, lowest level first.
 */
export function newTiles(oldSize: number, newSize: number): Tile[] {
  assertCount('oldSize', oldSize);
  assertCount('newSize', newSize);
  if (oldSize > newSize) throw new RangeError('oldSize exceeds newSize');
  const out: Tile[] = [];
  for (let level = 0; ; level++) {
    const span = TILE_WIDTH ** level; // leaves per tile entry at this level
    const newCount = Math.floor(newSize / span);
    if (newCount === 0) break;
    const oldCount = Math.floor(oldSize / span);
    for (let index = Math.floor(oldCount / TILE_WIDTH); index * TILE_WIDTH < newCount; index++) {
      const width = Math.min(TILE_WIDTH, newCount - index * TILE_WIDTH);
      const oldWidth = Math.max(0, Math.min(TILE_WIDTH, oldCount - index * TILE_WIDTH));
      if (width > oldWidth) out.push({ level, index, width });
    }
  }
  return out;
}

/**
 * The stored hashes that make up a tile, in entry order.
 *
 * @param tile - the tile.
 * @returns `(8·level, index·256 + i)` for `i < width`.
 */
export function tileEntryIndexes(tile: Tile): StoredHashIndex[] {
  const out: StoredHashIndex[] = [];
  for (let i = 0; i < tile.width; i++) out.push({ level: tile.level * TILE_HEIGHT, n: tile.index * TILE_WIDTH + i });
  return out;
}

/**
 * Reads a tile's bytes (concatenated hashes) from a stored-hash source
 * (Go tlog's `ReadTileData`), e.g. to build tiles from an append's output.
 *
 * @param tile - the tile.
 * @param reader - stored-hash source.
 * @returns `width × 32` bytes.
 */
export async function readTileData(tile: Tile, reader: HashReader): Promise<Uint8Array> {
  const indexes = tileEntryIndexes(tile);
  const hashes = await reader.readHashes(indexes);
  checkHashes(hashes, indexes.length);
  const out = new Uint8Array(indexes.length * HASH_SIZE);
  hashes.forEach((h, i) => out.set(h, i * HASH_SIZE));
  return out;
}

/** Source of tile bytes, e.g. one PostgreSQL row per tile. */
export interface TileReader {
  /**
   * @param tiles - tiles wanted; each result must hold at least `width`
   *   hashes (a wider, later version of the same tile is acceptable).
   * @returns the tiles' concatenated 32-byte hashes, same order.
   */
  readTiles(tiles: readonly Tile[]): Promise<Uint8Array[]>;
}

/**
 * Adapts a {@link TileReader} into a {@link HashReader}: groups the requested
 * stored hashes by tile and issues one `readTiles` call per `readHashes`
 * call. A proof thus touches O(log n) tiles (≈ 2·log2(n)/8 + small constant).
 *
 * Trust: tile bytes are taken as authentic (they come from our own
 * database). A client-side reader fetching tiles from an untrusted server
 * would additionally have to authenticate them against a signed root.
 */
export class TileHashReader implements HashReader {
  /** @param tiles - the tile source. */
  constructor(private readonly tiles: TileReader) {}

  /** {@inheritDoc HashReader.readHashes} */
  async readHashes(indexes: readonly StoredHashIndex[]): Promise<Uint8Array[]> {
    const locations = indexes.map(tileForStoredHash);
    const wanted = new Map<string, Tile>();
    for (const { tile } of locations) {
      const key = `${tile.level}/${tile.index}`;
      const seen = wanted.get(key);
      if (seen === undefined || seen.width < tile.width) wanted.set(key, tile);
    }
    const tileList = [...wanted.values()];
    const data = tileList.length === 0 ? [] : await this.tiles.readTiles(tileList);
    if (data.length !== tileList.length) throw new Error('tile reader returned the wrong number of tiles');
    const byKey = new Map<string, Uint8Array>();
    tileList.forEach((t, i) => byKey.set(`${t.level}/${t.index}`, data[i] as Uint8Array));
    return locations.map((loc) => hashFromTile(byKey.get(`${loc.tile.level}/${loc.tile.index}`) as Uint8Array, loc));
  }
}
