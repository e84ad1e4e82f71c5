/**
 * The one place errors become HTTP: every failure leaves as a FHIR OperationOutcome with the right
 * status, never a stack trace. Security-sensitive failures carry deliberately generic messages.
 */
import type { ErrorRequestHandler, RequestHandler, Response } from 'express';
import type { OperationOutcome } from '@medplum/fhirtypes';
import { HttpError, OperationOutcomeError, httpError, internalError, outcome, statusFor } from '../platform/errors.js';
import type { Logger } from '../platform/logger.js';

export const FHIR_JSON = 'application/fhir+json; charset=utf-8';

export function sendOutcome(res: Response, status: number, oo: OperationOutcome, headers: Record<string, string> = {}): void {
  for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
  res.status(status).type(FHIR_JSON).send(JSON.stringify(oo));
}

/** body-parser / raw-body error types and what they mean for the client. */
function bodyParserError(err: { type?: unknown; status?: unknown; limit?: unknown }): HttpError | undefined {
  switch (err.type) {
    case 'entity.too.large':
      return httpError(413, 'too-long', `Request body exceeds the limit of ${String(err.limit)} bytes`);
    case 'entity.parse.failed':
      return httpError(400, 'structure', 'Request body is not valid JSON');
    case 'encoding.unsupported':
    case 'charset.unsupported':
      return httpError(415, 'not-supported', 'Unsupported content encoding or charset');
    case 'request.aborted':
    case 'request.size.invalid':
    case 'stream.encoding.set':
      return httpError(400, 'structure', 'Request body could not be read');
    case 'parameters.too.many':
      return httpError(413, 'too-long', 'Too many parameters');
    default:
      return undefined;
  }
}

export function errorHandler(logger: Logger): ErrorRequestHandler {
  return (err: unknown, req, res, _next) => {
    if (res.headersSent) {
      logger.error({ err: errMessage(err), method: req.method, route: req.route?.path }, 'error after response started');
      res.destroy();
      return;
    }
    if (err instanceof HttpError) {
      sendOutcome(res, err.status, err.outcome, { ...err.headers });
      return;
    }
    if (err instanceof OperationOutcomeError) {
      sendOutcome(res, statusFor(err.outcome), err.outcome);
      return;
    }
    const parsed = typeof err === 'object' && err !== null ? bodyParserError(err as Record<string, unknown>) : undefined;
    if (parsed) {
      sendOutcome(res, parsed.status, parsed.outcome);
      return;
    }
    if (isUnavailable(err)) {
      logger.warn({ err: errMessage(err), method: req.method, route: req.route?.path }, 'dependency unavailable');
      sendOutcome(res, 503, outcome('error', 'transient', 'Service temporarily unavailable; retry later'), { 'Retry-After': '5' });
      return;
    }
    const status = typeof err === 'object' && err !== null && 'status' in err ? Number((err as { status: unknown }).status) : NaN;
    if (status >= 400 && status < 500) {
      // Some other 4xx raised by middleware (e.g. a malformed URI): say so, without its internals.
      sendOutcome(res, status, outcome('error', 'invalid', 'The request could not be processed'));
      return;
    }
    logger.error({ err: errMessage(err), stack: err instanceof Error ? err.stack : undefined, method: req.method, route: req.route?.path }, 'unhandled error');
    sendOutcome(res, 500, internalError);
  };
}

export const notFoundHandler: RequestHandler = (req, _res, next) => {
  next(httpError(404, 'not-found', `No route for ${req.method} ${req.path.slice(0, 200)}`));
};

/**
 * Connection-level failures of a dependency (PostgreSQL down or restarting, a pool that cannot
 * connect, Redis refusing): the request may succeed later, so 503 with Retry-After, not 500.
 * SQLSTATE classes 08 (connection exception) and 57P (operator intervention: shutdown, restart).
 */
function isUnavailable(err: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false;
  const e = err as { code?: unknown; message?: unknown };
  const code = typeof e.code === 'string' ? e.code : '';
  if (/^(08|57P0)/.test(code) || ['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ENOTFOUND'].includes(code)) return true;
  const message = typeof e.message === 'string' ? e.message : '';
  return /Connection terminated|timeout exceeded when trying to connect|Cannot use a pool after calling end|connect ECONNREFUSED|Connection is closed|Stream isn't writeable/.test(message);
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
