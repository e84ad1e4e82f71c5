/**
 * Authentication of incoming notifications, per source: `Authorization: Bearer <token>` and/or
 * `X-Signature` = hex HMAC-SHA256 of the raw body (Medplum-compatible), compared in constant time, and
 * an optional timestamp header with a replay window. Any failure is the same generic 401: the client
 * learns nothing about which check failed.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import type { Clock } from '../platform/clock.js';
import type { HookAuth } from './source.js';

export type HookAuthResult = { readonly ok: true } | { readonly ok: false; readonly why: string };

const sha = (v: string | Buffer): Buffer => createHash('sha256').update(v).digest();

/** Constant-time equality of two strings of any length (compares their SHA-256 digests). */
function safeEqual(a: string, b: string): boolean {
  return timingSafeEqual(sha(a), sha(b));
}

function headerValue(headers: Record<string, string | string[] | undefined>, name: string): string | undefined {
  const v = headers[name.toLowerCase()];
  return Array.isArray(v) ? v[0] : v;
}

/** Parses a timestamp header: Unix seconds, Unix milliseconds, or an ISO 8601 instant. */
export function parseTimestamp(value: string): Date | undefined {
  if (/^\d{9,11}$/.test(value)) return new Date(Number(value) * 1000);
  if (/^\d{12,14}$/.test(value)) return new Date(Number(value));
  const d = new Date(value);
  return Number.isNaN(d.getTime()) || !/^\d{4}-\d{2}-\d{2}T/.test(value) ? undefined : d;
}

/**
 * Checks every configured mechanism (all must pass). `why` is for the server log only — never for the
 * client — and never contains a secret or a presented credential.
 */
export function verifyHookAuth(
  auth: HookAuth,
  request: { readonly headers: Record<string, string | string[] | undefined>; readonly rawBody: Buffer },
  clock: Clock,
): HookAuthResult {
  if (auth.bearerToken !== undefined) {
    const header = headerValue(request.headers, 'authorization') ?? '';
    const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!m || !safeEqual(m[1]!, auth.bearerToken)) return { ok: false, why: 'bearer token missing or wrong' };
  }
  if (auth.hmacSecret !== undefined) {
    const presented = (headerValue(request.headers, 'x-signature') ?? '').trim().toLowerCase().replace(/^sha256=/, '');
    if (!/^[0-9a-f]{64}$/.test(presented)) return { ok: false, why: 'X-Signature missing or not 64 hex digits' };
    const expected = createHmac('sha256', auth.hmacSecret).update(request.rawBody).digest();
    if (!timingSafeEqual(Buffer.from(presented, 'hex'), expected)) return { ok: false, why: 'X-Signature does not match the body' };
  }
  if (auth.timestampHeader !== undefined) {
    const raw = headerValue(request.headers, auth.timestampHeader);
    const at = raw ? parseTimestamp(raw.trim()) : undefined;
    if (!at) return { ok: false, why: `${auth.timestampHeader} missing or unparseable` };
    const skewMs = Math.abs(clock.now().getTime() - at.getTime());
    if (skewMs > auth.replayWindowSeconds * 1000) return { ok: false, why: `${auth.timestampHeader} outside the ${auth.replayWindowSeconds} s replay window` };
  }
  return { ok: true };
}
