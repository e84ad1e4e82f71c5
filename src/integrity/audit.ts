/**
 * Tamper detection. A repeatable job runs {@link Auditor.run}; each run, in bounded pages:
 *
 * 1. **Checkpoints**: every checkpoint newer than the last audited one must carry a valid log
 *    signature, be consistent with the previous one (RFC 9162 consistency proof from the stored
 *    tiles), and its root must equal the root recomputed from the tiles. The last audited checkpoint
 *    must still be stored unchanged, and the head (`log_state`) must match the tiles.
 * 2. **Tiles**: every full tile must hash to the entry its parent tile holds (C2SP tlog-tiles), so an
 *    altered stored hash is found even where no proof has touched it yet.
 * 3. **Versions**: every commitment is re-computed from the stored version (as served) and its salt,
 *    and its leaf hash must equal the tile entry at its leaf index.
 *
 * The sweep of tiles and versions is resumable: the cursor is stored in `integrity_audit_state` and
 * wraps around at the end. Every finding is loud: returned, counted in
 * `fhir_anchor_integrity_audit_findings_total{kind}`, logged at error level (identifiers only, never
 * bodies), and {@link Auditor.health} turns not-ok until the process restarts.
 *
 * @see https://www.rfc-editor.org/rfc/rfc9162#section-2.1.4 (consistency proofs)
 * @packageDocumentation
 */
import { Counter, type Registry } from 'prom-client';
import { openCheckpoint } from './checkpoint.js';
import { verifyCommitment } from './commitment.js';
import { bytesEqual, fromHex, toHex } from './encoding.js';
import {
  HASH_SIZE,
  TILE_HEIGHT,
  TILE_WIDTH,
  TileHashReader,
  hashFromTile,
  leafHash,
  proveConsistency,
  treeHash,
  verifyConsistency,
  type HashReader,
} from './merkle.js';
import { parseVerifierKey, type NoteVerifier } from './note.js';
import { committedValue } from './record.js';
import type { Clock } from '../platform/clock.js';
import type { Logger } from '../platform/logger.js';
import type { AuditRow, CheckpointRecord, IntegrityStore, VersionKey } from '../store/integrity-types.js';
import type { StoredVersion } from '../store/types.js';

/** What went wrong. */
export type AuditFindingKind =
  /** The stored version no longer hashes to its commitment (the record was altered). */
  | 'commitment-mismatch'
  /** A committed version is gone from the store. */
  | 'version-missing'
  /** The log's leaf at the commitment's index is not the commitment's leaf hash. */
  | 'leaf-mismatch'
  /** A stored tile does not hash to its parent entry, or a tile is missing. */
  | 'tile-mismatch'
  /** A stored checkpoint's signature does not verify, or it is malformed. */
  | 'checkpoint-signature'
  /** A checkpoint's root differs from the root recomputed from the stored tiles. */
  | 'checkpoint-root'
  /** Two checkpoints are not consistent (the log was rewritten), or an audited one changed. */
  | 'checkpoint-inconsistent'
  /** The log head does not match the stored tiles. */
  | 'head-mismatch';

/** One finding. Names the version or the log position, never content. */
export interface AuditFinding {
  readonly kind: AuditFindingKind;
  readonly resourceType?: string;
  readonly id?: string;
  readonly versionId?: string;
  readonly leafIndex?: number;
  /** Checkpoint size (checkpoint findings) or tile level (tile findings use `tile`). */
  readonly size?: number;
  /** `level/index` of a tile. */
  readonly tile?: string;
  readonly detail: string;
}

/** The resumable position of an audit (JSON). */
export interface AuditCursor {
  /** Last version checked in this sweep; absent at the start of a sweep. */
  readonly version?: VersionKey;
  /** Last audited checkpoint (its size and hex root); absent before the first. */
  readonly checkpoint?: { readonly size: number; readonly root: string };
  /** Next tile to check: level and the last index checked at that level (−1: none). */
  readonly tile: { readonly level: number; readonly after: number };
}

/** Result of one {@link Auditor.run}. */
export interface AuditResult {
  readonly findings: AuditFinding[];
  readonly versionsChecked: number;
  readonly checkpointsChecked: number;
  readonly tilesChecked: number;
  /** The version sweep reached the end of the commitments in this run (and wrapped). */
  readonly sweepComplete: boolean;
  readonly cursor: AuditCursor;
}

