/**
 * The authenticator's verified-token cache: a repeated token skips the signature check and the
 * registration look-up, but never outlives the token's `exp` nor the registration cache time, and
 * failures are never cached.
 */
import { ManualClock } from '../../src/platform/clock.js';
import { createAuthenticator, generateAccessTokenJwk, loadAccessTokenKey, resolveSmartOptions, signAccessToken, type AccessTokenKey } from '../../src/fhir-api/smart/index.js';
import type { OAuthClientRecord } from '../../src/store/clients-store.js';
import { silentLogger } from '../helpers/env.js';

const options = { ...resolveSmartOptions({ publicBaseUrl: 'https://anchor.example.test' }), accessTokenLifetimeSeconds: 300 };

function client(scopes: string[]): OAuthClientRecord {
  return {
    id: 'app-1',
    name: 'app',
    jwks: { keys: [] },
    allowedScopes: scopes,
    allowedPurposes: ['TREAT'],
    mayBreakGlass: false,
    actorReferences: [],
    actorIdentifiers: [],
    createdAt: new Date(),
    updatedAt: new Date(),
  } as unknown as OAuthClientRecord;
}

describe('verified-token cache', () => {
  let key: AccessTokenKey;
  beforeAll(async () => {
    key = await loadAccessTokenKey({ jwk: await generateAccessTokenJwk() });
  });

  function setup(clientCacheMs?: number) {
    const clock = new ManualClock(new Date('2026-05-01T12:00:00Z'));
    let registration: OAuthClientRecord | undefined = client(['system/Observation.rs']);
    let lookups = 0;
    const auth = createAuthenticator({
      options,
      key,
      clients: {
        get: async () => {
          lookups += 1;
          return registration;
        },
      },
      clock,
      logger: silentLogger,
      ...(clientCacheMs !== undefined ? { clientCacheMs } : {}),
    });
    const token = async (): Promise<string> => (await signAccessToken({ options, key, clock }, { sub: 'app-1', client_id: 'app-1', scope: 'system/Observation.rs' })).token;
    return {
      clock,
      auth,
      token,
      lookups: () => lookups,
      setRegistration: (r: OAuthClientRecord | undefined) => {
        registration = r;
      },
    };
  }

  it('answers a repeated token from the cache, with the same context', async () => {
    const s = setup();
    const t = await s.token();
    const first = await s.auth.verifyAccessToken(t);
    const second = await s.auth.verifyAccessToken(t);
    expect(second).toBe(first);
    expect(s.lookups()).toBe(1);
  });

  it('never past the token expiry', async () => {
    const s = setup(10 * 60_000); // registration cache longer than the token's 300 s life
    const t = await s.token();
    await s.auth.verifyAccessToken(t);
    s.clock.advance(299_000);
    await expect(s.auth.verifyAccessToken(t)).resolves.toBeDefined();
    // Past exp and the configured clock tolerance.
    s.clock.advance(2_000 + options.clockToleranceSeconds * 1000);
    await expect(s.auth.verifyAccessToken(t)).rejects.toMatchObject({ status: 401 });
  });

  it('never past the registration cache time: a deleted client is refused once that has passed', async () => {
    const s = setup(30_000);
    const t = await s.token();
    await s.auth.verifyAccessToken(t);
    s.setRegistration(undefined);
    s.clock.advance(31_000);
    await expect(s.auth.verifyAccessToken(t)).rejects.toMatchObject({ status: 401 });
  });

  it('is off with clientCacheMs 0', async () => {
    const s = setup(0);
    const t = await s.token();
    await s.auth.verifyAccessToken(t);
    s.setRegistration(undefined);
    await expect(s.auth.verifyAccessToken(t)).rejects.toMatchObject({ status: 401 });
  });

  it('does not cache a failure', async () => {
    const s = setup();
    const t = await s.token();
    s.setRegistration(undefined);
    await expect(s.auth.verifyAccessToken(t)).rejects.toMatchObject({ status: 401 });
    s.setRegistration(client(['system/Observation.rs']));
    s.clock.advance(31_000); // past the negative registration cache entry
    await expect(s.auth.verifyAccessToken(t)).resolves.toMatchObject({ clientId: 'app-1' });
  });
});
