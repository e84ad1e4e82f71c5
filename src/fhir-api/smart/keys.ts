/**
 * The key that signs our SMART access tokens (ES256, a P-256 ECDSA key as a private JWK).
 *
 * It comes from configuration (a private JWK as a JSON string) or from a key file. When neither holds
 * a key, one is generated on first start and written to the key file with mode 0600 (exclusive
 * create, so two processes starting together end up with the same key). Every API process must
 * verify with the same key: in production pass it in explicitly or share the file.
 *
 * @see https://www.rfc-editor.org/rfc/rfc7518#section-3.4 (ES256)
 * @see https://www.rfc-editor.org/rfc/rfc9068 (JWT access tokens)
 */
import { chmod, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { calculateJwkThumbprint, exportJWK, generateKeyPair, importJWK, type CryptoKey, type JWK } from 'jose';

/** Our access-token signature algorithm. */
export const ACCESS_TOKEN_ALG = 'ES256';

/** A loaded signing key. */
export interface AccessTokenKey {
  readonly alg: typeof ACCESS_TOKEN_ALG;
  readonly kid: string;
  readonly privateKey: CryptoKey;
  readonly publicKey: CryptoKey;
  /** The public JWK (with kid, alg, use), safe to publish. */
  readonly publicJwk: JWK;
  readonly source: 'config' | 'file' | 'generated';
}

/** Raised for a missing, malformed or unsuitable key. Never contains key material. */
export class AccessTokenKeyError extends Error {
  override readonly name = 'AccessTokenKeyError';
}

/** Where the key comes from: `jwk` wins over `keyFile`. */
export interface AccessTokenKeyOptions {
  /** A private ES256 JWK as JSON text. */
  readonly jwk?: string;
  /** Path of a file holding the private JWK; created (0600) with a new key when missing. */
  readonly keyFile?: string;
}

async function fromJwk(text: string, source: AccessTokenKey['source']): Promise<AccessTokenKey> {
  let jwk: JWK;
  try {
    jwk = JSON.parse(text) as JWK;
  } catch {
    throw new AccessTokenKeyError(`the access-token signing key (${source}) is not JSON`);
  }
  if (typeof jwk !== 'object' || jwk === null || jwk.kty !== 'EC' || jwk.crv !== 'P-256' || typeof jwk.d !== 'string') {
    throw new AccessTokenKeyError(`the access-token signing key (${source}) must be a private EC P-256 JWK (ES256)`);
  }
  const { d: _d, ...pub } = jwk;
  const kid = typeof jwk.kid === 'string' && jwk.kid !== '' ? jwk.kid : await calculateJwkThumbprint(pub);
  let privateKey: CryptoKey;
  let publicKey: CryptoKey;
  try {
    privateKey = (await importJWK({ ...jwk, alg: ACCESS_TOKEN_ALG }, ACCESS_TOKEN_ALG)) as CryptoKey;
    publicKey = (await importJWK({ ...pub, alg: ACCESS_TOKEN_ALG }, ACCESS_TOKEN_ALG)) as CryptoKey;
  } catch {
    // jose's message could describe the key; keep ours generic.
    throw new AccessTokenKeyError(`the access-token signing key (${source}) could not be imported`);
  }
  const publicJwk: JWK = { kty: pub.kty, crv: pub.crv, x: pub.x, y: pub.y, kid, alg: ACCESS_TOKEN_ALG, use: 'sig' };
  return { alg: ACCESS_TOKEN_ALG, kid, privateKey, publicKey, publicJwk, source };
}

/** Generates a new ES256 key as a private JWK (JSON text) whose kid is its RFC 7638 thumbprint. */
export async function generateAccessTokenJwk(): Promise<string> {
  const { privateKey } = await generateKeyPair(ACCESS_TOKEN_ALG, { extractable: true });
  const jwk = await exportJWK(privateKey);
  const { d: _d, ...pub } = jwk;
  return JSON.stringify({ ...jwk, kid: await calculateJwkThumbprint(pub), alg: ACCESS_TOKEN_ALG, use: 'sig' });
}

/**
 * Loads the access-token signing key, generating and persisting one when configured with a key file
 * that does not exist.
 *
 * @throws AccessTokenKeyError when no source is given, or the key is malformed or not ES256.
 */
export async function loadAccessTokenKey(options: AccessTokenKeyOptions): Promise<AccessTokenKey> {
  if (options.jwk) return fromJwk(options.jwk, 'config');
  const file = options.keyFile;
  if (!file) throw new AccessTokenKeyError('no access-token signing key: pass a JWK or a key file');
  try {
    const mode = (await stat(file)).mode & 0o777;
    if (mode !== 0o600) await chmod(file, 0o600);
    return await fromJwk(await readFile(file, 'utf8'), 'file');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  await mkdir(path.dirname(file), { recursive: true });
  const text = await generateAccessTokenJwk();
  try {
    await writeFile(file, text + '\n', { mode: 0o600, flag: 'wx' });
  } catch (err) {
    // Another process created it first: use theirs.
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return fromJwk(await readFile(file, 'utf8'), 'file');
    throw err;
  }
  return fromJwk(text, 'generated');
}
