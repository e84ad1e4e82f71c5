/**
 * Understands every notification style fhir-anchor accepts, as a pure function of the raw body:
 *
 * - classic R4 rest-hook: a bare resource (Medplum and many EHRs), or an empty body plus a header
 *   naming a deleted resource (Medplum: `X-Medplum-Deleted-Resource: Type/id`); an empty body on
 *   `PUT /hooks/{source}/{type}/{id}` names the resource to fetch back; an empty `POST` is an R4
 *   Subscription without `channel.payload` ("no payload … just a notification", as HAPI FHIR sends it):
 *   a `ping` that something changed, which the worker turns into a `_lastUpdated` search on the source;
 * - Subscriptions R5 Backport IG for R4: Bundle `history` whose first entry is a SubscriptionStatus
 *   `Parameters` (handshake, heartbeat, event-notification with full-resource / id-only / empty);
 * - R4B (Bundle `history`, first entry a `SubscriptionStatus`) and R5 (Bundle `subscription-notification`);
 * - transaction / batch / collection / searchset / history Bundles (e.g. Synthea output).
 *
 * Spec: https://hl7.org/fhir/uv/subscriptions-backport/ (notifications), http://hl7.org/fhir/R4/http.html#transaction
 */
import { isUtf8 } from 'node:buffer';
import { createHash } from 'node:crypto';
import type { OperationOutcome, OperationOutcomeIssue } from '@medplum/fhirtypes';
import { isStructurallyFhir } from '../normalize/index.js';
import { outcome } from '../platform/errors.js';
import { pathText, scanJsonText, type DuplicateKey, type WrittenPrecision } from '../platform/json-duplicates.js';
import { MAX_JSON_DEPTH } from '../platform/json-text.js';

export type NotificationType = 'handshake' | 'heartbeat' | 'event-notification' | 'query-status' | 'query-event';
export type PayloadContent = 'empty' | 'id-only' | 'full-resource';

/** One thing a notification asks us to apply. */
export type NotificationEntry =
  /** A resource body (full-resource payloads, bare resources, bundle entries). */
  | {
      readonly kind: 'resource';
      readonly index: number;
      readonly resource: Record<string, unknown>;
      readonly fullUrl?: string;
      /** Conditional create: only store when nothing matches (`Bundle.entry.request.ifNoneExist`). */
      readonly ifNoneExist?: string;
    }
  /** A reference we must fetch from the source (id-only payloads, focus of empty payloads). */
  | { readonly kind: 'fetch'; readonly index: number; readonly reference: string }
  /** A deletion. */
  | { readonly kind: 'delete'; readonly index: number; readonly resourceType: string; readonly id: string }
  /**
   * A Bundle entry that cannot be applied (not an object, a resource that is not FHIR, a delete or
   * id-only entry naming nothing): a dead letter with this reason, while the entries beside it go on.
   * For a resource that is not FHIR, `issues` are the structural check's findings (paths inside it)
   * and `resource` is the resource (what the entry is about, for {@link notificationDedupKey}).
   */
  | {
      readonly kind: 'invalid';
      readonly index: number;
      readonly text: string;
      readonly issues?: readonly OperationOutcomeIssue[];
      readonly resource?: Record<string, unknown>;
    };

export interface SubscriptionStatusInfo {
  readonly subscription: string;
  readonly topic: string | undefined;
  readonly status: string | undefined;
  readonly type: NotificationType;
  readonly eventsSinceStart: number | undefined;
  /** Event numbers in this notification (event-notification only). */
  readonly eventNumbers: readonly number[];
  /** Focus references of the events, when the payload carries them. */
  readonly focus: readonly string[];
  /** What the notification carries: full resources, ids only, or nothing. */
  readonly payload: PayloadContent;
}

export type NotificationStyle = 'rest-hook' | 'delete' | 'ping' | 'backport-r4' | 'r4b' | 'r5' | 'bundle';

export interface ParsedNotification {
  readonly style: NotificationStyle;
  readonly status?: SubscriptionStatusInfo;
  readonly bundleType?: string;
  readonly entries: readonly NotificationEntry[];
}

