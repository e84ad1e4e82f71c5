/**
 * Consent engine: the R4 spec example and hand-built scenarios, table-driven through `decide`.
 */
import type { Consent, ConsentProvision, Resource } from '@medplum/fhirtypes';
import { compileConsents, decide, release, type AccessRequest, type ConsentDecision, type DecideOptions } from '../../src/consent/index.js';
import {
  LOINC,
  NOW,
  NPI,
  actor,
  actorA,
  actorB,
  actorByIdentifier,
  cls,
  conf,
  consent,
  label,
  observation,
  purpose,
  readJson,
  request,
} from './helpers.js';

const OPT_IN: DecideOptions = { defaultDecision: 'deny' };
const OPT_OUT: DecideOptions = { defaultDecision: 'permit' };

// --- the R4 spec example -------------------------------------------------------------------------

/** consent-example-basic: patient f001, OPTIN policy rule, root provision without type, period 1964–2016. */
const basic = readJson<Consent>('consent-example-basic.json');
const basicRequest = (over: Partial<AccessRequest> = {}): AccessRequest => request({ patient: 'Patient/f001', resource: undefined, ...over });

describe('R4 spec example consent-example-basic', () => {
  it('is the spec example (patient f001, OPTIN, provision.period only)', () => {
    expect(basic).toMatchObject({ id: 'consent-example-basic', status: 'active', patient: { reference: 'Patient/f001' } });
    expect(basic.provision?.type).toBeUndefined();
  });

  const cases: { name: string; now: string; over?: Partial<AccessRequest>; edit?: (c: Consent) => Consent; options: DecideOptions; expected: Partial<ConsentDecision> }[] = [
    {
      name: 'inside provision.period the OPTIN base policy permits',
      now: '2015-06-01T00:00:00Z',
      options: OPT_IN,
      expected: { decision: 'permit', basis: 'consent', policy: [{ reference: 'Consent/consent-example-basic' }] },
    },
    {
      name: 'the end date 2016-01-01 is inclusive (whole day)',
      now: '2016-01-01T23:59:59Z',
      options: OPT_IN,
      expected: { decision: 'permit', basis: 'consent' },
    },
    { name: 'after provision.period the consent is out of force: opt-in default denies', now: '2024-06-01T00:00:00Z', options: OPT_IN, expected: { decision: 'deny', basis: 'default', policy: [] } },
    { name: 'after provision.period: opt-out default permits', now: '2024-06-01T00:00:00Z', options: OPT_OUT, expected: { decision: 'permit', basis: 'default' } },
    { name: 'another patient is not governed by it', now: '2015-06-01T00:00:00Z', over: { patient: 'Patient/other' }, options: OPT_IN, expected: { decision: 'deny', basis: 'default' } },
    { name: 'a research request is not governed by a patient-privacy consent', now: '2015-06-01T00:00:00Z', over: { scope: 'research' }, options: OPT_IN, expected: { decision: 'deny', basis: 'default' } },
    {
      name: 'an inactive copy is ignored',
      now: '2015-06-01T00:00:00Z',
      edit: (c) => ({ ...c, status: 'inactive' }),
      options: OPT_IN,
      expected: { decision: 'deny', basis: 'default' },
    },
    {
      name: 'policyRule OPTOUT turns the same root into a deny',
      now: '2015-06-01T00:00:00Z',
      edit: (c) => ({ ...c, policyRule: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'OPTOUT' }] } }),
      options: OPT_OUT,
      expected: { decision: 'deny', basis: 'consent' },
    },
  ];
  it.each(cases)('$name', ({ now, over, edit, options, expected }) => {
    const c = edit ? edit(basic) : basic;
    expect(decide([c], basicRequest(over), new Date(now), options)).toMatchObject(expected);
  });
});

// --- hand-built scenarios ------------------------------------------------------------------------

const psyObservation = observation('o-psy', { meta: { security: [label('PSY'), conf('R')] } });
const hivObservation = observation('o-hiv', { meta: { security: [label('HIV'), conf('R')] } });
const vObservation = observation('o-v', { meta: { security: [conf('V')] } });
const nObservation = observation('o-n', { meta: { security: [conf('N')] } });

