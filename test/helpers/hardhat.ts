/**
 * Hardhat 2 as a local EVM for the EVM-anchor tests and the gas benchmark, in two modes:
 *
 * - in-process: Hardhat's network provider (EIP-1193) behind viem's `custom` transport;
 * - JSON-RPC node: `hardhat node --hostname 127.0.0.1 --port <free port>` as a child process (what
 *   `npx hardhat node` runs), reached with viem's `http` transport — the same eth_* path a Besu node
 *   serves. The node is always stopped by {@link HardhatNode.stop} (and killed if the test process exits).
 *
 * Hardhat compiles nothing here (see hardhat.config.cjs): the contract comes from evm-contract.ts.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { createRequire } from 'node:module';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createHash, randomUUID } from 'node:crypto';
import { bytesToHex, createPublicClient, custom, getAbiItem } from 'viem';
import type { Address, EIP1193RequestFn, Hash, Hex, PublicClient, Transport } from 'viem';
import { privateKeyToAccount } from 'viem/accounts';
import { AnchorConflictError, AnchorInputError } from '../../src/integrity/anchor.js';
import type { AnchorCheckpoint, AnchorReceipt } from '../../src/integrity/anchor.js';
import { abi } from '../../src/integrity/anchors/evm-contract.js';
import { EvmAnchorError, createEvmAnchor, decodeAnchorRevert, deployAnchorContract, originHashOf, setAnchorWriter } from '../../src/integrity/anchors/evm.js';
import type { EvmAnchor } from '../../src/integrity/anchors/evm.js';
import { generateEd25519Key, parseSignerKey, parseVerifierKey } from '../../src/integrity/note.js';
import { signCheckpoint } from '../../src/integrity/checkpoint.js';
import type { AnchorUnderTest } from '../integrity/anchor-conformance.js';

const anchoredEvent = getAbiItem({ abi, name: 'Anchored' });

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const requireCjs = createRequire(import.meta.url);

/** Hardhat's default chain id (hardhat.config.cjs keeps it). */
export const HARDHAT_CHAIN_ID = 31337;

/**
 * Private keys of Hardhat's default dev accounts #0–#2 (mnemonic "test test … junk"). They are public,
 * printed by `hardhat node` and documented by Hardhat: for tests only, never for a real chain.
 */
export const HARDHAT_KEYS = [
  '0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80',
  '0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d',
  '0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a',
] as const;

interface Eip1193Provider {
  request: EIP1193RequestFn;
}

let inProcess: Eip1193Provider | undefined;

const HARDHAT_CONFIG_PATH = path.join(ROOT, 'hardhat.config.cjs');

function hardhatEnv(): NodeJS.ProcessEnv {
  return { ...process.env, HARDHAT_DISABLE_TELEMETRY_PROMPT: 'true', HARDHAT_CONFIG: HARDHAT_CONFIG_PATH };
}

function restoreEnv(name: string, value: string | undefined): void {
  if (value === undefined) delete process.env[name];
  else process.env[name] = value;
}

/**
 * The in-process Hardhat network provider (one per process; state persists, so tests deploy their own
 * contract) and a viem transport over it.
 */
export function inProcessHardhat(): { provider: Eip1193Provider; transport: Transport } {
  if (!inProcess) {
    // Hardhat 2 reads its config path from HARDHAT_CONFIG (else it searches from the working directory).
    const saved = { config: process.env.HARDHAT_CONFIG, prompt: process.env.HARDHAT_DISABLE_TELEMETRY_PROMPT };
    Object.assign(process.env, { HARDHAT_CONFIG: HARDHAT_CONFIG_PATH, HARDHAT_DISABLE_TELEMETRY_PROMPT: 'true' });
    try {
      const hre = requireCjs('hardhat') as { network: { provider: Eip1193Provider } };
      inProcess = hre.network.provider;
    } finally {
      restoreEnv('HARDHAT_CONFIG', saved.config);
      restoreEnv('HARDHAT_DISABLE_TELEMETRY_PROMPT', saved.prompt);
    }
  }
  const provider = inProcess;
  return { provider, transport: custom(provider, { retryCount: 0 }) };
}

