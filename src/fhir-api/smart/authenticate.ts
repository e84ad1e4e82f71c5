/**
 * Bearer-token authentication for the FHIR API: verifies an access token (ours, or one from a
 * configured external authorization server) and produces the request's {@link AccessContext}.
 *
 * Every failure is a 401 with `WWW-Authenticate: Bearer` (RFC 6750 §3) and a deliberately generic
 * OperationOutcome; the reason is logged at debug level without the token.
 *
 * @see https://www.rfc-editor.org/rfc/rfc6750
 * @see https://hl7.org/fhir/smart-app-launch/STU2/scopes-and-launch-context.html
 * @see docs/decisions-smart.md
 */
import type { Request, RequestHandler, Response } from 'express';
import { decodeJwt, decodeProtectedHeader, jwtVerify, type JWTPayload, type JWTVerifyGetKey } from 'jose';
import type { Resource } from '@medplum/fhirtypes';
import { OAUTH_CLIENT_ID_SYSTEM, parseScopes, scopesAllow, type ScopeContext, type ScopeInteraction } from '../../consent/index.js';
import type { Clock } from '../../platform/clock.js';
import { httpError, type HttpError } from '../../platform/errors.js';
import type { Logger } from '../../platform/logger.js';
import type { OAuthClientRecord, OAuthClientStore } from '../../store/clients-store.js';
import type { AccessContext, PurposeOfUse } from '../access.js';
import { EXTERNAL_TOKEN_ALGORITHMS, type ExternalIssuer, type SmartOptions } from './config.js';
import { ACCESS_TOKEN_ALG, type AccessTokenKey } from './keys.js';
import { grantScopes } from './scopes.js';
import { ACCESS_TOKEN_TYP, remoteJwksCache } from './token.js';

/** The `realm` of our `WWW-Authenticate` challenges. */
export const REALM = 'fhir-anchor';

/** 401 for a request without credentials (RFC 6750 §3.1: no error code). */
export function missingTokenError(): HttpError {
  return httpError(401, 'login', 'Authentication required', { 'WWW-Authenticate': `Bearer realm="${REALM}"` });
}

/** 401 for any token that does not verify; the same generic message whatever the reason. */
export function invalidTokenError(): HttpError {
  return httpError(401, 'login', 'Invalid access token', { 'WWW-Authenticate': `Bearer realm="${REALM}", error="invalid_token"` });
}

/** 403 when the token's scopes do not allow the interaction. */
export function insufficientScopeError(): HttpError {
  return httpError(403, 'forbidden', 'insufficient scope', { 'WWW-Authenticate': `Bearer realm="${REALM}", error="insufficient_scope"` });
}

export interface AuthenticatorDeps {
  readonly options: SmartOptions;
  /** Our signing key (its public half and kid are used). */
  readonly key: Pick<AccessTokenKey, 'publicKey' | 'kid'>;
  /** Registered clients: actor identities, break-glass entitlement, current allowed scopes. */
  readonly clients: Pick<OAuthClientStore, 'get'>;
  readonly clock: Clock;
  readonly logger: Logger;
  /** JWK Set resolver for external issuers (default: jose `createRemoteJWKSet`, cached per URL). */
  readonly remoteJwks?: (url: string) => JWTVerifyGetKey;
  /**
   * How long a client registration, and a token verified with it, is cached per process, in ms
   * (default 30 000; 0 disables both).
   */
  readonly clientCacheMs?: number;
  /**
   * Completes a requester's actor identity from the store, both ways: identifiers resolve to the
   * local Organization / Practitioner / PractitionerRole that carries them, and those resources'
   * identifiers join the identity. Consents name actors by reference or by identifier; without this
   * a client registered one way would escape a deny written the other way. Cached with the token.
   */
  readonly completeActor?: (actor: ActorIdentity) => Promise<ActorIdentity>;
}

/** A requester's actor identity: local references and identifiers. */
export interface ActorIdentity {
  readonly references: readonly string[];
  readonly identifiers: ReadonlyArray<{ readonly system: string; readonly value: string }>;
}

export interface Authenticator {
  /** Verifies a bearer token; throws a 401 {@link HttpError} when it does not verify. */
  verifyAccessToken(token: string): Promise<AccessContext>;
  /** Reads `Authorization: Bearer …` and verifies it; throws 401 when missing or invalid. */
  authenticateRequest(req: Request): Promise<AccessContext>;
  /** Express middleware: sets `res.locals.access` (read it with {@link getAccess}) or fails with 401. */
  readonly middleware: RequestHandler;
}

