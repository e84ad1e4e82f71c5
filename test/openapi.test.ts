/** The types generated from openapi/ (npm run gen) must match the spec; a stale file fails here. */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import openapiTS, { astToString } from 'openapi-typescript';

const root = new URL('../', import.meta.url);

describe('openapi', () => {
  it('src/generated/openapi.ts is up to date with openapi/openapi.yaml (run `npm run gen`)', async () => {
    const ast = await openapiTS(new URL('openapi/openapi.yaml', root));
    const fresh = astToString(ast);
    const committed = readFileSync(fileURLToPath(new URL('src/generated/openapi.ts', root)), 'utf8');
    const body = (s: string): string => s.replace(/^\/\*\*[\s\S]*?\*\/\s*/, '').trim();
    expect(body(committed)).toBe(body(fresh));
  });

  it('documents every non-FHIR route the app serves', async () => {
    const { parse } = await import('yaml');
    const spec = parse(readFileSync(fileURLToPath(new URL('openapi/openapi.yaml', root)), 'utf8')) as { paths: Record<string, unknown> };
    for (const p of ['/healthz', '/readyz', '/metrics', '/openapi.json', '/docs', '/admin/stats', '/admin/queues', '/fhir/R4/metadata', '/fhir/R4/{type}', '/fhir/R4/Patient/{id}/$everything', '/hooks/{sourceId}', '/hooks/{sourceId}/{type}/{id}', '/admin/sources', '/admin/sources/{sourceId}', '/admin/sources/{sourceId}/status', '/admin/sources/{sourceId}/subscriptions/check', '/admin/inbox/{inboxId}', '/admin/dead-letters', '/admin/dead-letters/{deadLetterId}/replay', '/ledger/checkpoint', '/ledger/key', '/ledger/consistency', '/ledger/anchors']) {
      expect(Object.keys(spec.paths)).toContain(p);
    }
  });
});
