/**
 * Format negotiation of the FHIR endpoint: fhir-anchor speaks FHIR R4 JSON only, and says so instead
 * of answering JSON to a client that asked for something else (FHIR R4 http.html, "Content Types and
 * encodings"; RFC 9110 §12.5.1, §15.5.7, §15.5.16):
 *
 * - `_format` naming another format (`xml`, `application/fhir+xml`, `ttl`, `html`, …) → 406;
 * - an `Accept` header none of whose ranges covers a JSON type (`application/fhir+xml` alone) → 406;
 *   a browser's `…, *\/*;q=0.8` does cover it;
 *   (a Bulk Data file download also accepts NDJSON, which is what it answers);
 * - a `fhirVersion` MIME parameter other than 4.0 → 406: this endpoint is R4 (4.0.1);
 * - a body (POST, PUT) that is neither JSON nor a `_search` form → 415.
 *
 * Each answer is an OperationOutcome, through the one error handler.
 */
import type { NextFunction, Request, Response } from 'express';
import { httpError } from '../platform/errors.js';

/** The JSON media types FHIR R4 names (plus the DSTU2-era `application/json+fhir` some clients still send). */
const JSON_TYPES = ['application/fhir+json', 'application/json', 'application/json+fhir'];
/** What a Bulk Data file download (`$export-file`) answers: NDJSON. */
const NDJSON_TYPES = ['application/fhir+ndjson', 'application/ndjson', 'application/x-ndjson'];
/** `_format` values meaning JSON (FHIR allows the short form `json`). */
const JSON_FORMATS = new Set(['json', ...JSON_TYPES]);
/** Body types the FHIR endpoint parses: JSON, and the form of `POST …/_search`. */
const BODY_TYPES = [...JSON_TYPES, 'application/x-www-form-urlencoded'];

/** The `fhirVersion` parameter of a media type or media range, if any (`application/fhir+json; fhirVersion=4.0`). */
function fhirVersionOf(value: string): string | undefined {
  return /;\s*fhirversion\s*=\s*"?([^";,\s]+)"?/i.exec(value)?.[1];
}

/**
 * Whether an `Accept` header admits one of `types` (RFC 9110 §12.5.1): for each type, the most specific
 * matching range (exact, then `type/*`, then `*\/*`) decides, and `q=0` refuses. Parameters other than
 * `q` (such as `fhirVersion`) do not take part here: `req.accepts` would require them on the offered type.
 */
function acceptsAny(accept: string, types: readonly string[]): boolean {
  const ranges = accept.split(',').map((r) => {
    const [type = '', ...params] = r.split(';');
    const q = params.map((p) => /^\s*q\s*=\s*([0-9.]+)\s*$/i.exec(p)?.[1]).find((v) => v !== undefined);
    return { type: type.trim().toLowerCase(), q: q === undefined ? 1 : Number(q) };
  });
  return types.some((t) => {
    const major = `${t.split('/')[0]}/*`;
    const match = ranges.find((r) => r.type === t) ?? ranges.find((r) => r.type === major) ?? ranges.find((r) => r.type === '*/*');
    return match !== undefined && match.q > 0;
  });
}

/** FHIR R4 is `4.0`; `4.0.1` names the same version. */
const isR4 = (v: string | undefined): boolean => v === undefined || v === '4.0' || v === '4.0.1';

export function fhirFormat(req: Request, _res: Response, next: NextFunction): void {
  const raw: unknown = req.query._format;
  const format = typeof raw === 'string' ? raw : Array.isArray(raw) && typeof raw[0] === 'string' ? raw[0] : undefined;
  if (format !== undefined) {
    // An unencoded `+` in a query string arrives as a space (`_format=application/fhir+json`).
    const mime = format.split(';')[0]!.trim().toLowerCase().replace(/ /g, '+');
    if (!JSON_FORMATS.has(mime)) {
      return next(httpError(406, 'not-supported', `_format=${format.slice(0, 64)} is not supported: this server answers FHIR JSON only (_format=json)`));
    }
    if (!isR4(fhirVersionOf(format))) return next(httpError(406, 'not-supported', 'This endpoint serves FHIR R4 (fhirVersion 4.0) only'));
  } else if ((req.get('accept') ?? '').trim() !== '') {
    const accept = req.get('accept')!;
    const answers = req.path.includes('/$export-file/') ? [...NDJSON_TYPES, ...JSON_TYPES] : JSON_TYPES;
    if (!acceptsAny(accept, answers)) {
      return next(httpError(406, 'not-supported', 'This server answers FHIR JSON only: accept application/fhir+json'));
    }
    // A fhirVersion asked for on every JSON range that names one, and none of them R4.
    const versions = accept.split(',').filter((r) => /json/i.test(r)).map(fhirVersionOf);
    if (versions.length > 0 && versions.every((v) => v !== undefined && !isR4(v))) {
      return next(httpError(406, 'not-supported', 'This endpoint serves FHIR R4 (fhirVersion 4.0) only'));
    }
  }
  const hasBody = req.get('content-length') !== undefined ? Number(req.get('content-length')) > 0 : req.get('transfer-encoding') !== undefined;
  if (hasBody && req.get('content-type') !== undefined && req.is(BODY_TYPES) === false) {
    return next(httpError(415, 'not-supported', 'Send FHIR JSON (Content-Type: application/fhir+json)'));
  }
  next();
}
