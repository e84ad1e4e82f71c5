/**
 * The completion manifest of an export (Bulk Data 2.0 §"Response - Complete Status") and its
 * anchored twin: a FHIR `Basic` resource ("fhir-anchor export manifest") carrying every output
 * file's SHA-256, stored as a resource version and committed to the integrity log like any other
 * version. A study proves later that its files are unchanged by hashing them, comparing with this
 * resource, and verifying the resource's inclusion (`$verify`, or the offline verifier).
 *
 * The `Basic` resource references no patient (so it concerns no patient's consent) and holds no
 * PHI: file names, counts, hashes, the policy names and a SHA-256 of the kick-off URL (whose
 * `_typeFilter` values could in principle name an identifier).
 *
 * @see https://hl7.org/fhir/uv/bulkdata/STU2/export.html#response---complete-status
 * @see docs/research.md
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import type { Basic, Extension, Resource } from '@medplum/fhirtypes';

/** Coding that marks a `Basic` resource as an export manifest. */
export const MANIFEST_CODE = { system: 'urn:fhir-anchor:resource-kind', code: 'export-manifest', display: 'fhir-anchor export manifest' } as const;
/** Base of the manifest's extension URLs. */
export const MANIFEST_EXT = 'https://fhir-anchor.dev/fhir/StructureDefinition/export-manifest';

/** Id of an export's manifest resource: `export-` and the export id (a UUID; ingested ids never look like this). */
const MANIFEST_ID_RE = /^export-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/**
 * Whether a resource is an export manifest written by the export job: a `Basic` with id
 * `export-{exportId}` carrying {@link MANIFEST_CODE}. Ingested resources get UUID ids
 * (src/normalize/anchor-id.ts), so a source cannot make one of its resources look like a manifest by
 * copying the coding. The consent-scoped repository treats manifests as non-patient reference data.
 */
export function isExportManifest(resource: Resource): boolean {
  if (resource.resourceType !== 'Basic' || typeof resource.id !== 'string' || !MANIFEST_ID_RE.test(resource.id)) return false;
  return (resource.code?.coding ?? []).some((c) => c.system === MANIFEST_CODE.system && c.code === MANIFEST_CODE.code);
}

/** One hashed output or error file. */
export interface HashedFile {
  readonly type: string;
  readonly name: string;
  readonly url: string;
  readonly count: number;
  readonly bytes: number;
  /** Lower-case hex SHA-256 of the file's bytes. */
  readonly sha256: string;
}

/** The Bulk Data manifest JSON served by the status endpoint when complete. */
export interface BulkManifest {
  readonly transactionTime: string;
  readonly request: string;
  readonly requiresAccessToken: true;
  readonly output: ReadonlyArray<{ readonly type: string; readonly url: string; readonly count: number }>;
  readonly error: ReadonlyArray<{ readonly type: 'OperationOutcome'; readonly url: string; readonly count: number }>;
  readonly extension: {
    /** The anchored manifest resource, `Basic/{id}/_history/{vid}`. */
    readonly manifestResource: string;
    readonly files: ReadonlyArray<{ readonly url: string; readonly sha256: string; readonly bytes: number }>;
    readonly deidentify?: string;
    readonly consent: 'research' | 'patient-privacy';
  };
}

/** SHA-256 (hex) and byte length of a file, streamed (memory does not grow with the file). */
export async function hashFile(file: string): Promise<{ sha256: string; bytes: number }> {
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) {
    const b = chunk as Buffer;
    bytes += b.length;
    hash.update(b);
  }
  return { sha256: hash.digest('hex'), bytes };
}

/**
 * Builds the `Basic` manifest resource (id `export-{exportId}`).
 *
 * @param input.files - output files first, then error files (`type` OperationOutcome)
 */
export function manifestResource(input: {
  readonly exportId: string;
  readonly transactionTime: Date;
  readonly requestUrl: string;
  readonly level: string;
  readonly consent: 'research' | 'patient-privacy';
  readonly deidentify?: string;
  readonly files: readonly HashedFile[];
  readonly patients: { readonly included: number; readonly excluded: number };
}): Basic & { id: string } {
  const ext = (name: string, value: Omit<Extension, 'url'>): Extension => ({ url: `${MANIFEST_EXT}#${name}`, ...value });
  return {
    resourceType: 'Basic',
    id: `export-${input.exportId}`,
    code: { coding: [{ ...MANIFEST_CODE }], text: MANIFEST_CODE.display },
    created: input.transactionTime.toISOString().slice(0, 10),
    extension: [
      ext('exportId', { valueString: input.exportId }),
      ext('transactionTime', { valueInstant: input.transactionTime.toISOString() }),
      ext('level', { valueCode: input.level }),
      ext('requestSha256', { valueString: createHash('sha256').update(input.requestUrl).digest('hex') }),
      ext('consent', { valueCode: input.consent }),
      ...(input.deidentify ? [ext('deidentify', { valueString: input.deidentify })] : []),
      ext('patientsIncluded', { valueInteger: input.patients.included }),
      ext('patientsExcluded', { valueInteger: input.patients.excluded }),
      ...input.files.map((f) =>
        ext('file', {
          extension: [
            { url: 'type', valueCode: f.type },
            { url: 'name', valueString: f.name },
            { url: 'url', valueUrl: f.url },
            { url: 'count', valueInteger: f.count },
            { url: 'bytes', valueDecimal: f.bytes },
            { url: 'sha256', valueString: f.sha256 },
          ],
        }),
      ),
    ],
  };
}

/** The Bulk Data manifest for the status endpoint. */
export function bulkManifest(input: {
  readonly transactionTime: Date;
  readonly requestUrl: string;
  readonly outputs: readonly HashedFile[];
  readonly errors: readonly HashedFile[];
  readonly manifestResource: string;
  readonly consent: 'research' | 'patient-privacy';
  readonly deidentify?: string;
}): BulkManifest {
  return {
    transactionTime: input.transactionTime.toISOString(),
    request: input.requestUrl,
    requiresAccessToken: true,
    output: input.outputs.map((f) => ({ type: f.type, url: f.url, count: f.count })),
    error: input.errors.map((f) => ({ type: 'OperationOutcome' as const, url: f.url, count: f.count })),
    extension: {
      manifestResource: input.manifestResource,
      files: [...input.outputs, ...input.errors].map((f) => ({ url: f.url, sha256: f.sha256, bytes: f.bytes })),
      ...(input.deidentify ? { deidentify: input.deidentify } : {}),
      consent: input.consent,
    },
  };
}
