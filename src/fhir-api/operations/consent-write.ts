/**
 * Patients manage their own Consents: `POST [base]/Consent`, `PUT [base]/Consent/{id}`,
 * `DELETE [base]/Consent/{id}`, in patient context with `patient/Consent.c|u|d` scopes. The
 * Consent's `patient` must be the token's patient (else 403); an update or delete of a Consent that
 * is not theirs (or absent) is a 404. Each change is stored as a new version (source `patient`),
 * committed to the integrity log, and applies from the next request on. `If-Match` makes an update
 * or delete version-aware: it happens only if the Consent is still at that version, else 412 (two
 * devices of one patient cannot silently overwrite each other's change).
 *
 * @see http://hl7.org/fhir/R4/http.html#create
 */
import { ifMatchVersions, versionHeaders, type OperationContext, type OperationResult } from './context.js';

function location(ctx: OperationContext, id: string, versionId: string): Record<string, string> {
  return { Location: `${ctx.baseUrl}/Consent/${id}/_history/${versionId}`, ETag: `W/"${versionId}"` };
}

/**
 * The answer to a write: Location and ETag always; the body as `Prefer: return=` asks (FHIR
 * http.html#ops): the stored Consent (`representation`, the default, when the token may read it back)
 * or nothing (`minimal`). `return=OperationOutcome` gets the default: an answer body here is always a
 * consent-checked resource.
 */
function written(ctx: OperationContext, status: number, r: Awaited<ReturnType<OperationContext['repo']['createConsent']>>): OperationResult {
  const headers = { ...(r.released ? versionHeaders(r.released.resource) : {}), ...location(ctx, r.id, r.versionId) };
  if (ctx.returnPreference === 'minimal') return { status, headers };
  return { status, headers, ...(r.released ? { body: r.released.resource } : {}) };
}

/** `POST [base]/Consent` */
export async function createConsentOperation(ctx: OperationContext): Promise<OperationResult> {
  const r = await ctx.repo.createConsent(ctx.body);
  return written(ctx, 201, r);
}

/** `PUT [base]/Consent/{id}` (update only; no update-as-create). */
export async function updateConsentOperation(ctx: OperationContext): Promise<OperationResult> {
  const { id } = ctx.params as { id: string };
  const r = await ctx.repo.updateConsent(id, ctx.body, ifMatchVersions(ctx.conditions));
  return written(ctx, 200, r);
}

/** `DELETE [base]/Consent/{id}` */
export async function deleteConsentOperation(ctx: OperationContext): Promise<OperationResult> {
  const { id } = ctx.params as { id: string };
  await ctx.repo.deleteConsent(id, ifMatchVersions(ctx.conditions));
  return { status: 204 };
}
