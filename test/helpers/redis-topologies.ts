/**
 * Local Redis Sentinel and Redis Cluster deployments for tests: real `redis-server` processes on free
 * 127.0.0.1 ports under a temporary directory, nothing persisted, all stopped by `stop()`. They never
 * touch the shared Redis on 6379.
 *
 * - Sentinel: one primary, one replica, three sentinels (quorum 2), failover after 1 s of silence.
 * - Cluster: three primaries sharing the 16,384 slots (`redis-cli --cluster create`), no replicas.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';

const run = promisify(execFile);

/** A free TCP port on 127.0.0.1 (the OS picks it; closed again before use). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function ask<T>(port: number, fn: (r: Redis) => Promise<T>): Promise<T> {
  const r = new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  try {
    await r.connect();
    return await fn(r);
  } finally {
    r.disconnect();
  }
}

interface Server {
  readonly port: number;
  readonly child: ChildProcess;
}

class Servers {
  readonly dir = mkdtempSync(path.join(os.tmpdir(), 'fhir-anchor-redis-'));
  readonly servers: Server[] = [];

  async start(args: string[], port?: number): Promise<Server> {
    const p = port ?? (await freePort());
    const child = spawn('redis-server', [...args, '--port', String(p), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', this.dir, '--logfile', path.join(this.dir, `${p}.log`)], {
      stdio: 'ignore',
    });
    const server = { port: p, child };
    this.servers.push(server);
    await waitFor(`redis-server on ${p}`, () => ask(p, async (r) => (await r.ping()) === 'PONG'));
    return server;
  }

  /** Kills one server at once (SIGKILL: a crash, no failover courtesy). */
  kill(server: Server): void {
    server.child.kill('SIGKILL');
  }

  async stop(): Promise<void> {
    await Promise.all(
      this.servers.map(
        (s) =>
          new Promise<void>((resolve) => {
            if (s.child.exitCode !== null || s.child.signalCode !== null) return resolve();
            s.child.once('exit', () => resolve());
            s.child.kill('SIGKILL');
          }),
      ),
    );
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export interface LocalSentinel {
  readonly name: string;
  readonly sentinels: ReadonlyArray<{ host: string; port: number }>;
  /** `host:port,…` for REDIS_SENTINELS. */
  readonly env: string;
  /** The port of the primary the sentinels report now. */
  primaryPort(): Promise<number>;
  /** SIGKILLs the current primary and waits until the sentinels report the replica as primary. */
  failover(): Promise<{ from: number; to: number }>;
  stop(): Promise<void>;
}

export async function startSentinel(name = 'fhir-anchor-test'): Promise<LocalSentinel> {
  const s = new Servers();
  try {
    const primary = await s.start([]);
    const replica = await s.start(['--replicaof', '127.0.0.1', String(primary.port)]);
    await waitFor('the replica to sync', () => ask(replica.port, async (r) => /master_link_status:up/.test(await r.info('replication'))));
    const sentinelPorts: number[] = [];
    for (let i = 0; i < 3; i++) {
      const port = await freePort();
      const conf = path.join(s.dir, `sentinel-${port}.conf`);
      writeFileSync(
        conf,
        [
          `sentinel monitor ${name} 127.0.0.1 ${primary.port} 2`,
          `sentinel down-after-milliseconds ${name} 1000`,
          `sentinel failover-timeout ${name} 10000`,
          `sentinel parallel-syncs ${name} 1`,
          '',
        ].join('\n'),
      );
      await s.start([conf, '--sentinel'], port);
      sentinelPorts.push(port);
    }
    const primaryPort = async (): Promise<number> => {
      for (const p of sentinelPorts) {
        const addr = await ask(p, (r) => r.call('SENTINEL', 'get-master-addr-by-name', name) as Promise<[string, string] | null>).catch(() => null);
        if (addr) return Number(addr[1]);
      }
      throw new Error('no sentinel answered');
    };
    // Every sentinel must know the replica and the other sentinels before a failover can be agreed.
    await waitFor('the sentinels to discover each other and the replica', async () => {
      for (const p of sentinelPorts) {
        const [master] = (await ask(p, (r) => r.call('SENTINEL', 'masters'))) as string[][];
        const fields = new Map<string, string>();
        for (let i = 0; i + 1 < (master ?? []).length; i += 2) fields.set(master![i]!, master![i + 1]!);
        if (fields.get('num-slaves') !== '1' || fields.get('num-other-sentinels') !== '2') return false;
      }
      return true;
    });
    return {
      name,
      sentinels: sentinelPorts.map((port) => ({ host: '127.0.0.1', port })),
      env: sentinelPorts.map((p) => `127.0.0.1:${p}`).join(','),
      primaryPort,
      async failover() {
        const from = await primaryPort();
        const victim = s.servers.find((x) => x.port === from)!;
        s.kill(victim);
        let to = from;
        await waitFor('the sentinels to promote the replica', async () => {
          to = await primaryPort();
          return to !== from && (await ask(to, async (r) => /role:master/.test(await r.info('replication'))));
        }, 45_000);
        return { from, to };
      },
      stop: () => s.stop(),
    };
  } catch (err) {
    await s.stop();
    throw err;
  }
}

export interface LocalCluster {
  readonly nodes: ReadonlyArray<{ host: string; port: number }>;
  /** `host:port,…` for REDIS_CLUSTER_NODES. */
  readonly env: string;
  /** Keys on each node matching `pattern` (SCAN per node). */
  keysPerNode(pattern: string): Promise<Map<number, string[]>>;
  stop(): Promise<void>;
}

export async function startCluster(): Promise<LocalCluster> {
  const s = new Servers();
  try {
    const ports: number[] = [];
    for (let i = 0; i < 3; i++) {
      const port = await freePort();
      await s.start(['--cluster-enabled', 'yes', '--cluster-config-file', `nodes-${port}.conf`, '--cluster-node-timeout', '2000'], port);
      ports.push(port);
    }
    await run('redis-cli', ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '0', '--cluster-yes']);
    await waitFor('the cluster to be ok on every node', async () => {
      for (const p of ports) if (!/cluster_state:ok/.test(String(await ask(p, (r) => r.call('CLUSTER', 'INFO'))))) return false;
      return true;
    });
    return {
      nodes: ports.map((port) => ({ host: '127.0.0.1', port })),
      env: ports.map((p) => `127.0.0.1:${p}`).join(','),
      async keysPerNode(pattern) {
        const out = new Map<number, string[]>();
        for (const p of ports) {
          const keys: string[] = [];
          await ask(p, async (r) => {
            let cursor = '0';
            do {
              const [next, batch] = await r.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
              cursor = next;
              keys.push(...batch);
            } while (cursor !== '0');
          });
          out.set(p, keys);
        }
        return out;
      },
      stop: () => s.stop(),
    };
  } catch (err) {
    await s.stop();
    throw err;
  }
}
