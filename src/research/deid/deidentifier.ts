/**
 * The research module's de-identifier: a compiled anonymizer configuration (a built-in policy or
 * one given as an object) plus injected keys, turning resources and Bundles into
 * {@link Deidentified} values, or dropping them with a reason.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Bundle, Resource } from '@medplum/fhirtypes';
import type { Clock } from '../../platform/clock.js';
import { compileConfig, DeidConfigError, type AnonymizerConfig, type CompiledConfig, type DeidKeys } from './config.js';
import { DeidProcessingError, Engine, RuleNotApplicableError, type Violation } from './engine.js';

declare const deidentifiedBrand: unique symbol;

/**
 * A resource that went through de-identification and the safety net. Only this module creates
 * values of this type; export code accepts nothing else.
 */
export type Deidentified<T extends Resource = Resource> = T & { readonly [deidentifiedBrand]: true };

/** Why a resource (or a Bundle entry) was not released. */
export interface DropReason {
  readonly resourceType: string;
  /** Generic reason; lists element paths, never values. */
  readonly reason: string;
}

/** The outcome of {@link Deidentifier.deidentify}. */
export type DeidResult<T extends Resource = Resource> =
  | { readonly kind: 'deidentified'; readonly resource: Deidentified<T>; readonly droppedEntries: readonly DropReason[] }
  | ({ readonly kind: 'dropped' } & DropReason);

/** The safety net found values the policy did not decide on, and processingErrors is raise. */
export class DeidSafetyError extends Error {
  constructor(
    readonly resourceType: string,
    readonly paths: readonly string[],
  ) {
    super(`de-identification left ${paths.length} undecided free-text/extension/identifier value(s) in ${resourceType}: ${paths.slice(0, 10).join(', ')}${paths.length > 10 ? ', …' : ''}`);
    this.name = 'DeidSafetyError';
  }
}

/** Turns resources into de-identified ones. */
export interface Deidentifier {
  /** The policy name (`custom` for an object). */
  readonly policy: string;
  readonly config: CompiledConfig;
  /**
   * De-identifies a copy of `input` (a resource or a Bundle; the input is not modified).
   *
   * @param context - `dateShiftKeyPrefix` for dateShiftScope file/folder (the file or folder name).
   * @throws DeidProcessingError, RuleNotApplicableError or DeidSafetyError when processingErrors is raise
   *   (RuleNotApplicableError always: it is a policy bug).
   */
  deidentify<T extends Resource>(input: T, context?: { readonly dateShiftKeyPrefix?: string }): DeidResult<T>;
}

/** Options of {@link createDeidentifier}. */
export interface DeidentifierOptions {
  /** A built-in policy name (see {@link BUILT_IN_POLICIES}; default `safe-harbor`) or a configuration object. */
  readonly policy?: string | AnonymizerConfig;
  /** Keys; override the policy's `parameters`. */
  readonly keys?: DeidKeys;
}

/** Settings from fhir-anchor's configuration. */
export interface ResearchDeidConfig {
  /** Keys from configuration (`config.research.keys`: the `DEID_*` variables). */
  readonly keys?: DeidKeys;
  /** The clock for the "over 89 years" test (default: system time). */
  readonly clock?: Clock;
  /** Folder of built-in policies (default: fhir-profiles/deid/). */
  readonly policiesDir?: URL;
}

/** Built-in policies in fhir-profiles/deid/. */
export const BUILT_IN_POLICIES = ['safe-harbor', 'safe-harbor-dateshift'] as const;

const DEFAULT_POLICIES_DIR = new URL('../../../fhir-profiles/deid/', import.meta.url);
const POLICY_NAME = /^[a-z0-9][a-z0-9-]{0,63}$/;

/**
 * Reads a built-in policy file.
 *
 * @throws DeidConfigError for an unknown name.
 */
export function loadPolicy(name: string, dir: URL = DEFAULT_POLICIES_DIR): unknown {
  if (!POLICY_NAME.test(name)) throw new DeidConfigError([`unknown policy '${name}'`]);
  let text: string;
  try {
    text = readFileSync(fileURLToPath(new URL(`${name}.json`, dir)), 'utf8');
  } catch {
    throw new DeidConfigError([`unknown policy '${name}' (built-in: ${BUILT_IN_POLICIES.join(', ')})`]);
  }
  return JSON.parse(text.replace(/^\uFEFF/, '')) as unknown;
}

