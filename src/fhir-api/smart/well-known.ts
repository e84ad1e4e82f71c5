/**
 * SMART discovery: `.well-known/smart-configuration`, served at the server root and under the FHIR
 * base. It advertises exactly what is implemented: Backend Services (client_credentials with
 * private_key_jwt, RS384 / ES384), SMART v1 and v2 scope syntax, and no authorization endpoint
 * (no user-facing launch).
 *
 * @see https://hl7.org/fhir/smart-app-launch/STU2/conformance.html
 */
import { Router } from 'express';
import { ASSERTION_ALGORITHMS, type SmartOptions } from './config.js';

/** The SMART configuration document. */
export interface SmartConfiguration {
  readonly issuer: string;
  readonly jwks_uri: string;
  readonly token_endpoint: string;
  readonly grant_types_supported: readonly string[];
  readonly token_endpoint_auth_methods_supported: readonly string[];
  readonly token_endpoint_auth_signing_alg_values_supported: readonly string[];
  readonly scopes_supported: readonly string[];
  readonly response_types_supported: readonly string[];
  readonly code_challenge_methods_supported: readonly string[];
  readonly capabilities: readonly string[];
}

/**
 * Capabilities implemented: asymmetric client authentication, v1 and v2 scopes. No launch
 * (`launch-ehr`, `launch-standalone`), no `authorize-post`, no public/symmetric clients, no OpenID
 * Connect, no `context-*` (the patient of a patient-context client is fixed at registration).
 * `permission-patient` / `permission-user` are not claimed until the FHIR read layer confines
 * patient-context requests to that patient's compartment (tokens already carry such scopes).
 */
export const SMART_CAPABILITIES = ['client-confidential-asymmetric', 'permission-v1', 'permission-v2'] as const;

export function smartConfiguration(options: SmartOptions): SmartConfiguration {
  return {
    // Our access tokens' `iss` (not an OpenID Connect issuer: `sso-openid-connect` is not claimed).
    issuer: options.issuer,
    jwks_uri: options.jwksUrl,
    token_endpoint: options.tokenUrl,
    grant_types_supported: ['client_credentials'],
    token_endpoint_auth_methods_supported: ['private_key_jwt'],
    token_endpoint_auth_signing_alg_values_supported: [...ASSERTION_ALGORITHMS],
    scopes_supported: options.scopesSupported,
    // No authorization endpoint, so no response types and no PKCE methods.
    response_types_supported: [],
    code_challenge_methods_supported: [],
    capabilities: [...SMART_CAPABILITIES],
  };
}

/**
 * `GET /.well-known/smart-configuration`. Mount the router at `/` and at `/fhir/R4` (SMART puts it
 * under the FHIR base; some clients look at the root).
 */
export function createWellKnownRouter(options: SmartOptions): Router {
  const router = Router();
  const body = JSON.stringify(smartConfiguration(options));
  router.get('/.well-known/smart-configuration', (_req, res) => {
    // Public metadata: any origin may read it, caches may keep it briefly.
    res.set({ 'Access-Control-Allow-Origin': '*', 'Cache-Control': 'public, max-age=3600' }).type('application/json').send(body);
  });
  return router;
}
