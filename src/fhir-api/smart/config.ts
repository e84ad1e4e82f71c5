/**
 * Settings of the SMART on FHIR authorization layer (Backend Services token endpoint, access-token
 * verification), resolved once from what the composition root passes in.
 *
 * @see https://hl7.org/fhir/smart-app-launch/STU2/backend-services.html
 * @see docs/decisions-smart.md
 */

/** An external OAuth authorization server whose access tokens the FHIR API accepts. */
export interface ExternalIssuer {
  /** Exact `iss` of its tokens. */
  readonly issuer: string;
  /** Its JWK Set URL (fetched with jose's `createRemoteJWKSet`, cached). */
  readonly jwksUrl: string;
  /** The `aud` its tokens must carry for us (usually our FHIR base URL). */
  readonly audience: string;
}

/** What the composition root provides. */
export interface SmartOptionsInput {
  /** Our public base URL, without trailing slash (config `PUBLIC_BASE_URL`); the `iss` of our tokens. */
  readonly publicBaseUrl: string;
  /** Access-token lifetime in seconds (default 300). */
  readonly accessTokenLifetimeSeconds?: number;
  /** Clock skew tolerated on `exp` / `nbf` of assertions and access tokens, in seconds (default 30). */
  readonly clockToleranceSeconds?: number;
  readonly externalIssuers?: readonly ExternalIssuer[];
  /** `scopes_supported` advertised in `.well-known/smart-configuration`. */
  readonly scopesSupported?: readonly string[];
}

/** Resolved settings. */
export interface SmartOptions {
  /** `iss` of our access tokens. */
  readonly issuer: string;
  /** FHIR base URL: the `aud` of our access tokens. */
  readonly fhirBaseUrl: string;
  /** Token endpoint URL: the `aud` client assertions must carry. */
  readonly tokenUrl: string;
  /** Our public JWK Set URL (access-token verification keys). */
  readonly jwksUrl: string;
  readonly accessTokenLifetimeSeconds: number;
  readonly clockToleranceSeconds: number;
  /** Longest accepted client-assertion lifetime, `exp` minus now, in seconds (SMART: five minutes). */
  readonly maxAssertionLifetimeSeconds: number;
  readonly externalIssuers: readonly ExternalIssuer[];
  readonly scopesSupported: readonly string[];
}

/** Mount point of the OAuth router (token endpoint and our JWK Set). */
export const AUTH_PATH = '/auth';
/** Mount point of the FHIR API. */
export const FHIR_PATH = '/fhir/R4';

/** Five minutes, the SMART Backend Services limit on `exp` of a client assertion. */
export const MAX_ASSERTION_LIFETIME_SECONDS = 300;
/** Default access-token lifetime: five minutes, as SMART Backend Services recommends. */
export const DEFAULT_ACCESS_TOKEN_LIFETIME_SECONDS = 300;
/** Default clock skew tolerance, in seconds. */
export const DEFAULT_CLOCK_TOLERANCE_SECONDS = 30;

/** Algorithms accepted for client assertions: the two SMART requires servers to support. */
export const ASSERTION_ALGORITHMS = ['RS384', 'ES384'] as const;
/**
 * Algorithms accepted on access tokens from external issuers: asymmetric only. `none` and every
 * HS* algorithm are absent on purpose (a public key must never be usable as an HMAC secret).
 */
export const EXTERNAL_TOKEN_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'] as const;

/** The scopes advertised by default: reads in every context, v1 and v2 syntax. */
export const DEFAULT_SCOPES_SUPPORTED: readonly string[] = [
  'system/*.rs',
  'system/*.read',
  'user/*.rs',
  'user/*.read',
  'patient/*.rs',
  'patient/*.read',
  'system/Consent.rs',
];

function positive(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isFinite(value) || value <= 0) throw new RangeError(`${name} must be a positive number of seconds`);
  return value;
}

/** Resolves the settings; throws on an invalid base URL or lifetime. */
export function resolveSmartOptions(input: SmartOptionsInput): SmartOptions {
  const base = input.publicBaseUrl.replace(/\/+$/, '');
  // Throws on a malformed URL: better at start-up than at the first token request.
  new URL(base);
  for (const e of input.externalIssuers ?? []) {
    new URL(e.jwksUrl);
    if (!e.issuer || !e.audience) throw new RangeError('an external issuer needs issuer, jwksUrl and audience');
  }
  return {
    issuer: base,
    fhirBaseUrl: `${base}${FHIR_PATH}`,
    tokenUrl: `${base}${AUTH_PATH}/token`,
    jwksUrl: `${base}${AUTH_PATH}/jwks.json`,
    accessTokenLifetimeSeconds: positive(input.accessTokenLifetimeSeconds, DEFAULT_ACCESS_TOKEN_LIFETIME_SECONDS, 'accessTokenLifetimeSeconds'),
    clockToleranceSeconds: input.clockToleranceSeconds ?? DEFAULT_CLOCK_TOLERANCE_SECONDS,
    maxAssertionLifetimeSeconds: MAX_ASSERTION_LIFETIME_SECONDS,
    externalIssuers: input.externalIssuers ?? [],
    scopesSupported: input.scopesSupported ?? DEFAULT_SCOPES_SUPPORTED,
  };
}
