/** Quotes a SQL identifier (schema names come from validated config, but quote anyway). */
export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}