export type ParseResult =
  | { readonly ok: true; readonly notification: ParsedNotification }
  | { readonly ok: false; readonly reason: 'unparseable' | 'not-fhir' | 'invalid-structure'; readonly outcome: OperationOutcome };

export interface ParseContext {
  /** `Type/id` from a delete header (e.g. `X-Medplum-Deleted-Resource`) or a `DELETE /hooks/{source}/{type}/{id}`. */
  readonly deletedResource?: string;
  /** The `charset` parameter of the request's Content-Type, if any (only to explain a body that is not UTF-8). */
  readonly charset?: string;
  /** Type and id from the URL of `PUT /hooks/{source}/{type}/{id}`. */
  readonly path?: { readonly resourceType: string; readonly id: string };
}

/** A FHIR resource type name (the parser checks shape, the normalize stage checks the type exists). */
const RESOURCE_TYPE = /^[A-Z][A-Za-z]{1,63}$/;
const FHIR_ID = /^[A-Za-z0-9\-.]{1,64}$/;
/** Deepest JSON nesting we accept (a hostile body must not exhaust the stack later). */

function fail(reason: 'unparseable' | 'not-fhir' | 'invalid-structure', text: string, expression?: string): ParseResult {
  return { ok: false, reason, outcome: outcome('error', reason === 'not-fhir' || reason === 'invalid-structure' ? 'structure' : 'invalid', text, expression) };
}

/**
 * The entry for a resource: a `resource` entry, or an `invalid` one when it is not FHIR R4 at all
 * (unknown type or element, wrong JSON shape, text PostgreSQL cannot store: {@link isStructurallyFhir}).
 * Every `resource` entry is made here, so the worker need not check them again. An `invalid` one is
 * answered with a warning and kept as a dead letter, not refused with a 4xx: a rest-hook EHR may turn
 * a Subscription that gets 4xx answers to `error` and stop sending the rest.
 *
 * @param what - how the reason names the resource (`Bundle.entry[3].resource`)
 */
export function resourceEntry(
  resource: Record<string, unknown>,
  index: number,
  what: string,
  extras: { readonly fullUrl?: string | undefined; readonly ifNoneExist?: string | undefined } = {},
  found: readonly OperationOutcomeIssue[] = [],
): NotificationEntry {
  const check = isStructurallyFhir(resource);
  const issues = [...found, ...(check.ok ? [] : check.outcome.issue)];
  if (issues.length > 0) return { kind: 'invalid', index, text: `${what} is not FHIR R4: ${firstFew(issues.map(issueText), 3)}`, issues, resource };
  return { kind: 'resource', index, resource, ...(extras.fullUrl ? { fullUrl: extras.fullUrl } : {}), ...(extras.ifNoneExist ? { ifNoneExist: extras.ifNoneExist } : {}) };
}

const issueText = (i: OperationOutcomeIssue): string => `${i.details?.text ?? i.code}${i.expression?.[0] ? ` (${i.expression[0]})` : ''}`;

/** The issue for a duplicated JSON property name (see src/platform/json-duplicates.ts), located from `root`. */
function duplicateIssue(root: string, d: DuplicateKey): OperationOutcomeIssue {
  return { severity: 'error', code: 'structure', details: { text: `Duplicate JSON property "${d.key.slice(0, 64)}": its value is ambiguous` }, expression: [pathText(root, [...d.path, d.key])] };
}