/** Readiness view of the audit. */
export interface AuditHealth {
  /** False once any finding was made by this process. */
  readonly ok: boolean;
  /** Findings since start. */
  readonly findings: number;
  /** The most recent findings (at most 20). */
  readonly recent: readonly AuditFinding[];
  readonly lastRunAt: string | undefined;
}

/** Options of {@link Auditor}. */
export interface AuditorOptions {
  readonly store: IntegrityStore;
  readonly origin: string;
  /** The log's verifier key (vkey). */
  readonly verifierKey: string;
  readonly logger: Logger;
  readonly clock: Clock;
  /** prom-client registry for the findings counter. */
  readonly registry: Registry;
  /** Rows per page (versions, tiles, checkpoints); default 500. */
  readonly pageSize?: number;
  /** Pages of versions per run; default 10 (5,000 versions). */
  readonly maxPages?: number;
  /** Cursor name in `integrity_audit_state` (default `default`). */
  readonly name?: string;
}

const FINDINGS_METRIC = 'fhir_anchor_integrity_audit_findings_total';
const INITIAL_CURSOR: AuditCursor = { tile: { level: 0, after: -1 } };

function isCursor(value: unknown): value is AuditCursor {
  return typeof value === 'object' && value !== null && typeof (value as { tile?: { level?: unknown } }).tile?.level === 'number';
}

/** Re-hashes stored versions and checks the log's checkpoints and tiles; see the module comment. */
export class Auditor {
  private readonly verifiers: readonly NoteVerifier[];
  private readonly findingsCounter: Counter<'kind'>;
  private readonly reader: HashReader;
  private readonly pageSize: number;
  private readonly maxPages: number;
  private readonly name: string;
  private total = 0;
  private recent: AuditFinding[] = [];
  private lastRunAt: Date | undefined;

  /** @param options - see {@link AuditorOptions}. */
  constructor(private readonly options: AuditorOptions) {
    this.verifiers = [parseVerifierKey(options.verifierKey)];
    const existing = options.registry.getSingleMetric(FINDINGS_METRIC) as Counter<'kind'> | undefined;
    this.findingsCounter =
      existing ??
      new Counter({
        name: FINDINGS_METRIC,
        help: 'Integrity audit findings (tampering or corruption), by kind',
        labelNames: ['kind'],
        registers: [options.registry],
      });
    // Uncached: the audit must see what is in the database now.
    this.reader = new TileHashReader({ readTiles: (tiles) => options.store.readTiles(tiles) });
    this.pageSize = Math.max(1, options.pageSize ?? 500);
    this.maxPages = Math.max(1, options.maxPages ?? 10);
    this.name = options.name ?? 'default';
  }

  /** Readiness: not ok once anything was found. */
  health(): AuditHealth {
    return { ok: this.total === 0, findings: this.total, recent: [...this.recent], lastRunAt: this.lastRunAt?.toISOString() };
  }

  /**
   * Runs one bounded audit step.
   *
   * @param options.cursor - start here instead of the stored cursor (the stored one is then left alone).
   * @returns findings, counts and the cursor to continue from.
   */
  async run(options: { cursor?: AuditCursor } = {}): Promise<AuditResult> {
    const persist = options.cursor === undefined;
    const stored = persist ? await this.options.store.getAuditCursor(this.name) : undefined;
    let cursor: AuditCursor = options.cursor ?? (isCursor(stored) ? stored : INITIAL_CURSOR);
    const findings: AuditFinding[] = [];

    const cp = await this.auditCheckpoints(cursor, findings);
    cursor = { ...cursor, ...(cp.last ? { checkpoint: cp.last } : {}) };
    const tiles = await this.auditTiles(cursor, findings);
    cursor = { ...cursor, tile: tiles.next };
    const versions = await this.auditVersions(cursor, findings);
    cursor = versions.next === undefined ? { checkpoint: cursor.checkpoint, tile: cursor.tile } : { ...cursor, version: versions.next };
    if (cursor.checkpoint === undefined) cursor = { version: cursor.version, tile: cursor.tile };

    for (const f of findings) this.report(f);
    this.lastRunAt = this.options.clock.now();
    if (persist) await this.options.store.setAuditCursor(this.name, cursor, this.lastRunAt);
    return {
      findings,
      versionsChecked: versions.checked,
      checkpointsChecked: cp.checked,
      tilesChecked: tiles.checked,
      sweepComplete: versions.next === undefined,
      cursor,
    };
  }

