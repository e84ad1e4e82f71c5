/**
 * Demo (b): drug lot provenance.
 *
 * A manufacturer's system records a Medication with its batch (lot number and expiry): the contained
 * `Medication/med0309` of the FHIR R4 example `medicationstatementexample1.json` (Tylenol PM, lot
 * 9494788, expires 2017-05-22). A distributor's system records SupplyDelivery events: the FHIR R4
 * example `supplydelivery-example.json` and the three SupplyDelivery resources of the Synthea 2024
 * patient bundle, all verbatim, plus one delivery *of this lot* built for the demo from the spec
 * example's shape (its `suppliedItem` points at the Medication; the spec example ships blood tubes).
 * Every record is logged; a pharmacy holding the records, salts and receipts verifies them offline,
 * and a relabelled expiry date is refused.
 *
 *   node --import tsx scripts/demo/drug-lot.ts
 */
import { anchorId } from '../../src/normalize/index.js';
import { printChecks, readJson, runDemo, say, step, verifyHeld, type Demo, type VerifyParameters } from './lib.js';

interface Res {
  resourceType: string;
  id: string;
  [k: string]: unknown;
}

const statement = readJson<{ contained: Res[] }>('examples/r4-spec/fhir-test-cases/medicationstatementexample1.json');
const medication = statement.contained.find((r) => r.resourceType === 'Medication' && r.id === 'med0309')!;
const specDelivery = readJson<Res>('examples/r4-spec/fhir-test-cases/supplydelivery-example.json');
const synthea = readJson<{ entry: Array<{ resource: Res }> }>('synthea/synthea-2024/patients/Bundle-Patient-01.json');
const syntheaDeliveries = synthea.entry.map((e) => e.resource).filter((r) => r.resourceType === 'SupplyDelivery');
const lot = medication.batch as { lotNumber: string; expirationDate: string };

/** A delivery of this lot, in the shape of the spec example (built for the demo; the only non-verbatim record). */
const lotDelivery: Res = {
  resourceType: 'SupplyDelivery',
  id: `lot-${lot.lotNumber}-delivery-1`,
  identifier: [{ system: 'https://distributor.example/shipments', value: `SHP-${lot.lotNumber}-001` }],
  status: 'completed',
  type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/supply-item-type', code: 'medication', display: 'Medication' }] },
  suppliedItem: { quantity: { value: 500 }, itemReference: { reference: 'Medication/med0309', display: `Tylenol PM, lot ${lot.lotNumber}` } },
  occurrenceDateTime: '2016-11-02T09:30:00Z',
  supplier: { display: 'Example Distributor' },
  destination: { display: 'Example Community Pharmacy' },
};

async function holdAndVerify(demo: Demo, source: string, r: Res): Promise<{ p: VerifyParameters; recordJson: string; ok: boolean }> {
  const p = await demo.verify(r.resourceType, source, r.id);
  const recordJson = await demo.version(r.resourceType, anchorId(source, r.resourceType, r.id), '1');
  const result = await verifyHeld({ recordJson, salt: p.salt, receipt: p.receipt, logKey: p.logKey, anchorReceipts: p.anchorReceipts });
  say(`   ${result.ok ? 'VERIFIED' : 'NOT VERIFIED'}  ${r.resourceType}/${r.id} → leaf ${p.leafIndex} of ${p.treeSize}, commitment ${p.commitment.slice(0, 16)}…`);
  return { p, recordJson, ok: result.ok };
}

await runDemo('Demo (b): drug lot provenance', async (demo) => {
  step(1, `The manufacturer records the medication and its batch: ${JSON.stringify((medication.code as { coding: Array<{ display: string }> }).coding[0]!.display)}, lot ${lot.lotNumber}, expires ${lot.expirationDate}.`);
  const manufacturer = await demo.addSource('manufacturer', 'Manufacturer ERP');
  await manufacturer(medication);

  step(2, `The distributor records ${2 + syntheaDeliveries.length} SupplyDelivery events (one of this lot, the spec example, ${syntheaDeliveries.length} from Synthea).`);
  const distributor = await demo.addSource('distributor', 'Distributor WMS');
  for (const d of [lotDelivery, specDelivery, ...syntheaDeliveries]) await distributor(d);

  step(3, 'A pharmacy receives the records with their salts and receipts, and verifies each offline against the signed log.');
  const med = await holdAndVerify(demo, 'manufacturer', medication);
  const results = [med.ok];
  let lotRecord = '';
  for (const d of [lotDelivery, specDelivery, ...syntheaDeliveries]) {
    const r = await holdAndVerify(demo, 'distributor', d);
    results.push(r.ok);
    if (d === lotDelivery) lotRecord = r.recordJson;
  }
  const ref = (JSON.parse(lotRecord) as { suppliedItem: { itemReference: { reference: string; display: string } } }).suppliedItem.itemReference;
  say(`   The verified delivery of the lot names "${ref.display}" and ${ref.reference}: fhir-anchor scopes ids per source, so the`);
  say(`   distributor's "Medication/med0309" became ${ref.reference}; the lot number in the verified records ties the two together.`);

  step(4, 'The full check of the medication record, line by line:');
  const full = await verifyHeld({ recordJson: med.recordJson, salt: med.p.salt, receipt: med.p.receipt, logKey: med.p.logKey, anchorReceipts: med.p.anchorReceipts });
  printChecks(full);

  step(5, 'A relabelled pack: the same record with the expiry moved to 2019-05-22.');
  const relabelled = JSON.parse(med.recordJson) as { batch: { expirationDate: string } };
  relabelled.batch.expirationDate = '2019-05-22';
  const bad = await verifyHeld({ recordJson: JSON.stringify(relabelled), salt: med.p.salt, receipt: med.p.receipt, logKey: med.p.logKey });
  printChecks(bad);

  say(`\nIn plain words: the lot's master record (lot ${lot.lotNumber}, expiry ${lot.expirationDate}) and each delivery event are provably the`);
  say('ones logged at the time; anyone can check this with public data, and a changed expiry date no longer matches the log.');
  return results.every(Boolean) && full.ok && !bad.ok;
});
