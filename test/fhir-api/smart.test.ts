/**
 * SMART on FHIR Backend Services against the real PostgreSQL: discovery, client registration, the
 * token endpoint (every forgery we know of), bearer authentication of the FHIR API, external issuers
 * via a JWKS served by a local server, and scope checks. Keys are generated per run; none is stored.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import express, { Router } from 'express';
import { SignJWT, decodeJwt, decodeProtectedHeader, exportJWK, exportSPKI, generateKeyPair, importJWK, type CryptoKey, type JWK } from 'jose';
import { ManualClock } from '../../src/platform/clock.js';
import { createLogger } from '../../src/platform/logger.js';
import { jsonBody } from '../../src/server/app.js';
import { errorHandler, notFoundHandler } from '../../src/server/errors.js';
import { createPool } from '../../src/store/postgres-store.js';
import { PgClientStore } from '../../src/store/clients-store.js';
import { openDatabase, type Database } from '../../src/store/index.js';
import {
  CLIENT_ASSERTION_TYPE,
  createSmartStage,
  getAccess,
  loadAccessTokenKey,
  requireScope,
  type SmartStage,
} from '../../src/fhir-api/smart/index.js';
import { TEST_DATABASE_URL, dropSchema, json, randomNamespace, silentLogger } from '../helpers/env.js';

interface KeyPair {
  readonly privateKey: CryptoKey;
  readonly publicJwk: JWK;
  readonly alg: 'ES384' | 'RS384' | 'RS256';
  readonly kid: string;
}

async function keyPair(alg: KeyPair['alg'], kid: string): Promise<KeyPair> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  return { privateKey, publicJwk: { ...(await exportJWK(publicKey)), kid, alg }, alg, kid };
}

const b64url = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url');

/** Serves JSON documents at fixed paths on 127.0.0.1 (client JWK Sets, an external IdP's JWKS). */
async function jsonServer(docs: Map<string, unknown>): Promise<{ url: string; close(): Promise<void>; hits: Map<string, number> }> {
  const hits = new Map<string, number>();
  const server: Server = createServer((req, res) => {
    const doc = docs.get(req.url ?? '');
    hits.set(req.url ?? '', (hits.get(req.url ?? '') ?? 0) + 1);
    if (doc === undefined) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(doc));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, hits, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

const ADMIN_HEADERS = { 'content-type': 'application/json' };

/** Log lines of the SMART stage, to check that a refusal happened for the intended reason. */
const logLines: Array<{ msg?: string; reason?: string }> = [];
const captureLogger = createLogger('debug', { write: (line: string) => void logLines.push(JSON.parse(line)) });
const lastReason = (): string | undefined => logLines.at(-1)?.reason;
const EXTERNAL_ISSUER = 'https://idp.example.test';

describe('SMART on FHIR', () => {
  let schema: string;
  let db: Database;
  let clients: PgClientStore;
  let clock: ManualClock;
  let smart: SmartStage;
  let server: Server;
  let base: string;
  let keyDir: string;
  let docs: Map<string, unknown>;
  let jwksHost: Awaited<ReturnType<typeof jsonServer>>;
  let es: KeyPair;
  let rsa: KeyPair;
  let idp: KeyPair;

  const publicBaseUrl = 'https://anchor.example.test';
  const tokenUrl = `${publicBaseUrl}/auth/token`;
  const fhirBase = `${publicBaseUrl}/fhir/R4`;

  beforeAll(async () => {
    [es, rsa, idp] = await Promise.all([keyPair('ES384', 'es-1'), keyPair('RS384', 'rsa-1'), keyPair('RS256', 'idp-1')]);
    docs = new Map<string, unknown>([
      ['/rsa-client/jwks.json', { keys: [rsa.publicJwk] }],
      ['/idp/jwks.json', { keys: [idp.publicJwk] }],
    ]);
    jwksHost = await jsonServer(docs);
    schema = randomNamespace('t');
    clock = new ManualClock(new Date());
    db = await openDatabase({
      config: { database: { kind: 'external', url: TEST_DATABASE_URL }, databaseSchema: schema, databasePoolMax: 3 },
      logger: silentLogger,
      clock,
    });
    clients = new PgClientStore(createPool({ connectionString: TEST_DATABASE_URL, schema, max: 3 }), clock, true);
    keyDir = await mkdtemp(path.join(os.tmpdir(), 'fhir-anchor-smart-'));
    smart = await createSmartStage({
      settings: {
        publicBaseUrl,
        externalIssuers: [{ issuer: EXTERNAL_ISSUER, jwksUrl: `${jwksHost.url}/idp/jwks.json`, audience: fhirBase }],
      },
      key: { keyFile: path.join(keyDir, 'smart-token-key.jwk') },
      clients,
      clock,
      logger: captureLogger,
    });

    const app = express();
    app.use('/auth', smart.tokenRouter);
    app.use('/', smart.wellKnownRouter);
    app.use('/fhir/R4', smart.wellKnownRouter);
    const admin = Router();
    admin.use(jsonBody(1_000_000));
    admin.use('/', smart.clientsAdminRouter);
    app.use('/admin', admin);
    const fhir = Router();
    fhir.use(smart.authenticator.middleware);
    fhir.get('/Observation', (_req, res) => {
      const ctx = getAccess(res);
      const context = requireScope(ctx, { resourceType: 'Observation', interaction: 'search' });
      res.json({ ctx, context });
    });
    fhir.get('/Patient', (_req, res) => {
      requireScope(getAccess(res), { resourceType: 'Patient', interaction: 'read' });
      res.json({ ok: true });
    });
    app.use('/fhir/R4', fhir);
    app.use(notFoundHandler);
    app.use(errorHandler(silentLogger));
    server = await new Promise<Server>((resolve) => {
      const s = app.listen(0, '127.0.0.1', () => resolve(s));
    });
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

    const register = async (body: unknown): Promise<void> => {
      const res = await fetch(`${base}/admin/clients`, { method: 'POST', headers: ADMIN_HEADERS, body: JSON.stringify(body) });
      if (res.status !== 201) throw new Error(`registration failed: ${res.status} ${await res.text()}`);
    };
    await register({
      id: 'es-client',
      name: 'EC client',
      jwks: { keys: [es.publicJwk] },
      allowedScopes: ['system/Observation.rs', 'system/Condition.read'],
      allowedPurposes: ['TREAT', 'ETREAT'],
      mayBreakGlass: true,
      actor: { references: ['Organization/org-1'], identifiers: [{ system: 'http://hl7.org/fhir/sid/us-npi', value: '1234567893' }] },
    });
    await register({
      id: 'rsa-client',
      name: 'RSA client (JWKS URL)',
      jwksUrl: `${jwksHost.url}/rsa-client/jwks.json`,
      allowedScopes: ['system/*.rs', 'patient/*.rs'],
      patient: 'Patient/p-1',
      fhirUser: 'Practitioner/dr-1',
    });
  });

  afterAll(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await jwksHost.close();
    await clients.close();
    await db.close();
    await dropSchema(schema);
    await rm(keyDir, { recursive: true, force: true });
  });

  /** A client assertion; `claims` and `header` override the defaults, `undefined` removes a claim. */
  async function assertion(
    key: KeyPair,
    clientId: string,
    options: { claims?: Record<string, unknown>; header?: Record<string, unknown>; lifetime?: number } = {},
  ): Promise<string> {
    const now = Math.floor(clock.now().getTime() / 1000);
    const claims: Record<string, unknown> = { iss: clientId, sub: clientId, aud: tokenUrl, jti: crypto.randomUUID(), iat: now, exp: now + (options.lifetime ?? 300), ...options.claims };
    for (const [k, v] of Object.entries(claims)) if (v === undefined) delete claims[k];
    return new SignJWT(claims).setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'JWT', ...options.header }).sign(key.privateKey);
  }

  function tokenRequest(form: Record<string, string>, contentType = 'application/x-www-form-urlencoded'): Promise<Response> {
    return fetch(`${base}/auth/token`, { method: 'POST', headers: { 'content-type': contentType }, body: new URLSearchParams(form).toString() });
  }

  async function requestToken(clientAssertion: string, scope: string, extra: Record<string, string> = {}): Promise<Response> {
    return tokenRequest({ grant_type: 'client_credentials', client_assertion_type: CLIENT_ASSERTION_TYPE, client_assertion: clientAssertion, scope, ...extra });
  }

  async function expectOAuthError(res: Response, status: number, error: string): Promise<void> {
    expect(res.status).toBe(status);
    expect(res.headers.get('cache-control')).toBe('no-store');
    const body = await json(res);
    expect(body.error).toBe(error);
    expect(typeof body.error_description).toBe('string');
  }

  async function accessToken(key: KeyPair = es, clientId = 'es-client', scope = 'system/Observation.rs', extra: Record<string, string> = {}): Promise<string> {
    const res = await requestToken(await assertion(key, clientId), scope, extra);
    expect(res.status).toBe(200);
    return (await json(res)).access_token as string;
  }

  const fhirGet = (p: string, token?: string): Promise<Response> =>
    fetch(`${base}/fhir/R4${p}`, token === undefined ? {} : { headers: { authorization: `Bearer ${token}` } });

  describe('discovery', () => {
    it.each(['/.well-known/smart-configuration', '/fhir/R4/.well-known/smart-configuration'])('serves %s truthfully', async (p) => {
      const res = await fetch(base + p);
      expect(res.status).toBe(200);
      const doc = await json(res);
      expect(doc).toMatchObject({
        issuer: publicBaseUrl,
        token_endpoint: tokenUrl,
        jwks_uri: `${publicBaseUrl}/auth/jwks.json`,
        grant_types_supported: ['client_credentials'],
        token_endpoint_auth_methods_supported: ['private_key_jwt'],
        token_endpoint_auth_signing_alg_values_supported: ['RS384', 'ES384'],
        capabilities: ['client-confidential-asymmetric', 'permission-v1', 'permission-v2'],
      });
      expect(doc.scopes_supported).toContain('system/*.rs');
      // No user-facing launch: nothing claims an authorization endpoint.
      expect(doc.authorization_endpoint).toBeUndefined();
      expect(doc.capabilities).not.toContain('launch-standalone');
    });

    it('publishes the access-token public key, without its private part', async () => {
      const res = await fetch(`${base}/auth/jwks.json`);
      const { keys } = await json(res);
      expect(keys).toHaveLength(1);
      expect(keys[0]).toMatchObject({ kty: 'EC', crv: 'P-256', alg: 'ES256', kid: smart.key.kid, use: 'sig' });
      expect(keys[0].d).toBeUndefined();
    });
  });

  describe('client registration', () => {
    const valid = { id: 'reg-1', name: 'Registry test', jwks: { keys: [] as JWK[] }, allowedScopes: ['system/Observation.rs'] };

    it('creates, lists, reads, replaces and deletes a client', async () => {
      const body = { ...valid, jwks: { keys: [es.publicJwk] } };
      let res = await fetch(`${base}/admin/clients`, { method: 'POST', headers: ADMIN_HEADERS, body: JSON.stringify(body) });
      expect(res.status).toBe(201);
      expect(res.headers.get('location')).toBe('/admin/clients/reg-1');
      expect(await json(res)).toMatchObject({ id: 'reg-1', allowedPurposes: [], mayBreakGlass: false, actor: { references: [], identifiers: [] } });

      res = await fetch(`${base}/admin/clients`, { method: 'POST', headers: ADMIN_HEADERS, body: JSON.stringify(body) });
      expect(res.status).toBe(409);

      res = await fetch(`${base}/admin/clients`);
      expect((await json(res)).map((c: { id: string }) => c.id)).toEqual(expect.arrayContaining(['es-client', 'reg-1', 'rsa-client']));

      res = await fetch(`${base}/admin/clients/reg-1`, {
        method: 'PUT',
        headers: ADMIN_HEADERS,
        body: JSON.stringify({ ...body, name: 'Renamed', allowedPurposes: ['HPAYMT'], patient: 'p-9' }),
      });
      expect(res.status).toBe(200);
      expect(await json(res)).toMatchObject({ name: 'Renamed', allowedPurposes: ['HPAYMT'], patient: 'p-9' });

      res = await fetch(`${base}/admin/clients/reg-1`, { method: 'DELETE' });
      expect(res.status).toBe(204);
      res = await fetch(`${base}/admin/clients/reg-1`);
      expect(res.status).toBe(404);
      expect((await json(res)).resourceType).toBe('OperationOutcome');
    });

    it.each([
      ['a private key in the JWK Set', { jwks: { keys: [{ kty: 'EC', kid: 'x', crv: 'P-384', x: 'a', y: 'b', d: 'secret' }] } }],
      ['a symmetric key', { jwks: { keys: [{ kty: 'oct', kid: 'x', k: 'c2VjcmV0' }] } }],
      ['both jwks and jwksUrl', { jwksUrl: 'https://keys.example.test/jwks.json' }],
      ['a plain-http JWKS URL off localhost', { jwks: undefined, jwksUrl: 'http://keys.example.test/jwks.json' }],
      ['a malformed scope', { allowedScopes: ['system/Observation.rw'] }],
      ['an unknown purpose of use', { allowedPurposes: ['MARKETING'] }],
      ['an unknown field', { secret: 'x' }],
    ])('refuses %s with a 400 OperationOutcome', async (_label, change) => {
      const body = { ...valid, jwks: { keys: [es.publicJwk] }, ...change };
      const res = await fetch(`${base}/admin/clients`, { method: 'POST', headers: ADMIN_HEADERS, body: JSON.stringify(body) });
      expect(res.status).toBe(400);
      const oo = await json(res);
      expect(oo.resourceType).toBe('OperationOutcome');
    });
  });

  describe('token endpoint', () => {
    it('issues an ES256 access token for an ES384 assertion (inline JWKS)', async () => {
      const res = await requestToken(await assertion(es, 'es-client'), 'system/Observation.rs', { purpose_of_use: 'TREAT' });
      expect(res.status).toBe(200);
      expect(res.headers.get('cache-control')).toBe('no-store');
      const body = await json(res);
      expect(body).toEqual({ access_token: expect.any(String), token_type: 'Bearer', expires_in: 300, scope: 'system/Observation.rs' });
      const header = decodeProtectedHeader(body.access_token);
      expect(header).toMatchObject({ alg: 'ES256', kid: smart.key.kid, typ: 'at+jwt' });
      const claims = decodeJwt(body.access_token);
      const now = Math.floor(clock.now().getTime() / 1000);
      expect(claims).toMatchObject({ iss: publicBaseUrl, aud: fhirBase, sub: 'es-client', client_id: 'es-client', scope: 'system/Observation.rs', purpose_of_use: ['TREAT'], iat: now, exp: now + 300 });
      expect(typeof claims.jti).toBe('string');
      expect(claims.patient).toBeUndefined();
    });

    it('issues a token for an RS384 assertion verified against the client JWKS URL, with the fixed patient and fhirUser', async () => {
      const res = await requestToken(await assertion(rsa, 'rsa-client'), 'system/Observation.rs patient/Observation.read');
      expect(res.status).toBe(200);
      const body = await json(res);
      expect(body.patient).toBe('p-1');
      expect(body.scope).toBe('system/Observation.rs patient/Observation.read');
      expect(decodeJwt(body.access_token)).toMatchObject({ patient: 'p-1', fhirUser: 'Practitioner/dr-1' });
      expect(jwksHost.hits.get('/rsa-client/jwks.json')).toBeGreaterThanOrEqual(1);
    });

    it('accepts client_id in the form when it equals the assertion issuer', async () => {
      const res = await requestToken(await assertion(es, 'es-client'), 'system/Observation.rs', { client_id: 'es-client' });
      expect(res.status).toBe(200);
      const other = await requestToken(await assertion(es, 'es-client'), 'system/Observation.rs', { client_id: 'rsa-client' });
      await expectOAuthError(other, 401, 'invalid_client');
    });

    it('grants only the requested scopes within the allowed ones (no escalation)', async () => {
      let res = await requestToken(await assertion(es, 'es-client'), 'system/Observation.rs system/Patient.rs system/Observation.cruds');
      expect(res.status).toBe(200);
      expect((await json(res)).scope).toBe('system/Observation.rs');
      // A wildcard request is narrowed to what the client may have; v1 spelling is kept where possible.
      res = await requestToken(await assertion(es, 'es-client'), 'system/*.read');
      expect((await json(res)).scope).toBe('system/Observation.rs system/Condition.read');
      // Nothing grantable: invalid_scope.
      res = await requestToken(await assertion(es, 'es-client'), 'system/Patient.rs user/Observation.rs openid');
      await expectOAuthError(res, 400, 'invalid_scope');
      // patient/ scopes need a patient context.
      res = await requestToken(await assertion(rsa, 'rsa-client'), 'patient/Observation.rs');
      expect((await json(res)).scope).toBe('patient/Observation.rs');
      res = await requestToken(await assertion(es, 'es-client'), 'patient/Observation.rs');
      await expectOAuthError(res, 400, 'invalid_scope');
    });

    it('refuses a purpose of use the client may not declare', async () => {
      const res = await requestToken(await assertion(es, 'es-client'), 'system/Observation.rs', { purpose_of_use: 'TREAT HPAYMT' });
      await expectOAuthError(res, 400, 'invalid_request');
    });

    it('answers protocol errors in RFC 6749 JSON', async () => {
      await expectOAuthError(await tokenRequest({ grant_type: 'authorization_code', code: 'x' }), 400, 'unsupported_grant_type');
      await expectOAuthError(await tokenRequest({ client_assertion: 'x' }), 400, 'invalid_request');
      await expectOAuthError(
        await tokenRequest({ grant_type: 'client_credentials', client_assertion_type: CLIENT_ASSERTION_TYPE, client_assertion: await assertion(es, 'es-client') }),
        400,
        'invalid_request',
      );
      await expectOAuthError(await tokenRequest({ grant_type: 'client_credentials', scope: 'system/Observation.rs' }), 401, 'invalid_client');
      await expectOAuthError(await requestToken('not-a-jwt', 'system/Observation.rs'), 401, 'invalid_client');
      const json1 = await fetch(`${base}/auth/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ grant_type: 'client_credentials' }) });
      await expectOAuthError(json1, 400, 'invalid_request');
      // Repeated parameters are refused (RFC 6749 §3.2).
      const repeated = await fetch(`${base}/auth/token`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: 'grant_type=client_credentials&grant_type=client_credentials&scope=system%2FObservation.rs',
      });
      await expectOAuthError(repeated, 400, 'invalid_request');
    });

    describe('refuses forged or misused assertions with invalid_client', () => {
      const cases: Array<[string, () => Promise<string>, RegExp]> = [
        ['expired', async () => assertion(es, 'es-client', { claims: { exp: Math.floor(clock.now().getTime() / 1000) - 120, iat: Math.floor(clock.now().getTime() / 1000) - 400 } }), /ERR_JWT_EXPIRED/],
        ['wrong audience', async () => assertion(es, 'es-client', { claims: { aud: `${publicBaseUrl}/other/token` } }), /ERR_JWT_CLAIM_VALIDATION_FAILED/],
        ['iss different from sub', async () => assertion(es, 'es-client', { claims: { iss: 'rsa-client' } }), /iss and sub/],
        ['a client that is not registered', async () => assertion(es, 'nobody'), /unknown client/],
        ['another client\'s id (signed with the wrong key)', async () => assertion(es, 'rsa-client'), /ERR_JWKS_NO_MATCHING_KEY/],
        ['exp more than five minutes ahead', async () => assertion(es, 'es-client', { lifetime: 3600 }), /five minutes/],
        ['no jti', async () => assertion(es, 'es-client', { claims: { jti: undefined } }), /ERR_JWT_CLAIM_VALIDATION_FAILED/],
        ['no exp', async () => assertion(es, 'es-client', { claims: { exp: undefined } }), /ERR_JWT_CLAIM_VALIDATION_FAILED/],
        [
          'alg none (crafted by hand)',
          async () => {
            const now = Math.floor(clock.now().getTime() / 1000);
            return `${b64url({ alg: 'none', typ: 'JWT' })}.${b64url({ iss: 'es-client', sub: 'es-client', aud: tokenUrl, jti: crypto.randomUUID(), exp: now + 60 })}.`;
          },
          /ERR_JOSE_ALG_NOT_ALLOWED|ERR_JWS_INVALID/,
        ],
        [
          'HS256 with the public key as the secret',
          async () => {
            const now = Math.floor(clock.now().getTime() / 1000);
            const pem = await exportSPKI((await importJWK(rsa.publicJwk, 'RS384')) as CryptoKey);
            return new SignJWT({ iss: 'rsa-client', sub: 'rsa-client', aud: tokenUrl, jti: crypto.randomUUID(), exp: now + 60 })
              .setProtectedHeader({ alg: 'HS256', kid: rsa.kid })
              .sign(new TextEncoder().encode(pem));
          },
          /ERR_JOSE_ALG_NOT_ALLOWED/,
        ],
        [
          'HS256 with the JWK JSON as the secret',
          async () => {
            const now = Math.floor(clock.now().getTime() / 1000);
            return new SignJWT({ iss: 'es-client', sub: 'es-client', aud: tokenUrl, jti: crypto.randomUUID(), exp: now + 60 })
              .setProtectedHeader({ alg: 'HS256', kid: es.kid })
              .sign(new TextEncoder().encode(JSON.stringify(es.publicJwk)));
          },
          /ERR_JOSE_ALG_NOT_ALLOWED/,
        ],
        [
          'an unknown kid',
          async () => {
            const other = await keyPair('ES384', 'es-unknown');
            return assertion(other, 'es-client');
          },
          /ERR_JWKS_NO_MATCHING_KEY/,
        ],
        [
          'a known kid but a different key',
          async () => {
            const other = await keyPair('ES384', 'es-1');
            return assertion(other, 'es-client');
          },
          /ERR_JWS_SIGNATURE_VERIFICATION_FAILED/,
        ],
        [
          'a tampered signature',
          async () => {
            const jwt = await assertion(es, 'es-client');
            const [h, p, s] = jwt.split('.') as [string, string, string];
            const sig = Buffer.from(s, 'base64url');
            sig[10] = sig[10]! ^ 0xff;
            return `${h}.${p}.${sig.toString('base64url')}`;
          },
          /ERR_JWS_SIGNATURE_VERIFICATION_FAILED/,
        ],
        [
          'a tampered payload',
          async () => {
            const jwt = await assertion(es, 'es-client');
            const [h, p, s] = jwt.split('.') as [string, string, string];
            const claims = JSON.parse(Buffer.from(p, 'base64url').toString());
            return `${h}.${b64url({ ...claims, exp: claims.exp + 1 })}.${s}`;
          },
          /ERR_JWS_SIGNATURE_VERIFICATION_FAILED/,
        ],
        ['RS256 (not advertised)', async () => assertion({ ...idp, kid: 'rsa-1' }, 'rsa-client'), /ERR_JOSE_ALG_NOT_ALLOWED/],
      ];
      it.each(cases)('%s', async (_label, make, reason) => {
        await expectOAuthError(await requestToken(await make(), 'system/Observation.rs'), 401, 'invalid_client');
        expect(lastReason()).toMatch(reason);
      });
    });

    it('refuses a replayed assertion (jti seen within its lifetime)', async () => {
      const a = await assertion(es, 'es-client');
      expect((await requestToken(a, 'system/Observation.rs')).status).toBe(200);
      await expectOAuthError(await requestToken(a, 'system/Observation.rs'), 401, 'invalid_client');
      // The same jti from the same client, freshly signed, is still a replay.
      const jti = decodeJwt(a).jti as string;
      await expectOAuthError(await requestToken(await assertion(es, 'es-client', { claims: { jti } }), 'system/Observation.rs'), 401, 'invalid_client');
    });

    it('lets exactly one of two concurrent uses of one assertion through', async () => {
      const a = await assertion(es, 'es-client');
      const statuses = (await Promise.all([requestToken(a, 'system/Observation.rs'), requestToken(a, 'system/Observation.rs')])).map((r) => r.status).sort();
      expect(statuses).toEqual([200, 401]);
    });
  });

  describe('FHIR API authentication', () => {
    it('answers 401 with a bare Bearer challenge when no token is sent', async () => {
      const res = await fhirGet('/Observation');
      expect(res.status).toBe(401);
      expect(res.headers.get('www-authenticate')).toBe('Bearer realm="fhir-anchor"');
      expect((await json(res)).resourceType).toBe('OperationOutcome');
    });

    it('produces the AccessContext from our token', async () => {
      const token = await accessToken(es, 'es-client', 'system/Observation.rs', { purpose_of_use: 'TREAT' });
      const res = await fhirGet('/Observation', token);
      expect(res.status).toBe(200);
      const { ctx, context } = await json(res);
      expect(context).toBe('system');
      expect(ctx).toMatchObject({
        clientId: 'es-client',
        issuer: publicBaseUrl,
        purposeOfUse: ['TREAT'],
        mayBreakGlass: true,
        actor: {
          references: ['Organization/org-1'],
          identifiers: [
            { system: 'http://hl7.org/fhir/sid/us-npi', value: '1234567893' },
            { system: 'urn:ietf:params:oauth:client-id', value: 'es-client' },
          ],
        },
      });
      expect(ctx.scopes.map((s: { raw: string }) => s.raw)).toEqual(['system/Observation.rs']);
      expect(typeof ctx.tokenId).toBe('string');
    });

    it('carries patient and fhirUser context', async () => {
      const token = await accessToken(rsa, 'rsa-client', 'patient/Observation.rs');
      const res = await fhirGet('/Observation', token);
      expect(res.status).toBe(200);
      const { ctx, context } = await json(res);
      expect(context).toBe('patient');
      expect(ctx).toMatchObject({ patient: 'p-1', fhirUser: 'Practitioner/dr-1', mayBreakGlass: false, actor: { references: ['Practitioner/dr-1'] } });
    });

    it('answers 403 insufficient scope when the scopes do not cover the interaction', async () => {
      const token = await accessToken();
      const res = await fhirGet('/Patient', token);
      expect(res.status).toBe(403);
      expect(res.headers.get('www-authenticate')).toContain('error="insufficient_scope"');
      const oo = await json(res);
      expect(oo.issue[0]).toMatchObject({ code: 'forbidden', details: { text: 'insufficient scope' } });
    });

    async function expectInvalidToken(token: string): Promise<void> {
      const res = await fhirGet('/Observation', token);
      expect(res.status).toBe(401);
      expect(res.headers.get('www-authenticate')).toBe('Bearer realm="fhir-anchor", error="invalid_token"');
      const oo = await json(res);
      expect(oo.resourceType).toBe('OperationOutcome');
      // Generic: the same text whatever went wrong.
      expect(oo.issue[0].details.text).toBe('Invalid access token');
    }

    /** Signs a token with our own key, with claims overridden. */
    async function ourToken(claims: Record<string, unknown>, header: Record<string, unknown> = {}): Promise<string> {
      const now = Math.floor(clock.now().getTime() / 1000);
      const all: Record<string, unknown> = { iss: publicBaseUrl, aud: fhirBase, sub: 'es-client', client_id: 'es-client', scope: 'system/Observation.rs', iat: now, exp: now + 300, jti: crypto.randomUUID(), ...claims };
      return new SignJWT(all).setProtectedHeader({ alg: 'ES256', kid: smart.key.kid, typ: 'at+jwt', ...header }).sign(smart.key.privateKey);
    }

    it('accepts a token signed with our key in the expected shape (control case)', async () => {
      expect((await fhirGet('/Observation', await ourToken({}))).status).toBe(200);
    });

    it('refuses an expired token, allowing small clock skew', async () => {
      const token = await accessToken();
      clock.advance(300_000 + 20_000);
      try {
        expect((await fhirGet('/Observation', token)).status).toBe(200);
        clock.advance(20_000);
        await expectInvalidToken(token);
        expect(lastReason()).toMatch(/ERR_JWT_EXPIRED/);
      } finally {
        clock.advance(-340_000);
      }
    });

    it.each<[string, () => Promise<string>, RegExp]>([
      ['garbage', async () => 'abc.def.ghi', /malformed/],
      ['the wrong audience', async () => ourToken({ aud: `${publicBaseUrl}/other` }), /ERR_JWT_CLAIM_VALIDATION_FAILED/],
      ['the wrong issuer', async () => ourToken({ iss: 'https://evil.example.test' }), /unknown issuer/],
      ['an issuer that pretends to be us but is signed by someone else', async () => {
        const other = await keyPair('ES384', smart.key.kid);
        const now = Math.floor(clock.now().getTime() / 1000);
        return new SignJWT({ iss: publicBaseUrl, aud: fhirBase, sub: 'es-client', client_id: 'es-client', scope: 'system/*.rs', iat: now, exp: now + 60, jti: 'x' })
          .setProtectedHeader({ alg: 'ES384', kid: smart.key.kid, typ: 'at+jwt' })
          .sign(other.privateKey);
      }, /ERR_JOSE_ALG_NOT_ALLOWED/],
      ['alg none (crafted by hand)', async () => {
        const now = Math.floor(clock.now().getTime() / 1000);
        return `${b64url({ alg: 'none', typ: 'at+jwt', kid: smart.key.kid })}.${b64url({ iss: publicBaseUrl, aud: fhirBase, sub: 'es-client', client_id: 'es-client', scope: 'system/*.rs', iat: now, exp: now + 60, jti: 'x' })}.`;
      }, /ERR_JOSE_ALG_NOT_ALLOWED|ERR_JWS_INVALID/],
      ['HS256 with our public key as the secret', async () => {
        const now = Math.floor(clock.now().getTime() / 1000);
        const pem = await exportSPKI(smart.key.publicKey);
        return new SignJWT({ iss: publicBaseUrl, aud: fhirBase, sub: 'es-client', client_id: 'es-client', scope: 'system/*.rs', iat: now, exp: now + 60, jti: 'x' })
          .setProtectedHeader({ alg: 'HS256', kid: smart.key.kid, typ: 'at+jwt' })
          .sign(new TextEncoder().encode(pem));
      }, /ERR_JOSE_ALG_NOT_ALLOWED/],
      ['an unknown kid', async () => ourToken({}, { kid: 'not-our-key' }), /unknown kid/],
      ['a tampered signature', async () => {
        const [h, p, s] = (await ourToken({})).split('.') as [string, string, string];
        const sig = Buffer.from(s, 'base64url');
        sig[5] = sig[5]! ^ 0x01;
        return `${h}.${p}.${sig.toString('base64url')}`;
      }, /ERR_JWS_SIGNATURE_VERIFICATION_FAILED/],
      ['a tampered scope', async () => {
        const [h, p, s] = (await ourToken({})).split('.') as [string, string, string];
        const claims = JSON.parse(Buffer.from(p, 'base64url').toString());
        return `${h}.${b64url({ ...claims, scope: 'system/*.cruds' })}.${s}`;
      }, /ERR_JWS_SIGNATURE_VERIFICATION_FAILED/],
      ['a client assertion presented as an access token', async () => assertion(es, 'es-client'), /unknown issuer/],
      ['our token without typ at+jwt', async () => ourToken({}, { typ: 'JWT' }), /ERR_JWT_CLAIM_VALIDATION_FAILED/],
      ['a token for a client that was deleted', async () => ourToken({ sub: 'gone', client_id: 'gone' }), /client no longer registered/],
    ])('refuses %s with 401 invalid_token', async (_label, make, reason) => {
      await expectInvalidToken(await make());
      expect(lastReason()).toMatch(reason);
    });

    it('narrows an old token to the client registration as it is now', async () => {
      const token = await ourToken({ scope: 'system/Observation.rs system/Patient.rs', purpose_of_use: ['TREAT', 'HPAYMT'] });
      const { ctx } = await json(await fhirGet('/Observation', token));
      expect(ctx.scopes.map((s: { raw: string }) => s.raw)).toEqual(['system/Observation.rs']);
      expect(ctx.purposeOfUse).toEqual(['TREAT']);
    });

    describe('external authorization server', () => {
      async function idpToken(claims: Record<string, unknown> = {}, key: KeyPair = idp, header: Record<string, unknown> = {}): Promise<string> {
        const now = Math.floor(clock.now().getTime() / 1000);
        const all: Record<string, unknown> = { iss: EXTERNAL_ISSUER, aud: fhirBase, sub: 'user-42', client_id: 'partner-app', scope: 'system/Observation.read', exp: now + 300, iat: now, jti: crypto.randomUUID(), ...claims };
        return new SignJWT(all).setProtectedHeader({ alg: key.alg, kid: key.kid, ...header }).sign(key.privateKey);
      }

      it('accepts its token, verified against its JWKS URL, and maps the claims', async () => {
        const token = await idpToken({ fhirUser: `${fhirBase}/Practitioner/ext-1`, purpose_of_use: 'TREAT', patient: 'p-7' });
        const res = await fhirGet('/Observation', token);
        expect(res.status).toBe(200);
        const { ctx } = await json(res);
        expect(ctx).toMatchObject({
          clientId: 'partner-app',
          issuer: EXTERNAL_ISSUER,
          fhirUser: 'Practitioner/ext-1',
          patient: 'p-7',
          purposeOfUse: ['TREAT'],
          // Not registered here: no break-glass, identities from the token only.
          mayBreakGlass: false,
          actor: { references: ['Practitioner/ext-1'], identifiers: [{ system: 'urn:ietf:params:oauth:client-id', value: 'partner-app' }] },
        });
        expect(ctx.scopes.map((s: { raw: string }) => s.raw)).toEqual(['system/Observation.read']);
        expect(jwksHost.hits.get('/idp/jwks.json')).toBeGreaterThanOrEqual(1);
      });

      it('applies a local registration of the same client id as the ceiling', async () => {
        const token = await idpToken({ client_id: 'es-client', scope: 'system/Observation.rs system/Patient.rs', purpose_of_use: ['ETREAT', 'HPAYMT'] });
        const { ctx } = await json(await fhirGet('/Observation', token));
        expect(ctx.scopes.map((s: { raw: string }) => s.raw)).toEqual(['system/Observation.rs']);
        expect(ctx.purposeOfUse).toEqual(['ETREAT']);
        expect(ctx.mayBreakGlass).toBe(true);
      });

      it.each<[string, () => Promise<string>, RegExp]>([
        ['its token for another audience', () => idpToken({ aud: 'https://elsewhere.example.test/fhir' }), /ERR_JWT_CLAIM_VALIDATION_FAILED/],
        ['a token signed by a key not in its JWKS', async () => idpToken({}, await keyPair('RS256', 'idp-1')), /ERR_JWS_SIGNATURE_VERIFICATION_FAILED/],
        ['an unconfigured issuer', () => idpToken({ iss: 'https://other-idp.example.test' }), /unknown issuer/],
        ['its token, expired', () => idpToken({ exp: Math.floor(clock.now().getTime() / 1000) - 600 }), /ERR_JWT_EXPIRED/],
        ['its token with alg none', async () => {
          const now = Math.floor(clock.now().getTime() / 1000);
          return `${b64url({ alg: 'none', kid: 'idp-1' })}.${b64url({ iss: EXTERNAL_ISSUER, aud: fhirBase, sub: 'u', client_id: 'partner-app', scope: 'system/*.rs', exp: now + 60 })}.`;
        }, /ERR_JOSE_ALG_NOT_ALLOWED|ERR_JWS_INVALID/],
      ])('refuses %s', async (_label, make, reason) => {
        await expectInvalidToken(await make());
        expect(lastReason()).toMatch(reason);
      });
    });
  });

  describe('access-token signing key', () => {
    it('is generated once with mode 0600 and reloaded with the same kid', async () => {
      const file = path.join(keyDir, 'smart-token-key.jwk');
      expect((await stat(file)).mode & 0o777).toBe(0o600);
      const again = await loadAccessTokenKey({ keyFile: file });
      expect(again.kid).toBe(smart.key.kid);
      expect(again.source).toBe('file');
      expect(JSON.parse(await readFile(file, 'utf8')).d).toEqual(expect.any(String));
    });

    it('comes from configuration as a JWK string, and refuses anything but a private P-256 key', async () => {
      const text = await readFile(path.join(keyDir, 'smart-token-key.jwk'), 'utf8');
      const fromConfig = await loadAccessTokenKey({ jwk: text, keyFile: '/nonexistent/ignored' });
      expect(fromConfig).toMatchObject({ source: 'config', kid: smart.key.kid });
      await expect(loadAccessTokenKey({ jwk: JSON.stringify(es.publicJwk) })).rejects.toThrow(/private EC P-256/);
      await expect(loadAccessTokenKey({ jwk: 'not json' })).rejects.toThrow(/not JSON/);
      await expect(loadAccessTokenKey({})).rejects.toThrow(/no access-token signing key/);
    });

    it('never puts key material in its errors', async () => {
      const bad = JSON.stringify({ kty: 'EC', crv: 'P-256', x: 'AAAA', y: 'BBBB', d: 'SECRETSECRET' });
      await expect(loadAccessTokenKey({ jwk: bad })).rejects.toThrow(expect.objectContaining({ message: expect.not.stringContaining('SECRETSECRET') }));
    });
  });
});
