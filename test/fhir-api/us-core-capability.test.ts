/**
 * What a US Core 6.1 server is expected to offer (its CapabilityStatement, reduced: see
 * test/fixtures/fhir-api/README.md) against what ours declares: every type it reads, every search
 * parameter, every combination and every `_include` / `_revinclude`, whatever the expectation
 * (SHALL, SHOULD, MAY), except the ones listed here with the reason.
 */
import { readFileSync } from 'node:fs';
import { capabilityResources } from '../../src/fhir-api/search-params.js';

interface UsCoreResource {
  type: string;
  read: string | null;
  searchParam: Array<{ name: string; type: string; expectation: string }>;
  combinations: Array<{ expectation: string; required: string[] }>;
  searchInclude: string[];
  searchRevInclude: string[];
}

const usCore = JSON.parse(readFileSync(new URL('../fixtures/fhir-api/us-core-6.1.0-server-search.json', import.meta.url), 'utf8')) as { resources: UsCoreResource[] };
/** Not offered, and why. */
const NOT_OFFERED: Readonly<Record<string, string>> = {
  'QuestionnaireResponse.questionnaire': 'MAY; a canonical URL, not a reference the index holds',
};

describe('US Core 6.1 server expectations', () => {
  const ours = new Map(capabilityResources().map((r) => [r.type as string, r]));

  it.each(usCore.resources.map((r) => [r.type, r] as const))('%s', (type, expected) => {
    const r = ours.get(type);
    expect(r).toBeDefined();
    if (expected.read) expect(r!.interaction!.map((i) => i.code)).toContain('read');
    const params = new Map((r!.searchParam ?? []).map((p) => [p.name, p.type]));
    for (const p of expected.searchParam) {
      if (NOT_OFFERED[`${type}.${p.name}`]) continue;
      expect([p.name, params.get(p.name)]).toEqual([p.name, p.type]);
    }
    for (const c of expected.combinations) for (const n of c.required) if (!NOT_OFFERED[`${type}.${n}`]) expect([...params.keys()]).toContain(n);
    // `CareTeam:participant:Practitioner` is served by our `CareTeam:participant` with a target type.
    const includes = new Set(r!.searchInclude ?? []);
    for (const i of expected.searchInclude) expect(includes.has(i) || includes.has(i.split(':').slice(0, 2).join(':'))).toBe(true);
    for (const i of expected.searchRevInclude) expect(r!.searchRevInclude ?? []).toContain(i);
  });
});
