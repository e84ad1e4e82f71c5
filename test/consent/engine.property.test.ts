/**
 * Property: no combination of SMART scopes and consents discloses a resource that an applicable
 * deny provision covers, unless an actor allowed to break the glass declares BTG/ETREAT.
 *
 * "Applicable deny provision" is decided by an oracle written here from the R4 definitions, without
 * the engine's three-valued machinery: a deny provision covers the resource when it and all its
 * ancestors match the request and none of its own nested permit exceptions matches.
 */
import fc from 'fast-check';
import type { Coding, Consent, ConsentProvision, Resource } from '@medplum/fhirtypes';
import { compileConsents, decide, parseScopes, release, scopesAllow, type AccessRequest } from '../../src/consent/index.js';
import { LOINC, NOW, V3_ACT_CODE, V3_CONF, actor, cls, purpose } from './helpers.js';

const ACTORS = ['Organization/org-a', 'Organization/org-b', 'Practitioner/dr-a', 'Practitioner/dr-b'] as const;
const PURPOSES = ['TREAT', 'ETREAT', 'HPAYMT', 'HOPERAT', 'PUBHLTH', 'HRESCH'] as const;
const TYPES = ['Observation', 'Condition'] as const;
const CODES = ['2339-0', '718-7'] as const;
const LABELS = [
  { system: V3_ACT_CODE, code: 'PSY' },
  { system: V3_ACT_CODE, code: 'HIV' },
  { system: V3_CONF, code: 'R' },
] as const;
const DATA = ['Observation/o1', 'Observation/o2', 'Condition/c1'] as const;
const DATA_PERIODS = [{ start: '2010-01-01', end: '2012-12-31' }, { start: '2020-01-01' }] as const;
const PERIODS = [{ end: '2020-01-01' }, { start: '2020-01-01' }, { start: '2030-01-01' }] as const;
const DATES = ['2011-06-01', '2015-06-01', '2021-06-01T08:00:00Z'] as const;
const SCOPES = ['user/Observation.rs', 'user/*.read', 'user/Condition.rs', `user/Observation.rs?code=${LOINC}|2339-0`, 'patient/*.rs', 'user/*.cruds'] as const;

// --- generators ----------------------------------------------------------------------------------

/** Mostly absent, so that provisions state few criteria and often apply. */
const opt = <T>(arb: fc.Arbitrary<T>): fc.Arbitrary<T | undefined> =>
  fc.oneof({ weight: 3, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: arb });
const mostly = <T>(usual: T, other: T): fc.Arbitrary<T> =>
  fc.oneof({ weight: 4, arbitrary: fc.constant(usual) }, { weight: 1, arbitrary: fc.constant(other) });

const criteriaArb = fc.record({
  actor: opt(fc.subarray([...ACTORS], { minLength: 1, maxLength: 2 })),
  purpose: opt(fc.subarray([...PURPOSES], { minLength: 1, maxLength: 2 })),
  class: opt(fc.subarray([...TYPES], { minLength: 1 })),
  code: opt(fc.subarray([...CODES], { minLength: 1 })),
  securityLabel: opt(fc.subarray([...LABELS], { minLength: 1, maxLength: 2 })),
  data: opt(fc.record({ meaning: fc.constantFrom('instance' as const, 'dependents' as const), ref: fc.constantFrom(...DATA) })),
  dataPeriod: opt(fc.constantFrom(...DATA_PERIODS)),
  period: opt(fc.constantFrom(...PERIODS)),
});
type Criteria = typeof criteriaArb extends fc.Arbitrary<infer T> ? T : never;

function provision(type: 'permit' | 'deny' | undefined, c: Criteria, children: ConsentProvision[] = []): ConsentProvision {
  return {
    ...(type ? { type } : {}),
    ...(c.actor ? { actor: c.actor.map(actor) } : {}),
    ...(c.purpose ? { purpose: c.purpose.map(purpose) } : {}),
    ...(c.class ? { class: c.class.map(cls) } : {}),
    ...(c.code ? { code: c.code.map((code) => ({ coding: [{ system: LOINC, code }] })) } : {}),
    ...(c.securityLabel ? { securityLabel: c.securityLabel.map((l) => ({ ...l })) } : {}),
    ...(c.data ? { data: [{ meaning: c.data.meaning, reference: { reference: c.data.ref } }] } : {}),
    ...(c.dataPeriod ? { dataPeriod: { ...c.dataPeriod } } : {}),
    ...(c.period ? { period: { ...c.period } } : {}),
    ...(children.length ? { provision: children } : {}),
  };
}

