/**
 * /admin/* is protected by the admin bearer token. Browsers (bull-board at /admin/queues) may send it
 * as the password of HTTP Basic credentials instead. Comparison is constant-time over SHA-256 digests
 * so neither the token nor its length leaks through timing.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { RequestHandler } from 'express';
import { httpError } from '../platform/errors.js';

function digest(value: string): Buffer {
  return createHash('sha256').update(value, 'utf8').digest();
}

export function requireAdmin(adminToken: string): RequestHandler {
  const expected = digest(adminToken);
  return (req, _res, next) => {
    const header = req.headers.authorization ?? '';
    let presented: string | undefined;
    const bearer = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (bearer) {
      presented = bearer[1];
    } else {
      const basic = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header);
      if (basic) {
        const decoded = Buffer.from(basic[1]!, 'base64').toString('utf8');
        const colon = decoded.indexOf(':');
        presented = colon >= 0 ? decoded.slice(colon + 1) : undefined;
      }
    }
    if (presented !== undefined && timingSafeEqual(digest(presented), expected)) {
      next();
      return;
    }
    next(
      httpError(401, 'login', 'Authentication required', {
        'WWW-Authenticate': 'Bearer realm="fhir-anchor-admin", Basic realm="fhir-anchor-admin", charset="UTF-8"',
      }),
    );
  };
}
