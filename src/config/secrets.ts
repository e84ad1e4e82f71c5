/**
 * The admin bearer token. In production it comes from ADMIN_TOKEN (required by config validation).
 * In embedded mode it is generated on first start, stored under DATA_DIR with mode 0600, and printed
 * once to stderr (never through the logger, whose output may be shipped elsewhere).
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';

export const ADMIN_TOKEN_FILE = 'admin-token';
export const SECRETS_KEY_FILE = 'secrets-key';

/** A secret kept in a DATA_DIR file: its trimmed text (the file is made mode 0600), or undefined when there is no file. */
async function readSecretFile(file: string): Promise<string | undefined> {
  if (!existsSync(file)) return undefined;
  if (((await stat(file)).mode & 0o777) !== 0o600) await chmod(file, 0o600);
  return (await readFile(file, 'utf8')).trim();
}

/** Generates a secret (32 random bytes, base64url) into a new DATA_DIR file, mode 0600. */
async function writeNewSecretFile(dataDir: string, file: string, options: { readonly exclusive?: boolean } = {}): Promise<string> {
  await mkdir(dataDir, { recursive: true });
  const secret = randomBytes(32).toString('base64url');
  await writeFile(file, secret + '\n', { mode: 0o600, ...(options.exclusive ? { flag: 'wx' } : {}) });
  await chmod(file, 0o600);
  return secret;
}

export async function resolveAdminToken(options: {
  readonly configured: string | undefined;
  readonly dataDir: string;
  /** Where the one-time notice is written; defaults to stderr. */
  readonly announce?: (text: string) => void;
}): Promise<string> {
  if (options.configured) {
    return options.configured;
  }
  const file = path.join(options.dataDir, ADMIN_TOKEN_FILE);
  const existing = await readSecretFile(file);
  if (existing !== undefined && existing.length >= 32) return existing;
  const token = await writeNewSecretFile(options.dataDir, file);
  const announce = options.announce ?? ((text: string) => process.stderr.write(text));
  announce(
    `\nfhir-anchor: generated an admin token (shown once; stored in ${file}, mode 0600):\n\n  ${token}\n\n` +
      `Use it as "Authorization: Bearer <token>" for /admin/*, or as the password for /admin/queues in a browser.\n\n`,
  );
  return token;
}

/**
 * The key that seals stored source secrets: `SECRETS_KEY` when set; in embedded mode one generated on
 * first start and kept under DATA_DIR (mode 0600, next to the database it protects, so a copy of the
 * database alone does not open them); otherwise (production without the variable) none.
 */
export async function resolveSecretsKey(options: { readonly configured: string | undefined; readonly dataDir: string; readonly embedded: boolean }): Promise<string | undefined> {
  if (options.configured) return options.configured;
  if (!options.embedded) return undefined;
  const file = path.join(options.dataDir, SECRETS_KEY_FILE);
  const existing = await readSecretFile(file);
  if (existing !== undefined) {
    if (existing.length >= 32) return existing;
    throw new Error(`${file} holds no usable secrets key (at least 32 characters); restore it, or remove it only if no source secrets were stored with it`);
  }
  // Never overwrite a key file another start wrote meanwhile (exclusive create).
  return writeNewSecretFile(options.dataDir, file, { exclusive: true });
}
