/**
 * FHIR type search (`GET [base]/{type}?...` and `POST [base]/{type}/_search`).
 *
 * Results are filtered by the repository before paging; `Bundle.total` appears only for
 * `_summary=count` and counts permitted resources only; `_include` / `_revinclude` go through the
 * same gate; `_elements` and `_summary=true|data` re-release the projection.
 *
 * @see http://hl7.org/fhir/R4/search.html
 */
import { summaryElementNames } from '../../normalize/index.js';
import { searchsetBundle, type BundleItem } from '../bundle.js';
import { parseSearch } from '../search-params.js';
import { encodePairs, type OperationContext, type OperationResult } from './context.js';

/** Type search. */
export async function searchOperation(ctx: OperationContext): Promise<OperationResult> {
  const { type } = ctx.params as { type: string };
  const query = parseSearch(type, ctx.pairs, { lenient: ctx.lenient, baseUrl: ctx.baseUrl });
  if (query.summaryCount) {
    const total = await ctx.repo.count(query);
    return { status: 200, body: searchsetBundle({ baseUrl: ctx.baseUrl, selfUrl: ctx.selfUrl, items: [], total, warnings: query.warnings }) };
  }
  const binding = `search|${type}|${encodePairs(query.canonical)}|${ctx.cursorBinding}`;
  const after = query.cursor !== undefined ? ctx.cursors.decode(query.cursor, binding) : undefined;
  const page = await ctx.repo.search(query, after);
  const included = query.include.length || query.revinclude.length ? await ctx.repo.includes(page.items, query) : [];
  const shape = (i: (typeof page.items)[number]): (typeof page.items)[number] => {
    if (query.elements) return ctx.repo.project(i, query.elements);
    if (query.summary === 'true') return ctx.repo.project(i, summaryElementNames(i.resource));
    if (query.summary === 'data') return ctx.repo.project(i, Object.keys(i.resource).filter((k) => k !== 'text'));
    return i;
  };
  const items: BundleItem[] = [
    ...page.items.map((i) => ({ resource: shape(i).resource, mode: 'match' as const })),
    ...included.map((i) => ({ resource: i.resource, mode: 'include' as const })),
  ];
  const nextUrl = page.next
    ? `${ctx.baseUrl}/${type}?${encodePairs([...query.canonical, ['_cursor', ctx.cursors.encode(page.next, binding)]])}`
    : undefined;
  return {
    status: 200,
    body: searchsetBundle({ baseUrl: ctx.baseUrl, selfUrl: ctx.selfUrl, items, ...(nextUrl ? { nextUrl } : {}), warnings: query.warnings }),
  };
}
