/**
 * Bundles the FHIR API returns (searchset, history) and the paging cursor in `Bundle.link[next]`.
 *
 * The cursor is opaque and tamper-proof: base64url JSON of the keyset position (the last row the
 * repository EXAMINED, so no page re-scans or skips over filtered items), bound to the request it
 * pages (a hash of the query and the client) and signed with HMAC-SHA-256. A cursor that was altered
 * or copied onto another query is a 400. It carries no resource content, only a sort key.
 *
 * @see http://hl7.org/fhir/R4/http.html#paging
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import type { Bundle, BundleEntry, BundleLink, OperationOutcome, Resource } from '@medplum/fhirtypes';
import type { ConsentChecked } from '../consent/index.js';
import { httpError } from '../platform/errors.js';

/** Keyset position: `[id]` for a type search, `[type, id]` for a compartment, `[version]` for history. */
export type CursorPosition = readonly string[];

/** Encodes and checks paging cursors. */
export interface CursorCodec {
  /** A signed cursor for `position`, valid only for requests with the same `binding`. */
  encode(position: CursorPosition, binding: string): string;
  /** The position in a cursor; throws a 400 HttpError when it is malformed, altered or bound to another request. */
  decode(token: string, binding: string): CursorPosition;
}

const MAX_CURSOR_CHARS = 1024;

/**
 * A cursor codec keyed by `key` (32 random bytes by default: cursors then survive only this
 * process; give every instance of a cluster the same key).
 *
 * The position is encrypted, not only signed (AES-256-GCM, the binding as associated data): it is
 * the key of the last row examined, which may be a row the client may not see, and with `_sort=date`
 * that key is the date of its clinical event. A cursor reveals nothing but its length.
 */
export function createCursorCodec(key: Uint8Array = randomBytes(32)): CursorCodec {
  const encKey = createHash('sha256').update('fhir-anchor cursor v2\0').update(key).digest();
  const bindingHash = (binding: string): Buffer => createHash('sha256').update(binding).digest();
  const invalid = (): Error => httpError(400, 'invalid', 'Invalid or expired paging cursor');
  return {
    encode(position, binding) {
      const iv = randomBytes(12);
      const cipher = createCipheriv('aes-256-gcm', encKey, iv);
      cipher.setAAD(bindingHash(binding));
      const body = Buffer.concat([cipher.update(JSON.stringify(position), 'utf8'), cipher.final()]);
      return Buffer.concat([iv, body, cipher.getAuthTag()]).toString('base64url');
    },
    decode(token, binding) {
      if (token.length > MAX_CURSOR_CHARS || !/^[A-Za-z0-9_-]+$/.test(token)) throw invalid();
      const raw = Buffer.from(token, 'base64url');
      if (raw.length < 12 + 16 + 1) throw invalid();
      let p: unknown;
      try {
        const decipher = createDecipheriv('aes-256-gcm', encKey, raw.subarray(0, 12));
        decipher.setAAD(bindingHash(binding));
        decipher.setAuthTag(raw.subarray(raw.length - 16));
        p = JSON.parse(Buffer.concat([decipher.update(raw.subarray(12, raw.length - 16)), decipher.final()]).toString('utf8'));
      } catch {
        // Altered, truncated, from another key, or bound to another request: the tag does not verify.
        throw invalid();
      }
      if (!Array.isArray(p) || p.length === 0 || p.length > 2 || !p.every((x) => typeof x === 'string')) throw invalid();
      return p as string[];
    },
  };
}

/** One entry to put in a Bundle: a released resource and how it got there. */
export interface BundleItem {
  readonly resource: ConsentChecked<Resource>;
  readonly mode: 'match' | 'include';
}

/** Absolute URL of a resource on this server. */
export function fullUrl(baseUrl: string, resource: Resource): string {
  return `${baseUrl.replace(/\/+$/, '')}/${resource.resourceType}/${resource.id ?? ''}`;
}

/**
 * A `searchset` Bundle. `total` is set only when given (the repository gives it only for
 * `_summary=count`, counting permitted items only): a total over unfiltered rows would leak.
 */
export function searchsetBundle(options: {
  readonly baseUrl: string;
  readonly selfUrl: string;
  readonly items: readonly BundleItem[];
  readonly nextUrl?: string;
  readonly total?: number;
  readonly warnings?: readonly string[];
}): Bundle {
  const link: BundleLink[] = [{ relation: 'self', url: options.selfUrl }];
  if (options.nextUrl) link.push({ relation: 'next', url: options.nextUrl });
  const entry: BundleEntry[] = options.items.map((i) => ({
    fullUrl: fullUrl(options.baseUrl, i.resource),
    resource: i.resource,
    search: { mode: i.mode },
  }));
  if (options.warnings?.length) {
    const oo: OperationOutcome = {
      resourceType: 'OperationOutcome',
      issue: options.warnings.map((w) => ({ severity: 'warning', code: 'not-supported', details: { text: w } })),
    };
    entry.push({ resource: oo, search: { mode: 'outcome' } });
  }
  return {
    resourceType: 'Bundle',
    type: 'searchset',
    ...(options.total !== undefined ? { total: options.total } : {}),
    link,
    ...(entry.length ? { entry } : {}),
  };
}

/** A `history` Bundle of released versions, newest first. */
export function historyBundle(options: {
  readonly baseUrl: string;
  readonly selfUrl: string;
  readonly versions: readonly ConsentChecked<Resource>[];
  readonly nextUrl?: string;
}): Bundle {
  const link: BundleLink[] = [{ relation: 'self', url: options.selfUrl }];
  if (options.nextUrl) link.push({ relation: 'next', url: options.nextUrl });
  return {
    resourceType: 'Bundle',
    type: 'history',
    link,
    ...(options.versions.length
      ? {
          entry: options.versions.map((r) => ({
            fullUrl: fullUrl(options.baseUrl, r),
            resource: r,
            request: { method: r.meta?.versionId === '1' ? 'POST' : 'PUT', url: `${r.resourceType}/${r.id ?? ''}` },
            response: { status: r.meta?.versionId === '1' ? '201' : '200', ...(r.meta?.lastUpdated ? { lastModified: r.meta.lastUpdated } : {}) },
          })),
        }
      : {}),
  };
}