/** Root permit with one nested deny for Organization/org-a. Modelled on (not copied from) R4 consent-example-notOrg. */
const notOrg = consent('not-org', { type: 'permit', provision: [{ type: 'deny', actor: [actor('Organization/org-a')], action: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentaction', code: 'access' }] }] }] });
/** Root permit, nested deny for one instance. Modelled on R4 consent-example-notThis. */
const notThis = consent('not-this', { type: 'permit', provision: [{ type: 'deny', data: [{ meaning: 'instance', reference: { reference: 'Observation/o1' } }] }] });
/** Root permit, nested deny for data from a time window. Modelled on R4 consent-example-notTime. */
const notTime = consent('not-time', { type: 'permit', provision: [{ type: 'deny', dataPeriod: { start: '2010-01-01', end: '2012-12-31' } }] });
/** Deny everything to everyone. Modelled on R4 consent-example-Out (opt-out). */
const optOut = consent('opt-out', { type: 'deny' });
/** Opt-in with one exception: permit only treatment by org-b. */
const optInTreatByB = consent('opt-in-b', { type: 'deny', provision: [{ type: 'permit', actor: [actor('Organization/org-b')], purpose: [purpose('TREAT')] }] });
/** Root permit, deny psychiatric and HIV data (DS4P). */
const denySensitive = consent('deny-sensitive', { type: 'permit', provision: [{ type: 'deny', securityLabel: [label('PSY'), label('HIV')] }] });
/** Root permit, deny restricted data (confidentiality high-water mark). */
const denyRestricted = consent('deny-r', { type: 'permit', provision: [{ type: 'deny', securityLabel: [conf('R')] }] });
const permitAll = consent('permit-all', { type: 'permit' });

interface Scenario {
  readonly name: string;
  readonly consents: readonly Consent[];
  readonly request?: Partial<AccessRequest>;
  readonly options?: DecideOptions;
  readonly now?: Date;
  readonly expected: Partial<ConsentDecision> & { policyIds?: string[] };
}

const scenarios: Scenario[] = [
  { name: 'no consent, opt-out jurisdiction: permit by default', consents: [], options: OPT_OUT, expected: { decision: 'permit', basis: 'default', policy: [] } },
  { name: 'no consent, opt-in jurisdiction: deny by default', consents: [], options: OPT_IN, expected: { decision: 'deny', basis: 'default' } },
  { name: 'opt-out consent denies everything', consents: [optOut], options: OPT_OUT, expected: { decision: 'deny', basis: 'consent', policyIds: ['Consent/opt-out'] } },
  { name: 'a consent of another patient does not apply', consents: [consent('x', { type: 'deny' }, { patient: { reference: 'Patient/p2' } })], options: OPT_OUT, expected: { decision: 'permit', basis: 'default' } },
  { name: 'draft and rejected consents do not apply', consents: [consent('d', { type: 'deny' }, { status: 'draft' }), consent('r', { type: 'deny' }, { status: 'rejected' })], options: OPT_OUT, expected: { decision: 'permit', basis: 'default' } },
  { name: 'treatment-scope consents are not evaluated', consents: [consent('t', { type: 'deny' }, { scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'treatment' }] } })], options: OPT_OUT, expected: { decision: 'permit', basis: 'default' } },

  // actors
  { name: 'notOrg: the named organisation is denied (by reference)', consents: [notOrg], expected: { decision: 'deny', basis: 'consent', policyIds: ['Consent/not-org'] } },
  { name: 'notOrg: any other organisation is permitted', consents: [notOrg], request: { actor: actorB }, expected: { decision: 'permit', basis: 'consent' } },
  { name: 'notOrg: a nested deny restricted to action access does not stop action collect', consents: [notOrg], request: { action: 'collect' }, expected: { decision: 'permit' } },
  { name: 'read is an alias of access', consents: [notOrg], request: { action: 'read' }, expected: { decision: 'deny' } },
  {
    name: 'actor matched by identifier (NPI) only',
    consents: [consent('npi', { type: 'permit', provision: [{ type: 'deny', actor: [actorByIdentifier(NPI, '1111111111')] }] })],
    expected: { decision: 'deny' },
  },
  {
    name: 'actor matched by OAuth client id',
    consents: [consent('client', { type: 'permit', provision: [{ type: 'deny', actor: [actorByIdentifier('urn:ietf:params:oauth:client-id', 'app-a')] }] })],
    expected: { decision: 'deny' },
  },
  {
    name: 'actor matched through a PractitionerRole reference',
    consents: [consent('role', { type: 'permit', provision: [{ type: 'deny', actor: [actor('PractitionerRole/role-a')] }] })],
    expected: { decision: 'deny' },
  },
  {
    name: 'an absolute reference to another server is not the local organisation',
    consents: [consent('abs', { type: 'permit', provision: [{ type: 'deny', actor: [actor('https://other.example/fhir/Organization/org-a')] }] })],
    expected: { decision: 'permit' },
  },
  {
    name: 'a display-only actor cannot be evaluated: the deny is taken (fail closed)',
    consents: [consent('disp', { type: 'permit', provision: [{ type: 'deny', actor: [{ role: { text: 'recipient' }, reference: { display: 'Dr Who' } }] }] })],
    request: { actor: actorB },
    expected: { decision: 'deny' },
  },

  // purpose of use
  { name: 'opt-in exception: org-b for TREAT is permitted', consents: [optInTreatByB], request: { actor: actorB }, expected: { decision: 'permit', policyIds: ['Consent/opt-in-b'] } },
  { name: 'opt-in exception: ETREAT is a kind of TREAT', consents: [optInTreatByB], request: { actor: actorB, purposeOfUse: ['ETREAT'] }, expected: { decision: 'permit' } },
  { name: 'opt-in exception: TREAT + HMARKT is not covered (every purpose must be permitted)', consents: [optInTreatByB], request: { actor: actorB, purposeOfUse: ['TREAT', 'HMARKT'] }, expected: { decision: 'deny' } },
  { name: 'opt-in exception: no declared purpose matches no purpose-restricted permit', consents: [optInTreatByB], request: { actor: actorB, purposeOfUse: [] }, expected: { decision: 'deny' } },
  { name: 'opt-in exception: org-a is not named', consents: [optInTreatByB], expected: { decision: 'deny', policyIds: ['Consent/opt-in-b'] } },
  {
    name: 'a deny for HRESCH applies to a request that declares no purpose',
    consents: [consent('no-research', { type: 'permit', provision: [{ type: 'deny', purpose: [purpose('HRESCH')] }] })],
    request: { purposeOfUse: [] },
    expected: { decision: 'deny' },
  },
  {
    name: 'a deny for HRESCH does not touch treatment',
    consents: [consent('no-research', { type: 'permit', provision: [{ type: 'deny', purpose: [purpose('HRESCH')] }] })],
    expected: { decision: 'permit' },
  },
  {
    name: 'a deny for ETREAT applies to a broader TREAT request',
    consents: [consent('no-etreat', { type: 'permit', provision: [{ type: 'deny', purpose: [purpose('ETREAT')] }] })],
    expected: { decision: 'deny' },
  },

  // class, code
  { name: 'class: a deny on Observation applies to Observations', consents: [consent('no-obs', { type: 'permit', provision: [{ type: 'deny', class: [cls('Observation')] }] })], expected: { decision: 'deny' } },
  {
    name: 'class: a deny on Observation does not apply to Conditions',
    consents: [consent('no-obs', { type: 'permit', provision: [{ type: 'deny', class: [cls('Observation')] }] })],
    request: { resourceType: 'Condition', resource: { resourceType: 'Condition', id: 'c1', subject: { reference: 'Patient/p1' } } },
    expected: { decision: 'permit' },
  },
  {
    name: 'code: a deny on glucose applies to a glucose Observation',
    consents: [consent('no-glucose', { type: 'permit', provision: [{ type: 'deny', code: [{ coding: [{ system: LOINC, code: '2339-0' }] }] }] })],
    expected: { decision: 'deny' },
  },
  {
    name: 'code: a deny on glucose does not apply to another code',
    consents: [consent('no-glucose', { type: 'permit', provision: [{ type: 'deny', code: [{ coding: [{ system: LOINC, code: '2339-0' }] }] }] })],
    request: { resource: observation('o2', { code: { coding: [{ system: LOINC, code: '718-7' }] } }) },
    expected: { decision: 'permit' },
  },
  {
    name: 'code without the resource: deny, resource-dependent',
    consents: [consent('no-glucose', { type: 'permit', provision: [{ type: 'deny', code: [{ coding: [{ system: LOINC, code: '2339-0' }] }] }] })],
    request: { resource: undefined },
    expected: { decision: 'deny', resourceDependent: true },
  },

  // data references
  { name: 'notThis: the named instance is denied', consents: [notThis], expected: { decision: 'deny', policyIds: ['Consent/not-this'] } },
  { name: 'notThis: another instance is permitted', consents: [notThis], request: { resource: observation('o2') }, expected: { decision: 'permit' } },
  { name: 'notThis without the resource: deny, resource-dependent', consents: [notThis], request: { resource: undefined }, expected: { decision: 'deny', resourceDependent: true } },
  {
    name: 'notThis without the resource, other type: the instance cannot be a Condition',
    consents: [notThis],
    request: { resource: undefined, resourceType: 'Condition' },
    expected: { decision: 'permit', resourceDependent: false },
  },
  {
    name: 'data meaning related: a resource the named report refers to is denied',
    consents: [consent('rel', { type: 'permit', provision: [{ type: 'deny', data: [{ meaning: 'related', reference: { reference: 'DiagnosticReport/r1' } }] }] })],
    request: { referrers: ['DiagnosticReport/r1'] },
    expected: { decision: 'deny' },
  },
  {
    name: 'data meaning related: not referred to by the report',
    consents: [consent('rel', { type: 'permit', provision: [{ type: 'deny', data: [{ meaning: 'related', reference: { reference: 'DiagnosticReport/r1' } }] }] })],
    request: { referrers: ['DiagnosticReport/r2'] },
    expected: { decision: 'permit' },
  },
  {
    name: 'data meaning related without referrers: undecidable, denied',
    consents: [consent('rel', { type: 'permit', provision: [{ type: 'deny', data: [{ meaning: 'related', reference: { reference: 'DiagnosticReport/r1' } }] }] })],
    expected: { decision: 'deny' },
  },
  {
    name: 'data meaning dependents: a resource referring to the named encounter is denied',
    consents: [consent('dep', { type: 'permit', provision: [{ type: 'deny', data: [{ meaning: 'dependents', reference: { reference: 'Encounter/e1' } }] }] })],
    request: { resource: observation('o3', { encounter: { reference: 'Encounter/e1' } }) },
    expected: { decision: 'deny' },
  },
  {
    name: 'data meaning dependents: other encounters are not affected',
    consents: [consent('dep', { type: 'permit', provision: [{ type: 'deny', data: [{ meaning: 'dependents', reference: { reference: 'Encounter/e1' } }] }] })],
    request: { resource: observation('o3', { encounter: { reference: 'Encounter/e2' } }) },
    expected: { decision: 'permit' },
  },
  {
    name: 'data meaning authoredby: data naming the author (here its performer) is denied',
    consents: [consent('auth', { type: 'permit', provision: [{ type: 'deny', data: [{ meaning: 'authoredby', reference: { reference: 'Practitioner/x' } }] }] })],
    request: { resource: observation('o4', { performer: [{ reference: 'Practitioner/x' }] }) },
    expected: { decision: 'deny', policyIds: ['Consent/auth'] },
  },
  {
    name: 'data meaning authoredby: data by someone else is permitted',
    consents: [consent('auth', { type: 'permit', provision: [{ type: 'deny', data: [{ meaning: 'authoredby', reference: { reference: 'Practitioner/x' } }] }] })],
    request: { resource: observation('o4', { performer: [{ reference: 'Practitioner/y' }] }) },
    expected: { decision: 'permit' },
  },
  {
    name: 'data meaning authoredby without the resource: deny, resource-dependent',
    consents: [consent('auth', { type: 'permit', provision: [{ type: 'deny', data: [{ meaning: 'authoredby', reference: { reference: 'Practitioner/x' } }] }] })],
    request: { resource: undefined },
    expected: { decision: 'deny', resourceDependent: true },
  },

  // dataPeriod and period
  { name: 'notTime: data from 2011 is denied', consents: [notTime], request: { resourceDate: '2011-05-05' }, expected: { decision: 'deny' } },
  { name: 'notTime: data from 2015 is permitted', consents: [notTime], request: { resourceDate: '2015-05-05T10:00:00Z' }, expected: { decision: 'permit' } },
  { name: 'notTime: data with an overlapping period is denied', consents: [notTime], request: { resourceDate: { start: '2012-12-01', end: '2013-02-01' } }, expected: { decision: 'deny' } },
  { name: 'notTime: data without a date cannot be placed: denied', consents: [notTime], request: {}, expected: { decision: 'deny' } },
  {
    name: 'a permit dataPeriod needs the data wholly inside it',
    consents: [consent('recent', { type: 'deny', provision: [{ type: 'permit', dataPeriod: { start: '2020-01-01' } }] })],
    request: { resourceDate: { start: '2019-12-01', end: '2020-02-01' } },
    expected: { decision: 'deny' },
  },
  {
    name: 'a permit dataPeriod covers data inside it',
    consents: [consent('recent', { type: 'deny', provision: [{ type: 'permit', dataPeriod: { start: '2020-01-01' } }] })],
    request: { resourceDate: '2021-03' },
    expected: { decision: 'permit' },
  },
  {
    name: 'a nested deny whose period has ended no longer applies',
    consents: [consent('expired', { type: 'permit', provision: [{ type: 'deny', period: { end: '2020-01-01' }, actor: [actor('Organization/org-a')] }] })],
    expected: { decision: 'permit' },
  },
  {
    name: 'a nested deny that starts in the future does not apply yet',
    consents: [consent('future', { type: 'permit', provision: [{ type: 'deny', period: { start: '2030-01-01' } }] })],
    expected: { decision: 'permit' },
  },

  // security labels
  { name: 'DS4P: PSY-labelled data is denied', consents: [denySensitive], request: { resource: psyObservation }, expected: { decision: 'deny' } },
  { name: 'DS4P: HIV-labelled data is denied', consents: [denySensitive], request: { resource: hivObservation }, expected: { decision: 'deny' } },
  { name: 'DS4P: unlabelled data is permitted', consents: [denySensitive], expected: { decision: 'permit', obligations: {} } },
  {
    name: 'DS4P without the resource: permit with a redact obligation (LEAP)',
    consents: [denySensitive],
    request: { resource: undefined },
    expected: { decision: 'permit', resourceDependent: false, obligations: { redactLabels: [label('PSY'), label('HIV')] } },
  },
  { name: 'confidentiality: deny R covers V', consents: [denyRestricted], request: { resource: vObservation }, expected: { decision: 'deny' } },
  { name: 'confidentiality: deny R does not cover N', consents: [denyRestricted], request: { resource: nObservation }, expected: { decision: 'permit' } },
  { name: 'confidentiality: unlabelled data counts as N', consents: [denyRestricted], expected: { decision: 'permit' } },
  {
    name: 'confidentiality without the resource: redact R and V',
    consents: [denyRestricted],
    request: { resource: undefined },
    expected: { decision: 'permit', obligations: { redactLabels: [conf('R'), conf('V')] } },
  },
  {
    name: 'confidentiality: an opt-in permit up to N does not release R data',
    consents: [consent('up-to-n', { type: 'deny', provision: [{ type: 'permit', securityLabel: [conf('N')] }] })],
    request: { resource: psyObservation },
    expected: { decision: 'deny' },
  },
  {
    name: 'confidentiality: an opt-in permit up to N releases unlabelled data',
    consents: [consent('up-to-n', { type: 'deny', provision: [{ type: 'permit', securityLabel: [conf('N')] }] })],
    expected: { decision: 'permit' },
  },

  // combining
  {
    name: 'deny overrides permit across consents (not most-recent-wins)',
    consents: [consent('old-deny', { type: 'deny', class: [cls('Observation')] }, { dateTime: '2020-01-01' }), consent('new-permit', { type: 'permit' }, { dateTime: '2024-01-01' })],
    expected: { decision: 'deny', policyIds: ['Consent/old-deny'] },
  },
  { name: 'several permits are all cited', consents: [permitAll, consent('permit-2', { type: 'permit' })], options: OPT_IN, expected: { decision: 'permit', policyIds: ['Consent/permit-all', 'Consent/permit-2'] } },
  {
    name: 'inside one consent, a matching nested deny beats a matching nested permit',
    consents: [consent('both', { type: 'deny', provision: [{ type: 'permit', actor: [actor('Organization/org-a')] }, { type: 'deny', class: [cls('Observation')] }] })],
    expected: { decision: 'deny' },
  },
  {
    name: 'a nested permit inside a nested deny is an exception to the exception',
    consents: [consent('deep', { type: 'permit', provision: [{ type: 'deny', class: [cls('Observation')], provision: [{ type: 'permit', purpose: [purpose('TREAT')] }] }] })],
    expected: { decision: 'permit' },
  },
  {
    name: 'a root without type or policyRule lets only its nested provisions decide',
    consents: [consent('typeless', { provision: [{ type: 'deny', actor: [actor('Organization/org-a')] }] })],
    options: OPT_OUT,
    expected: { decision: 'deny' },
  },
  {
    name: 'a root without type or policyRule: no nested match, the default stands',
    consents: [consent('typeless', { provision: [{ type: 'deny', actor: [actor('Organization/org-a')] }] })],
    request: { actor: actorB },
    options: OPT_IN,
    expected: { decision: 'deny', basis: 'default' },
  },
  {
    name: 'a consent with an unknown modifierExtension denies (fail closed)',
    consents: [consent('mod', { type: 'permit' }, { modifierExtension: [{ url: 'http://example.org/reverses-meaning', valueBoolean: true }] })],
    options: OPT_OUT,
    expected: { decision: 'deny', basis: 'consent' },
  },
  {
    name: 'the policy reference carries the consent version',
    consents: [consent('v', { type: 'deny' }, { meta: { versionId: '3' } })],
    expected: { decision: 'deny', policy: [{ reference: 'Consent/v/_history/3' }] },
  },

  // research scope
  {
    name: 'research: a research consent permits HRESCH',
    consents: [consent('research', { type: 'permit', purpose: [purpose('HRESCH')] }, { scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'research' }] } }), optOut],
    request: { scope: 'research', purposeOfUse: ['HRESCH'] },
    options: OPT_IN,
    expected: { decision: 'permit', policyIds: ['Consent/research'] },
  },
  {
    name: 'research: no research consent, opt-in default denies even with a permissive privacy consent',
    consents: [permitAll],
    request: { scope: 'research', purposeOfUse: ['HRESCH'] },
    options: OPT_IN,
    expected: { decision: 'deny', basis: 'default' },
  },

  // break-glass
  {
    name: 'break-glass: ETREAT by an allowed actor overrides a deny',
    consents: [optOut],
    request: { actor: { ...actorA, mayBreakGlass: true }, purposeOfUse: ['ETREAT'] },
    expected: { decision: 'permit', basis: 'break-glass', policyIds: ['Consent/opt-out'] },
  },
  {
    name: 'break-glass: BTG overrides the opt-in default',
    consents: [],
    request: { actor: { ...actorA, mayBreakGlass: true }, purposeOfUse: ['BTG'] },
    options: OPT_IN,
    expected: { decision: 'permit', basis: 'break-glass', policy: [] },
  },
  { name: 'break-glass: an actor not allowed to cannot', consents: [optOut], request: { purposeOfUse: ['ETREAT'] }, expected: { decision: 'deny', basis: 'consent' } },
  { name: 'break-glass: TREAT is not an emergency', consents: [optOut], request: { actor: { ...actorA, mayBreakGlass: true } }, expected: { decision: 'deny' } },
  {
    name: 'break-glass lifts a redaction',
    consents: [denySensitive],
    request: { resource: undefined, actor: { ...actorA, mayBreakGlass: true }, purposeOfUse: ['BTG'] },
    expected: { decision: 'permit', basis: 'break-glass', obligations: {} },
  },
  { name: 'break-glass is not reported when nothing was denied', consents: [permitAll], request: { actor: { ...actorA, mayBreakGlass: true }, purposeOfUse: ['ETREAT'] }, expected: { decision: 'permit', basis: 'consent' } },
];

