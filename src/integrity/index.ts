/**
 * Public surface of the integrity stage (see docs/integrity.md): salted commitments, the RFC 9162
 * Merkle log in PostgreSQL, signed C2SP checkpoints, ledger anchors, `$verify`, the tamper audit and
 * the offline verifier. {@link createIntegrityStage} builds the pieces the composition root wires in.
 *
 * @packageDocumentation
 */
import type { Registry } from 'prom-client';
import type { Router } from 'express';
import type { CapabilityContribution } from '../fhir-api/capability.js';
import type { Clock } from '../platform/clock.js';
import type { Logger } from '../platform/logger.js';
import type { IntegrityStore } from '../store/integrity-types.js';
import type { ResourceStore } from '../store/types.js';
import type { LedgerAnchor } from './anchor.js';
import { Auditor, type AuditResult } from './audit.js';
import { createLedgerRouter, createVerifyRouter, integrityCapability, type VersionReader } from './http.js';
import { loadLogKey } from './keys.js';
import { IntegrityLog, type CommitOutcome } from './log.js';

export type { AnchorCheckpoint, AnchorReceipt, AnchorVerification, LedgerAnchor } from './anchor.js';
export { AnchorConflictError, AnchorInputError } from './anchor.js';
export { LogAnchor } from './anchors/log.js';
export { verifyLogAnchorReceipt, LOG_ANCHOR_KIND } from './anchors/log-receipt.js';
export { Auditor, type AuditFinding, type AuditResult, type AuditHealth, type AuditCursor } from './audit.js';
export { createLedgerRouter, createVerifyRouter, integrityCapability, verifyVersion, type VersionReader } from './http.js';
export { loadLogKey, LogKeyError, type LogKey, type SignerKeyOptions } from './keys.js';
export { IntegrityLog, LogIntegrityError, type CommitOutcome, type FlushResult, type VersionProof } from './log.js';
export { committedValue, deleteMarker } from './record.js';
export { versionCommitter } from './commitment.js';
export { verifyOffline, type OfflineVerifyInput, type OfflineVerifyResult, type AnchorReceiptVerifier } from './verifier.js';
export { registerVerifyCommand } from './cli-verify.js';

/** Configuration of the integrity stage. */
export interface IntegrityOptions {
  /** Log origin and key name, e.g. `fhir-anchor.example.org/log` (no spaces or `+`). */
  readonly origin: string;
  /** Signer key string (`PRIVATE+KEY+<origin>+…`); wins over `keyFile`. */
  readonly signerKey?: string;
  /** Key file; generated (0600) when missing. Embedded mode: `DATA_DIR/integrity-log.key`. */
  readonly keyFile?: string;
  /** N: sequence after this many local commits (default 512). */
  readonly batchLeaves?: number;
  /** T: sequence at least every T ms (default 1000). */
  readonly batchIntervalMs?: number;
  /** Most leaves per checkpoint (default 10,000). */
  readonly maxLeavesPerCheckpoint?: number;
  /** Audit page size (default 500) and pages per run (default 10). */
  readonly auditPageSize?: number;
  readonly auditMaxPages?: number;
}

/** Everything the composition root wires in. */
export interface IntegrityStage {
  readonly log: IntegrityLog;
  readonly auditor: Auditor;
  /** Mount at `/ledger`. */
  readonly ledgerRouter: Router;
  /** Mount at `/fhir/R4` (with `capability`). */
  readonly verifyRouter: Router;
  readonly capability: CapabilityContribution;
  /** Readiness checks: `integrity-log` (sequencer not stuck) and `integrity-audit` (no findings). */
  readonly healthChecks: ReadonlyArray<{ readonly name: string; check(): Promise<void> }>;
  /** The `integrity` queue job: commit one version (re-read from the store). */
  processJob(data: { readonly resourceType: string; readonly id: string; readonly versionId: string }): Promise<CommitOutcome>;
  /** The repeatable audit job. */
  runAudit(): Promise<AuditResult>;
  /** Signs the first checkpoint if needed and starts the batch timer (worker role). */
  start(): Promise<void>;
  /** Stops the timer and flushes (before the pool closes). */
  stop(): Promise<void>;
}

/**
 * Builds the integrity stage.
 *
 * @param deps - options, the integrity store, the resource store (commit reads), the version reader
 *   for `$verify` (the consent-scoped repository later; default the resource store), clock, logger,
 *   prom-client registry and further anchors (EVM).
 * @returns the stage.
 */
export async function createIntegrityStage(deps: {
  readonly options: IntegrityOptions;
  readonly store: IntegrityStore;
  readonly resources: ResourceStore;
  readonly versions?: VersionReader;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly registry: Registry;
  readonly anchors?: readonly LedgerAnchor[];
}): Promise<IntegrityStage> {
  const { options, store, clock, logger, registry } = deps;
  const key = await loadLogKey({
    origin: options.origin,
    ...(options.signerKey !== undefined ? { signerKey: options.signerKey } : {}),
    ...(options.keyFile !== undefined ? { keyFile: options.keyFile } : {}),
  });
  if (key.source === 'generated') logger.warn({ keyFile: options.keyFile }, 'generated a new integrity log signing key');
  const log = new IntegrityLog({
    store,
    resources: deps.resources,
    clock,
    logger,
    origin: options.origin,
    key,
    registry,
    ...(options.batchLeaves !== undefined ? { batchLeaves: options.batchLeaves } : {}),
    ...(options.batchIntervalMs !== undefined ? { batchIntervalMs: options.batchIntervalMs } : {}),
    ...(options.maxLeavesPerCheckpoint !== undefined ? { maxLeavesPerCheckpoint: options.maxLeavesPerCheckpoint } : {}),
    ...(deps.anchors !== undefined ? { anchors: deps.anchors } : {}),
  });
  const auditor = new Auditor({
    store,
    origin: options.origin,
    verifierKey: key.verifierKey,
    logger,
    clock,
    registry,
    ...(options.auditPageSize !== undefined ? { pageSize: options.auditPageSize } : {}),
    ...(options.auditMaxPages !== undefined ? { maxPages: options.auditMaxPages } : {}),
  });
  const routerDeps = { log, store: deps.versions ?? deps.resources, logger };
  return {
    log,
    auditor,
    ledgerRouter: createLedgerRouter(routerDeps),
    verifyRouter: createVerifyRouter(routerDeps),
    capability: integrityCapability,
    healthChecks: [
      { name: 'integrity-log', check: () => log.checkReady() },
      {
        name: 'integrity-audit',
        check: async () => {
          const h = auditor.health();
          if (!h.ok) throw new Error(`integrity audit found ${h.findings} problem(s)`);
        },
      },
    ],
    processJob: (data) => log.commit(data),
    runAudit: () => auditor.run(),
    start: () => log.start(),
    stop: () => log.stop(),
  };
}
