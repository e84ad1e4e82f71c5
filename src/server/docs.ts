/**
 * GET /openapi.json (the spec in openapi/openapi.yaml, as JSON) and /docs (rendered with the
 * swagger-ui-dist assets, served locally: no CDN, works offline).
 */
import { readFileSync } from 'node:fs';
import express, { Router } from 'express';
import { createRequire } from 'node:module';
import path from 'node:path';
import { parse } from 'yaml';

const SPEC_PATH = new URL('../../openapi/openapi.yaml', import.meta.url);

export function loadOpenApiSpec(): Record<string, unknown> {
  return parse(readFileSync(SPEC_PATH, 'utf8')) as Record<string, unknown>;
}

const INDEX_HTML = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fhir-anchor API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script></body></html>`;

const INIT_JS = `window.ui = SwaggerUIBundle({ url: '/openapi.json', dom_id: '#swagger-ui', deepLinking: true });`;

export function createDocsRouter(): Router {
  const spec = loadOpenApiSpec();
  const require = createRequire(import.meta.url);
  const assets = path.dirname(require.resolve('swagger-ui-dist/package.json'));
  const router = Router();
  router.get('/openapi.json', (_req, res) => {
    res.json(spec);
  });
  router.get('/docs', (_req, res) => {
    res.type('html').send(INDEX_HTML);
  });
  router.get('/docs/init.js', (_req, res) => {
    res.type('application/javascript').send(INIT_JS);
  });
  router.use('/docs/assets', express.static(assets, { index: false, fallthrough: true }));
  return router;
}
