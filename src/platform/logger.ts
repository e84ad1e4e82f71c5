/**
 * Structured logging with pino. Loggers receive ids, counts and outcomes — never resource bodies,
 * request bodies or credentials. Header and body paths are redacted as a second line of defence.
 */
import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

/** Paths censored wherever they appear in a log object. */
const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["x-signature"]',
  'headers.authorization',
  'headers["x-signature"]',
  'body',
  'resource',
  'password',
  'secret',
  'token',
  '*.password',
  '*.secret',
  '*.token',
  '*.body',
  '*.resource',
];

export function createLogger(level: LevelWithSilent, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      name: 'fhir-anchor',
      level,
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    destination,
  );
}
