/**
 * The `export` queue job: runs one Bulk Data export, or resumes it from its saved cursor.
 *
 * Memory is bounded by the page size whatever the export's size: resources are read one page at a
 * time through a fresh consent-scoped repository (SMART scopes ∩ patient-privacy Consent), passed
 * through the research-consent gate (research exports) and the de-identifier, appended to the
 * type's NDJSON file, `fdatasync`ed, and only then is the page recorded — cursor, byte lengths and
 * the page's per-patient consent decisions in one transaction. A restarted job truncates every file
 * to its recorded length and continues after the recorded cursor, so the output is complete and has
 * no duplicates.
 *
 * Work units: per type (export order), per `_typeFilter` alternative (OR; a resource matching an
 * earlier alternative is skipped in later ones), per chunk of Group members (a resource is written
 * only in the chunk of its first member patient). Keyset order by id inside a unit.
 */
import { createHash } from 'node:crypto';
import { mkdir, open, readdir, rm, truncate, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Group, OperationOutcome, Resource } from '@medplum/fhirtypes';
import { parseScopes, type ConsentChecked } from '../../consent/index.js';
import type { AccessContext, DisclosureRecorder } from '../../fhir-api/access.js';
import { createScopedRepository, resolvePatients, type FhirApiDeps, type ScopedRepository } from '../../fhir-api/repository.js';
import { parseSearch, type ParsedSearch } from '../../fhir-api/search-params.js';
import { collectGarbage } from '../../platform/gc.js';
import { TerminalJobError, integrityJobId, rerunJobId, type QueueRegistry } from '../../queue/index.js';
import type { ExportRecord, PatientDecisionDelta } from '../../store/export-store.js';
import { extractIndexRows, referenceKey } from '../../store/search-store.js';
import type { SearchClause } from '../../store/types.js';
import { createDeidentifier, DeidSafetyError, type Deidentified, type Deidentifier } from '../deid/deidentifier.js';
import { DeidProcessingError } from '../deid/engine.js';
import { bulkManifest, hashFile, manifestResource, type HashedFile } from './manifest.js';
import { createResearchGate, RESEARCH_POLICY, type ResearchGate } from './research-consent.js';
import type { ExportCursor, ExportDeps, ExportParams, FileState, PersistedAccess } from './types.js';

/** Default resources per page. */
export const DEFAULT_PAGE_SIZE = 500;
/** Default lifetime of a completed export's files: 24 h (Bulk Data servers commonly keep files a day). */
export const DEFAULT_EXPIRY_MS = 24 * 3600 * 1000;
/** Group members per chunk: one reference clause (an index scan with this many targets). */
const GROUP_CHUNK = 100;
/** Pages one consent-scoped repository serves before a fresh one (bounds its audit sets to ~10^4 entries). */
const REPO_PAGES = 20;
/**
 * A full garbage collection every this many pages: each page's resources die young, but V8, sized for
 * the host's memory, would let them accumulate to hundreds of MB before collecting; collecting every
 * few pages keeps the export's memory bounded by a few pages, whatever the heap limit.
 */
const GC_EVERY_PAGES = 10;
/** Error file name (manifest `error`). */
const ERROR_FILE = 'OperationOutcome.ndjson';
const EXPORT_ID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** A failure retrying cannot fix (missing Group version, a broken policy). */
class ExportTerminalError extends Error {
  override name = 'ExportTerminalError';
}

interface Unit {
  readonly type: string;
  /** Index into the type's `_typeFilter` alternatives, or -1. */
  readonly filter: number;
  /** Index of the Group member chunk, or -1. */
  readonly chunk: number;
}

/** What one page leaves behind once read: compact data only (see `readPage` in {@link createExportRunner}). */
interface PageOutput {
  /** The page's NDJSON lines (undefined when nothing is written). */
  readonly ndjson: Buffer | undefined;
  readonly count: number;
  /** Resources the de-identification safety net withheld. */
  readonly dropped: number;
  /** Resources the repository withheld (scope constraints, patient-privacy denials). */
  readonly withheld: number;
  /** Where the unit continues (absent: the unit is done). */
  readonly next?: string;
  readonly delta: PatientDecisionDelta[];
}

const PATIENT_PRIVACY_POLICY: readonly string[] = [RESEARCH_POLICY.patientPrivacy];

