/**
 * Every known leak path of a consent-gated FHIR API (HAPI's `Bundle.total`, `_include`, paging;
 * existence via 404 vs 403; chaining; history), tried and shown closed, plus SQL metacharacters in
 * every parameter and a property test against an independent oracle.
 */
import fc from 'fast-check';
import type { Resource } from '@medplum/fhirtypes';
import { LOINC, consent, denyActor, observation, openFhirEnv, patient, type FhirEnv, type Json } from './env.js';

const V3_ACT = 'http://terminology.hl7.org/CodeSystem/v3-ActCode';
const CONF = 'http://terminology.hl7.org/CodeSystem/v3-Confidentiality';
const ids = (b: Json, mode = 'match'): string[] => (b?.entry ?? []).filter((e: Json) => e.search?.mode === mode).map((e: Json) => `${e.resource.resourceType}/${e.resource.id}`);
const nextOf = (env: FhirEnv, b: Json): string | undefined => (b.link?.find((l: Json) => l.relation === 'next')?.url as string | undefined)?.slice(env.baseUrl.length);

async function allPages(env: FhirEnv, path: string, as: string): Promise<{ pages: string[][]; status: number[] }> {
  const pages: string[][] = [];
  const status: number[] = [];
  let p: string | undefined = path;
  while (p && pages.length < 50) {
    const r = await env.get(p, as);
    status.push(r.status);
    if (r.status !== 200) break;
    pages.push(ids(r.body));
    p = nextOf(env, r.body);
  }
  return { pages, status };
}

function headersOf(h: Headers): Record<string, string> {
  const out: Record<string, string> = {};
  h.forEach((v, k) => {
    if (k !== 'date' && k !== 'keep-alive' && k !== 'connection') out[k] = v;
  });
  return out;
}

