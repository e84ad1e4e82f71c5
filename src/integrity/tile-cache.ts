/**
 * A {@link HashReader} over stored C2SP tiles with an in-memory cache of *full* tiles and their
 * interior hashes.
 *
 * Why: a stored hash at tree level 8L + k is not stored; it is recomputed from 2^k entries of one
 * tile (`hashFromTile`), so an RFC 9162 proof at 10^5–10^6 leaves costs several hundred SHA-256
 * calls if done from scratch each time. A full tile (256 entries) never changes, so its whole
 * subtree (511 hashes, 16 KiB) is computed once and kept in a bounded LRU. Partial tiles (the right
 * edge of the tree) are always read from the database in the same single query.
 *
 * Trust: cached tiles are what the database held when they were first read. Later tampering with
 * the database does not change proofs served from the cache; the audit (audit.ts) reads uncached
 * and reports it.
 *
 * @see https://c2sp.org/tlog-tiles
 * @packageDocumentation
 */
import {
  HASH_SIZE,
  TILE_WIDTH,
  hashFromTile,
  nodeHash,
  tileForStoredHash,
  type HashReader,
  type StoredHashIndex,
  type Tile,
  type TileReader,
} from './merkle.js';

/** Default number of full tiles kept (16 KiB each: 16 MiB). */
export const DEFAULT_TILE_CACHE_TILES = 1024;

/** Offsets (in hashes) of each in-tile level inside a cached subtree: 256, 128, …, 1 entries. */
const LEVEL_OFFSETS: number[] = (() => {
  const out: number[] = [];
  let off = 0;
  for (let w = TILE_WIDTH; w >= 1; w /= 2) {
    out.push(off);
    off += w;
  }
  return out;
})();
const SUBTREE_HASHES = 2 * TILE_WIDTH - 1;

function subtreeOf(data: Uint8Array): Uint8Array {
  const out = new Uint8Array(SUBTREE_HASHES * HASH_SIZE);
  out.set(data.subarray(0, TILE_WIDTH * HASH_SIZE), 0);
  for (let k = 1; k < LEVEL_OFFSETS.length; k++) {
    const below = LEVEL_OFFSETS[k - 1] as number;
    const here = LEVEL_OFFSETS[k] as number;
    const width = TILE_WIDTH >> k;
    for (let i = 0; i < width; i++) {
      const l = out.subarray((below + 2 * i) * HASH_SIZE, (below + 2 * i + 1) * HASH_SIZE);
      const r = out.subarray((below + 2 * i + 1) * HASH_SIZE, (below + 2 * i + 2) * HASH_SIZE);
      out.set(nodeHash(l, r), (here + i) * HASH_SIZE);
    }
  }
  return out;
}

/** {@link HashReader} with a bounded LRU of full tiles; see the module comment. */
export class CachedTileHashReader implements HashReader {
  private readonly cache = new Map<string, Uint8Array>();

  /**
   * @param tiles - the tile source (the database).
   * @param maxTiles - full tiles kept (0 disables the cache).
   */
  constructor(
    private readonly tiles: TileReader,
    private readonly maxTiles: number = DEFAULT_TILE_CACHE_TILES,
  ) {}

  /** {@inheritDoc HashReader.readHashes} */
  async readHashes(indexes: readonly StoredHashIndex[]): Promise<Uint8Array[]> {
    const locations = indexes.map(tileForStoredHash);
    const missing = new Map<string, Tile>();
    for (const { tile } of locations) {
      const key = `${tile.level}/${tile.index}`;
      if (this.cache.has(key)) continue;
      const seen = missing.get(key);
      if (seen === undefined || seen.width < tile.width) missing.set(key, tile);
    }
    const fetched = new Map<string, Uint8Array>();
    if (missing.size > 0) {
      // Ask for the full width when the tile may be full: a full tile is worth caching.
      const list = [...missing.values()];
      const data = await this.tiles.readTiles(list);
      if (data.length !== list.length) throw new Error('tile reader returned the wrong number of tiles');
      list.forEach((t, i) => {
        const d = data[i] as Uint8Array;
        const key = `${t.level}/${t.index}`;
        if (d.length === TILE_WIDTH * HASH_SIZE && this.maxTiles > 0) this.remember(key, subtreeOf(d));
        else fetched.set(key, d);
      });
    }
    return locations.map((loc) => {
      const key = `${loc.tile.level}/${loc.tile.index}`;
      const sub = this.cache.get(key);
      if (sub !== undefined) {
        this.cache.delete(key);
        this.cache.set(key, sub); // LRU: most recent last
        const k = Math.log2(loc.count);
        const pos = (LEVEL_OFFSETS[k] as number) + loc.offset / loc.count;
        return sub.slice(pos * HASH_SIZE, (pos + 1) * HASH_SIZE);
      }
      return hashFromTile(fetched.get(key) as Uint8Array, loc);
    });
  }

  private remember(key: string, subtree: Uint8Array): void {
    this.cache.set(key, subtree);
    while (this.cache.size > this.maxTiles) {
      const oldest = this.cache.keys().next().value as string;
      this.cache.delete(oldest);
    }
  }
}
