/**
 * Fault: the EVM node (`hardhat node`, reached through a TCP proxy so it can go away and come back
 * with its chain intact) is unreachable mid-run. Checkpoints keep being signed into the log (the
 * built-in anchor); the EVM anchor fails, and every sequencer tick retries the newest checkpoint it has
 * not covered (src/integrity/log.ts catchUpAnchors), so anchoring catches up with the newest checkpoint
 * once the node is back, with or without new data.
 */
import type { AnchorReceipt } from '../../src/integrity/anchor.js';
import { deployAnchorContract, verifyEvmReceipt } from '../../src/integrity/anchors/evm.js';
import { parseVerifierKey } from '../../src/integrity/note.js';
import { HARDHAT_CHAIN_ID, HARDHAT_KEYS, startHardhatNode, type HardhatNode } from '../helpers/hardhat.js';
import { EXACTLY_ONCE, FaultRig, TcpProxy, describeFaults, exactlyOnceView, expectedVersions, sleep, syntheaWorkload, waitFor, type Payload } from './helpers.js';

describeFaults('fault: EVM node down', () => {
  let rig: FaultRig;
  let node: HardhatNode;
  let proxy: TcpProxy;
  let url: string;
  let unanchoredAfterQuiet: { latest: number; evm: number } | undefined;

  beforeAll(async () => {
    node = await startHardhatNode();
    proxy = await TcpProxy.start(node.port);
    const contract = await deployAnchorContract({ rpcUrl: proxy.url, privateKey: HARDHAT_KEYS[0], chainId: HARDHAT_CHAIN_ID, pollingIntervalMs: 50 });
    rig = await FaultRig.create({
      redis: true,
      env: {
        EVM_RPC_URL: proxy.url,
        EVM_PRIVATE_KEY: HARDHAT_KEYS[0],
        EVM_CONTRACT_ADDRESS: contract.address,
        EVM_CHAIN_ID: String(HARDHAT_CHAIN_ID),
        LOG_BATCH_INTERVAL_MS: '500',
      },
    });
  }, 90_000);

  afterAll(async () => {
    await rig?.cleanup();
    await proxy?.down();
    await node?.stop();
  }, 60_000);

  const sizes = (): Promise<{ latest: number; evm: number; checkpoints: number }> =>
    rig.sql(async (c) => {
      const r = await c.query<{ latest: number | null; evm: number | null; checkpoints: number }>(
        `SELECT (SELECT max(size)::int FROM checkpoint) AS latest, (SELECT max(size)::int FROM anchor_receipt WHERE anchor = 'evm') AS evm, (SELECT count(*)::int FROM checkpoint) AS checkpoints`,
      );
      const row = r.rows[0]!;
      return { latest: row.latest ?? 0, evm: row.evm ?? 0, checkpoints: row.checkpoints };
    });

  it('keeps signing checkpoints while the node is down and anchors the newest one when it is back', async () => {
    url = (await rig.startApi()).url;
    await rig.registerSource(url, 'ehr', 'https://ehr.example/fhir');
    const worker = await rig.startWorker();
    const { support, patients } = syntheaWorkload(3);
    const sent: Payload[] = [...support];
    await rig.postAndSettle(url, 'ehr', support);
    const up1 = await waitFor('an EVM anchor', async () => {
      const s = await sizes();
      return s.evm > 0 && s.evm === s.latest ? s : undefined;
    }, 60_000);

    await proxy.down();
    await rig.postAndSettle(url, 'ehr', patients.slice(0, 1));
    sent.push(patients[0]!);
    await waitFor('the patient sequenced', async () => (await rig.waitSettled(1_000, 0)) !== 'timeout', 60_000);
    const down = await sizes();
    const failures = worker.logs('anchoring a checkpoint failed').filter((r) => r.anchor === 'evm');

    // Back up, and no new data for a while: is the newest checkpoint anchored anyway?
    await proxy.up();
    await sleep(8_000);
    const quiet = await sizes();
    unanchoredAfterQuiet = quiet.evm < quiet.latest ? { latest: quiet.latest, evm: quiet.evm } : undefined;

    // Data flows again: the next checkpoint is anchored, catching the EVM anchor up with the log.
    await rig.postAndSettle(url, 'ehr', patients.slice(1));
    sent.push(...patients.slice(1));
    const caughtUp = await waitFor('the EVM anchor to catch up', async () => {
      const s = await sizes();
      return s.evm === s.latest && s.latest > down.latest ? s : undefined;
    }, 90_000);

    const settled = await rig.waitSettled(60_000);
    const report = await rig.invariants(expectedVersions('ehr', sent), url);
    // The EVM receipt of the newest checkpoint verifies against the chain.
    const anchors = (await (await fetch(`${url}/ledger/anchors`)).json()) as { size: number; rootHash: string; receipts: Array<{ kind: string }> };
    const evmReceipt = anchors.receipts.find((r) => r.kind === 'evm');
    const latestNote = await (await fetch(`${url}/ledger/checkpoint`)).text();
    const verification = evmReceipt
      ? await verifyEvmReceipt({ origin: rig.env().LOG_ORIGIN!, size: anchors.size, rootHash: new Uint8Array(Buffer.from(anchors.rootHash, 'hex')), signedNote: latestNote }, evmReceipt as unknown as AnchorReceipt, { rpcUrl: proxy.url, verifiers: [parseVerifierKey(rig.key.verifierKey)] })
      : undefined;
    console.log('evm-down:', JSON.stringify({ settled, beforeOutage: up1, duringOutage: down, evmFailuresLogged: failures.length, afterQuiet: quiet, caughtUp, verification, versions: report.versions, checkpoints: report.checkpoints }));

    expect(down.latest).toBeGreaterThan(up1.latest); // checkpoints kept being signed
    expect(down.evm).toBe(up1.evm); // ... but not anchored on the chain
    expect(caughtUp.evm).toBe(caughtUp.latest);
    expect(verification).toMatchObject({ valid: true });
    expect(settled).toBe('complete');
    expect(exactlyOnceView(report)).toEqual(EXACTLY_ONCE);
    expect(report.deadLetters).toEqual({});
  }, 175_000);

  // Was a bug (fixed: IntegrityLog.catchUpAnchors, called on every tick): a failed anchor was retried
  // only when a later flush wrote a new checkpoint, so with no new data the newest checkpoint stayed
  // unanchored on the chain.
  it('anchors the newest checkpoint once the node is back, even with no new data', () => {
    expect(unanchoredAfterQuiet).toBeUndefined();
  });
});