/** The directory of one export's files. */
export function exportDirectory(exportDir: string, exportId: string): string {
  if (!EXPORT_ID_RE.test(exportId)) throw new Error('invalid export id');
  return path.join(exportDir, exportId);
}

/** Rebuilds the requester from what the kick-off persisted (never break-glass, system context only). */
export function restoreAccess(p: PersistedAccess): AccessContext {
  return {
    clientId: p.clientId,
    issuer: p.issuer,
    scopes: parseScopes([...p.scopes]).scopes.filter((s) => s.context === 'system'),
    purposeOfUse: [...p.purposeOfUse],
    ...(p.fhirUser !== undefined ? { fhirUser: p.fhirUser } : {}),
    actor: { references: [...p.actor.references], identifiers: p.actor.identifiers.map((i) => ({ ...i })) },
    mayBreakGlass: false,
    ...(p.tokenId !== undefined ? { tokenId: p.tokenId } : {}),
  };
}

function initialCursor(raw: unknown): ExportCursor {
  const c = (raw ?? {}) as Partial<ExportCursor>;
  return {
    unit: typeof c.unit === 'number' ? c.unit : 0,
    ...(typeof c.after === 'string' ? { after: c.after } : {}),
    files: Array.isArray(c.files) ? c.files : [],
    deidDropped: c.deidDropped ?? {},
    accessWithheld: typeof c.accessWithheld === 'number' ? c.accessWithheld : 0,
  };
}

/** Patient ids a resource is in the compartment of (the `patient` search parameter). */
function compartmentPatients(resource: Resource): string[] {
  if (resource.resourceType === 'Patient') return resource.id ? [resource.id] : [];
  return extractIndexRows(resource)
    .references.filter((r) => r.param === 'patient' && r.type === 'Patient')
    .map((r) => r.id);
}