  private report(f: AuditFinding): void {
    this.total++;
    this.recent = [...this.recent, f].slice(-20);
    this.findingsCounter.inc({ kind: f.kind });
    // Identifiers and positions only; the detail strings never contain content.
    this.options.logger.error({ integrityFinding: f }, `INTEGRITY ALERT: ${f.kind}`);
  }

  private async auditCheckpoints(
    cursor: AuditCursor,
    findings: AuditFinding[],
  ): Promise<{ checked: number; last: { size: number; root: string } | undefined }> {
    const { store } = this.options;
    let prev: { size: number; rootHash: Uint8Array } | undefined;
    if (cursor.checkpoint) {
      const again = await store.checkpointAt(cursor.checkpoint.size);
      const root = fromHex(cursor.checkpoint.root);
      if (!again || !bytesEqual(again.rootHash, root)) {
        findings.push({ kind: 'checkpoint-inconsistent', size: cursor.checkpoint.size, detail: 'an audited checkpoint was removed or changed' });
      }
      prev = { size: cursor.checkpoint.size, rootHash: root };
    }
    let last = cursor.checkpoint;
    let checked = 0;
    for (let page = 0; page < this.maxPages; page++) {
      const list: CheckpointRecord[] = await store.checkpointsAfter(prev?.size ?? -1, this.pageSize);
      for (const c of list) {
        checked++;
        try {
          const opened = openCheckpoint(c.signedNote, this.options.origin, this.verifiers).checkpoint;
          if (opened.size !== c.size || !bytesEqual(opened.rootHash, c.rootHash)) throw new Error('signed note differs from the stored size/root');
        } catch (err) {
          findings.push({ kind: 'checkpoint-signature', size: c.size, detail: (err as Error).message });
        }
        await this.checkRoot(c.size, c.rootHash, 'checkpoint-root', findings);
        if (prev) {
          try {
            const proof = await proveConsistency(prev.size, c.size, this.reader);
            if (!verifyConsistency(prev.size, c.size, proof, prev.rootHash, c.rootHash)) {
              findings.push({ kind: 'checkpoint-inconsistent', size: c.size, detail: `not consistent with checkpoint ${prev.size}` });
            }
          } catch (err) {
            findings.push({ kind: 'tile-mismatch', size: c.size, detail: `consistency proof unavailable: ${(err as Error).message}` });
          }
        }
        prev = { size: c.size, rootHash: c.rootHash };
        last = { size: c.size, root: toHex(c.rootHash) };
      }
      if (list.length < this.pageSize) break;
    }
    // The newest checkpoint and the head must still match the tiles now (catches later tampering).
    const latest = await store.latestCheckpoint();
    if (latest && !(checked > 0 && latest.size === prev?.size)) await this.checkRoot(latest.size, latest.rootHash, 'checkpoint-root', findings);
    const head = await store.logState();
    await this.checkRoot(head.size, head.rootHash, 'head-mismatch', findings);
    return { checked, last };
  }

  private async checkRoot(size: number, root: Uint8Array, kind: AuditFindingKind, findings: AuditFinding[]): Promise<void> {
    try {
      if (!bytesEqual(await treeHash(size, this.reader), root)) {
        findings.push({ kind, size, detail: 'root recomputed from the stored tiles differs' });
      }
    } catch (err) {
      findings.push({ kind: 'tile-mismatch', size, detail: `tiles unreadable: ${(err as Error).message}` });
    }
  }