describe('leak paths', () => {
  let env: FhirEnv;
  beforeAll(async () => {
    env = await openFhirEnv({ consentDefault: 'permit' });
    env.as('org-a', { scope: 'user/*.rs' });
    env.as('org-b', { scope: 'user/*.rs', clientId: 'app-b', actor: { references: ['Organization/org-b'], identifiers: [] } });
    // pA: no consent. pD: denies org-b everything. pL: withholds restricted (R) data from everyone.
    await env.put(patient('pA'));
    await env.put(patient('pD'));
    await env.put(patient('pL'));
    await env.put(consent('c-d', 'pD', denyActor('Organization/org-b')));
    await env.put(consent('c-l', 'pL', { type: 'deny', securityLabel: [{ system: CONF, code: 'R' }] }));
    await env.put({ resourceType: 'Encounter', id: 'eD', status: 'finished', class: { code: 'AMB' }, subject: { reference: 'Patient/pD' } } as never);
    // Interleaved ids so denied rows sit between permitted ones in index order.
    for (let i = 0; i < 10; i++) {
      const n = String(i).padStart(2, '0');
      await env.put(observation(`k${n}a`, 'pA', { encounter: { reference: i === 0 ? 'Encounter/eD' : undefined } }));
      await env.put(observation(`k${n}d`, 'pD'));
    }
    // Only denied rows after the last permitted one: a naive "next" link would lead to an empty page.
    for (let i = 0; i < 5; i++) await env.put(observation(`z${i}d`, 'pD'));
    await env.put(observation('lR', 'pL', { meta: { security: [{ system: CONF, code: 'R' }] } }));
    await env.put(observation('lN', 'pL'));
    // In pA's compartment, but also names the denied patient pD.
    await env.put(observation('mix', 'pA', { performer: [{ reference: 'Patient/pD' }] }));
  });
  afterAll(async () => env.close());

  it('a denied read is byte-for-byte the same 404 as an absent one (status, headers, body)', async () => {
    const denied = await env.get('/Observation/k00d', 'org-b');
    const absent = await env.get('/Observation/k00x', 'org-b');
    const deniedBadType = await env.get('/Patient/pD', 'org-b');
    const absentPatient = await env.get('/Patient/nobody', 'org-b');
    for (const [d, a] of [
      [denied, absent],
      [deniedBadType, absentPatient],
    ] as const) {
      expect(d.status).toBe(404);
      expect(d.text).toBe(a.text);
      expect(headersOf(d.headers)).toEqual(headersOf(a.headers));
    }
    // Same for vread, _history and $everything.
    for (const [d, a] of [
      ['/Observation/k00d/_history/1', '/Observation/k00x/_history/1'],
      ['/Observation/k00d/_history', '/Observation/k00x/_history'],
      ['/Patient/pD/$everything', '/Patient/nobody/$everything'],
      ['/Observation/lR', '/Observation/nothing'],
      ['/Observation/mix', '/Observation/nothing'],
    ]) {
      const dr = await env.get(d!, d!.includes('lR') ? 'org-a' : 'org-b');
      const ar = await env.get(a!, 'org-b');
      expect([d, dr.status]).toEqual([d, 404]);
      expect(dr.text).toBe(ar.text);
      expect(headersOf(dr.headers)).toEqual(headersOf(ar.headers));
    }
  });

  it('records the denial behind a 404 (the audit knows, the client does not)', async () => {
    env.events.length = 0;
    await env.get('/Observation/k00d', 'org-b');
    await env.get('/Observation/k00x', 'org-b');
    expect(env.events.filter((e) => e.outcome === 'deny')).toEqual([
      expect.objectContaining({ entities: ['Observation/k00d/_history/1'], patient: 'pD', policy: ['Consent/c-d/_history/1'] }),
    ]);
  });

  it('an older version cannot be read once the current version is denied', async () => {
    await env.put(observation('ver', 'pL'));
    await env.put(observation('ver', 'pL', { meta: { security: [{ system: CONF, code: 'R' }] } }));
    expect((await env.get('/Observation/ver/_history/1', 'org-a')).status).toBe(404);
    expect((await env.get('/Observation/ver/_history', 'org-a')).status).toBe(404);
  });

  it('search neither counts nor pages over denied rows: full pages, no total, no dangling next link', async () => {
    const { pages } = await allPages(env, '/Observation?code=2339-0&_count=4', 'org-b');
    const flat = pages.flat();
    expect(flat.every((id) => id.endsWith('a') || id === 'Observation/lN')).toBe(true);
    expect(flat.sort()).toEqual([...Array.from({ length: 10 }, (_, i) => `Observation/k${String(i).padStart(2, '0')}a`), 'Observation/lN'].sort());
    expect(pages.slice(0, -1).every((p) => p.length === 4)).toBe(true);
    expect(pages.at(-1)!.length).toBeGreaterThan(0);
    const first = await env.get('/Observation?code=2339-0&_count=4', 'org-b');
    expect(first.body.total).toBeUndefined();
    // Ends exactly at the last permitted row: no next link although denied rows follow.
    const tail = await env.get('/Observation?_id=k09a,z0d,z1d,z2d,z3d,z4d&_count=1', 'org-b');
    expect(ids(tail.body)).toEqual(['Observation/k09a']);
    expect(nextOf(env, tail.body)).toBeUndefined();
  });

  it('_summary=count counts permitted rows only', async () => {
    const b = await env.get('/Observation?code=2339-0&_summary=count', 'org-b');
    const a = await env.get('/Observation?code=2339-0&_summary=count', 'org-a');
    expect(b.body.total).toBe(11);
    expect(a.body.total).toBe(27); // 29 match; lR and `ver` (labelled R) are withheld from everyone
    expect((await env.get('/Observation?patient=pD&_summary=count', 'org-b')).body.total).toBe(0);
  });

  it('_include and _revinclude cannot pull in denied resources', async () => {
    const inc = await env.get('/Observation?_id=k00a&_include=Observation:encounter&_include=Observation:patient', 'org-b');
    expect(ids(inc.body)).toEqual(['Observation/k00a']);
    expect(ids(inc.body, 'include')).toEqual(['Patient/pA']);
    const incA = await env.get('/Observation?_id=k00a&_include=Observation:encounter', 'org-a');
    expect(ids(incA.body, 'include')).toEqual(['Encounter/eD']);
    const rev = await env.get('/Patient?_id=pA,pD,pL&_revinclude=Observation:subject&_revinclude=Encounter:subject', 'org-b');
    expect(ids(rev.body).sort()).toEqual(['Patient/pA', 'Patient/pL']);
    const inclRev = ids(rev.body, 'include');
    expect(inclRev.some((i) => i.endsWith('d') || i === 'Encounter/eD' || i === 'Observation/lR' || i === 'Observation/mix')).toBe(false);
    expect(inclRev).toContain('Observation/lN');
  });

  it('$everything excludes denied and labelled resources and resources naming a denied patient', async () => {
    const { pages } = await allPages(env, '/Patient/pA/$everything?_count=3', 'org-b');
    const flat = pages.flat();
    expect(flat).toContain('Patient/pA');
    expect(flat).not.toContain('Observation/mix');
    expect(flat.some((i) => i.endsWith('d'))).toBe(false);
    const l = (await allPages(env, '/Patient/pL/$everything', 'org-a')).pages.flat();
    expect(l).toContain('Observation/lN');
    expect(l).not.toContain('Observation/lR');
  });

  it("a denied patient's data cannot be reached by subject=, _id, chaining or _elements", async () => {
    for (const q of ['subject=Patient/pD', 'patient=pD', '_id=k00d,k01d', 'subject:Patient=pD', '_id=k00d&_elements=id']) {
      const r = await env.get(`/Observation?${q}`, 'org-b');
      expect([q, r.status, ids(r.body), r.body.total, nextOf(env, r.body)]).toEqual([q, 200, [], undefined, undefined]);
    }
    // Chains resolve to the targets the requester may see: the denied patient's name matches nothing,
    // exactly as a name nobody has (checked in chain.test.ts too); a patient org-b may see still matches.
    for (const q of ['subject.name=Fam-pD', 'subject:Patient.name=Fam-pD', 'patient.family:exact=Fam-pD', 'patient.name=Fam-pD&_summary=count']) {
      const r = await env.get(`/Observation?${q}`, 'org-b');
      expect([q, r.status, ids(r.body), r.body.total ?? 0, nextOf(env, r.body)]).toEqual([q, 200, [], 0, undefined]);
    }
    expect(ids((await env.get('/Observation?subject.name=Fam-pA&_count=50', 'org-b')).body).length).toBeGreaterThan(0);
    // _has counts only the Observations org-b may see: pD is not found through its own Observations.
    expect(ids((await env.get('/Patient?_has:Observation:patient:code=2339-0&_id=pD,pA', 'org-b')).body)).toEqual(['Patient/pA']);
    const pat = await env.get('/Patient?_id=pD', 'org-b');
    expect(ids(pat.body)).toEqual([]);
  });

  const METACHARS = [
    "'",
    "' OR '1'='1",
    "'; DROP TABLE resource; --",
    '"; DELETE FROM resource_history; --',
    '\\',
    '%',
    '_',
    '%27%20OR%201%3D1',
    '$1',
    '1) OR (1=1',
    "x'::text) OR true --",
    '\u0000',
    '../../etc/passwd',
    '*',
    'Patient/pD OR 1=1',
    '2024-01-01\'; SELECT pg_sleep(5); --',
  ];
  const PARAMS = ['_id', '_lastUpdated', 'patient', 'subject', 'encounter', 'code', 'category', 'date', 'status', 'identifier', '_count', '_include', '_revinclude', '_elements', '_summary', '_cursor', '_sort', '_total', 'status:not', 'date:missing', 'unknown', "x'--"];

  it('SQL metacharacters in every search parameter: 400 or an empty result, never 5xx, never a changed row', async () => {
    const before = JSON.stringify(await env.db.store.resources.countsByType());
    const statuses = new Set<number>();
    for (const param of PARAMS) {
      for (const value of METACHARS) {
        const r = await env.get(`/Observation?${encodeURIComponent(param)}=${encodeURIComponent(value)}`, 'org-a');
        statuses.add(r.status);
        expect([param, value, r.status === 400 || r.status === 200]).toEqual([param, value, true]);
        if (r.status === 200 && param !== '_elements' && param !== '_summary' && param !== '_count' && param !== 'status:not') {
          expect([param, value, ids(r.body)]).toEqual([param, value, []]);
        }
        const post = await env.get('/Observation/_search', 'org-a', {
          method: 'POST',
          headers: { 'content-type': 'application/x-www-form-urlencoded' },
          body: `${encodeURIComponent(param)}=${encodeURIComponent(value)}`,
        });
        expect(post.status === 400 || post.status === 200).toBe(true);
      }
    }
    for (const value of METACHARS) {
      const r = await env.get(`/Observation/${encodeURIComponent(value)}`, 'org-a');
      expect(r.status === 400 || r.status === 404).toBe(true);
      const h = await env.get(`/Observation/k00a/_history/${encodeURIComponent(value)}`, 'org-a');
      expect(h.status === 400 || h.status === 404).toBe(true);
    }
    expect(JSON.stringify(await env.db.store.resources.countsByType())).toBe(before);
    expect((await env.get('/Observation/k00a', 'org-a')).status).toBe(200);
    expect(statuses.has(500)).toBe(false);
  }, 120_000);
});

