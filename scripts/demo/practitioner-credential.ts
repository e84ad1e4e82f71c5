/**
 * Demo (c): a practitioner's qualification verified by a hiring organisation.
 *
 * The issuing hospital's HR system records Dr Adam Careful (FHIR R4 example
 * `practitioner-example.json`, verbatim: Bachelor of Science, Example University, 1995). fhir-anchor
 * logs the record. The practitioner later hands a hiring organisation three things: the record, its
 * salt and its receipt. The hiring organisation, with no access to the hospital or to fhir-anchor, checks
 * them against the log's public key (published, fetched once from a trusted place) and reads the
 * qualification from the verified record. A forged degree is refused.
 *
 *   node --import tsx scripts/demo/practitioner-credential.ts
 */
import { anchorId } from '../../src/normalize/index.js';
import { printChecks, readJson, runDemo, say, step, verifyHeld } from './lib.js';

interface Qualification {
  code: { coding: Array<{ code: string; display: string }>; text?: string };
  issuer?: { display?: string };
  period?: { start?: string };
  identifier?: Array<{ value: string }>;
}
interface Practitioner {
  resourceType: 'Practitioner';
  id: string;
  name: Array<{ family: string; given: string[]; prefix?: string[] }>;
  qualification: Qualification[];
}

const practitioner = readJson<Practitioner>('examples/r4-spec/fhir-test-cases/practitioner-example.json');

await runDemo('Demo (c): staff credential verified by a hiring organisation', async (demo) => {
  step(1, 'The issuing hospital records the practitioner and the qualification.');
  const hospital = await demo.addSource('acme-hr', 'Acme Hospital HR');
  await hospital(practitioner);
  const q = practitioner.qualification[0]!;
  say(`   ${practitioner.name[0]!.prefix?.join(' ') ?? ''} ${practitioner.name[0]!.given.join(' ')} ${practitioner.name[0]!.family}: ${q.code.text ?? q.code.coding[0]!.display}, ${q.issuer?.display}, since ${q.period?.start}`);

  step(2, 'fhir-anchor logs it; the practitioner obtains the salt and receipt ($verify) and the record.');
  const p = await demo.verify('Practitioner', 'acme-hr', practitioner.id);
  const recordJson = await demo.version('Practitioner', anchorId('acme-hr', 'Practitioner', practitioner.id), '1');
  const handedOver = { recordJson, salt: p.salt, receipt: p.receipt };
  say(`   handed to the employer: the record (${handedOver.recordJson.length} bytes), the salt (${handedOver.salt}), the receipt (leaf ${p.leafIndex} of ${p.treeSize})`);
  const publishedKey = p.logKey; // public: served at GET /ledger/key and published by the log operator
  say(`   the log's public key, obtained once from a trusted source: ${publishedKey}`);

  step(3, 'The hiring organisation verifies, holding only those (no call to the hospital or to fhir-anchor).');
  const result = await verifyHeld({ ...handedOver, logKey: publishedKey });
  printChecks(result);
  const verified = JSON.parse(handedOver.recordJson) as Practitioner;
  const vq = verified.qualification[0]!;
  say(`   Verified qualification: ${vq.code.coding[0]!.code} (${vq.code.coding[0]!.display}) from ${vq.issuer?.display}, university id ${vq.identifier?.[0]?.value}, since ${vq.period?.start}`);

  step(4, 'A forged copy claims a Doctor of Medicine instead.');
  const forged = JSON.parse(handedOver.recordJson) as Practitioner;
  forged.qualification[0]!.code = { coding: [{ ...forged.qualification[0]!.code.coding[0]!, code: 'MD', display: 'Doctor of Medicine' }], text: 'Doctor of Medicine' };
  const bad = await verifyHeld({ ...handedOver, recordJson: JSON.stringify(forged), logKey: publishedKey });
  printChecks(bad);

  say('\nIn plain words: the employer confirmed, offline, that this exact qualification record was logged by the issuing');
  say('hospital\'s feed no later than the signed checkpoint; the forged degree does not match what was logged.');
  return result.ok && !bad.ok;
});
