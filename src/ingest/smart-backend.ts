/**
 * SMART Backend Services client (SMART App Launch 2.x, "Backend Services"):
 * `client_credentials` grant authenticated with a `private_key_jwt` client assertion.
 * https://hl7.org/fhir/smart-app-launch/backend-services.html
 *
 * Security decisions:
 * - Error messages carry the HTTP status and the OAuth `error` code only: never the access token,
 *   the assertion, the key, or the token endpoint's free-text `error_description`.
 * - One token request at a time per client (single flight); callers share its result.
 */
import { randomUUID } from 'node:crypto';
import { SignJWT, importJWK, type JWK } from 'jose';
import { z } from 'zod';
import type { Clock } from '../platform/clock.js';
import { systemClock } from '../platform/clock.js';
import type { Logger } from '../platform/logger.js';
import type { CallbackAuth } from './source.js';

/** The `smart-backend` variant of a source's callback auth. */
export type SmartBackendConfig = Extract<CallbackAuth, { type: 'smart-backend' }>;

/** `client_assertion_type` for a JWT client assertion (RFC 7523). */
export const CLIENT_ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';

/** Maximum assertion lifetime the SMART spec allows: `exp` no more than 5 minutes in the future. */
export const MAX_ASSERTION_LIFETIME_SECONDS = 300;

/** Signature algorithms SMART Backend Services requires servers to support. */
export type SmartAssertionAlg = 'RS384' | 'ES384';

/** A failure to obtain an access token. The message is safe to log: it never holds a secret. */
export class SmartBackendError extends Error {
  override readonly name = 'SmartBackendError';
  /** HTTP status of the token endpoint, when it answered. */
  readonly status: number | undefined;
  /** Whether trying again later may succeed (network errors, timeouts, 429, 5xx). */
  readonly retryable: boolean;
  /** The OAuth error code (RFC 6749 §5.2), e.g. `invalid_client`, when the endpoint sent one. */
  readonly oauthError: string | undefined;

  constructor(message: string, details: { status?: number; retryable: boolean; oauthError?: string }) {
    super(message);
    this.status = details.status;
    this.retryable = details.retryable;
    this.oauthError = details.oauthError;
  }
}

export interface SmartBackendOptions {
  /** Time source for the assertion's `iat`/`exp` and for token expiry; default the system clock. */
  clock?: Clock;
  /** `fetch` implementation; default the global one. */
  fetch?: typeof fetch;
  /** Timeout of one token request, ms. Default 10 000. */
  timeoutMs?: number;
  /** Refresh this long before `expires_in` runs out, ms (capped at half the token's lifetime). Default 60 000. */
  refreshSkewMs?: number;
  /** Assertion lifetime, seconds; at most {@link MAX_ASSERTION_LIFETIME_SECONDS}. Default 300. */
  assertionLifetimeSeconds?: number;
  /** Lifetime assumed when the endpoint omits `expires_in` (it SHALL send it), seconds. Default 300. */
  defaultExpiresInSeconds?: number;
  logger?: Logger;
}

/** Obtains and caches access tokens for one client registration. */
export interface SmartBackendAuth {
  /** A valid access token, from cache or from a (single-flight) token request. Rejects with {@link SmartBackendError}. */
  getAccessToken(signal?: AbortSignal): Promise<string>;
  /** Drops the cached token (e.g. after the resource server answered 401), so the next call fetches a new one. */
  invalidate(): void;
}

/** Picks RS384 / ES384 from the JWK (`alg` if set, else from `kty`/`crv`). */
export function assertionAlgFor(jwk: Record<string, unknown>): SmartAssertionAlg {
  const alg = jwk.alg;
  if (alg !== undefined) {
    if (alg === 'RS384' || alg === 'ES384') return alg;
    throw new SmartBackendError(`SMART backend: unsupported key alg "${String(alg)}" (use RS384 or ES384)`, { retryable: false });
  }
  if (jwk.kty === 'RSA') return 'RS384';
  if (jwk.kty === 'EC' && jwk.crv === 'P-384') return 'ES384';
  throw new SmartBackendError('SMART backend: key must be RSA (RS384) or EC P-384 (ES384)', { retryable: false });
}

/**
 * Builds the signed client assertion: `iss` = `sub` = clientId, `aud` = tokenUrl, random `jti`,
 * `iat` now, `exp` ≤ 5 minutes ahead; header `alg`, `kid` (from the JWK) and `typ: JWT`.
 */
