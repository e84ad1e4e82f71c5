/** Quotes a SQL identifier (schema names come from validated config, but quote anyway). */
export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/**
 * Batches of at most this many versions are stored under {@link BEGIN_INDEX_PLANS}.
 */
export const INDEX_PLAN_MAX_BATCH = 16;

/**
 * How a small batch's transaction starts: one generic plan per statement, made with sequential scans,
 * hash and merge joins as a last resort, so that its statements look each row up through the key
 * indexes however small the tables were when the plans were made.
 *
 * The store's statements are named, so PostgreSQL plans them per connection and soon settles on a
 * generic plan. A generic plan cannot see how many rows `unnest($1)` gives and assumes 100; on the
 * tables of a young database that makes a hash join over a sequential scan the cheapest plan, and
 * the connection keeps it while the tables grow, until an ANALYZE happens to invalidate it. Storing
 * one resource then scanned the whole head, history and search-index tables. Measured on one
 * connection, single-resource `putVersions` from an empty schema: 4.3 ms each over the first 1,000
 * resources, 13.8 ms at 6,000, against 1.8–2.7 ms throughout with this; on tables of 20,000 analysed
 * resources 1.4–2.1 ms against 1.9–2.3. (With the `enable_*` settings alone, PostgreSQL judged the
 * generic plan dearer than a custom one and planned three statements again on every call, 0.3 ms.)
 * Batches (a Synthea bundle's hundreds of entries) keep the planner's own choice: on young tables a
 * hash join is the right plan for them. Names of their own (`…_small`) keep the two kinds of plans
 * apart.
 */
export const BEGIN_INDEX_PLANS = 'BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off; SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off';
