/**
 * Consent bounded context: the pure decision engine over FHIR R4 Consent, the SMART scope model
 * and DS4P sensitivity labelling. No database, no HTTP; the consent-narrowed repository in
 * `src/fhir-api` builds requests and enforces decisions.
 *
 * @see docs/decisions-consent.md
 */
export { compileConsents, decide, release } from './engine.js';
export type { CompileOptions, CompiledConsents } from './engine.js';
export {
  ACT_CODE_SYSTEM,
  CONFIDENTIALITY_SYSTEM,
  CONSENT_ACTION_SYSTEM,
  CONSENT_SCOPE_SYSTEM,
  PURPOSE_OF_USE_SYSTEM,
  RESOURCE_TYPES_SYSTEM,
} from './engine.js';
export { constraintMatches, parseScope, parseScopes, scopesAllow, searchConstraints } from './scopes.js';
export type {
  ConstraintParameter,
  ParsedScopes,
  ScopeCheck,
  ScopeConstraint,
  ScopeContext,
  ScopeInteraction,
  ScopeParseResult,
  ScopePermission,
  SmartScope,
  TokenValue,
} from './scopes.js';
export { CodeListError, CodeListFileSchema, RESTRICTED, applySensitivityLabels, compileCodeLists, sensitivityLabels } from './labels.js';
export type { CodeListFile, SensitivityCodeIndex } from './labels.js';
export { OAUTH_CLIENT_ID_SYSTEM } from './types.js';
export { outgoingReferences } from './fhir-values.js';
export type {
  AccessRequest,
  ActorIdentifier,
  ConsentAction,
  ConsentChecked,
  ConsentDecision,
  ConsentDecisionFields,
  ConsentObligations,
  ConsentProblem,
  ConsentScopeCode,
  DecideOptions,
  RequestActor,
  ResourceDate,
} from './types.js';
