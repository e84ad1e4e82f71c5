/** Secrets kept under DATA_DIR: the admin token and the key that seals source secrets. */
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ADMIN_TOKEN_FILE, SECRETS_KEY_FILE, resolveAdminToken, resolveSecretsKey } from '../../src/config/secrets.js';

describe('secrets under DATA_DIR', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'fa-secrets-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('embedded mode generates the secrets key once (mode 0600) and reuses it', async () => {
    const key = await resolveSecretsKey({ configured: undefined, dataDir: dir, embedded: true });
    expect(key).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const file = path.join(dir, SECRETS_KEY_FILE);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect(await resolveSecretsKey({ configured: undefined, dataDir: dir, embedded: true })).toBe(key);
    expect((await readFile(file, 'utf8')).trim()).toBe(key);
  });

  it('uses SECRETS_KEY when set, and has none in production without it', async () => {
    expect(await resolveSecretsKey({ configured: 'k'.repeat(40), dataDir: dir, embedded: true })).toBe('k'.repeat(40));
    expect(await resolveSecretsKey({ configured: undefined, dataDir: dir, embedded: false })).toBeUndefined();
  });

  it('refuses a damaged key file instead of replacing it (sealed secrets would be lost)', async () => {
    await writeFile(path.join(dir, SECRETS_KEY_FILE), 'short\n', { mode: 0o644 });
    await expect(resolveSecretsKey({ configured: undefined, dataDir: dir, embedded: true })).rejects.toThrow(/no usable secrets key/);
  });

  it('the admin token is generated once, announced once, and reused', async () => {
    const notices: string[] = [];
    const token = await resolveAdminToken({ configured: undefined, dataDir: dir, announce: (t) => notices.push(t) });
    expect(notices).toHaveLength(1);
    expect(notices[0]).toContain(token);
    expect((await stat(path.join(dir, ADMIN_TOKEN_FILE))).mode & 0o777).toBe(0o600);
    expect(await resolveAdminToken({ configured: undefined, dataDir: dir, announce: (t) => notices.push(t) })).toBe(token);
    expect(notices).toHaveLength(1);
  });
});
