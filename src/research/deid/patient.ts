/**
 * Which patient a resource belongs to, for per-patient date shifting (dateShiftScope `patient`): the
 * Patient's own id, else the id in its `subject`, `patient` or `beneficiary` reference
 * (`Patient/123`, `…/Patient/123/_history/1`, or a `urn:uuid:` reference as Synthea bundles use).
 * Read from the original values, before any rule runs, so hashing ids does not change the key.
 */
type Json = Record<string, unknown>;

const PATIENT_REF = /(?:^|\/)Patient\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/[^/]*)?$/;
const UUID_REF = /^urn:uuid:([0-9a-fA-F-]{36})$/;

function refId(ref: unknown): string | undefined {
  if (typeof ref !== 'object' || ref === null) return undefined;
  const r = (ref as Json).reference;
  if (typeof r !== 'string') return undefined;
  return PATIENT_REF.exec(r)?.[1] ?? UUID_REF.exec(r)?.[1];
}

/**
 * The patient id of `resource`, or undefined when it names no patient.
 *
 * @param resource - a FHIR resource as JSON.
 */
export function patientIdOf(resource: Json): string | undefined {
  if (resource.resourceType === 'Patient') return typeof resource.id === 'string' ? resource.id : undefined;
  for (const field of ['subject', 'patient', 'beneficiary']) {
    const v = resource[field];
    const id = Array.isArray(v) ? v.map(refId).find((x) => x !== undefined) : refId(v);
    if (id !== undefined) return id;
  }
  return undefined;
}