// ---------------------------------------------------------------------------------------------
// Property: no combination of scopes and consents discloses a denied resource.

type Criterion = { kind: 'actor'; org: string } | { kind: 'class'; type: string } | { kind: 'code'; code: string } | { kind: 'label'; code: string };
interface GenConsent {
  readonly patient: number;
  readonly type: 'permit' | 'deny';
  readonly criteria: readonly Criterion[];
  readonly active: boolean;
}
interface GenResource {
  readonly patient: number;
  readonly type: 'Observation' | 'Condition';
  readonly code: string;
  readonly label?: string;
  readonly category: 'laboratory' | 'vital-signs';
}

const ORGS = ['org-a', 'org-b'];
const CODES = ['c1', 'c2', 'c3'];
const LABELS = ['PSY', 'HIV', 'ETH'];
const arbCriterion: fc.Arbitrary<Criterion> = fc.oneof(
  fc.constantFrom(...ORGS).map((org) => ({ kind: 'actor' as const, org })),
  fc.constantFrom('Observation', 'Condition').map((type) => ({ kind: 'class' as const, type })),
  fc.constantFrom(...CODES).map((code) => ({ kind: 'code' as const, code })),
  fc.constantFrom(...LABELS).map((code) => ({ kind: 'label' as const, code })),
);
const arbConsent: fc.Arbitrary<GenConsent> = fc.record({
  patient: fc.integer({ min: 0, max: 2 }),
  type: fc.constantFrom<'permit' | 'deny'>('permit', 'deny', 'deny'),
  criteria: fc.array(arbCriterion, { minLength: 0, maxLength: 2 }),
  active: fc.boolean().map((b) => b || Math.random() < 0.7),
});
const arbResource: fc.Arbitrary<GenResource> = fc.record(
  {
    patient: fc.integer({ min: 0, max: 2 }),
    type: fc.constantFrom<'Observation' | 'Condition'>('Observation', 'Condition'),
    code: fc.constantFrom(...CODES),
    label: fc.constantFrom(...LABELS),
    category: fc.constantFrom<'laboratory' | 'vital-signs'>('laboratory', 'vital-signs'),
  },
  { requiredKeys: ['patient', 'type', 'code', 'category'] },
);
const arbRequester: fc.Arbitrary<Requester> = fc.record({
  org: fc.constantFrom(...ORGS),
  scope: fc.constantFrom(
    'user/*.rs',
    'user/Observation.rs',
    'user/Observation.rs user/Condition.rs',
    'user/Observation.rs?category=laboratory user/Condition.rs',
    'patient/*.rs',
  ),
  launchPatient: fc.integer({ min: 0, max: 2 }),
  breakGlass: fc.boolean(),
  consentDefault: fc.constantFrom<'permit' | 'deny'>('permit', 'deny'),
});

