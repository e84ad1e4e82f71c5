/**
 * Gas per anchored record for the EVM anchor: one `FhirAnchorLog.anchor` transaction per checkpoint,
 * divided by the records the checkpoint adds, at batch sizes 1, 100 and 10,000, on the in-process
 * Hardhat network (hardfork "merge" = paris, see hardhat.config.cjs). Gas is deterministic, so one run
 * suffices. Prints a markdown table for docs/benchmarks.md (`runGas` returns it to bench/run.ts).
 *
 *   node --import tsx bench/integrity-gas.ts
 *
 * "first" is a log's first checkpoint (its latest-size slot goes from zero to non-zero, +17,100 gas);
 * "steady" is every later one (median of CHECKPOINTS - 1). Gas depends on neither the batch size nor
 * how many roots the contract already holds: each checkpoint writes one new slot and updates one.
 */
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { createPublicClient, custom } from 'viem';
import type { EIP1193RequestFn, Hash } from 'viem';
import { createEvmAnchor, deployAnchorContract } from '../src/integrity/anchors/evm.js';
import { isMain } from './lib.js';

/** Hardhat dev account #0 (public, printed by `hardhat node`): benchmark use only. */
const DEV_KEY = '0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80';
const BATCH_SIZES = [1, 100, 10_000];
const CHECKPOINTS = 5;

const median = (xs: bigint[]): bigint => [...xs].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))[Math.floor(xs.length / 2)]!;
const fmt = (n: bigint | number): string => Number(n).toLocaleString('en-US', { maximumFractionDigits: 2 });

export interface GasResult {
  readonly markdown: string;
  /** Steady-state gas per record, by records per checkpoint. */
  readonly perRecord: Map<number, number>;
}

export async function runGas(): Promise<GasResult> {
  process.env.HARDHAT_CONFIG = fileURLToPath(new URL('../hardhat.config.cjs', import.meta.url));
  process.env.HARDHAT_DISABLE_TELEMETRY_PROMPT = 'true';
  const hre = createRequire(import.meta.url)('hardhat') as { network: { provider: { request: EIP1193RequestFn } } };
  const transport = custom(hre.network.provider, { retryCount: 0 });
  const client = createPublicClient({ transport });

  const deployed = await deployAnchorContract({ transport, privateKey: DEV_KEY, pollingIntervalMs: 20 });
  const deployGas = (await client.getTransactionReceipt({ hash: deployed.txHash })).gasUsed;

  const rows: string[] = [];
  const perRecord = new Map<number, number>();
  for (const batch of BATCH_SIZES) {
    const origin = `bench.fhir-anchor.test/log-${batch}`;
    const anchor = createEvmAnchor({ name: 'bench', transport, privateKey: DEV_KEY, contractAddress: deployed.address, pollingIntervalMs: 20 });
    const gas: bigint[] = [];
    for (let i = 1; i <= CHECKPOINTS; i++) {
      const size = i * batch;
      const rootHash = new Uint8Array(createHash('sha256').update(`${origin}/${size}`).digest());
      const receipt = await anchor.anchor({ origin, size, rootHash, signedNote: '' });
      gas.push((await client.getTransactionReceipt({ hash: receipt.evidence.txHash as Hash })).gasUsed);
    }
    await anchor.close();
    const first = gas[0]!;
    const steady = median(gas.slice(1));
    perRecord.set(batch, Number(steady) / batch);
    rows.push(`| ${fmt(batch)} | ${fmt(first)} | ${fmt(steady)} | ${fmt(Number(steady) / batch)} |`);
  }

  const markdown = `### EVM anchor gas (FhirAnchorLog, solc 0.8.30, optimizer 200 runs, evmVersion paris; Hardhat in-process)

| records per checkpoint | gas, first checkpoint of a log | gas per checkpoint (steady) | gas per record (steady) |
|---:|---:|---:|---:|
${rows.join('\n')}

One transaction per checkpoint, never per record. Contract deployment: ${fmt(deployGas)} gas (once per chain).`;
  return { markdown, perRecord };
}

if (isMain(import.meta.url)) {
  console.log((await runGas()).markdown);
  process.exit(0);
}
