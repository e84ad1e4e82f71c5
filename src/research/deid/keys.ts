/** Environment variables that carry de-identification keys (read once into fhir-anchor's config). */
import type { DeidKeys } from './config.js';

/** Environment variables for de-identification keys, with their meaning (never logged). */
export const DEID_ENV_VARS = {
  DEID_CRYPTO_HASH_KEY: 'HMAC-SHA256 key for cryptoHash pseudonyms (resource ids, references). Required by the built-in policies; keep it secret and stable, or pseudonyms change between exports.',
  DEID_DATE_SHIFT_KEY: 'Key that derives per-scope date-shift offsets (policies with dateShift rules, e.g. safe-harbor-dateshift). Optional otherwise.',
  DEID_ENCRYPT_KEY: 'AES key for encrypt rules: exactly 16, 24 or 32 bytes (UTF-8). Optional.',
} as const;

/**
 * Reads {@link DEID_ENV_VARS} from an environment; unset or empty variables are left out.
 *
 * @param env - the environment (default process.env).
 */
export function deidKeysFromEnv(env: NodeJS.ProcessEnv = process.env): DeidKeys {
  return {
    ...(env.DEID_CRYPTO_HASH_KEY ? { cryptoHashKey: env.DEID_CRYPTO_HASH_KEY } : {}),
    ...(env.DEID_DATE_SHIFT_KEY ? { dateShiftKey: env.DEID_DATE_SHIFT_KEY } : {}),
    ...(env.DEID_ENCRYPT_KEY ? { encryptKey: env.DEID_ENCRYPT_KEY } : {}),
  };
}
