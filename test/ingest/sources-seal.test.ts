/**
 * Source secrets at rest: the registry stores hook and callback secrets sealed (AES-256-GCM, bound
 * to source and field), seals definitions stored before a key was set, and refuses to run without
 * the key once secrets are sealed.
 */
import pg from 'pg';
import { SourceRegistry } from '../../src/ingest/sources.js';
import { sourceSchema } from '../../src/ingest/source.js';
import { ManualClock } from '../../src/platform/clock.js';
import { createSealer, isSealed } from '../../src/platform/seal.js';
import { openDatabase, type Database } from '../../src/store/index.js';
import { TEST_DATABASE_URL, dropSchema, randomNamespace, silentLogger } from '../helpers/env.js';

const BEARER = 'hook-bearer-token-0123456789';
const HMAC = 'hook-hmac-secret-0123456789';
const CALLBACK = 'callback-bearer-0123456789';
const JWK = { kty: 'EC', crv: 'P-384', kid: 'k1', d: 'private-part-of-the-key', x: 'x', y: 'y' };

describe('source secrets at rest', () => {
  let schema: string;
  let db: Database;
  let raw: pg.Client;
  const clock = new ManualClock(new Date('2026-03-01T10:00:00Z'));
  const sealer = createSealer('sources-seal-test-key-0123456789abcdef');

  beforeAll(async () => {
    schema = randomNamespace('tss');
    db = await openDatabase({ config: { database: { kind: 'external', url: TEST_DATABASE_URL }, databaseSchema: schema, databasePoolMax: 2 }, logger: silentLogger, clock });
    raw = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await raw.connect();
  });

  afterAll(async () => {
    await raw.end();
    await db.close();
    await dropSchema(schema);
  });

  const stored = async (id: string): Promise<string> =>
    JSON.stringify((await raw.query<{ definition: unknown }>(`SELECT definition FROM "${schema}".source WHERE id = $1`, [id])).rows[0]!.definition);

  it('stores every secret sealed, everything else readable, and reads them back', async () => {
    const registry = new SourceRegistry(db.store, clock, sealer);
    const a = sourceSchema.parse({ id: 'ehr-a', name: 'EHR A', baseUrl: 'https://a.example/fhir', hookAuth: { bearerToken: BEARER, hmacSecret: HMAC }, callbackAuth: { type: 'bearer', token: CALLBACK } });
    const b = sourceSchema.parse({ id: 'ehr-b', name: 'EHR B', baseUrl: 'https://b.example/fhir', hookAuth: { hmacSecret: HMAC }, callbackAuth: { type: 'smart-backend', tokenUrl: 'https://b.example/token', clientId: 'anchor', privateKeyJwk: JWK } });
    await registry.put(a);
    await registry.put(b);
    for (const id of ['ehr-a', 'ehr-b']) {
      const text = await stored(id);
      for (const secret of [BEARER, HMAC, CALLBACK, 'private-part-of-the-key']) expect(text).not.toContain(secret);
      expect(text).toContain('fa-sealed:v1:');
      expect(text).toContain(`https://${id.slice(-1)}.example/fhir`);
    }
    expect(await registry.get('ehr-a')).toEqual(a);
    expect((await new SourceRegistry(db.store, clock, sealer).list()).find((s) => s.id === 'ehr-b')).toEqual(b);
  });

  it('a sealed secret copied to another source does not open there', async () => {
    const def = (await raw.query<{ definition: { hookAuth: { hmacSecret: string } } }>(`SELECT definition FROM "${schema}".source WHERE id = 'ehr-a'`)).rows[0]!.definition;
    await db.store.sources.upsert('ehr-c', { id: 'ehr-c', name: 'C', baseUrl: 'https://c.example/fhir', hookAuth: { hmacSecret: def.hookAuth.hmacSecret } });
    await expect(new SourceRegistry(db.store, clock, sealer).get('ehr-c')).rejects.toThrow(/does not open/);
    await db.store.sources.delete('ehr-c');
  });

  it('seals definitions stored before the key was set, at start-up', async () => {
    const plain = { id: 'ehr-old', name: 'Old', baseUrl: 'https://old.example/fhir', hookAuth: { bearerToken: BEARER } };
    await db.store.sources.upsert('ehr-old', plain);
    expect(await stored('ehr-old')).toContain(BEARER);
    const registry = new SourceRegistry(db.store, clock, sealer);
    expect(await registry.sealStored()).toBe(1);
    expect(await stored('ehr-old')).not.toContain(BEARER);
    expect((await registry.get('ehr-old'))?.hookAuth.bearerToken).toBe(BEARER);
    expect(await registry.sealStored()).toBe(0);
  });

  it('without the key: sealed secrets stop start-up with a clear message; another key fails too', async () => {
    await expect(new SourceRegistry(db.store, clock).sealStored()).rejects.toThrow(/secrets are encrypted and SECRETS_KEY is not set/);
    await expect(new SourceRegistry(db.store, clock, createSealer('a-different-key-0123456789abcdef012')).sealStored()).rejects.toThrow(/wrong SECRETS_KEY/);
  });

  it('without a key configured at all, secrets are stored as given (production without SECRETS_KEY)', async () => {
    const schema2 = randomNamespace('tss');
    const db2 = await openDatabase({ config: { database: { kind: 'external', url: TEST_DATABASE_URL }, databaseSchema: schema2, databasePoolMax: 2 }, logger: silentLogger, clock });
    try {
      const registry = new SourceRegistry(db2.store, clock);
      await registry.put(sourceSchema.parse({ id: 'p', name: 'P', baseUrl: 'https://p.example/fhir', hookAuth: { bearerToken: BEARER } }));
      const def = (await raw.query<{ definition: { hookAuth: { bearerToken: string } } }>(`SELECT definition FROM "${schema2}".source WHERE id = 'p'`)).rows[0]!.definition;
      expect(isSealed(def.hookAuth.bearerToken)).toBe(false);
      expect(await registry.sealStored()).toBe(0);
    } finally {
      await db2.close();
      await dropSchema(schema2);
    }
  });
});
