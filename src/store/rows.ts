/** Row shape of `resource` / `resource_history` reads, shared by the store's query modules. */
import type { Resource } from '@medplum/fhirtypes';
import type { StoredVersion } from './types.js';

export interface VersionRow {
  resource_type: string;
  id: string;
  version_id: number;
  last_updated: Date;
  deleted: boolean;
  content: Resource | null;
}

export function toVersion(row: VersionRow): StoredVersion {
  return {
    resourceType: row.resource_type,
    id: row.id,
    versionId: String(row.version_id),
    lastUpdated: row.last_updated,
    deleted: row.deleted,
    resource: row.content ?? undefined,
  };
}