describe('decide: scenarios', () => {
  it.each(scenarios)('$name', ({ consents, request: over, options, now, expected }) => {
    const d = decide(consents, request(over), now ?? NOW, options ?? OPT_OUT);
    const { policyIds, ...rest } = expected;
    expect(d).toMatchObject(rest);
    if (policyIds) expect(d.policy.map((r) => r.reference)).toEqual(policyIds);
  });
});

describe('compileConsents', () => {
  it('reports what it could not interpret', () => {
    const compiled = compileConsents([
      consent('auth', { type: 'permit', provision: [{ type: 'deny', data: [{ meaning: 'instance', reference: { display: 'the March report' } }] }] }),
      consent('no-scope', { type: 'deny' }, { scope: { text: 'privacy' } }),
      consent('bad-purpose', { type: 'permit', provision: [{ type: 'deny', purpose: [{ system: 'http://example.org/local', code: 'X' }] }] }),
    ]);
    expect(compiled.problems.map((p) => p.consent)).toEqual(['Consent/auth', 'Consent/no-scope', 'Consent/bad-purpose']);
  });

  it('lists the resources named with meaning related (local, without version), for the caller to supply referrers', () => {
    const compiled = compileConsents(
      [
        consent('rel', {
          type: 'permit',
          provision: [
            { type: 'deny', data: [{ meaning: 'related', reference: { reference: 'DiagnosticReport/r1/_history/2' } }, { meaning: 'instance', reference: { reference: 'Observation/o1' } }] },
            { type: 'deny', provision: [{ type: 'deny', data: [{ meaning: 'related', reference: { reference: 'https://anchor.example/fhir/R4/List/l1' } }] }] },
            { type: 'deny', data: [{ meaning: 'related', reference: { reference: 'https://elsewhere.example/fhir/List/l2' } }] },
          ],
        }),
      ],
      { localBases: ['https://anchor.example/fhir/R4'] },
    );
    expect([...compiled.relatedReferences].sort()).toEqual(['DiagnosticReport/r1', 'List/l1']);
    expect(compileConsents([notThis]).relatedReferences).toEqual([]);
  });

  it('fails closed on a Consent whose elements do not have their FHIR shapes (it used to throw on every request)', () => {
    // Stored from a source as it came (validation only flags it): provision.data a number, actor an object.
    const broken = [
      consent('bad-data', { type: 'deny', data: 0 } as unknown as ConsentProvision),
      consent('bad-actor', { type: 'permit', actor: { role: 'x' } } as unknown as ConsentProvision),
      consent('bad-category', { type: 'permit' }, { scope: undefined, category: {} } as unknown as Partial<Consent>),
    ];
    for (const c of broken) {
      const compiled = compileConsents([c, permitAll]);
      expect(compiled.problems.find((p) => p.malformed)?.consent).toBe(`Consent/${c.id}`);
      for (const r of [request(), request({ resource: undefined }), request({ scope: 'research' })]) {
        const d = compiled.decide(r, NOW, OPT_OUT);
        expect(d.decision).toBe('deny');
        expect(d.policy.map((x) => x.reference)).toContain(`Consent/${c.id}`);
      }
      // It applies to its own patient only.
      expect(compiled.decide(request({ patient: 'Patient/p2' }), NOW, OPT_OUT).decision).toBe('permit');
    }
  });

  it('compares absolute references under the local base as local ones', () => {
    const compiled = compileConsents([consent('abs', { type: 'permit', provision: [{ type: 'deny', actor: [actor('https://anchor.example/fhir/Organization/org-a')] }] })], {
      localBases: ['https://anchor.example/fhir'],
    });
    expect(compiled.decide(request(), NOW, OPT_OUT).decision).toBe('deny');
    expect(compiled.decide(request({ actor: actorB }), NOW, OPT_OUT).decision).toBe('permit');
  });

  it('gives the same answers as decide', () => {
    const consents = [notOrg, notThis, denySensitive];
    const compiled = compileConsents(consents);
    for (const s of [request(), request({ actor: actorB }), request({ resource: psyObservation }), request({ resource: undefined })]) {
      expect(compiled.decide(s, NOW, OPT_IN)).toEqual(decide(consents, s, NOW, OPT_IN));
    }
  });

  it('refuses a resource of another type than the request says', () => {
    expect(() => decide([], request({ resourceType: 'Condition' }), NOW, OPT_OUT)).toThrow(TypeError);
  });

  it('decides well under the per-read budget (0.15 ms for a 1 ms read)', () => {
    const consents = [notOrg, notThis, notTime, denySensitive, denyRestricted, optInTreatByB, permitAll];
    const compiled = compileConsents(consents);
    const reqs = [request(), request({ actor: actorB, resourceDate: '2015-01-01' }), request({ resource: psyObservation })];
    for (let i = 0; i < 2000; i++) compiled.decide(reqs[i % 3]!, NOW, OPT_IN); // warm-up
    const n = 20_000;
    const t0 = performance.now();
    for (let i = 0; i < n; i++) compiled.decide(reqs[i % 3]!, NOW, OPT_IN);
    const perCallMs = (performance.now() - t0) / n;
    expect(perCallMs).toBeLessThan(0.15);
  });
});