/** Independent oracle: may `req` see `r`? Written from the rules, not from the implementation. */
interface Requester {
  readonly org: string;
  readonly scope: string;
  readonly launchPatient: number;
  readonly breakGlass: boolean;
  readonly consentDefault: 'permit' | 'deny';
}

function oracleAllows(r: GenResource, consents: readonly GenConsent[], req: Requester): boolean {
  // Scopes.
  const scopes = req.scope.split(' ');
  const scopeOk = scopes.some((s) => {
    const [ctx, rest] = s.split('/') as [string, string];
    const [typePerm, query] = rest.split('?') as [string, string | undefined];
    const type = typePerm.split('.')[0];
    if (type !== '*' && type !== r.type) return false;
    if (ctx === 'patient' && r.patient !== req.launchPatient) return false;
    if (query === 'category=laboratory' && r.category !== 'laboratory') return false;
    return true;
  });
  if (!scopeOk) return false;
  // Consent: deny overrides permit; default when nothing applies; break-glass overrides a deny.
  const applies = (c: GenConsent): boolean =>
    c.active &&
    c.patient === r.patient &&
    c.criteria.every((k) =>
      k.kind === 'actor' ? k.org === req.org : k.kind === 'class' ? k.type === r.type : k.kind === 'code' ? k.code === r.code : k.code === r.label,
    );
  const mine = consents.filter(applies);
  let allowed: boolean;
  if (mine.some((c) => c.type === 'deny')) allowed = false;
  else if (mine.some((c) => c.type === 'permit')) allowed = true;
  else allowed = req.consentDefault === 'permit';
  return allowed || req.breakGlass;
}

