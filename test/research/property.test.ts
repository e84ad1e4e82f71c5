/** fast-check: the engine never throws on arbitrary FHIR-shaped input when processingErrors is skip. */
import fc from 'fast-check';
import type { Resource } from '@medplum/fhirtypes';
import { createDeidentifier, loadPolicy, type AnonymizerConfig } from '../../src/research/index.js';

const keys = { cryptoHashKey: 'k', dateShiftKey: 'd', encryptKey: '0123456789abcdef' };
const base = loadPolicy('safe-harbor-dateshift') as AnonymizerConfig;
const policies: AnonymizerConfig[] = [
  { ...base, processingErrors: 'skip' },
  {
    processingErrors: 'skip',
    fhirPathRules: [
      { path: "nodesByType('ContactPoint').where(use='home')", method: 'encrypt' },
      { path: "nodesByType('Quantity').value", method: 'perturb', span: 0.2, rangeType: 'proportional' },
      { path: "nodesByType('string')", method: 'substitute', replaceWith: 'x' },
      { path: 'Patient.birthDate', method: 'generalize', cases: { '$this >= @1990-01-01': '@1990' }, otherValues: 'keep' },
      { path: "nodesByType('dateTime')", method: 'dateShift' },
      { path: "nodesByName('reference')", method: 'cryptoHash' },
    ],
    parameters: { dateShiftScope: 'patient', enablePartialDatesForRedact: true },
  },
];
const deids = policies.map((policy) => createDeidentifier({ keys }, { policy }));

const types = ['Patient', 'Observation', 'Encounter', 'Bundle', 'Condition', 'Unknownish'] as const;
const keysArb = fc.constantFrom(
  'id', 'name', 'family', 'given', 'telecom', 'value', 'use', 'address', 'postalCode', 'birthDate', 'extension', 'url', 'valueString',
  'identifier', 'text', 'div', 'note', 'subject', 'reference', 'display', 'valueQuantity', 'onsetAge', 'effectiveDateTime', 'contained',
  'entry', 'resource', 'period', 'start', 'coding', 'code', 'meta', 'security', '_birthDate', 'component', 'weird',
);
const leaf = fc.oneof(fc.string(), fc.integer(), fc.double({ noNaN: true }), fc.boolean(), fc.constant(null), fc.constantFrom('2020-01-02', '1920-05-06T10:00:00Z', 'Patient/1', 'urn:uuid:3d195286-ce77-f5b3-b64f-3eacfb9c273e', '98052'));
const { tree } = fc.letrec((tie) => ({
  tree: fc.oneof({ depthSize: 'small', withCrossShrink: true }, leaf, tie('obj'), tie('arr'), tie('res')),
  obj: fc.dictionary(keysArb, tie('tree'), { maxKeys: 5 }),
  arr: fc.array(tie('tree'), { maxLength: 3 }),
  res: fc.record({ resourceType: fc.constantFrom(...types) }).chain((r) => fc.dictionary(keysArb, tie('tree'), { maxKeys: 5 }).map((d) => ({ ...d, ...r }))),
}));
const resource = fc
  .tuple(fc.constantFrom(...types), fc.dictionary(keysArb, tree, { maxKeys: 8 }))
  .map(([resourceType, body]) => ({ ...body, resourceType }) as unknown as Resource);

describe('engine robustness', () => {
  it.each(policies.map((_, i) => i))('policy %i never throws with processingErrors=skip', (i) => {
    fc.assert(
      fc.property(resource, (r) => {
        const out = deids[i]!.deidentify(r);
        return out.kind === 'deidentified' || out.kind === 'dropped';
      }),
      { numRuns: 400 },
    );
  });
});
