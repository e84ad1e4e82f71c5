/**
 * Demo (d): a Claim both trading partners can prove they saw identically.
 *
 * A provider submits the FHIR R4 example Claim (`microsoft-fhir-server/claim-example.json`, verbatim:
 * oral health claim 100150) through fhir-anchor; the version is logged once. The provider and the payer
 * each fetch `$verify` on their own and each recompute the commitment from *their own copy* of the
 * record (the payer's copy arrives re-serialised: other key order, pretty-printed). Both get the same
 * commitment, equal to the log's leaf, under the same signed checkpoint; a copy with a different amount
 * gives a different commitment, so a dispute about "what was sent" is settled by the log.
 *
 *   node --import tsx scripts/demo/claim-partners.ts
 */
import { computeCommitment } from '../../src/integrity/commitment.js';
import { decodeBase64Strict, toHex } from '../../src/integrity/encoding.js';
import { anchorId } from '../../src/normalize/index.js';
import { printChecks, readJson, runDemo, say, step, verifyHeld } from './lib.js';

interface Claim {
  resourceType: 'Claim';
  id: string;
  total?: { value: number; currency: string };
  item?: Array<{ net?: { value: number; currency: string } }>;
  [k: string]: unknown;
}

const claim = readJson<Claim>('examples/r4-spec/microsoft-fhir-server/claim-example.json');

/** The same JSON value with object keys in reverse order (another system's serialisation). */
function reorder(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(reorder);
  if (v && typeof v === 'object') return Object.fromEntries(Object.keys(v).reverse().map((k) => [k, reorder((v as Record<string, unknown>)[k])]));
  return v;
}

await runDemo('Demo (d): a claim both trading partners saw identically', async (demo) => {
  step(1, `The provider submits claim ${claim.id} (${(claim.type as { coding: Array<{ code: string }> }).coding[0]!.code}, created ${String(claim.created)}).`);
  const provider = await demo.addSource('happyvalley-provider', 'Happy Valley provider billing');
  await provider(claim);
  await demo.verify('Claim', 'happyvalley-provider', claim.id); // wait until stored and logged
  const id = anchorId('happyvalley-provider', 'Claim', claim.id);
  const providerCopy = await demo.version('Claim', id, '1');
  const payerCopy = JSON.stringify(reorder(JSON.parse(providerCopy)), null, 2);
  say(`   logged as Claim/${id}/_history/1; the payer receives it re-serialised (${payerCopy.length} bytes vs ${providerCopy.length}, keys in another order).`);

  step(2, 'Each partner asks $verify on its own and recomputes the commitment from its own copy.');
  const forProvider = await demo.verify('Claim', 'happyvalley-provider', claim.id);
  const forPayer = await demo.verify('Claim', 'happyvalley-provider', claim.id);
  const salt = decodeBase64Strict(forPayer.salt)!;
  const providerCommitment = toHex(computeCommitment(JSON.parse(providerCopy), decodeBase64Strict(forProvider.salt)!));
  const payerCommitment = toHex(computeCommitment(JSON.parse(payerCopy), salt));
  say(`   provider's commitment: ${providerCommitment}`);
  say(`   payer's commitment:    ${payerCommitment}`);
  say(`   the log's leaf:        ${forPayer.commitment} (leaf ${forPayer.leafIndex} of ${forPayer.treeSize})`);
  const same = providerCommitment === payerCommitment && payerCommitment === forPayer.commitment;
  say(`   identical on both sides and in the log: ${same ? 'yes' : 'NO'}`);

  step(3, 'Each side verifies its copy offline against the same signed checkpoint.');
  say('   provider:');
  const a = await verifyHeld({ recordJson: providerCopy, salt: forProvider.salt, receipt: forProvider.receipt, logKey: forProvider.logKey, anchorReceipts: forProvider.anchorReceipts });
  printChecks(a, '     ');
  say('   payer:');
  const b = await verifyHeld({ recordJson: payerCopy, salt: forPayer.salt, receipt: forPayer.receipt, logKey: forPayer.logKey, anchorReceipts: forPayer.anchorReceipts });
  printChecks(b, '     ');
  const sameCheckpoint = forProvider.receipt.split('\n\n')[1] === forPayer.receipt.split('\n\n')[1];
  say(`   both receipts carry the same signed checkpoint: ${sameCheckpoint ? 'yes' : 'no (a later checkpoint; both are consistent extensions of one log)'}`);

  step(4, 'Later one side presents a copy with a different amount.');
  const disputed = JSON.parse(payerCopy) as Claim;
  const before = disputed.total?.value ?? disputed.item?.[0]?.net?.value;
  if (disputed.total) disputed.total.value += 100;
  else if (disputed.item?.[0]?.net) disputed.item[0].net.value += 100;
  const after = disputed.total?.value ?? disputed.item?.[0]?.net?.value;
  say(`   amount ${before} → ${after}: commitment ${toHex(computeCommitment(disputed, salt))}`);
  const bad = await verifyHeld({ recordJson: JSON.stringify(disputed), salt: forPayer.salt, receipt: forPayer.receipt, logKey: forPayer.logKey });
  printChecks(bad, '     ');

  say('\nIn plain words: the provider and the payer independently derive the same commitment from their own copies, and it is');
  say('the one in the signed log; serialisation differences do not matter (RFC 8785 canonical JSON), a different amount does.');
  return same && a.ok && b.ok && !bad.ok;
});
