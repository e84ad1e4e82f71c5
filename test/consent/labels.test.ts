/** DS4P sensitivity labelling from the example code lists in test/fixtures/consent. */
import type { Condition, Observation } from '@medplum/fhirtypes';
import { CodeListError, applySensitivityLabels, compileCodeLists, decide, sensitivityLabels } from '../../src/consent/index.js';
import { NOW, V3_ACT_CODE, V3_CONF, consent, label, readJson, request } from './helpers.js';

const index = compileCodeLists(readJson<unknown>('sensitivity-code-lists.json'));
const ICD10 = 'http://hl7.org/fhir/sid/icd-10-cm';
const SCT = 'http://snomed.info/sct';

const condition = (system: string, code: string, over: Partial<Condition> = {}): Condition => ({
  resourceType: 'Condition',
  id: `c-${code}`,
  subject: { reference: 'Patient/p1' },
  code: { coding: [{ system, code }] },
  ...over,
});

describe('sensitivityLabels', () => {
  const cases: [string, Condition | Observation, string[]][] = [
    ['HIV disease (ICD-10-CM B20)', condition(ICD10, 'B20'), ['HIV', 'R']],
    ['HIV infection (SNOMED 86406008)', condition(SCT, '86406008'), ['HIV', 'R']],
    ['recurrent depression (ICD-10-CM F33.1)', condition(ICD10, 'F33.1'), ['PSY', 'R']],
    ['single-episode depression by prefix (F32.A)', condition(ICD10, 'F32.A'), ['PSY', 'R']],
    ['opioid abuse by prefix (F11.10)', condition(ICD10, 'F11.10'), ['SUD', 'R']],
    ['PHQ-9 panel (LOINC 44249-1)', { resourceType: 'Observation', status: 'final', code: { coding: [{ system: 'http://loinc.org', code: '44249-1' }] } }, ['PSY', 'R']],
    ['hypertension is not sensitive', condition(SCT, '38341003'), []],
    ['the same code in another system is not sensitive', condition(SCT, 'B20'), []],
    ['a sensitive reason code counts too', condition(SCT, '38341003', { evidence: [{ code: [{ coding: [{ system: ICD10, code: 'Z21' }] }] }] }), ['HIV', 'R']],
    ['two sensitivities', condition(ICD10, 'B20', { evidence: [{ code: [{ coding: [{ system: SCT, code: '5602001' }] }] }] }), ['HIV', 'SUD', 'R']],
  ];
  it.each(cases)('%s', (_name, resource, expected) => {
    expect(sensitivityLabels(resource, index).map((c) => c.code)).toEqual(expected);
  });

  it('labels with v3-ActCode sensitivity codes and v3-Confidentiality R', () => {
    expect(sensitivityLabels(condition(ICD10, 'B20'), index)).toEqual([
      { system: V3_ACT_CODE, code: 'HIV', display: 'HIV/AIDS information sensitivity' },
      { system: V3_CONF, code: 'R', display: 'restricted' },
    ]);
  });

  it('ignores codes already in meta.security (labels are not clinical codes)', () => {
    expect(sensitivityLabels(condition(SCT, '38341003', { meta: { security: [label('HIV')] } }), index)).toEqual([]);
  });
});

describe('applySensitivityLabels', () => {
  it('merges into meta.security, raising N to R, without touching the input', () => {
    const input = condition(ICD10, 'B20', { meta: { versionId: '1', security: [{ system: V3_CONF, code: 'N' }, { system: 'http://example.org/tag', code: 'x' }] } });
    const out = applySensitivityLabels(input, index);
    expect(out.meta?.security?.map((c) => c.code)).toEqual(['x', 'HIV', 'R']);
    expect(out.meta?.versionId).toBe('1');
    expect(input.meta?.security?.map((c) => c.code)).toEqual(['N', 'x']);
  });

  it('keeps a higher confidentiality (V)', () => {
    const out = applySensitivityLabels(condition(ICD10, 'B20', { meta: { security: [{ system: V3_CONF, code: 'V' }] } }), index);
    expect(out.meta?.security?.map((c) => c.code)).toEqual(['V', 'HIV']);
  });

  it('returns non-sensitive resources unchanged', () => {
    const c = condition(SCT, '38341003');
    expect(applySensitivityLabels(c, index)).toBe(c);
  });

  it('feeds the consent engine: a labelled HIV condition falls under a deny-HIV provision', () => {
    const labelled = applySensitivityLabels(condition(ICD10, 'B20'), index);
    const denyHiv = consent('deny-hiv', { type: 'permit', provision: [{ type: 'deny', securityLabel: [label('HIV')] }] });
    const d = decide([denyHiv], request({ resourceType: 'Condition', resource: labelled }), NOW, { defaultDecision: 'permit' });
    expect(d.decision).toBe('deny');
  });
});

describe('compileCodeLists', () => {
  it('every example list names its source', () => {
    const file = readJson<{ lists: { source: string }[] }>('sensitivity-code-lists.json');
    for (const l of file.lists) expect(l.source.length).toBeGreaterThan(20);
  });

  it('lists every problem of a malformed file', () => {
    let error: unknown;
    try {
      compileCodeLists({ lists: [{ id: 'x', label: { system: V3_ACT_CODE }, codes: [] }] });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(CodeListError);
    const problems = (error as CodeListError).problems.join('\n');
    expect(problems).toMatch(/lists\.0\.source/);
    expect(problems).toMatch(/lists\.0\.label\.code/);
    expect(problems).toMatch(/lists\.0\.codes/);
  });
});
