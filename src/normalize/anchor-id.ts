/**
 * Deterministic resource ids: a name-based UUID, version 5 (SHA-1), per RFC 9562 §5.5.
 */
import { createHash } from 'node:crypto';

/**
 * fhir-anchor's UUID namespace: the v5 UUID of the name `urn:fhir-anchor:resource-id` in the RFC 9562
 * URL namespace (6ba7b811-9dad-11d1-80b4-00c04fd430c8). Fixed forever: changing it re-keys every stored resource.
 */
export const ANCHOR_NAMESPACE = 'e1ee347a-a901-5e48-a35e-568dd95e600a';

const HEX = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** RFC 9562 UUIDv5 of `name` (UTF-8) in the namespace `namespace`. */
export function uuidV5(namespace: string, name: string): string {
  if (!HEX.test(namespace)) throw new TypeError(`not a UUID: ${namespace}`);
  const ns = Buffer.from(namespace.replace(/-/g, ''), 'hex');
  const hash = createHash('sha1').update(ns).update(name, 'utf8').digest();
  const b = hash.subarray(0, 16);
  b[6] = (b[6]! & 0x0f) | 0x50; // version 5
  b[8] = (b[8]! & 0x3f) | 0x80; // RFC 9562 variant
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/**
 * The id fhir-anchor gives a source's resource: UUIDv5 in {@link ANCHOR_NAMESPACE} of the JSON array
 * `[sourceId, resourceType, sourceResourceId]` (JSON so that no separator can make two triples collide).
 * 36 characters of `[0-9a-f-]`, so always a valid FHIR id (`[A-Za-z0-9\-\.]{1,64}`).
 *
 * @param sourceId - the source's configured id, e.g. `ehr-a`
 * @param resourceType - FHIR resource type, e.g. `Patient`
 * @param sourceResourceId - the id the source gave the resource
 * @returns a lowercase UUID string
 */
export function anchorId(sourceId: string, resourceType: string, sourceResourceId: string): string {
  return uuidV5(ANCHOR_NAMESPACE, JSON.stringify([sourceId, resourceType, sourceResourceId]));
}