const typeArb = fc.constantFrom('permit' as const, 'deny' as const);

const consentArb = fc
  .record({
    id: fc.integer({ min: 1, max: 1_000_000 }),
    active: mostly(true, false),
    ownPatient: mostly(true, false),
    scope: mostly('patient-privacy', 'research'),
    rootType: fc.option(typeArb, { nil: undefined, freq: 4 }),
    policyRule: fc.option(fc.constantFrom('OPTIN', 'OPTOUT'), { nil: undefined }),
    root: criteriaArb,
    children: fc.array(fc.record({ type: typeArb, criteria: criteriaArb }), { maxLength: 3 }),
  })
  .map(
    (g): Consent => ({
      resourceType: 'Consent',
      id: `c${g.id}`,
      status: g.active ? 'active' : 'inactive',
      scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: g.scope }] },
      category: [{ coding: [{ system: LOINC, code: '59284-0' }] }],
      patient: { reference: g.ownPatient ? 'Patient/p1' : 'Patient/p2' },
      ...(g.policyRule ? { policyRule: { coding: [{ system: V3_ACT_CODE, code: g.policyRule }] } } : {}),
      provision: provision(
        g.rootType,
        g.root,
        g.children.map((c) => provision(c.type, c.criteria)),
      ),
    }),
  );

const requestArb = fc
  .record({
    actor: fc.subarray([...ACTORS], { minLength: 1, maxLength: 2 }),
    purposes: fc.subarray([...PURPOSES, 'BTG'], { maxLength: 2 }),
    mayBreakGlass: fc.boolean(),
    scope: mostly<'patient-privacy' | 'research'>('patient-privacy', 'research'),
    instance: fc.constantFrom(...DATA),
    code: fc.constantFrom(...CODES),
    labels: fc.subarray([...LABELS]),
    encounter: fc.option(fc.constantFrom(...DATA), { nil: undefined }),
    date: fc.constantFrom(...DATES),
  })
  .map((g): AccessRequest => {
    const [type, id] = g.instance.split('/') as [string, string];
    const resource = {
      resourceType: type,
      id,
      meta: { security: g.labels.map((l) => ({ ...l })) },
      code: { coding: [{ system: LOINC, code: g.code }] },
      subject: { reference: 'Patient/p1' },
      ...(g.encounter ? { focus: [{ reference: g.encounter }] } : {}),
    } as unknown as Resource;
    return {
      patient: 'Patient/p1',
      actor: { references: g.actor, identifiers: [], mayBreakGlass: g.mayBreakGlass },
      purposeOfUse: g.purposes,
      scope: g.scope,
      resourceType: type,
      resource,
      resourceDate: g.date,
    };
  });

// --- the oracle ----------------------------------------------------------------------------------

const PARENT: Record<string, string> = { ETREAT: 'TREAT', BTG: 'ETREAT' };
const chain = (p: string): string[] => (PARENT[p] ? [p, ...chain(PARENT[p])] : [p]);
const ms = (d: string, end = false): number => {
  if (/^\d{4}-\d{2}-\d{2}$/.test(d)) return Date.parse(`${d}T00:00:00Z`) + (end ? 86_399_999 : 0);
  return Date.parse(d);
};
const CONF_RANK: Record<string, number> = { U: 0, L: 1, M: 2, N: 3, R: 4, V: 5 };

