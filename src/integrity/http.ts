/**
 * HTTP surface of the integrity stage.
 *
 * - {@link createLedgerRouter} (mounted at `/ledger`): the latest signed checkpoint, the verifier key,
 *   consistency proofs and anchor receipts. Public data only: roots, sizes, signatures, hashes.
 * - {@link createVerifyRouter} (mounted at `/fhir/R4`): the FHIR operation `$verify` on a resource
 *   (current version) or a version, answering a `Parameters` resource with everything the offline
 *   verifier needs. It discloses the salt, so it reads versions only through the injected
 *   {@link VersionReader}: the consent-scoped repository slots in there.
 *
 * Errors are thrown as `HttpError`s; the app's single error handler turns them into OperationOutcomes.
 *
 * @see docs/integrity.md
 * @packageDocumentation
 */
import { Router, type Request, type Response } from 'express';
import type { Parameters, ParametersParameter } from '@medplum/fhirtypes';
import type { CapabilityContribution } from '../fhir-api/capability.js';
import { httpError } from '../platform/errors.js';
import type { Logger } from '../platform/logger.js';
import type { ResourceStore, StoredVersion } from '../store/types.js';
import { verifyCommitment } from './commitment.js';
import { encodeBase64, toHex } from './encoding.js';
import type { IntegrityLog } from './log.js';
import { committedValue } from './record.js';

const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const TEXT = 'text/plain; charset=utf-8';
const DECIMAL_RE = /^(?:0|[1-9][0-9]{0,15})$/;
const TYPE_RE = /^[A-Z][A-Za-z]{0,63}$/;
const ID_RE = /^[A-Za-z0-9\-.]{1,64}$/;
const VID_RE = /^[1-9][0-9]{0,14}$/;

/**
 * Where `$verify` reads versions. Today the `ResourceStore`; later a repository already narrowed by
 * SMART scopes and consent (it decides what is disclosed, including the salt).
 */
export type VersionReader = Pick<ResourceStore, 'readCurrent' | 'readVersion'>;

/** What the routers need from the log (an {@link IntegrityLog}). */
export type LedgerLog = Pick<
  IntegrityLog,
  'origin' | 'verifierKey' | 'batchIntervalMs' | 'latestCheckpoint' | 'checkpointAt' | 'anchorReceipts' | 'proveConsistency' | 'proofFor'
>;

/** Dependencies of the routers. */
export interface IntegrityRouterDeps {
  readonly log: LedgerLog;
  /** Version access for `$verify` (swap in the consent-scoped repository). */
  readonly store: VersionReader;
  readonly logger: Logger;
}

function decimalParam(req: Request, name: string): number | undefined {
  const raw = req.query[name];
  if (raw === undefined) return undefined;
  if (typeof raw !== 'string' || !DECIMAL_RE.test(raw) || !Number.isSafeInteger(Number(raw))) {
    throw httpError(400, 'invalid', `Query parameter ${name} must be a non-negative decimal integer`);
  }
  return Number(raw);
}

async function latestOr503(log: LedgerLog): Promise<NonNullable<Awaited<ReturnType<LedgerLog['latestCheckpoint']>>>> {
  const cp = await log.latestCheckpoint();
  if (cp === undefined) throw httpError(503, 'transient', 'The integrity log has no checkpoint yet', { 'Retry-After': '1' });
  return cp;
}

/**
 * Routes under `/ledger`:
 * - `GET /checkpoint` — the latest signed checkpoint (C2SP tlog-checkpoint signed note), text/plain;
 * - `GET /checkpoint?size=N` — the signed checkpoint of exactly N leaves (404 if none was signed);
 * - `GET /key` — the log's verifier key (C2SP signed-note vkey), text/plain;
 * - `GET /consistency?from=M&to=N` — RFC 9162 consistency proof: base64 hashes one per line
 *   (text/plain), or `{from, to, proof: [base64…]}` when the client accepts only application/json
 *   or passes `format=json`. `to` defaults to the latest checkpoint size;
 * - `GET /anchors?size=N` — `{size, rootHash, receipts: AnchorReceipt[]}` for the checkpoint of N
 *   leaves (default: the latest).
 *
 * @param deps - the log (the other fields are unused here).
 * @returns an express Router.
 */
export function createLedgerRouter(deps: Pick<IntegrityRouterDeps, 'log'>): Router {
  const { log } = deps;
  const router = Router();

  router.get('/checkpoint', async (req: Request, res: Response) => {
    const size = decimalParam(req, 'size');
    const cp = size === undefined ? await latestOr503(log) : await log.checkpointAt(size);
    if (cp === undefined) throw httpError(404, 'not-found', `No checkpoint of size ${size} was signed`);
    res.setHeader('Cache-Control', size === undefined ? 'no-cache' : 'public, max-age=31536000, immutable');
    res.type(TEXT).send(cp.signedNote);
  });

  router.get('/key', (_req: Request, res: Response) => {
    res.setHeader('Cache-Control', 'public, max-age=3600');
    res.type(TEXT).send(`${log.verifierKey}\n`);
  });

  router.get('/consistency', async (req: Request, res: Response) => {
    const from = decimalParam(req, 'from');
    if (from === undefined) throw httpError(400, 'required', 'Query parameter from is required');
    const latest = await latestOr503(log);
    const to = decimalParam(req, 'to') ?? latest.size;
    if (from > to) throw httpError(400, 'invalid', 'from must not exceed to');
    if (to > latest.size) throw httpError(400, 'invalid', `to exceeds the latest checkpoint size ${latest.size}`);
    const proof = (await log.proveConsistency(from, to)).map(encodeBase64);
    // text/plain unless asked for JSON (format=json, or an Accept that prefers application/json).
    if (req.query.format === 'json' || req.accepts(['text/plain', 'application/json']) === 'application/json') {
      res.json({ from, to, proof });
    } else {
      res.type(TEXT).send(proof.map((p) => `${p}\n`).join(''));
    }
  });

  router.get('/anchors', async (req: Request, res: Response) => {
    const requested = decimalParam(req, 'size');
    const cp = requested === undefined ? await latestOr503(log) : await log.checkpointAt(requested);
    if (cp === undefined) throw httpError(404, 'not-found', `No checkpoint of size ${requested} was signed`);
    res.json({ size: cp.size, rootHash: toHex(cp.rootHash), receipts: await log.anchorReceipts(cp.size) });
  });

  return router;
}

