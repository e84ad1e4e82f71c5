/**
 * Trial recruitment feasibility: `GET /research/cohort-count?criteria=Type?search-params[&criteria=…]`
 * answers how many research-consenting patients match — a number only, never ids, with small cells
 * suppressed (fewer than {@link SMALL_CELL} → `"<11"`).
 *
 * - At most two criteria: one over `Patient` and/or one over another type (e.g.
 *   `Condition?code=http://snomed.info/sct|44054006`), in the search layer's syntax (the same
 *   parameters as `GET /fhir/R4/{type}`). A patient counts when the other-type criterion matches at
 *   least one of their resources that their research Consent releases, and (if given) the Patient
 *   criterion matches their Patient resource; the Patient resource must be released for research too.
 * - Requires an authenticated token whose purpose of use is research (HRESCH, BIORCH or CLINTRCH);
 *   no resource scopes are needed because no resource leaves the server. Audited (parameter names only).
 * - Research consent: the requester's research Consent decisions (scope `research`, deny overrides
 *   permit) or the research default, per matching resource.
 *
 * Mount at `/research` behind SMART authentication (the composition root's `researchRouter`).
 */
import { Router, type Request, type Response } from 'express';
import type { Resource } from '@medplum/fhirtypes';
import type { AccessContext, DisclosureRecorder } from '../fhir-api/access.js';
import { patientsOf } from '../fhir-api/repository.js';
import { formPairs, parseSearch, TYPE_RE } from '../fhir-api/search-params.js';
import type { Clock } from '../platform/clock.js';
import { httpError } from '../platform/errors.js';
import { extractIndexRows } from '../store/search-store.js';
import type { SearchClause, Store } from '../store/types.js';
import { createResearchGate } from './export/research-consent.js';
import { defaultAccessOf, isResearch } from './export/types.js';

/** Counts below this are reported as `"<11"` (the common small-cell rule, e.g. CMS cell-size suppression). */
export const SMALL_CELL = 11;
/** Rows examined per request at most; beyond that the request is refused as too costly. */
export const MAX_COHORT_EXAMINED = 200_000;
const PAGE = 500;

/** Dependencies of {@link createCohortRouter}. */
export interface CohortDeps {
  /** Unscoped store: counts only, nothing is disclosed but the (suppressed) number. */
  readonly store: Pick<Store, 'search'>;
  readonly recorder: DisclosureRecorder;
  /** Research decision when a patient has no applicable research Consent. */
  readonly researchConsentDefault: 'permit' | 'deny';
  readonly clock: Clock;
  /** Public FHIR base URL (absolute references under it are local). */
  readonly baseUrl: string;
  readonly accessOf?: (req: Request, res: Response) => AccessContext | undefined;
}

/** A count, or the suppressed marker. */
export type CohortCount = number | '<11';

/** Applies small-cell suppression. */
export function suppress(n: number): CohortCount {
  return n < SMALL_CELL ? '<11' : n;
}

function compartmentPatients(resource: Resource): string[] {
  if (resource.resourceType === 'Patient') return resource.id ? [resource.id] : [];
  return extractIndexRows(resource)
    .references.filter((r) => r.param === 'patient' && r.type === 'Patient')
    .map((r) => r.id);
}

/**
 * Counts research-consenting patients matching the criteria (exact; suppress before disclosing).
 *
 * @throws HttpError 400 for bad criteria or too costly a count
 */
