/**
 * Bulk Data 2.0 `$export` HTTP surface, mounted at `/fhir/R4` BEFORE the FHIR read API (whose
 * `/:type/:id` route would otherwise take `/Patient/$export`):
 *
 * - `GET /$export`, `GET /Patient/$export`, `GET /Group/{id}/$export` — kick-off: 202 +
 *   `Content-Location` of the status URL (`Prefer: respond-async` required, else 400);
 * - `GET /$export-status/{exportId}` — 202 + `X-Progress` + `Retry-After` while running, 200 + the
 *   manifest when complete, 500 OperationOutcome when failed, 404 when unknown, cancelled, expired
 *   or another client's;
 * - `DELETE /$export-status/{exportId}` — cancel (202), files deleted;
 * - `GET /$export-file/{exportId}/{file}` — one NDJSON output or error file, to the same client.
 *
 * Every route needs the SMART access token; only the client (issuer + client id) that started an
 * export sees it.
 *
 * @see https://hl7.org/fhir/uv/bulkdata/STU2/export.html
 */
import { randomUUID } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { Router, type Request, type Response } from 'express';
import type { AccessContext } from '../../fhir-api/access.js';
import { formPairs, ID_RE } from '../../fhir-api/search-params.js';
import { httpError } from '../../platform/errors.js';
import type { ExportLevel, ExportRecord } from '../../store/export-store.js';
import { createDeidentifier } from '../deid/deidentifier.js';
import { mayReadGroup, parseKickoff, persistAccess } from './kickoff.js';
import type { BulkManifest } from './manifest.js';
import { exportDirectory, exportJobId } from './runner.js';
import { defaultAccessOf, NDJSON, type ExportDeps } from './types.js';

const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const EXPORT_ID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const FILE_RE = /^[A-Z][A-Za-z]{1,63}\.ndjson$/;
/** Seconds a client should wait between status polls. */
const RETRY_AFTER_S = 2;
const DEFAULT_MAX_ACTIVE = 3;

/** The same 404 for unknown, cancelled, expired and other clients' exports. */
const NOT_FOUND = (): Error => httpError(404, 'not-found', 'Export not found');

/**
 * Creates the `$export` router (mount at `/fhir/R4`, before the FHIR API router).
 *
 * @param deps - see {@link ExportDeps}
 */
