/**
 * src/normalize: one FHIR R4 resource from a source EHR → fhir-anchor's form targeting US Core 6.1.0,
 * and validation against base R4 + that profile. All declarative rules live in `fhir-profiles/`
 * (see its README and docs/decisions-normalize.md).
 */
export { anchorId, ANCHOR_NAMESPACE } from './anchor-id.js';
export { normalizeResource, sourceIdentifierSystem, type NormalizeContext, type NormalizeResult } from './normalize.js';
export { loadNormalizationRules, RulesError, type NormalizationRules } from './rules.js';
export { createValidator, type Validator } from './validate.js';
export {
  createValidatorPool,
  defaultValidationThreads,
  inProcessValidator,
  type BatchValidator,
  type ValidationRequest,
  type ValidationResult,
} from './validator-pool.js';
export { isStructurallyFhir, prepareStructuralCheck } from './structural.js';
export { summaryElementNames } from './r4-index.js';
