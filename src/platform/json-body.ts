/**
 * The JSON body parser of every JSON API (FHIR writes, admin, CDS Hooks): bounded, strict (objects and
 * arrays only), UTF-8 only, and refusing with 400 what could not be stored as sent (NUL, lone surrogates, numbers
 * beyond a double: {@link unstorableValue}) instead of failing in PostgreSQL (a 500) or changing the value
 * silently (a surrogate becomes U+FFFD, Infinity becomes null). The ingest hooks take raw bytes and
 * check each resource themselves (src/normalize/structural.ts).
 */
import { isUtf8 } from 'node:buffer';
import express, { type NextFunction, type Request, type RequestHandler, type Response } from 'express';
import { HttpError, outcome } from './errors.js';
import { unstorableValue } from './json-text.js';

/** Refuses a parsed body holding a value that cannot be stored as sent. */
export function refuseUnstorable(req: Request, _res: Response, next: NextFunction): void {
  const body: unknown = req.body;
  if (typeof body !== 'object' || body === null) return next();
  const bad = unstorableValue(body);
  if (!bad) return next();
  const root = !Array.isArray(body) && typeof (body as { resourceType?: unknown }).resourceType === 'string' ? String((body as { resourceType: string }).resourceType).slice(0, 64) : 'body';
  const where = `${root}${bad.path}`;
  next(new HttpError(400, outcome('error', 'invalid', `${where}: ${bad.why}`, where)));
}

/**
 * Refuses a body declared (or defaulted to) UTF-8 that is not: body-parser would decode the bad bytes
 * to U+FFFD and the value would be stored changed (a Latin-1 "Müller" as "M\ufffdller").
 */
function requireUtf8(_req: Request, _res: Response, buf: Buffer, encoding: string): void {
  if (/^utf-?8$/i.test(encoding) && !isUtf8(buf)) {
    throw new HttpError(400, outcome('error', 'invalid', 'Request body is not valid UTF-8 (FHIR JSON is always UTF-8)'));
  }
}

/** `express.json` (strict, bounded, UTF-8 checked, for `types`) followed by {@link refuseUnstorable}. */
export function jsonBodyParser(limitBytes: number, types: readonly string[]): RequestHandler[] {
  return [express.json({ limit: limitBytes, type: [...types], strict: true, verify: requireUtf8 }), refuseUnstorable];
}
