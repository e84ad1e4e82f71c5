/**
 * `POST /research/$deidentify`: de-identifies the request body with a policy and answers the same
 * shape. Mount the router at `/research`.
 *
 * - `Content-Type: application/fhir+json` (or application/json): one resource or a Bundle → the
 *   de-identified resource or Bundle (Bundle entries the safety net dropped are left out; the count is
 *   in `X-Deid-Dropped`). A dropped single resource → 422 OperationOutcome.
 * - `Content-Type: application/fhir+ndjson`: one resource per line → NDJSON of the de-identified
 *   resources, dropped lines left out (`X-Deid-Dropped`).
 * - `?policy=` a built-in policy name (default `safe-harbor`).
 *
 * Errors are OperationOutcomes: 400 for unreadable input or an unknown policy, 422 when the policy
 * (processingErrors raise) refuses the input. Messages name element paths, never values.
 *
 * @packageDocumentation
 */
import express, { Router, type Request, type Response } from 'express';
import type { Resource } from '@medplum/fhirtypes';
import { httpError } from '../platform/errors.js';
import { pathText, scanJsonText } from '../platform/json-duplicates.js';
import { MAX_JSON_DEPTH } from '../platform/json-text.js';
import { DeidConfigError } from './deid/config.js';
import { createDeidentifier, DeidSafetyError, type Deidentifier, type ResearchDeidConfig } from './deid/deidentifier.js';
import { DeidProcessingError, RuleNotApplicableError } from './deid/engine.js';
import { ensureR4Schemas } from './deid/tree.js';

const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const NDJSON = 'application/fhir+ndjson';
const POLICY_RE = /^[a-z0-9][a-z0-9-]{0,63}$/;
/** Default body limit: 16 MiB (the largest Synthea bundles are ~2 MB). */
const DEFAULT_LIMIT_BYTES = 16 * 1024 * 1024;

/** Options of {@link createDeidRouter}. */
export interface DeidRouterOptions {
  /** Keys, clock and policy folder. */
  readonly config: ResearchDeidConfig;
  /** Largest accepted body in bytes (default 16 MiB). */
  readonly bodyLimitBytes?: number;
}

function isResourceLike(v: unknown): v is Resource {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && typeof (v as { resourceType?: unknown }).resourceType === 'string';
}

function parseJson(text: string, what: string): unknown {
  const clean = text.replace(/^\uFEFF/, '');
  let value: unknown;
  try {
    value = JSON.parse(clean) as unknown;
  } catch {
    throw httpError(400, 'structure', `${what} is not valid JSON`);
  }
  // As the other JSON APIs (src/platform/json-body.ts): bounded nesting (the engine's walk recurses),
  // no duplicated property name (which value would be de-identified is ambiguous).
  const scan = scanJsonText(clean, 1);
  if (scan.tooDeep) throw httpError(400, 'structure', `JSON nesting deeper than ${MAX_JSON_DEPTH} levels`);
  const [dup] = scan.duplicates;
  if (dup) throw httpError(400, 'structure', `${what} has a duplicate JSON property "${dup.key.slice(0, 64)}" at ${pathText('$', [...dup.path, dup.key])}`);
  return value;
}

/**
 * The router for `$deidentify` (mount at `/research`).
 *
 * @param options - keys and limits; de-identifiers are compiled once per policy and reused.
 */
export function createDeidRouter(options: DeidRouterOptions): Router {
  // The R4 schemas every de-identification walks by (about 0.65 s of synchronous work): now, at
  // start-up, not in the first request, where it would stall every other request on the event loop.
  ensureR4Schemas();
  const router = Router();
  const cache = new Map<string, Deidentifier>();
  const deidentifierFor = (policy: string): Deidentifier => {
    let d = cache.get(policy);
    if (!d) {
      try {
        d = createDeidentifier(options.config, { policy });
      } catch (err) {
        if (err instanceof DeidConfigError && err.problems.some((p) => p.startsWith('unknown policy'))) {
          throw httpError(400, 'not-supported', `Unknown de-identification policy '${policy}'`);
        }
        // Missing keys or a broken built-in policy: the server is misconfigured; details go to the log, not the client.
        throw httpError(500, 'exception', 'De-identification is not configured on this server');
      }
      cache.set(policy, d);
    }
    return d;
  };

  const run = <T extends Resource>(d: Deidentifier, r: T) => {
    try {
      return d.deidentify(r);
    } catch (err) {
      if (err instanceof DeidSafetyError || err instanceof DeidProcessingError || err instanceof RuleNotApplicableError) {
        throw httpError(422, 'processing', err.message);
      }
      throw err;
    }
  };

  router.post(
    '/$deidentify',
    express.text({ type: () => true, limit: options.bodyLimitBytes ?? DEFAULT_LIMIT_BYTES }),
    (req: Request, res: Response) => {
      const policyParam = req.query.policy ?? 'safe-harbor';
      if (typeof policyParam !== 'string' || !POLICY_RE.test(policyParam)) {
        throw httpError(400, 'invalid', 'Query parameter policy must be a policy name');
      }
      const d = deidentifierFor(policyParam);
      const body = typeof req.body === 'string' ? req.body : '';
      if (body.trim() === '') throw httpError(400, 'required', 'The request body is empty');
      const contentType = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();

      if (contentType === NDJSON || contentType === 'application/x-ndjson' || contentType === 'application/ndjson') {
        const lines = body.split(/\r?\n/);
        const out: string[] = [];
        let dropped = 0;
        lines.forEach((line, i) => {
          if (line.trim() === '') return;
          const r = parseJson(line, `Line ${i + 1}`);
          if (!isResourceLike(r)) throw httpError(400, 'structure', `Line ${i + 1} is not a FHIR resource`);
          const result = run(d, r);
          if (result.kind === 'deidentified') out.push(JSON.stringify(result.resource));
          else dropped++;
        });
        res.status(200).set('X-Deid-Dropped', String(dropped)).type(NDJSON).send(out.length > 0 ? `${out.join('\n')}\n` : '');
        return;
      }
      if (contentType !== 'application/fhir+json' && contentType !== 'application/json' && contentType !== '') {
        throw httpError(415, 'not-supported', 'Send application/fhir+json or application/fhir+ndjson');
      }
      const r = parseJson(body, 'The body');
      if (!isResourceLike(r)) throw httpError(400, 'structure', 'The body is not a FHIR resource');
      const result = run(d, r);
      if (result.kind === 'dropped') throw httpError(422, 'processing', `The ${result.resourceType} was not released: ${result.reason}`);
      res.status(200).set('X-Deid-Dropped', String(result.droppedEntries.length)).type(FHIR_JSON).send(JSON.stringify(result.resource));
    },
  );
  return router;
}
