/**
 * FHIR `read`, `vread` and instance `_history`.
 *
 * A resource that is absent, deleted or denied by scopes or consent answers the same 404 (same
 * status, headers and body); only the audit knows which it was. A conditional read
 * (`If-None-Match: W/"{versionId}"`, or `If-Modified-Since`) whose copy is current answers 304 with
 * no body, after the same gate and the same audit as a read: a denied resource is still a 404.
 *
 * @see http://hl7.org/fhir/R4/http.html#read
 */
import { httpError } from '../../platform/errors.js';
import { historyBundle } from '../bundle.js';
import { DEFAULT_COUNT, MAX_COUNT } from '../search-params.js';
import { encodePairs, notModified, versionHeaders, type OperationContext, type OperationResult } from './context.js';

/** The one not-found answer (absent and denied must look alike). */
export const NOT_FOUND = (): Error => httpError(404, 'not-found', 'Resource not found');

/** `GET [base]/{type}/{id}` */
export async function readOperation(ctx: OperationContext): Promise<OperationResult> {
  const { type, id } = ctx.params as { type: string; id: string };
  const item = await ctx.repo.read(type, id);
  if (!item) throw NOT_FOUND();
  if (notModified(item.resource, ctx.conditions)) return { status: 304, headers: versionHeaders(item.resource) };
  return { status: 200, body: item.resource, headers: versionHeaders(item.resource) };
}

/** `GET [base]/{type}/{id}/_history/{vid}` */
export async function vreadOperation(ctx: OperationContext): Promise<OperationResult> {
  const { type, id, vid } = ctx.params as { type: string; id: string; vid: string };
  const item = await ctx.repo.vread(type, id, vid);
  if (!item) throw NOT_FOUND();
  if (notModified(item.resource, ctx.conditions)) return { status: 304, headers: versionHeaders(item.resource) };
  return { status: 200, body: item.resource, headers: versionHeaders(item.resource) };
}

/** `GET [base]/{type}/{id}/_history` with `_count` and a signed cursor. */
export async function historyOperation(ctx: OperationContext): Promise<OperationResult> {
  const { type, id } = ctx.params as { type: string; id: string };
  let count = DEFAULT_COUNT;
  let cursor: string | undefined;
  for (const [k, v] of ctx.pairs) {
    if (k === '_count') {
      if (!/^\d{1,9}$/.test(v)) throw httpError(400, 'invalid', '_count must be a non-negative integer');
      count = Math.min(Number(v), MAX_COUNT);
    } else if (k === '_cursor') cursor = v;
    else if (k !== '_format' && k !== '_pretty' && !ctx.lenient) throw httpError(400, 'not-supported', `Unsupported _history parameter: ${k.slice(0, 64)}`);
  }
  const binding = `history|${type}|${id}|${count}|${ctx.cursorBinding}`;
  const before = cursor !== undefined ? ctx.cursors.decode(cursor, binding) : undefined;
  const page = await ctx.repo.history(type, id, { count, ...(before ? { before } : {}) });
  if (!page) throw NOT_FOUND();
  const base = `${ctx.baseUrl}/${type}/${id}/_history`;
  const nextUrl = page.next ? `${base}?${encodePairs([['_count', String(count)], ['_cursor', ctx.cursors.encode(page.next, binding)]])}` : undefined;
  return {
    status: 200,
    body: historyBundle({ baseUrl: ctx.baseUrl, selfUrl: ctx.selfUrl, versions: page.items.map((i) => i.resource), ...(nextUrl ? { nextUrl } : {}) }),
  };
}