function groupMembers(group: Group): string[] {
  const ids = new Set<string>();
  for (const m of group.member ?? []) {
    if (m.inactive) continue;
    const ref = referenceKey(m.entity?.reference);
    if (ref?.type === 'Patient') ids.add(ref.id);
  }
  return [...ids].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

/** The export job runner. */
export interface ExportRunner {
  /** Runs or resumes one export; returns when it completed, was cancelled, or was not runnable. */
  run(exportId: string): Promise<void>;
  /** The `export` queue processor: `run`, marking the export failed on a terminal error or the last attempt. */
  processJob(job: { readonly data: { readonly exportId: string }; readonly attemptsMade: number; readonly maxAttempts: number }): Promise<void>;
  /** Expires completed and failed exports past their expiry and deletes their files; returns how many. */
  sweep(): Promise<number>;
  /**
   * Re-runs exports accepted or in progress that have not moved for `staleMs` and have no job queued
   * (it was lost, e.g. Redis restarted empty); they resume from their cursor. Returns how many.
   */
  reconcile(queues: Pick<QueueRegistry, 'rerun'>, staleMs: number): Promise<number>;
}

/** The job id of an export's first job. */
export function exportJobId(exportId: string): string {
  return `export-${exportId}`;
}

/** Creates the runner. */
export function createExportRunner(deps: ExportDeps): ExportRunner {
  const pageSize = deps.pageSize ?? DEFAULT_PAGE_SIZE;
  const expiryMs = deps.expiryMs ?? DEFAULT_EXPIRY_MS;
  const baseUrl = deps.baseUrl.replace(/\/+$/, '');
  const deidCache = new Map<string, Deidentifier>();
  const deidentifierFor = (policy: string): Deidentifier => {
    let d = deidCache.get(policy);
    if (!d) {
      try {
        d = createDeidentifier({ keys: deps.deidKeys, clock: deps.clock }, { policy });
      } catch {
        throw new ExportTerminalError('the de-identification policy cannot be compiled');
      }
      deidCache.set(policy, d);
    }
    return d;
  };

  const sinceClause = (params: ExportParams): SearchClause[] => {
    if (!params.since) return [];
    const lo = new Date(params.since);
    // ge: last_updated >= _since (inclusive, so a client passing the previous transactionTime misses nothing).
    return [{ kind: 'lastUpdated', values: [{ prefix: 'ge', lo, hi: new Date(lo.getTime() + 1) }] }];
  };
  const filterClauses = (params: ExportParams, type: string, filter: number): SearchClause[] => {
    if (filter < 0) return [];
    const pairs = params.typeFilters[type]?.[filter];
    if (!pairs) throw new ExportTerminalError('inconsistent export parameters');
    return [...parseSearch(type, pairs, { lenient: false, baseUrl }).clauses];
  };
  const chunkClause = (type: string, members: readonly string[] | undefined, chunk: number): SearchClause[] => {
    if (!members || chunk < 0) return [];
    const ids = members.slice(chunk * GROUP_CHUNK, (chunk + 1) * GROUP_CHUNK);
    return type === 'Patient' ? [{ kind: 'id', values: ids }] : [{ kind: 'reference', param: 'patient', values: ids.map((id) => ({ type: 'Patient', id })) }];
  };
  const query = (type: string, clauses: SearchClause[], count: number): ParsedSearch => ({
    resourceType: type,
    clauses,
    count,
    summaryCount: false,
    include: [],
    revinclude: [],
    chains: [],
    has: [],
    warnings: [],
    canonical: [],
  });

  const buildUnits = (params: ExportParams, members: readonly string[] | undefined): Unit[] => {
    const units: Unit[] = [];
    const chunks = members ? Math.ceil(members.length / GROUP_CHUNK) : 0;
    for (const type of params.types) {
      const nFilters = params.typeFilters[type]?.length ?? 0;
      for (let f = nFilters > 0 ? 0 : -1; f < Math.max(nFilters, 0); f++) {
        if (members) for (let c = 0; c < chunks; c++) units.push({ type, filter: f, chunk: c });
        else units.push({ type, filter: f, chunk: -1 });
        if (f === -1) break;
      }
    }
    return units;
  };

  /** Truncates recorded files to their recorded length and removes anything written after the last saved page. */
  const prepareDirectory = async (dir: string, files: readonly FileState[]): Promise<void> => {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const known = new Map(files.map((f) => [f.name, f]));
    for (const entry of await readdir(dir)) {
      const f = known.get(entry);
      if (f) await truncate(path.join(dir, entry), f.bytes);
      else await unlink(path.join(dir, entry));
    }
    for (const f of files) {
      // A recorded file that vanished cannot be resumed consistently.
      if (!(await readdir(dir)).includes(f.name)) throw new ExportTerminalError('an output file of the export is missing');
    }
  };

  const append = async (file: string, buf: Buffer): Promise<number> => {
    const fh = await open(file, 'a', 0o600);
    try {
      await fh.write(buf);
      // Durable before the cursor that counts these bytes is committed.
      await fh.datasync();
    } finally {
      await fh.close();
    }
    return buf.length;
  };

  const removeDir = async (exportId: string): Promise<void> => {
    await rm(exportDirectory(deps.exportDir, exportId), { recursive: true, force: true });
  };

  async function run(exportId: string): Promise<void> {
    const rec = await deps.exports.start(exportId);
    if (!rec) return; // cancelled, expired, completed or unknown: a stale job
    const params = rec.params as ExportParams;
    const access = restoreAccess(rec.access as PersistedAccess);
    if (params.research && !params.deidPolicy) throw new ExportTerminalError('a research export without de-identification');
    let members: string[] | undefined;
    if (rec.level === 'group') {
      const v = rec.groupId && rec.groupVersion ? await deps.store.resources.readVersion('Group', rec.groupId, rec.groupVersion) : undefined;
      if (!v?.resource || v.resource.resourceType !== 'Group') throw new ExportTerminalError('the Group version of the export is gone');
      members = groupMembers(v.resource);
    }
    const memberIndex = members ? new Map(members.map((m, i) => [m, i])) : undefined;
    const units = buildUnits(params, members);
    const dir = exportDirectory(deps.exportDir, exportId);
    let cursor = initialCursor(rec.cursor);
    await prepareDirectory(dir, cursor.files);
    const deid = params.deidPolicy ? deidentifierFor(params.deidPolicy) : undefined;
    const localBases = [baseUrl];
    let page = 0;

    // One repository (and research gate) serves up to REPO_PAGES pages: its per-patient consent cache
    // then spans them, while its audit bookkeeping (one entry per resource) stays bounded.
    let repo: ScopedRepository | undefined;
    let gate: ResearchGate | undefined;
    let repoPages = 0;
    let deniedSoFar = 0;
    let deniedTotal = 0;
    const capture: DisclosureRecorder = {
      record(e) {
        // The repository reports its cumulative denials (scope constraints, patient-privacy denies) at each flush.
        if (e.outcome === 'deny') deniedTotal = e.entities.length;
        return Promise.resolve();
      },
    };
    const repoDeps: FhirApiDeps = {
      store: deps.store,
      recorder: capture,
      // Research exports: the research Consent (or research default) decides; explicit patient-privacy
      // denials still withhold, but the patient-privacy default does not stand in for a research decision.
      consentDefault: params.research ? 'permit' : deps.consentDefault,
      clock: deps.clock,
      logger: deps.logger,
      baseUrl,
      queues: deps.queues,
    };

    /**
     * Reads, gates and serialises one page. Only compact results leave this function (the NDJSON
     * bytes, counts and the patients' decisions), so the page's resource objects are no longer
     * reachable while the page is written, synced and committed.
     */
    const readPage = async (unit: Unit, after: string | undefined): Promise<PageOutput> => {
      if (!repo || repoPages >= REPO_PAGES) {
        repo = createScopedRepository(access, repoDeps);
        gate = params.research
          ? createResearchGate({ search: deps.store.search, access, defaultDecision: deps.researchConsentDefault, localBases, now: deps.clock.now() })
          : undefined;
        repoPages = 0;
        deniedSoFar = 0;
        deniedTotal = 0;
      }
      repoPages += 1;
      const base = [...sinceClause(params), ...filterClauses(params, unit.type, unit.filter)];
      const result = await repo.search(query(unit.type, [...base, ...chunkClause(unit.type, members, unit.chunk)], pageSize), after !== undefined ? [after] : undefined);

      let items: Array<ConsentChecked<Resource>> = result.items.map((i) => i.resource);
      if (rec.level !== 'system' && unit.type !== 'Patient') items = items.filter((r) => compartmentPatients(r).length > 0);
      if (memberIndex && unit.type !== 'Patient') {
        // Written once: in the chunk of the resource's first member patient.
        items = items.filter((r) => {
          let min = Infinity;
          for (const p of compartmentPatients(r)) min = Math.min(min, memberIndex.get(p) ?? Infinity);
          return Math.floor(min / GROUP_CHUNK) === unit.chunk;
        });
      }
      for (let j = 0; j < unit.filter && items.length > 0; j++) {
        // Written once: under the first _typeFilter alternative it matches.
        const ids = items.map((r) => r.id!).filter((id) => id !== undefined);
        const earlier = await repo.search(query(unit.type, [...sinceClause(params), ...filterClauses(params, unit.type, j), { kind: 'id', values: ids }], ids.length));
        const seen = new Set(earlier.items.map((i) => i.resource.id));
        items = items.filter((r) => !seen.has(r.id));
      }
      await repo.flushAudit('$export', undefined);
      const withheld = deniedTotal - deniedSoFar;
      deniedSoFar = deniedTotal;

      const decisions = new Map<string, { included: number; excluded: number; policy: Set<string> }>();
      const note = (patients: readonly string[], included: boolean, policy: readonly string[]): void => {
        for (const p of patients) {
          let d = decisions.get(p);
          if (!d) decisions.set(p, (d = { included: 0, excluded: 0, policy: new Set() }));
          if (included) d.included += 1;
          else d.excluded += 1;
          for (const x of policy) d.policy.add(x);
        }
      };
      // One walk per resource for its patients (the gate and the consent record both need them); a
      // Provenance of an Observation concerns the Observation's patient (one round trip per page).
      const patientsOfItem = await resolvePatients(items, deps.store.search);
      let released: Array<ConsentChecked<Resource>> = items;
      if (gate) {
        await gate.prepare(patientsOfItem.flat());
        released = [];
        items.forEach((r, i) => {
          const o = gate!.decide(r, patientsOfItem[i]);
          note(o.patients, o.permit, o.policy);
          if (o.permit) released.push(r);
        });
      } else {
        for (const patients of patientsOfItem) note(patients, true, PATIENT_PRIVACY_POLICY);
      }

      const lines: string[] = [];
      let dropped = 0;
      for (const r of released) {
        if (deid) {
          const out = deidentify(deid, r);
          if (out) lines.push(JSON.stringify(out));
          else dropped += 1;
        } else lines.push(JSON.stringify(r));
      }
      return {
        ndjson: lines.length > 0 ? Buffer.from(`${lines.join('\n')}\n`, 'utf8') : undefined,
        count: lines.length,
        dropped,
        withheld,
        ...(result.next?.[0] !== undefined ? { next: result.next[0] } : {}),
        delta: [...decisions].map(([patientId, d]) => ({ patientId, included: d.included, excluded: d.excluded, policy: [...d.policy] })),
      };
    };

    while (cursor.unit < units.length) {
      const unit = units[cursor.unit]!;
      const out = await readPage(unit, cursor.after);
      let files = cursor.files;
      if (out.ndjson) {
        const name = `${unit.type}.ndjson`;
        let f = files.find((x) => x.name === name);
        if (!f) {
          f = { type: unit.type, name, bytes: 0, count: 0 };
          files = [...files, f];
        }
        const bytes = await append(path.join(dir, name), out.ndjson);
        const updated: FileState = { ...f, bytes: f.bytes + bytes, count: f.count + out.count };
        files = files.map((x) => (x.name === name ? updated : x));
      }
      const next: ExportCursor = {
        unit: out.next !== undefined ? cursor.unit : cursor.unit + 1,
        ...(out.next !== undefined ? { after: out.next } : {}),
        files,
        deidDropped: out.dropped > 0 ? { ...cursor.deidDropped, [unit.type]: (cursor.deidDropped[unit.type] ?? 0) + out.dropped } : cursor.deidDropped,
        accessWithheld: cursor.accessWithheld + out.withheld,
      };
      if (!(await deps.exports.savePage(exportId, next, out.count, out.delta))) {
        await removeDir(exportId); // cancelled meanwhile
        return;
      }
      cursor = next;
      page += 1;
      if (page % GC_EVERY_PAGES === 0) collectGarbage();
      await deps.afterPage?.(exportId, page);
    }
    await finish(rec, params, access, cursor, dir);
  }

  function deidentify(deid: Deidentifier, r: ConsentChecked<Resource>): Deidentified | undefined {
    try {
      const out = deid.deidentify<Resource>(r);
      return out.kind === 'deidentified' ? out.resource : undefined;
    } catch (err) {
      if (err instanceof DeidSafetyError || err instanceof DeidProcessingError) return undefined;
      throw new ExportTerminalError('the de-identification policy does not apply to the exported data');
    }
  }

  async function finish(rec: ExportRecord, params: ExportParams, access: AccessContext, cursor: ExportCursor, dir: string): Promise<void> {
    const fileUrl = (name: string): string => `${baseUrl}/$export-file/${rec.id}/${name}`;
    // Error file: counts only (no ids, no values), rewritten whole so a resumed finish is idempotent.
    const issues: OperationOutcome[] = [];
    for (const [type, n] of Object.entries(cursor.deidDropped)) {
      issues.push({
        resourceType: 'OperationOutcome',
        issue: [{ severity: 'warning', code: 'suppressed', details: { text: `${n} ${type} resource(s) withheld: the de-identification safety net found values the policy did not decide on` } }],
      });
    }
    if (cursor.accessWithheld > 0) {
      issues.push({
        resourceType: 'OperationOutcome',
        issue: [{ severity: 'information', code: 'suppressed', details: { text: `${cursor.accessWithheld} resource(s) withheld by SMART scopes or patient consent` } }],
      });
    }
    const errorPath = path.join(dir, ERROR_FILE);
    if (issues.length > 0) await writeFile(errorPath, `${issues.map((i) => JSON.stringify(i)).join('\n')}\n`, { mode: 0o600 });
    else await rm(errorPath, { force: true });

    const outputs: HashedFile[] = [];
    for (const f of cursor.files) {
      const h = await hashFile(path.join(dir, f.name));
      if (h.bytes !== f.bytes) throw new ExportTerminalError('an output file does not have its recorded length');
      outputs.push({ type: f.type, name: f.name, url: fileUrl(f.name), count: f.count, bytes: h.bytes, sha256: h.sha256 });
    }
    const errors: HashedFile[] = [];
    if (issues.length > 0) {
      const h = await hashFile(errorPath);
      errors.push({ type: 'OperationOutcome', name: ERROR_FILE, url: fileUrl(ERROR_FILE), count: issues.length, bytes: h.bytes, sha256: h.sha256 });
    }
    const consent = params.research ? 'research' : 'patient-privacy';
    const patients = await deps.exports.patientSummary(rec.id);
    const resource = manifestResource({
      exportId: rec.id,
      transactionTime: rec.transactionTime,
      requestUrl: rec.requestUrl,
      level: rec.level,
      consent,
      ...(params.deidPolicy ? { deidentify: params.deidPolicy } : {}),
      files: [...outputs, ...errors],
      patients,
    });
    const stored = await deps.store.resources.putVersion({
      resourceType: 'Basic',
      id: resource.id,
      resource,
      sourceId: 'fhir-anchor',
      dedupKey: createHash('sha256').update(JSON.stringify(resource)).digest('hex'),
    });
    const v = stored.version;
    const manifestRef = `${v.resourceType}/${v.id}/_history/${v.versionId}`;
    if (!deps.store.resources.commitsVersions) {
      await deps.queues.enqueueBulk('integrity', [
        { data: { resourceType: v.resourceType, id: v.id, versionId: v.versionId }, options: { jobId: integrityJobId(v) } },
      ]);
    }
    const manifest = bulkManifest({
      transactionTime: rec.transactionTime,
      requestUrl: rec.requestUrl,
      outputs,
      errors,
      manifestResource: manifestRef,
      consent,
      ...(params.deidPolicy ? { deidentify: params.deidPolicy } : {}),
    });
    // Audit first: the files become downloadable only once the disclosure is recorded.
    const policy = [params.research ? 'urn:fhir-anchor:policy:research-consent' : RESEARCH_POLICY.patientPrivacy, `urn:fhir-anchor:export:${rec.id}`];
    const at = deps.clock.now();
    const query = `/fhir/R4/$export ${rec.level}`;
    await deps.recorder.record({ context: access, interaction: '$export', entities: [manifestRef], outcome: 'permit', policy, breakGlass: false, query, at });
    if (patients.excluded > 0 || cursor.accessWithheld > 0) {
      await deps.recorder.record({ context: access, interaction: '$export', entities: [], outcome: 'deny', policy, breakGlass: false, query, at });
    }
    if (!(await deps.exports.complete(rec.id, { manifest, manifestRef, expiresAt: new Date(deps.clock.now().getTime() + expiryMs) }))) {
      await removeDir(rec.id);
    }
  }

  return {
    run,
    async processJob(job) {
      const { exportId } = job.data;
      if (!EXPORT_ID_RE.test(exportId)) throw new TerminalJobError('invalid export id');
      try {
        await run(exportId);
      } catch (err) {
        const terminal = err instanceof ExportTerminalError;
        if (terminal || job.attemptsMade + 1 >= job.maxAttempts) {
          deps.logger.error({ exportId, err: err instanceof Error ? err.message : String(err) }, 'export failed');
          await deps.exports.fail(exportId, 'The export failed', new Date(deps.clock.now().getTime() + expiryMs));
          await removeDir(exportId);
          if (terminal) throw new TerminalJobError(err.message);
        } else {
          deps.logger.warn({ exportId, attempt: job.attemptsMade + 1, err: err instanceof Error ? err.message : String(err) }, 'export attempt failed; it resumes from its cursor');
        }
        throw err;
      }
    },
    async reconcile(queues, staleMs) {
      const stale = await deps.exports.listStale(new Date(deps.clock.now().getTime() - staleMs), 100);
      if (stale.length === 0) return 0;
      const added = await queues.rerun(
        'export',
        stale.map((exportId) => ({ data: { exportId }, jobId: rerunJobId(exportJobId(exportId)), liveIds: [exportJobId(exportId)] })),
      );
      if (added > 0) deps.logger.warn({ count: added }, 'reconciler re-enqueued exports whose jobs were lost');
      return added;
    },
    async sweep() {
      let n = 0;
      for (;;) {
        const ids = await deps.exports.expireDue(deps.clock.now(), 100);
        for (const id of ids) await removeDir(id);
        n += ids.length;
        if (ids.length < 100) return n;
      }
    },
  };
}
