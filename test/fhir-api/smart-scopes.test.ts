/**
 * Scope granting at the token endpoint: requested ∩ allowed, in SMART v1 and v2 syntax. The property
 * test checks the security invariant (a granted scope never allows anything that the request and the
 * registration do not both allow) and completeness (everything both allow is granted).
 */
import fc from 'fast-check';
import type { Observation } from '@medplum/fhirtypes';
import { parseScope, parseScopes, scopesAllow, type ScopeContext, type ScopeInteraction } from '../../src/consent/index.js';
import { formatScope, grantScopes, intersectScope } from '../../src/fhir-api/smart/scopes.js';

describe('grantScopes', () => {
  it('grants a request that is wholly allowed as spelled', () => {
    expect(grantScopes('system/Observation.read', ['system/*.rs'])).toEqual(['system/Observation.read']);
    expect(grantScopes('system/Observation.rs', ['system/Observation.read'])).toEqual(['system/Observation.rs']);
  });

  it('narrows a wider request to the allowed part', () => {
    expect(grantScopes('system/*.cruds', ['system/Observation.rs', 'system/Patient.r'])).toEqual(['system/Observation.rs', 'system/Patient.r']);
    expect(grantScopes('system/*.rs', ['system/Observation.cruds'])).toEqual(['system/Observation.rs']);
    expect(grantScopes('system/Observation.*', ['system/*.read'])).toEqual(['system/Observation.rs']);
  });

  it('never widens: other types, other contexts, other permissions get nothing', () => {
    expect(grantScopes('system/Patient.rs', ['system/Observation.rs'])).toEqual([]);
    expect(grantScopes('user/Observation.rs', ['system/Observation.rs'])).toEqual([]);
    expect(grantScopes('system/Observation.cud', ['system/Observation.rs'])).toEqual([]);
  });

  it('keeps constraints of both sides (granular scopes)', () => {
    const lab = 'system/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory';
    expect(grantScopes('system/Observation.rs', [lab])).toEqual([lab]);
    expect(grantScopes(lab, ['system/*.rs'])).toEqual([lab]);
    const [granted] = grantScopes('system/*.cruds', [lab]);
    expect(granted).toBe(lab);
  });

  it('drops non-resource and malformed scopes, and contexts the client cannot use', () => {
    expect(grantScopes('openid fhirUser launch/patient system/Observation.rw system/Observation.rs', ['system/*.rs'])).toEqual(['system/Observation.rs']);
    expect(grantScopes('patient/Observation.rs user/Observation.rs', ['patient/*.rs', 'user/*.rs'], { patient: false, user: false })).toEqual([]);
  });

  it('writes synthesised scopes in v2 syntax that parse back to the same scope', () => {
    const r = parseScope('system/*.cruds?code=http://loinc.org|1234-5');
    const a = parseScope('system/Observation.rs?category=a%7Cb,laboratory');
    if (!r.ok || !a.ok) throw new Error('fixture scopes must parse');
    const g = intersectScope(r.scope, a.scope)!;
    const back = parseScope(formatScope(g));
    expect(back.ok && back.scope).toMatchObject({ context: 'system', resourceType: 'Observation', permissions: ['r', 's'], constraints: g.constraints });
  });

  describe('property: a granted scope allows exactly what request and registration both allow', () => {
    const contexts: ScopeContext[] = ['system', 'user', 'patient'];
    const types = ['Observation', 'Patient', 'Condition', '*'];
    const perms = ['read', 'write', '*', 'r', 'rs', 's', 'cud', 'cruds', 'cr', 'ds'];
    const constraints = ['', '?category=laboratory', '?code=http://loinc.org|1234-5', '?category=laboratory,vital-signs'];
    const scopeArb = fc
      .tuple(fc.constantFrom(...contexts), fc.constantFrom(...types), fc.constantFrom(...perms), fc.constantFrom(...constraints))
      .map(([c, t, p, q]) => `${c}/${t}.${p}${q}`)
      .filter((s) => parseScope(s).ok);
    const interactions: ScopeInteraction[] = ['read', 'search', 'create', 'update', 'delete'];
    const observation = (category: string, code: string): Observation => ({
      resourceType: 'Observation',
      status: 'final',
      category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: category }] }],
      code: { coding: [{ system: 'http://loinc.org', code }] },
    });
    const resources = [observation('laboratory', '1234-5'), observation('vital-signs', '9999-9'), observation('social-history', '1234-5')];

    it('holds for random requests and registrations', () => {
      fc.assert(
        fc.property(fc.array(scopeArb, { maxLength: 4 }), fc.array(scopeArb, { maxLength: 4 }), (requested, allowed) => {
          const granted = parseScopes(grantScopes(requested, allowed)).scopes;
          const req = parseScopes(requested).scopes;
          const may = parseScopes(allowed).scopes;
          for (const context of contexts) {
            for (const interaction of interactions) {
              for (const resource of [undefined, ...resources]) {
                for (const resourceType of ['Observation', 'Patient']) {
                  if (resource && resource.resourceType !== resourceType) continue;
                  const check = { context, interaction, resourceType, ...(resource ? { resource } : {}) };
                  // Sound (never more than both) and complete (everything both allow is granted).
                  expect(scopesAllow(granted, check)).toBe(scopesAllow(req, check) && scopesAllow(may, check));
                }
              }
            }
          }
        }),
        { numRuns: 200 },
      );
    });
  });
});
