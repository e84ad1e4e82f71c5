/**
 * SMART Backend Services client against the fake EHR's token endpoint, which verifies every
 * assertion with jose against the registered public JWK. Keys are generated per run; none is stored.
 */
import { decodeJwt, decodeProtectedHeader, exportJWK, generateKeyPair, type JWK } from 'jose';
import { ManualClock } from '../../src/platform/clock.js';
import {
  CLIENT_ASSERTION_TYPE,
  SmartBackendError,
  assertionAlgFor,
  buildClientAssertion,
  createSmartBackendAuth,
  type SmartBackendConfig,
} from '../../src/ingest/smart-backend.js';
import { startFakeEhr, type FakeEhr } from '../helpers/fake-ehr.js';

async function keyPair(alg: 'RS384' | 'ES384', kid: string): Promise<{ privateJwk: JWK; publicJwk: JWK }> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  const privateJwk = { ...(await exportJWK(privateKey)), kid, alg };
  const publicJwk = { ...(await exportJWK(publicKey)), kid, alg };
  return { privateJwk, publicJwk };
}

function config(ehr: FakeEhr, privateJwk: JWK, overrides: Partial<SmartBackendConfig> = {}): SmartBackendConfig {
  return { type: 'smart-backend', tokenUrl: ehr.tokenUrl, clientId: 'anchor-client', privateKeyJwk: { ...privateJwk }, scope: 'system/*.rs', ...overrides };
}

async function rejection(p: Promise<unknown>): Promise<SmartBackendError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof SmartBackendError) return err;
    throw err;
  }
  throw new Error('expected a SmartBackendError');
}

