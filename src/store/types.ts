/**
 * The one store interface. Every stage reads and writes through it; SQL lives only in src/store.
 */
import type { Resource } from '@medplum/fhirtypes';

/** One stored version of a resource, exactly as the API serves it. */
export interface StoredVersion {
  readonly resourceType: string;
  readonly id: string;
  /** Our version number (dense per resource, starting at 1), as a string like FHIR's meta.versionId. */
  readonly versionId: string;
  readonly lastUpdated: Date;
  readonly deleted: boolean;
  /** The resource with meta.versionId and meta.lastUpdated set; undefined for a delete marker. */
  readonly resource: Resource | undefined;
}

export interface PutVersionInput {
  readonly resourceType: string;
  readonly id: string;
  /** The resource body; ignored (may be omitted) when `deleted`. */
  readonly resource?: Resource;
  readonly deleted?: boolean;
  /**
   * Idempotency key within this resource: the source's versionId, or a content hash when the source
   * sends none. A version whose key was stored before is not stored again.
   */
  readonly dedupKey?: string;
  /** The source's lastUpdated: a version older than the current one is kept in history only. */
  readonly sourceTime?: Date;
  readonly sourceId?: string;
  /** Result of validation against base R4 and the target profile (stored with the version). */
  readonly validation?: { readonly valid: boolean; readonly outcome: unknown };
  /**
   * Version-aware write (FHIR `If-Match`): the versionIds the writer holds. The version is written only
   * if the resource's current version is one of them, checked under the writers' lock; otherwise the
   * whole batch fails with a `StoreConflictError` (errors.ts) and nothing is written.
   */
  readonly ifMatch?: readonly string[];
}

/**
 * Computes a stored version's integrity commitment (a fresh salt and `SHA-256(salt ‖ JCS(version))`).
 * Supplied by the integrity stage at start-up; with one, the store writes every new version's
 * pending commitment in the same transaction as the version itself, so a version can never be
 * stored without being committed, nor committed twice.
 */
export type VersionCommitter = (version: StoredVersion) => { readonly salt: Uint8Array; readonly commitment: Uint8Array };

/** A brand-new resource the service itself creates (e.g. an AuditEvent): version 1 of a fresh id. */
export interface NewResourceInput {
  readonly resourceType: string;
  readonly id: string;
  readonly resource: Resource;
  readonly sourceId?: string;
}

export type PutVersionResult =
  | { readonly status: 'created' | 'updated'; readonly version: StoredVersion }
  /** Stored in history, but the current version is newer (it arrived late). */
  | { readonly status: 'historical'; readonly version: StoredVersion }
  /** Already stored under the same dedup key; nothing written. */
  | { readonly status: 'duplicate'; readonly version: StoredVersion };

export interface HistoryOptions {
  /** Most versions to return (newest first). */
  readonly count?: number;
  /** Only versions with a version number below this one (paging). */
  readonly beforeVersion?: number;
}

/** Options of {@link ResourceStore.putVersions}. */
export interface PutVersionsOptions {
  /**
   * Marks an inbox item done (stage `stored`) in the same transaction as the versions, with the
   * outcome computed from the results: the versions and the item's completion commit together, so a
   * crash cannot leave the versions stored and the item unfinished (one commit instead of two).
   * `outcome` may be called more than once (a one-statement create tried first, then the transaction),
   * so it must not have side effects; the last call's value is the one stored.
   */
  readonly inboxDone?: { readonly id: string; readonly outcome: (results: readonly PutVersionResult[]) => unknown };
}

