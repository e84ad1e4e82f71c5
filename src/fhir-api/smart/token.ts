/**
 * The OAuth 2.0 token endpoint for SMART Backend Services: `client_credentials` with a
 * `private_key_jwt` client assertion (RFC 7523), answering with a signed JWT access token (RFC 9068
 * shape). This endpoint speaks OAuth, not FHIR: errors are RFC 6749 §5.2 JSON.
 *
 * @see https://hl7.org/fhir/smart-app-launch/STU2/backend-services.html
 * @see https://hl7.org/fhir/smart-app-launch/STU2/client-confidential-asymmetric.html
 * @see https://www.rfc-editor.org/rfc/rfc6749#section-5
 * @see docs/decisions-smart.md
 */
import { randomUUID } from 'node:crypto';
import express, { Router, type ErrorRequestHandler } from 'express';
import { SignJWT, createLocalJWKSet, createRemoteJWKSet, decodeJwt, jwtVerify, type JSONWebKeySet, type JWTVerifyGetKey } from 'jose';
import type { Clock } from '../../platform/clock.js';
import type { Logger } from '../../platform/logger.js';
import type { AssertionReplayCache, OAuthClientRecord, OAuthClientStore } from '../../store/clients-store.js';
import { ASSERTION_ALGORITHMS, type SmartOptions } from './config.js';
import { ACCESS_TOKEN_ALG, type AccessTokenKey } from './keys.js';
import { grantScopes } from './scopes.js';

/** RFC 7523 client assertion type. */
export const CLIENT_ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
/** `typ` header of our access tokens (RFC 9068 §2.1). */
export const ACCESS_TOKEN_TYP = 'at+jwt';

/** RFC 6749 §5.2 error codes this endpoint uses. */
export type OAuthErrorCode = 'invalid_request' | 'invalid_client' | 'invalid_scope' | 'unsupported_grant_type';

const STATUS: Readonly<Record<OAuthErrorCode, number>> = {
  invalid_request: 400,
  invalid_client: 401,
  invalid_scope: 400,
  unsupported_grant_type: 400,
};

/** An OAuth error answer. `description` is sent to the client: keep it generic for authentication. */
export class OAuthError extends Error {
  override readonly name = 'OAuthError';
  readonly status: number;
  constructor(
    readonly error: OAuthErrorCode,
    readonly description: string,
    /** Why, for the operator's log only (never sent, never contains credentials). */
    readonly reason?: string,
  ) {
    super(description);
    this.status = STATUS[error];
  }
}

/** A successful token response (RFC 6749 §5.1), plus SMART's `patient` launch context. */
export interface TokenResponse {
  readonly access_token: string;
  readonly token_type: 'Bearer';
  /** Seconds. */
  readonly expires_in: number;
  readonly scope: string;
  readonly patient?: string;
}

/** Claims of our access tokens beyond the registered ones. */
export interface AccessTokenClaims {
  readonly client_id: string;
  readonly scope: string;
  readonly patient?: string;
  readonly fhirUser?: string;
  /** HL7 PurposeOfUse codes. */
  readonly purpose_of_use?: readonly string[];
}

export interface TokenServiceDeps {
  readonly options: SmartOptions;
  readonly key: AccessTokenKey;
  readonly clients: Pick<OAuthClientStore, 'get'>;
  /** Replay cache for assertion `jti`s (PostgreSQL: `PgClientStore`). */
  readonly replay: AssertionReplayCache;
  readonly clock: Clock;
  readonly logger: Logger;
  /** JWK Set resolver for a client's `jwksUrl` (default: jose `createRemoteJWKSet`, cached per URL). */
  readonly remoteJwks?: (url: string) => JWTVerifyGetKey;
}

/** Caps the remote JWK Set cache: one entry per distinct client JWK Set URL. */
const MAX_REMOTE_JWKS = 1000;

/**
 * A cache of jose remote JWK Sets by URL (each fetches on demand, caches 10 min, refetches at most
 * every 30 s on an unknown `kid`, times out after 5 s).
 */
export function remoteJwksCache(): (url: string) => JWTVerifyGetKey {
  const cache = new Map<string, JWTVerifyGetKey>();
  return (url) => {
    let set = cache.get(url);
    if (!set) {
      if (cache.size >= MAX_REMOTE_JWKS) cache.clear();
      set = createRemoteJWKSet(new URL(url), { timeoutDuration: 5_000, cooldownDuration: 30_000, cacheMaxAge: 600_000 });
      cache.set(url, set);
    }
    return set;
  };
}

