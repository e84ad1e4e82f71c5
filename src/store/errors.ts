/**
 * Errors the store raises in its own vocabulary, so that callers need not know PostgreSQL's codes.
 */

/**
 * PostgreSQL refused a value of the data itself (SQLSTATE class 22, data exception, or 54, program
 * limit exceeded: an index row too large, say), not the connection or the schema: the same data
 * will be refused again, while the rest of a batch may well be stored.
 */
export class StoreDataError extends Error {
  constructor(
    message: string,
    readonly sqlState: string,
  ) {
    super(message);
    this.name = 'StoreDataError';
  }
}

/**
 * A version-aware write (`ifMatch`) found another current version: the writer's copy is stale.
 * `current` is the current versionId (undefined when the resource has none).
 */
export class StoreConflictError extends Error {
  constructor(
    readonly resourceType: string,
    readonly id: string,
    readonly current: string | undefined,
  ) {
    super(`${resourceType}/${id} is at version ${current ?? 'none'}, not the one the write expected`);
    this.name = 'StoreConflictError';
  }
}

/** `err` as a {@link StoreDataError} when PostgreSQL refused the data, else `err` unchanged. */
export function asStoreDataError(err: unknown): unknown {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && /^(22|54)[0-9A-Z]{3}$/.test(code)) {
    // Only the first line and a bounded length: PostgreSQL quotes the refused value, which can be PHI.
    const message = (err instanceof Error ? err.message : String(err)).split('\n')[0]!.slice(0, 120);
    return new StoreDataError(`the database refused a value (SQLSTATE ${code}): ${message}`, code);
  }
  return err;
}
