/**
 * Ids for rows that only ever grow and are never looked up by time: AuditEvents (one per FHIR request)
 * and their audit outbox records, and inbox items (one per notification).
 *
 * RFC 9562 UUIDv7 (the `uuid` package): 48 bits of Unix milliseconds, then a counter and random bits,
 * increasing within this process. Consecutive ids land next to each other in every B-tree keyed by
 * them (the resource, history, commitment and search-index keys of an AuditEvent, the inbox primary
 * key), instead of on a random leaf page of an index that outgrows memory. Measured here with 10^6
 * AuditEvents stored: 4.6× less WAL per AuditEvent (5.5 against 25.4 KB, mostly full-page images) and
 * 1.4× the materialisation rate (docs/decisions.md, "Time-ordered ids").
 *
 * The time in the id is the wall clock, not the injected one: it only orders index entries. It reveals
 * nothing the row does not already say (`recorded`, `received_at`).
 */
import { v7 } from 'uuid';

/** A new time-ordered UUID (version 7, lower-case hex with hyphens). */
export function timeOrderedId(): string {
  return v7();
}
