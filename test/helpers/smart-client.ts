/**
 * A real SMART Backend Services client for tests against a running fhir-anchor: registers itself
 * through /admin/clients with a key generated at test time, then obtains access tokens with a
 * private_key_jwt client assertion, exactly as an external app would.
 */
import { randomUUID } from 'node:crypto';
import { SignJWT, exportJWK, generateKeyPair } from 'jose';

export interface TestClient {
  readonly clientId: string;
  token(scope: string, options?: { purposeOfUse?: string }): Promise<string>;
}

export async function registerTestClient(
  base: string,
  adminToken: string,
  registration: {
    id: string;
    allowedScopes: string[];
    allowedPurposes?: string[];
    mayBreakGlass?: boolean;
    fhirUser?: string;
    patient?: string;
    actor?: { references?: string[]; identifiers?: Array<{ system: string; value: string }> };
  },
): Promise<TestClient> {
  const { publicKey, privateKey } = await generateKeyPair('ES384');
  const jwk = { ...(await exportJWK(publicKey)), kid: `${registration.id}-k1`, alg: 'ES384' };
  const res = await fetch(`${base}/admin/clients`, {
    method: 'POST',
    headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: registration.id, jwks: { keys: [jwk] }, ...registration }),
  });
  if (res.status !== 201) throw new Error(`client registration failed: ${res.status} ${await res.text()}`);
  const discovery = (await (await fetch(`${base}/.well-known/smart-configuration`)).json()) as { token_endpoint: string };
  // The advertised endpoint carries PUBLIC_BASE_URL; post to the address we can reach, assert for the advertised one.
  const tokenUrl = discovery.token_endpoint;
  return {
    clientId: registration.id,
    async token(scope, options = {}) {
      const now = Math.floor(Date.now() / 1000);
      const assertion = await new SignJWT({ iss: registration.id, sub: registration.id, aud: tokenUrl, jti: randomUUID(), exp: now + 60 })
        .setProtectedHeader({ alg: 'ES384', kid: jwk.kid, typ: 'JWT' })
        .sign(privateKey);
      const form = new URLSearchParams({
        grant_type: 'client_credentials',
        client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
        client_assertion: assertion,
        scope,
        ...(options.purposeOfUse ? { purpose_of_use: options.purposeOfUse } : {}),
      });
      const t = await fetch(`${base}/auth/token`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: form });
      const body = (await t.json()) as { access_token?: string };
      if (!t.ok || !body.access_token) throw new Error(`token request failed: ${t.status} ${JSON.stringify(body)}`);
      return body.access_token;
    },
  };
}
