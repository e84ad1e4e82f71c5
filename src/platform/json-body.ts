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
import { pathText, scanJsonText } from './json-duplicates.js';
import { MAX_JSON_DEPTH, jsonDepth, unstorableValue } from './json-text.js';

/** The raw bytes of a JSON body, kept by the parser's verify step for the checks after parsing. */
const RAW = Symbol('raw JSON body');
type WithRaw = Request & { [RAW]?: Buffer };

/**
 * Refuses a parsed body that cannot be taken as sent: nested deeper than {@link MAX_JSON_DEPTH}
 * (`JSON.parse` accepts any depth; the walks after it recurse), a duplicated property name (RFC 8259
 * leaves its meaning open: `JSON.parse` keeps the last value, other parsers the first; see
 * src/platform/json-duplicates.ts), or a value that cannot be stored ({@link unstorableValue}).
 */
export function refuseUnstorable(req: Request, _res: Response, next: NextFunction): void {
  const body: unknown = req.body;
  if (typeof body !== 'object' || body === null) return next();
  const root = !Array.isArray(body) && typeof (body as { resourceType?: unknown }).resourceType === 'string' ? String((body as { resourceType: string }).resourceType).slice(0, 64) : 'body';
  const raw = (req as WithRaw)[RAW];
  // UTF-8 bodies (all but a declared other charset): one scan of the text for both checks.
  const scan = raw ? scanJsonText(raw.toString('utf8'), 1) : undefined;
  if (scan ? scan.tooDeep : jsonDepth(body, MAX_JSON_DEPTH) > MAX_JSON_DEPTH) {
    return next(new HttpError(400, outcome('error', 'structure', `JSON nesting deeper than ${MAX_JSON_DEPTH} levels`)));
  }
  if (scan) {
    const [dup] = scan.duplicates;
    if (dup) {
      const where = pathText(root, [...dup.path, dup.key]);
      return next(new HttpError(400, outcome('error', 'structure', `${where}: duplicate JSON property "${dup.key.slice(0, 64)}" (its value is ambiguous)`, where)));
    }
  }
  const bad = unstorableValue(body);
  if (!bad) return next();
  const where = `${root}${bad.path}`;
  next(new HttpError(400, outcome('error', 'invalid', `${where}: ${bad.why}`, where)));
}

/**
 * Refuses a body declared (or defaulted to) UTF-8 that is not: body-parser would decode the bad bytes
 * to U+FFFD and the value would be stored changed (a Latin-1 "Müller" as "M\ufffdller").
 */
function requireUtf8(req: Request, _res: Response, buf: Buffer, encoding: string): void {
  if (/^utf-?8$/i.test(encoding) && !isUtf8(buf)) {
    throw new HttpError(400, outcome('error', 'invalid', 'Request body is not valid UTF-8 (FHIR JSON is always UTF-8)'));
  }
  if (/^utf-?8$/i.test(encoding)) (req as WithRaw)[RAW] = buf;
}

/** `express.json` (strict, bounded, UTF-8 checked, for `types`) followed by {@link refuseUnstorable}. */
export function jsonBodyParser(limitBytes: number, types: readonly string[]): RequestHandler[] {
  return [express.json({ limit: limitBytes, type: [...types], strict: true, verify: requireUtf8 }), refuseUnstorable];
}
