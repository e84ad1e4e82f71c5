/**
 * resolveActorIdentifiers: a requester known by identifier takes the identity of the one local
 * Organization / Practitioner / PractitionerRole that carries it, never of several.
 */
import { completeActor, resolveActorIdentifiers } from '../../src/fhir-api/access.js';

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
    readCurrent: async (type: string, id: string) => {
      const found = (directory[type] ?? []).filter((e) => e.id === id);
      return found.length === 0 ? undefined : { deleted: false, resource: { resourceType: type, id, identifier: [...found.map(({ system, value }) => ({ system, value })), { value: 'no-system' }] } };
    },
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

  it('completes an identity both ways: identifiers to references, references to their identifiers', async () => {
    const byReference = await completeActor(store, { references: ['Practitioner/dr-1', 'Patient/p-1'], identifiers: [] });
    expect(byReference.references).toEqual(['Practitioner/dr-1', 'Patient/p-1']);
    // Only actor resources lend their identifiers, and only identifiers with a system.
    expect(byReference.identifiers).toEqual([{ system: 'http://hl7.org/fhir/sid/us-npi', value: '1234567893' }]);
    const byIdentifier = await completeActor(store, { references: [], identifiers: [{ system: 'urn:oid:1', value: 'unique' }] });
    expect(byIdentifier).toEqual({ references: ['Organization/org-1'], identifiers: [{ system: 'urn:oid:1', value: 'unique' }] });
  });
});