class TokenRejected extends Error {}

/** Verified tokens remembered per process at most (the cache is emptied when full). */
const TOKEN_CACHE_MAX = 10_000;

function stringClaim(payload: JWTPayload, name: string): string | undefined {
  const v = payload[name];
  return typeof v === 'string' && v !== '' ? v : undefined;
}

/** A space-separated string or an array of strings (both forms occur for `scope` and purposes). */
function listClaim(payload: JWTPayload, name: string): string[] {
  const v = payload[name];
  if (typeof v === 'string') return v.split(' ').filter((s) => s !== '');
  if (Array.isArray(v)) return v.filter((s): s is string => typeof s === 'string' && s !== '');
  return [];
}

function relativeReference(ref: string, fhirBaseUrl: string): string {
  return ref.startsWith(`${fhirBaseUrl}/`) ? ref.slice(fhirBaseUrl.length + 1) : ref;
}

export function createAuthenticator(deps: AuthenticatorDeps): Authenticator {
  const { options, key, clients, clock, logger } = deps;
  const remote = deps.remoteJwks ?? remoteJwksCache();
  const cacheMs = deps.clientCacheMs ?? 30_000;
  const external = new Map<string, ExternalIssuer>(options.externalIssuers.map((e) => [e.issuer, e]));
  const clientCache = new Map<string, { at: number; client: OAuthClientRecord | undefined }>();

  async function client(id: string): Promise<OAuthClientRecord | undefined> {
    const now = clock.now().getTime();
    const hit = clientCache.get(id);
    if (hit && now - hit.at < cacheMs) return hit.client;
    const c = await clients.get(id);
    if (cacheMs > 0) {
      if (clientCache.size > 10_000) clientCache.clear();
      clientCache.set(id, { at: now, client: c });
    }
    return c;
  }

  async function verify(token: string): Promise<{ payload: JWTPayload; ours: boolean }> {
    let iss: unknown;
    try {
      iss = decodeJwt(token).iss;
    } catch {
      throw new TokenRejected('malformed');
    }
    const common = { currentDate: clock.now(), clockTolerance: options.clockToleranceSeconds };
    if (iss === options.issuer) {
      // Only our own key, by kid; only ES256; only access tokens (typ at+jwt).
      const header = decodeProtectedHeader(token);
      if (header.kid !== key.kid) throw new TokenRejected('unknown kid');
      const { payload } = await jwtVerify(token, key.publicKey, {
        ...common,
        issuer: options.issuer,
        audience: options.fhirBaseUrl,
        algorithms: [ACCESS_TOKEN_ALG],
        typ: ACCESS_TOKEN_TYP,
        requiredClaims: ['exp', 'iat', 'jti', 'sub'],
      });
      return { payload, ours: true };
    }
    const ext = typeof iss === 'string' ? external.get(iss) : undefined;
    if (!ext) throw new TokenRejected('unknown issuer');
    const { payload } = await jwtVerify(token, remote(ext.jwksUrl), {
      ...common,
      issuer: ext.issuer,
      audience: ext.audience,
      algorithms: [...EXTERNAL_TOKEN_ALGORITHMS],
      requiredClaims: ['exp'],
    });
    return { payload, ours: false };
  }

  async function toContext(payload: JWTPayload, ours: boolean): Promise<AccessContext> {
    const clientId = stringClaim(payload, 'client_id') ?? stringClaim(payload, 'azp') ?? stringClaim(payload, 'sub');
    if (!clientId) throw new TokenRejected('no client id');
    const registration = await client(clientId);
    // Our tokens name a registered client; a deleted client's tokens stop working at once.
    if (ours && !registration) throw new TokenRejected('client no longer registered');

    const patient = stringClaim(payload, 'patient');
    const fhirUserClaim = stringClaim(payload, 'fhirUser');
    const fhirUser = fhirUserClaim ? relativeReference(fhirUserClaim, options.fhirBaseUrl) : undefined;
    let scopeStrings = [...listClaim(payload, 'scope'), ...listClaim(payload, 'scp')];
    let purposes = listClaim(payload, 'purpose_of_use');
    if (registration) {
      // The registration is the ceiling, also for tokens issued before it was narrowed.
      scopeStrings = grantScopes(scopeStrings, registration.allowedScopes);
      const allowed = new Set(registration.allowedPurposes);
      purposes = purposes.filter((p) => allowed.has(p));
    }
    const given: ActorIdentity = {
      references: [...new Set([...(registration?.actorReferences ?? []), ...(fhirUser && !fhirUser.includes('://') ? [fhirUser] : [])])],
      identifiers: registration?.actorIdentifiers ?? [],
    };
    const actor = deps.completeActor && (given.references.length > 0 || given.identifiers.length > 0) ? await deps.completeActor(given) : given;
    const references = actor.references;
    const identifiers = [...actor.identifiers, { system: OAUTH_CLIENT_ID_SYSTEM, value: clientId }];
    const jti = stringClaim(payload, 'jti');
    return Object.freeze({
      clientId,
      issuer: payload.iss!,
      scopes: parseScopes(scopeStrings).scopes,
      ...(patient ? { patient: patient.startsWith('Patient/') ? patient.slice('Patient/'.length) : patient } : {}),
      ...(fhirUser ? { fhirUser } : {}),
      purposeOfUse: purposes as PurposeOfUse[],
      actor: { references, identifiers },
      // Only a local registration can entitle a client to break the glass.
      mayBreakGlass: registration?.mayBreakGlass ?? false,
      ...(jti ? { tokenId: jti } : {}),
    });
  }

  /**
   * Verified tokens, so that a client's every request does not pay for an ECDSA verification and a
   * registration look-up. An entry lives until the token expires or for the registration cache
   * time, whichever is first, so a narrowed or deleted registration takes effect as soon as it
   * would without this cache. Only successes are cached.
   */
  const verified = new Map<string, { until: number; context: AccessContext }>();

  async function verifyAccessToken(token: string): Promise<AccessContext> {
    const now = clock.now().getTime();
    const hit = verified.get(token);
    if (hit) {
      if (now < hit.until) return hit.context;
      verified.delete(token);
    }
    try {
      const { payload, ours } = await verify(token);
      const context = await toContext(payload, ours);
      if (cacheMs > 0 && typeof payload.exp === 'number') {
        if (verified.size >= TOKEN_CACHE_MAX) verified.clear();
        verified.set(token, { until: Math.min(payload.exp * 1000, now + cacheMs), context });
      }
      return context;
    } catch (err) {
      const reason = err instanceof TokenRejected ? err.message : ((err as { code?: string }).code ?? 'verification failed');
      logger.debug({ reason }, 'access token rejected');
      throw invalidTokenError();
    }
  }

  async function authenticateRequest(req: Request): Promise<AccessContext> {
    const header = req.headers.authorization;
    if (header === undefined || header.trim() === '') throw missingTokenError();
    const m = /^Bearer +([A-Za-z0-9\-._~+/]+=*) *$/i.exec(header);
    if (!m) throw invalidTokenError();
    return verifyAccessToken(m[1]!);
  }

  const middleware: RequestHandler = async (req, res, next) => {
    try {
      res.locals.access = await authenticateRequest(req);
      next();
    } catch (err) {
      next(err);
    }
  };

  return { verifyAccessToken, authenticateRequest, middleware };
}

