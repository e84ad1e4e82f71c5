/**
 * Bulk Data 2.0 `$export` for fhir-anchor: consent-gated (SMART scopes ∩ patient Consent, and the
 * research Consent for research purposes), de-identified on request (required for research),
 * resumable BullMQ jobs (`export` queue, `{ exportId }`), NDJSON files under the export directory,
 * and a manifest whose file hashes are committed to the integrity log.
 *
 * @see docs/research.md
 * @packageDocumentation
 */
import type { Router } from 'express';
import type { CapabilityContribution } from '../../fhir-api/capability.js';
import { createExportRouter } from './routes.js';
import { createExportRunner, type ExportRunner } from './runner.js';
import type { ExportDeps } from './types.js';

export { createExportRouter } from './routes.js';
export { createExportRunner, exportDirectory, exportJobId, restoreAccess, DEFAULT_EXPIRY_MS, DEFAULT_PAGE_SIZE, type ExportRunner } from './runner.js';
export { parseKickoff, persistAccess, systemScopeCovers, PATIENT_TYPES, SYSTEM_TYPES } from './kickoff.js';
export { bulkManifest, hashFile, isExportManifest, manifestResource, MANIFEST_CODE, MANIFEST_EXT, type BulkManifest, type HashedFile } from './manifest.js';
export { createResearchGate, RESEARCH_POLICY, type ResearchGate, type ResearchOutcome } from './research-consent.js';
export { isResearch, RESEARCH_PURPOSES, NDJSON, type ExportCursor, type ExportDeps, type ExportParams, type PersistedAccess } from './types.js';

/** What the composition root wires: the router (API role), the job processor and the expiry sweep (worker role). */
export interface ExportStage {
  /** Mount at `/fhir/R4`, before the FHIR API router and the `$verify` gate. */
  readonly router: Router;
  /** `queues.work('export', (job) => stage.runner.processJob(job), { concurrency })`. */
  readonly runner: ExportRunner;
  /** CapabilityStatement contribution (the `export` operations). */
  readonly capability: CapabilityContribution;
}

/** Builds the export stage. */
export function createExportStage(deps: ExportDeps): ExportStage {
  return {
    router: createExportRouter(deps),
    runner: createExportRunner(deps),
    capability: {
      operations: [
        { name: 'export', definition: 'http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export' },
        { name: 'patient-export', definition: 'http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export' },
        { name: 'group-export', definition: 'http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export' },
      ],
      securityDescription:
        'Bulk Data $export (system, Patient, Group) needs system/<Type>.rs scopes; every resource passes SMART scopes and patient Consent, research purposes (HRESCH) additionally the research Consent and mandatory de-identification.',
    },
  };
}
