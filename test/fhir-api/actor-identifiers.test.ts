/**
 * resolveActorIdentifiers: a requester known by identifier takes the identity of the one local
 * Organization / Practitioner / PractitionerRole that carries it, never of several.
 */
import { resolveActorIdentifiers } from '../../src/fhir-api/access.js';

const directory: Record<string, Array<{ system: string; value: string; id: string }>> = {
  Organization: [
    { system: 'urn:oid:1', value: 'unique', id: 'org-1' },
    { system: 'urn:oid:1', value: 'shared', id: 'org-2' },
    { system: 'urn:oid:1', value: 'shared', id: 'org-3' },
  ],
  Practitioner: [{ system: 'http://hl7.org/fhir/sid/us-npi', value: '1234567893', id: 'dr-1' }],
};
const store = {
  resources: {
    findByIdentifier: async (type: string, system: string, value: string, limit = 10) =>
      (directory[type] ?? []).filter((e) => e.system === system && e.value === value).slice(0, limit),
  },
};

describe('resolveActorIdentifiers', () => {
  it('resolves an identifier one resource carries, across the actor types', async () => {
    expect(await resolveActorIdentifiers(store, [{ system: 'urn:oid:1', value: 'unique' }, { system: 'http://hl7.org/fhir/sid/us-npi', value: '1234567893' }])).toEqual([
      'Organization/org-1',
      'Practitioner/dr-1',
    ]);
  });

  it('resolves an identifier several resources carry to none of them, and an unknown one to nothing', async () => {
    expect(await resolveActorIdentifiers(store, [{ system: 'urn:oid:1', value: 'shared' }])).toEqual([]);
    expect(await resolveActorIdentifiers(store, [{ system: 'urn:oid:1', value: 'nobody' }])).toEqual([]);
  });
});
