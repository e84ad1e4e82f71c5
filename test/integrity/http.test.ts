import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import express from 'express';
import { Command } from 'commander';
import { Registry } from 'prom-client';
import { createIntegrityStage, type IntegrityStage } from '../../src/integrity/index.js';
import { registerVerifyCommand } from '../../src/integrity/cli-verify.js';
import { verifyOffline } from '../../src/integrity/verifier.js';
import { decodeBase64Strict } from '../../src/integrity/encoding.js';
import { verifyConsistency } from '../../src/integrity/merkle.js';
import { openCheckpoint } from '../../src/integrity/checkpoint.js';
import { parseVerifierKey } from '../../src/integrity/note.js';
import { errorHandler, notFoundHandler } from '../../src/server/errors.js';
import { silentLogger } from '../helpers/env.js';
import { ORIGIN, openIntegrityEnv, type IntegrityEnv } from './integrity-env.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Json = any;

function param(body: Json, name: string): Json {
  return body.parameter.find((p: Json) => p.name === name);
}

describe('integrity HTTP: /ledger, $verify and the offline verifier', () => {
  let env: IntegrityEnv;
  let stage: IntegrityStage;
  let server: Server;
  let base: string;

  beforeAll(async () => {
    env = await openIntegrityEnv();
    stage = await createIntegrityStage({
      options: { origin: ORIGIN, signerKey: env.signerKey, batchIntervalMs: 2000, batchLeaves: 1_000_000 },
      store: env.integrity,
      resources: env.db.store.resources,
      clock: env.clock,
      logger: silentLogger,
      registry: new Registry(),
    });
    await stage.start();
    const app = express();
    app.use('/ledger', stage.ledgerRouter);
    app.use('/fhir/R4', stage.verifyRouter);
    app.use(notFoundHandler);
    app.use(errorHandler(silentLogger));
    server = await new Promise<Server>((resolve) => {
      const s = app.listen(0, '127.0.0.1', () => resolve(s));
    });
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await new Promise<void>((r) => server.close(() => r()));
    await stage.stop();
    await env.close();
  });

  it('serves the key and the latest checkpoint as text/plain', async () => {
    const key = await fetch(`${base}/ledger/key`);
    expect(key.headers.get('content-type')).toMatch(/^text\/plain/);
    const vkey = (await key.text()).trim();
    expect(vkey).toBe(stage.log.verifierKey);
    const cp = await fetch(`${base}/ledger/checkpoint`);
    expect(cp.status).toBe(200);
    const { checkpoint } = openCheckpoint(await cp.text(), ORIGIN, [parseVerifierKey(vkey)]);
    expect(checkpoint.size).toBeGreaterThanOrEqual(0);
  });

  it('answers $verify: pending first (202, Retry-After), then included with a receipt that verifies offline', async () => {
    const put = await env.db.store.resources.putVersion({
      resourceType: 'Observation',
      id: 'obs-1',
      resource: { resourceType: 'Observation', status: 'final', code: { text: 'heart rate' }, valueQuantity: { value: 72.0, unit: '/min' } },
    });
    const notYet = await fetch(`${base}/fhir/R4/Observation/obs-1/$verify`);
    expect(notYet.status).toBe(202);
    expect(notYet.headers.get('retry-after')).toBe('2');
    const notYetBody = (await notYet.json()) as Json;
    expect(param(notYetBody, 'status').valueCode).toBe('pending');
    expect(param(notYetBody, 'retryAfter').valueInteger).toBe(2);

    await stage.processJob({ resourceType: 'Observation', id: 'obs-1', versionId: put.version.versionId });
    const pending = (await (await fetch(`${base}/fhir/R4/Observation/obs-1/_history/1/$verify`)).json()) as Json;
    expect(param(pending, 'status').valueCode).toBe('pending');
    expect(param(pending, 'valid').valueBoolean).toBe(true);

    await stage.log.flush();
    const res = await fetch(`${base}/fhir/R4/Observation/obs-1/_history/1/$verify`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/fhir\+json/);
    const body = (await res.json()) as Json;
    expect(body.resourceType).toBe('Parameters');
    expect(param(body, 'status').valueCode).toBe('included');
    expect(param(body, 'valid').valueBoolean).toBe(true);
    expect(param(body, 'proofValid').valueBoolean).toBe(true);
    expect(param(body, 'commitment').valueString).toMatch(/^[0-9a-f]{64}$/);
    expect(typeof param(body, 'leafIndex').valueInteger).toBe('number');
    const anchorReceipts = body.parameter.filter((p: Json) => p.name === 'anchorReceipt').map((p: Json) => p.valueString as string);
    expect(anchorReceipts.length).toBe(1);
    expect(JSON.parse(anchorReceipts[0]!).kind).toBe('log');

    // Current-version form gives the same answer.
    const current = (await (await fetch(`${base}/fhir/R4/Observation/obs-1/$verify`)).json()) as Json;
    expect(param(current, 'commitment').valueString).toBe(param(body, 'commitment').valueString);

    // Offline: the served version, the salt, the receipt and the key are enough.
    const served = await env.db.store.resources.readVersion('Observation', 'obs-1', '1');
    const vkey = (await (await fetch(`${base}/ledger/key`)).text()).trim();
    const input = {
      resourceJson: JSON.stringify(served!.resource),
      saltB64: param(body, 'salt').valueBase64Binary as string,
      receiptText: param(body, 'receipt').valueString as string,
      vkey,
      anchorReceipts,
    };
    const ok = await verifyOffline(input);
    expect(ok.checks.filter((c) => !c.ok)).toEqual([]);
    expect(ok.ok).toBe(true);
    const tampered = await verifyOffline({ ...input, resourceJson: input.resourceJson.replace('72', '73') });
    expect(tampered.ok).toBe(false);
    expect(tampered.checks.find((c) => c.name === 'inclusion')?.ok).toBe(false);
    const wrongKey = await verifyOffline({ ...input, vkey: vkey.replace(/.$/, vkey.endsWith('A') ? 'B' : 'A') });
    expect(wrongKey.ok).toBe(false);

    // CLI: exit 0 only when everything checks out.
    const dir = await mkdtemp(path.join(os.tmpdir(), 'fhir-anchor-verify-'));
    try {
      await writeFile(path.join(dir, 'v.json'), input.resourceJson);
      await writeFile(path.join(dir, 'p.tlog-proof'), input.receiptText);
      await writeFile(path.join(dir, 'a.json'), anchorReceipts[0]!);
      await writeFile(path.join(dir, 'bad.json'), input.resourceJson.replace('final', 'amended'));
      const run = async (resource: string): Promise<{ code: number | undefined; out: string }> => {
        let out = '';
        const program = new Command().exitOverride();
        registerVerifyCommand(program, { out: (t) => (out += t), err: (t) => (out += t) });
        const before = process.exitCode;
        await program.parseAsync(['verify', '--resource', path.join(dir, resource), '--salt', input.saltB64, '--receipt', path.join(dir, 'p.tlog-proof'), '--key', vkey, '--anchor', path.join(dir, 'a.json')], { from: 'user' });
        const code = process.exitCode as number | undefined;
        process.exitCode = before;
        return { code, out };
      };
      const good = await run('v.json');
      expect(good.code).toBe(0);
      expect(good.out).toContain('verified: the record is in the log, unchanged');
      const bad = await run('bad.json');
      expect(bad.code).toBe(1);
      expect(bad.out).toMatch(/FAIL inclusion/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('serves consistency proofs (text and JSON) that verify between checkpoints', async () => {
    const older = (await stage.log.latestCheckpoint())!;
    for (let i = 0; i < 5; i++) {
      const put = await env.db.store.resources.putVersion({ resourceType: 'Patient', id: `c${i}`, resource: { resourceType: 'Patient' } });
      await stage.processJob({ resourceType: 'Patient', id: `c${i}`, versionId: put.version.versionId });
    }
    await stage.log.flush();
    const newer = (await stage.log.latestCheckpoint())!;
    const text = await (await fetch(`${base}/ledger/consistency?from=${older.size}&to=${newer.size}`)).text();
    const proof = text.split('\n').filter((l) => l !== '').map((l) => decodeBase64Strict(l)!);
    expect(verifyConsistency(older.size, newer.size, proof, older.rootHash, newer.rootHash)).toBe(true);
    const asJson = (await (await fetch(`${base}/ledger/consistency?from=${older.size}`, { headers: { accept: 'application/json' } })).json()) as Json;
    expect(asJson).toEqual({ from: older.size, to: newer.size, proof: text.split('\n').filter((l) => l !== '') });
    const old = await fetch(`${base}/ledger/checkpoint?size=${older.size}`);
    expect(await old.text()).toBe(older.signedNote);
    const anchors = (await (await fetch(`${base}/ledger/anchors?size=${newer.size}`)).json()) as Json;
    expect(anchors.receipts.map((r: Json) => r.kind)).toEqual(['log']);
  });

  it('answers 404 and 400 with OperationOutcomes', async () => {
    const cases: Array<[string, number]> = [
      ['/fhir/R4/Patient/nobody/$verify', 404],
      ['/fhir/R4/Patient/c0/_history/99/$verify', 404],
      ['/fhir/R4/Patient/c0/_history/abc/$verify', 400],
      ['/fhir/R4/patient!/x/$verify', 400],
      ['/ledger/consistency', 400],
      ['/ledger/consistency?from=-1', 400],
      ['/ledger/consistency?from=5&to=2', 400],
      ['/ledger/consistency?from=0&to=999999', 400],
      ['/ledger/anchors?size=123456', 404],
      ['/ledger/checkpoint?size=abc', 400],
    ];
    for (const [url, status] of cases) {
      const res = await fetch(base + url);
      expect([url, res.status]).toEqual([url, status]);
      expect(((await res.json()) as Json).resourceType).toBe('OperationOutcome');
    }
  });
});