describe('property: no combination of scopes and consents discloses a denied resource', () => {
  const envs: Partial<Record<'permit' | 'deny', FhirEnv>> = {};
  beforeAll(async () => {
    envs.permit = await openFhirEnv({ consentDefault: 'permit' });
    envs.deny = await openFhirEnv({ consentDefault: 'deny' });
  });
  afterAll(async () => {
    await envs.permit?.close();
    await envs.deny?.close();
  });

  let run = 0;
  it('holds for generated consents, resources, scopes and requesters (search pages, reads, count)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(arbConsent, { maxLength: 4 }), fc.array(arbResource, { minLength: 1, maxLength: 8 }), arbRequester, async (consents, resources, req) => {
        run += 1;
        const env = envs[req.consentDefault]!;
        const pid = (i: number): string => `r${run}p${i}`;
        const rid = (i: number): string => `r${run}x${String(i).padStart(2, '0')}`;
        const puts: Resource[] = [];
        for (let i = 0; i < 3; i++) puts.push(patient(pid(i)));
        consents.forEach((c, i) => {
          const provision: Record<string, unknown> = { type: c.type };
          for (const k of c.criteria) {
            if (k.kind === 'actor') provision.actor = [...((provision.actor as unknown[]) ?? []), { role: { coding: [{ code: 'IRCP' }] }, reference: { reference: `Organization/${k.org}` } }];
            if (k.kind === 'class') provision.class = [...((provision.class as unknown[]) ?? []), { system: 'http://hl7.org/fhir/resource-types', code: k.type }];
            if (k.kind === 'code') provision.code = [...((provision.code as unknown[]) ?? []), { coding: [{ system: LOINC, code: k.code }] }];
            if (k.kind === 'label') provision.securityLabel = [...((provision.securityLabel as unknown[]) ?? []), { system: V3_ACT, code: k.code }];
          }
          // Same-kind criteria in one provision are OR-ed by the engine; keep one per kind for the oracle.
          const kinds = new Set(c.criteria.map((k) => k.kind));
          if (kinds.size !== c.criteria.length) return;
          puts.push(consent(`r${run}c${i}`, pid(c.patient), provision, { status: c.active ? 'active' : 'inactive' }));
        });
        const effective = consents.filter((c) => new Set(c.criteria.map((k) => k.kind)).size === c.criteria.length);
        resources.forEach((r, i) => {
          const common = {
            id: rid(i),
            code: { coding: [{ system: LOINC, code: r.code }] },
            category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: r.category }] }],
            subject: { reference: `Patient/${pid(r.patient)}` },
            ...(r.label ? { meta: { security: [{ system: V3_ACT, code: r.label }] } } : {}),
          };
          puts.push((r.type === 'Observation' ? { resourceType: 'Observation', status: 'final', ...common } : { resourceType: 'Condition', ...common }) as Resource);
        });
        await env.db.store.resources.putVersions(puts.map((p) => ({ resourceType: p.resourceType, id: p.id!, resource: p })));

        const name = `prop${run}`;
        env.as(name, {
          scope: req.scope,
          clientId: `app-${req.org}`,
          actor: { references: [`Organization/${req.org}`], identifiers: [] },
          ...(req.scope.startsWith('patient/') ? { patient: pid(req.launchPatient) } : {}),
          purposeOfUse: req.breakGlass ? ['BTG'] : ['TREAT'],
          mayBreakGlass: req.breakGlass,
        });
        const allowed = new Set(resources.map((r, i) => (oracleAllows(r, effective, req) ? `${r.type}/${rid(i)}` : '')).filter((s) => s !== ''));

        for (const type of ['Observation', 'Condition'] as const) {
          const mine = resources.map((r, i) => ({ r, id: rid(i) })).filter((x) => x.r.type === type);
          const q = `/${type}?_id=${mine.map((x) => x.id).join(',') || 'none'}&_count=2`;
          const first = await env.get(q, name);
          if (first.status === 403) {
            expect(mine.some((x) => allowed.has(`${type}/${x.id}`))).toBe(false);
            continue;
          }
          const { pages } = await allPages(env, q, name);
          const got = pages.flat();
          for (const g of got) expect([g, allowed.has(g)]).toEqual([g, true]);
          expect(got.sort()).toEqual(mine.map((x) => `${type}/${x.id}`).filter((g) => allowed.has(g)).sort());
          expect(pages.slice(0, -1).every((p) => p.length === 2)).toBe(true);
          const count = await env.get(`/${type}?_id=${mine.map((x) => x.id).join(',') || 'none'}&_summary=count`, name);
          expect(count.body.total).toBe(got.length);
          // Sorted, negated and summarised searches page over the same permitted set, and no other.
          const sorted = (await allPages(env, `${q}&_sort=-_lastUpdated`, name)).pages.flat();
          expect([...sorted].sort()).toEqual([...got].sort());
          const negated = (await allPages(env, `${q}&code:not=none&_summary=true`, name)).pages.flat();
          expect([...negated].sort()).toEqual([...got].sort());
        }
        for (const [i, r] of resources.entries()) {
          const res = await env.get(`/${r.type}/${rid(i)}`, name);
          const key = `${r.type}/${rid(i)}`;
          if (res.status === 200) expect([key, allowed.has(key)]).toEqual([key, true]);
          else expect([key, res.status, allowed.has(key)]).toEqual([key, res.status === 403 ? 403 : 404, false]);
        }
        for (let p = 0; p < 3; p++) {
          for (const q of [`/Patient/${pid(p)}/$everything`, `/Patient/${pid(p)}/$everything?_type=Condition,Observation&_since=2000-01-01`]) {
            const ev = await env.get(q, name);
            if (ev.status !== 200) continue;
            for (const g of ids(ev.body)) if (/^(Observation|Condition)\//.test(g)) expect([g, allowed.has(g)]).toEqual([g, true]);
          }
        }
      }),
      { numRuns: 40 },
    );
  }, 300_000);
});
