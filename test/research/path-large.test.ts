/**
 * Rule paths over resources with very long arrays: a union collected its parts with
 * `out.push(...part)`, which throws "Maximum call stack size exceeded" from about 130,000 nodes, so
 * de-identifying (or exporting) such a stored resource failed.
 */
import { compilePath } from '../../src/research/deid/path.js';
import { buildTree } from '../../src/research/deid/tree.js';

describe('rule paths over very long arrays', () => {
  it('a union matches every node of a 160,000-element array', () => {
    const given = Array.from({ length: 160_000 }, (_, i) => `g${i}`);
    const tree = buildTree({ resourceType: 'Patient', id: 'p', name: [{ family: 'F', given }] });
    const matched = compilePath('Patient.name.given | Patient.name.family').match(tree.resources[0]!);
    expect(matched.length).toBe(160_001);
    expect(matched.filter((n) => n.name === 'family').map((n) => n.value)).toEqual(['F']);
  });
});
