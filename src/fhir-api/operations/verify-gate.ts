/**
 * `$verify` discloses a version's salt, which is as sensitive as the record (it un-hides the
 * commitment), so it is gated like a read: the requester's SMART scopes and the patient's consent
 * must permit reading that version, or the answer is the same 404 as for an absent resource. The
 * disclosure (or denial) is audited. The integrity router behind this gate then builds the proof.
 */
import { Router, type RequestHandler } from 'express';
import type { AccessContext } from '../access.js';
import { createScopedRepository, type FhirApiDeps } from '../repository.js';
import { NOT_FOUND } from './read.js';

export function createVerifyGate(deps: FhirApiDeps & { readonly authenticate: RequestHandler }): Router {
  const router = Router();
  const gate: RequestHandler = async (req, res, next) => {
    const { type, id, vid } = req.params as { type: string; id: string; vid?: string };
    const access = (res.locals as { access?: AccessContext }).access;
    if (!access) throw NOT_FOUND();
    const repo = createScopedRepository(access, deps);
    const found = vid === undefined ? await repo.read(type, id) : await repo.vread(type, id, vid);
    await repo.flushAudit('$verify', req.originalUrl.slice(0, 500));
    if (!found) throw NOT_FOUND();
    next();
  };
  router.get('/:type/:id/$verify', deps.authenticate, gate);
  router.get('/:type/:id/_history/:vid/$verify', deps.authenticate, gate);
  return router;
}
