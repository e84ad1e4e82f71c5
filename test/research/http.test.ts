/** POST /research/$deidentify: resources, Bundles, NDJSON, and OperationOutcome errors. */
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import express from 'express';
import type { Bundle, OperationOutcome, Patient } from '@medplum/fhirtypes';
import { createLogger } from '../../src/platform/logger.js';
import { errorHandler } from '../../src/server/errors.js';
import { createDeidRouter, loadPolicy } from '../../src/research/index.js';

let server: Server;
let base: string;

beforeAll(async () => {
  const app = express();
  // Built-in policies plus two leaky ones (they only hash ids) in a private policy folder.
  const dir = await mkdtemp(path.join(tmpdir(), 'deid-policies-'));
  for (const name of ['safe-harbor', 'safe-harbor-dateshift']) await writeFile(path.join(dir, `${name}.json`), JSON.stringify(loadPolicy(name)));
  for (const mode of ['raise', 'skip']) {
    await writeFile(path.join(dir, `leaky-${mode}.json`), JSON.stringify({ processingErrors: mode, fhirPathRules: [{ path: 'Resource.id', method: 'cryptoHash' }] }));
  }
  const config = { keys: { cryptoHashKey: 'http-key', dateShiftKey: 'http-date' }, policiesDir: pathToFileURL(`${dir}/`) };
  app.use('/research', createDeidRouter({ config, bodyLimitBytes: 1_000_000 }));
  app.use(errorHandler(createLogger('silent')));
  server = app.listen(0);
  await new Promise((r) => server.once('listening', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/research/$deidentify`;
});
afterAll(() => new Promise((r) => server.close(r)));

const patient: Patient = { resourceType: 'Patient', id: 'p1', name: [{ family: 'Doe', given: ['Jane'] }], birthDate: '1980-04-05', identifier: [{ value: 'MRN-77' }] };
const post = (body: string, type = 'application/fhir+json', query = '') => fetch(`${base}${query}`, { method: 'POST', headers: { 'content-type': type }, body });

describe('POST /research/$deidentify', () => {
  it('de-identifies one resource with the default policy', async () => {
    const res = await post(JSON.stringify(patient));
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/application\/fhir\+json/);
    const out = (await res.json()) as Patient;
    expect(out.birthDate).toBe('1980');
    expect(JSON.stringify(out)).not.toMatch(/Doe|Jane|MRN-77|"p1"/);
  });

  it('answers a Bundle with a Bundle', async () => {
    const bundle: Bundle = { resourceType: 'Bundle', type: 'collection', entry: [{ resource: patient }] };
    const res = await post(JSON.stringify(bundle), 'application/json', '?policy=safe-harbor-dateshift');
    expect(res.status).toBe(200);
    const out = (await res.json()) as Bundle;
    expect(out.entry?.[0]?.resource?.resourceType).toBe('Patient');
    expect(res.headers.get('x-deid-dropped')).toBe('0');
  });

  it('answers NDJSON with NDJSON', async () => {
    const res = await post(`${JSON.stringify(patient)}\n${JSON.stringify({ ...patient, id: 'p2' })}\n`, 'application/fhir+ndjson');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/application\/fhir\+ndjson/);
    const lines = (await res.text()).trim().split('\n').map((l) => JSON.parse(l) as Patient);
    expect(lines).toHaveLength(2);
    expect(lines[0]!.id).not.toBe(lines[1]!.id);
  });

  it.each([
    ['not JSON', '{nope', 'application/fhir+json', '', 400],
    ['not a resource', '[1,2]', 'application/fhir+json', '', 400],
    ['empty body', '', 'application/fhir+json', '', 400],
    ['bad NDJSON line', '{"resourceType":"Patient"}\n{x', 'application/fhir+ndjson', '', 400],
    ['unknown policy', JSON.stringify(patient), 'application/fhir+json', '?policy=nope', 400],
    ['malformed policy', JSON.stringify(patient), 'application/fhir+json', '?policy=../../x', 400],
    ['nested deeper than 64 levels', `{"resourceType":"Patient","id":"d","extension":${'['.repeat(100_000)}${']'.repeat(100_000)}}`, 'application/fhir+json', '', 400],
    ['a duplicated property name', '{"resourceType":"Patient","id":"d","birthDate":"1970-01-01","birthDate":"1980-01-01"}', 'application/fhir+json', '', 400],
    ['unsupported type', 'x', 'text/csv', '', 415],
    ['too large', JSON.stringify({ resourceType: 'Patient', id: 'x'.repeat(1_100_000) }), 'application/fhir+json', '', 413],
  ])('%s → %i OperationOutcome', async (_name, body, type, query, status) => {
    const res = await post(body, type, query);
    expect(res.status).toBe(status);
    const oo = (await res.json()) as OperationOutcome;
    expect(oo.resourceType).toBe('OperationOutcome');
  });

  it('a resource the policy refuses (safety net, raise or skip) → 422 naming paths, not values', async () => {
    for (const policy of ['leaky-raise', 'leaky-skip']) {
      const res = await post(JSON.stringify(patient), 'application/fhir+json', `?policy=${policy}`);
      expect(res.status).toBe(422);
      const text = await res.text();
      expect(text).toContain('Patient.name[0].family');
      expect(text).not.toMatch(/Doe|Jane|MRN-77/);
    }
  });
});
