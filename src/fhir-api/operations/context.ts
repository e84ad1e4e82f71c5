/**
 * What an operation handler gets and returns. Handlers receive the request-scoped repository
 * (already narrowed by SMART scopes and consent) and never a store: an architecture test keeps
 * store imports out of this folder.
 */
import type { Bundle, Resource } from '@medplum/fhirtypes';
import { httpError } from '../../platform/errors.js';
import type { ConsentChecked } from '../../consent/index.js';
import type { CursorCodec } from '../bundle.js';
import type { ScopedRepository } from '../repository.js';

/** Per-request input of an operation. */
export interface OperationContext {
  readonly repo: ScopedRepository;
  /** Route parameters (already validated by the router: type, id, vid). */
  readonly params: Readonly<Record<string, string>>;
  /** Query (or `_search` form) parameters in request order. */
  readonly pairs: ReadonlyArray<readonly [string, string]>;
  /** `Prefer: handling=lenient`. */
  readonly lenient: boolean;
  /** `Prefer: return=…` of a write (FHIR http.html#ops): what the answer's body holds. */
  readonly returnPreference?: 'minimal' | 'representation';
  readonly baseUrl: string;
  /** Absolute URL of this request, for `Bundle.link[self]`. */
  readonly selfUrl: string;
  readonly cursors: CursorCodec;
  /** Binds cursors to the client (a cursor is useless to another client). */
  readonly cursorBinding: string;
  /** The parsed request body, for writes. */
  readonly body: unknown;
  /** `If-None-Match` and `If-Modified-Since` (conditional read), `If-Match` (version-aware update) of the request. */
  readonly conditions?: { readonly ifNoneMatch?: string; readonly ifModifiedSince?: string; readonly ifMatch?: string };
}

/** What an operation answers; the router records the audit, then sends it as FHIR JSON. */
export interface OperationResult {
  readonly status: number;
  /** Only consent-checked resources, or Bundles built from them. */
  readonly body?: ConsentChecked<Resource> | Bundle;
  readonly headers?: Readonly<Record<string, string>>;
}

/** Version headers of a released resource (ETag, Last-Modified). */
export function versionHeaders(resource: Resource): Record<string, string> {
  const h: Record<string, string> = {};
  if (resource.meta?.versionId) h['ETag'] = `W/"${resource.meta.versionId}"`;
  if (resource.meta?.lastUpdated) h['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
  return h;
}

/**
 * Whether a conditional read (`If-None-Match`, else `If-Modified-Since`) finds the client's copy
 * current, so that the answer is 304 Not Modified. Entity tags compare weakly (RFC 9110 §13.1.2:
 * `W/"2"` matches `"2"`); `*` matches any version. `If-Modified-Since` is ignored when
 * `If-None-Match` is present, or when it is not an HTTP date; `Last-Modified` has whole seconds.
 *
 * @see http://hl7.org/fhir/R4/http.html#cread
 */
export function notModified(resource: Resource, conditions: OperationContext['conditions']): boolean {
  const versionId = resource.meta?.versionId;
  if (conditions?.ifNoneMatch !== undefined) {
    if (versionId === undefined) return false;
    return conditions.ifNoneMatch.split(',').some((tag) => {
      const t = tag.trim();
      return t === '*' || t.replace(/^W\//, '') === `"${versionId}"`;
    });
  }
  if (conditions?.ifModifiedSince !== undefined && resource.meta?.lastUpdated) {
    const since = Date.parse(conditions.ifModifiedSince);
    if (Number.isNaN(since)) return false;
    return Math.floor(Date.parse(resource.meta.lastUpdated) / 1000) * 1000 <= since;
  }
  return false;
}

/**
 * The versionIds an `If-Match` header names (`W/"3"`, `"3"`, a list of them), for a version-aware update;
 * undefined without the header or for `*` (any current version). Anything else is a 400.
 *
 * @see http://hl7.org/fhir/R4/http.html#concurrency
 */
export function ifMatchVersions(conditions: OperationContext['conditions']): string[] | undefined {
  const header = conditions?.ifMatch?.trim();
  if (header === undefined || header === '*') return undefined;
  const versions = header.split(',').map((t) => /^(?:W\/)?"([A-Za-z0-9\-.]{1,64})"$/.exec(t.trim())?.[1]);
  if (versions.length === 0 || versions.some((v) => v === undefined)) throw httpError(400, 'invalid', 'If-Match must name versions as ETags, e.g. W/"3"');
  return versions as string[];
}

/** Query string of name/value pairs. */
export function encodePairs(pairs: ReadonlyArray<readonly [string, string]>): string {
  return pairs.map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join('&');
}