/** Signs one of our access tokens. */
export async function signAccessToken(
  deps: Pick<TokenServiceDeps, 'options' | 'key' | 'clock'>,
  claims: AccessTokenClaims & { readonly sub: string },
): Promise<{ token: string; expiresIn: number; jti: string }> {
  const now = Math.floor(deps.clock.now().getTime() / 1000);
  const expiresIn = Math.floor(deps.options.accessTokenLifetimeSeconds);
  const jti = randomUUID();
  const { sub, ...rest } = claims;
  const token = await new SignJWT({ ...rest })
    .setProtectedHeader({ alg: ACCESS_TOKEN_ALG, kid: deps.key.kid, typ: ACCESS_TOKEN_TYP })
    .setIssuer(deps.options.issuer)
    .setAudience(deps.options.fhirBaseUrl)
    .setSubject(sub)
    .setIssuedAt(now)
    .setExpirationTime(now + expiresIn)
    .setJti(jti)
    .sign(deps.key.privateKey);
  return { token, expiresIn, jti };
}

function field(form: Record<string, unknown>, name: string): string | undefined {
  const v = form[name];
  if (v === undefined) return undefined;
  // RFC 6749 §3.2: parameters must not be repeated (the urlencoded parser turns repeats into arrays).
  if (typeof v !== 'string') throw new OAuthError('invalid_request', `parameter ${name} must appear once`);
  return v;
}

const CLIENT_FAILED = 'client authentication failed';

/** The token service: validates a token request and issues an access token. */
export interface TokenService {
  /** Handles a parsed `application/x-www-form-urlencoded` token request; throws {@link OAuthError}. */
  issue(form: Record<string, unknown>): Promise<TokenResponse>;
}

export function createTokenService(deps: TokenServiceDeps): TokenService {
  const { options, clients, replay, clock } = deps;
  const remote = deps.remoteJwks ?? remoteJwksCache();

  function keySet(client: OAuthClientRecord): JWTVerifyGetKey {
    if (client.jwks) return createLocalJWKSet(client.jwks as JSONWebKeySet);
    return remote(client.jwksUrl!);
  }

  async function authenticateClient(form: Record<string, unknown>): Promise<OAuthClientRecord> {
    const type = field(form, 'client_assertion_type');
    const assertion = field(form, 'client_assertion');
    if (type === undefined || assertion === undefined) throw new OAuthError('invalid_client', CLIENT_FAILED, 'no client assertion');
    if (type !== CLIENT_ASSERTION_TYPE) throw new OAuthError('invalid_client', CLIENT_FAILED, 'unsupported client_assertion_type');

    let unverified: { iss?: unknown; sub?: unknown };
    try {
      unverified = decodeJwt(assertion);
    } catch {
      throw new OAuthError('invalid_client', CLIENT_FAILED, 'malformed assertion');
    }
    const clientId = unverified.iss;
    if (typeof clientId !== 'string' || clientId === '' || unverified.sub !== clientId) {
      throw new OAuthError('invalid_client', CLIENT_FAILED, 'iss and sub must both be the client id');
    }
    const formClientId = field(form, 'client_id');
    if (formClientId !== undefined && formClientId !== clientId) throw new OAuthError('invalid_client', CLIENT_FAILED, 'client_id does not match the assertion');
    const client = await clients.get(clientId);
    if (!client) throw new OAuthError('invalid_client', CLIENT_FAILED, 'unknown client');

    const now = clock.now();
    let payload: { exp?: number; jti?: string };
    try {
      ({ payload } = await jwtVerify(assertion, keySet(client), {
        issuer: clientId,
        subject: clientId,
        audience: options.tokenUrl,
        algorithms: [...ASSERTION_ALGORITHMS],
        currentDate: now,
        clockTolerance: options.clockToleranceSeconds,
        requiredClaims: ['exp', 'jti'],
      }));
    } catch (err) {
      // jose's code says what failed (expired, audience, signature, no matching key); no key material.
      throw new OAuthError('invalid_client', CLIENT_FAILED, `assertion rejected (${(err as { code?: string }).code ?? 'error'})`);
    }
    const exp = payload.exp!;
    const nowSeconds = now.getTime() / 1000;
    if (exp - nowSeconds > options.maxAssertionLifetimeSeconds + options.clockToleranceSeconds) {
      throw new OAuthError('invalid_client', CLIENT_FAILED, 'assertion exp more than five minutes ahead');
    }
    const jti = payload.jti;
    if (typeof jti !== 'string' || jti === '' || jti.length > 256) throw new OAuthError('invalid_client', CLIENT_FAILED, 'assertion jti missing or too long');
    // Kept until the assertion could no longer be accepted anyway (exp + tolerance).
    const fresh = await replay.useOnce(clientId, jti, new Date((exp + options.clockToleranceSeconds) * 1000));
    if (!fresh) throw new OAuthError('invalid_client', CLIENT_FAILED, 'assertion jti replayed');
    return client;
  }

  return {
    async issue(form) {
      const grantType = field(form, 'grant_type');
      if (grantType === undefined) throw new OAuthError('invalid_request', 'grant_type is required');
      if (grantType !== 'client_credentials') throw new OAuthError('unsupported_grant_type', 'only client_credentials is supported');
      const requestedScope = field(form, 'scope');
      if (requestedScope === undefined || requestedScope.trim() === '') throw new OAuthError('invalid_request', 'scope is required');
      const purposeParam = field(form, 'purpose_of_use');

      const client = await authenticateClient(form);

      const granted = grantScopes(requestedScope, client.allowedScopes, { patient: client.patient !== undefined, user: client.fhirUser !== undefined });
      if (granted.length === 0) throw new OAuthError('invalid_scope', 'none of the requested scopes may be granted to this client');
      const purposes = [...new Set((purposeParam ?? '').split(' ').filter((p) => p !== ''))];
      const allowedPurposes = new Set(client.allowedPurposes);
      if (purposes.some((p) => !allowedPurposes.has(p))) throw new OAuthError('invalid_request', 'purpose_of_use is not permitted for this client');

      const scope = granted.join(' ');
      const { token, expiresIn } = await signAccessToken(deps, {
        sub: client.id,
        client_id: client.id,
        scope,
        ...(client.patient ? { patient: client.patient } : {}),
        ...(client.fhirUser ? { fhirUser: client.fhirUser } : {}),
        ...(purposes.length > 0 ? { purpose_of_use: purposes } : {}),
      });
      return {
        access_token: token,
        token_type: 'Bearer',
        expires_in: expiresIn,
        scope,
        ...(client.patient ? { patient: client.patient } : {}),
      };
    },
  };
}

