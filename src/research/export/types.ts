/**
 * Shared types of the Bulk Data `$export` implementation: what a kick-off persists (parameters and
 * the access context needed to resume — never the token), the resume cursor, and the dependencies.
 *
 * @see https://hl7.org/fhir/uv/bulkdata/STU2/export.html
 */
import type { Request, RequestHandler, Response } from 'express';
import type { AccessContext, DisclosureRecorder } from '../../fhir-api/access.js';
import type { Clock } from '../../platform/clock.js';
import type { Logger } from '../../platform/logger.js';
import type { QueueRegistry } from '../../queue/index.js';
import type { ExportStore } from '../../store/export-store.js';
import type { Store } from '../../store/types.js';
import type { DeidKeys } from '../deid/config.js';

/** NDJSON media type of every output file. */
export const NDJSON = 'application/fhir+ndjson';

/** HL7 PurposeOfUse codes that make an export a research export (HRESCH and its specialisations). */
export const RESEARCH_PURPOSES: ReadonlySet<string> = new Set(['HRESCH', 'BIORCH', 'CLINTRCH']);

/** Whether an access context declares a research purpose of use. */
export function isResearch(access: Pick<AccessContext, 'purposeOfUse'>): boolean {
  return access.purposeOfUse.some((p) => RESEARCH_PURPOSES.has(p));
}

/** Parameters of one export, resolved and validated at kick-off (stored as JSON). */
export interface ExportParams {
  /** Resource types in export order. */
  readonly types: readonly string[];
  /** `_since` as an ISO instant. */
  readonly since?: string;
  /** `_typeFilter` per type: alternatives (OR), each a list of search parameter pairs (AND). */
  readonly typeFilters: Readonly<Record<string, ReadonlyArray<ReadonlyArray<readonly [string, string]>>>>;
  /** `_deidentify` policy name; required for research exports. */
  readonly deidPolicy?: string;
  /** Research export: research consent (scope `research`) decides inclusion. */
  readonly research: boolean;
}

/** The part of an {@link AccessContext} persisted with an export to resume it with the same rights. */
export interface PersistedAccess {
  readonly clientId: string;
  readonly issuer: string;
  /** Raw scope strings, system context only. */
  readonly scopes: readonly string[];
  readonly purposeOfUse: readonly string[];
  readonly fhirUser?: string;
  readonly actor: {
    readonly references: readonly string[];
    readonly identifiers: ReadonlyArray<{ readonly system: string; readonly value: string }>;
  };
  /** The kick-off token's `jti`, for the audit (not the token). */
  readonly tokenId?: string;
}

/** One output file as tracked by the cursor. */
export interface FileState {
  readonly type: string;
  readonly name: string;
  /** Bytes durably written and recorded (a resumed job truncates the file to this length). */
  readonly bytes: number;
  readonly count: number;
}

/** The resume position, saved after every page in the same transaction as the page's consent record. */
export interface ExportCursor {
  /** Index of the current work unit. */
  readonly unit: number;
  /** Last resource id examined in that unit. */
  readonly after?: string;
  /** Output files in creation order. */
  readonly files: readonly FileState[];
  /** Resources the de-identification safety net withheld, per type. */
  readonly deidDropped: Readonly<Record<string, number>>;
  /** Resources withheld by SMART scope constraints or a patient-privacy denial (counted by the repository). */
  readonly accessWithheld: number;
}

/** Dependencies of the export stage. */
export interface ExportDeps {
  /** The unscoped store: read only through `createScopedRepository`, plus manifest writes and Group look-ups. */
  readonly store: Pick<Store, 'resources' | 'search'>;
  readonly exports: ExportStore;
  readonly queues: Pick<QueueRegistry, 'enqueue' | 'enqueueBulk'>;
  readonly recorder: DisclosureRecorder;
  /** The FHIR API's patient-privacy default (opt-in `deny` / opt-out `permit`). */
  readonly consentDefault: 'permit' | 'deny';
  /** Decision for research when a patient has no applicable research Consent (default `deny`: opt-in). */
  readonly researchConsentDefault: 'permit' | 'deny';
  /** De-identification keys (from configuration). */
  readonly deidKeys: DeidKeys;
  readonly clock: Clock;
  readonly logger: Logger;
  /** Public FHIR base URL, e.g. `https://anchor.example/fhir/R4`. */
  readonly baseUrl: string;
  /** Directory for output files (one sub-directory per export), e.g. `DATA_DIR/exports`. Shared by API and worker processes. */
  readonly exportDir: string;
  /** Authentication middleware that sets the {@link AccessContext} (SMART). */
  readonly authenticate: RequestHandler;
  readonly accessOf?: (req: Request, res: Response) => AccessContext | undefined;
  /** How long files and the manifest are kept after completion, in ms (default 24 h). */
  readonly expiryMs?: number;
  /** Exports a client may have accepted or running at once (default 3; more → 429). */
  readonly maxActivePerClient?: number;
  /** Resources per page (default 500): the unit of memory, of durable progress and of resumption. */
  readonly pageSize?: number;
  /** Test hook: called after each saved page; throwing simulates a crash after that page. */
  readonly afterPage?: (exportId: string, page: number) => void | Promise<void>;
}

/** Reads the access context set by authentication (`res.locals.access`). */
export function defaultAccessOf(_req: Request, res: Response): AccessContext | undefined {
  const a = (res.locals as { access?: unknown }).access;
  return typeof a === 'object' && a !== null && Array.isArray((a as AccessContext).scopes) ? (a as AccessContext) : undefined;
}
