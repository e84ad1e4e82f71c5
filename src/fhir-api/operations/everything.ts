/**
 * `Patient/{id}/$everything`: the Patient and every resource in its compartment that the request
 * may see, filtered before paging (`_count`, signed cursor). A Patient the request may not see is a
 * 404, like an absent one.
 *
 * @see http://hl7.org/fhir/R4/patient-operation-everything.html
 */
import { httpError } from '../../platform/errors.js';
import { searchsetBundle } from '../bundle.js';
import { DEFAULT_COUNT, MAX_COUNT } from '../search-params.js';
import { encodePairs, type OperationContext, type OperationResult } from './context.js';
import { NOT_FOUND } from './read.js';

/** `GET [base]/Patient/{id}/$everything` */
export async function everythingOperation(ctx: OperationContext): Promise<OperationResult> {
  const { id } = ctx.params as { id: string };
  let count = DEFAULT_COUNT;
  let cursor: string | undefined;
  for (const [k, v] of ctx.pairs) {
    if (k === '_count') {
      if (!/^\d{1,9}$/.test(v)) throw httpError(400, 'invalid', '_count must be a non-negative integer');
      count = Math.min(Number(v), MAX_COUNT);
    } else if (k === '_cursor') cursor = v;
    else if (k !== '_format' && k !== '_pretty' && !ctx.lenient) throw httpError(400, 'not-supported', `Unsupported $everything parameter: ${k.slice(0, 64)}`);
  }
  const binding = `everything|${id}|${count}|${ctx.cursorBinding}`;
  const after = cursor !== undefined ? ctx.cursors.decode(cursor, binding) : undefined;
  const page = await ctx.repo.everything(id, { count, ...(after ? { after } : {}) });
  if (!page) throw NOT_FOUND();
  const nextUrl = page.next
    ? `${ctx.baseUrl}/Patient/${id}/$everything?${encodePairs([['_count', String(count)], ['_cursor', ctx.cursors.encode(page.next, binding)]])}`
    : undefined;
  return {
    status: 200,
    body: searchsetBundle({
      baseUrl: ctx.baseUrl,
      selfUrl: ctx.selfUrl,
      items: page.items.map((i) => ({ resource: i.resource, mode: 'match' as const })),
      ...(nextUrl ? { nextUrl } : {}),
    }),
  };
}
