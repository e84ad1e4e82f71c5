/**
 * SMART on FHIR authorization for the FHIR API: Backend Services token endpoint (private_key_jwt),
 * discovery, client registration and bearer-token authentication producing an `AccessContext`.
 *
 * @see https://hl7.org/fhir/smart-app-launch/STU2/backend-services.html
 * @see docs/decisions-smart.md
 */
import type { Router } from 'express';
import type { Clock } from '../../platform/clock.js';
import type { Logger } from '../../platform/logger.js';
import type { AssertionReplayCache, OAuthClientStore } from '../../store/clients-store.js';
import { createAuthenticator, type Authenticator, type AuthenticatorDeps } from './authenticate.js';
import { createClientsAdminRouter } from './clients.js';
import { resolveSmartOptions, type SmartOptions, type SmartOptionsInput } from './config.js';
import { loadAccessTokenKey, type AccessTokenKey, type AccessTokenKeyOptions } from './keys.js';
import { createTokenRouter, remoteJwksCache } from './token.js';
import { createWellKnownRouter } from './well-known.js';

export * from './authenticate.js';
export * from './clients.js';
export * from './config.js';
export * from './keys.js';
export * from './scopes.js';
export * from './token.js';
export * from './well-known.js';

export interface SmartStageDeps {
  readonly settings: SmartOptionsInput;
  /** The access-token signing key: a private JWK string, or a key file (generated when missing). */
  readonly key: AccessTokenKeyOptions;
  /** Registered clients and the assertion replay cache (both `PgClientStore`). */
  readonly clients: OAuthClientStore & AssertionReplayCache;
  readonly clock: Clock;
  readonly logger: Logger;
  /** Completes a requester's actor identity from the store (see `AuthenticatorDeps`). */
  readonly completeActor?: AuthenticatorDeps['completeActor'];
}

export interface SmartStage {
  readonly options: SmartOptions;
  readonly key: AccessTokenKey;
  readonly authenticator: Authenticator;
  /** Mount at `/auth`: `POST /auth/token`, `GET /auth/jwks.json`. */
  readonly tokenRouter: Router;
  /** Mount at `/` and at `/fhir/R4`: `GET .well-known/smart-configuration`. */
  readonly wellKnownRouter: Router;
  /** Mount under `/admin` at `/` (it serves `/clients` and `/clients/:id`). */
  readonly clientsAdminRouter: Router;
}

/** Builds the SMART pieces; loads (or generates) the signing key. */
export async function createSmartStage(deps: SmartStageDeps): Promise<SmartStage> {
  const options = resolveSmartOptions(deps.settings);
  const key = await loadAccessTokenKey(deps.key);
  // One remote JWK Set cache for client keys and external issuers alike.
  const remoteJwks = remoteJwksCache();
  const authenticator = createAuthenticator({
    options,
    key,
    clients: deps.clients,
    clock: deps.clock,
    logger: deps.logger,
    remoteJwks,
    ...(deps.completeActor ? { completeActor: deps.completeActor } : {}),
  });
  return {
    options,
    key,
    authenticator,
    tokenRouter: createTokenRouter({ options, key, clients: deps.clients, replay: deps.clients, clock: deps.clock, logger: deps.logger, remoteJwks }),
    wellKnownRouter: createWellKnownRouter(options),
    clientsAdminRouter: createClientsAdminRouter({ clients: deps.clients }),
  };
}