function param(name: string, value: Omit<ParametersParameter, 'name'>): ParametersParameter {
  return { name, ...value };
}

function integer(n: number): Omit<ParametersParameter, 'name'> {
  // FHIR integer is 32-bit; larger positions are sent as decimal.
  return n <= 2_147_483_647 ? { valueInteger: n } : { valueDecimal: n };
}

/**
 * Builds the `$verify` answer for one version.
 *
 * @returns HTTP status (200 included, 202 pending) and the Parameters resource.
 */
export async function verifyVersion(
  deps: IntegrityRouterDeps,
  version: StoredVersion,
): Promise<{ status: 200 | 202; body: Parameters; retryAfterSeconds?: number }> {
  const { log, logger } = deps;
  const key = { resourceType: version.resourceType, id: version.id, versionId: version.versionId };
  const proof = await log.proofFor(key);
  const parameter: ParametersParameter[] = [
    param('version', { valueReference: { reference: `${key.resourceType}/${key.id}/_history/${key.versionId}` } }),
  ];
  if (proof.status === 'uncommitted' || proof.status === 'pending') {
    const retryAfterSeconds = Math.max(1, Math.ceil(log.batchIntervalMs / 1000));
    parameter.unshift(param('status', { valueCode: 'pending' }));
    if (proof.status === 'pending') {
      const c = proof.commitment;
      const valid = verifyCommitment(committedValue(version), c.salt, c.commitment);
      parameter.push(
        param('commitment', { valueString: toHex(c.commitment) }),
        param('salt', { valueBase64Binary: encodeBase64(c.salt) }),
        param('valid', { valueBoolean: valid }),
      );
    }
    parameter.push(param('retryAfter', { valueInteger: retryAfterSeconds }));
    return { status: 202, body: { resourceType: 'Parameters', parameter }, retryAfterSeconds };
  }
  const c = proof.commitment;
  const valid = verifyCommitment(committedValue(version), c.salt, c.commitment);
  if (!valid) {
    logger.error({ resourceType: key.resourceType, id: key.id, versionId: key.versionId }, 'INTEGRITY ALERT: stored version no longer matches its commitment');
  }
  parameter.unshift(param('status', { valueCode: 'included' }));
  parameter.push(
    param('commitment', { valueString: toHex(c.commitment) }),
    param('salt', { valueBase64Binary: encodeBase64(c.salt) }),
    param('leafIndex', integer(c.leafIndex)),
    param('treeSize', integer(proof.checkpoint.size)),
    param('receipt', { valueString: proof.tlogProof }),
    ...proof.anchorReceipts.map((r) => param('anchorReceipt', { valueString: JSON.stringify(r) })),
    param('logKey', { valueString: log.verifierKey }),
    param('valid', { valueBoolean: valid }),
    param('proofValid', { valueBoolean: proof.proofValid }),
  );
  return { status: 200, body: { resourceType: 'Parameters', parameter } };
}

/**
 * FHIR `$verify` routes, mounted under `/fhir/R4`:
 * `GET /{type}/{id}/$verify` (current version) and `GET /{type}/{id}/_history/{vid}/$verify`.
 * 200 with `status = included`, or 202 with `status = pending` and `Retry-After`.
 *
 * @param deps - the log, the version reader (consent-scoped later) and a logger.
 * @returns an express Router.
 */
export function createVerifyRouter(deps: IntegrityRouterDeps): Router {
  const router = Router();
  const send = async (res: Response, version: StoredVersion): Promise<void> => {
    const r = await verifyVersion(deps, version);
    if (r.retryAfterSeconds !== undefined) res.setHeader('Retry-After', String(r.retryAfterSeconds));
    res.status(r.status).type(FHIR_JSON).send(JSON.stringify(r.body));
  };
  const checkIds = (type: string, id: string): void => {
    if (!TYPE_RE.test(type)) throw httpError(400, 'invalid', 'Invalid resource type');
    if (!ID_RE.test(id)) throw httpError(400, 'invalid', 'Invalid resource id');
  };

  router.get('/:type/:id/$verify', async (req: Request<{ type: string; id: string }>, res: Response) => {
    const { type, id } = req.params;
    checkIds(type, id);
    const version = await deps.store.readCurrent(type, id);
    if (version === undefined) throw httpError(404, 'not-found', `${type}/${id} is not known`);
    await send(res, version);
  });

  router.get('/:type/:id/_history/:vid/$verify', async (req: Request<{ type: string; id: string; vid: string }>, res: Response) => {
    const { type, id, vid } = req.params;
    checkIds(type, id);
    if (!VID_RE.test(vid)) throw httpError(400, 'invalid', 'Invalid version id');
    const version = await deps.store.readVersion(type, id, vid);
    if (version === undefined) throw httpError(404, 'not-found', `${type}/${id}/_history/${vid} is not known`);
    await send(res, version);
  });

  return router;
}

/** What the integrity stage adds to the CapabilityStatement. */
export const integrityCapability: CapabilityContribution = {
  operations: [{ name: 'verify', definition: 'http://fhir-anchor.dev/OperationDefinition/verify' }],
};