export async function countCohort(
  deps: Pick<CohortDeps, 'store' | 'researchConsentDefault' | 'clock' | 'baseUrl'>,
  access: AccessContext,
  criteria: readonly string[],
): Promise<number> {
  const baseUrl = deps.baseUrl.replace(/\/+$/, '');
  if (criteria.length === 0 || criteria.length > 2) throw httpError(400, 'invalid', 'Give one or two criteria: criteria=Patient?… and/or criteria=Type?…');
  let patientClauses: readonly SearchClause[] | undefined;
  let other: { type: string; clauses: readonly SearchClause[] } | undefined;
  for (const c of criteria) {
    const q = c.indexOf('?');
    const type = q < 0 ? c : c.slice(0, q);
    if (!TYPE_RE.test(type)) throw httpError(400, 'invalid', 'Each criteria value must be Type?search-parameters');
    const pairs = q < 0 ? [] : formPairs(c.slice(q + 1));
    const parsed = parseSearch(type, pairs, { lenient: false, baseUrl });
    if (parsed.include.length || parsed.revinclude.length || parsed.chains.length || parsed.has.length || parsed.summaryCount || parsed.elements || parsed.cursor !== undefined) {
      throw httpError(400, 'not-supported', 'Criteria take search parameters only (no chains)');
    }
    if (type === 'Patient') {
      if (patientClauses) throw httpError(400, 'invalid', 'At most one Patient criterion');
      patientClauses = parsed.clauses;
    } else {
      if (other) throw httpError(400, 'invalid', 'At most one criterion over a type other than Patient');
      other = { type, clauses: parsed.clauses };
    }
  }
  const gate = createResearchGate({ search: deps.store.search, access, defaultDecision: deps.researchConsentDefault, localBases: [baseUrl], now: deps.clock.now() });
  let examined = 0;
  const charge = (n: number): void => {
    examined += n;
    if (examined > MAX_COHORT_EXAMINED) throw httpError(400, 'too-costly', 'Too many matches to count; narrow the criteria');
  };

  // Candidates from the other-type criterion: patients with a matching resource research may use.
  let candidates: Set<string> | undefined;
  if (other) {
    candidates = new Set();
    let afterId: string | undefined;
    for (;;) {
      const rows = await deps.store.search.search({ resourceType: other.type, clauses: other.clauses, limit: PAGE, ...(afterId !== undefined ? { afterId } : {}) });
      charge(rows.length);
      const resources = rows.flatMap((r) => (r.resource && !r.deleted ? [r.resource] : []));
      await gate.prepare(resources.flatMap((r) => patientsOf(r)));
      for (const r of resources) if (gate.decide(r).permit) for (const p of compartmentPatients(r)) candidates.add(p);
      if (rows.length < PAGE) break;
      afterId = rows[rows.length - 1]!.id;
    }
  }

  // Patients: their Patient resource must match (if a Patient criterion is given) and be released for research.
  let count = 0;
  const countPatients = async (clauses: SearchClause[]): Promise<void> => {
    let afterId: string | undefined;
    for (;;) {
      const rows = await deps.store.search.search({ resourceType: 'Patient', clauses, limit: PAGE, ...(afterId !== undefined ? { afterId } : {}) });
      charge(rows.length);
      const resources = rows.flatMap((r) => (r.resource && !r.deleted ? [r.resource] : []));
      await gate.prepare(resources.flatMap((r) => patientsOf(r)));
      for (const r of resources) if (gate.decide(r).permit) count += 1;
      if (rows.length < PAGE) return;
      afterId = rows[rows.length - 1]!.id;
    }
  };
  if (candidates) {
    const ids = [...candidates].sort();
    for (let i = 0; i < ids.length; i += PAGE) await countPatients([...(patientClauses ?? []), { kind: 'id', values: ids.slice(i, i + PAGE) }]);
  } else {
    await countPatients([...(patientClauses ?? [])]);
  }
  return count;
}

/**
 * Creates the cohort-count router (mount at `/research`, behind SMART authentication).
 *
 * @param deps - see {@link CohortDeps}
 */
export function createCohortRouter(deps: CohortDeps): Router {
  const router = Router();
  const accessOf = deps.accessOf ?? defaultAccessOf;
  router.get('/cohort-count', async (req: Request, res: Response) => {
    res.setHeader('Cache-Control', 'no-store');
    const access = accessOf(req, res);
    if (!access) throw httpError(401, 'login', 'Authentication required');
    if (!isResearch(access)) throw httpError(403, 'forbidden', 'Cohort counts need an access token with a research purpose of use (HRESCH)');
    const q = req.originalUrl.indexOf('?');
    const pairs = formPairs(q < 0 ? '' : req.originalUrl.slice(q + 1));
    const unknown = pairs.find(([n]) => n !== 'criteria');
    if (unknown) throw httpError(400, 'not-supported', `Unsupported parameter: ${unknown[0].slice(0, 64)}`);
    const n = await countCohort(deps, access, pairs.map(([, v]) => v));
    const count = suppress(n);
    // Audited before answering: who asked, why, and which parameters (names only; values may be clinical).
    await deps.recorder.record({
      context: access,
      interaction: '$cohort-count',
      entities: [],
      outcome: 'permit',
      policy: ['urn:fhir-anchor:policy:research-consent', 'urn:fhir-anchor:policy:small-cell-suppression'],
      breakGlass: false,
      query: `${req.baseUrl}${req.path}`,
      at: deps.clock.now(),
    });
    res
      .status(200)
      .type('application/fhir+json; charset=utf-8')
      .send(
        JSON.stringify({
          resourceType: 'Parameters',
          parameter: [
            typeof count === 'number' ? { name: 'count', valueInteger: count } : { name: 'count', valueString: count },
            { name: 'suppressed', valueBoolean: typeof count !== 'number' },
            { name: 'threshold', valueInteger: SMALL_CELL },
          ],
        }),
      );
  });
  return router;
}
