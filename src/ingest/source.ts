/**
 * A source: an EHR that sends fhir-anchor Subscription notifications and that we call back for
 * id-only / empty payloads, references and catch-up. Secrets live here but are never returned by
 * the API and never logged (see {@link publicSource}).
 */
import { z } from 'zod';

/** How we authenticate to the source when we call it. */
export const callbackAuthSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('none') }),
  z.object({ type: z.literal('bearer'), token: z.string().min(1) }),
  z.object({
    /** SMART Backend Services: client_credentials with a private_key_jwt client assertion. */
    type: z.literal('smart-backend'),
    tokenUrl: z.url(),
    clientId: z.string().min(1),
    /** Private key as a JWK (RS384 or ES384, per SMART Backend Services); must include `kid`. */
    privateKeyJwk: z.record(z.string(), z.unknown()),
    /** Space-separated scopes to request, e.g. `system/*.rs`. */
    scope: z.string().min(1).default('system/*.rs'),
  }),
]);
export type CallbackAuth = z.infer<typeof callbackAuthSchema>;

/** How a source's notifications authenticate to us. At least one of bearer / HMAC is required. */
export const hookAuthSchema = z
  .object({
    /** Expected `Authorization: Bearer <token>` value. */
    bearerToken: z.string().min(16).optional(),
    /** Secret for `X-Signature` = hex HMAC-SHA256 of the raw body (Medplum-compatible). */
    hmacSecret: z.string().min(16).optional(),
    /** Optional replay protection: header carrying a Unix-seconds or ISO timestamp, and the window. */
    timestampHeader: z.string().min(1).optional(),
    replayWindowSeconds: z.number().int().min(1).max(86_400).default(300),
  })
  .refine((a) => a.bearerToken !== undefined || a.hmacSecret !== undefined, {
    message: 'at least one of bearerToken or hmacSecret is required',
  });
export type HookAuth = z.infer<typeof hookAuthSchema>;

/** Optional: fhir-anchor creates and watches Subscription(s) on the EHR. */
export const subscribeSchema = z.object({
  /** Resource types to subscribe to (classic criteria `Type?`), or backport topic canonicals. */
  resourceTypes: z.array(z.string().regex(/^[A-Z][A-Za-z]+$/)).default([]),
  topics: z.array(z.string().min(1)).default([]),
  payload: z.enum(['empty', 'id-only', 'full-resource']).default('id-only'),
  /** Heartbeat period we ask for, seconds. */
  heartbeatSeconds: z.number().int().min(10).max(86_400).default(300),
});
export type SubscribeSettings = z.infer<typeof subscribeSchema>;

export const sourceSchema = z.object({
  id: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'must be 1-64 of A-Z a-z 0-9 . _ - (starting alphanumeric)'),
  name: z.string().min(1).max(200),
  /** The source's FHIR base URL, e.g. https://ehr.example.org/fhir/R4 */
  baseUrl: z.url(),
  hookAuth: hookAuthSchema,
  callbackAuth: callbackAuthSchema.default({ type: 'none' }),
  /** System given to the source's local identifiers (e.g. MRNs) that carry none. */
  identifierSystem: z.string().min(1).optional(),
  /** Calls per second we allow ourselves against this source. */
  rateLimitPerSecond: z.number().min(0.1).max(10_000).default(20),
  subscribe: subscribeSchema.optional(),
});
export type Source = z.infer<typeof sourceSchema>;
export type SourceInput = z.input<typeof sourceSchema>;

/** What the API may show of a source: everything except secrets (and whether each is set). */
export function publicSource(source: Source): Record<string, unknown> {
  const { hookAuth, callbackAuth, ...rest } = source;
  return {
    ...rest,
    hookAuth: {
      bearerToken: hookAuth.bearerToken ? 'set' : 'unset',
      hmacSecret: hookAuth.hmacSecret ? 'set' : 'unset',
      ...(hookAuth.timestampHeader ? { timestampHeader: hookAuth.timestampHeader, replayWindowSeconds: hookAuth.replayWindowSeconds } : {}),
    },
    callbackAuth:
      callbackAuth.type === 'smart-backend'
        ? { type: callbackAuth.type, tokenUrl: callbackAuth.tokenUrl, clientId: callbackAuth.clientId, scope: callbackAuth.scope }
        : { type: callbackAuth.type },
  };
}