function matches(p: ConsentProvision, type: 'permit' | 'deny', req: AccessRequest): boolean {
  const r = req.resource as Resource & { code?: { coding?: Coding[] }; focus?: { reference: string }[] };
  const now = NOW.getTime();
  if (p.period && !(now >= (p.period.start ? ms(p.period.start) : -Infinity) && now <= (p.period.end ? ms(p.period.end, true) : Infinity))) return false;
  if (p.actor && !p.actor.some((a) => req.actor.references.includes(a.reference.reference!))) return false;
  if (p.purpose) {
    const set = p.purpose.map((c) => c.code!);
    if (type === 'permit') {
      if (req.purposeOfUse.length === 0 || !req.purposeOfUse.every((q) => chain(q).some((x) => set.includes(x)))) return false;
    } else if (req.purposeOfUse.length > 0 && !req.purposeOfUse.some((q) => chain(q).some((x) => set.includes(x)) || set.some((s) => chain(s).includes(q)))) return false;
  }
  if (p.class && !p.class.some((c) => c.code === req.resourceType)) return false;
  if (p.code && !p.code.some((cc) => cc.coding!.some((c) => r.code?.coding?.some((rc) => rc.system === c.system && rc.code === c.code)))) return false;
  if (p.data) {
    const self = `${r.resourceType}/${r.id}`;
    const ok = p.data.some((d) => d.reference.reference === self || (d.meaning === 'dependents' && (r.focus ?? []).some((f) => f.reference === d.reference.reference)));
    if (!ok) return false;
  }
  if (p.dataPeriod) {
    const d = req.resourceDate as string;
    const ds = ms(d);
    const de = /T/.test(d) ? ds : ms(d, true);
    const ps = p.dataPeriod.start ? ms(p.dataPeriod.start) : -Infinity;
    const pe = p.dataPeriod.end ? ms(p.dataPeriod.end, true) : Infinity;
    if (type === 'permit' ? !(ds >= ps && de <= pe) : !(de >= ps && ds <= pe)) return false;
  }
  if (p.securityLabel) {
    const labels = r.meta?.security ?? [];
    const confRank = Math.max(CONF_RANK['N']!, ...labels.filter((l) => l.system === V3_CONF).map((l) => CONF_RANK[l.code!]!));
    const ok = p.securityLabel.some((l) => {
      if (l.system === V3_CONF) return type === 'permit' ? confRank <= CONF_RANK[l.code!]! : confRank >= CONF_RANK[l.code!]!;
      return labels.some((x) => x.system === l.system && x.code === l.code);
    });
    if (!ok) return false;
  }
  return true;
}

/** Is the request's resource covered by an applicable deny provision (not excepted by a nested permit)? */
function coveredByDeny(consents: readonly Consent[], req: AccessRequest): boolean {
  for (const c of consents) {
    if (c.status !== 'active' || c.patient?.reference !== req.patient || c.scope.coding?.[0]?.code !== req.scope) continue;
    const root = c.provision!;
    const baseCode = c.policyRule?.coding?.[0]?.code;
    const rootType = root.type ?? (baseCode === 'OPTIN' ? 'permit' : baseCode === 'OPTOUT' ? 'deny' : undefined);
    if (!matches(root, rootType ?? 'deny', req)) continue;
    const children = root.provision ?? [];
    if (rootType === 'deny' && !children.some((ch) => (ch.type ?? 'deny') === 'permit' && matches(ch, 'permit', req))) return true;
    if (children.some((ch) => (ch.type ?? rootType) === 'deny' && matches(ch, 'deny', req))) return true;
  }
  return false;
}

const breaksGlass = (req: AccessRequest): boolean => req.actor.mayBreakGlass && req.purposeOfUse.some((p) => p === 'BTG' || p === 'ETREAT');

// --- properties ----------------------------------------------------------------------------------

const world = fc.record({
  consents: fc.array(consentArb, { maxLength: 4 }),
  scopes: fc.subarray([...SCOPES], { minLength: 1 }),
  req: requestArb,
  defaultDecision: fc.constantFrom('permit' as const, 'deny' as const),
});

