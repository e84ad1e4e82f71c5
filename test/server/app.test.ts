/**
 * The HTTP surface of the foundation, against the real PostgreSQL and Redis (production mode) through
 * the composition root.
 */
import fc from 'fast-check';
import type { Config } from '../../src/config/index.js';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { startService, withBoundPort, type RunningService } from '../../src/runtime.js';
import { cleanupConfig, json, silentLogger, testConfig } from '../helpers/env.js';

const ADMIN = 'test-admin-token-0123456789abcdef0123456789';

describe.each([['redis' as const], ['postgres' as const]])('HTTP app (queues on %s)', (queueBackend) => {
  let config: Config;
  let service: RunningService;
  let base: string;

  beforeAll(async () => {
    config = testConfig({ BODY_LIMIT_BYTES: '4096' }, queueBackend);
    service = await startService({ config, roles: { api: true, workers: true }, logger: silentLogger });
    base = service.url!;
  });

  afterAll(async () => {
    await service.close();
    await cleanupConfig(config);
  });

  const get = (path: string, headers: Record<string, string> = {}) => fetch(base + path, { headers });

  it('publishes the port it bound under PORT=0 (SMART endpoints, CapabilityStatement, Bundle links)', async () => {
    const port = new URL(base).port;
    expect(port).not.toBe('0');
    const smart = (await (await get('/.well-known/smart-configuration')).json()) as { token_endpoint: string };
    expect(new URL(smart.token_endpoint).port).toBe(port);
    const cap = (await (await get('/fhir/R4/metadata')).json()) as { implementation?: { url?: string } };
    expect(cap.implementation?.url).toContain(`:${port}/`);
  });

  it('GET /healthz answers 200', async () => {
    const res = await get('/healthz');
    expect(res.status).toBe(200);
    expect(await json(res)).toEqual({ status: 'ok' });
  });

  it('GET /readyz reports database, queue and the integrity log up', async () => {
    const res = await get('/readyz');
    expect(res.status).toBe(200);
    const oo = await json(res);
    expect(oo.resourceType).toBe('OperationOutcome');
    expect(oo.issue.map((i: { expression: string[] }) => i.expression[0])).toEqual(['database', 'queue', 'integrity-log', 'integrity-audit']);
  });

  it('GET /fhir/R4/metadata serves a truthful R4 CapabilityStatement', async () => {
    const res = await get('/fhir/R4/metadata');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/fhir\+json/);
    const cs = await json(res);
    expect(cs).toMatchObject({ resourceType: 'CapabilityStatement', fhirVersion: '4.0.1', kind: 'instance', status: 'active' });
    expect(cs.rest[0].mode).toBe('server');
    // Nothing is claimed that this build does not implement.
    for (const r of cs.rest[0].resource) expect(r.interaction?.length ?? 0).toBeGreaterThan(0);
  });

  it('GET /metrics exposes HTTP latency histograms and queue depths', async () => {
    await get('/healthz');
    const text = await (await get('/metrics')).text();
    expect(text).toContain('fhir_anchor_http_request_duration_seconds_bucket{');
    expect(text).toMatch(/fhir_anchor_queue_jobs\{queue="ingest",state="waiting"\} \d+/);
    expect(text).toContain('fhir_anchor_job_duration_seconds');
  });

  it('GET /openapi.json and /docs serve the spec', async () => {
    const spec = await json(await get('/openapi.json'));
    expect(spec.openapi).toBe('3.1.0');
    expect(Object.keys(spec.paths)).toEqual(expect.arrayContaining(['/healthz', '/readyz', '/admin/stats']));
    const docs = await get('/docs');
    expect(docs.status).toBe(200);
    expect(await docs.text()).toContain('swagger-ui');
    expect((await get('/docs/assets/swagger-ui-bundle.js')).status).toBe(200);
  });

  it('protects /admin with the admin token (Bearer or Basic password)', async () => {
    const none = await get('/admin/stats');
    expect(none.status).toBe(401);
    expect(none.headers.get('www-authenticate')).toContain('Bearer');
    expect((await json(none)).resourceType).toBe('OperationOutcome');
    expect((await get('/admin/stats', { authorization: 'Bearer wrong' })).status).toBe(401);
    expect((await get('/admin/stats', { authorization: `Bearer ${ADMIN}x` })).status).toBe(401);
    const ok = await get('/admin/stats', { authorization: `Bearer ${ADMIN}` });
    expect(ok.status).toBe(200);
    const stats = await json(ok);
    expect(stats).toMatchObject({ resources: [], inbox: [] });
    expect(Array.isArray(stats.searchReindexPending) && stats.searchReindexPending.every((t: unknown) => typeof t === 'string')).toBe(true);
    expect(stats.queues.map((q: { queue: string }) => q.queue)).toEqual(['ingest', 'integrity', 'export']);
    const basic = Buffer.from(`admin:${ADMIN}`).toString('base64');
    const board = await get('/admin/queues', { authorization: `Basic ${basic}` });
    expect(board.status).toBe(200);
    expect(board.headers.get('content-type')).toMatch(/text\/html/);
    expect((await get('/admin/queues')).status).toBe(401);
  });

  it('answers unknown routes with a 404 OperationOutcome', async () => {
    for (const path of ['/nope', '/fhir/R4/Patient/1/_nope/x/y', '/admin/nope']) {
      const res = await get(path, { authorization: `Bearer ${ADMIN}` });
      expect(res.status).toBe(404);
      expect((await json(res)).issue[0].code).toBe('not-found');
    }
  });

  it('negotiates the format: FHIR JSON only, 406 for another format or FHIR version, 415 for a body that is not JSON', async () => {
    for (const [path, headers] of [
      ['/fhir/R4/metadata?_format=xml', {}],
      ['/fhir/R4/metadata?_format=application/fhir%2Bxml', {}],
      ['/fhir/R4/Patient/p1?_format=ttl', {}],
      ['/fhir/R4/metadata', { accept: 'application/fhir+xml' }],
      ['/fhir/R4/metadata', { accept: 'application/fhir+json; fhirVersion=3.0' }],
      ['/fhir/R4/metadata', { accept: 'application/fhir+json;q=0, application/json;q=0, */*;q=0.1, application/json+fhir;q=0' }],
      ['/fhir/R4/metadata?_format=application/fhir%2Bjson;%20fhirVersion=5.0', {}],
    ] as Array<[string, Record<string, string>]>) {
      const res = await get(path, headers);
      expect([path, res.status]).toEqual([path, 406]);
      const oo = await json(res);
      expect(oo.resourceType).toBe('OperationOutcome');
      expect(oo.issue[0].code).toBe('not-supported');
    }
    for (const [path, headers] of [
      ['/fhir/R4/metadata?_format=json', {}],
      ['/fhir/R4/metadata?_format=application/fhir%2Bjson', {}],
      ['/fhir/R4/metadata?_format=application/fhir+json', {}],
      ['/fhir/R4/metadata', { accept: 'application/fhir+json; fhirVersion=4.0' }],
      ['/fhir/R4/metadata', { accept: 'application/fhir+xml;q=1, application/json;q=0.5' }],
      ['/fhir/R4/metadata', { accept: 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8' }],
      ['/fhir/R4/metadata', { accept: 'application/json+fhir' }],
    ] as Array<[string, Record<string, string>]>) {
      const res = await get(path, headers);
      expect([path, headers, res.status]).toEqual([path, headers, 200]);
      expect(res.headers.get('content-type')).toMatch(/^application\/fhir\+json/);
    }
    // A Bulk Data file download answers NDJSON: asking for it is not refused here (it is a 401 without a token).
    expect((await get('/fhir/R4/$export-file/x/Patient.ndjson', { accept: 'application/fhir+ndjson' })).status).toBe(401);
    expect((await get('/fhir/R4/Patient/p1', { accept: 'application/fhir+ndjson' })).status).toBe(406);
    const xml = await fetch(base + '/fhir/R4/Consent', { method: 'POST', headers: { 'content-type': 'application/fhir+xml' }, body: '<Consent xmlns="http://hl7.org/fhir"/>' });
    expect(xml.status).toBe(415);
    expect((await json(xml)).issue[0].details.text).toMatch(/application\/fhir\+json/);
  });

  it('answers malformed JSON with 400, oversized bodies with 413, bad charsets with 415', async () => {
    const post = (body: string | Buffer, contentType: string) =>
      fetch(base + '/fhir/R4/Patient', { method: 'POST', headers: { 'content-type': contentType }, body });
    const malformed = await post('{"resourceType": "Patient",', 'application/fhir+json');
    expect(malformed.status).toBe(400);
    expect((await json(malformed)).issue[0].details.text).toBe('Request body is not valid JSON');
    const big = await post(JSON.stringify({ resourceType: 'Patient', text: 'x'.repeat(10_000) }), 'application/json');
    expect(big.status).toBe(413);
    expect((await json(big)).issue[0].code).toBe('too-long');
    const charset = await post('{}', 'application/json; charset=klingon');
    expect(charset.status).toBe(415);
  });

  it.each<[string, string, string, RegExp]>([
    ['a source whose name holds NUL', '/admin/sources', '{"id":"nul-src","name":"a\\u0000b","baseUrl":"https://x.example/fhir","hookAuth":{"bearerToken":"0123456789abcdef0123"}}', /^body\.name: contains U\+0000/],
    ['a source whose name holds a lone surrogate', '/admin/sources', '{"id":"sur-src","name":"a\\ud800b","baseUrl":"https://x.example/fhir","hookAuth":{"bearerToken":"0123456789abcdef0123"}}', /^body\.name: contains a lone UTF-16 surrogate/],
    ['a client whose name holds a lone surrogate', '/admin/clients', '{"id":"sur-client","name":"a\\udc00","jwksUrl":"https://x.example/jwks","allowedScopes":["system/*.rs"]}', /^body\.name: contains a lone UTF-16 surrogate/],
    ['a number beyond a double', '/admin/sources', '{"id":"num-src","name":"n","baseUrl":"https://x.example/fhir","rateLimitPerSecond":1e400,"hookAuth":{"bearerToken":"0123456789abcdef0123"}}', /^body\.rateLimitPerSecond: number is out of range/],
    ['a duplicated property name', '/admin/sources', '{"id":"dup-src","name":"n","baseUrl":"https://x.example/fhir","hookAuth":{"bearerToken":"0123456789abcdef0123","bearerToken":"fedcba9876543210fedc"}}', /^body\.hookAuth\.bearerToken: duplicate JSON property "bearerToken"/],
  ])('refuses %s with 400 naming where (not a 500 from PostgreSQL, not a silently changed value)', async (_label, path, body, message) => {
    const res = await fetch(base + path, { method: 'POST', headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' }, body });
    expect(res.status).toBe(400);
    const oo = await json(res);
    expect(oo.issue[0].details.text).toMatch(message);
    expect(oo.issue[0].expression[0]).toMatch(/^body\./);
    const id = (JSON.parse(body.replace(/\\u[0-9a-f]{4}/g, '').replace('1e400', '1')) as { id: string }).id;
    expect((await get(`${path}/${id}`, { authorization: `Bearer ${ADMIN}` })).status).toBe(404);
  });

  it('refuses JSON nested deeper than 64 levels with 400, on the admin and the FHIR API alike (not a 500 from a walk that recursed)', async () => {
    const deep = `{"id":"deep","name":${'['.repeat(1500)}${']'.repeat(1500)}}`;
    for (const path of ['/admin/sources', '/fhir/R4/Consent']) {
      const res = await fetch(base + path, { method: 'POST', headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' }, body: deep });
      expect([path, res.status]).toEqual([path, 400]);
      expect((await json(res)).issue[0].details.text).toBe('JSON nesting deeper than 64 levels');
    }
  });

  it('refuses an admin body that is not UTF-8 with 400 instead of storing U+FFFD in its place', async () => {
    const body = Buffer.concat([Buffer.from('{"id":"latin1-src","name":"M'), Buffer.from([0xfc]), Buffer.from('ller","baseUrl":"https://x.example/fhir","hookAuth":{"bearerToken":"0123456789abcdef0123"}}')]);
    const res = await fetch(base + '/admin/sources', { method: 'POST', headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' }, body });
    expect(res.status).toBe(400);
    expect((await json(res)).issue[0].details.text).toMatch(/not valid UTF-8/);
    expect((await get('/admin/sources/latin1-src', { authorization: `Bearer ${ADMIN}` })).status).toBe(404);
    // The same in UTF-8 is accepted.
    const ok = await fetch(base + '/admin/sources', { method: 'POST', headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json; charset=utf-8' }, body: Buffer.from(body.toString('latin1')) });
    expect(ok.status).toBe(201);
    expect((await json(ok)).name).toBe('Müller');
  });

  it.each(['/admin/dead-letters?source=%00', '/admin/sources/%00', '/fhir/R4/Patient/a%00b', '/fhir/R4/Observation?patient=%00'])(
    'refuses a URL carrying NUL (%s) with 400, not a 500 from PostgreSQL',
    async (path) => {
      const res = await get(path, { authorization: `Bearer ${ADMIN}` });
      expect(res.status).toBe(400);
      expect((await json(res)).issue[0].details.text).toMatch(/must not contain NUL/);
    },
  );

  it('never answers 5xx or a stack trace to arbitrary requests (property)', async () => {
    const paths = ['/healthz', '/readyz', '/metrics', '/fhir/R4/metadata', '/fhir/R4/Patient', '/admin/stats', '/admin/queues', '/nope', '/openapi.json'];
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...paths),
        fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'PATCH'),
        fc.constantFrom('application/json', 'application/fhir+json', 'text/plain', 'application/octet-stream', 'application/x-www-form-urlencoded'),
        fc.oneof(fc.uint8Array({ maxLength: 600 }), fc.string({ maxLength: 300 }).map((s) => Buffer.from(s, 'utf8'))),
        fc.boolean(),
        async (path, method, contentType, body, auth) => {
          const res = await fetch(base + path, {
            method,
            headers: { 'content-type': contentType, ...(auth ? { authorization: `Bearer ${ADMIN}` } : {}) },
            body: method === 'GET' ? undefined : body,
          });
          const text = await res.text();
          expect(res.status).toBeLessThan(500);
          expect(text).not.toMatch(/at .*\.(ts|js):\d+/);
          if (res.status >= 400) expect(JSON.parse(text).resourceType).toBe('OperationOutcome');
        },
      ),
      { numRuns: 120 },
    );
  });

  it('reports a down database on /readyz with 503 and names it', async () => {
    // Last test: close the pool underneath the running service.
    await service.database.store.close();
    const res = await get('/readyz');
    expect(res.status).toBe(503);
    expect(res.headers.get('retry-after')).toBe('5');
    const oo = await json(res);
    const down = oo.issue.filter((i: { severity: string }) => i.severity === 'error');
    expect(down.map((i: { expression: string[] }) => i.expression[0])).toContain('database');
  });
});

describe('the HTTP port', () => {
  it('is taken before anything starts: a port in use fails fast and leaves nothing running', async () => {
    const blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', () => resolve()));
    const port = (blocker.address() as AddressInfo).port;
    const config = testConfig({ PORT: String(port), HOST: '127.0.0.1' });
    try {
      await expect(startService({ config, roles: { api: true, workers: false }, logger: silentLogger })).rejects.toThrow(/EADDRINUSE/);
    } finally {
      await new Promise<void>((resolve) => blocker.close(() => resolve()));
      await cleanupConfig(config);
    }
  });

  it('withBoundPort replaces port 0 only', () => {
    const config = testConfig();
    expect(config.http.publicBaseUrl).toMatch(/:0$/);
    expect(withBoundPort(config, 4321).http.publicBaseUrl).toBe(config.http.publicBaseUrl.replace(/:0$/, ':4321'));
    const explicit = testConfig({ PUBLIC_BASE_URL: 'https://anchor.example.org/base/' });
    expect(withBoundPort(explicit, 4321).http.publicBaseUrl).toBe('https://anchor.example.org/base');
    expect(withBoundPort(explicit, 4321)).toBe(explicit);
  });
});