export function createExportRouter(deps: ExportDeps): Router {
  const router = Router();
  const accessOf = deps.accessOf ?? defaultAccessOf;
  const baseUrl = deps.baseUrl.replace(/\/+$/, '');
  const policyOk = new Map<string, boolean>();
  const policyExists = (name: string): boolean => {
    let ok = policyOk.get(name);
    if (ok === undefined) {
      try {
        createDeidentifier({ keys: deps.deidKeys, clock: deps.clock }, { policy: name });
        ok = true;
      } catch {
        ok = false;
      }
      policyOk.set(name, ok);
    }
    return ok;
  };

  const requireAccess = (req: Request, res: Response): AccessContext => {
    res.setHeader('Cache-Control', 'no-store');
    const access = accessOf(req, res);
    if (!access) throw httpError(401, 'login', 'Authentication required');
    return access;
  };

  /** The export, if it belongs to this client and is still visible. */
  const ownExport = async (access: AccessContext, id: string): Promise<ExportRecord> => {
    if (!EXPORT_ID_RE.test(id)) throw NOT_FOUND();
    const rec = await deps.exports.get(id);
    if (!rec || rec.issuer !== access.issuer || rec.clientId !== access.clientId) throw NOT_FOUND();
    if (rec.state === 'cancelled' || rec.state === 'expired') throw NOT_FOUND();
    if (rec.expiresAt && rec.expiresAt.getTime() <= deps.clock.now().getTime()) throw NOT_FOUND();
    return rec;
  };

  const kickoff = (level: ExportLevel) => async (req: Request, res: Response): Promise<void> => {
    const access = requireAccess(req, res);
    const q = req.originalUrl.indexOf('?');
    const rawQuery = q < 0 ? '' : req.originalUrl.slice(q + 1);
    const params = parseKickoff({ pairs: formPairs(rawQuery), prefer: req.get('prefer') ?? '', level, access, baseUrl, policyExists });
    let groupId: string | undefined;
    let groupVersion: string | undefined;
    if (level === 'group') {
      groupId = (req.params as { id: string }).id;
      if (!ID_RE.test(groupId)) throw httpError(400, 'invalid', 'Invalid resource id');
      if (!mayReadGroup(access.scopes)) throw httpError(403, 'forbidden', 'Group export requires system read access to Group');
      // The Group's membership selects whose data is exported (each resource is still gated); it
      // is read unscoped because a Group names many patients and is not any one patient's data.
      const group = await deps.store.search.readCurrent('Group', groupId);
      if (!group || group.deleted || !group.resource) throw httpError(404, 'not-found', 'Resource not found');
      groupVersion = group.versionId;
    }
    if ((await deps.exports.countActive(access.issuer, access.clientId)) >= (deps.maxActivePerClient ?? DEFAULT_MAX_ACTIVE)) {
      throw httpError(429, 'throttled', 'Too many exports in progress for this client', { 'Retry-After': '60' });
    }
    const id = randomUUID();
    const requestUrl = `${baseUrl}${req.path}${rawQuery ? `?${rawQuery}` : ''}`;
    await deps.exports.create({
      id,
      issuer: access.issuer,
      clientId: access.clientId,
      level,
      ...(groupId !== undefined ? { groupId } : {}),
      ...(groupVersion !== undefined ? { groupVersion } : {}),
      requestUrl,
      params,
      access: persistAccess(access),
      transactionTime: deps.clock.now(),
    });
    await deps.queues.enqueue('export', { exportId: id }, { jobId: exportJobId(id) });
    res
      .status(202)
      .setHeader('Content-Location', `${baseUrl}/$export-status/${id}`)
      .type(FHIR_JSON)
      .send(JSON.stringify({ resourceType: 'OperationOutcome', issue: [{ severity: 'information', code: 'informational', details: { text: 'Export accepted' } }] }));
  };

  router.get('/$export', deps.authenticate, kickoff('system'));
  router.get('/Patient/$export', deps.authenticate, kickoff('patient'));
  router.get('/Group/:id/$export', deps.authenticate, kickoff('group'));

  router.get('/$export-status/:exportId', deps.authenticate, async (req, res) => {
    const access = requireAccess(req, res);
    const rec = await ownExport(access, (req.params as { exportId: string }).exportId);
    switch (rec.state) {
      case 'accepted':
      case 'in-progress':
        res
          .status(202)
          .setHeader('X-Progress', `${rec.state}: ${rec.exported} resources written`)
          .setHeader('Retry-After', String(RETRY_AFTER_S))
          .end();
        return;
      case 'completed': {
        if (rec.expiresAt) res.setHeader('Expires', rec.expiresAt.toUTCString());
        res.status(200).type('application/json').send(JSON.stringify(rec.manifest as BulkManifest));
        return;
      }
      default:
        // failed: a generic OperationOutcome (the log has the details).
        throw httpError(500, 'exception', rec.error ?? 'The export failed');
    }
  });

  router.delete('/$export-status/:exportId', deps.authenticate, async (req, res) => {
    const access = requireAccess(req, res);
    const rec = await ownExport(access, (req.params as { exportId: string }).exportId);
    if (!(await deps.exports.cancel(rec.id))) throw NOT_FOUND();
    // A running job notices at its next page and removes what it wrote after this.
    await rm(exportDirectory(deps.exportDir, rec.id), { recursive: true, force: true });
    res
      .status(202)
      .type(FHIR_JSON)
      .send(JSON.stringify({ resourceType: 'OperationOutcome', issue: [{ severity: 'information', code: 'informational', details: { text: 'Export cancelled' } }] }));
  });

  router.get('/$export-file/:exportId/:file', deps.authenticate, async (req, res) => {
    const access = requireAccess(req, res);
    const { exportId, file } = req.params as { exportId: string; file: string };
    const rec = await ownExport(access, exportId);
    if (rec.state !== 'completed' || !FILE_RE.test(file)) throw NOT_FOUND();
    const manifest = rec.manifest as BulkManifest;
    const listed = [...manifest.output, ...manifest.error].some((o) => o.url.endsWith(`/${exportId}/${file}`));
    if (!listed) throw NOT_FOUND();
    const full = path.join(exportDirectory(deps.exportDir, exportId), file);
    const st = await stat(full).catch(() => undefined);
    if (!st?.isFile()) throw NOT_FOUND();
    res.status(200).type(NDJSON).setHeader('Content-Length', String(st.size));
    await new Promise<void>((resolve, reject) => {
      const s = createReadStream(full);
      s.on('error', reject);
      res.on('close', resolve);
      s.pipe(res);
    });
  });

  return router;
}
