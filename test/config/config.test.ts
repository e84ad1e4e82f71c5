import { ConfigError, ENV_VARS, describeConfig, loadConfig } from '../../src/config/index.js';

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
    const c = loadConfig({ DATABASE_URL: 'postgres://u:p@db:5432/x', REDIS_URL: 'redis://r:6379', ADMIN_TOKEN: 'x'.repeat(32) });
    expect(c.mode).toBe('production');
    expect(c.database).toEqual({ kind: 'external', url: 'postgres://u:p@db:5432/x' });
    expect(c.queue).toEqual({ backend: 'redis', url: 'redis://r:6379', prefix: 'fhir-anchor' });
  });

  it('accepts either URL alone', () => {
    expect(loadConfig({ REDIS_URL: 'redis://127.0.0.1:6379' })).toMatchObject({ mode: 'embedded', queue: { backend: 'redis' } });
    expect(loadConfig({ DATABASE_URL: 'postgresql://db/x', ADMIN_TOKEN: 'y'.repeat(40) })).toMatchObject({
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

  it('treats empty values as unset', () => {
    expect(loadConfig({ DATABASE_URL: '', REDIS_URL: '' }).mode).toBe('embedded');
  });

  it('never reveals credentials in the start-up summary', () => {
    const c = loadConfig({ DATABASE_URL: 'postgres://u:hunter2@db/x', REDIS_URL: 'redis://:s3cret@r:6379', ADMIN_TOKEN: 'z'.repeat(32) });
    const text = JSON.stringify(describeConfig(c));
    expect(text).not.toContain('hunter2');
    expect(text).not.toContain('s3cret');
    expect(text).not.toContain('z'.repeat(32));
  });

  it('documents every variable it reads', () => {
    expect(Object.keys(ENV_VARS).length).toBeGreaterThanOrEqual(15);
    for (const description of Object.values(ENV_VARS)) expect(description.length).toBeGreaterThan(10);
  });
});
