import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
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

  it('deid takes its keys from the configuration, validated by the config loader', async () => {
    const input = fileURLToPath(new URL('../fixtures/research/Russel238_Konopelski743_0cd9f8d6-ae86-3b42-7350-da4d678961ac.json', import.meta.url));
    const work = await mkdtemp(path.join(tmpdir(), 'cli-deid-'));
    try {
      const output = path.join(work, 'out.json');
      const ok = await runCli(['deid', '--input', input, '--output', output], { DEID_CRYPTO_HASH_KEY: 'k'.repeat(32) });
      expect(ok.code).toBe(0);
      expect(JSON.parse(await readFile(output, 'utf8'))).toMatchObject({ resourceType: 'Bundle' });
      // Too short for the config loader: refused with its message, the value not echoed.
      const short = await runCli(['deid', '--input', input, '--output', path.join(work, 'x.json')], { DEID_CRYPTO_HASH_KEY: 'shortkey' });
      expect(short.code).toBe(1);
      expect(short.stderr).toContain('DEID_CRYPTO_HASH_KEY');
      expect(short.stderr).not.toContain('shortkey');
      // No key: the built-in policy says what is missing.
      const none = await runCli(['deid', '--input', input, '--output', path.join(work, 'y.json')]);
      expect(none.code).toBe(2);
      expect(none.stderr).toMatch(/missing keys: cryptoHashKey/);
    } finally {
      await rm(work, { recursive: true, force: true });
    }
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