export interface ResourceStore {
  putVersion(input: PutVersionInput): Promise<PutVersionResult>;
  /**
   * Stores several versions in one transaction (resources are locked in a fixed order, so concurrent
   * batches cannot deadlock). Results are in input order. Two inputs for the same resource are
   * applied in input order.
   */
  putVersions(inputs: readonly PutVersionInput[], options?: PutVersionsOptions): Promise<PutVersionResult[]>;
  /**
   * Stores version 1 of resources whose ids were never used (server-assigned UUIDs) in ONE statement:
   * head, history, search index and (with a committer) the pending commitment. Fails as a whole if
   * any id exists. The fast path for records written on every request (AuditEvents).
   */
  createResources(inputs: readonly NewResourceInput[]): Promise<StoredVersion[]>;
  /**
   * True when the store commits every new version to the integrity log itself (a
   * {@link VersionCommitter} was given): callers then need not enqueue integrity jobs.
   */
  readonly commitsVersions: boolean;
  /** Current, non-deleted resources of a type carrying identifier system|value (at most `limit`). */
  findByIdentifier(resourceType: string, system: string, value: string, limit?: number): Promise<StoredVersion[]>;
  /** Validation stored with a version, if any. */
  readValidation(resourceType: string, id: string, versionId: string): Promise<{ valid: boolean | null; outcome: unknown } | undefined>;
  readCurrent(resourceType: string, id: string): Promise<StoredVersion | undefined>;
  readVersion(resourceType: string, id: string, versionId: string): Promise<StoredVersion | undefined>;
  /** Versions of one resource, newest first. */
  history(resourceType: string, id: string, options?: HistoryOptions): Promise<StoredVersion[]>;
  /** Resources (current, not deleted) and versions stored, by type. */
  countsByType(): Promise<Array<{ resourceType: string; resources: number; versions: number }>>;
}

export type InboxState = 'pending' | 'processing' | 'done' | 'failed' | 'dead';

export interface InboxItem {
  readonly id: string;
  readonly sourceId: string;
  readonly kind: string;
  readonly contentType: string | undefined;
  readonly body: Buffer;
  /** Hex SHA-256 of the raw body. */
  readonly bodySha256: string;
  readonly dedupKey: string | undefined;
  /** Non-PHI facts about the request (e.g. a deleted-resource header); never credentials. */
  readonly meta: Readonly<Record<string, unknown>>;
  readonly receivedAt: Date;
  readonly stage: string;
  readonly state: InboxState;
  readonly outcome: unknown;
  readonly attempts: number;
  readonly updatedAt: Date;
}

export interface InboxReceiveInput {
  readonly sourceId: string;
  readonly kind: string;
  readonly contentType?: string;
  readonly body: Buffer;
  readonly dedupKey?: string;
  readonly meta?: Record<string, unknown>;
}

export interface InboxStore {
  /** Durably records a raw notification. The same (sourceId, dedupKey) is recorded once. */
  receive(input: InboxReceiveInput): Promise<{ readonly id: string; readonly duplicate: boolean }>;
  get(id: string): Promise<InboxItem | undefined>;
  /**
   * Claims an item for a processing attempt in one statement: moves it to `stage` / `processing` and
   * counts the attempt, unless it is done or dead. Returns the item as claimed, or undefined when it is
   * absent, done or dead (a stale retry).
   */
  claim(id: string, stage: string): Promise<InboxItem | undefined>;
  /**
   * Moves an item to a stage/state; `attempt` counts a processing attempt. With `durable: false` (a
   * progress mark between stages) the change commits without waiting for the WAL flush: a crash may
   * lose it, which leaves the item at its previous stage, still unfinished, as the reconciler expects.
   * A finished item (done or dead) leaves that state only by being reopened (`pending`, an operator's
   * replay): any other change to it is ignored, so a second run of the same item (the reconciler's, while
   * a slow first run goes on) can never turn a finished item back into an unfinished or failed one.
   */
  update(id: string, change: { stage?: string; state: InboxState; outcome?: unknown; attempt?: boolean }, options?: { durable?: boolean }): Promise<void>;
  /**
   * When the latest item of this source and kind that is done was received, among those received
   * before `receivedBefore` (the catch-up of notifications without payload starts from there). Items
   * whose outcome says `incomplete: true` do not count.
   */
  latestDone(sourceId: string, kind: string, receivedBefore: Date): Promise<Date | undefined>;
  /** Items not yet done or dead and not touched since `updatedBefore`, oldest first (for the reconciler). */
  listUnfinished(options: { updatedBefore: Date; limit: number }): Promise<Array<Pick<InboxItem, 'id' | 'state' | 'stage'>>>;
  countsByStageAndState(): Promise<Array<{ stage: string; state: InboxState; count: number }>>;
  /** Latest received time and counts of one source's items, by state. */
  sourceSummary(sourceId: string): Promise<{ lastReceived: Date | undefined; byState: Partial<Record<InboxState, number>> }>;
}