/** The first `max` texts, and how many more there are, for a one-line reason. */
function firstFew(texts: readonly string[], max: number): string {
  return texts.length > max ? `${texts.slice(0, max).join('; ')}; and ${texts.length - max} more` : texts.join('; ');
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** HL7's extension for the precision of a decimal as written (R4 core extensions; context: decimal). */
export const PRECISION_EXTENSION = 'http://hl7.org/fhir/StructureDefinition/quantity-precision';

/** Property names of a Quantity or Money beside its `value`: a number there is a decimal. */
const QUANTITY_KEYS = ['unit', 'system', 'code', 'comparator', 'currency'];

/**
 * FHIR counts a decimal's written precision as part of its value ("72.50" is not "72.5"), and
 * `JSON.parse` drops it. For each number written with trailing zeros after its point (see
 * {@link scanJsonText}) where the element is certainly a decimal (the `value` of a Quantity or Money,
 * or a `…Decimal` choice element such as `valueDecimal`), this adds HL7's precision extension to the
 * primitive (`"_value": {"extension": [{"url": ".../quantity-precision", "valueInteger": 2}]}`), unless
 * the sender gave one: the value survives every JSON round trip, the hash and FHIR consumers. Decimals
 * elsewhere (and in arrays) are left as parsed; the inbox keeps the exact text either way.
 */
function keepWrittenPrecision(root: Record<string, unknown>, precisions: readonly WrittenPrecision[]): void {
  for (const p of precisions) {
    const key = p.path[p.path.length - 1];
    if (typeof key !== 'string') continue;
    let parent: unknown = root;
    for (let k = 0; k < p.path.length - 1 && parent !== undefined; k++) {
      const seg = p.path[k]!;
      parent = typeof parent === 'object' && parent !== null ? (parent as Record<string | number, unknown>)[seg] : undefined;
    }
    if (!isObject(parent) || typeof parent[key] !== 'number') continue;
    const decimal = (key === 'value' && QUANTITY_KEYS.some((q) => typeof parent[q] === 'string')) || (key.endsWith('Decimal') && key.length > 7);
    if (!decimal) continue;
    const sibling = `_${key}`;
    const existing = isObject(parent[sibling]) ? parent[sibling] : {};
    const extensions = Array.isArray(existing.extension) ? existing.extension : [];
    if (extensions.some((e) => isObject(e) && e.url === PRECISION_EXTENSION)) continue;
    parent[sibling] = { ...existing, extension: [...extensions, { url: PRECISION_EXTENSION, valueInteger: p.decimals }] };
  }
}

/** Parses a `Type/id` (relative or at the end of an absolute URL, optionally with `/_history/vid`). */
export function parseReference(reference: string): { resourceType: string; id: string; versionId?: string } | undefined {
  const m = /(?:^|\/)([A-Z][A-Za-z]{1,63})\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/([A-Za-z0-9\-.]{1,64}))?\/?$/.exec(reference.split('?')[0]!);
  if (!m) return undefined;
  return { resourceType: m[1]!, id: m[2]!, ...(m[3] ? { versionId: m[3] } : {}) };
}

function toNumber(v: unknown): number | undefined {
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0) return v;
  if (typeof v === 'string' && /^\d{1,15}$/.test(v)) return Number(v);
  return undefined;
}

function referenceOf(v: unknown): string | undefined {
  return isObject(v) && typeof v.reference === 'string' ? v.reference : undefined;
}

/** Reads the backport R4 `Parameters` status (profile backport-subscription-status-r4). */
function statusFromParameters(p: Record<string, unknown>): Omit<SubscriptionStatusInfo, 'payload'> | string {
  const params = Array.isArray(p.parameter) ? p.parameter.filter(isObject) : [];
  const get = (name: string) => params.find((x) => x.name === name);
  const subscription = referenceOf(get('subscription')?.valueReference);
  if (!subscription) return 'SubscriptionStatus parameter "subscription" (valueReference) is required';
  const type = get('type')?.valueCode;
  if (typeof type !== 'string' || !['handshake', 'heartbeat', 'event-notification', 'query-status', 'query-event'].includes(type)) {
    return 'SubscriptionStatus parameter "type" must be handshake, heartbeat, event-notification, query-status or query-event';
  }
  const eventNumbers: number[] = [];
  const focus: string[] = [];
  for (const ev of params.filter((x) => x.name === 'notification-event')) {
    const parts = Array.isArray(ev.part) ? ev.part.filter(isObject) : [];
    const num = toNumber(parts.find((x) => x.name === 'event-number')?.valueString ?? parts.find((x) => x.name === 'event-number')?.valueInteger);
    if (num === undefined) return 'notification-event.event-number must be a non-negative integer';
    eventNumbers.push(num);
    const f = referenceOf(parts.find((x) => x.name === 'focus')?.valueReference);
    if (f) focus.push(f);
  }
  const topic = get('topic')?.valueCanonical ?? get('topic')?.valueUri;
  const status = get('status')?.valueCode;
  return {
    subscription,
    topic: typeof topic === 'string' ? topic : undefined,
    status: typeof status === 'string' ? status : undefined,
    type: type as NotificationType,
    eventsSinceStart: toNumber(get('events-since-subscription-start')?.valueString ?? get('events-since-subscription-start')?.valueInteger64),
    eventNumbers,
    focus,
  };
}

