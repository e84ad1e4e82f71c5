import { createHmac } from 'node:crypto';
import { parseTimestamp, verifyHookAuth } from '../../src/ingest/hook-auth.js';
import { ManualClock } from '../../src/platform/clock.js';

const clock = new ManualClock(new Date('2026-03-01T12:00:00Z'));
const body = Buffer.from('{"resourceType":"Patient","id":"p","name":[{"family":"Müller-Łukasz 李"}]}', 'utf8');
const sign = (secret: string, b: Buffer) => createHmac('sha256', secret).update(b).digest('hex');

describe('verifyHookAuth', () => {
  const both = { bearerToken: 'bearer-token-0123456789', hmacSecret: 'hmac-secret-0123456789', replayWindowSeconds: 300 };

  it('accepts the right bearer token and an HMAC over the raw (non-ASCII) bytes', () => {
    const r = verifyHookAuth(both, { headers: { authorization: 'Bearer bearer-token-0123456789', 'x-signature': sign(both.hmacSecret, body) }, rawBody: body }, clock);
    expect(r).toEqual({ ok: true });
  });

  it('rejects a signature over re-serialised JSON (must be the raw bytes)', () => {
    const reserialised = Buffer.from(JSON.stringify(JSON.parse(body.toString('utf8'))).replace('Müller', 'M\\u00fcller'));
    const r = verifyHookAuth(both, { headers: { authorization: 'Bearer bearer-token-0123456789', 'x-signature': sign(both.hmacSecret, reserialised) }, rawBody: body }, clock);
    expect(r.ok).toBe(false);
  });

  it.each([
    [{}, 'nothing'],
    [{ authorization: 'Bearer wrong' }, 'wrong bearer'],
    [{ authorization: 'Bearer bearer-token-0123456789' }, 'missing signature'],
    [{ authorization: 'Bearer bearer-token-0123456789', 'x-signature': 'zz' }, 'malformed signature'],
    [{ authorization: 'Basic YTpi', 'x-signature': sign('hmac-secret-0123456789', body) }, 'basic auth'],
    [{ authorization: 'Bearer bearer-token-0123456789', 'x-signature': sign('other-secret-0123456789', body) }, 'forged signature'],
  ])('rejects %p (%s) without revealing secrets', (headers, _label) => {
    const r = verifyHookAuth(both, { headers, rawBody: body }, clock);
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.why).not.toContain('bearer-token-0123456789');
      expect(r.why).not.toContain('hmac-secret-0123456789');
    }
  });

  it('enforces the replay window when a timestamp header is configured', () => {
    const auth = { hmacSecret: 'hmac-secret-0123456789', timestampHeader: 'X-Timestamp', replayWindowSeconds: 60 };
    const headers = (ts: string) => ({ 'x-signature': sign(auth.hmacSecret, body), 'x-timestamp': ts });
    expect(verifyHookAuth(auth, { headers: headers(String(clock.now().getTime() / 1000)), rawBody: body }, clock).ok).toBe(true);
    expect(verifyHookAuth(auth, { headers: headers('2026-03-01T11:59:30Z'), rawBody: body }, clock).ok).toBe(true);
    expect(verifyHookAuth(auth, { headers: headers('2026-03-01T11:58:00Z'), rawBody: body }, clock).ok).toBe(false);
    expect(verifyHookAuth(auth, { headers: headers('yesterday'), rawBody: body }, clock).ok).toBe(false);
    expect(verifyHookAuth(auth, { headers: { 'x-signature': sign(auth.hmacSecret, body) }, rawBody: body }, clock).ok).toBe(false);
  });

  it('parses unix seconds, milliseconds and ISO instants', () => {
    expect(parseTimestamp('1772366400')?.toISOString()).toBe('2026-03-01T12:00:00.000Z');
    expect(parseTimestamp('1772366400000')?.toISOString()).toBe('2026-03-01T12:00:00.000Z');
    expect(parseTimestamp('2026-03-01T12:00:00Z')?.toISOString()).toBe('2026-03-01T12:00:00.000Z');
    expect(parseTimestamp('12')).toBeUndefined();
  });
});