describe('SMART Backend Services', () => {
  let rsa: { privateJwk: JWK; publicJwk: JWK };
  let clock: ManualClock;
  let ehr: FakeEhr;

  beforeAll(async () => {
    rsa = await keyPair('RS384', 'rsa-key-1');
  });
  beforeEach(async () => {
    clock = new ManualClock(new Date());
    ehr = await startFakeEhr({ smart: { clientId: 'anchor-client', publicJwk: rsa.publicJwk }, clock, tokenLifetimeSeconds: 300 });
  });
  afterEach(async () => {
    await ehr.close().catch(() => undefined);
  });

  describe('client assertion', () => {
    it('carries iss = sub = clientId, aud = tokenUrl, a random jti, exp <= 5 min, and kid / alg from the JWK', async () => {
      const cfg = config(ehr, rsa.privateJwk);
      const a1 = await buildClientAssertion(cfg, { clock });
      const a2 = await buildClientAssertion(cfg, { clock });
      const header = decodeProtectedHeader(a1);
      const claims = decodeJwt(a1);
      expect(header).toEqual({ alg: 'RS384', kid: 'rsa-key-1', typ: 'JWT' });
      expect(claims.iss).toBe('anchor-client');
      expect(claims.sub).toBe('anchor-client');
      expect(claims.aud).toBe(ehr.tokenUrl);
      expect(typeof claims.jti).toBe('string');
      expect(claims.jti).not.toBe(decodeJwt(a2).jti);
      const now = Math.floor(clock.now().getTime() / 1000);
      expect(claims.iat).toBe(now);
      expect(claims.exp! - now).toBeGreaterThan(0);
      expect(claims.exp! - now).toBeLessThanOrEqual(300);
    });

    it('never exceeds 5 minutes even when asked to', async () => {
      const a = await buildClientAssertion(config(ehr, rsa.privateJwk), { clock, lifetimeSeconds: 3600 });
      const claims = decodeJwt(a);
      expect(claims.exp! - claims.iat!).toBe(300);
    });

    it('picks RS384 / ES384 from the JWK and refuses anything else', async () => {
      expect(assertionAlgFor({ kty: 'RSA' })).toBe('RS384');
      expect(assertionAlgFor({ kty: 'EC', crv: 'P-384' })).toBe('ES384');
      expect(() => assertionAlgFor({ kty: 'EC', crv: 'P-256' })).toThrow(SmartBackendError);
      expect(() => assertionAlgFor({ kty: 'RSA', alg: 'RS256' })).toThrow(/unsupported key alg "RS256"/);
      expect(() => assertionAlgFor({ kty: 'oct' })).toThrow(SmartBackendError);
    });

    it('refuses a JWK without kid or without the private part, without echoing key material', async () => {
      const { kid: _kid, ...noKid } = rsa.privateJwk;
      const e1 = await rejection(buildClientAssertion(config(ehr, noKid), { clock }));
      expect(e1.message).toMatch(/kid/);
      const e2 = await rejection(buildClientAssertion(config(ehr, rsa.publicJwk), { clock }));
      expect(e2.message).toMatch(/not a private key/);
      for (const e of [e1, e2]) {
        expect(e.message).not.toContain(String(rsa.privateJwk.n));
        expect(e.message).not.toContain(String(rsa.privateJwk.d));
      }
    });
  });

  describe('token requests', () => {
    it('POSTs a form the endpoint verifies, and returns its token', async () => {
      const auth = createSmartBackendAuth(config(ehr, rsa.privateJwk), { clock });
      const token = await auth.getAccessToken();
      expect(token).toMatch(/^[A-Za-z0-9_-]{20,}$/);
      expect(ehr.tokenRequests).toHaveLength(1);
      const req = ehr.tokenRequests[0]!;
      expect(req.contentType).toMatch(/^application\/x-www-form-urlencoded/);
      expect(req.rejected).toBeUndefined();
      expect(req.form.grant_type).toBe('client_credentials');
      expect(req.form.scope).toBe('system/*.rs');
      expect(req.form.client_assertion_type).toBe(CLIENT_ASSERTION_TYPE);
      expect(req.claims).toMatchObject({ iss: 'anchor-client', sub: 'anchor-client', aud: ehr.tokenUrl });
      expect(req.header).toMatchObject({ alg: 'RS384', kid: 'rsa-key-1' });
    });

    it('works with an ES384 key', async () => {
      const ec = await keyPair('ES384', 'ec-key-1');
      const ecEhr = await startFakeEhr({ smart: { clientId: 'anchor-client', publicJwk: ec.publicJwk }, clock });
      try {
        const auth = createSmartBackendAuth(config(ecEhr, ec.privateJwk), { clock });
        await expect(auth.getAccessToken()).resolves.toEqual(expect.any(String));
        expect(ecEhr.tokenRequests[0]!.header).toMatchObject({ alg: 'ES384', kid: 'ec-key-1' });
      } finally {
        await ecEhr.close();
      }
    });

    it('caches the token until shortly before expires_in, then refreshes', async () => {
      const auth = createSmartBackendAuth(config(ehr, rsa.privateJwk), { clock, refreshSkewMs: 60_000 });
      const t1 = await auth.getAccessToken();
      clock.advance(100_000);
      expect(await auth.getAccessToken()).toBe(t1);
      clock.advance(130_000); // 230 s of 300: still before the 240 s refresh point
      expect(await auth.getAccessToken()).toBe(t1);
      expect(ehr.tokenRequests).toHaveLength(1);
      clock.advance(15_000); // 245 s: inside the skew window
      const t2 = await auth.getAccessToken();
      expect(t2).not.toBe(t1);
      expect(ehr.tokenRequests).toHaveLength(2);
    });

    it('single-flights concurrent refreshes', async () => {
      const auth = createSmartBackendAuth(config(ehr, rsa.privateJwk), { clock });
      const tokens = await Promise.all(Array.from({ length: 8 }, () => auth.getAccessToken()));
      expect(new Set(tokens).size).toBe(1);
      expect(ehr.tokenRequests).toHaveLength(1);
    });

    it('fetches a new token after invalidate()', async () => {
      const auth = createSmartBackendAuth(config(ehr, rsa.privateJwk), { clock });
      const t1 = await auth.getAccessToken();
      auth.invalidate();
      expect(await auth.getAccessToken()).not.toBe(t1);
      expect(ehr.tokenRequests).toHaveLength(2);
    });
  });

  describe('rejections (verified by the endpoint) and readable, secret-free errors', () => {
    it('a signature from an unregistered key is rejected: 401 invalid_client, not retryable', async () => {
      const other = await keyPair('RS384', 'rsa-key-1'); // same kid, different key
      const auth = createSmartBackendAuth(config(ehr, other.privateJwk), { clock });
      const err = await rejection(auth.getAccessToken());
      expect(err).toMatchObject({ status: 401, retryable: false, oauthError: 'invalid_client' });
      expect(err.message).toBe(`SMART token request to ${ehr.tokenUrl} failed: HTTP 401 (invalid_client)`);
      expect(ehr.tokenRequests[0]!.rejected).toBe('ERR_JWS_SIGNATURE_VERIFICATION_FAILED');
      const assertion = ehr.tokenRequests[0]!.form.client_assertion!;
      expect(err.message).not.toContain(assertion);
      expect(err.message).not.toContain(String(other.privateJwk.d));
    });

    it('a wrong audience is rejected', async () => {
      // The assertion's aud is the configured URL (with a query the endpoint ignores), not the endpoint's own.
      const auth = createSmartBackendAuth(config(ehr, rsa.privateJwk, { tokenUrl: `${ehr.tokenUrl}?tenant=a` }), { clock });
      const err = await rejection(auth.getAccessToken());
      expect(err.status).toBe(401);
      expect(ehr.tokenRequests[0]!.rejected).toBe('ERR_JWT_CLAIM_VALIDATION_FAILED');
      expect(err.message).not.toContain('tenant=a');
    });

    it('an expired assertion is rejected', async () => {
      const pastClock = new ManualClock(new Date(clock.now().getTime() - 10 * 60_000));
      const auth = createSmartBackendAuth(config(ehr, rsa.privateJwk), { clock: pastClock });
      const err = await rejection(auth.getAccessToken());
      expect(err.status).toBe(401);
      expect(ehr.tokenRequests[0]!.rejected).toBe('ERR_JWT_EXPIRED');
    });

    it('a replayed jti is rejected', async () => {
      const cfg = config(ehr, rsa.privateJwk);
      const assertion = await buildClientAssertion(cfg, { clock });
      const post = (): Promise<Response> =>
        fetch(ehr.tokenUrl, {
          method: 'POST',
          headers: { 'content-type': 'application/x-www-form-urlencoded' },
          body: new URLSearchParams({ grant_type: 'client_credentials', scope: 's', client_assertion_type: CLIENT_ASSERTION_TYPE, client_assertion: assertion }),
        });
      expect((await post()).status).toBe(200);
      expect((await post()).status).toBe(401);
      expect(ehr.tokenRequests[1]!.rejected).toBe('jti replayed');
    });

    it('a token endpoint that is down gives a retryable network error', async () => {
      const auth = createSmartBackendAuth(config(ehr, rsa.privateJwk), { clock, timeoutMs: 2000 });
      await ehr.close();
      const err = await rejection(auth.getAccessToken());
      expect(err.retryable).toBe(true);
      expect(err.status).toBeUndefined();
      expect(err.message).toMatch(/network error \(ECONNREFUSED\)/);
    });

    it('a 5xx from the token endpoint is retryable; a malformed success is not', async () => {
      const fake500 = createSmartBackendAuth(config(ehr, rsa.privateJwk), {
        clock,
        fetch: async () => new Response(JSON.stringify({ error: 'temporarily_unavailable' }), { status: 503 }),
      });
      expect(await rejection(fake500.getAccessToken())).toMatchObject({ status: 503, retryable: true, oauthError: 'temporarily_unavailable' });
      const leaky = createSmartBackendAuth(config(ehr, rsa.privateJwk), {
        clock,
        fetch: async () => new Response(JSON.stringify({ access_token: 'leaky-secret-token', token_type: 'mac' }), { status: 200 }),
      });
      const err = await rejection(leaky.getAccessToken());
      expect(err.retryable).toBe(false);
      expect(err.message).toMatch(/malformed/);
      expect(err.message).not.toContain('leaky-secret-token');
    });
  });
});
