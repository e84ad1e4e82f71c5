/** `fhir-anchor deid` on files and folders of JSON and NDJSON (run in-process through commander). */
import { mkdtemp, mkdir, readFile, readdir, writeFile, copyFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import type { Bundle } from '@medplum/fhirtypes';
import { registerDeidCommand } from '../../src/research/index.js';

const FIXTURES = fileURLToPath(new URL('../fixtures/research/', import.meta.url));
const SMALL = 'Russel238_Konopelski743_0cd9f8d6-ae86-3b42-7350-da4d678961ac.json';

async function cli(args: string[], opts: { tty?: boolean; keys?: Record<string, string> } = {}) {
  let out = '';
  let err = '';
  let code = 0;
  const program = new Command().exitOverride();
  registerDeidCommand(program, {
    keys: opts.keys ?? { cryptoHashKey: 'cli-key', dateShiftKey: 'cli-date' },
    out: (t) => (out += t),
    err: (t) => (err += t),
    isTTY: opts.tty ?? false,
    setExitCode: (c) => (code = c),
  });
  await program.parseAsync(['node', 'fhir-anchor', 'deid', ...args]);
  return { out, err, code };
}

let work: string;
beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'deid-cli-'));
});

describe('fhir-anchor deid', () => {
  it('de-identifies one JSON bundle file', async () => {
    const output = path.join(work, 'one.json');
    const r = await cli(['--input', path.join(FIXTURES, SMALL), '--output', output]);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/1 file\(s\), \d+ resource\(s\) de-identified, 0 dropped/);
    const bundle = JSON.parse(await readFile(output, 'utf8')) as Bundle;
    expect(bundle.resourceType).toBe('Bundle');
    expect(JSON.stringify(bundle)).not.toContain('Russel238');
  });

  it('streams NDJSON and mirrors a folder (JSON + NDJSON, nested), with periodic counts on a non-TTY', async () => {
    const input = path.join(work, 'in');
    await mkdir(path.join(input, 'nested'), { recursive: true });
    await copyFile(path.join(FIXTURES, SMALL), path.join(input, 'nested', 'bundle.json'));
    const bundle = JSON.parse(await readFile(path.join(FIXTURES, SMALL), 'utf8')) as Bundle;
    const lines = (bundle.entry ?? []).map((e) => JSON.stringify(e.resource));
    await writeFile(path.join(input, 'Patient.ndjson'), `\uFEFF${lines.join('\n')}\n`);
    const output = path.join(work, 'out');
    const r = await cli(['--input', input, '--output', output, '--policy', 'safe-harbor-dateshift']);
    expect(r.err).not.toMatch(/fhir-anchor deid:/);
    expect(r.code).toBe(0);
    expect((await readdir(output)).sort()).toEqual(['Patient.ndjson', 'nested']);
    const outLines = (await readFile(path.join(output, 'Patient.ndjson'), 'utf8')).trim().split('\n');
    expect(outLines).toHaveLength(lines.length);
    expect(JSON.parse(outLines[0]!).resourceType).toBe(bundle.entry?.[0]?.resource?.resourceType);
    expect(r.err.trim().split('\n')).toHaveLength(2); // one count line per file (fewer than 10,000 resources)
    expect(r.err).not.toContain('\r');
  });

  it('shows a live progress line on a TTY', async () => {
    const r = await cli(['--input', path.join(FIXTURES, SMALL), '--output', path.join(work, 'tty.json')], { tty: true });
    expect(r.err).toMatch(/^\rdeid: /);
  });

  it('accepts an anonymizer --config file and reports config problems with exit code 2', async () => {
    const cfg = path.join(work, 'config.json');
    await writeFile(cfg, JSON.stringify({ fhirVersion: 'R4', fhirPathRules: [{ path: 'Resource.id', method: 'cryptoHash' }, { path: "nodesByType('date')", method: 'dateShift' }], parameters: {} }));
    const missing = await cli(['--config', cfg, '--input', path.join(FIXTURES, SMALL), '--output', path.join(work, 'x.json')], { keys: {} });
    expect(missing.code).toBe(2);
    expect(missing.err).toMatch(/missing keys: cryptoHashKey.*dateShiftKey/);
    const noInput = await cli(['--input', path.join(work, 'nope'), '--output', path.join(work, 'y')]);
    expect(noInput.code).toBe(2);
  });

  it('stops with exit code 1 and the line number on a broken NDJSON line', async () => {
    const bad = path.join(work, 'bad.ndjson');
    await writeFile(bad, '{"resourceType":"Patient","id":"a"}\n{not json\n');
    const r = await cli(['--input', bad, '--output', path.join(work, 'bad-out.ndjson')]);
    expect(r.code).toBe(1);
    expect(r.err).toContain('bad.ndjson:2: not valid JSON');
  });
});