/** Reads an R4B/R5 `SubscriptionStatus` resource. */
function statusFromResource(s: Record<string, unknown>): Omit<SubscriptionStatusInfo, 'payload'> | string {
  const subscription = referenceOf(s.subscription);
  if (!subscription) return 'SubscriptionStatus.subscription is required';
  const type = s.type;
  if (typeof type !== 'string' || !['handshake', 'heartbeat', 'event-notification', 'query-status', 'query-event'].includes(type)) {
    return 'SubscriptionStatus.type must be handshake, heartbeat, event-notification, query-status or query-event';
  }
  const eventNumbers: number[] = [];
  const focus: string[] = [];
  for (const ev of Array.isArray(s.notificationEvent) ? s.notificationEvent.filter(isObject) : []) {
    const num = toNumber(ev.eventNumber);
    if (num === undefined) return 'SubscriptionStatus.notificationEvent.eventNumber must be a non-negative integer';
    eventNumbers.push(num);
    const f = referenceOf(ev.focus);
    if (f) focus.push(f);
  }
  return {
    subscription,
    topic: typeof s.topic === 'string' ? s.topic : undefined,
    status: typeof s.status === 'string' ? s.status : undefined,
    type: type as NotificationType,
    eventsSinceStart: toNumber(s.eventsSinceSubscriptionStart),
    eventNumbers,
    focus,
  };
}

function bundleEntries(bundle: Record<string, unknown>, skipFirst: boolean, duplicates: readonly DuplicateKey[] = []): NotificationEntry[] | string {
  const raw = bundle.entry === undefined ? [] : bundle.entry;
  if (!Array.isArray(raw)) return 'Bundle.entry must be an array';
  const entries: NotificationEntry[] = [];
  const invalid = (index: number, text: string): void => {
    entries.push({ kind: 'invalid', index, text });
  };
  for (let index = skipFirst ? 1 : 0; index < raw.length; index++) {
    const e = raw[index];
    if (!isObject(e)) {
      invalid(index, `Bundle.entry[${index}] must be an object`);
      continue;
    }
    // Duplicated property names inside this entry: in its resource, the resource cannot be applied;
    // elsewhere in the entry (its request, its fullUrl), the entry cannot.
    const dups = duplicates.filter((d) => d.path[0] === 'entry' && d.path[1] === index);
    if (dups.some((d) => d.path[2] !== 'resource')) {
      invalid(index, `Bundle.entry[${index}] has a duplicate JSON property: ${firstFew(dups.map((d) => issueText(duplicateIssue('Bundle', d))), 3)}`);
      continue;
    }
    const request = isObject(e.request) ? e.request : undefined;
    const method = typeof request?.method === 'string' ? request.method : undefined;
    const fullUrl = typeof e.fullUrl === 'string' ? e.fullUrl : undefined;
    if (method === 'DELETE') {
      const ref = typeof request?.url === 'string' ? parseReference(request.url) : undefined;
      if (!ref) {
        invalid(index, `Bundle.entry[${index}].request.url must name the deleted resource as Type/id`);
        continue;
      }
      entries.push({ kind: 'delete', index, resourceType: ref.resourceType, id: ref.id });
      continue;
    }
    if (e.resource !== undefined) {
      if (!isObject(e.resource)) {
        invalid(index, `Bundle.entry[${index}].resource must be an object`);
        continue;
      }
      const ifNoneExist = typeof request?.ifNoneExist === 'string' ? request.ifNoneExist : undefined;
      entries.push(resourceEntry(e.resource, index, `Bundle.entry[${index}].resource`, { fullUrl, ifNoneExist }, dups.map((d) => duplicateIssue('Bundle', d))));
      continue;
    }
    // No resource: an id-only entry; the reference is the fullUrl (or the request URL).
    const target = fullUrl ?? (typeof request?.url === 'string' ? request.url : undefined);
    if (!target || !parseReference(target)) {
      invalid(index, `Bundle.entry[${index}] has neither a resource nor a resolvable fullUrl`);
      continue;
    }
    entries.push({ kind: 'fetch', index, reference: target });
  }
  // Nothing in it is even shaped like an entry: the notification as a whole is refused. (Resources
  // that are not FHIR do not count: like a bare one, they are accepted and kept as dead letters.)
  if (entries.length > 0 && entries.every((e) => e.kind === 'invalid' && !e.resource)) {
    return firstFew(
      entries.map((e) => (e.kind === 'invalid' ? e.text : '')),
      5,
    );
  }
  return entries;
}

