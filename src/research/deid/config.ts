/**
 * The Microsoft FHIR Tools for Anonymization configuration format, accepted unchanged, and its
 * validation into a list of readable problems.
 *
 * @see https://github.com/microsoft/Tools-for-Health-Data-Anonymization/blob/master/docs/FHIR-anonymization.md
 */
import { parseFhirPath } from '@medplum/core';
import { z } from 'zod';
import { compilePath, PathSyntaxError, type CompiledPath } from './path.js';

/** The anonymization methods of the reference tool. */
export const METHODS = ['keep', 'redact', 'dateshift', 'cryptohash', 'encrypt', 'substitute', 'perturb', 'generalize'] as const;
export type Method = (typeof METHODS)[number];

/** `dateShiftScope`: the tool's resource | file | folder, plus fhir-anchor's `patient`. */
export type DateShiftScope = 'resource' | 'file' | 'folder' | 'patient';

/** processingErrors: raise stops; skip (and keep, which would leak the original) drop the resource. */
export type ProcessingErrors = 'raise' | 'keep' | 'skip';

const ciEnum = <T extends string>(values: readonly T[]) =>
  z.string().transform((s, ctx) => {
    const v = values.find((x) => x.toLowerCase() === s.toLowerCase());
    if (!v) {
      ctx.addIssue({ code: 'custom', message: `must be one of ${values.join(', ')} (got '${s}')` });
      return z.NEVER;
    }
    return v;
  });

const RuleSchema = z
  .object({
    path: z.string().min(1),
    method: ciEnum(METHODS),
  })
  .passthrough();

const ParametersSchema = z
  .object({
    dateShiftKey: z.string().nullish(),
    dateShiftScope: ciEnum(['resource', 'file', 'folder', 'patient'] as const).nullish(),
    cryptoHashKey: z.string().nullish(),
    encryptKey: z.string().nullish(),
    enablePartialAgesForRedact: z.boolean().nullish(),
    enablePartialDatesForRedact: z.boolean().nullish(),
    enablePartialZipCodesForRedact: z.boolean().nullish(),
    restrictedZipCodeTabulationAreas: z.array(z.string()).nullish(),
    customSettings: z.unknown().optional(),
  })
  .passthrough();

/** The JSON shape of an anonymizer configuration file. */
export const AnonymizerConfigSchema = z
  .object({
    fhirVersion: z.string().nullish(),
    processingErrors: ciEnum(['raise', 'keep', 'skip'] as const).nullish(),
    /** The tool's own README sample spells it in the singular. */
    processingError: ciEnum(['raise', 'keep', 'skip'] as const).nullish(),
    fhirPathRules: z.array(RuleSchema),
    parameters: ParametersSchema.nullish(),
  })
  .passthrough();

/** An anonymizer configuration as written in its JSON file. */
export type AnonymizerConfig = z.input<typeof AnonymizerConfigSchema>;

/** Keys injected from fhir-anchor's configuration; they take precedence over keys in the policy file. */
export interface DeidKeys {
  /** HMAC-SHA256 key for cryptoHash (UTF-8 bytes of the string). */
  readonly cryptoHashKey?: string;
  /** Key of the date-shift offset hash. */
  readonly dateShiftKey?: string;
  /** AES key for encrypt: exactly 16, 24 or 32 UTF-8 bytes. */
  readonly encryptKey?: string;
}

/** A configuration that cannot be used; `problems` lists every reason. */
export class DeidConfigError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(`invalid de-identification configuration:\n- ${problems.join('\n- ')}`);
    this.name = 'DeidConfigError';
  }
}

/** Settings of a perturb rule. */
export interface PerturbSettings {
  readonly span: number;
  readonly rangeType: 'fixed' | 'proportional';
  readonly roundTo: number | undefined;
}

/** Settings of a generalize rule, with its FHIRPath compiled. */
export interface GeneralizeSettings {
  readonly cases: readonly { readonly condition: ReturnType<typeof parseFhirPath>; readonly value: ReturnType<typeof parseFhirPath>; readonly source: string }[];
  readonly otherValues: 'redact' | 'keep';
}

/** One compiled rule. */
export interface CompiledRule {
  readonly index: number;
  readonly path: string;
  readonly method: Method;
  readonly matcher: CompiledPath;
  readonly perturb?: PerturbSettings;
  readonly generalize?: GeneralizeSettings;
  readonly replaceWith?: unknown;
}

/** A validated configuration. */
export interface CompiledConfig {
  readonly processingErrors: ProcessingErrors;
  readonly rules: readonly CompiledRule[];
  readonly dateShiftScope: DateShiftScope;
  readonly keys: Required<DeidKeys>;
  readonly enablePartialAgesForRedact: boolean;
  readonly enablePartialDatesForRedact: boolean;
  readonly enablePartialZipCodesForRedact: boolean;
  readonly restrictedZipCodeTabulationAreas: readonly string[];
}

const nonEmpty = (s: string | null | undefined): string | undefined => (s === null || s === undefined || s === '' ? undefined : s);

/**
 * Validates an anonymizer configuration and compiles its rules. Keys come from `keys` first, then
 * from the file's `parameters`; there is no random fallback: a method whose key is missing is an error.
 *
 * @throws DeidConfigError listing every problem.
 */
