/**
 * Worker-thread entry of the validator pool ({@link createValidatorPool}): loads base R4 and the US
 * Core profiles once, then validates batches posted by the pool. Only resources and
 * OperationOutcomes cross the thread boundary (structured clone); nothing is logged here.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { Resource } from '@medplum/fhirtypes';
import { collectGarbage } from '../platform/gc.js';
import { createValidator } from './validate.js';

interface Batch {
  readonly id: number;
  readonly items: ReadonlyArray<{ readonly resource: Resource; readonly profile?: string }>;
}

const port = parentPort;
if (!port) throw new Error('validate-worker must run in a worker thread');
const { profilesDir } = (workerData ?? {}) as { profilesDir?: string };
const validator = await createValidator(profilesDir ? { profilesDir } : {});
// Loading allocated ~180 MB of which ~16 MB stays: release the rest now rather than whenever V8 gets to it.
collectGarbage();
port.on('message', (batch: Batch) => {
  try {
    port.postMessage({ id: batch.id, results: batch.items.map((i) => validator.validate(i.resource, i.profile)) });
  } catch (err) {
    port.postMessage({ id: batch.id, error: err instanceof Error ? err.message : String(err) });
  }
});
port.postMessage({ ready: true });