/** A registered source's stored definition (validated by the ingest stage, opaque here). */
export interface SourceRecord {
  readonly id: string;
  readonly definition: unknown;
  readonly createdAt: Date;
  readonly updatedAt: Date;
}

export interface SourceStore {
  /** Creates or replaces; returns whether it was created. */
  upsert(id: string, definition: unknown): Promise<{ created: boolean }>;
  get(id: string): Promise<SourceRecord | undefined>;
  list(): Promise<SourceRecord[]>;
  delete(id: string): Promise<boolean>;
}

export interface SubscriptionGap {
  readonly from: number;
  readonly to: number;
  readonly detectedAt: string;
  readonly catchUp: string;
}

/** A restart of a source's event numbering, revealed by a handshake or heartbeat (Backport IG). */
export interface SubscriptionRestart {
  readonly detectedAt: string;
  /** The last event number recorded before. */
  readonly from: number;
  /** The events since subscription start the source reported. */
  readonly to: number;
  readonly by: 'handshake' | 'heartbeat';
}

export interface SubscriptionStatusRecord {
  readonly sourceId: string;
  readonly subscription: string;
  readonly topic: string | undefined;
  readonly status: string | undefined;
  readonly lastSeen: Date | undefined;
  readonly lastHeartbeat: Date | undefined;
  readonly lastEventNumber: number | undefined;
  /** eventsSinceSubscriptionStart as the last handshake or heartbeat reported it. */
  readonly reportedEvents: number | undefined;
  readonly gaps: readonly SubscriptionGap[];
  readonly restarts: readonly SubscriptionRestart[];
}

export interface SubscriptionStatusStore {
  /**
   * Records a handshake/heartbeat/event: last seen (and heartbeat) time, status, topic. With
   * `reported` (the eventsSinceSubscriptionStart of a handshake or heartbeat) it also keeps the count:
   * the first count of a subscription becomes its last event number (the baseline later numbers are
   * checked against); a count below the last number is a restart of the numbering when it comes
   * from a handshake, or from a heartbeat reporting fewer events than the previous report did (a
   * count only goes down when the numbering started again, whereas a heartbeat overtaken by later
   * events in flight is no lower than the report before it), and then the last number goes back to
   * it and the restart is listed. Returns the last event number afterwards: a count above it means
   * notifications that never arrived.
   */
  touch(input: {
    sourceId: string;
    subscription: string;
    topic?: string;
    status?: string;
    heartbeat?: boolean;
    reported?: { events: number; by: 'handshake' | 'heartbeat' };
  }): Promise<{ lastEventNumber: number | undefined }>;
  /**
   * The gap a notification reveals: the numbers missing between the last number recorded and the
   * lowest new one (none for the first numbers of a subscription, or for replays). Reads only: the
   * caller catches the gap up, and only then records the numbers ({@link recordEvents}), so that a
   * notification that fails and is retried or replayed finds the same gap again.
   */
  findGap(input: { sourceId: string; subscription: string; eventNumbers: readonly number[] }): Promise<{ from: number; to: number } | undefined>;
  /**
   * Records event numbers as processed: the last number becomes the highest recorded so far (numbers
   * at or below it change nothing), and a gap that was caught up is added to the status with how.
   */
  recordEvents(input: { sourceId: string; subscription: string; eventNumbers: readonly number[]; gap?: { from: number; to: number; detectedAt: Date; catchUp: string } }): Promise<void>;
  list(sourceId: string): Promise<SubscriptionStatusRecord[]>;
  /** Per source: its subscriptions, the gaps and restarts they recorded, and the latest heartbeat (for metrics). */
  summary(): Promise<Array<{ sourceId: string; subscriptions: number; gaps: number; restarts: number; lastHeartbeat: Date | undefined }>>;
}

export interface DeadLetter {
  readonly id: string;
  readonly inboxId: string | undefined;
  readonly sourceId: string;
  readonly reason: string;
  readonly entryIndex: number | undefined;
  readonly outcome: unknown;
  readonly createdAt: Date;
  readonly replayedAt: Date | undefined;
  readonly replayCount: number;
}

