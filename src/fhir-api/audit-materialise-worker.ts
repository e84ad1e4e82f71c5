/**
 * Worker-thread entry of the audit materialiser ({@link createMaterialiserThread}): opens the store on
 * the service's database and schema (no migrations: the service ran them) with the integrity
 * committer, then drains the audit outbox whenever asked. Only ids, flags and counts cross the thread
 * boundary; nothing is logged here (errors go back to the caller).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { versionCommitter } from '../integrity/commitment.js';
import { systemClock } from '../platform/clock.js';
import { createLogger } from '../platform/logger.js';
import { openDatabase } from '../store/index.js';
import { AUDIT_THREAD_MATERIALISE_BATCH, drainAuditOutbox } from './audit.js';

const port = parentPort;
if (!port) throw new Error('audit-materialise-worker must run in a worker thread');
const { connectionString, schema } = workerData as { connectionString: string; schema: string };
const db = await openDatabase({
  config: { database: { kind: 'external', url: connectionString }, databaseSchema: schema, databasePoolMax: 2 },
  logger: createLogger('silent'),
  clock: systemClock,
  migrate: false,
  committer: versionCommitter(),
  applicationName: 'fhir-anchor-audit',
});

let inFlight = 0;
let closing = false;
const exitWhenIdle = async (): Promise<void> => {
  if (!closing || inFlight > 0) return;
  await db.close().catch(() => undefined);
  process.exit(0);
};
port.on('message', (m: { id?: number; wait?: boolean; close?: boolean }) => {
  if (m.close) {
    closing = true;
    void exitWhenIdle();
    return;
  }
  if (m.id === undefined) return;
  const id = m.id;
  inFlight += 1;
  drainAuditOutbox(db.store, m.wait === true, undefined, AUDIT_THREAD_MATERIALISE_BATCH)
    .then((count) => port.postMessage({ id, count }))
    .catch((err: unknown) => port.postMessage({ id, error: err instanceof Error ? err.message : String(err) }))
    .finally(() => {
      inFlight -= 1;
      void exitWhenIdle();
    });
});
port.postMessage({ ready: true });