/**
 * The request's {@link AccessContext}, set by the authentication middleware. Throws 401 when the
 * middleware did not run (fail closed: a route mounted without it must not serve data).
 */
export function getAccess(res: Response): AccessContext {
  const access = (res.locals as { access?: AccessContext }).access;
  if (!access) throw missingTokenError();
  return access;
}

/**
 * The scope contexts a token may act in: `system` always, `user` with a fhirUser, `patient` with a
 * patient context. Broadest first.
 */
export function scopeContextsOf(ctx: AccessContext): ScopeContext[] {
  return ['system', ...(ctx.fhirUser ? (['user'] as const) : []), ...(ctx.patient ? (['patient'] as const) : [])];
}

/** The question {@link requireScope} answers. */
export interface RequiredScope {
  readonly resourceType: string;
  readonly interaction: ScopeInteraction;
  /** Needed for granular (constrained) scopes to count. */
  readonly resource?: Resource;
  /** Only this context (default: every context the token may act in). */
  readonly context?: ScopeContext;
}

/**
 * Throws 403 (`forbidden`, "insufficient scope") unless the token's scopes allow the interaction.
 * Returns the context that allowed it, broadest first: when it is `patient`, the caller must keep
 * the request inside `ctx.patient`'s data.
 */
export function requireScope(ctx: AccessContext, check: RequiredScope): ScopeContext {
  const contexts = check.context ? scopeContextsOf(ctx).filter((c) => c === check.context) : scopeContextsOf(ctx);
  for (const context of contexts) {
    if (scopesAllow(ctx.scopes, { context, resourceType: check.resourceType, interaction: check.interaction, ...(check.resource ? { resource: check.resource } : {}) })) {
      return context;
    }
  }
  throw insufficientScopeError();
}