/** Asks the OS for a free TCP port on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** A running `hardhat node`. */
export interface HardhatNode {
  readonly url: string;
  readonly port: number;
  readonly child: ChildProcess;
  /** Stops the node (SIGTERM, then SIGKILL after 5 s) and waits for it to exit. Safe to call twice. */
  stop(): Promise<void>;
}

async function rpcAnswers(url: string): Promise<boolean> {
  try {
    const res = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'eth_chainId', params: [] }),
      signal: AbortSignal.timeout(1_000),
    });
    return res.ok;
  } catch {
    return false;
  }
}

/**
 * Starts `hardhat node` on a free port and waits until it answers `eth_chainId`.
 *
 * @param timeoutMs - how long to wait for the node to answer.
 */
export async function startHardhatNode(timeoutMs = 30_000): Promise<HardhatNode> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const bin = path.join(path.dirname(requireCjs.resolve('hardhat/package.json')), 'internal', 'cli', 'bootstrap.js');
  const child = spawn(process.execPath, [bin, 'node', '--hostname', '127.0.0.1', '--port', String(port)], {
    cwd: ROOT,
    env: hardhatEnv(),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const keep = (chunk: Buffer): void => {
    output = (output + chunk.toString('utf8')).slice(-4_000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const killOnExit = (): void => {
    child.kill('SIGKILL');
  };
  process.once('exit', killOnExit);

  const stop = async (): Promise<void> => {
    process.removeListener('exit', killOnExit);
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(timer);
  };

  const deadline = Date.now() + timeoutMs;
  while (!(await rpcAnswers(url))) {
    if (child.exitCode !== null || child.signalCode !== null) {
      await stop();
      throw new Error(`hardhat node exited before answering (code ${child.exitCode}):\n${output}`);
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`hardhat node did not answer on ${url} within ${timeoutMs} ms:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  return { url, port, child, stop };
}

// ---------------------------------------------------------------------------------------------------
// The EVM anchor checks both test files run (in-process and against `hardhat node`).

/** One chain connection for {@link evmAnchorSuite}. */
export interface EvmTestChain {
  /** viem transport to the chain (custom over the in-process provider, or http). */
  readonly transport: Transport;
  /** Set for the JSON-RPC mode: the anchor is then created with `rpcUrl` (the production path). */
  readonly rpcUrl?: string;
}

/** Connection options for createEvmAnchor/deployAnchorContract on `chain` with dev key `key`. */
export function connection(chain: EvmTestChain, key: string = HARDHAT_KEYS[0]): { rpcUrl?: string; transport?: Transport; privateKey: string; pollingIntervalMs: number } {
  return chain.rpcUrl !== undefined
    ? { rpcUrl: chain.rpcUrl, privateKey: key, pollingIntervalMs: 50 }
    : { transport: chain.transport, privateKey: key, pollingIntervalMs: 50 };
}

/** A checkpoint of a fictitious log: deterministic root per (origin, size, salt); the note is unsigned. */
export function testCheckpoint(origin: string, size: number, salt: string): AnchorCheckpoint {
  const rootHash = new Uint8Array(createHash('sha256').update(`${origin}\n${size}\n${salt}`).digest());
  return { origin, size, rootHash, signedNote: `${origin}\n${size}\n${Buffer.from(rootHash).toString('base64')}\n` };
}

/**
 * Setup for the shared anchor conformance suite: a fresh contract and an anchor that checks the
 * checkpoints' signatures with the log key the suite signs with.
 */
export async function conformanceSetup(chain: EvmTestChain): Promise<AnchorUnderTest> {
  const key = generateEd25519Key('fhir-anchor.test/conformance');
  const { address } = await deployAnchorContract({ ...connection(chain), chainId: HARDHAT_CHAIN_ID });
  const anchor = createEvmAnchor({
    name: 'evm',
    ...connection(chain),
    chainId: HARDHAT_CHAIN_ID,
    contractAddress: address,
    verifiers: [parseVerifierKey(key.verifierKey)],
  });
  return { anchor, signer: parseSignerKey(key.signerKey) };
}

/**
 * The EVM anchor checks: growing checkpoints, idempotence, conflicts, the contract's own refusals,
 * verification against the chain (and tampering), events read back, permissions and secret hygiene.
 * Every test deploys its own contract, so tests share a chain without sharing state.
 */
export function evmAnchorSuite(mode: string, chain: () => EvmTestChain): void {
  describe(`EVM anchor (${mode})`, () => {
    let salt: string;
    const origin = 'fhir-anchor.test/log';
    const cp = (size: number, o: string = origin): AnchorCheckpoint => testCheckpoint(o, size, salt);
    const publicClient = (): PublicClient => createPublicClient({ transport: chain().transport });
    const deploy = async (): Promise<Address> => (await deployAnchorContract({ ...connection(chain()), chainId: HARDHAT_CHAIN_ID })).address;
    const open: EvmAnchor[] = [];
    const anchorOn = (contractAddress: string | undefined, key?: string): EvmAnchor => {
      const a = createEvmAnchor({ name: 'evm-test', ...connection(chain(), key), chainId: HARDHAT_CHAIN_ID, ...(contractAddress ? { contractAddress } : {}) });
      open.push(a);
      return a;
    };

    beforeEach(() => {
      salt = randomUUID();
    });
    afterEach(async () => {
      await Promise.all(open.splice(0).map((a) => a.close()));
    });

    it('answers ping', async () => {
      const anchor = anchorOn(await deploy());
      await expect(anchor.ping()).resolves.toBeUndefined();
    });

    it('anchors growing checkpoints, one transaction each, with full evidence that verifies', async () => {
      const contract = await deploy();
      const anchor = anchorOn(contract);
      const receipts: AnchorReceipt[] = [];
      for (const size of [1, 2, 100, 10_000]) {
        const r = await anchor.anchor(cp(size));
        expect(r).toMatchObject({ kind: 'evm', anchor: 'evm-test', size, rootHash: Buffer.from(cp(size).rootHash).toString('hex') });
        expect(r.evidence).toMatchObject({ chainId: HARDHAT_CHAIN_ID, contract, originHash: originHashOf(origin) });
        expect(r.evidence.txHash).toMatch(/^0x[0-9a-f]{64}$/);
        expect(r.evidence.blockHash).toMatch(/^0x[0-9a-f]{64}$/);
        expect(new Date(r.anchoredAt).getTime()).toBe(Number(r.evidence.blockTimestamp) * 1000);
        expect(JSON.parse(JSON.stringify(r))).toEqual(r);
        receipts.push(r);
      }
      const blocks = receipts.map((r) => Number(r.evidence.blockNumber));
      expect([...blocks].sort((a, b) => a - b)).toEqual(blocks);
      expect(new Set(receipts.map((r) => r.evidence.txHash)).size).toBe(4);
      for (const r of receipts) await expect(anchor.verify(cp(r.size), r)).resolves.toEqual({ valid: true });
      // gas: one transaction per checkpoint, independent of the checkpoint's size
      const tx = await publicClient().getTransactionReceipt({ hash: receipts[3]!.evidence.txHash as Hash });
      expect(tx.gasUsed).toBeLessThan(100_000n);
    });

    it('re-anchoring the same checkpoint returns the existing record without a new transaction', async () => {
      const anchor = anchorOn(await deploy());
      const first = await anchor.anchor(cp(5));
      const head = await publicClient().getBlockNumber({ cacheTime: 0 });
      const again = await anchor.anchor(cp(5));
      expect(again).toEqual(first);
      expect(await publicClient().getBlockNumber({ cacheTime: 0 })).toBe(head);
      // a second anchor instance (e.g. after a restart) finds it too, from the contract and its event
      const other = anchorOn(first.evidence.contract as string);
      await expect(other.anchor(cp(5))).resolves.toEqual(first);
      await expect(other.verify(cp(5), first)).resolves.toEqual({ valid: true });
    });

    it('refuses a shrinking or equal size and a known root with another size (AnchorConflictError)', async () => {
      const anchor = anchorOn(await deploy());
      await anchor.anchor(cp(10));
      await expect(anchor.anchor(cp(9))).rejects.toThrow(AnchorConflictError);
      await expect(anchor.anchor(cp(10, origin))).resolves.toBeDefined(); // same root: idempotent
      const sameSizeOtherRoot = testCheckpoint(origin, 10, `${salt}-fork`);
      await expect(anchor.anchor(sameSizeOtherRoot)).rejects.toThrow(/sizes must grow and the latest anchored size is 10/);
      const knownRootOtherSize = { ...cp(10), size: 11 };
      await expect(anchor.anchor(knownRootOtherSize)).rejects.toThrow(AnchorConflictError);
      await expect(anchor.anchor(cp(11))).resolves.toMatchObject({ size: 11 });
    });

    it('refuses malformed checkpoints (AnchorInputError)', async () => {
      const anchor = anchorOn(await deploy());
      await expect(anchor.anchor({ ...cp(1), size: 0 })).rejects.toThrow(AnchorInputError);
      await expect(anchor.anchor({ ...cp(1), rootHash: new Uint8Array(31) })).rejects.toThrow(AnchorInputError);
      await expect(anchor.anchor({ ...cp(1), origin: '' })).rejects.toThrow(AnchorInputError);
    });

    it('the contract itself rejects a duplicate root, a shrinking or equal size, and a non-writer', async () => {
      const contract = await deploy();
      const account = privateKeyToAccount(HARDHAT_KEYS[0]);
      const client = publicClient();
      const originHash = originHashOf(origin);
      const root = bytesToHex(cp(3).rootHash);
      const simulate = (size: bigint, r: Hex, from = account) =>
        client.simulateContract({ account: from, address: contract, abi, functionName: 'anchor', args: [originHash, size, r] });
      await anchorOn(contract).anchor(cp(3));
      const revertName = async (p: Promise<unknown>): Promise<string | undefined> => {
        const err = await p.then(() => undefined, (e: unknown) => e);
        return decodeAnchorRevert(err)?.errorName ?? `no revert: ${String(err)}`;
      };
      expect(await revertName(simulate(4n, root))).toBe('RootAlreadyAnchored');
      expect(await revertName(simulate(2n, bytesToHex(cp(2).rootHash)))).toBe('SizeNotIncreasing');
      expect(await revertName(simulate(3n, bytesToHex(cp(30).rootHash)))).toBe('SizeNotIncreasing');
      expect(await revertName(simulate(0n, bytesToHex(cp(30).rootHash), account))).toBe('SizeNotIncreasing');
      expect(await revertName(simulate(4n, bytesToHex(cp(4).rootHash), privateKeyToAccount(HARDHAT_KEYS[1])))).toBe('NotWriter');
      // sizes are per origin: another log in the same contract starts from zero
      await expect(anchorOn(contract).anchor(cp(1, 'other.test/log'))).resolves.toMatchObject({ size: 1 });
      expect(await client.readContract({ address: contract, abi, functionName: 'latestSize', args: [originHash] })).toBe(3n);
    });

    it('only authorised writers anchor; the owner adds writers', async () => {
      const contract = await deploy();
      const writer = anchorOn(contract, HARDHAT_KEYS[1]);
      const err = await writer.anchor(cp(1)).then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(EvmAnchorError);
      expect(err).toMatchObject({ code: 'rejected', retryable: false });
      expect((err as Error).message).toContain(`${writer.writer} is not an authorised writer`);
      expect((err as Error).message).not.toContain(HARDHAT_KEYS[1].slice(2));
      await expect(
        setAnchorWriter({ ...connection(chain(), HARDHAT_KEYS[2]), contractAddress: contract, writer: writer.writer, allowed: true }),
      ).rejects.toThrow(/is not the contract owner/);
      await setAnchorWriter({ ...connection(chain()), contractAddress: contract, writer: writer.writer, allowed: true });
      await expect(writer.anchor(cp(1))).resolves.toMatchObject({ size: 1 });
    });

    it('verify catches tampered receipts and mismatched checkpoints', async () => {
      const anchor = anchorOn(await deploy());
      const r = await anchor.anchor(cp(7));
      await anchor.anchor(cp(8));
      const other = await anchor.anchor(cp(9));
      const ev = r.evidence;
      const tamper = (evidence: Record<string, string | number>, rest: Partial<AnchorReceipt> = {}): AnchorReceipt => ({ ...r, ...rest, evidence: { ...ev, ...evidence } });
      const cases: [string, AnchorCheckpoint, AnchorReceipt, RegExp][] = [
        ['wrong block hash', cp(7), tamper({ blockHash: other.evidence.blockHash! }), /block/],
        ['wrong block number', cp(7), tamper({ blockNumber: other.evidence.blockNumber! }), /block/],
        ['wrong tx hash', cp(7), tamper({ txHash: other.evidence.txHash! }), /did not emit Anchored|block/],
        ['unknown tx hash', cp(7), tamper({ txHash: `0x${'ab'.repeat(32)}` }), /not on chain/],
        ['wrong timestamp', cp(7), tamper({ blockTimestamp: Number(ev.blockTimestamp) + 1 }, { anchoredAt: new Date((Number(ev.blockTimestamp) + 1) * 1000).toISOString() }), /timestamp/],
        ['wrong anchoredAt', cp(7), tamper({}, { anchoredAt: '2000-01-01T00:00:00.000Z' }), /anchoredAt/],
        ['wrong chain', cp(7), tamper({ chainId: 1 }), /chain/],
        ['wrong contract', cp(7), tamper({ contract: '0x000000000000000000000000000000000000dEaD' }), /contract/],
        ['wrong origin hash', cp(7), tamper({ originHash: originHashOf('evil') }), /origin/],
        ['wrong receipt root', cp(7), tamper({}, { rootHash: other.rootHash }), /root/],
        ['wrong checkpoint root', testCheckpoint(origin, 7, 'forged'), r, /root/],
        ['wrong size', cp(9), { ...r, size: 9 }, /root/],
        ['wrong kind', cp(7), { ...r, kind: 'log' }, /kind/],
        ['missing evidence', cp(7), { ...r, evidence: {} }, /evidence/],
      ];
      for (const [label, checkpoint, receipt, reason] of cases) {
        const result = await anchor.verify(checkpoint, receipt);
        expect({ label, valid: result.valid }).toEqual({ label, valid: false });
        if (!result.valid) expect({ label, reason: result.reason }).toEqual({ label, reason: expect.stringMatching(reason) });
      }
      await expect(anchor.verify(cp(7), r)).resolves.toEqual({ valid: true });
    });

    it('verify fails when the chain has no such record', async () => {
      const a = anchorOn(await deploy());
      const b = anchorOn(await deploy());
      const r = await a.anchor(cp(4));
      // the same evidence presented against another deployment of the contract (its own address)
      const moved = { ...r, evidence: { ...r.evidence, contract: b.contractAddress()! } };
      await expect(b.verify(cp(4), moved)).resolves.toEqual({ valid: false, reason: expect.stringMatching(/no record/) });
      // a root that was never anchored, with otherwise genuine evidence
      const never = testCheckpoint(origin, 4, 'never');
      const forged = { ...r, rootHash: Buffer.from(never.rootHash).toString('hex') };
      await expect(a.verify(never, forged)).resolves.toEqual({ valid: false, reason: expect.stringMatching(/no record/) });
    });

    it('Anchored events are readable back from the chain (eth_getLogs)', async () => {
      const contract = await deploy();
      const anchor = anchorOn(contract);
      const receipts = [await anchor.anchor(cp(1)), await anchor.anchor(cp(50)), await anchor.anchor(cp(51, 'other.test/log'))];
      const logs = await publicClient().getLogs({ address: contract, event: anchoredEvent, fromBlock: 0n, toBlock: 'latest' });
      expect(logs.map((l) => ({ originHash: l.args.originHash, size: l.args.size, root: l.args.root, tx: l.transactionHash }))).toEqual([
        { originHash: originHashOf(origin), size: 1n, root: bytesToHex(cp(1).rootHash), tx: receipts[0]!.evidence.txHash },
        { originHash: originHashOf(origin), size: 50n, root: bytesToHex(cp(50).rootHash), tx: receipts[1]!.evidence.txHash },
        { originHash: originHashOf('other.test/log'), size: 51n, root: bytesToHex(cp(51, 'other.test/log').rootHash), tx: receipts[2]!.evidence.txHash },
      ]);
      for (const [i, l] of logs.entries()) expect(Number(l.args.timestamp)).toBe(receipts[i]!.evidence.blockTimestamp);
      // filtered by the indexed origin hash
      const mine = await publicClient().getLogs({ address: contract, event: anchoredEvent, args: { originHash: originHashOf(origin) }, fromBlock: 0n });
      expect(mine).toHaveLength(2);
      // on chain: only the origin hash, size, root (and block timestamp) — nothing of the note
      const tx = await publicClient().getTransaction({ hash: receipts[0]!.evidence.txHash as Hash });
      expect(tx.input.length).toBe(2 + 2 * (4 + 3 * 32));
    });

    it('serialises concurrent anchor() calls (no nonce races)', async () => {
      const anchor = anchorOn(await deploy());
      const receipts = await Promise.all([anchor.anchor(cp(1)), anchor.anchor(cp(2)), anchor.anchor(cp(3)), anchor.anchor(cp(3))]);
      expect(receipts.map((r) => r.size)).toEqual([1, 2, 3, 3]);
      expect(receipts[3]).toEqual(receipts[2]);
      for (const r of receipts) await expect(anchor.verify(cp(r.size), r)).resolves.toEqual({ valid: true });
    });

    it('deploys a contract on first use when none is configured', async () => {
      const anchor = anchorOn(undefined);
      expect(anchor.contractAddress()).toBeUndefined();
      await expect(anchor.verify(cp(1), { kind: 'evm', anchor: 'evm-test', size: 1, rootHash: '00', anchoredAt: '', evidence: {} })).resolves.toMatchObject({ valid: false });
      const r = await anchor.anchor(cp(1));
      expect(anchor.contractAddress()).toBe(r.evidence.contract);
      await expect(anchor.verify(cp(1), r)).resolves.toEqual({ valid: true });
    });

    it('refuses a wrong chain id and an address without contract code', async () => {
      const wrongChain = createEvmAnchor({ name: 'x', ...connection(chain()), chainId: 1, contractAddress: await deploy() });
      await expect(wrongChain.ping()).rejects.toMatchObject({ code: 'wrong-chain', retryable: false });
      await expect(wrongChain.anchor(cp(1))).rejects.toThrow(/serves chain 31337, not the configured chain 1/);
      const noCode = createEvmAnchor({ name: 'x', ...connection(chain()), contractAddress: '0x000000000000000000000000000000000000dEaD' });
      await expect(noCode.anchor(cp(1))).rejects.toMatchObject({ code: 'no-contract', retryable: false });
      await expect(noCode.ping()).resolves.toBeUndefined();
    });

    it('with verifier keys, anchors only checkpoints signed by the log', async () => {
      const key = generateEd25519Key(origin);
      const stranger = generateEd25519Key(origin);
      const anchor = createEvmAnchor({ name: 'evm-test', ...connection(chain()), contractAddress: await deploy(), verifiers: [parseVerifierKey(key.verifierKey)] });
      open.push(anchor);
      const signed = (size: number, signer: string): AnchorCheckpoint => {
        const c = cp(size);
        return { ...c, signedNote: signCheckpoint({ origin, size, rootHash: c.rootHash }, parseSignerKey(signer)) };
      };
      await expect(anchor.anchor(signed(1, stranger.signerKey))).rejects.toThrow(AnchorInputError);
      await expect(anchor.anchor({ ...signed(2, key.signerKey), size: 3 })).rejects.toThrow(/does not match/);
      await expect(anchor.anchor(signed(2, key.signerKey))).resolves.toMatchObject({ size: 2 });
    });

    it('is closed after close()', async () => {
      const anchor = anchorOn(await deploy());
      await anchor.close();
      await expect(anchor.ping()).rejects.toMatchObject({ code: 'closed' });
      await expect(anchor.anchor(cp(1))).rejects.toMatchObject({ code: 'closed' });
    });
  });
}
