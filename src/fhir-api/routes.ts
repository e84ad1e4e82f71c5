/**
 * The consent-gated FHIR R4 read API (and patient Consent writes), as an express Router mounted at
 * `/fhir/R4` beside the integrity stage's `$verify` router.
 *
 * Per request: the caller's authentication middleware establishes an {@link AccessContext}
 * (`res.locals.access` by default), the router creates a {@link ScopedRepository} from it, the
 * operation runs against that repository only, the audit is recorded, and only then is the answer
 * sent. Errors are thrown as `HttpError`s for the app's single error handler.
 *
 * Routes (each behind `authenticate`; paths that are not ours fall through to later routers):
 * `GET /{type}/{id}`, `GET /{type}/{id}/_history/{vid}`, `GET /{type}/{id}/_history`,
 * `GET /{type}`, `POST /{type}/_search`, `GET /Patient/{id}/$everything`, `POST /Consent`,
 * `PUT /Consent/{id}`, `DELETE /Consent/{id}`.
 *
 * @see docs/decisions-fhir-api.md
 */
import express, { Router, type NextFunction, type Request, type RequestHandler, type Response } from 'express';
import { httpError } from '../platform/errors.js';
import { jsonBodyParser } from '../platform/json-body.js';
import { pushAll } from '../platform/arrays.js';
import type { AccessContext } from './access.js';
import { createCursorCodec, type CursorCodec } from './bundle.js';
import type { CapabilityContribution } from './capability.js';
import { createConsentOperation, deleteConsentOperation, updateConsentOperation } from './operations/consent-write.js';
import type { OperationContext, OperationResult } from './operations/context.js';
import { everythingOperation } from './operations/everything.js';
import { historyOperation, readOperation, vreadOperation } from './operations/read.js';
import { searchOperation } from './operations/search.js';
import { createScopedRepository, type FhirApiDeps } from './repository.js';
import { ID_RE, TYPE_RE, capabilityResources, formPairs } from './search-params.js';

const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const VID_RE = /^[1-9][0-9]{0,14}$/;
/** Largest request body accepted by the write and `_search` routes (a Consent is a few KB). */
const BODY_LIMIT_BYTES = 256 * 1024;

/** Dependencies of {@link createFhirApiRouter}. */
export interface FhirApiRouterDeps extends FhirApiDeps {
  /**
   * Authentication: validates the bearer token and makes the {@link AccessContext} available to
   * {@link accessOf} (by default it sets `res.locals.access`); answers 401 itself when it cannot.
   */
  readonly authenticate: RequestHandler;
  /** Where authentication left the AccessContext; defaults to `res.locals.access`. */
  readonly accessOf?: (req: Request, res: Response) => AccessContext | undefined;
  /** HMAC key for paging cursors (share one across a cluster); random per process when absent. */
  readonly cursorKey?: Uint8Array;
}

/** What this router adds to the CapabilityStatement: resources, interactions, search parameters, `$everything`. */
export const fhirApiCapability: CapabilityContribution = {
  resources: capabilityResources(),
  securityDescription: 'Reads are gated by SMART scopes and the patient\'s FHIR Consent (deny overrides permit); every disclosure and denial is audited.',
};

function defaultAccessOf(_req: Request, res: Response): AccessContext | undefined {
  const a = (res.locals as { access?: unknown }).access;
  return typeof a === 'object' && a !== null && Array.isArray((a as AccessContext).scopes) ? (a as AccessContext) : undefined;
}

/** `Prefer: return=minimal | representation` (anything else: the default, representation). */
function returnPreferenceOf(prefer: string): { returnPreference?: 'minimal' | 'representation' } {
  const m = /(?:^|[\s,;])return\s*=\s*"?(minimal|representation)\b/i.exec(prefer)?.[1]?.toLowerCase();
  return m === 'minimal' || m === 'representation' ? { returnPreference: m } : {};
}

/** The conditional headers of a request (conditional read, version-aware update; long values are cut). */
function conditionsOf(req: Request): OperationContext['conditions'] {
  const ifNoneMatch = req.get('if-none-match');
  const ifModifiedSince = req.get('if-modified-since');
  const ifMatch = req.get('if-match');
  if (ifNoneMatch === undefined && ifModifiedSince === undefined && ifMatch === undefined) return undefined;
  return {
    ...(ifNoneMatch !== undefined ? { ifNoneMatch: ifNoneMatch.slice(0, 512) } : {}),
    ...(ifModifiedSince !== undefined ? { ifModifiedSince: ifModifiedSince.slice(0, 64) } : {}),
    ...(ifMatch !== undefined ? { ifMatch: ifMatch.slice(0, 512) } : {}),
  };
}

/** Skips routes whose type segment is not a FHIR type name, so other routers (e.g. `/metadata`) still answer. */
const typeGuard: RequestHandler = (req, _res, next) => {
  const type = (req.params as { type?: string }).type;
  next(type !== undefined && !TYPE_RE.test(type) ? 'route' : undefined);
};

/**
 * Creates the FHIR API router.
 *
 * @param deps - store (unscoped; only the repository uses it), recorder, consent default, clock,
 *   logger, public base URL, queues (integrity commits of patient Consents), authentication
 * @returns an express Router to mount at `/fhir/R4`
 */