export function compileConfig(input: unknown, keys: DeidKeys = {}): CompiledConfig {
  const parsed = AnonymizerConfigSchema.safeParse(input);
  if (!parsed.success) {
    throw new DeidConfigError(parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`));
  }
  const cfg = parsed.data;
  const problems: string[] = [];
  if (cfg.fhirVersion && cfg.fhirVersion.toLowerCase() !== 'r4') {
    problems.push(`fhirVersion: ${cfg.fhirVersion} is not supported (expected R4)`);
  }
  const params = cfg.parameters ?? {};
  const rules: CompiledRule[] = [];
  cfg.fhirPathRules.forEach((raw, index) => {
    const where = `fhirPathRules[${index}] (${raw.path})`;
    let matcher: CompiledPath;
    try {
      matcher = compilePath(raw.path);
    } catch (err) {
      problems.push(`${where}: ${err instanceof PathSyntaxError ? err.message : `invalid path: ${String(err)}`}`);
      return;
    }
    const rule: { -readonly [K in keyof CompiledRule]: CompiledRule[K] } = { index, path: raw.path, method: raw.method, matcher };
    const settings = raw as Record<string, unknown>;
    if (raw.method === 'substitute') {
      if (!('replaceWith' in settings)) problems.push(`${where}: substitute needs replaceWith`);
      rule.replaceWith = settings.replaceWith;
    }
    if (raw.method === 'perturb') {
      const span = settings.span;
      const rangeType = settings.rangeType ?? 'fixed';
      const roundTo = settings.roundTo;
      if (typeof span !== 'number' || !(span >= 0)) problems.push(`${where}: perturb needs a non-negative number span`);
      if (typeof rangeType !== 'string' || !['fixed', 'proportional'].includes(rangeType.toLowerCase())) {
        problems.push(`${where}: rangeType must be fixed or proportional`);
      }
      if (roundTo !== undefined && (typeof roundTo !== 'number' || !Number.isInteger(roundTo) || roundTo < 0 || roundTo > 28)) {
        problems.push(`${where}: roundTo must be an integer from 0 to 28`);
      }
      rule.perturb = {
        span: typeof span === 'number' ? span : 0,
        rangeType: String(rangeType).toLowerCase() === 'proportional' ? 'proportional' : 'fixed',
        roundTo: typeof roundTo === 'number' ? roundTo : undefined,
      };
    }
    if (raw.method === 'generalize') {
      const cases = settings.cases;
      const other = settings.otherValues ?? 'redact';
      if (typeof cases !== 'object' || cases === null || Array.isArray(cases)) {
        problems.push(`${where}: generalize needs a cases object`);
      } else {
        const compiled: GeneralizeSettings['cases'][number][] = [];
        for (const [cond, value] of Object.entries(cases as Record<string, unknown>)) {
          try {
            compiled.push({ condition: parseFhirPath(cond), value: parseFhirPath(String(value)), source: cond });
          } catch (err) {
            problems.push(`${where}: case '${cond}': invalid FHIRPath (${err instanceof Error ? err.message : String(err)})`);
          }
        }
        if (typeof other !== 'string' || !['redact', 'keep'].includes(other.toLowerCase())) {
          problems.push(`${where}: otherValues must be redact or keep`);
        }
        rule.generalize = { cases: compiled, otherValues: String(other).toLowerCase() === 'keep' ? 'keep' : 'redact' };
      }
    }
    rules.push(rule);
  });

  const resolved = {
    cryptoHashKey: nonEmpty(keys.cryptoHashKey) ?? nonEmpty(params.cryptoHashKey),
    dateShiftKey: nonEmpty(keys.dateShiftKey) ?? nonEmpty(params.dateShiftKey),
    encryptKey: nonEmpty(keys.encryptKey) ?? nonEmpty(params.encryptKey),
  };
  const used = new Set(rules.map((r) => r.method));
  const missing: string[] = [];
  if (used.has('cryptohash') && !resolved.cryptoHashKey) missing.push('cryptoHashKey (needed by cryptoHash rules)');
  if (used.has('dateshift') && !resolved.dateShiftKey) missing.push('dateShiftKey (needed by dateShift rules)');
  if (used.has('encrypt') && !resolved.encryptKey) missing.push('encryptKey (needed by encrypt rules)');
  if (missing.length > 0) problems.push(`missing keys: ${missing.join(', ')}`);
  if (resolved.encryptKey && ![16, 24, 32].includes(Buffer.byteLength(resolved.encryptKey, 'utf8'))) {
    problems.push(`encryptKey: ${Buffer.byteLength(resolved.encryptKey, 'utf8') * 8} bits; AES needs 128, 192 or 256`);
  }
  if (problems.length > 0) throw new DeidConfigError(problems);

  return {
    processingErrors: cfg.processingErrors ?? cfg.processingError ?? 'raise',
    rules,
    dateShiftScope: params.dateShiftScope ?? 'resource',
    keys: {
      cryptoHashKey: resolved.cryptoHashKey ?? '',
      dateShiftKey: resolved.dateShiftKey ?? '',
      encryptKey: resolved.encryptKey ?? '',
    },
    enablePartialAgesForRedact: params.enablePartialAgesForRedact ?? false,
    enablePartialDatesForRedact: params.enablePartialDatesForRedact ?? false,
    enablePartialZipCodesForRedact: params.enablePartialZipCodesForRedact ?? false,
    restrictedZipCodeTabulationAreas: params.restrictedZipCodeTabulationAreas ?? [],
  };
}