/** Two or more lines, the first of them a JSON object on its own (only asked of a body that is not JSON). */
function looksNdjson(text: string): boolean {
  const trimmed = text.trim();
  const nl = trimmed.indexOf('\n');
  if (nl < 0) return false;
  try {
    const first: unknown = JSON.parse(trimmed.slice(0, nl));
    return typeof first === 'object' && first !== null && !Array.isArray(first);
  } catch {
    return false;
  }
}

/** UTF-16's byte order mark, or ASCII in UTF-16 (a zero byte beside each character). */
function looksUtf16(body: Buffer): boolean {
  if (body.length >= 2 && ((body[0] === 0xff && body[1] === 0xfe) || (body[0] === 0xfe && body[1] === 0xff))) return true;
  return body.length >= 4 && ((body[0] !== 0 && body[1] === 0 && body[2] !== 0 && body[3] === 0) || (body[0] === 0 && body[1] !== 0 && body[2] === 0 && body[3] !== 0));
}

/**
 * What to tell a sender whose body is not UTF-8: the charset its Content-Type declares, or UTF-16
 * when the bytes start with its byte order mark or look like ASCII text in UTF-16 (every other byte
 * zero); FHIR JSON is UTF-8 whatever the header says.
 */
function notUtf8Text(body: Buffer, charset: string | undefined): string {
  const what = looksUtf16(body) ? 'is UTF-16' : charset && !/^utf-?8$/i.test(charset) ? `is not valid UTF-8 (Content-Type declares charset=${charset.slice(0, 40)})` : 'is not valid UTF-8';
  return `Notification body ${what}: FHIR JSON is always UTF-8`;
}

