/**
 * The audit materialiser on a worker thread: turning audit records into AuditEvent resources (build,
 * JCS + SHA-256 commitment, search index, one INSERT per table) costs as much CPU as the rest of a
 * gated read, and in the event loop it stalls every request in flight while a batch is built. The
 * thread has its own connections (the same database and schema) and its own store with a committer,
 * so what it writes is committed to the integrity log in the same transaction, as in-process.
 *
 * The thread starts with its first drain; the service sends it drains only once the API is busy
 * ({@link createAdaptiveDrain}). A thread that dies fails the drains in flight (their records stay in the outbox and the next
 * run retries them) and is started again by the next drain.
 */
import { Worker } from 'node:worker_threads';
import type { Logger } from '../platform/logger.js';
import { workerEntry } from '../platform/worker-entry.js';

/** Materialises audit records; `wait` blocks on records another materialiser holds (a flush). */
export interface AuditDrain {
  drain(wait: boolean): Promise<number>;
  close(): Promise<void>;
}

/** What the thread needs to open the store. */
export interface MaterialiserThreadOptions {
  readonly connectionString: string;
  readonly schema: string;
  readonly logger: Logger;
}

interface Pending {
  readonly resolve: (n: number) => void;
  readonly reject: (err: Error) => void;
}

/** Starts (lazily) the materialiser thread. */
export function createMaterialiserThread(options: MaterialiserThreadOptions): AuditDrain {
  const entry = workerEntry(import.meta.url, 'audit-materialise-worker');
  let worker: Worker | undefined;
  let ready: Promise<void> | undefined;
  const pending = new Map<number, Pending>();
  let nextId = 1;
  let closed = false;

  const start = (): Promise<void> => {
    const w = new Worker(entry.script, {
      eval: entry.eval,
      execArgv: [],
      workerData: { connectionString: options.connectionString, schema: options.schema },
    });
    worker = w;
    const started = new Promise<void>((resolve, reject) => {
      const onReady = (m: { ready?: boolean }): void => {
        if (m.ready) {
          w.off('message', onReady);
          resolve();
        }
      };
      w.on('message', onReady);
      w.once('exit', (code) => reject(new Error(`audit materialiser thread exited (${code}) while starting`)));
    });
    w.on('message', (m: { id?: number; count?: number; error?: string }) => {
      if (m.id === undefined) return;
      const p = pending.get(m.id);
      if (!p) return;
      pending.delete(m.id);
      if (m.error !== undefined || m.count === undefined) p.reject(new Error(m.error ?? 'no result'));
      else p.resolve(m.count);
      if (pending.size === 0) w.unref();
    });
    w.on('error', (err) => options.logger.warn({ err }, 'audit materialiser thread failed'));
    w.on('exit', (code) => {
      for (const p of pending.values()) p.reject(new Error(`audit materialiser thread exited (${code})`));
      pending.clear();
      if (worker === w) {
        worker = undefined;
        ready = undefined;
      }
    });
    w.unref();
    return started;
  };

  return {
    async drain(wait) {
      if (closed) throw new Error('audit materialiser is closed');
      ready ??= start();
      const w = worker!;
      // Referenced while a drain is outstanding (a caller awaits it), unreferenced when idle, so the
      // thread never keeps a finished process alive nor lets one exit under a pending drain.
      w.ref();
      try {
        await ready;
      } catch (err) {
        if (pending.size === 0) w.unref();
        throw err;
      }
      const id = nextId++;
      return new Promise<number>((resolve, reject) => {
        pending.set(id, { resolve, reject });
        w.postMessage({ id, wait });
      });
    },
    async close() {
      closed = true;
      const w = worker;
      if (!w) return;
      // The thread finishes the drains in flight (their transactions commit or roll back), closes its
      // connections and exits; one that does not within 5 s is terminated.
      const exited = new Promise<void>((resolve) => w.once('exit', () => resolve()));
      w.postMessage({ close: true });
      const t = setTimeout(() => void w.terminate(), 5_000);
      t.unref();
      await exited;
      clearTimeout(t);
    },
  };
}

/**
 * In the event loop while the API is quiet, on the thread once it is busy: the first drain that
 * materialises at least `threshold` records (about 300 audited requests/s at the recorder's 50 ms
 * delay) moves all later drains to the thread. A process that audits little (a worker running an
 * export, a lightly used API) never carries the thread's ~25 MB.
 */
export function createAdaptiveDrain(options: { inProcess: (wait: boolean) => Promise<number>; thread: AuditDrain; threshold?: number }): AuditDrain & { readonly threaded: boolean } {
  const threshold = options.threshold ?? AUDIT_THREAD_THRESHOLD;
  let threaded = false;
  return {
    get threaded() {
      return threaded;
    },
    async drain(wait) {
      if (threaded) return options.thread.drain(wait);
      const n = await options.inProcess(wait);
      if (n >= threshold) threaded = true;
      return n;
    },
    close: () => options.thread.close(),
  };
}

/** Records in one drain from which materialisation moves to the thread. */
export const AUDIT_THREAD_THRESHOLD = 16;