describe('decisions', () => {
  it('are frozen', () => {
    const d = decide([], request(), NOW, OPT_OUT);
    expect(Object.isFrozen(d)).toBe(true);
    expect(Object.isFrozen(d.obligations)).toBe(true);
  });

  it('release: a permit for this instance releases it', () => {
    const r = observation('o1');
    expect(release(r, decide([], request({ resource: r }), NOW, OPT_OUT))).toBe(r);
  });

  it('release: nothing is released under a deny', () => {
    const r = observation('o1');
    expect(release(r, decide([optOut], request({ resource: r }), NOW, OPT_OUT))).toBeUndefined();
  });

  it('release: a decision about another instance releases nothing', () => {
    expect(release(observation('o2'), decide([], request({ resource: observation('o1') }), NOW, OPT_OUT))).toBeUndefined();
  });

  it('release: a type-level permit releases only resources without redacted labels', () => {
    const d = decide([denySensitive], request({ resource: undefined }), NOW, OPT_OUT);
    expect(release(observation('o9'), d)).toBeDefined();
    expect(release(psyObservation, d)).toBeUndefined();
    expect(release(hivObservation as Resource, d)).toBeUndefined();
  });

  it('release: a resource-dependent answer releases nothing', () => {
    const d = decide([notThis], request({ resource: undefined }), NOW, OPT_OUT);
    expect(d.resourceDependent).toBe(true);
    expect(release(observation('o2'), d)).toBeUndefined();
  });
});

