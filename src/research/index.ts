/**
 * Research access: de-identification with Microsoft FHIR Tools for Anonymization configurations, a
 * built-in HIPAA Safe Harbor policy, a safety net, `POST /research/$deidentify` and `fhir-anchor deid`.
 *
 * @see docs/decisions-research.md
 * @packageDocumentation
 */
export {
  createDeidentifier,
  loadPolicy,
  BUILT_IN_POLICIES,
  DeidSafetyError,
  type Deidentified,
  type Deidentifier,
  type DeidentifierOptions,
  type DeidResult,
  type DropReason,
  type ResearchDeidConfig,
} from './deid/deidentifier.js';
export { compileConfig, DeidConfigError, type AnonymizerConfig, type DeidKeys } from './deid/config.js';
export { DeidProcessingError, RuleNotApplicableError } from './deid/engine.js';
export { createDeidRouter, type DeidRouterOptions } from './http.js';
export { registerDeidCommand, type DeidCommandOptions } from './cli-deid.js';

