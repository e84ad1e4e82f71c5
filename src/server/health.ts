/**
 * Liveness (/healthz: the process answers) and readiness (/readyz: every dependency answers).
 * Readiness names each component that is down in an OperationOutcome and answers 503 + Retry-After.
 */
import type { OperationOutcome, OperationOutcomeIssue } from '@medplum/fhirtypes';
import type { Metrics } from '../platform/metrics.js';

export interface HealthCheck {
  /** Component name as reported, e.g. `database`, `queue`, `ledger`. */
  readonly name: string;
  /** Resolves when healthy; rejects (or times out) when not. */
  check(): Promise<void>;
}

/** A dependency that has not answered within this time is reported down (readiness probes are frequent). */
export const HEALTH_CHECK_TIMEOUT_MS = 2000;

export interface Readiness {
  readonly ready: boolean;
  readonly outcome: OperationOutcome;
}

export async function checkReadiness(checks: readonly HealthCheck[], metrics?: Metrics): Promise<Readiness> {
  const results = await Promise.all(
    checks.map(async (c) => {
      let timer: NodeJS.Timeout | undefined;
      try {
        await Promise.race([
          c.check(),
          new Promise((_, reject) => {
            timer = setTimeout(() => reject(new Error(`no answer within ${HEALTH_CHECK_TIMEOUT_MS} ms`)), HEALTH_CHECK_TIMEOUT_MS);
          }),
        ]);
        return { name: c.name, ok: true as const };
      } catch (err) {
        metrics?.componentDown.inc({ component: c.name });
        return { name: c.name, ok: false as const, reason: err instanceof Error ? err.message : String(err) };
      } finally {
        clearTimeout(timer);
      }
    }),
  );
  const issues: OperationOutcomeIssue[] = results.map((r) =>
    r.ok
      ? { severity: 'information', code: 'informational', details: { text: `${r.name}: up` }, expression: [r.name] }
      : // The reason is a connection-level message (no data); it helps operators find the fault.
        { severity: 'error', code: 'transient', details: { text: `${r.name}: down (${r.reason.slice(0, 200)})` }, expression: [r.name] },
  );
  return { ready: results.every((r) => r.ok), outcome: { resourceType: 'OperationOutcome', issue: issues } };
}
