/**
 * The one error vocabulary: FHIR OperationOutcome, via @medplum/core's helpers. Everything that fails
 * throws an {@link OperationOutcomeError}; the HTTP layer turns it into a status in one place.
 */
import {
  OperationOutcomeError,
  badRequest,
  getStatus,
  isOperationOutcome,
  notFound,
  forbidden,
  unauthorized,
  serverError,
} from '@medplum/core';
import type { OperationOutcome, OperationOutcomeIssue } from '@medplum/fhirtypes';

export { OperationOutcomeError, badRequest, notFound, forbidden, unauthorized, getStatus, isOperationOutcome };

/** An OperationOutcome with one issue. */
export function outcome(
  severity: OperationOutcomeIssue['severity'],
  code: OperationOutcomeIssue['code'],
  diagnostics: string,
  expression?: string,
): OperationOutcome {
  return {
    resourceType: 'OperationOutcome',
    issue: [{ severity, code, details: { text: diagnostics }, ...(expression ? { expression: [expression] } : {}) }],
  };
}

/** Maps an OperationOutcome issue code to the HTTP status that FHIR servers conventionally use. */
const STATUS_BY_CODE: Partial<Record<OperationOutcomeIssue['code'], number>> = {
  invalid: 400,
  structure: 400,
  required: 400,
  value: 400,
  invariant: 400,
  processing: 422,
  'not-supported': 400,
  duplicate: 409,
  conflict: 409,
  'not-found': 404,
  deleted: 410,
  login: 401,
  security: 401,
  forbidden: 403,
  suppressed: 403,
  'too-long': 413,
  'too-costly': 400,
  throttled: 429,
  timeout: 503,
  transient: 503,
  incomplete: 503,
  exception: 500,
};

/** An error that leaves as `status` with an OperationOutcome; for statuses @medplum/core cannot infer. */
export class HttpError extends OperationOutcomeError {
  constructor(
    readonly status: number,
    oo: OperationOutcome,
    readonly headers: Readonly<Record<string, string>> = {},
  ) {
    super(oo);
  }
}

export function httpError(
  status: number,
  code: OperationOutcomeIssue['code'],
  diagnostics: string,
  headers: Record<string, string> = {},
): HttpError {
  return new HttpError(status, outcome(status >= 500 ? 'fatal' : 'error', code, diagnostics), headers);
}

/** The status for an OperationOutcome: @medplum/core's mapping first, then the issue code table. */
export function statusFor(oo: OperationOutcome): number {
  // @medplum/core maps its well-known outcomes by id (notFound → 404, forbidden → 403, …) and falls
  // back to 400 for everything else; anonymous outcomes are mapped by their first issue code instead.
  const fromMedplum = getStatus(oo);
  if (oo.id) {
    return fromMedplum;
  }
  const code = oo.issue?.[0]?.code;
  return (code && STATUS_BY_CODE[code]) ?? fromMedplum;
}

/** Generic 500 outcome: never leaks an internal message or stack. */
export const internalError: OperationOutcome = serverError(new Error('Internal server error'));
