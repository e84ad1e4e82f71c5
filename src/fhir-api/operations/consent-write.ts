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

/** `POST [base]/Consent` */
export async function createConsentOperation(ctx: OperationContext): Promise<OperationResult> {
  const r = await ctx.repo.createConsent(ctx.body);
  return {
    status: 201,
    headers: { ...(r.released ? versionHeaders(r.released.resource) : {}), ...location(ctx, r.id, r.versionId) },
    ...(r.released ? { body: r.released.resource } : {}),
  };
}

/** `PUT [base]/Consent/{id}` (update only; no update-as-create). */
export async function updateConsentOperation(ctx: OperationContext): Promise<OperationResult> {
  const { id } = ctx.params as { id: string };
  const r = await ctx.repo.updateConsent(id, ctx.body, ifMatchVersions(ctx.conditions));
  return {
    status: 200,
    headers: { ...(r.released ? versionHeaders(r.released.resource) : {}), ...location(ctx, r.id, r.versionId) },
    ...(r.released ? { body: r.released.resource } : {}),
  };
}

/** `DELETE [base]/Consent/{id}` */
export async function deleteConsentOperation(ctx: OperationContext): Promise<OperationResult> {
  const { id } = ctx.params as { id: string };
  await ctx.repo.deleteConsent(id, ifMatchVersions(ctx.conditions));
  return { status: 204 };
}