export interface DeadLetterStore {
  /** Files a dead letter; the same open (inbox, entry, reason) is filed once. */
  add(input: { inboxId?: string; sourceId: string; reason: string; entryIndex?: number; outcome: unknown }): Promise<string>;
  get(id: string): Promise<DeadLetter | undefined>;
  list(options: { sourceId?: string; open?: boolean; limit: number; before?: Date }): Promise<DeadLetter[]>;
  markReplayed(id: string): Promise<void>;
  countsByReason(): Promise<Array<{ sourceId: string; reason: string; open: number; total: number }>>;
}

export interface BackfillCursor {
  readonly resourceType: string;
  readonly nextUrl: string | undefined;
  readonly done: boolean;
  readonly count: number;
}

export interface BackfillStore {
  get(sourceId: string): Promise<BackfillCursor[]>;
  save(sourceId: string, cursor: BackfillCursor): Promise<void>;
  reset(sourceId: string): Promise<void>;
}

/** FHIR date search prefixes (http://hl7.org/fhir/R4/search.html#prefix). */
export type DatePrefix = 'eq' | 'ne' | 'gt' | 'lt' | 'ge' | 'le' | 'sa' | 'eb';

/** One date comparison: the search value's range is the half-open instant interval [lo, hi). */
export interface DateComparison {
  readonly prefix: DatePrefix;
  readonly lo: Date;
  readonly hi: Date;
}

/**
 * One search criterion; the values of a clause are OR-ed, clauses are AND-ed (FHIR `,` and `&`).
 * Token values: `system` undefined = any system, '' = no system; `code` undefined = any code.
 * Reference values: `type` undefined = any target type.
 */
export type SearchClause =
  | { readonly kind: 'id'; readonly values: readonly string[] }
  | { readonly kind: 'lastUpdated'; readonly values: readonly DateComparison[] }
  /** `not`: the `:not` modifier (resources with no matching value, also those with no value at all). */
  | { readonly kind: 'token'; readonly param: string; readonly values: readonly { readonly system?: string; readonly code?: string }[]; readonly not?: boolean }
  | { readonly kind: 'reference'; readonly param: string; readonly values: readonly { readonly type?: string; readonly id: string }[] }
  | { readonly kind: 'date'; readonly param: string; readonly values: readonly DateComparison[] }
  /** `:missing`: resources with (`missing: false`) or without (`true`) any indexed value of `param`. */
  | { readonly kind: 'missing'; readonly param: string; readonly index: 'token' | 'reference' | 'date'; readonly missing: boolean }
  /** String search (R4): values start with (default), contain, or exactly equal one of `values`. */
  | { readonly kind: 'string'; readonly param: string; readonly match: 'start' | 'contains' | 'exact'; readonly values: readonly string[] };

/** A search over current, non-deleted resources of one type, in id order (keyset paging). */
export interface SearchQuery {
  readonly resourceType: string;
  readonly clauses: readonly SearchClause[];
  /** Only resources whose id sorts after this one (the cursor: the last row examined). */
  readonly afterId?: string;
  /**
   * `_sort`: by `_lastUpdated` or by the clinical `date` (ascending: the earliest instant a resource's
   * date covers; descending: the latest; resources without one last), then by id. Without it, id order.
   */
  readonly sort?: SearchSort;
  /** With `sort`: only rows after this sort key ({@link SortedRow.key}) and id. */
  readonly after?: { readonly key: string; readonly id: string };
  /** Rows to return (1..1000). */
  readonly limit: number;
}

/**
 * The search index (tables filled at write time, see migrations/005_search.sql). Unscoped: only the
 * consent-narrowed repository in src/fhir-api may use it.
 */
/** A `_sort` the index can answer. */
export interface SearchSort {
  readonly key: '_lastUpdated' | 'date';
  readonly descending: boolean;
}

/** A row of a sorted search, with its sort key (opaque text, for the next page's `after`). */
export interface SortedRow {
  readonly version: StoredVersion;
  readonly key: string;
}