export function createFhirApiRouter(deps: FhirApiRouterDeps): Router {
  const router = Router();
  const cursors: CursorCodec = createCursorCodec(deps.cursorKey);
  const accessOf = deps.accessOf ?? defaultAccessOf;
  const baseUrl = deps.baseUrl.replace(/\/+$/, '');
  const json = jsonBodyParser(BODY_LIMIT_BYTES, ['application/json', 'application/fhir+json']);
  const form = express.text({ limit: BODY_LIMIT_BYTES, type: 'application/x-www-form-urlencoded' });

  const handle =
    (interaction: string, op: (ctx: OperationContext) => Promise<OperationResult>, options: { formBody?: boolean } = {}) =>
    async (req: Request, res: Response, _next: NextFunction): Promise<void> => {
      // PHI: never cached, on every answer including errors (so a 404 looks the same either way).
      res.setHeader('Cache-Control', 'no-store');
      const params = req.params as Record<string, string>;
      if (params.id !== undefined && !ID_RE.test(params.id)) throw httpError(400, 'invalid', 'Invalid resource id');
      if (params.vid !== undefined && !VID_RE.test(params.vid)) throw httpError(400, 'invalid', 'Invalid version id');
      const access = accessOf(req, res);
      if (!access) throw httpError(401, 'login', 'Authentication required');
      const q = req.originalUrl.indexOf('?');
      const rawQuery = q < 0 ? '' : req.originalUrl.slice(q + 1);
      const pairs = formPairs(rawQuery);
      if (options.formBody && typeof req.body === 'string') pushAll(pairs, formPairs(req.body));
      const prefer = req.get('prefer') ?? '';
      // AuditEvents are materialised from the durable audit records shortly after each request: one
      // that can return AuditEvents first makes every earlier record one (a patient reading "who saw
      // my data" always sees the request before).
      if (deps.recorder.flush && (params.type === 'AuditEvent' || interaction === '$everything' || pairs.some(([k, v]) => k.startsWith('_') && v.includes('AuditEvent')))) {
        await deps.recorder.flush();
      }
      const repo = createScopedRepository(access, deps);
      const ctx: OperationContext = {
        repo,
        params,
        pairs,
        lenient: /(^|[\s,;])handling\s*=\s*lenient\b/i.test(prefer),
        ...returnPreferenceOf(prefer),
        baseUrl,
        selfUrl: `${baseUrl}${req.path}${rawQuery ? `?${rawQuery}` : ''}`,
        cursors,
        cursorBinding: `${access.issuer}|${access.clientId}|${access.patient ?? ''}`,
        body: req.body as unknown,
        conditions: conditionsOf(req),
      };
      const auditQuery = `${req.baseUrl}${req.path}${rawQuery ? `?${rawQuery}` : ''}`.slice(0, 2048);
      let result: OperationResult;
      try {
        result = await op(ctx);
      } catch (err) {
        // Denials that end in an error (403, a 404 that was really a consent denial) are audited too.
        await repo.flushAudit(interaction, auditQuery).catch((e: unknown) => deps.logger.error({ err: e instanceof Error ? e.message : String(e) }, 'recording a denial failed'));
        throw err;
      }
      // Audit first: nothing is disclosed unless its record was written.
      await repo.flushAudit(interaction, auditQuery);
      for (const [k, v] of Object.entries(result.headers ?? {})) res.setHeader(k, v);
      if (result.body === undefined) {
        res.status(result.status).end();
        return;
      }
      res.status(result.status).type(FHIR_JSON).send(JSON.stringify(result.body));
    };

  router.get('/Patient/:id/$everything', deps.authenticate, handle('$everything', everythingOperation));
  router.post('/Consent', deps.authenticate, json, handle('create', createConsentOperation));
  router.put('/Consent/:id', deps.authenticate, json, handle('update', updateConsentOperation));
  router.delete('/Consent/:id', deps.authenticate, handle('delete', deleteConsentOperation));
  router.post('/:type/_search', typeGuard, deps.authenticate, form, handle('search-type', searchOperation, { formBody: true }));
  router.get('/:type/:id/_history/:vid', typeGuard, deps.authenticate, handle('vread', vreadOperation));
  router.get('/:type/:id/_history', typeGuard, deps.authenticate, handle('history', historyOperation));
  // Interactions and operations this server does not offer, said as such rather than as a bad id.
  router.get('/:type/:id', typeGuard, (req, _res, next) => {
    const id = String(req.params.id);
    if (id === '_history') throw httpError(400, 'not-supported', `Type-level history is not supported: read ${String(req.params.type)}/{id}/_history`);
    if (id.startsWith('$')) throw httpError(400, 'not-supported', `Operation ${id.slice(0, 64)} is not supported on ${String(req.params.type)} (the CapabilityStatement lists the operations)`);
    next();
  });
  router.get('/:type/:id', typeGuard, deps.authenticate, handle('read', readOperation));
  router.get('/:type', typeGuard, deps.authenticate, handle('search-type', searchOperation));
  // A resource path with a method it does not take (writes to anything but Consent): 405 with Allow.
  router.all(['/:type', '/:type/:id'], typeGuard, (req, _res, next) => {
    if (req.method === 'GET' || req.method === 'HEAD' || req.method === 'OPTIONS') return next();
    const type = String(req.params.type);
    const instance = req.params.id !== undefined;
    const allow = type === 'Consent' ? (instance ? 'GET, HEAD, PUT, DELETE' : 'GET, HEAD, POST') : 'GET, HEAD';
    throw httpError(405, 'not-supported', `${req.method} is not supported on ${instance ? `${type}/{id}` : type}: ${type === 'Consent' ? 'see Allow' : `${type} is read-only here (resources arrive from the sources' notifications)`}`, { Allow: allow });
  });
  router.post('/', () => {
    throw httpError(400, 'not-supported', 'Transactions and batches are not supported: this API is read-only apart from Consent');
  });
  return router;
}
