import { ENV_VARS } from '../../src/config/index.js';
import { TEST_DATABASE_URL, TEST_LOG_KEY, TEST_LOG_ORIGIN, TEST_SMART_KEY, dropSchema, randomNamespace } from '../helpers/env.js';
import { runCli } from '../helpers/cli.js';

describe('fhir-anchor CLI', () => {
  it.each([[[]], [['serve']], [['api']], [['worker']], [['migrate']]])('prints help with every environment variable for %p', async (cmd) => {
    const r = await runCli([...cmd, '--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/Usage: fhir-anchor/);
    for (const name of Object.keys(ENV_VARS)) expect(r.stdout).toContain(name);
  });

  it('lists serve, api, worker, migrate and verify in the top-level help', async () => {
    const r = await runCli(['--help']);
    for (const c of ['serve', 'api', 'worker', 'migrate', 'verify']) expect(r.stdout).toMatch(new RegExp(`^\\s+${c}\\b`, 'm'));
    const v = await runCli(['verify', '--help']);
    expect(v.code).toBe(0);
    expect(v.stdout).toContain('--receipt');
  });

  it('exits 1 listing every configuration problem, without secret values', async () => {
    const r = await runCli(['serve'], { DATABASE_URL: 'mysql://x', REDIS_URL: 'nope', PORT: '-1', ADMIN_TOKEN: 'too-short-secret' });
    expect(r.code).toBe(1);
    for (const v of ['DATABASE_URL', 'REDIS_URL', 'PORT', 'ADMIN_TOKEN']) expect(r.stderr).toContain(v);
    expect(r.stderr).not.toContain('too-short-secret');
    expect(r.stderr).not.toMatch(/at .*\.ts:\d+/);
  });

  it('migrate applies the schema once and is idempotent', async () => {
    const schema = randomNamespace('t');
    const queueSchema = randomNamespace('tq');
    const env = { DATABASE_URL: TEST_DATABASE_URL, DATABASE_SCHEMA: schema, QUEUE_SCHEMA: queueSchema, ADMIN_TOKEN: 'a'.repeat(32), LOG_ORIGIN: TEST_LOG_ORIGIN, LOG_SIGNER_KEY: TEST_LOG_KEY.signerKey, SMART_TOKEN_KEY: TEST_SMART_KEY };
    try {
      const first = await runCli(['migrate'], env);
      expect(first.code).toBe(0);
      expect(first.stdout).toContain('database migrations applied');
      const second = await runCli(['migrate'], env);
      expect(second.code).toBe(0);
      expect(second.stdout).not.toContain('database migrations applied');
      expect(second.stdout).toContain('migrations complete');
    } finally {
      await dropSchema(schema);
      await dropSchema(queueSchema);
    }
  });
});
