/**
 * `Patient/{id}/$everything`: the Patient and every resource in its compartment that the request
 * may see, filtered before paging (`_count`, signed cursor). `_type` keeps the types listed (the
 * Patient only if listed), `_since` what was last updated at or after it (the Patient too). A Patient
 * the request may not see is a 404, like an absent one, whatever `_type` says. `start` / `end` keep the
 * resources whose care date (the clinical date consent's dataPeriod also reads: an Observation's
 * effective time, an Encounter's period, a Claim's billable period) overlaps them, and those with no
 * care date (an undated allergy is not dropped from a patient's record); the Patient is always kept.
 * Each page also carries, as `include` entries, the resources outside any compartment that its
 * matches reference.
 *
 * @see http://hl7.org/fhir/R4/patient-operation-everything.html
 */
import { httpError } from '../../platform/errors.js';
import { searchsetBundle } from '../bundle.js';
import { DEFAULT_COUNT, MAX_COUNT, TYPE_RE, dateRange } from '../search-params.js';
import { encodePairs, type OperationContext, type OperationResult } from './context.js';
import { NOT_FOUND } from './read.js';

/** `GET [base]/Patient/{id}/$everything` */
export async function everythingOperation(ctx: OperationContext): Promise<OperationResult> {
  const { id } = ctx.params as { id: string };
  let count = DEFAULT_COUNT;
  let cursor: string | undefined;
  let types: string[] | undefined;
  let since: { text: string; at: Date } | undefined;
  const care: { start?: { text: string; at: Date }; end?: { text: string; at: Date } } = {};
  for (const [k, v] of ctx.pairs) {
    if (k === '_count') {
      if (!/^\d{1,9}$/.test(v)) throw httpError(400, 'invalid', '_count must be a non-negative integer');
      count = Math.min(Number(v), MAX_COUNT);
    } else if (k === '_cursor') cursor = v;
    else if (k === '_type') {
      // Resource types to return (R4: a comma list; repeated, the lists add up).
      const list = v.split(',').map((t) => t.trim());
      if (list.length > 100 || !list.every((t) => TYPE_RE.test(t))) throw httpError(400, 'invalid', '_type must list resource types, separated by commas');
      types = [...new Set([...(types ?? []), ...list])].sort();
    } else if (k === '_since') {
      // An instant (R4); a date is read as its first moment.
      const at = dateRange(v)?.lo;
      if (!at || since) throw httpError(400, 'invalid', '_since must be one FHIR instant (or date)');
      since = { text: v, at };
    } else if (k === 'start' || k === 'end') {
      // Care dates (R4): from the start of `start` to the end of `end`, either open.
      const range = dateRange(v);
      if (!range || care[k]) throw httpError(400, 'invalid', `${k} must be one FHIR date`);
      care[k] = { text: v, at: k === 'start' ? range.lo : range.hi };
    } else if (k !== '_format' && k !== '_pretty' && !ctx.lenient) throw httpError(400, 'not-supported', `Unsupported $everything parameter: ${k.slice(0, 64)}`);
  }
  if (care.start && care.end && care.start.at >= care.end.at) throw httpError(400, 'invalid', 'start must not be after end');
  const kept: Array<[string, string]> = [
    ['_count', String(count)],
    ...(types ? [['_type', types.join(',')] as [string, string]] : []),
    ...(since ? [['_since', since.text] as [string, string]] : []),
    ...(care.start ? [['start', care.start.text] as [string, string]] : []),
    ...(care.end ? [['end', care.end.text] as [string, string]] : []),
  ];
  const binding = `everything|${id}|${encodePairs(kept)}|${ctx.cursorBinding}`;
  const after = cursor !== undefined ? ctx.cursors.decode(cursor, binding) : undefined;
  const page = await ctx.repo.everything(id, {
    count,
    ...(after ? { after } : {}),
    ...(types ? { types } : {}),
    ...(since ? { since: since.at } : {}),
    ...(care.start || care.end ? { care: { ...(care.start ? { from: care.start.at } : {}), ...(care.end ? { to: care.end.at } : {}) } } : {}),
  });
  if (!page) throw NOT_FOUND();
  // R4: also the resources the compartment's resources reference (practitioners, organisations, locations,
  // medications), page by page, as `include` entries.
  const referenced = await ctx.repo.referenced(page.items);
  const nextUrl = page.next ? `${ctx.baseUrl}/Patient/${id}/$everything?${encodePairs([...kept, ['_cursor', ctx.cursors.encode(page.next, binding)]])}` : undefined;
  return {
    status: 200,
    body: searchsetBundle({
      baseUrl: ctx.baseUrl,
      selfUrl: ctx.selfUrl,
      items: [...page.items.map((i) => ({ resource: i.resource, mode: 'match' as const })), ...referenced.map((i) => ({ resource: i.resource, mode: 'include' as const }))],
      ...(nextUrl ? { nextUrl } : {}),
    }),
  };
}
