import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { notificationDedupKey, parseNotification, parseReference } from '../../src/ingest/notification.js';
import { buildHeartbeat, buildNotificationBundle } from '../helpers/fake-ehr.js';

const fixture = (name: string): Buffer => readFileSync(new URL(`../fixtures/ingest/subscriptions/${name}`, import.meta.url));

describe('parseNotification', () => {
  it('reads the Backport IG R4 id-only example: event 1, focus Encounter, payload id-only', () => {
    const r = parseNotification(fixture('Bundle-r4-notification-id-only.json'));
    if (!r.ok) throw new Error(JSON.stringify(r.outcome));
    expect(r.notification.style).toBe('backport-r4');
    expect(r.notification.status).toMatchObject({
      subscription: 'https://example.org/fhir/Subscription/admission',
      topic: 'http://hl7.org/SubscriptionTopic/admission',
      type: 'event-notification',
      eventNumbers: [1],
      payload: 'id-only',
    });
    expect(r.notification.status!.focus).toEqual(['https://example.org/fhir/Encounter/86009987-eabe-42bf-8c02-b112b18cb616']);
  });

  it('reads the full-resource example with the resource inline', () => {
    const r = parseNotification(fixture('Bundle-r4-notification-full-resource.json'));
    if (!r.ok) throw new Error(JSON.stringify(r.outcome));
    expect(r.notification.status!.payload).toBe('full-resource');
    const resources = r.notification.entries.filter((e) => e.kind === 'resource');
    expect(resources.length).toBeGreaterThan(0);
  });

  it('reads the empty example: no entries, no focus', () => {
    const r = parseNotification(fixture('Bundle-r4-notification-empty.json'));
    if (!r.ok) throw new Error(JSON.stringify(r.outcome));
    expect(r.notification.status!.payload).toBe('empty');
    expect(r.notification.entries).toEqual([]);
  });

  it.each([
    ['handshake_bundle_example.json', 'backport-r4', 'handshake'],
    ['heartbeat_bundle_example.json', 'backport-r4', 'heartbeat'],
    ['r4b-Bundle-notification-handshake.json', 'r4b', 'handshake'],
    ['r5-Bundle-notification-handshake.json', 'r5', 'handshake'],
  ])('reads %s as %s %s', (file, style, type) => {
    const r = parseNotification(fixture(file));
    if (!r.ok) throw new Error(JSON.stringify(r.outcome));
    expect(r.notification.style).toBe(style);
    expect(r.notification.status!.type).toBe(type);
  });

  it('reads a Synthea transaction bundle: every entry a resource, urn:uuid fullUrls kept', () => {
    const body = readFileSync(new URL('../fixtures/normalize/Jani266_Reynolds644_304f9946-5db8-dc6f-e060-48b9fea3ca5d.json', import.meta.url));
    const r = parseNotification(body);
    if (!r.ok) throw new Error(JSON.stringify(r.outcome));
    expect(r.notification.style).toBe('bundle');
    expect(r.notification.bundleType).toBe('transaction');
    expect(r.notification.entries.every((e) => e.kind === 'resource' && e.fullUrl?.startsWith('urn:uuid:'))).toBe(true);
  });

  it('reads batch bundles with conditional creates', () => {
    const r = parseNotification(readFileSync(new URL('../fixtures/ingest/practitionerInformation1633536936158.subset.json', import.meta.url)));
    if (!r.ok) throw new Error(JSON.stringify(r.outcome));
    expect(r.notification.entries.some((e) => e.kind === 'resource' && e.ifNoneExist?.startsWith('identifier='))).toBe(true);
  });

  it('reads a bare resource (classic rest-hook) and a Medplum delete', () => {
    const r = parseNotification(Buffer.from(JSON.stringify({ resourceType: 'Patient', id: 'p1', meta: { versionId: '3' } })));
    if (!r.ok) throw new Error('not ok');
    expect(r.notification.style).toBe('rest-hook');
    expect(notificationDedupKey(r.notification, Buffer.from(''))).toBe('Patient/p1/_history/3');
    const d = parseNotification(Buffer.alloc(0), { deletedResource: 'Patient/p1' });
    if (!d.ok) throw new Error('not ok');
    expect(d.notification.entries).toEqual([{ kind: 'delete', index: 0, resourceType: 'Patient', id: 'p1' }]);
    expect(notificationDedupKey(d.notification, Buffer.alloc(0))).toBeUndefined();
  });

  it('reads an empty body as a ping (no payload), or as the resource a PUT URL names; neither has a dedup key', () => {
    const p = parseNotification(Buffer.alloc(0));
    if (!p.ok) throw new Error('not ok');
    expect(p.notification).toEqual({ style: 'ping', entries: [] });
    expect(notificationDedupKey(p.notification, Buffer.alloc(0))).toBeUndefined();
    const put = parseNotification(Buffer.from(' \n'), { path: { resourceType: 'Encounter', id: 'e1' } });
    if (!put.ok) throw new Error('not ok');
    expect(put.notification).toEqual({ style: 'rest-hook', entries: [{ kind: 'fetch', index: 0, reference: 'Encounter/e1' }] });
    expect(notificationDedupKey(put.notification, Buffer.from(' \n'))).toBeUndefined();
  });

  it('tells a sender of FHIR XML to send JSON', () => {
    const r = parseNotification(Buffer.from('\uFEFF  <Bundle xmlns="http://hl7.org/fhir"/>'));
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.outcome.issue[0]?.details?.text).toContain('application/fhir+json');
  });

  it('strips a UTF-8 BOM', () => {
    const r = parseNotification(Buffer.from('\uFEFF{"resourceType":"Patient","id":"x"}', 'utf8'));
    expect(r.ok).toBe(true);
  });

  it.each([
    ['{not json', 'unparseable'],
    ['<Patient xmlns="http://hl7.org/fhir"><id value="x"/></Patient>', 'unparseable'],
    ['[1,2]', 'not-fhir'],
    ['"text"', 'not-fhir'],
    ['{"resourceType": 7}', 'not-fhir'],
    ['{"resourceType":"patient","id":"x"}', 'not-fhir'],
    ['{"resourceType":"Patient","id":"../../etc/passwd"}', 'invalid-structure'],
    ['{"resourceType":"Patient"}', 'invalid-structure'],
    ['{"resourceType":"Bundle","type":"document","entry":[]}', 'invalid-structure'],
    ['{"resourceType":"Bundle","type":"subscription-notification","entry":[]}', 'invalid-structure'],
    ['{"resourceType":"Bundle","type":"transaction","entry":{}}', 'invalid-structure'],
    ['{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"DELETE","url":"nonsense"}}]}', 'invalid-structure'],
    ['{"resourceType":"Bundle","type":"history","entry":[{"resource":{"resourceType":"Parameters","parameter":[]}}]}', 'invalid-structure'],
    [`${'{"a":'.repeat(100)}1${'}'.repeat(100)}`, 'invalid-structure'],
  ])('rejects %p as %s with an OperationOutcome', (body, reason) => {
    const r = parseNotification(Buffer.from(body));
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.reason).toBe(reason);
      expect(r.outcome.resourceType).toBe('OperationOutcome');
      expect(r.outcome.issue[0]!.details?.text?.length).toBeGreaterThan(5);
    }
  });

  it('keeps the applicable entries of a Bundle and marks each one that cannot be applied', () => {
    const body = {
      resourceType: 'Bundle',
      type: 'batch',
      entry: [
        { resource: { resourceType: 'Observation', id: 'good' }, request: { method: 'PUT', url: 'Observation/good' } },
        'not an entry',
        { resource: 'junk', request: { method: 'PUT', url: 'Observation/junk' } },
        { request: { method: 'DELETE', url: 'nonsense' } },
        { request: { method: 'GET' } },
        { request: { method: 'DELETE', url: 'Observation/gone' } },
      ],
    };
    const r = parseNotification(Buffer.from(JSON.stringify(body)));
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.notification.entries.map((e) => [e.index, e.kind])).toEqual([
      [0, 'resource'],
      [1, 'invalid'],
      [2, 'invalid'],
      [3, 'invalid'],
      [4, 'invalid'],
      [5, 'delete'],
    ]);
    const texts = r.notification.entries.flatMap((e) => (e.kind === 'invalid' ? [e.text] : []));
    expect(texts).toEqual([
      'Bundle.entry[1] must be an object',
      'Bundle.entry[2].resource must be an object',
      'Bundle.entry[3].request.url must name the deleted resource as Type/id',
      'Bundle.entry[4] has neither a resource nor a resolvable fullUrl',
    ]);
  });

  it('marks an entry whose resource is not FHIR R4 (unknown type or element, wrong shape, unstorable text) invalid, with its issues', () => {
    const body = {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        { fullUrl: 'urn:uuid:1', resource: { resourceType: 'Patient', name: [{ family: 'Ok' }] }, request: { method: 'POST', url: 'Patient' } },
        { resource: { resourceType: 'Patient', id: 'p2', name: { family: 'Not an array' } }, request: { method: 'PUT', url: 'Patient/p2' } },
        { resource: { resourceType: 'Medication', id: 'm1', kode: {} }, request: { method: 'PUT', url: 'Medication/m1' } },
        { resource: { resourceType: 'Organization', id: 'o1', name: 'a\u0000b' }, request: { method: 'PUT', url: 'Organization/o1' } },
      ],
    };
    const r = parseNotification(Buffer.from(JSON.stringify(body)));
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.notification.entries.map((e) => [e.index, e.kind])).toEqual([
      [0, 'resource'],
      [1, 'invalid'],
      [2, 'invalid'],
      [3, 'invalid'],
    ]);
    const bad = r.notification.entries.flatMap((e) => (e.kind === 'invalid' ? [e] : []));
    expect(bad.map((e) => e.text)).toEqual([
      'Bundle.entry[1].resource is not FHIR R4: expected an array, got object (Patient.name)',
      'Bundle.entry[2].resource is not FHIR R4: unknown property "kode" for Medication (Medication.kode)',
      expect.stringMatching(/^Bundle.entry\[3\].resource is not FHIR R4: string contains U\+0000.* \(\.name\)$/),
    ]);
    expect(bad.map((e) => e.issues?.[0]?.expression)).toEqual([['Patient.name'], ['Medication.kode'], ['.name']]);
  });

  it('marks a bare resource that is not FHIR R4 invalid with the structural check\'s issues, keeping its dedup key', () => {
    const unknown = parseNotification(Buffer.from('{"resourceType":"Foo","id":"x","meta":{"versionId":"3"}}'));
    expect(unknown).toMatchObject({ ok: true, notification: { style: 'rest-hook', entries: [{ kind: 'invalid', index: 0, issues: [{ code: 'not-supported', expression: ['resourceType'] }] }] } });
    if (unknown.ok) expect(notificationDedupKey(unknown.notification, Buffer.alloc(0))).toBe('Foo/x/_history/3');
    const shape = parseNotification(Buffer.from('{"resourceType":"Observation","status":["final"]}'), { path: { resourceType: 'Observation', id: 'o9' } });
    expect(shape).toMatchObject({ ok: true, notification: { entries: [{ kind: 'invalid', text: 'The resource is not FHIR R4: expected a single value, got an array (Observation.status)' }] } });
    // The id a PUT URL supplies counts: the same body with a valid status is a resource.
    const fine = parseNotification(Buffer.from('{"resourceType":"Observation","status":"final"}'), { path: { resourceType: 'Observation', id: 'o9' } });
    expect(fine).toMatchObject({ ok: true, notification: { entries: [{ kind: 'resource', resource: { id: 'o9' } }] } });
  });

  it('accepts a Bundle whose resources are all not FHIR (each a dead letter), unlike one whose entries are not even shaped like entries', () => {
    const r = parseNotification(Buffer.from(JSON.stringify({ resourceType: 'Bundle', type: 'batch', entry: [{ resource: { resourceType: 'Foo' } }, 7] })));
    expect(r).toMatchObject({ ok: true, notification: { entries: [{ kind: 'invalid', index: 0 }, { kind: 'invalid', index: 1 }] } });
  });

  it('refuses a Bundle none of whose entries can be applied, naming each', () => {
    const r = parseNotification(Buffer.from(JSON.stringify({ resourceType: 'Bundle', type: 'batch', entry: [7, { resource: [] }] })));
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.reason).toBe('invalid-structure');
      expect(r.outcome.issue[0]!.details?.text).toBe('Bundle.entry[0] must be an object; Bundle.entry[1].resource must be an object');
    }
  });

  it('does not apply a resource with a duplicated property name (JSON.parse would keep the last value silently)', () => {
    // A bare resource: kept as a dead letter, the place named.
    const bare = parseNotification(Buffer.from('{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"},"status":"cancelled"}'));
    expect(bare).toMatchObject({ ok: true, notification: { entries: [{ kind: 'invalid', index: 0, issues: [expect.objectContaining({ code: 'structure', expression: ['Observation.status'] })] }] } });
    // In a Bundle: that entry only; one in an entry's request makes the entry unusable too.
    const ok = { resource: { resourceType: 'Patient', id: 'fine' } };
    const text = `{"resourceType":"Bundle","type":"batch","entry":[${JSON.stringify(ok)},{"resource":{"resourceType":"Patient","id":"a","gender":"male","gender":"female"}},{"request":{"method":"DELETE","url":"Patient/x","url":"Patient/y"}}]}`;
    const bundle = parseNotification(Buffer.from(text));
    expect(bundle).toMatchObject({
      ok: true,
      notification: {
        entries: [
          { kind: 'resource', index: 0 },
          { kind: 'invalid', index: 1, issues: [expect.objectContaining({ expression: ['Bundle.entry[1].resource.gender'] })] },
          { kind: 'invalid', index: 2, text: expect.stringContaining('Bundle.entry[2].request.url') },
        ],
      },
    });
    // In the Bundle itself, or in a notification's status: the whole notification is refused.
    for (const [body, where] of [
      ['{"resourceType":"Bundle","type":"batch","type":"transaction","entry":[]}', 'Bundle.type'],
      [
        JSON.stringify(buildHeartbeat('https://ehr.example/Subscription/s', 'http://t', 'https://ehr.example', 3)).replace('"name":"type"', '"name":"type","name":"type"'),
        'Bundle.entry[0].resource.parameter[3].name',
      ],
    ] as const) {
      const r = parseNotification(Buffer.from(body));
      expect(r.ok).toBe(false);
      if (!r.ok) expect(r.outcome.issue[0]).toMatchObject({ code: 'structure', expression: [where] });
    }
  });

  it('keeps the written precision of decimals (72.50 is not 72.5) with HL7\'s precision extension, where the element is certainly a decimal', () => {
    const PRECISION = 'http://hl7.org/fhir/StructureDefinition/quantity-precision';
    const precision = (n: number) => ({ extension: [{ url: PRECISION, valueInteger: n }] });
    const text =
      '{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"glucose"},' +
      '"valueQuantity":{"value":72.50,"unit":"mg/dL","system":"http://unitsofmeasure.org","code":"mg/dL"},' +
      '"referenceRange":[{"low":{"value":70.0,"unit":"mg/dL","_value":{"extension":[{"url":"' + PRECISION + '","valueInteger":3}]}},"high":{"value":99.5,"unit":"mg/dL"}}],' +
      '"component":[{"code":{"text":"ratio"},"valueDecimal":1.250},{"code":{"text":"count"},"valueInteger":5}],' +
      '"extension":[{"url":"http://example.org/x","valueDecimal":0.0}],"note":[{"text":"1.50"}]}';
    /** The first entry's resource ({} when there is none), for assertions on arbitrary shapes. */
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const first = (body: string): Record<string, any> => {
      const r = parseNotification(Buffer.from(body));
      const e = r.ok ? r.notification.entries[0] : undefined;
      return e?.kind === 'resource' ? e.resource : {};
    };
    const o = first(text);
    expect(o.resourceType).toBe('Observation');
    expect(o.valueQuantity).toEqual({ value: 72.5, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL', _value: precision(2) });
    // The sender's own precision is kept; a value written without trailing zeros gets none.
    expect(o.referenceRange[0].low._value).toEqual(precision(3));
    expect(o.referenceRange[0].high._value).toBeUndefined();
    expect(o.component[0]._valueDecimal).toEqual(precision(3));
    expect(o.component[1]._valueInteger).toBeUndefined();
    expect(o.extension[0]._valueDecimal).toEqual(precision(1));
    expect(o.note[0].text).toBe('1.50');
    // In a Bundle's entries too; nothing else in the resource changes.
    expect(first(`{"resourceType":"Bundle","type":"transaction","entry":[{"resource":${text}}]}`)).toEqual(o);
    expect(first(text.replace('72.50', '72.5')).valueQuantity._value).toBeUndefined();
  });

  it('refuses a body that is not UTF-8 instead of decoding its bytes to U+FFFD', () => {
    // "Müller" in Latin-1 (0xFC), inside otherwise valid JSON.
    const body = Buffer.concat([Buffer.from('{"resourceType":"Patient","id":"p","name":[{"family":"M'), Buffer.from([0xfc]), Buffer.from('ller"}]}')]);
    const r = parseNotification(body);
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.reason).toBe('unparseable');
      expect(r.outcome.issue[0]!.details?.text).toMatch(/not valid UTF-8/);
    }
    // The answer names the charset the sender declared, or UTF-16 when the bytes are UTF-16.
    const declared = parseNotification(body, { charset: 'ISO-8859-1' });
    expect(!declared.ok && declared.outcome.issue[0]!.details?.text).toMatch(/not valid UTF-8 \(Content-Type declares charset=ISO-8859-1\)/);
    const json = '{"resourceType":"Patient","id":"p"}';
    for (const utf16 of [Buffer.from(json, 'utf16le'), Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(json, 'utf16le')]), Buffer.from(json, 'utf16le').swap16()]) {
      const r16 = parseNotification(utf16, { charset: 'utf-16' });
      expect(!r16.ok && r16.reason).toBe('unparseable');
      expect(!r16.ok && r16.outcome.issue[0]!.details?.text).toBe('Notification body is UTF-16: FHIR JSON is always UTF-8');
    }
    // ASCII is UTF-8 too, whatever charset the header declares.
    expect(parseNotification(Buffer.from(json), { charset: 'ISO-8859-1' }).ok).toBe(true);
    // The same text in UTF-8, with or without a BOM, is accepted.
    expect(parseNotification(Buffer.from('{"resourceType":"Patient","id":"p","name":[{"family":"Müller"}]}')).ok).toBe(true);
    expect(parseNotification(Buffer.from('\uFEFF{"resourceType":"Patient","id":"p","name":[{"family":"Müller"}]}')).ok).toBe(true);
  });

  it('says so when a body is NDJSON (a hook takes one resource or a Bundle)', () => {
    const ndjson = '{"resourceType":"Patient","id":"a"}\n{"resourceType":"Patient","id":"b"}\n';
    const r = parseNotification(Buffer.from(ndjson));
    expect(!r.ok && r.outcome.issue[0]!.details?.text).toMatch(/is NDJSON .*`fhir-anchor import`/);
    const broken = parseNotification(Buffer.from('{"resourceType":"Patient",\n"id":'));
    expect(!broken.ok && broken.outcome.issue[0]!.details?.text).toBe('Notification body is not valid JSON');
  });

  it('refuses an empty body whose delete header does not name a resource, instead of taking it for a ping', () => {
    for (const header of ['Observation', 'Observation/', 'Observation/bad id', '/', 'nonsense']) {
      const r = parseNotification(Buffer.alloc(0), { deletedResource: header });
      expect(r.ok).toBe(false);
      if (!r.ok) {
        expect(r.reason).toBe('invalid-structure');
        expect(r.outcome.issue[0]!.details?.text).toContain('must name the resource as Type/id');
      }
    }
    const ok = parseNotification(Buffer.alloc(0), { deletedResource: 'Observation/o-1' });
    expect(ok.ok && ok.notification.style).toBe('delete');
    expect(parseNotification(Buffer.alloc(0)).ok && 'ping').toBe('ping');
  });

  it('keys an event notification by its numbers and what it is about: a redelivery is one, a restarted numbering is not', () => {
    const url = 'https://ehr.example/fhir/Subscription/s1';
    const topic = 'http://example.org/topics/encounter-start';
    const enc = (id: string, versionId: string) => ({ resourceType: 'Encounter', id, meta: { versionId }, status: 'in-progress', class: { code: 'AMB' } }) as never;
    const note = (n: number, focus: ReturnType<typeof enc>, bundleId: string) => {
      const b = buildNotificationBundle({ subscriptionUrl: url, topic, type: 'event-notification', eventsSinceSubscriptionStart: n, content: 'full-resource', baseUrl: 'https://ehr.example/fhir', events: [{ eventNumber: n, timestamp: '2026-01-01T00:00:00Z', focus }] });
      return Buffer.from(JSON.stringify({ ...b, id: bundleId }));
    };
    const key = (body: Buffer) => {
      const r = parseNotification(body);
      if (!r.ok) throw new Error('unparsed');
      return notificationDedupKey(r.notification, body)!;
    };
    const first = key(note(1, enc('e1', '1'), 'b-1'));
    expect(first).toMatch(/^event:https:\/\/ehr\.example\/fhir\/Subscription\/s1#1@[0-9a-f]{32}$/);
    // The EHR delivers event 1 again in a new Bundle: the same key, stored once.
    expect(key(note(1, enc('e1', '1'), 'b-1-retry'))).toBe(first);
    // The EHR's numbering restarted: a different event under number 1 is not a repeat.
    expect(key(note(1, enc('e7', '1'), 'b-2'))).not.toBe(first);
    expect(key(note(1, enc('e1', '2'), 'b-3'))).not.toBe(first);
  });

  it('refuses a Bundle PUT to a URL that names another resource', () => {
    const body = Buffer.from(JSON.stringify({ resourceType: 'Bundle', type: 'transaction', entry: [{ resource: { resourceType: 'Observation', id: 'o1' }, request: { method: 'PUT', url: 'Observation/o1' } }] }));
    const r = parseNotification(body, { path: { resourceType: 'Patient', id: 'x' } });
    expect(r.ok === false && r.outcome.issue[0]!.details?.text).toBe('Body is a Bundle but the URL names Patient/x');
    expect(parseNotification(body).ok).toBe(true);
  });

  it('rejects JSON nested deeper than the limit', () => {
    const deep = `{"resourceType":"Patient","id":"x","extension":${'['.repeat(200)}${']'.repeat(200)}}`;
    const r = parseNotification(Buffer.from(deep));
    expect(r.ok === false && r.reason).toBe('invalid-structure');
  });

  it('never throws on arbitrary bytes (property)', () => {
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 400 }), fc.json().map((j) => Buffer.from(j))), (bytes) => {
        const r = parseNotification(Buffer.from(bytes));
        expect(typeof r.ok).toBe('boolean');
      }),
      { numRuns: 500 },
    );
  });

  it('parses references in relative, absolute and versioned forms', () => {
    expect(parseReference('Patient/1')).toEqual({ resourceType: 'Patient', id: '1' });
    expect(parseReference('https://ehr/fhir/Encounter/abc-1/_history/4')).toEqual({ resourceType: 'Encounter', id: 'abc-1', versionId: '4' });
    expect(parseReference('urn:uuid:1234')).toBeUndefined();
  });
});
