/**
 * What exactly is committed for a stored version.
 *
 * A version with a body is committed as the resource exactly as the API serves it from
 * `/{type}/{id}/_history/{vid}` (`StoredVersion.resource`, including `meta.versionId` and
 * `meta.lastUpdated`). A delete marker has no body; it is committed as this JSON object:
 *
 * ```json
 * {"deleted":true,"id":"<id>","lastUpdated":"<ISO 8601, ms, Z>","resourceType":"<type>","versionId":"<vid>"}
 * ```
 *
 * No FHIR resource has a top-level `deleted` or `versionId` element, so a delete marker's canonical
 * form can never equal a resource's. Both are hashed as RFC 8785 canonical JSON (see commitment.ts).
 *
 * @see https://www.rfc-editor.org/rfc/rfc8785
 * @packageDocumentation
 */
import type { StoredVersion } from '../store/types.js';

/** The canonical JSON object committed for a delete marker (see the module comment). */
export interface DeleteMarker {
  readonly deleted: true;
  readonly resourceType: string;
  readonly id: string;
  readonly versionId: string;
  /** ISO 8601 UTC with milliseconds, as in `meta.lastUpdated`. */
  readonly lastUpdated: string;
}

/**
 * Builds the delete-marker object for a deleted version.
 *
 * @param version - identifiers and time of the delete.
 * @returns the object whose JCS form is committed.
 */
export function deleteMarker(version: Pick<StoredVersion, 'resourceType' | 'id' | 'versionId' | 'lastUpdated'>): DeleteMarker {
  return {
    deleted: true,
    resourceType: version.resourceType,
    id: version.id,
    versionId: version.versionId,
    lastUpdated: version.lastUpdated.toISOString(),
  };
}

/**
 * The JSON value committed for a stored version: its served body, or the delete marker.
 *
 * @param version - the stored version as `ResourceStore.readVersion` returns it.
 * @returns the value to canonicalise and hash.
 * @throws Error when a version that is not deleted has no body.
 */
export function committedValue(version: StoredVersion): unknown {
  if (version.deleted) return deleteMarker(version);
  if (version.resource === undefined) throw new Error('a stored version that is not deleted has no body');
  return version.resource;
}
