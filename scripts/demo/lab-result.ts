/**
 * Demo (a): a lab result proven unchanged.
 *
 * A lab system sends an HbA1c Observation to fhir-anchor's hook. fhir-anchor stores it, commits it to
 * its Merkle log and signs a checkpoint. The record's holder then gets `$verify` (salt + receipt) and
 * checks it offline with `verifyOffline` (what `fhir-anchor verify` runs): no database, no server. A
 * copy with a changed value is refused.
 *
 *   node --import tsx scripts/demo/lab-result.ts          # built-in log anchor only
 *   node --import tsx scripts/demo/lab-result.ts --evm    # also anchor on a local Hardhat EVM node
 */
import { startHardhatNode, HARDHAT_KEYS } from '../../test/helpers/hardhat.js';
import { deployAnchorContract, verifyEvmReceipt } from '../../src/integrity/anchors/evm.js';
import { anchorId } from '../../src/normalize/index.js';
import { printChecks, runDemo, say, step, verifyHeld } from './lib.js';

const withEvm = process.argv.includes('--evm');
let rpcUrl: string | undefined;

const observation = {
  resourceType: 'Observation',
  id: 'hba1c-2026-06-01',
  meta: { versionId: '1', lastUpdated: '2026-06-01T10:00:00Z' },
  status: 'final',
  category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'laboratory' }] }],
  code: { coding: [{ system: 'http://loinc.org', code: '4548-4', display: 'Hemoglobin A1c/Hemoglobin.total in Blood' }] },
  subject: { reference: 'Patient/p-1' },
  effectiveDateTime: '2026-06-01T09:00:00Z',
  valueQuantity: { value: 6.1, unit: '%', system: 'http://unitsofmeasure.org', code: '%' },
};

await runDemo(
  `Demo (a): a lab result proven unchanged${withEvm ? ' (with an EVM anchor)' : ''}`,
  async (demo) => {
    step(1, 'The lab system sends an HbA1c result (6.1 %) to fhir-anchor.');
    const post = await demo.addSource('lab', 'Hospital lab');
    await post(observation);
    say('   Accepted (202): the raw notification is in the durable inbox; a worker normalises, validates and stores it.');

    step(2, 'fhir-anchor commits the stored version to its Merkle log and signs a checkpoint; we ask $verify.');
    const p = await demo.verify('Observation', 'lab', observation.id, (x) => !withEvm || x.anchorReceipts.some((r) => r.includes('"kind":"evm"')));
    say(`   $verify: status ${p.status}, ${p.reference}, leaf ${p.leafIndex} of a ${p.treeSize}-leaf log`);
    say(`   commitment ${p.commitment} (SHA-256 of a 32-byte salt and the canonical JSON of the version)`);
    say(`   server-side checks: stored version still matches its commitment = ${p.valid}; inclusion proof verifies = ${p.proofValid}`);
    say(`   anchors: ${p.anchorReceipts.map((r) => (JSON.parse(r) as { kind: string }).kind).join(', ')}`);

    step(3, 'The patient (or any holder) keeps: the record as served, the salt, the receipt and the log\'s public key.');
    const id = anchorId('lab', 'Observation', observation.id);
    const recordJson = await demo.version('Observation', id, '1');
    const stored = JSON.parse(recordJson) as typeof observation;
    say(`   record (GET /fhir/R4/Observation/${id}/_history/1): ${recordJson.length} bytes, value ${stored.valueQuantity.value} %`);
    say(`   receipt (C2SP tlog-proof, first lines): ${p.receipt.split('\n').slice(0, 2).join(' | ')} …`);
    say(`   log key: ${p.logKey}`);

    step(4, 'Later, offline (no database, no fhir-anchor), the holder verifies the record.');
    const evmVerifiers = withEvm ? { evm: verifyEvmReceipt } : undefined;
    const good = await verifyHeld({ recordJson, salt: p.salt, receipt: p.receipt, logKey: p.logKey, anchorReceipts: p.anchorReceipts, ...(rpcUrl ? { rpcUrl } : {}) }, evmVerifiers);
    printChecks(good);

    step(5, 'Someone presents a copy where the value was changed to 5.1 %.');
    const altered = { ...stored, valueQuantity: { ...observation.valueQuantity, value: 5.1 } };
    const bad = await verifyHeld({ recordJson: JSON.stringify(altered), salt: p.salt, receipt: p.receipt, logKey: p.logKey });
    printChecks(bad);
    say(`\nIn plain words: the 6.1 % result verifies against a checkpoint signed by the log${withEvm ? ' and recorded on the EVM chain' : ''};`);
    say('the altered 5.1 % copy produces a different commitment, so its inclusion check fails.');
    return good.ok && !bad.ok;
  },
  {},
  withEvm
    ? async () => {
        say('(starting a local Hardhat EVM node on 127.0.0.1 and deploying the FhirAnchorLog contract …)');
        const node = await startHardhatNode();
        rpcUrl = node.url;
        const deployed = await deployAnchorContract({ rpcUrl: node.url, privateKey: HARDHAT_KEYS[0] });
        say(`(contract ${deployed.address} on chain ${deployed.chainId} at ${node.url})`);
        return {
          env: { EVM_RPC_URL: node.url, EVM_PRIVATE_KEY: HARDHAT_KEYS[0], EVM_CONTRACT_ADDRESS: deployed.address, EVM_CHAIN_ID: String(deployed.chainId) },
          close: () => node.stop(),
        };
      }
    : undefined,
);