/** Parses a raw notification body. Never throws. */
export function parseNotification(body: Buffer, ctx: ParseContext = {}): ParseResult {
  // Decoding bad bytes would silently turn them into U+FFFD: a Latin-1 "Müller" stored as "M\ufffdller".
  if (!isUtf8(body)) return fail('unparseable', notUtf8Text(body, ctx.charset));
  const text = body.toString('utf8').replace(/^\uFEFF/, '');
  if (text.trim() === '') {
    const named = ctx.deletedResource ? parseReference(ctx.deletedResource) : undefined;
    if (ctx.deletedResource !== undefined && !named) {
      // A delete we cannot tell apart from a ping would be lost: say what is wrong instead.
      return fail('invalid-structure', `The deleted-resource header must name the resource as Type/id (got "${ctx.deletedResource.slice(0, 80)}")`);
    }
    if (named) {
      return { ok: true, notification: { style: 'delete', entries: [{ kind: 'delete', index: 0, resourceType: named.resourceType, id: named.id }] } };
    }
    if (ctx.path) {
      // A rest-hook that names the resource in its URL and sends no body: fetch it back.
      return { ok: true, notification: { style: 'rest-hook', entries: [{ kind: 'fetch', index: 0, reference: `${ctx.path.resourceType}/${ctx.path.id}` }] } };
    }
    return { ok: true, notification: { style: 'ping', entries: [] } };
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    if (text.trimStart().startsWith('<')) {
      return fail('unparseable', 'FHIR XML is not accepted: send JSON (a Subscription with channel.payload application/fhir+json)');
    }
    // ASCII text in UTF-16 is valid UTF-8 (every other byte NUL), but not JSON.
    if (looksUtf16(body)) return fail('unparseable', notUtf8Text(body, ctx.charset));
    if (looksNdjson(text)) {
      return fail('unparseable', 'Notification body is NDJSON (one resource per line): a hook takes one resource or a Bundle; import NDJSON files with `fhir-anchor import`');
    }
    return fail('unparseable', 'Notification body is not valid JSON');
  }
  if (!isObject(json)) return fail('not-fhir', 'Notification body must be a JSON object (a FHIR resource)');
  // One pass over the text: the nesting limit, and what JSON.parse lost: the last of any duplicated
  // name won, and the written precision of decimals (72.50 → 72.5) went, which the precision extension keeps.
  const { duplicates, precisions, tooDeep } = scanJsonText(text);
  if (tooDeep) return fail('invalid-structure', `JSON nesting deeper than ${MAX_JSON_DEPTH} levels`);
  keepWrittenPrecision(json, precisions);
  const resourceType = json.resourceType;
  if (typeof resourceType !== 'string' || !RESOURCE_TYPE.test(resourceType)) {
    return fail('not-fhir', 'Notification body has no valid resourceType', 'resourceType');
  }
  if (json.id !== undefined && (typeof json.id !== 'string' || !FHIR_ID.test(json.id))) {
    return fail('invalid-structure', 'Resource.id must match [A-Za-z0-9-.]{1,64}', `${resourceType}.id`);
  }

  if (resourceType === 'Bundle' && ctx.path && ctx.path.resourceType !== 'Bundle') {
    return fail('invalid-structure', `Body is a Bundle but the URL names ${ctx.path.resourceType}/${ctx.path.id}`);
  }
  if (resourceType !== 'Bundle') {
    if (ctx.path && (ctx.path.resourceType !== resourceType || (json.id !== undefined && json.id !== ctx.path.id))) {
      return fail('invalid-structure', `Body is ${resourceType}/${String(json.id)} but the URL names ${ctx.path.resourceType}/${ctx.path.id}`);
    }
    const resource = ctx.path && json.id === undefined ? { ...json, id: ctx.path.id } : json;
    if (resource.id === undefined) return fail('invalid-structure', 'A notified resource must carry its id', `${resourceType}.id`);
    return { ok: true, notification: { style: 'rest-hook', entries: [resourceEntry(resource, 0, 'The resource', {}, duplicates.map((d) => duplicateIssue(resourceType, d)))] } };
  }

  const bundleType = typeof json.type === 'string' ? json.type : undefined;
  const first = Array.isArray(json.entry) && isObject(json.entry[0]) && isObject(json.entry[0].resource) ? json.entry[0].resource : undefined;
  const firstType = first?.resourceType;
  const isBackportR4 = bundleType === 'history' && firstType === 'Parameters';
  const isStatusResource = (bundleType === 'history' || bundleType === 'subscription-notification') && firstType === 'SubscriptionStatus';
  // A duplicated name in the Bundle itself or in a notification's status (not inside an entry to apply):
  // which type, which subscription, which event numbers is ambiguous, so the whole notification is refused.
  const outside = duplicates.find((d) => !(d.path[0] === 'entry' && typeof d.path[1] === 'number' && !((isBackportR4 || isStatusResource) && d.path[1] === 0)));
  if (outside) {
    const issue = duplicateIssue('Bundle', outside);
    return fail('invalid-structure', issue.details!.text!, issue.expression![0]);
  }
  if (bundleType === 'subscription-notification' && !isStatusResource) {
    return fail('invalid-structure', 'A subscription-notification Bundle must start with a SubscriptionStatus entry', 'Bundle.entry[0]');
  }
  if (isBackportR4 || isStatusResource) {
    const s = isBackportR4 ? statusFromParameters(first!) : statusFromResource(first!);
    if (typeof s === 'string') return fail('invalid-structure', s, 'Bundle.entry[0].resource');
    const entries = bundleEntries(json, true, duplicates);
    if (typeof entries === 'string') return fail('invalid-structure', entries);
    const payload: PayloadContent = entries.some((e) => e.kind === 'resource') ? 'full-resource' : entries.length > 0 || s.focus.length > 0 ? 'id-only' : 'empty';
    const style: NotificationStyle = isBackportR4 ? 'backport-r4' : bundleType === 'subscription-notification' ? 'r5' : 'r4b';
    return { ok: true, notification: { style, bundleType, status: { ...s, payload }, entries } };
  }
  if (!bundleType || !['transaction', 'batch', 'collection', 'searchset', 'history', 'transaction-response', 'batch-response'].includes(bundleType)) {
    return fail('invalid-structure', `Bundle.type "${String(bundleType)}" is not accepted (transaction, batch, collection, searchset, history)`, 'Bundle.type');
  }
  const entries = bundleEntries(json, false, duplicates);
  if (typeof entries === 'string') return fail('invalid-structure', entries);
  return { ok: true, notification: { style: 'bundle', bundleType, entries } };
}