function brand<T extends Resource>(r: T): Deidentified<T> {
  return r as Deidentified<T>;
}

const GENERIC = 'the resource could not be de-identified';

/**
 * Compiles a policy with its keys into a {@link Deidentifier}.
 *
 * @throws DeidConfigError listing every problem (unknown policy, invalid rules, missing keys).
 */
export function createDeidentifier(config: ResearchDeidConfig, options: DeidentifierOptions = {}): Deidentifier {
  const policy = options.policy ?? 'safe-harbor';
  const raw = typeof policy === 'string' ? loadPolicy(policy, config.policiesDir) : policy;
  const compiled = compileConfig(raw, { ...config.keys, ...stripEmpty(options.keys) });
  const engine = new Engine(compiled);
  const clock = config.clock;
  const failMode = compiled.processingErrors;

  return {
    policy: typeof policy === 'string' ? policy : 'custom',
    config: compiled,
    deidentify<T extends Resource>(input: T, context: { readonly dateShiftKeyPrefix?: string } = {}): DeidResult<T> {
      const resourceType = typeof input?.resourceType === 'string' ? input.resourceType : 'unknown';
      const copy = cloneJson(input) as unknown as Record<string, unknown>;
      let result;
      try {
        result = engine.run(copy, { now: clock ? clock.now() : new Date(), ...(context.dateShiftKeyPrefix !== undefined ? { dateShiftKeyPrefix: context.dateShiftKeyPrefix } : {}) });
      } catch (err) {
        if (err instanceof RuleNotApplicableError || failMode === 'raise') throw err instanceof Error ? err : new DeidProcessingError(String(err));
        return { kind: 'dropped', resourceType, reason: err instanceof DeidProcessingError ? err.message : GENERIC };
      }
      const { output, violations } = result;
      const rootViolation = violations.find((v) => v.resource === output);
      if (failMode === 'raise' && violations.length > 0) {
        const v = rootViolation ?? violations[0]!;
        throw new DeidSafetyError(String(v.resource.resourceType), violations.flatMap((x) => x.paths));
      }
      if (rootViolation) return { kind: 'dropped', resourceType, reason: safetyReason(rootViolation) };
      const droppedEntries: DropReason[] = [];
      if (violations.length > 0) {
        const bad = new Set<unknown>(violations.map((v) => v.resource));
        const entries = Array.isArray(output.entry) ? (output.entry as Record<string, unknown>[]) : [];
        const keep: Record<string, unknown>[] = [];
        for (const e of entries) {
          if (bad.has(e.resource)) {
            const v = violations.find((x) => x.resource === e.resource)!;
            droppedEntries.push({ resourceType: String(v.resource.resourceType), reason: safetyReason(v) });
          } else keep.push(e);
        }
        if (droppedEntries.length !== violations.length) {
          // A violation outside Bundle.entry (e.g. Parameters.parameter.resource): drop the whole root.
          return { kind: 'dropped', resourceType, reason: safetyReason(violations[0]!) };
        }
        if (keep.length > 0) output.entry = keep;
        else delete output.entry;
      }
      return { kind: 'deidentified', resource: brand(output as unknown as T), droppedEntries };
    },
  };
}

/** Deep copy of JSON data (faster than structuredClone for plain JSON). */
function cloneJson<T>(v: T): T {
  if (typeof v !== 'object' || v === null) return v;
  if (Array.isArray(v)) {
    const out = new Array<unknown>(v.length);
    for (let i = 0; i < v.length; i++) out[i] = cloneJson(v[i] as unknown);
    return out as T;
  }
  const out: Record<string, unknown> = {};
  for (const k in v) out[k] = cloneJson((v as Record<string, unknown>)[k]);
  return out as T;
}

function stripEmpty(keys: DeidKeys | undefined): DeidKeys {
  const out: { -readonly [K in keyof DeidKeys]: DeidKeys[K] } = {};
  for (const k of ['cryptoHashKey', 'dateShiftKey', 'encryptKey'] as const) if (keys?.[k]) out[k] = keys[k];
  return out;
}

function safetyReason(v: Violation): string {
  return `safety net: values the policy did not decide on survived at ${v.paths.slice(0, 10).join(', ')}${v.paths.length > 10 ? ', …' : ''}`;
}

/** True when `r` is a Bundle (type guard for callers). */
export function isBundle(r: Resource): r is Bundle {
  return r.resourceType === 'Bundle';
}
