/**
 * Type search against the PostgreSQL index: parameters, prefixes, paging, _include/_revinclude,
 * _summary=count, _elements, POST _search, strict/lenient handling, bad values.
 */
import { capabilityResources } from '../../src/fhir-api/search-params.js';
import { LOINC, OBS_CATEGORY, consent, denyActor, observation, openFhirEnv, patient, type FhirEnv, type Json } from './env.js';

const ids = (b: Json): string[] => (b.entry ?? []).filter((e: Json) => e.search?.mode === 'match').map((e: Json) => `${e.resource.resourceType}/${e.resource.id}`);
const included = (b: Json): string[] => (b.entry ?? []).filter((e: Json) => e.search?.mode === 'include').map((e: Json) => `${e.resource.resourceType}/${e.resource.id}`).sort();
const nextOf = (env: FhirEnv, b: Json): string | undefined => {
  const url = b.link?.find((l: Json) => l.relation === 'next')?.url as string | undefined;
  return url?.slice(env.baseUrl.length);
};

/** The matches of every page, following next links (each page must be a 200). */
async function everyPage(env: FhirEnv, first: string): Promise<string[]> {
  const out: string[] = [];
  let path: string | undefined = first;
  while (path) {
    const r = await env.get(path, 'c');
    expect(r.status).toBe(200);
    out.push(...ids(r.body));
    path = nextOf(env, r.body);
  }
  return out;
}

