/**
 * Validation off the event loop: a small pool of worker threads, each with its own @medplum/core
 * validator (base R4 + US Core 6.1.0). Validation is the largest CPU cost of ingest after the
 * store; in the event loop it also delays every other job and the hook's acknowledgements. With
 * `threads: 0` the same interface validates in-process (tests, single-core machines).
 *
 * Threads start with the first batch. A batch (one notification's resources) goes to the least busy
 * thread in one message. A thread that dies fails its batches (the ingest job is retried) and is
 * replaced.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { OperationOutcome, Resource } from '@medplum/fhirtypes';
import { collectGarbage } from '../platform/gc.js';
import { workerEntry } from '../platform/worker-entry.js';
import { createValidator, type Validator } from './validate.js';

export interface ValidationRequest {
  readonly resource: Resource;
  /** Target profile (default: the first loaded profile in meta.profile). */
  readonly profile?: string;
}

export interface ValidationResult {
  readonly valid: boolean;
  readonly outcome: OperationOutcome;
}

/** Validates batches, in-process or on worker threads. */
export interface BatchValidator {
  /** Results in input order. */
  validateMany(items: readonly ValidationRequest[]): Promise<ValidationResult[]>;
  /** Stops the threads (pending batches fail). */
  close(): Promise<void>;
  /** Worker threads running (0 in-process, and before the first batch). */
  readonly threads: number;
}

/** Threads to use by default: one per core beyond the first (the event loop's), at most 4. */
export function defaultValidationThreads(): number {
  return Math.max(0, Math.min(4, availableParallelism() - 1));
}

/** The in-process {@link BatchValidator}. */
export function inProcessValidator(validator: Validator): BatchValidator {
  return {
    threads: 0,
    validateMany: async (items) => items.map((i) => validator.validate(i.resource, i.profile)),
    close: async () => undefined,
  };
}

interface Pending {
  readonly resolve: (r: ValidationResult[]) => void;
  readonly reject: (err: Error) => void;
  readonly size: number;
}

interface Slot {
  worker: Worker;
  /** Started successfully (only such a thread is replaced when it dies: no restart loop on a broken install). */
  started: boolean;
  ready: Promise<void>;
  /** Resources sent and not yet answered. */
  load: number;
  readonly pending: Map<number, Pending>;
}

/**
 * Creates the validator: `threads` worker threads, or in-process when 0.
 *
 * @param options.threads - worker threads (0: validate in the event loop)
 * @param options.profilesDir - default `<repo>/fhir-profiles/`
 */
export async function createValidatorPool(options: { threads: number; profilesDir?: string }): Promise<BatchValidator> {
  if (options.threads <= 0) {
    const validator = await createValidator(options.profilesDir ? { profilesDir: options.profilesDir } : {});
    // Loading allocated ~180 MB of which ~16 MB stays: release the rest now (see platform/gc.ts).
    collectGarbage();
    return inProcessValidator(validator);
  }
  const entry = workerEntry(import.meta.url, 'validate-worker');
  let nextId = 1;
  let closed = false;

  const spawn = (): Slot => {
    const worker = new Worker(entry.script, { eval: entry.eval, execArgv: [], workerData: { profilesDir: options.profilesDir } });
    const slot: Slot = { worker, started: false, ready: Promise.resolve(), load: 0, pending: new Map() };
    slot.ready = new Promise<void>((resolve, reject) => {
      const onReady = (m: { ready?: boolean }): void => {
        if (m.ready) {
          worker.off('message', onReady);
          slot.started = true;
          resolve();
        }
      };
      worker.on('message', onReady);
      worker.once('error', reject);
      worker.once('exit', (code) => reject(new Error(`validation thread exited (${code}) while starting`)));
    });
    slot.ready.catch(() => undefined); // awaited by validateMany; never an unhandled rejection
    worker.on('message', (m: { id?: number; results?: ValidationResult[]; error?: string }) => {
      if (m.id === undefined) return;
      const p = slot.pending.get(m.id);
      if (!p) return;
      slot.pending.delete(m.id);
      slot.load -= p.size;
      if (m.error !== undefined || !m.results) p.reject(new Error(`validation failed: ${m.error ?? 'no result'}`));
      else p.resolve(m.results);
    });
    worker.on('error', () => undefined); // the 'exit' handler below fails what was pending
    worker.on('exit', (code) => {
      for (const p of slot.pending.values()) p.reject(new Error(`validation thread exited (${code})`));
      slot.pending.clear();
      slot.load = 0;
      const i = slots.indexOf(slot);
      if (i < 0) return;
      // A thread that worked is replaced at once; one that never started is dropped, so the next
      // batch tries again (one attempt per batch, no restart loop on a broken install).
      if (!closed && slot.started) slots[i] = spawn();
      else slots.splice(i, 1);
    });
    worker.unref();
    return slot;
  };

  // Threads start with the first batch: each holds ~100 MB of RSS (its own isolate and definitions),
  // which a process that never ingests (or has not yet) should not carry.
  const slots: Slot[] = [];

  return {
    get threads() {
      return slots.length;
    },
    async validateMany(items) {
      if (items.length === 0) return [];
      if (closed) throw new Error('validator pool is closed');
      if (slots.length === 0) for (let i = 0; i < options.threads; i++) slots.push(spawn());
      const slot = slots.reduce((a, b) => (b.load < a.load ? b : a));
      await slot.ready;
      const id = nextId++;
      return new Promise<ValidationResult[]>((resolve, reject) => {
        slot.pending.set(id, { resolve, reject, size: items.length });
        slot.load += items.length;
        slot.worker.postMessage({ id, items });
      });
    },
    async close() {
      closed = true;
      await Promise.all(slots.map((s) => s.worker.terminate()));
    },
  };
}