export async function buildClientAssertion(
  config: Pick<SmartBackendConfig, 'clientId' | 'tokenUrl' | 'privateKeyJwk'>,
  options: { clock?: Clock; lifetimeSeconds?: number } = {},
): Promise<string> {
  const jwk = config.privateKeyJwk;
  const kid = jwk.kid;
  if (typeof kid !== 'string' || kid.length === 0) {
    throw new SmartBackendError('SMART backend: privateKeyJwk must include a "kid"', { retryable: false });
  }
  if (typeof jwk.d !== 'string') {
    throw new SmartBackendError('SMART backend: privateKeyJwk is not a private key', { retryable: false });
  }
  const alg = assertionAlgFor(jwk);
  const lifetime = Math.min(options.lifetimeSeconds ?? MAX_ASSERTION_LIFETIME_SECONDS, MAX_ASSERTION_LIFETIME_SECONDS);
  if (!(lifetime > 0)) throw new SmartBackendError('SMART backend: assertion lifetime must be positive', { retryable: false });
  let key: Awaited<ReturnType<typeof importJWK>>;
  try {
    key = await importJWK(jwk as JWK, alg);
  } catch {
    // jose's message could describe the key; keep ours generic.
    throw new SmartBackendError(`SMART backend: privateKeyJwk could not be imported for ${alg}`, { retryable: false });
  }
  const nowSeconds = Math.floor((options.clock ?? systemClock).now().getTime() / 1000);
  return new SignJWT({})
    .setProtectedHeader({ alg, kid, typ: 'JWT' })
    .setIssuer(config.clientId)
    .setSubject(config.clientId)
    .setAudience(config.tokenUrl)
    .setJti(randomUUID())
    .setIssuedAt(nowSeconds)
    .setExpirationTime(nowSeconds + lifetime)
    .sign(key);
}

const tokenResponseSchema = z.object({
  access_token: z.string().min(1),
  token_type: z.string().refine((t) => t.toLowerCase() === 'bearer', 'token_type must be bearer'),
  expires_in: z.number().positive().optional(),
  scope: z.string().optional(),
});

const OAUTH_ERROR_CODE = /^[a-z_]{1,64}$/;

function safeEndpoint(url: string): string {
  try {
    const u = new URL(url);
    return `${u.origin}${u.pathname}`;
  } catch {
    return 'token endpoint';
  }
}

// Duck-typed, not `instanceof`: fetch errors may come from another realm (e.g. test VMs).
function networkReason(err: unknown): string {
  const e = err as { name?: unknown; cause?: { code?: unknown } } | null | undefined;
  if (e?.name === 'TimeoutError' || e?.name === 'AbortError') return 'timed out';
  const code = e?.cause?.code;
  return typeof code === 'string' && /^[A-Z_]{2,40}$/.test(code) ? `network error (${code})` : 'network error';
}

/** Rejects when `signal` aborts, without cancelling the shared promise underneath. */
function abortable<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}

/**
 * Creates a token client for one SMART Backend Services registration. Tokens are cached until
 * `refreshSkewMs` before `expires_in` and concurrent callers share one in-flight request.
 */
export function createSmartBackendAuth(config: SmartBackendConfig, options: SmartBackendOptions = {}): SmartBackendAuth {
  const clock = options.clock ?? systemClock;
  const doFetch = options.fetch ?? fetch;
  const timeoutMs = options.timeoutMs ?? 10_000;
  const refreshSkewMs = options.refreshSkewMs ?? 60_000;
  const defaultExpiresIn = options.defaultExpiresInSeconds ?? 300;
  const endpoint = safeEndpoint(config.tokenUrl);
  let cached: { token: string; refreshAt: number } | undefined;
  let inflight: Promise<string> | undefined;

  async function requestToken(): Promise<string> {
    const assertion = await buildClientAssertion(config, { clock, lifetimeSeconds: options.assertionLifetimeSeconds });
    const body = new URLSearchParams({
      grant_type: 'client_credentials',
      scope: config.scope,
      client_assertion_type: CLIENT_ASSERTION_TYPE,
      client_assertion: assertion,
    });
    let response: Response;
    try {
      response = await doFetch(config.tokenUrl, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
        body: body.toString(),
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (err) {
      throw new SmartBackendError(`SMART token request to ${endpoint} failed: ${networkReason(err)}`, { retryable: true });
    }
    let json: unknown;
    try {
      json = await response.json();
    } catch {
      json = undefined;
    }
    if (!response.ok) {
      const code = (json as { error?: unknown } | undefined)?.error;
      const oauthError = typeof code === 'string' && OAUTH_ERROR_CODE.test(code) ? code : undefined;
      const retryable = response.status === 429 || response.status >= 500;
      throw new SmartBackendError(
        `SMART token request to ${endpoint} failed: HTTP ${response.status}${oauthError ? ` (${oauthError})` : ''}`,
        { status: response.status, retryable, ...(oauthError ? { oauthError } : {}) },
      );
    }
    const parsed = tokenResponseSchema.safeParse(json);
    if (!parsed.success) {
      throw new SmartBackendError(`SMART token response from ${endpoint} is malformed (need access_token and token_type bearer)`, {
        status: response.status,
        retryable: false,
      });
    }
    const lifetimeMs = (parsed.data.expires_in ?? defaultExpiresIn) * 1000;
    const skew = Math.min(refreshSkewMs, lifetimeMs / 2);
    cached = { token: parsed.data.access_token, refreshAt: clock.now().getTime() + lifetimeMs - skew };
    options.logger?.debug({ clientId: config.clientId, expiresInSeconds: lifetimeMs / 1000 }, 'SMART access token obtained');
    return parsed.data.access_token;
  }

  return {
    getAccessToken(signal) {
      if (cached && clock.now().getTime() < cached.refreshAt) return Promise.resolve(cached.token);
      if (!inflight) {
        inflight = requestToken().finally(() => {
          inflight = undefined;
        });
      }
      return abortable(inflight, signal);
    },
    invalidate() {
      cached = undefined;
    },
  };
}