const NO_STORE = { 'Cache-Control': 'no-store', Pragma: 'no-cache' };

/** Form bodies on the token endpoint are small: an assertion is a few kB at most. */
const FORM_LIMIT_BYTES = 64 * 1024;

/**
 * The OAuth router: `POST /token` (client_credentials) and `GET /jwks.json` (our access-token
 * verification keys). Mount at `/auth`; it answers every error itself, in OAuth JSON.
 */
export function createTokenRouter(deps: TokenServiceDeps): Router {
  const service = createTokenService(deps);
  const router = Router();

  router.get('/jwks.json', (_req, res) => {
    res.set('Cache-Control', 'public, max-age=300').json({ keys: [deps.key.publicJwk] });
  });

  router.post('/token', express.urlencoded({ extended: false, limit: FORM_LIMIT_BYTES, parameterLimit: 20 }), async (req, res) => {
    try {
      if (!req.is('application/x-www-form-urlencoded') || typeof req.body !== 'object' || req.body === null) {
        throw new OAuthError('invalid_request', 'the request body must be application/x-www-form-urlencoded');
      }
      const answer = await service.issue(req.body as Record<string, unknown>);
      res.status(200).set(NO_STORE).json(answer);
    } catch (err) {
      if (!(err instanceof OAuthError)) throw err;
      // Client id and reason only: never the assertion, never a key.
      deps.logger.info({ error: err.error, reason: err.reason ?? err.description }, 'token request refused');
      res.status(err.status).set(NO_STORE).json({ error: err.error, error_description: err.description });
    }
  });

  const oauthErrors: ErrorRequestHandler = (err: unknown, _req, res, _next) => {
    const status = typeof err === 'object' && err !== null && 'status' in err ? Number((err as { status: unknown }).status) : 500;
    if (status >= 400 && status < 500) {
      // Body parser failures (too large, bad encoding, too many parameters).
      res.status(400).set(NO_STORE).json({ error: 'invalid_request', error_description: 'the request body could not be read' });
      return;
    }
    deps.logger.error({ err: err instanceof Error ? err.message : String(err) }, 'token endpoint failed');
    res.status(500).set(NO_STORE).json({ error: 'server_error' });
  };
  router.use(oauthErrors);
  return router;
}