  private async auditTiles(cursor: AuditCursor, findings: AuditFinding[]): Promise<{ checked: number; next: AuditCursor['tile'] }> {
    const { store } = this.options;
    let { level, after } = cursor.tile;
    const tiles = await store.listTiles(level, after, this.pageSize);
    const full = tiles.filter((t) => t.width === TILE_WIDTH);
    if (full.length > 0) {
      // Parent entry of full tile (L, i) is entry i of tree level 8(L+1): in tile (L+1, ⌊i/256⌋).
      let parents: Uint8Array[] = [];
      try {
        parents = await this.reader.readHashes(full.map((t) => ({ level: (t.level + 1) * TILE_HEIGHT, n: t.index })));
      } catch (err) {
        findings.push({ kind: 'tile-mismatch', tile: `${level + 1}/*`, detail: `parent tile unreadable: ${(err as Error).message}` });
      }
      full.forEach((t, i) => {
        const parent = parents[i];
        if (parent === undefined) return;
        const computed = hashFromTile(t.data, { tile: { level: t.level, index: t.index, width: TILE_WIDTH }, offset: 0, count: TILE_WIDTH });
        if (!bytesEqual(computed, parent)) {
          findings.push({ kind: 'tile-mismatch', tile: `${t.level}/${t.index}`, detail: 'tile does not hash to its parent entry' });
        }
      });
    }
    for (const t of tiles) {
      if (t.data.length !== t.width * HASH_SIZE) findings.push({ kind: 'tile-mismatch', tile: `${t.level}/${t.index}`, detail: 'tile length differs from its width' });
    }
    if (tiles.length === this.pageSize) {
      after = (tiles[tiles.length - 1] as { index: number }).index;
    } else {
      // Level done: next level, or wrap to level 0 when the next level has no full tiles below it.
      const more = (await store.listTiles(level + 1, -1, 1)).length > 0;
      level = more ? level + 1 : 0;
      after = -1;
    }
    return { checked: tiles.length, next: { level, after } };
  }

  private async auditVersions(cursor: AuditCursor, findings: AuditFinding[]): Promise<{ checked: number; next: VersionKey | undefined }> {
    let after = cursor.version;
    let checked = 0;
    for (let page = 0; page < this.maxPages; page++) {
      const rows = await this.options.store.auditPage(after, this.pageSize);
      checked += rows.length;
      await this.checkRows(rows, findings);
      const lastRow = rows[rows.length - 1];
      if (rows.length < this.pageSize || lastRow === undefined) return { checked, next: undefined };
      after = { resourceType: lastRow.resourceType, id: lastRow.id, versionId: lastRow.versionId };
    }
    return { checked, next: after };
  }

  private async checkRows(rows: readonly AuditRow[], findings: AuditFinding[]): Promise<void> {
    const ids = (r: AuditRow): Pick<AuditFinding, 'resourceType' | 'id' | 'versionId'> => ({ resourceType: r.resourceType, id: r.id, versionId: r.versionId });
    for (const r of rows) {
      if (r.version === undefined) {
        findings.push({ kind: 'version-missing', ...ids(r), detail: 'committed version is not in resource_history' });
        continue;
      }
      const served: StoredVersion = {
        resourceType: r.resourceType,
        id: r.id,
        versionId: r.versionId,
        lastUpdated: r.version.lastUpdated,
        deleted: r.version.deleted,
        resource: (r.version.content ?? undefined) as StoredVersion['resource'],
      };
      let ok = false;
      try {
        ok = verifyCommitment(committedValue(served), r.salt, r.commitment);
      } catch {
        ok = false;
      }
      if (!ok) findings.push({ kind: 'commitment-mismatch', ...ids(r), detail: 'stored version does not match its commitment' });
    }
    const sequenced = rows.filter((r) => r.leafIndex !== undefined);
    if (sequenced.length === 0) return;
    let leaves: Uint8Array[];
    try {
      leaves = await this.reader.readHashes(sequenced.map((r) => ({ level: 0, n: r.leafIndex as number })));
    } catch (err) {
      findings.push({ kind: 'tile-mismatch', tile: '0/*', detail: `leaf tiles unreadable: ${(err as Error).message}` });
      return;
    }
    sequenced.forEach((r, i) => {
      if (!bytesEqual(leaves[i] as Uint8Array, leafHash(r.commitment))) {
        findings.push({ kind: 'leaf-mismatch', ...ids(r), leafIndex: r.leafIndex as number, detail: 'log leaf differs from the commitment' });
      }
    });
  }
}
