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

export interface ResourceStore {
  putVersion(input: PutVersionInput): Promise<PutVersionResult>;
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
  /** Moves an item to a stage/state; `attempt` counts a processing attempt. */
  update(id: string, change: { stage?: string; state: InboxState; outcome?: unknown; attempt?: boolean }): Promise<void>;
  /** Items not yet done or dead, oldest first, received before `receivedBefore` (for the reconciler). */
  listUnfinished(options: { receivedBefore: Date; limit: number }): Promise<Array<Pick<InboxItem, 'id' | 'state' | 'stage'>>>;
  countsByStageAndState(): Promise<Array<{ stage: string; state: InboxState; count: number }>>;
}

export interface Store {
  readonly resources: ResourceStore;
  readonly inbox: InboxStore;
  /** Throws when the database does not answer. */
  ping(): Promise<void>;
  close(): Promise<void>;
}
