/**
 * The JSON body parser of every JSON API (FHIR writes, admin, CDS Hooks): bounded, strict (objects and
 * arrays only), and refusing with 400 what could not be stored as sent (NUL, lone surrogates, numbers
 * beyond a double: {@link unstorableText}) instead of failing in PostgreSQL (a 500) or changing the value
 * silently (a surrogate becomes U+FFFD, Infinity becomes null). The ingest hooks take raw bytes and
 * check each resource themselves (src/normalize/structural.ts).
 */
import express, { type NextFunction, type Request, type RequestHandler, type Response } from 'express';
import { HttpError, outcome } from './errors.js';
import { unstorableText } from './json-text.js';

/** Refuses a parsed body holding a value that cannot be stored as sent. */
export function refuseUnstorable(req: Request, _res: Response, next: NextFunction): void {
  const body: unknown = req.body;
  if (typeof body !== 'object' || body === null) return next();
  const bad = unstorableText(body);
  if (!bad) return next();
  const root = !Array.isArray(body) && typeof (body as { resourceType?: unknown }).resourceType === 'string' ? String((body as { resourceType: string }).resourceType).slice(0, 64) : 'body';
  const where = `${root}${bad.path}`;
  next(new HttpError(400, outcome('error', 'invalid', `${where}: ${bad.why}`, where)));
}

/** `express.json` (strict, bounded, for `types`) followed by {@link refuseUnstorable}. */
export function jsonBodyParser(limitBytes: number, types: readonly string[]): RequestHandler[] {
  return [express.json({ limit: limitBytes, type: [...types], strict: true }), refuseUnstorable];
}