describe('interoperability with consents written elsewhere (LEAP CDS, R5 style)', () => {
  const HIV_OBS = observation('o-hiv', { meta: { security: [label('HIV'), conf('R')] } });
  const PLAIN_OBS = observation('o-plain');

  it('reads a class coded with R5\'s fhir-types system as the R4 resource type', () => {
    const c = consent('r5-class', { type: 'permit', provision: [{ type: 'deny', class: [{ system: 'http://hl7.org/fhir/fhir-types', code: 'MedicationStatement' }] }] });
    expect(compileConsents([c]).problems).toEqual([]);
    expect(decide([c], request({ resourceType: 'MedicationStatement', resource: { resourceType: 'MedicationStatement', id: 'm1', status: 'active', subject: { reference: 'Patient/p1' }, medicationCodeableConcept: { text: 'x' } } as never }), NOW, OPT_OUT).decision).toBe('deny');
    expect(decide([c], request({}), NOW, OPT_OUT).decision).toBe('permit');
  });

  it('takes the consent scope from a category when Consent.scope is absent', () => {
    const { scope: _scope, ...noScope } = consent('cat-scope', { type: 'deny' });
    const inCategory = { ...noScope, category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] }] } as unknown as Consent;
    expect(decide([inCategory], request(), NOW, OPT_OUT)).toMatchObject({ decision: 'deny', basis: 'consent' });
    // Without a consentscope code anywhere, the consent is skipped (the default decides).
    expect(decide([{ ...noScope, category: [] } as unknown as Consent], request(), NOW, OPT_OUT)).toMatchObject({ decision: 'permit', basis: 'default' });
  });

  it('matches labels and purposes coded with the value-set URLs of their code systems', () => {
    const denyHiv = consent('deny-hiv-vs', {
      type: 'permit',
      provision: [{ type: 'deny', securityLabel: [{ system: 'http://terminology.hl7.org/ValueSet/v3-InformationSensitivityPolicy', code: 'HIV' }] }],
    });
    expect(decide([denyHiv], request({ resource: HIV_OBS }), NOW, OPT_IN)).toMatchObject({ decision: 'deny' });
    expect(decide([denyHiv], request({ resource: PLAIN_OBS }), NOW, OPT_IN)).toMatchObject({ decision: 'permit' });
    const denyMarketing = consent('deny-hmarkt-vs', {
      type: 'permit',
      provision: [{ type: 'deny', purpose: [{ system: 'http://terminology.hl7.org/ValueSet/v3-PurposeOfUse', code: 'HMARKT' }] }],
    });
    expect(decide([denyMarketing], request({ purposeOfUse: ['HMARKT'] }), NOW, OPT_IN)).toMatchObject({ decision: 'deny' });
    expect(decide([denyMarketing], request({ purposeOfUse: ['TREAT'] }), NOW, OPT_IN)).toMatchObject({ decision: 'permit' });
  });

  it('turns a code-only deny into redactCodes only when asked (codeObligations), never for an instance', () => {
    const denyCode = consent('deny-code', { type: 'permit', provision: [{ type: 'deny', code: [{ coding: [{ system: 'http://loinc.org/', code: '2339-0' }] }] }] });
    const general = request({ resource: undefined });
    // Enforcement points ask again per resource: the type-level answer is resource-dependent.
    expect(decide([denyCode], general, NOW, OPT_IN)).toMatchObject({ decision: 'deny', resourceDependent: true, obligations: {} });
    expect(decide([denyCode], general, NOW, { ...OPT_IN, codeObligations: true })).toMatchObject({
      decision: 'permit',
      obligations: { redactCodes: [{ system: 'http://loinc.org/', code: '2339-0' }] },
    });
    // The instance is decided by its code ("http://loinc.org/" and "http://loinc.org" are one system).
    expect(decide([denyCode], request(), NOW, { ...OPT_IN, codeObligations: true })).toMatchObject({ decision: 'deny' });
    expect(decide([denyCode], request({ resource: observation('o2', { code: { coding: [{ system: LOINC, code: '718-7' }] } }) }), NOW, { ...OPT_IN, codeObligations: true })).toMatchObject({ decision: 'permit' });
  });
});

