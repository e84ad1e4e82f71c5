/**
 * Queue names and their typed job data. Job data carries ids and versions only — never a resource
 * body, never PHI — because queue payloads live in Redis or queue tables that are not the source of
 * truth and are not access-controlled like the store. PostgreSQL (the inbox and the store) is the
 * source of truth; a lost job is replayed from there.
 */

/** Every queue and the shape of its job data. */
export interface JobDataByQueue {
  /** Process one inbox item (a raw notification already committed to PostgreSQL). */
  readonly ingest: { readonly inboxId: string };
  /** Commit one stored version to the integrity log. */
  readonly integrity: { readonly resourceType: string; readonly id: string; readonly versionId: string };
  /** Run (or resume from its saved cursor) one Bulk Data export; everything else is re-read from PostgreSQL. */
  readonly export: { readonly exportId: string };
}

export type QueueName = keyof JobDataByQueue;
export type JobData<Q extends QueueName> = JobDataByQueue[Q];

export const QUEUE_NAMES: readonly QueueName[] = ['ingest', 'integrity', 'export'];

/** The id of a version's integrity job (one per version: BullMQ ignores a second add under it). */
export function integrityJobId(v: JobData<'integrity'>): string {
  return `${v.resourceType}.${v.id}.${v.versionId}`;
}

/**
 * The id of a job's re-run (see `QueueRegistry.rerun`), from the id of its first job: an inbox item's
 * first ingest job is the item's id, a version's first integrity job is `Type.id.versionId`.
 */
export function rerunJobId(firstJobId: string): string {
  return `${firstJobId}.rerun`;
}

/**
 * Limits that keep job payloads to ids: at most this many fields, each a string of at most
 * {@link MAX_JOB_STRING} characters, a number or a boolean. A resource body can never fit.
 */
export const MAX_JOB_FIELDS = 16;
/** 256 characters: the longest FHIR id is 64, a canonical URL or hash fits easily. */
export const MAX_JOB_STRING = 256;

/** Throws when `data` is not a flat record of short scalars (guards against bodies in payloads). */
export function assertIdsOnly(data: unknown): void {
  if (typeof data !== 'object' || data === null || Array.isArray(data)) {
    throw new TypeError('job data must be a flat object of ids');
  }
  const entries = Object.entries(data);
  if (entries.length > MAX_JOB_FIELDS) {
    throw new TypeError(`job data has ${entries.length} fields; at most ${MAX_JOB_FIELDS}`);
  }
  for (const [key, value] of entries) {
    const ok =
      (typeof value === 'string' && value.length <= MAX_JOB_STRING) ||
      (typeof value === 'number' && Number.isFinite(value)) ||
      typeof value === 'boolean';
    if (!ok) {
      throw new TypeError(`job data field "${key}" must be a short string, number or boolean (ids and versions only)`);
    }
  }
}