describe('consent engine properties', () => {
  it('the generators produce covered resources often enough to mean something', () => {
    const samples = fc.sample(world, { numRuns: 2000, seed: 42 });
    const covered = samples.filter((w) => coveredByDeny(w.consents, w.req)).length;
    expect(covered / samples.length).toBeGreaterThan(0.1);
  });

  it('no scopes + consents disclose a resource an applicable deny covers (per-resource decision)', () => {
    fc.assert(
      fc.property(world, ({ consents, scopes, req, defaultDecision }) => {
        if (!coveredByDeny(consents, req) || breaksGlass(req)) return;
        const granted = parseScopes([...scopes]).scopes;
        const allowedByScopes = scopesAllow(granted, { context: 'user', resourceType: req.resourceType, interaction: 'read', resource: req.resource });
        const d = decide(consents, req, NOW, { defaultDecision });
        const disclosed = allowedByScopes && release(req.resource!, d) !== undefined;
        expect(d.decision).toBe('deny');
        expect(disclosed).toBe(false);
      }),
      { numRuns: 3000 },
    );
  });

  it('a type-level decision (no resource) never releases a covered resource either', () => {
    fc.assert(
      fc.property(world, ({ consents, req, defaultDecision }) => {
        if (!coveredByDeny(consents, req) || breaksGlass(req)) return;
        const typeLevel = decide(consents, { ...req, resource: undefined }, NOW, { defaultDecision });
        expect(release(req.resource!, typeLevel)).toBeUndefined();
      }),
      { numRuns: 3000 },
    );
  });

  it('break-glass by an allowed actor is always a permit, and is reported as such when it overrode a deny', () => {
    fc.assert(
      fc.property(world, ({ consents, req, defaultDecision }) => {
        const bg = { ...req, actor: { ...req.actor, mayBreakGlass: true }, purposeOfUse: [...req.purposeOfUse, 'BTG'] };
        const d = decide(consents, bg, NOW, { defaultDecision });
        expect(d.decision).toBe('permit');
        const without = decide(consents, { ...bg, actor: { ...bg.actor, mayBreakGlass: false } }, NOW, { defaultDecision });
        if (without.decision === 'deny') expect(d.basis).toBe('break-glass');
      }),
      { numRuns: 1000 },
    );
  });

  it('never throws on a Consent with garbage where its elements belong, and never permits under it', () => {
    // What a source may send and ingest stores (flagged invalid): the top level shaped, anything below.
    const junk = fc.anything({ maxDepth: 3, withBigInt: false, withDate: false, withMap: false, withSet: false, withTypedArray: false, withSparseArray: false, withBoxedValues: false, withNullPrototype: false });
    const garbled = fc.record(
      {
        type: fc.oneof(fc.constant('deny'), fc.constant('permit'), junk),
        period: junk, actor: junk, action: junk, securityLabel: junk, purpose: junk, class: junk, code: junk, dataPeriod: junk, data: junk, provision: junk,
      },
      { requiredKeys: [] },
    );
    fc.assert(
      fc.property(garbled, fc.constantFrom<'permit' | 'deny'>('permit', 'deny'), (provision, defaultDecision) => {
        const c: Consent = { resourceType: 'Consent', id: 'garbled', status: 'active', scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] }, category: [], patient: { reference: 'Patient/p1' }, provision: provision as ConsentProvision };
        const req: AccessRequest = { patient: 'Patient/p1', actor: { references: ['Organization/org-a'], identifiers: [], clientId: 'app', mayBreakGlass: false }, purposeOfUse: ['TREAT'], scope: 'patient-privacy', resourceType: 'Observation', resource: { resourceType: 'Observation', id: 'o1', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/p1' } } as Resource };
        const compiled = compileConsents([c]);
        const d = compiled.decide(req, NOW, { defaultDecision });
        if (compiled.problems.some((p) => p.malformed)) expect(d.decision).toBe('deny');
        compiled.decide({ ...req, resource: undefined }, NOW, { defaultDecision, codeObligations: true });
      }),
      { numRuns: 2000 },
    );
  });

  it('decisions are deterministic and do not depend on consent order', () => {
    fc.assert(
      fc.property(world, ({ consents, req, defaultDecision }) => {
        const a = decide(consents, req, NOW, { defaultDecision });
        const b = decide([...consents].reverse(), req, NOW, { defaultDecision });
        expect(b.decision).toBe(a.decision);
        expect(b.basis).toBe(a.basis);
        expect(new Set(b.policy.map((p) => p.reference))).toEqual(new Set(a.policy.map((p) => p.reference)));
      }),
      { numRuns: 1000 },
    );
  });
});
