/**
 * Bulk Data kick-off parameters (src/research/export/kickoff.ts) as a pure function.
 */
import { parseScopes } from '../../src/consent/index.js';
import type { AccessContext } from '../../src/fhir-api/access.js';
import { formPairs } from '../../src/fhir-api/search-params.js';
import { parseKickoff } from '../../src/research/export/kickoff.js';

const access: AccessContext = {
  clientId: 'c',
  issuer: 'https://issuer.example',
  scopes: parseScopes('system/*.rs').scopes,
  purposeOfUse: ['TREAT'],
  actor: { references: [], identifiers: [] },
  mayBreakGlass: false,
};
const kickoff = (query: string) =>
  parseKickoff({ pairs: formPairs(query), prefer: 'respond-async', level: 'system', access, baseUrl: 'https://fa.example/fhir/R4', policyExists: () => true });

describe('Bulk Data kick-off', () => {
  it('accepts _outputFormat for NDJSON however the + is written, and refuses other formats', () => {
    for (const q of ['_outputFormat=application%2Ffhir%2Bndjson', '_outputFormat=application/fhir+ndjson', '_outputFormat=ndjson', '_outputFormat=application/ndjson']) {
      expect(() => kickoff(`${q}&_type=Patient`)).not.toThrow();
    }
    for (const q of ['_outputFormat=text/csv', '_outputFormat=application/fhir+json']) {
      expect(() => kickoff(q)).toThrow(/_outputFormat supports only application\/fhir\+ndjson/);
    }
  });
});
