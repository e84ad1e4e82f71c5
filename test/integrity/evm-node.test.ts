/**
 * EVM anchor against `hardhat node` over HTTP JSON-RPC (viem `http` transport): the eth_* path a
 * Besu node serves. The node is a child process on a free port, stopped in afterAll even on failure.
 */
import { http } from 'viem';
import { EvmAnchorError, createEvmAnchor, deployAnchorContract } from '../../src/integrity/anchors/evm.js';
import { HARDHAT_KEYS, conformanceSetup, evmAnchorSuite, startHardhatNode, testCheckpoint } from '../helpers/hardhat.js';
import type { EvmTestChain, HardhatNode } from '../helpers/hardhat.js';
import { anchorConformance } from './anchor-conformance.js';

let node: HardhatNode | undefined;

beforeAll(async () => {
  node = await startHardhatNode();
}, 60_000);

afterAll(async () => {
  await node?.stop();
});

const chain = (): EvmTestChain => {
  if (!node) throw new Error('hardhat node did not start');
  return { transport: http(node.url, { retryCount: 0 }), rpcUrl: node.url };
};

anchorConformance('evm (hardhat node, JSON-RPC)', () => conformanceSetup(chain()), async () => {});

evmAnchorSuite('hardhat node over JSON-RPC', chain);

describe('EVM anchor when the node goes down', () => {
  it('ping, anchor and verify throw retryable errors', async () => {
    if (!node) throw new Error('hardhat node did not start');
    const { address } = await deployAnchorContract({ rpcUrl: node.url, privateKey: HARDHAT_KEYS[0], pollingIntervalMs: 50 });
    const anchor = createEvmAnchor({ name: 'evm-node', rpcUrl: node.url, privateKey: HARDHAT_KEYS[0], contractAddress: address, pollingIntervalMs: 50, requestTimeoutMs: 2_000 });
    const before = await anchor.anchor(testCheckpoint('down.test/log', 1, 'x'));
    await expect(anchor.ping()).resolves.toBeUndefined();

    await node.stop();
    const calls = [() => anchor.ping(), () => anchor.anchor(testCheckpoint('down.test/log', 2, 'x')), () => anchor.verify(testCheckpoint('down.test/log', 1, 'x'), before)];
    for (const call of calls) {
      const err = await call().then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(EvmAnchorError);
      expect(err).toMatchObject({ code: 'unavailable', retryable: true });
      expect((err as Error).message).toMatch(/did not answer/);
    }
    await anchor.close();
  });
});
