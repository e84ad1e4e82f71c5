import { ConfigError, ENV_VARS, describeConfig, loadConfig } from '../../src/config/index.js';
import { generateEd25519Key } from '../../src/integrity/note.js';

const KEY = generateEd25519Key('fhir-anchor.localhost/log').signerKey;
const SMART = JSON.stringify({ kty: 'EC', crv: 'P-256', x: 'x', y: 'y', d: 'd' });

describe('loadConfig', () => {
  it('defaults to embedded mode with BullMQ on PostgreSQL when no env is set', () => {
    const c = loadConfig({});
    expect(c.mode).toBe('embedded');
    expect(c.database.kind).toBe('embedded');
    expect(c.queue).toEqual({ backend: 'postgres', schema: 'bullmq' });
    expect(c.http).toMatchObject({ host: '127.0.0.1', port: 8080, publicBaseUrl: 'http://127.0.0.1:8080' });
    expect(c.adminToken).toBeUndefined();
  });

  it('uses the external server and Redis when both URLs are set', () => {
    const c = loadConfig({ DATABASE_URL: 'postgres://u:p@db:5432/x', REDIS_URL: 'redis://r:6379', ADMIN_TOKEN: 'x'.repeat(32), LOG_SIGNER_KEY: KEY, SMART_TOKEN_KEY: SMART });
    expect(c.mode).toBe('production');
    expect(c.database).toEqual({ kind: 'external', url: 'postgres://u:p@db:5432/x' });
    expect(c.queue).toEqual({ backend: 'redis', redis: { topology: 'standalone', url: 'redis://r:6379' }, prefix: 'fhir-anchor' });
  });

  it('reads Redis Sentinel settings into a sentinel connection', () => {
    const c = loadConfig({
      REDIS_SENTINELS: 's1.example:26379, s2.example:26380,[::1]:26381',
      REDIS_SENTINEL_NAME: 'mymaster',
      REDIS_SENTINEL_PASSWORD: 'sentinel-secret',
      REDIS_PASSWORD: 'data-secret',
      REDIS_USERNAME: 'anchor',
      REDIS_TLS: 'true',
      REDIS_DB: '2',
    });
    expect(c.queue).toEqual({
      backend: 'redis',
      prefix: 'fhir-anchor',
      redis: {
        topology: 'sentinel',
        sentinels: [
          { host: 's1.example', port: 26379 },
          { host: 's2.example', port: 26380 },
          { host: '::1', port: 26381 },
        ],
        name: 'mymaster',
        sentinelPassword: 'sentinel-secret',
        username: 'anchor',
        password: 'data-secret',
        tls: true,
        db: 2,
      },
    });
    const described = JSON.stringify(describeConfig(c));
    expect(described).toContain('sentinel mymaster via s1.example:26379,s2.example:26380,[::1]:26381 db=2 tls');
    expect(described).not.toContain('secret');
  });

  it('reads Redis Cluster settings, with a hash-tag prefix by default', () => {
    const c = loadConfig({ REDIS_CLUSTER_NODES: 'n1:7000,n2:7001', REDIS_PASSWORD: 'cluster-secret' });
    expect(c.queue).toEqual({
      backend: 'redis',
      prefix: '{fhir-anchor}',
      redis: { topology: 'cluster', nodes: [{ host: 'n1', port: 7000 }, { host: 'n2', port: 7001 }], password: 'cluster-secret', tls: false },
    });
    expect(loadConfig({ REDIS_CLUSTER_NODES: 'n1:7000', QUEUE_PREFIX: '{hospital-a}' }).queue).toMatchObject({ prefix: '{hospital-a}' });
    expect(JSON.stringify(describeConfig(c))).not.toContain('cluster-secret');
  });

  it('refuses conflicting or incomplete Redis settings, naming each problem', () => {
    const problems = (env: Record<string, string>): readonly string[] => {
      try {
        loadConfig(env);
      } catch (err) {
        return (err as ConfigError).problems;
      }
      return [];
    };
    expect(problems({ REDIS_URL: 'redis://r:6379', REDIS_CLUSTER_NODES: 'n1:7000' }).join('\n')).toMatch(/REDIS_URL, REDIS_CLUSTER_NODES: set only one/);
    expect(problems({ REDIS_SENTINELS: 's1:26379' }).join('\n')).toMatch(/REDIS_SENTINEL_NAME: required with REDIS_SENTINELS/);
    expect(problems({ REDIS_CLUSTER_NODES: 'n1:7000', QUEUE_PREFIX: 'fhir-anchor' }).join('\n')).toMatch(/QUEUE_PREFIX: on Redis Cluster it must be a hash tag/);
    expect(problems({ REDIS_URL: 'redis://r:6379', REDIS_PASSWORD: 'pw' }).join('\n')).toMatch(/REDIS_PASSWORD: only used with REDIS_SENTINELS or REDIS_CLUSTER_NODES \(put it in REDIS_URL\)/);
    expect(problems({ REDIS_CLUSTER_NODES: 'n1:7000', REDIS_SENTINEL_NAME: 'm' }).join('\n')).toMatch(/REDIS_SENTINEL_NAME: only used with REDIS_SENTINELS/);
    expect(problems({ REDIS_CLUSTER_NODES: 'n1, n2:99999' }).join('\n')).toMatch(/REDIS_CLUSTER_NODES: must be a comma-separated list of host:port/);
    expect(problems({ QUEUE_PREFIX: '{unclosed' }).join('\n')).toMatch(/QUEUE_PREFIX: must be 1-64/);
    expect(problems({ REDIS_SENTINELS: 's1:26379', REDIS_SENTINEL_NAME: 'm', REDIS_TLS: 'yes' }).join('\n')).toMatch(/REDIS_TLS/);
  });

  it('accepts either URL alone', () => {
    expect(loadConfig({ REDIS_URL: 'redis://127.0.0.1:6379' })).toMatchObject({ mode: 'embedded', queue: { backend: 'redis' } });
    expect(loadConfig({ DATABASE_URL: 'postgresql://db/x', ADMIN_TOKEN: 'y'.repeat(40), LOG_SIGNER_KEY: KEY, SMART_TOKEN_KEY: SMART })).toMatchObject({
      mode: 'production',
      queue: { backend: 'postgres' },
    });
  });

  it('lists every problem at once, without echoing secret values', () => {
    let error: unknown;
    try {
      loadConfig({ DATABASE_URL: 'mysql://nope', REDIS_URL: 'not a url', PORT: 'eighty', ADMIN_TOKEN: 'short-secret-value', LOG_LEVEL: 'loud' });
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const problems = (error as ConfigError).problems;
    expect(problems.map((p) => p.split(':')[0]).sort()).toEqual(['ADMIN_TOKEN', 'DATABASE_URL', 'LOG_LEVEL', 'PORT', 'REDIS_URL']);
    expect((error as ConfigError).message).not.toContain('short-secret-value');
  });

  it('requires ADMIN_TOKEN in production mode', () => {
    expect(() => loadConfig({ DATABASE_URL: 'postgres://db/x' })).toThrow(/ADMIN_TOKEN: required/);
  });

  it('requires a log signer key in production, matching the origin, and EVM settings together', () => {
    expect(() => loadConfig({ DATABASE_URL: 'postgres://db/x', ADMIN_TOKEN: 'a'.repeat(32) })).toThrow(/LOG_SIGNER_KEY: required/);
    expect(() => loadConfig({ LOG_ORIGIN: 'other.example/log', LOG_SIGNER_KEY: KEY, SMART_TOKEN_KEY: SMART })).toThrow(/must equal LOG_ORIGIN/);
    expect(() => loadConfig({ EVM_RPC_URL: 'http://127.0.0.1:8545' })).toThrow(/EVM_PRIVATE_KEY: required/);
    expect(() => loadConfig({ DATABASE_URL: 'postgres://db/x', ADMIN_TOKEN: 'a'.repeat(32), LOG_SIGNER_KEY: KEY, SMART_TOKEN_KEY: SMART, EVM_RPC_URL: 'http://besu:8545', EVM_PRIVATE_KEY: 'ab'.repeat(32) })).toThrow(/EVM_CONTRACT_ADDRESS: required/);
    expect(loadConfig({ EVM_RPC_URL: 'http://127.0.0.1:8545', EVM_PRIVATE_KEY: 'ab'.repeat(32) }).integrity.evm).toMatchObject({ confirmations: 1 });
  });

  it('treats empty values as unset', () => {
    expect(loadConfig({ DATABASE_URL: '', REDIS_URL: '' }).mode).toBe('embedded');
  });

  it('never reveals credentials in the start-up summary', () => {
    const c = loadConfig({ DATABASE_URL: 'postgres://u:hunter2@db/x', REDIS_URL: 'redis://:s3cret@r:6379', ADMIN_TOKEN: 'z'.repeat(32), LOG_SIGNER_KEY: KEY, SMART_TOKEN_KEY: SMART, EVM_RPC_URL: 'http://u:rpcpass@besu:8545', EVM_PRIVATE_KEY: 'ab'.repeat(32), EVM_CONTRACT_ADDRESS: '0x' + '1'.repeat(40) });
    const text = JSON.stringify(describeConfig(c));
    expect(text).not.toContain('hunter2');
    expect(text).not.toContain('s3cret');
    expect(text).not.toContain('z'.repeat(32));
    expect(text).not.toContain('rpcpass');
    expect(text).not.toContain('ab'.repeat(32));
    expect(text).not.toContain(KEY);
  });

  it('documents every variable it reads', () => {
    expect(Object.keys(ENV_VARS).length).toBeGreaterThanOrEqual(15);
    for (const description of Object.values(ENV_VARS)) expect(description.length).toBeGreaterThan(10);
  });
});