describe('FHIR search', () => {
  let env: FhirEnv;
  beforeAll(async () => {
    env = await openFhirEnv();
    env.as('c', { scope: 'user/*.rs' });
    env.as('org-b', { scope: 'user/*.rs', clientId: 'app-b', actor: { references: ['Organization/org-b'], identifiers: [] } });
    await env.put(patient('p1', { identifier: [{ system: 'urn:mrn', value: 'MRN-1' }] }));
    await env.put(patient('p2'));
    await env.put({ resourceType: 'Encounter', id: 'e1', status: 'finished', class: { code: 'AMB' }, subject: { reference: 'Patient/p1' }, period: { start: '2024-05-01T09:00:00Z', end: '2024-05-01T11:00:00Z' } } as never);
    await env.put(observation('a1', 'p1', { encounter: { reference: 'Encounter/e1' }, identifier: [{ system: 'urn:lab', value: 'L-1' }] }));
    await env.put(observation('a2', 'p1', { effectiveDateTime: '2023-01-15', code: { coding: [{ system: LOINC, code: '8867-4' }] }, category: [{ coding: [{ system: OBS_CATEGORY, code: 'vital-signs' }] }] }));
    await env.put(observation('a3', 'p1', { status: 'preliminary', effectiveDateTime: undefined, effectivePeriod: { start: '2022-01-01', end: '2022-12-31' } }));
    await env.put(observation('b1', 'p2'));
    for (let i = 0; i < 12; i++) await env.put(observation(`m${String(i).padStart(2, '0')}`, 'p2'));
    // p2 denies org-b.
    await env.put(consent('c-p2', 'p2', denyActor('Organization/org-b')));
  });
  afterAll(async () => env.close());

  it('returns a searchset Bundle with fullUrl and search.mode, without total', async () => {
    const r = await env.get('/Observation?patient=p1', 'c');
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toMatch(/^application\/fhir\+json/);
    expect(r.body).toMatchObject({ resourceType: 'Bundle', type: 'searchset' });
    expect(r.body.total).toBeUndefined();
    expect(ids(r.body)).toEqual(['Observation/a1', 'Observation/a2', 'Observation/a3']);
    expect(r.body.entry[0].fullUrl).toBe(`${env.baseUrl}/Observation/a1`);
  });

  it.each([
    ['patient=Patient/p1', ['a1', 'a2', 'a3']],
    ['subject=Patient/p1', ['a1', 'a2', 'a3']],
    ['subject:Patient=p1', ['a1', 'a2', 'a3']],
    [`patient=${encodeURIComponent('http://x')}`, null],
    ['_id=a1,a3', ['a1', 'a3']],
    ['patient=p1&code=8867-4', ['a2']],
    [`patient=p1&code=${encodeURIComponent(`${LOINC}|2339-0`)}`, ['a1', 'a3']],
    [`patient=p1&code=${encodeURIComponent('|2339-0')}`, []],
    [`patient=p1&code=${encodeURIComponent(`${LOINC}|`)}`, ['a1', 'a2', 'a3']],
    ['patient=p1&category=vital-signs', ['a2']],
    ['patient=p1&status=preliminary', ['a3']],
    ['patient=p1&status=final,preliminary', ['a1', 'a2', 'a3']],
    [`identifier=${encodeURIComponent('urn:lab|L-1')}`, ['a1']],
    ['encounter=Encounter/e1', ['a1']],
    ['patient=p1&date=2024', ['a1']],
    ['patient=p1&date=2024-05-01', ['a1']],
    ['patient=p1&date=lt2023-06', ['a2', 'a3']],
    ['patient=p1&date=ge2023-01-15', ['a1', 'a2']],
    ['patient=p1&date=gt2023-01-15', ['a1']],
    ['patient=p1&date=le2022-06', ['a3']],
    ['patient=p1&date=sa2022-12-31', ['a1', 'a2']],
    ['patient=p1&date=eb2023', ['a3']],
    ['patient=p1&date=ne2024', ['a2', 'a3']],
    ['patient=p1&date=2022-06-01', []],
    ['patient=p1&date=ge2022-01-01&date=lt2023', ['a3']],
    ['patient=p1&status:not=preliminary', ['a1', 'a2']],
    ['patient=p1&status:not=final,preliminary', []],
    [`patient=p1&code:not=${encodeURIComponent(`${LOINC}|8867-4`)}`, ['a1', 'a3']],
    ['patient=p1&encounter:missing=true', ['a2', 'a3']],
    ['patient=p1&encounter:missing=false', ['a1']],
    ['patient=p1&identifier:missing=false', ['a1']],
    ['patient=p1&date:missing=false', ['a1', 'a2', 'a3']],
    ['patient=p1&_lastUpdated=ge2000-01-01', ['a1', 'a2', 'a3']],
    ['patient=p1&_lastUpdated=lt2000-01-01', []],
  ])('Observation?%s', async (q, expected) => {
    const r = await env.get(`/Observation?${q}`, 'c');
    if (expected === null) {
      expect(r.status).toBe(400);
      return;
    }
    expect(r.status).toBe(200);
    expect(ids(r.body)).toEqual(expected.map((i) => `Observation/${i}`));
  });

  it('stores and searches dates that end in year 9999 (the usual "no end date")', async () => {
    // The end of "9999-12-31" is 10000-01-01, which toISOString writes "+010000-…" and PostgreSQL
    // refused: the resource could not be stored, and such a search answered 500.
    await env.put({ resourceType: 'Encounter', id: 'e-open', status: 'in-progress', class: { code: 'AMB' }, subject: { reference: 'Patient/p2' }, period: { start: '2024-01-01', end: '9999-12-31' } } as never);
    const ids = async (q: string): Promise<string[]> => {
      const r = await env.get(`/Encounter?${q}`, 'c');
      expect(r.status).toBe(200);
      return (r.body.entry ?? []).map((e: { resource: { id: string } }) => e.resource.id);
    };
    expect(await ids('patient=p2&date=ge9999-12-31')).toEqual(['e-open']);
    expect(await ids('patient=p2&date=gt2030')).toEqual(['e-open']);
    expect(await ids('patient=p2&date=gt9999-12-31T23:59:59Z')).toEqual([]);
    expect(await ids('patient=p2&_lastUpdated=lt9999-12-31')).toEqual(['e-open']);
  });

  it('searches Patient by identifier and Encounter by date', async () => {
    expect(ids((await env.get(`/Patient?identifier=${encodeURIComponent('urn:mrn|MRN-1')}`, 'c')).body)).toEqual(['Patient/p1']);
    expect(ids((await env.get('/Encounter?patient=p1&date=2024-05-01', 'c')).body)).toEqual(['Encounter/e1']);
  });

  it('pages with _count and a signed cursor; every page is full until the last', async () => {
    const seen: string[] = [];
    let path: string | undefined = '/Observation?patient=p2&_count=5';
    let pages = 0;
    while (path) {
      const r = await env.get(path, 'c');
      expect(r.status).toBe(200);
      seen.push(...ids(r.body));
      path = nextOf(env, r.body);
      if (path) expect(ids(r.body)).toHaveLength(5);
      pages += 1;
    }
    expect(pages).toBe(3);
    expect(seen).toHaveLength(13);
    expect(new Set(seen).size).toBe(13);
  });

  it('rejects tampered, truncated and transplanted cursors with 400', async () => {
    const r = await env.get('/Observation?patient=p2&_count=5', 'c');
    const next = nextOf(env, r.body)!;
    const cursor = new URL(`http://x${next}`).searchParams.get('_cursor')!;
    const forged = Buffer.from(JSON.stringify(['a'])).toString('base64url');
    const raw = Buffer.from(cursor, 'base64url');
    const flipped = Buffer.from(raw);
    flipped.writeUInt8(flipped.readUInt8(14) ^ 1, 14);
    for (const bad of [forged, cursor.slice(0, -2), 'garbage', `${cursor}.x`, flipped.toString('base64url'), raw.subarray(0, 20).toString('base64url')]) {
      expect((await env.get(`/Observation?patient=p2&_count=5&_cursor=${encodeURIComponent(bad)}`, 'c')).status).toBe(400);
    }
    // Same cursor on another query.
    expect((await env.get(`/Observation?patient=p1&_count=5&_cursor=${encodeURIComponent(cursor)}`, 'c')).status).toBe(400);
    // Same cursor by another client.
    expect((await env.get(`/Observation?patient=p2&_count=5&_cursor=${encodeURIComponent(cursor)}`, 'org-b')).status).toBe(400);
  });

  it('a cursor reveals nothing of the row it resumes after (it may be a row the client may not see)', async () => {
    const first = await env.get('/Observation?patient=p2&_count=5', 'c');
    const cursor = new URL(`http://x${nextOf(env, first.body)!}`).searchParams.get('_cursor')!;
    const lastId = ids(first.body).at(-1)!.split('/')[1]!;
    for (const enc of ['utf8', 'latin1'] as const) expect(Buffer.from(cursor, 'base64url').toString(enc)).not.toContain(lastId);
    // The same page asked twice: different cursors (random IV), both valid.
    const again = await env.get('/Observation?patient=p2&_count=5', 'c');
    const cursor2 = new URL(`http://x${nextOf(env, again.body)!}`).searchParams.get('_cursor')!;
    expect(cursor2).not.toBe(cursor);
    expect(ids((await env.get(`/Observation?patient=p2&_count=5&_cursor=${encodeURIComponent(cursor2)}`, 'c')).body)).toEqual(ids((await env.get(`/Observation?patient=p2&_count=5&_cursor=${encodeURIComponent(cursor)}`, 'c')).body));
  });

  it('_summary=count counts matches; _elements subsets and tags SUBSETTED', async () => {
    const count = await env.get('/Observation?patient=p1&_summary=count', 'c');
    expect(count.body).toMatchObject({ type: 'searchset', total: 3 });
    expect(count.body.entry).toBeUndefined();
    const el = await env.get('/Observation?_id=a1&_elements=status', 'c');
    const res = el.body.entry[0].resource;
    expect(Object.keys(res).sort()).toEqual(['id', 'meta', 'resourceType', 'status']);
    expect(res.meta.tag).toContainEqual(expect.objectContaining({ code: 'SUBSETTED' }));
  });

  it('_include and _revinclude add permitted resources with search.mode include', async () => {
    const inc = await env.get('/Observation?_id=a1&_include=Observation:patient&_include=Observation:encounter', 'c');
    expect(ids(inc.body)).toEqual(['Observation/a1']);
    expect(included(inc.body)).toEqual(['Encounter/e1', 'Patient/p1']);
    const rev = await env.get('/Patient?_id=p1&_revinclude=Observation:subject', 'c');
    expect(ids(rev.body)).toEqual(['Patient/p1']);
    expect(included(rev.body)).toEqual(['Observation/a1', 'Observation/a2', 'Observation/a3']);
    const enc = await env.get('/Encounter?_id=e1&_include=Encounter:subject', 'c');
    expect(included(enc.body)).toEqual(['Patient/p1']);
  });

  it('POST _search with a form body equals GET', async () => {
    const r = await env.get('/Observation/_search', 'c', {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: 'patient=p1&status=preliminary',
    });
    expect(r.status).toBe(200);
    expect(ids(r.body)).toEqual(['Observation/a3']);
  });

  describe('US Core string, birthdate and gender parameters', () => {
    beforeAll(async () => {
      await env.put(patient('pn1', { name: [{ family: 'Müller', given: ['José', 'Ana'], prefix: ['Dr.'], text: 'Dr. José Müller' }], gender: 'male', birthDate: '1970-03-04' }));
      await env.put(patient('pn2', { name: [{ family: 'Mullerton', given: ['Ann'] }, { family: 'Smith', use: 'old' }], gender: 'female', birthDate: '1970' }));
      await env.put(patient('pn3', { name: [{ family: '50%_off' }], gender: 'unknown', address: [{ line: ['12 Rue de la Paix'], city: 'Paris', postalCode: '75002', country: 'FR' }] }));
      await env.put({ resourceType: 'Practitioner', id: 'dr1', name: [{ family: 'Ødegård', given: ['Kari', 'Antonín'] }] } as never);
      await env.put({ resourceType: 'Organization', id: 'org1', name: 'St. Mary Hospital', alias: ['Mary General'] } as never);
      await env.put({ resourceType: 'Location', id: 'loc1', name: 'Ward 7' } as never);
    });
    const patients = async (q: string): Promise<string[] | number> => {
      const r = await env.get(`/Patient?${q}`, 'c');
      return r.status === 200 ? ids(r.body).filter((i) => i.startsWith('Patient/pn')) : r.status;
    };

    it.each([
      ['name=muller', ['pn1', 'pn2']],
      ['name=MÜLLER', ['pn1', 'pn2']],
      ['name=müller', ['pn1', 'pn2']],
      ['name=jos', ['pn1']],
      ['name=dr', ['pn1']],
      ['name=smith', ['pn2']],
      ['name=uller', []],
      ['name:contains=uller', ['pn1', 'pn2']],
      ['name:exact=Müller', ['pn1']],
      ['name:exact=müller', []],
      ['name:exact=Muller', []],
      ['family=muller', ['pn1', 'pn2']],
      ['family=jose', []],
      ['given=jose', ['pn1']],
      ['given=an', ['pn1', 'pn2']],
      ['name=muller,smith', ['pn1', 'pn2']],
      ['name=mullert', ['pn2']],
      ['name=50%25', ['pn3']],
      ['name=5_', []],
      ['name=%25', []],
      ['name=muller&gender=male', ['pn1']],
      ['name=muller&gender=http%3A%2F%2Fhl7.org%2Ffhir%2Fadministrative-gender%7Cfemale', ['pn2']],
      ['name=muller&birthdate=1970-03-04', ['pn1']],
      ['name=muller&birthdate=1970', ['pn1', 'pn2']],
      ['name=muller&birthdate=gt1970-06', ['pn2']], // 1970 (the whole year) reaches past June
      ['family=muller&birthdate=lt1970-03-05', ['pn1', 'pn2']],
      ['gender=unknown', ['pn3']],
      ['address=paris', ['pn3']],
      ['address=12%20rue', ['pn3']],
      ['address=7500', ['pn3']],
    ])('Patient?%s', async (q, expected) => {
      expect(await patients(q)).toEqual(expected.map((i) => `Patient/${i}`));
    });

    it('searches Practitioner, Organization (name and alias) and Location by name; rejects bad values', async () => {
      expect(ids((await env.get('/Practitioner?name=antonin', 'c')).body)).toEqual(['Practitioner/dr1']);
      // Ø is a letter of its own, not O with a mark (as HAPI FHIR and Unicode decomposition have it).
      expect(ids((await env.get('/Practitioner?name=odegard', 'c')).body)).toEqual([]);
      expect(ids((await env.get('/Practitioner?family=%C3%98deg', 'c')).body)).toEqual(['Practitioner/dr1']);
      expect(ids((await env.get('/Organization?name=st.%20mary', 'c')).body)).toEqual(['Organization/org1']);
      expect(ids((await env.get('/Organization?name=mary', 'c')).body)).toEqual(['Organization/org1']);
      expect(ids((await env.get('/Location?name=ward', 'c')).body)).toEqual(['Location/loc1']);
      expect(await patients('name=%CC%81')).toBe(400); // only a combining accent: nothing to search for
      expect(await patients('name:text=x')).toBe(400);
      expect(await patients('name:missing=maybe')).toBe(400);
      expect(await patients('birthdate=1970-13')).toBe(400);
      const params = capabilityResources()
        .find((r) => r.type === 'Patient')!
        .searchParam!.map((p) => `${p.name}:${p.type}`);
      expect(params).toEqual(expect.arrayContaining(['name:string', 'family:string', 'given:string', 'birthdate:date', 'gender:token']));
      const observation = capabilityResources().find((r) => r.type === 'Observation')!;
      expect(observation.searchRevInclude).toEqual(['Provenance:target']);
      expect(capabilityResources().find((r) => r.type === 'Patient')!.searchRevInclude).toEqual(expect.arrayContaining(['Observation:patient', 'Claim:patient', 'Provenance:target']));
      expect(capabilityResources().find((r) => r.type === 'Encounter')!.searchRevInclude).toEqual(expect.arrayContaining(['Observation:encounter', 'Provenance:target']));
    });

    it('stores a resource whose identifier, code or name is too long for the index (not searchable by that value)', async () => {
      const long = 'x'.repeat(3000);
      const cjk = Array.from({ length: 500 }, (_, i) => String.fromCharCode(0x4e00 + i)).join('');
      await env.put(patient('pl1', { identifier: [{ system: 'urn:long', value: long }, { system: 'urn:mrn', value: 'MRN-L1' }], name: [{ family: cjk }, { family: 'Longname' }] }));
      await env.put(observation('ol1', 'pl1', { code: { coding: [{ system: 'urn:long', code: long }, { system: LOINC, code: '2339-0' }] } }));
      expect((await env.get('/Patient/pl1', 'c')).status).toBe(200);
      expect(ids((await env.get(`/Patient?identifier=${encodeURIComponent('urn:mrn|MRN-L1')}`, 'c')).body)).toEqual(['Patient/pl1']);
      expect(ids((await env.get('/Patient?name=longname', 'c')).body)).toEqual(['Patient/pl1']);
      expect(ids((await env.get(`/Patient?name=${encodeURIComponent(cjk.slice(0, 10))}`, 'c')).body)).toEqual([]);
      expect(ids((await env.get('/Observation?patient=pl1&code=2339-0', 'c')).body)).toEqual(['Observation/ol1']);
    });

    it('a name search discloses only what consent permits', async () => {
      await env.put(patient('pn4', { name: [{ family: 'Hidden' }] }));
      await env.put(consent('c-pn4', 'pn4', denyActor('Organization/org-b')));
      expect(ids((await env.get('/Patient?name=hidden', 'c')).body)).toEqual(['Patient/pn4']);
      const r = await env.get('/Patient?name=hidden', 'org-b');
      expect(r.status).toBe(200);
      expect(ids(r.body)).toEqual([]);
    });

    it('fills in the new parameters for resources stored before them (search_reindex_pending, once)', async () => {
      // As if pn1 had been stored before the migration that added the string parameters.
      // This schema was migrated empty; the rows still pending (types stored since) re-index harmlessly.
      expect((await env.db.store.search.reindexPending()).types).toEqual(expect.arrayContaining(['Patient', 'Practitioner']));
      expect(await env.db.store.search.reindexPending()).toEqual({ types: [], resources: 0 });
      await env.sql(`DELETE FROM search_token WHERE resource_type = 'Patient' AND id = 'pn1' AND param IN ('name', 'family', 'given')`);
      expect(await patients('name=jos')).toEqual([]);
      await env.sql(`INSERT INTO search_reindex_pending (resource_type) VALUES ('Patient')`);
      // Stopped (the service shutting down): the type stays pending.
      expect(await env.db.store.search.reindexPending({ signal: AbortSignal.abort() })).toEqual({ types: [], resources: 0 });
      expect(await patients('name=jos')).toEqual([]);
      expect(await env.db.store.search.reindexPending()).toMatchObject({ types: ['Patient'] });
      expect(await patients('name=jos')).toEqual(['Patient/pn1']);
      expect(await env.db.store.search.reindexPending()).toEqual({ types: [], resources: 0 });
    });
  });

  describe('US Core token parameters and the rest of the patient compartment', () => {
    const SNOMED = 'http://snomed.info/sct';
    beforeAll(async () => {
      const subject = { reference: 'Patient/p9' };
      await env.put(patient('p9'));
      await env.put({ resourceType: 'MedicationRequest', id: 'mr1', status: 'active', intent: 'order', medicationCodeableConcept: { text: 'x' }, subject } as never);
      await env.put({ resourceType: 'MedicationRequest', id: 'mr2', status: 'active', intent: 'plan', medicationCodeableConcept: { text: 'x' }, subject } as never);
      await env.put({ resourceType: 'DocumentReference', id: 'dr9', status: 'current', type: { coding: [{ system: LOINC, code: '34117-2' }] }, subject, content: [{ attachment: { url: 'x' } }], context: { period: { start: '2024-04-01', end: '2024-04-03' } } } as never);
      await env.put({ resourceType: 'Encounter', id: 'e9', status: 'finished', class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'EMER' }, type: [{ coding: [{ system: SNOMED, code: '50849002' }] }], subject } as never);
      const clinical = (code: string) => ({ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code }] });
      await env.put({ resourceType: 'Condition', id: 'cd1', clinicalStatus: clinical('active'), code: { text: 'x' }, subject } as never);
      await env.put({ resourceType: 'Condition', id: 'cd2', clinicalStatus: clinical('resolved'), code: { text: 'x' }, subject } as never);
      await env.put({ resourceType: 'Goal', id: 'g9', lifecycleStatus: 'active', description: { text: 'x' }, subject, target: [{ dueDate: '2025-06-30' }, { dueDate: '2026-01-15' }] } as never);
      await env.put({ resourceType: 'CareTeam', id: 'ct9', status: 'active', subject, participant: [{ role: [{ coding: [{ system: SNOMED, code: '116154003' }] }] }] } as never);
      await env.put({ resourceType: 'Device', id: 'dv9', status: 'active', type: { coding: [{ system: SNOMED, code: '14106009' }] }, patient: subject } as never);
      await env.put({ resourceType: 'Claim', id: 'cl9', status: 'active', patient: subject } as never);
      await env.put({ resourceType: 'ExplanationOfBenefit', id: 'eob9', status: 'active', patient: subject } as never);
      await env.put({ resourceType: 'Condition', id: 'cd3', code: { text: 'x' }, onsetDateTime: '2019-05-01', abatementPeriod: { start: '2020-01-01', end: '2020-02-01' }, recordedDate: '2019-05-02', subject } as never);
      await env.put({ resourceType: 'Medication', id: 'med9', code: { coding: [{ system: 'http://www.nlm.nih.gov/research/umls/rxnorm', code: '197361' }] } } as never);
      await env.put({ resourceType: 'MedicationRequest', id: 'mr4', status: 'draft', intent: 'order', medicationReference: { reference: 'Medication/med9' }, subject } as never);
      await env.put({ resourceType: 'MedicationRequest', id: 'mr3', status: 'stopped', intent: 'order', authoredOn: '2018-03-03T10:00:00Z', medicationCodeableConcept: { text: 'x' }, subject } as never);
      await env.put({ resourceType: 'ServiceRequest', id: 'sr9', status: 'active', intent: 'order', category: [{ coding: [{ system: SNOMED, code: '108252007' }] }], code: { coding: [{ system: LOINC, code: '24323-8' }] }, authoredOn: '2024-02-02', subject } as never);
      await env.put({ resourceType: 'PractitionerRole', id: 'pr9', practitioner: { reference: 'Practitioner/dr1' }, organization: { reference: 'Organization/org1' }, specialty: [{ coding: [{ system: 'http://nucc.org/provider-taxonomy', code: '208D00000X' }] }] } as never);
      await env.put({ resourceType: 'Organization', id: 'org9', name: 'Clinic', address: [{ line: ['1 Main St'], city: 'Boston', state: 'MA', postalCode: '02110' }] } as never);
      await env.put({ resourceType: 'Provenance', id: 'pv9', target: [{ reference: 'Claim/cl9' }, subject], recorded: '2024-01-01T00:00:00Z', agent: [{ who: { reference: 'Organization/o' } }] } as never);
      // US Core SHOULD / MAY parameters and includes (migration 013).
      await env.put({ resourceType: 'Location', id: 'loc9', name: 'Ward 9', address: { line: ['1 Oak St'], city: 'Springfield', state: 'IL', postalCode: '62701' } } as never);
      await env.put(patient('pdead', { name: [{ family: 'Zed' }], deceasedDateTime: '2023-04-05' }));
      await env.put({ resourceType: 'Condition', id: 'cd-asserted', code: { text: 'x' }, subject, extension: [{ url: 'http://hl7.org/fhir/StructureDefinition/condition-assertedDate', valueDateTime: '2021-02-03' }] } as never);
      await env.put({ resourceType: 'Encounter', id: 'e9b', status: 'finished', class: { code: 'IMP' }, subject, location: [{ location: { reference: 'Location/loc9' } }], hospitalization: { dischargeDisposition: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/discharge-disposition', code: 'home' }] } } } as never);
      await env.put({ resourceType: 'Goal', id: 'g10', lifecycleStatus: 'proposed', description: { coding: [{ system: SNOMED, code: '281004' }] }, subject } as never);
      await env.put({ resourceType: 'Practitioner', id: 'dr10', name: [{ family: 'Tenn' }] } as never);
      await env.put({ resourceType: 'Endpoint', id: 'ep10', status: 'active', name: 'Direct', connectionType: { code: 'direct-project' }, payloadType: [{ text: 'any' }], address: 'mailto:dr10@direct.example' } as never);
      await env.put({ resourceType: 'CareTeam', id: 'ct10', status: 'active', subject, participant: [{ member: { reference: 'Practitioner/dr10' } }, { member: subject }] } as never);
      await env.put({ resourceType: 'PractitionerRole', id: 'pr10', practitioner: { reference: 'Practitioner/dr10' }, endpoint: [{ reference: 'Endpoint/ep10' }] } as never);
      await env.put({ resourceType: 'MedicationDispense', id: 'md9', status: 'completed', type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'FF' }] }, medicationReference: { reference: 'Medication/med9' }, subject } as never);
      await env.put({ resourceType: 'QuestionnaireResponse', id: 'qr9', status: 'completed', authored: '2024-03-03T09:00:00Z', subject } as never);
      await env.put({ resourceType: 'RelatedPerson', id: 'rp9', patient: subject, name: [{ family: 'Kinsman', given: ['Ada'] }] } as never);
    });
    it.each([
      ['MedicationRequest?patient=p9&intent=order&status=active', ['MedicationRequest/mr1']],
      ['MedicationRequest?patient=p9&intent=order,plan&status=active', ['MedicationRequest/mr1', 'MedicationRequest/mr2']],
      [`DocumentReference?patient=p9&type=${encodeURIComponent(`${LOINC}|34117-2`)}`, ['DocumentReference/dr9']],
      ['Encounter?patient=p9&class=EMER', ['Encounter/e9']],
      ['Encounter?patient=p9&type=50849002', ['Encounter/e9']],
      ['Encounter?patient=p9&class=AMB', []],
      ['Condition?patient=p9&clinical-status=active', ['Condition/cd1']],
      ['Goal?patient=p9&lifecycle-status=active', ['Goal/g9']],
      ['Goal?patient=p9&target-date=2026-01', ['Goal/g9']],
      ['Goal?patient=p9&target-date=2025-12', []],
      ['CareTeam?patient=p9&role=116154003', ['CareTeam/ct9']],
      ['DocumentReference?patient=p9&type=34117-2&period=2024-04', ['DocumentReference/dr9']],
      ['DocumentReference?patient=p9&period=ge2024-05', []],
      ['Device?patient=p9&type=14106009', ['Device/dv9']],
      ['Claim?patient=p9', ['Claim/cl9']],
      ['ExplanationOfBenefit?patient=Patient/p9', ['ExplanationOfBenefit/eob9']],
      ['Provenance?patient=p9', ['Provenance/pv9']],
      ['Condition?patient=p9&onset-date=2019', ['Condition/cd3']],
      ['Condition?patient=p9&abatement-date=ge2020-01-15', ['Condition/cd3']],
      ['Condition?patient=p9&recorded-date=2019-05-02', ['Condition/cd3']],
      ['Condition?patient=p9&onset-date=2020', []],
      ['MedicationRequest?patient=p9&intent=order&authoredon=lt2019', ['MedicationRequest/mr3']],
      ['ServiceRequest?patient=p9&category=108252007&code=24323-8&authored=2024-02', ['ServiceRequest/sr9']],
      ['PractitionerRole?practitioner=Practitioner/dr1&specialty=208D00000X', ['PractitionerRole/pr9']],
      ['PractitionerRole?organization=org1', ['PractitionerRole/pr9']],
      ['Organization?address=bost', ['Organization/org9']],
      ['Organization?address=02110', ['Organization/org9']],
      ['Organization?address:exact=MA', ['Organization/org9']],
      ['Location?address-city=spring', ['Location/loc9']],
      ['Location?address-state=IL', ['Location/loc9']],
      ['Location?address-postalcode=627', ['Location/loc9']],
      ['Location?address-city=IL', []],
      ['Patient?death-date=2023', ['Patient/pdead']],
      ['Patient?family=zed&death-date=2023-04', ['Patient/pdead']],
      ['Condition?patient=p9&asserted-date=2021', ['Condition/cd-asserted']],
      ['Encounter?patient=p9&location=Location/loc9', ['Encounter/e9b']],
      ['Encounter?patient=p9&discharge-disposition=home', ['Encounter/e9b']],
      ['Goal?patient=p9&description=281004', ['Goal/g10']],
      ['MedicationDispense?patient=p9&status=completed&type=FF', ['MedicationDispense/md9']],
      ['MedicationDispense?patient=p9&status=stopped', []],
      ['QuestionnaireResponse?patient=p9&status=completed&authored=2024-03', ['QuestionnaireResponse/qr9']],
      ['RelatedPerson?patient=p9&name=kins', ['RelatedPerson/rp9']],
      ['RelatedPerson?_id=rp9', ['RelatedPerson/rp9']],
      ['Medication?code=197361', ['Medication/med9']],
      ['Endpoint?status=active&name=dir', ['Endpoint/ep10']],
    ])('%s', async (q, expected) => {
      const r = await env.get(`/${q}`, 'c');
      expect(r.status).toBe(200);
      expect(ids(r.body)).toEqual(expected);
    });

    it('_include=MedicationRequest:medication (US Core SHALL) adds the Medication', async () => {
      const r = await env.get('/MedicationRequest?patient=p9&intent=order&status=draft&_include=MedicationRequest:medication', 'c');
      expect(r.status).toBe(200);
      expect(ids(r.body)).toEqual(['MedicationRequest/mr4']);
      expect(included(r.body)).toEqual(['Medication/med9']);
    });

    it('US Core SHOULD includes: CareTeam:participant:{Type}, PractitionerRole:endpoint, MedicationDispense:medication', async () => {
      const ct = await env.get('/CareTeam?patient=p9&status=active&_include=CareTeam:participant:Practitioner', 'c');
      expect(ct.status).toBe(200);
      expect(included(ct.body)).toEqual(['Practitioner/dr10']);
      expect(included((await env.get('/CareTeam?_id=ct10&_include=CareTeam:participant:Patient', 'c')).body)).toEqual(['Patient/p9']);
      expect(included((await env.get('/PractitionerRole?practitioner=dr10&_include=PractitionerRole:endpoint', 'c')).body)).toEqual(['Endpoint/ep10']);
      expect(included((await env.get('/MedicationDispense?patient=p9&_include=MedicationDispense:medication', 'c')).body)).toEqual(['Medication/med9']);
      const cap = capabilityResources();
      for (const t of ['Medication', 'Endpoint', 'HealthcareService', 'Questionnaire', 'ValueSet']) expect(cap.find((r) => r.type === t)?.interaction?.map((i) => i.code)).toContain('read');
      expect(cap.find((r) => r.type === 'CareTeam')!.searchInclude).toContain('CareTeam:participant');
      expect(cap.find((r) => r.type === 'Endpoint')!.searchRevInclude).toContain('PractitionerRole:endpoint');
    });

    it('_revinclude=Provenance:target (US Core SHALL) adds the Provenance of each match', async () => {
      const r = await env.get('/Claim?patient=p9&_revinclude=Provenance:target', 'c');
      expect(r.status).toBe(200);
      expect(ids(r.body)).toEqual(['Claim/cl9']);
      expect(included(r.body)).toEqual(['Provenance/pv9']);
      expect(ids((await env.get('/Provenance?target=Claim/cl9', 'c')).body)).toEqual(['Provenance/pv9']);
    });

    it('the prefix indexes of the migrations (012, 013) cover exactly the string parameters', async () => {
      const { readFileSync, readdirSync } = await import('node:fs');
      const dir = new URL('../../src/store/migrations/', import.meta.url);
      const sql = readdirSync(dir).map((f) => readFileSync(new URL(f, dir), 'utf8')).join('\n');
      const indexed = [...sql.matchAll(/text_pattern_ops\)\s+WHERE param IN \(([^)]*)\)/g)].flatMap((m) => m[1]!.match(/'[^']+'/g)!.map((q) => q.slice(1, -1))).sort();
      const strings = [...new Set(capabilityResources().flatMap((r) => (r.searchParam ?? []).filter((p) => p.type === 'string').map((p) => p.name)))].sort();
      expect(indexed).toEqual(strings);
    });

    it('$everything with _type and _since (paged, the parameters kept in the next link)', async () => {
      const all = (q: string): Promise<string[]> => everyPage(env, `/Patient/p9/$everything?${q}`);
      expect(await all('_type=Claim,Device&_count=1')).toEqual(['Claim/cl9', 'Device/dv9']);
      expect(await all('_type=Device&_type=Patient')).toEqual(['Patient/p9', 'Device/dv9']);
      expect(await all('_type=Patient')).toEqual(['Patient/p9']);
      expect(await all('_type=Basic')).toEqual([]);
      // R4: with the resources the page's matches reference (outside any compartment), as include entries.
      const withRefs = await env.get('/Patient/p9/$everything?_type=MedicationRequest', 'c');
      expect(included(withRefs.body)).toEqual(['Medication/med9']);
      env.as('no-meds', { scope: 'user/Patient.rs user/MedicationRequest.rs' });
      expect(included((await env.get('/Patient/p9/$everything?_type=MedicationRequest', 'no-meds')).body)).toEqual([]); // no Medication scope
      expect(await all(`_since=${encodeURIComponent('2027-01-01T00:00:00Z')}`)).toEqual([]);
      expect((await all('_since=2020-01-01&_count=3')).length).toBeGreaterThan(15);
      // _type narrows what the scopes allow, never widens it.
      env.as('pt-claims', { scope: 'user/Patient.rs user/MedicationRequest.rs' });
      const narrow = await env.get('/Patient/p9/$everything?_type=Claim,MedicationRequest', 'pt-claims');
      expect(ids(narrow.body).every((i) => i.startsWith('MedicationRequest/'))).toBe(true);
      expect(ids(narrow.body).length).toBeGreaterThan(0);
      for (const q of ['_type=not-a-type', '_since=yesterday', '_since=2020&_since=2021', 'start=2020-13', 'start=2020&start=2021', 'start=2021&end=2020', 'end=soon']) {
        expect((await env.get(`/Patient/p9/$everything?${q}`, 'c')).status).toBe(400);
      }
    });

    it('$everything with start / end keeps what overlaps those care dates, the undated, and the Patient (paged, kept in the next link)', async () => {
      const subject = { reference: 'Patient/p10' };
      await env.put(patient('p10'));
      await env.put(observation('cd-o2019', 'p10', { effectiveDateTime: '2019-03-01T10:00:00Z' }));
      await env.put(observation('cd-o2024', 'p10', { effectiveDateTime: '2024-05-01T10:00:00Z' }));
      await env.put({ resourceType: 'Encounter', id: 'cd-e', status: 'finished', class: { code: 'AMB' }, period: { start: '2023-12-20', end: '2024-01-05' }, subject } as never);
      await env.put({ resourceType: 'Claim', id: 'cd-cl', status: 'active', billablePeriod: { start: '2022-06-01', end: '2022-06-02' }, patient: subject } as never);
      await env.put({ resourceType: 'MedicationRequest', id: 'cd-mr', status: 'active', intent: 'order', authoredOn: '2024-02-01', medicationCodeableConcept: { text: 'x' }, subject } as never);
      await env.put({ resourceType: 'AllergyIntolerance', id: 'cd-al', patient: subject, code: { text: 'peanut' } } as never);
      const all = (q: string): Promise<string[]> => everyPage(env, `/Patient/p10/$everything?${q}`);
      const undated = ['AllergyIntolerance/cd-al'];
      expect((await all('start=2024&_count=1')).sort()).toEqual(['Encounter/cd-e', 'MedicationRequest/cd-mr', 'Observation/cd-o2024', 'Patient/p10', ...undated].sort());
      expect((await all('end=2019')).sort()).toEqual(['Observation/cd-o2019', 'Patient/p10', ...undated].sort());
      expect((await all('start=2022&end=2022')).sort()).toEqual(['Claim/cd-cl', 'Patient/p10', ...undated].sort());
      // `end` covers its whole day; the Encounter overlaps a range that starts inside it.
      expect((await all('start=2024-01-05&end=2024-01-05')).sort()).toEqual(['Encounter/cd-e', 'Patient/p10', ...undated].sort());
      expect((await all('start=2024-02-01T00:00:00Z&end=2024-02-01&_type=MedicationRequest'))).toEqual(['MedicationRequest/cd-mr']);
      // A next link carries start and end.
      const first = await env.get('/Patient/p10/$everything?start=2024&_count=1', 'c');
      expect(first.body.link.find((l: Json) => l.relation === 'next').url).toMatch(/[?&]start=2024(&|$)/);
    });

    it('$everything includes claims, devices and provenance', async () => {
      const r = await env.get('/Patient/p9/$everything?_count=50', 'c');
      expect(r.status).toBe(200);
      expect(ids(r.body)).toEqual(
        expect.arrayContaining(['Patient/p9', 'Claim/cl9', 'ExplanationOfBenefit/eob9', 'Device/dv9', 'Provenance/pv9', 'MedicationRequest/mr1', 'Condition/cd2']),
      );
    });
  });

  describe('_sort', () => {
    beforeAll(async () => {
      // Stored in the order s3, s1, s5, s2, s4, a second apart.
      const put = async (r: Parameters<FhirEnv['put']>[0]): Promise<void> => {
        env.clock.advance(1000);
        await env.put(r);
      };
      await put(observation('s3', 'ps', { effectiveDateTime: '2021-06-01' })); // ties with s1 by date: id decides
      await put(observation('s1', 'ps', { effectiveDateTime: '2021-06-01' }));
      await put(observation('s5', 'ps', { effectiveDateTime: '2023-03-03T10:00:00+02:00' }));
      await put(observation('s2', 'ps', { effectiveDateTime: undefined, effectivePeriod: { start: '2020-01-01', end: '2022-01-01' } }));
      await put(observation('s4', 'ps', { effectiveDateTime: undefined })); // no date: last either way
    });
    const all = async (q: string): Promise<string[]> => (await everyPage(env, `/Observation?${q}`)).map((i) => i.slice('Observation/'.length));

    it.each([
      ['patient=ps&_sort=date', ['s2', 's1', 's3', 's5', 's4']],
      ['patient=ps&_sort=-date', ['s5', 's2', 's3', 's1', 's4']],
      ['patient=ps&_sort=date&_count=1', ['s2', 's1', 's3', 's5', 's4']],
      ['patient=ps&_sort=-date&_count=2', ['s5', 's2', 's3', 's1', 's4']],
      ['patient=ps&_sort=-date,_id&date=ge2021', ['s5', 's2', 's3', 's1']],
      ['patient=ps&_sort=_lastUpdated&_count=2', ['s3', 's1', 's5', 's2', 's4']],
      ['patient=ps&_sort=-_lastUpdated&_count=1', ['s4', 's2', 's5', 's1', 's3']],
    ])('Observation?%s (every page, in order)', async (q, expected) => {
      expect(await all(q)).toEqual(expected);
    });

    it('refuses what it cannot sort by, or ignores it under handling=lenient', async () => {
      for (const q of ['_sort=code', '_sort=date,code', '_sort=date&_sort=-date']) expect((await env.get(`/Observation?patient=ps&${q}`, 'c')).status).toBe(400);
      expect((await env.get('/Condition?_sort=date', 'c')).status).toBe(400); // Condition has no date parameter here
      const lenient = await env.get('/Observation?patient=ps&_sort=code', 'c', { headers: { prefer: 'handling=lenient' } });
      expect(lenient.status).toBe(200);
      expect(ids(lenient.body)).toHaveLength(5);
    });
  });

  it('unknown parameters: 400 by default, ignored with a warning under Prefer: handling=lenient', async () => {
    const strict = await env.get('/Observation?patient=p1&foo=bar', 'c');
    expect(strict.status).toBe(400);
    expect(strict.body.resourceType).toBe('OperationOutcome');
    const lenient = await env.get('/Observation?patient=p1&foo=bar', 'c', { headers: { prefer: 'handling=lenient' } });
    expect(lenient.status).toBe(200);
    expect(ids(lenient.body)).toHaveLength(3);
    expect(lenient.body.entry.at(-1)).toMatchObject({ search: { mode: 'outcome' }, resource: { resourceType: 'OperationOutcome' } });
  });

  it.each([
    '_id=..%2F..%2Fetc%2Fpasswd',
    'date=2024-13-01',
    'date=2023-02-29',
    'date=0000-01-01',
    'date=99999-01-01',
    'date=zz2024',
    'date=2024-01-01T25:00:00Z',
    '_count=-1',
    '_count=abc',
    '_summary=text',
    '_summary=true&_elements=status',
    'subject.name.family=x',
    'code:text=glucose',
    '_include=*',
    '_include=Patient:link',
    '_include:iterate=Observation:patient',
    '_sort=status',
    'patient=Patient/p1/extra',
    'patient=%E0%A4%A',
  ])('bad value %s → 400 OperationOutcome', async (q) => {
    const r = await env.get(`/Observation?${q}`, 'c');
    expect(r.status).toBe(400);
    expect(r.body.resourceType).toBe('OperationOutcome');
  });

  it('_summary=true keeps the summary elements, _summary=data all but the narrative; both tag SUBSETTED', async () => {
    await env.put(patient('psum', { text: { status: 'generated', div: '<div xmlns="http://www.w3.org/1999/xhtml">x</div>' }, birthDate: '1980-01-01', _birthDate: { extension: [{ url: 'urn:x', valueString: 'y' }] }, gender: 'female', maritalStatus: { text: 'M' }, photo: [{ contentType: 'image/png', data: 'AA==' }], contact: [{ name: { family: 'C' } }] }));
    const get = async (q: string): Promise<Json> => {
      const r = await env.get(`/Patient?_id=psum&${q}`, 'c');
      expect(r.status).toBe(200);
      return r.body.entry[0].resource;
    };
    const summary = await get('_summary=true');
    expect(Object.keys(summary).sort()).toEqual(['_birthDate', 'birthDate', 'gender', 'id', 'meta', 'name', 'resourceType']);
    expect(summary.meta.tag).toEqual(expect.arrayContaining([expect.objectContaining({ code: 'SUBSETTED' })]));
    const data = await get('_summary=data');
    expect(data.text).toBeUndefined();
    expect(data.photo).toHaveLength(1);
    expect(data.contact).toHaveLength(1);
    expect(data.meta.tag).toEqual(expect.arrayContaining([expect.objectContaining({ code: 'SUBSETTED' })]));
    expect((await get('_summary=false')).text).toBeDefined();
  });

  it('says what it does not offer: writes to read-only types 405 with Allow, type history and unknown operations 400 not-supported', async () => {
    const call = async (method: string, path: string, body?: string) => {
      const res = await fetch(`${env.base}/fhir/R4${path}`, { method, headers: { 'x-test-as': 'c', 'content-type': 'application/fhir+json' }, ...(body ? { body } : {}) });
      return { status: res.status, allow: res.headers.get('allow'), body: (await res.json()) as Json };
    };
    for (const [method, path] of [['POST', '/Observation'], ['PUT', '/Observation/a1'], ['DELETE', '/Observation/a1'], ['PATCH', '/Patient/p1']] as const) {
      const r = await call(method, path, '{}');
      expect(r.status).toBe(405);
      expect(r.allow).toBe('GET, HEAD');
      expect(r.body.issue[0].code).toBe('not-supported');
    }
    const consent = await call('PATCH', '/Consent/c-p2', '[]');
    expect([consent.status, consent.allow]).toEqual([405, 'GET, HEAD, PUT, DELETE']);
    expect((await call('GET', '/Observation/_history')).body.issue[0]).toMatchObject({ code: 'not-supported', details: { text: expect.stringContaining('Type-level history') } });
    expect((await call('GET', '/Observation/$validate')).body.issue[0]).toMatchObject({ code: 'not-supported', details: { text: expect.stringContaining('$validate') } });
    expect((await call('POST', '/', '{"resourceType":"Bundle","type":"transaction"}')).status).toBe(400);
    // Still untouched: reads, and the Observation still there.
    expect((await env.get('/Observation/a1', 'c')).status).toBe(200);
  });

  it('_total is a hint: accurate or estimate is answered without a total and says so; other values 400', async () => {
    const r = await env.get('/Observation?patient=p1&_total=accurate', 'c');
    expect(r.status).toBe(200);
    expect(r.body.total).toBeUndefined();
    expect(ids(r.body)).toHaveLength(3);
    expect(JSON.stringify(r.body.entry.at(-1))).toContain('_total=accurate ignored');
    expect((await env.get('/Observation?patient=p1&_total=none', 'c')).body.entry.every((e: Json) => e.search.mode === 'match')).toBe(true);
    expect((await env.get('/Observation?patient=p1&_total=all', 'c')).status).toBe(400);
  });

  it('caps _count and treats _count=0 as an empty page', async () => {
    const r = await env.get('/Observation?_count=0', 'c');
    expect(r.status).toBe(200);
    expect(r.body.entry).toBeUndefined();
    expect(nextOf(env, r.body)).toBeUndefined();
    expect((await env.get('/Observation?_count=999999', 'c')).status).toBe(200);
  });

  it('keeps the index in step with writes: updates and deletes', async () => {
    await env.put(observation('x1', 'p1', { status: 'registered' }));
    expect(ids((await env.get('/Observation?status=registered', 'c')).body)).toEqual(['Observation/x1']);
    await env.put(observation('x1', 'p1', { status: 'cancelled' }));
    expect(ids((await env.get('/Observation?status=registered', 'c')).body)).toEqual([]);
    await env.put(observation('x1', 'p1'), { deleted: true });
    expect(ids((await env.get('/Observation?status=cancelled', 'c')).body)).toEqual([]);
    expect(await env.db.store.search.reindex(7)).toBeGreaterThan(10);
    expect(ids((await env.get('/Observation?patient=p1', 'c')).body)).toEqual(['Observation/a1', 'Observation/a2', 'Observation/a3']);
  });

  it('$everything returns the patient and its compartment, paged', async () => {
    const r = await env.get('/Patient/p1/$everything?_count=2', 'c');
    expect(r.status).toBe(200);
    const first = ids(r.body);
    expect(first).toEqual(['Patient/p1', 'Encounter/e1']);
    const r2 = await env.get(nextOf(env, r.body)!, 'c');
    const r3 = await env.get(nextOf(env, r2.body)!, 'c');
    expect([...first, ...ids(r2.body), ...ids(r3.body)]).toEqual(['Patient/p1', 'Encounter/e1', 'Observation/a1', 'Observation/a2', 'Observation/a3']);
    expect(nextOf(env, r3.body)).toBeUndefined();
  });
});