export interface SearchStore {
  search(query: SearchQuery): Promise<StoredVersion[]>;
  /** {@link search} with `query.sort` (required): rows in sort order, each with its key. */
  searchSorted(query: SearchQuery & { readonly sort: SearchSort }): Promise<SortedRow[]>;
  /** Current resources in a patient's compartment (`patient` reference), in (type, id) order; `since`: last updated at or after. */
  compartment(
    patientId: string,
    options: { readonly after?: { readonly resourceType: string; readonly id: string }; readonly types?: readonly string[]; readonly since?: Date; readonly limit: number },
  ): Promise<StoredVersion[]>;
  /** Current, non-deleted Consent resources whose `patient` is one of these patients (ids). */
  consentsFor(patientIds: readonly string[]): Promise<Array<{ readonly patient: string; readonly version: StoredVersion }>>;
  /** Current version by id (a prepared statement; the hot read path). */
  readCurrent(resourceType: string, id: string): Promise<StoredVersion | undefined>;
  /** {@link readCurrent} of several resources in one round trip; those not stored are absent from the answer (order unspecified). */
  readCurrentMany(refs: ReadonlyArray<{ readonly type: string; readonly id: string }>): Promise<StoredVersion[]>;
  /**
   * {@link readCurrent} and, in the same statement (one round trip, one snapshot), the current
   * Consents of every patient the resource's search index references (and of the Patient itself).
   * `consents` has an entry, possibly empty, for each such patient; patients referenced only
   * outside the index (e.g. in a contained resource) are not covered, so a caller must look those
   * up with {@link consentsFor}.
   */
  readCurrentWithConsents(resourceType: string, id: string): Promise<{ readonly version: StoredVersion | undefined; readonly consents: ReadonlyMap<string, readonly StoredVersion[]> }>;
  /** Rebuilds the index of every current resource (or of those of `types`); returns resources indexed. */
  reindex(batchSize?: number, types?: readonly string[]): Promise<number>;
  /**
   * Re-indexes the resource types a migration listed as gaining search parameters
   * (`search_reindex_pending`), each once: the service runs it in the background after starting.
   * Another process doing it at the same time makes this one return at once with nothing done.
   * `signal` stops it between batches; a type it did not finish stays pending for the next start.
   */
  reindexPending(options?: { readonly signal?: AbortSignal }): Promise<{ readonly types: readonly string[]; readonly resources: number }>;
  /** The types still waiting for {@link reindexPending} (searches by their new parameters miss older resources until then). */
  reindexPendingTypes(): Promise<string[]>;
}

/** One durable audit record: the id and `recorded` time of the AuditEvent it becomes, and its content. */
export interface AuditOutboxRecord {
  readonly id: string;
  readonly recorded: Date;
  /** Opaque to the store (references, codes and ids only: the recorder's compact record). */
  readonly record: unknown;
}

/**
 * Durable audit records waiting to become AuditEvent resources. `append` is what a request waits for
 * (one small INSERT); `materialise` turns the oldest records into resources with `build` and deletes
 * them in the same transaction, so each record becomes exactly one resource.
 */
export interface AuditOutboxStore {
  append(records: readonly AuditOutboxRecord[]): Promise<void>;
  /**
   * Materialises up to `limit` of the oldest records (as {@link ResourceStore.createResources} does,
   * commitments included) and returns the stored versions. Concurrent callers take disjoint records;
   * with `wait`, records another caller holds are waited for instead of skipped.
   */
  materialise(limit: number, build: (record: AuditOutboxRecord) => NewResourceInput, options?: { wait?: boolean }): Promise<StoredVersion[]>;
  /** Records not yet materialised. */
  pending(): Promise<number>;
}

export interface Store {
  readonly resources: ResourceStore;
  /** The search index over current versions. */
  readonly search: SearchStore;
  readonly inbox: InboxStore;
  readonly sources: SourceStore;
  readonly subscriptions: SubscriptionStatusStore;
  readonly deadLetters: DeadLetterStore;
  readonly backfill: BackfillStore;
  readonly auditOutbox: AuditOutboxStore;
  /** Throws when the database does not answer. */
  ping(): Promise<void>;
  close(): Promise<void>;
}
