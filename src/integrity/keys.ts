/**
 * The log's Ed25519 signing key (C2SP signed-note key format).
 *
 * The key comes from configuration (`signerKey`, a `PRIVATE+KEY+<origin>+<id>+<base64>` string) or
 * from a key file. When neither holds a key, one is generated on first start and written to the key
 * file with mode 0600 (exclusive create, so two processes starting together end up with the same key).
 * Every process appending to one log must use the same key; in production pass it in explicitly.
 *
 * @see https://c2sp.org/signed-note
 * @packageDocumentation
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { generateEd25519Key, parseSignerKey, verifierKeyFromSignerKey } from './note.js';
import type { NoteSigner } from './note.js';

/** Where the signer key comes from. */
export interface SignerKeyOptions {
  /** The log origin; the key's name must equal it (C2SP tlog-checkpoint recommends this). */
  readonly origin: string;
  /** A signer key string; wins over `keyFile`. */
  readonly signerKey?: string;
  /** Path of a file holding the signer key; created (0600) with a new key when missing. */
  readonly keyFile?: string;
}

/** A loaded log key. */
export interface LogKey {
  readonly signer: NoteSigner;
  /** The public verifier key (`<origin>+<hex id>+<base64>`), safe to publish. */
  readonly verifierKey: string;
  /** Where the key came from. */
  readonly source: 'config' | 'file' | 'generated';
}

/** Raised for a missing, malformed or mismatched key. */
export class LogKeyError extends Error {
  override readonly name = 'LogKeyError';
}

function fromString(skey: string, origin: string, source: LogKey['source']): LogKey {
  let signer: NoteSigner;
  try {
    signer = parseSignerKey(skey);
  } catch (err) {
    // Never echo the key text: it is a secret.
    throw new LogKeyError(`the log signer key (${source}) is malformed: ${(err as Error).message}`);
  }
  if (signer.name !== origin) {
    throw new LogKeyError(`the log signer key is named ${JSON.stringify(signer.name)}, but the log origin is ${JSON.stringify(origin)}`);
  }
  return { signer, verifierKey: verifierKeyFromSignerKey(skey), source };
}

/**
 * Loads the log key, generating and persisting one when configured with a key file that does not exist.
 *
 * @param options - origin and key source.
 * @returns the signer and its verifier key.
 * @throws LogKeyError when no source is given, or the key is malformed or named differently from the origin.
 */
export async function loadLogKey(options: SignerKeyOptions): Promise<LogKey> {
  if (options.signerKey !== undefined && options.signerKey.trim() !== '') {
    return fromString(options.signerKey.trim(), options.origin, 'config');
  }
  if (options.keyFile === undefined) throw new LogKeyError('no log signer key: set signerKey or keyFile');
  const file = options.keyFile;
  try {
    return fromString((await readFile(file, 'utf8')).trim(), options.origin, 'file');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const generated = generateEd25519Key(options.origin);
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  try {
    await writeFile(file, `${generated.signerKey}\n`, { mode: 0o600, flag: 'wx' });
  } catch (err) {
    // Another process created it first: use theirs.
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return fromString((await readFile(file, 'utf8')).trim(), options.origin, 'file');
    throw err;
  }
  return fromString(generated.signerKey, options.origin, 'generated');
}