/** What an entry is about, for {@link notificationDedupKey}: the resource and its version, a reference, a delete. */
function entryIdentity(e: NotificationEntry): unknown {
  if (e.kind === 'resource') {
    const meta = isObject(e.resource.meta) ? e.resource.meta : {};
    return [e.resource.resourceType, e.resource.id, meta.versionId, meta.lastUpdated];
  }
  if (e.kind === 'fetch') return e.reference;
  if (e.kind === 'delete') return ['delete', e.resourceType, e.id];
  // A resource that is not FHIR is about what a valid one would be (the key is the same as before the check).
  if (e.resource) return entryIdentity({ kind: 'resource', index: e.index, resource: e.resource });
  return ['invalid', e.index];
}

/**
 * The idempotency key of a notification for the inbox: the same notification stored twice is stored
 * once. A bare resource with a versionId is keyed by type/id/version; a subscription event by its
 * subscription, event numbers and what the events are about; anything else by the SHA-256 of its bytes. Deletions, pings and
 * bodiless fetch-backs carry no key (an empty body says nothing to tell two of them apart); the worker
 * makes them idempotent instead (a delete of what is deleted is skipped, a version stored is stored once).
 */
export function notificationDedupKey(parsed: ParsedNotification | undefined, body: Buffer): string | undefined {
  // Nothing tells two of these apart, and each may announce a different change.
  if (parsed?.style === 'delete' || parsed?.style === 'ping' || (parsed?.style === 'rest-hook' && parsed.entries[0]?.kind === 'fetch')) return undefined;
  if (parsed?.style === 'rest-hook') {
    const e = parsed.entries[0];
    const resource = e?.kind === 'resource' || e?.kind === 'invalid' ? e.resource : undefined;
    if (resource) {
      const meta = isObject(resource.meta) ? resource.meta : undefined;
      if (typeof meta?.versionId === 'string' && meta.versionId.length <= 64) {
        return `${String(resource.resourceType)}/${String(resource.id)}/_history/${meta.versionId}`;
      }
    }
  }
  if (parsed?.status?.type === 'event-notification' && parsed.status.eventNumbers.length > 0) {
    // The event numbers, and what the events are about: a redelivery of the same event is stored once,
    // but a source whose numbering restarted (a re-created Subscription, a server that does not persist
    // its counters) sends new events under old numbers, which must not be taken for repeats.
    const about = createHash('sha256')
      .update(JSON.stringify([parsed.status.focus, parsed.entries.map(entryIdentity)]))
      .digest('hex')
      .slice(0, 32);
    const key = `event:${parsed.status.subscription}#${parsed.status.eventNumbers.join(',')}@${about}`;
    if (key.length <= 512) return key;
  }
  return `sha256:${createHash('sha256').update(body).digest('hex')}`;
}