describe('actor roles: recipient or origin of the data (R4 consent-example-notThem / notOrg / notAuthor, re-authored)', () => {
  const role = (code: string) => ({ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType', code }] });
  const optIn = { policyRule: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'OPTIN' }] } };
  const access = [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentaction', code: 'access' }] }];

  it('notThem / notOrg: a PRCP actor is the recipient who is refused', () => {
    const notOrg = consent('not-org', { provision: [{ type: 'deny', actor: [{ role: role('PRCP'), reference: { reference: 'Organization/org-a' } }], action: access }] }, optIn);
    expect(decide([notOrg], request(), NOW, OPT_IN)).toMatchObject({ decision: 'deny', basis: 'consent' });
    expect(decide([notOrg], request({ actor: actorB }), NOW, OPT_IN)).toMatchObject({ decision: 'permit', basis: 'consent' });
  });

  it('notAuthor: a CST (custodian) or AUT (author) actor says whose data is withheld, from every recipient', () => {
    for (const code of ['CST', 'AUT']) {
      const notAuthor = consent(`not-author-${code}`, { provision: [{ type: 'deny', actor: [{ role: role(code), reference: { reference: 'Organization/f001' } }] }] }, optIn);
      const fromF001 = observation('o-f001', { performer: [{ reference: 'Organization/f001' }] });
      // Data the organisation produced is withheld from everyone, including other organisations.
      expect(decide([notAuthor], request({ resource: fromF001 }), NOW, OPT_IN)).toMatchObject({ decision: 'deny' });
      expect(decide([notAuthor], request({ resource: fromF001, actor: actorB }), NOW, OPT_IN)).toMatchObject({ decision: 'deny' });
      // Other data is not, and the organisation itself is not refused as a reader.
      expect(decide([notAuthor], request(), NOW, OPT_IN)).toMatchObject({ decision: 'permit' });
      const f001Reads = { ...actorA, references: ['Organization/f001'] };
      expect(decide([notAuthor], request({ actor: f001Reads }), NOW, OPT_IN)).toMatchObject({ decision: 'permit' });
      // Asked about the type, the answer depends on each resource.
      expect(decide([notAuthor], request({ resource: undefined }), NOW, OPT_IN)).toMatchObject({ decision: 'deny', resourceDependent: true });
    }
  });
});
