/**
 * EVM ledger anchor: records each signed checkpoint with one transaction to the `FhirAnchorLog`
 * contract (contracts/FhirAnchorLog.sol) on an EVM chain — a permissioned Besu/QBFT network in
 * production, Hardhat in tests — and verifies receipts by reading the chain back.
 *
 * What goes on chain: keccak256 of the checkpoint's origin line, the tree size and the 32-byte root.
 * Nothing else — never a record, an identifier or the signed note. The writer key is injected and
 * never appears in errors or logs; RPC URLs are reduced to their origin in error messages (they may
 * carry API keys in the path).
 *
 * @see docs/decisions-evm.md
 * @packageDocumentation
 */
import {
  BaseError,
  ContractFunctionRevertedError,
  HttpRequestError,
  InsufficientFundsError,
  TimeoutError,
  TransactionReceiptNotFoundError,
  WaitForTransactionReceiptTimeoutError,
  WebSocketRequestError,
  SocketClosedError,
  bytesToHex,
  createPublicClient,
  decodeErrorResult,
  createWalletClient,
  defineChain,
  getAddress,
  http,
  isAddress,
  isAddressEqual,
  keccak256,
  parseEventLogs,
  stringToBytes,
} from 'viem';
import type { Address, Chain, Hash, Hex, PublicClient, Transport } from 'viem';
import { generatePrivateKey, privateKeyToAccount } from 'viem/accounts';
import type { PrivateKeyAccount } from 'viem/accounts';
import type { Logger } from '../../platform/logger.js';
import type { AnchorCheckpoint, AnchorReceipt, AnchorVerification, LedgerAnchor } from '../anchor.js';
import { AnchorConflictError, AnchorInputError } from '../anchor.js';
import { openCheckpoint } from '../checkpoint.js';
import { bytesEqual, toHex } from '../encoding.js';
import type { NoteVerifier } from '../note.js';
import { abi, bytecode, deployedBytecode } from './evm-contract.js';

/** The `kind` of every EVM anchor and of its receipts. */
export const EVM_ANCHOR_KIND = 'evm';

/** Default receipt/block polling interval (ms): Besu/QBFT block periods are typically 1–5 s. */
const DEFAULT_POLLING_INTERVAL_MS = 1_000;
/** Default wait for a mined receipt (ms) before anchor() gives up with a retryable error. */
const DEFAULT_RECEIPT_TIMEOUT_MS = 120_000;
/** Default single JSON-RPC request timeout (ms) for the http transport. */
const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;
/** http transport retries per request (viem backs off exponentially from `retryDelay`). */
const HTTP_RETRY_COUNT = 2;
const HTTP_RETRY_DELAY_MS = 100;

/** Why an EVM anchor operation failed; `retryable` says whether trying again later can succeed. */
export type EvmAnchorErrorCode =
  /** Bad options (missing/invalid key, address, URL…). */
  | 'config'
  /** The node did not answer (down, timeout, network). */
  | 'unavailable'
  /** The node serves another chain than the configured `chainId`. */
  | 'wrong-chain'
  /** No contract code at the configured address. */
  | 'no-contract'
  /** The contract refused the transaction for a reason other than a conflict (e.g. not a writer). */
  | 'rejected'
  /** The chain's record and its events disagree (pruned logs, misbehaving node). */
  | 'inconsistent'
  /** The transaction was mined but reverted. */
  | 'reverted'
  /** The writer account cannot pay for gas. */
  | 'insufficient-funds'
  /** The anchor was closed. */
  | 'closed';

/**
 * Operational error thrown by the EVM anchor. Messages are readable and never contain the private key
 * or a full RPC URL. Queue workers should retry when `retryable` and dead-letter otherwise. Checkpoints
 * that contradict the chain raise {@link AnchorConflictError}; malformed ones {@link AnchorInputError}.
 */
export class EvmAnchorError extends Error {
  override readonly name = 'EvmAnchorError';
  constructor(
    message: string,
    readonly code: EvmAnchorErrorCode,
    readonly retryable: boolean,
  ) {
    super(message);
  }
}

/** Options for {@link createEvmAnchor}. Give exactly one of `rpcUrl` and `transport`. */
export interface EvmAnchorOptions {
  /** Anchor instance name from config (receipts carry it). */
  readonly name: string;
  /** JSON-RPC endpoint (http/https), e.g. a Besu node's `--rpc-http` URL. */
  readonly rpcUrl?: string;
  /** A viem transport instead of `rpcUrl` (e.g. `custom(hardhatProvider)` in tests). */
  readonly transport?: Transport;
  /** Expected chain id; when set, a node serving another chain is refused. Otherwise read from the node. */
  readonly chainId?: number;
  /**
   * The deployed `FhirAnchorLog`. When absent, the first `anchor()` deploys one and logs its address
   * at warn level — set it in config afterwards, or every restart deploys a new contract.
   */
  readonly contractAddress?: string;
  /** Writer account's secp256k1 private key (32-byte hex, `0x` optional). Must be a writer of the contract. */
  readonly privateKey: string;
  /** Blocks to wait for (including the one holding the tx) before a receipt is returned; default 1. */
  readonly confirmations?: number;
  readonly logger?: Logger;
  /** Receipt polling interval in ms; default 1000. */
  readonly pollingIntervalMs?: number;
  /** How long anchor() waits for a mined receipt, in ms; default 120000. */
  readonly receiptTimeoutMs?: number;
  /** Per-request timeout for `rpcUrl` in ms; default 10000. */
  readonly requestTimeoutMs?: number;
  /**
   * The log's verifier key(s). When given, only checkpoints whose signed note they verify (and whose
   * size and root match the note) are sent — a stolen writer key alone cannot then be driven by a
   * forged checkpoint through this process. Without them the note is not checked.
   */
  readonly verifiers?: readonly NoteVerifier[];
}

/** The EVM anchor: a {@link LedgerAnchor} plus the contract it writes to. */
export interface EvmAnchor extends LedgerAnchor {
  /** The contract address, once configured or deployed. */
  contractAddress(): Address | undefined;
  /** The writer account's address (public). */
  readonly writer: Address;
}

/** On-chain record of a root: zero size means "never anchored". */
interface OnChainRecord {
  readonly size: bigint;
  readonly timestamp: bigint;
  readonly blockNumber: bigint;
}

/** What a receipt's evidence records, before it is flattened to JSON numbers and strings. */
interface Evidence {
  readonly chainId: number;
  readonly contract: Address;
  readonly txHash: Hash;
  readonly blockNumber: bigint;
  readonly blockHash: Hash;
  /** Block timestamp in seconds since the epoch (what the contract stores). */
  readonly blockTimestamp: bigint;
  readonly originHash: Hex;
}

/** keccak256 of an origin line (UTF-8): the key under which a log's checkpoints are stored on chain. */
export function originHashOf(origin: string): Hex {
  return keccak256(stringToBytes(origin));
}

/** Connection options shared by {@link deployAnchorContract} and {@link setAnchorWriter}. */
export interface EvmConnectionOptions {
  readonly rpcUrl?: string;
  readonly transport?: Transport;
  readonly chainId?: number;
  /** The sending account's private key (the deployer becomes owner and first writer). */
  readonly privateKey: string;
  readonly confirmations?: number;
  readonly pollingIntervalMs?: number;
  readonly receiptTimeoutMs?: number;
  readonly requestTimeoutMs?: number;
}

/** Result of {@link deployAnchorContract}. */
export interface DeployedAnchorContract {
  readonly address: Address;
  readonly chainId: number;
  readonly txHash: Hash;
  readonly blockNumber: number;
  /** The deployer: owner and first writer. */
  readonly owner: Address;
}

interface Connection {
  readonly transport: Transport;
  readonly account: PrivateKeyAccount;
  readonly publicClient: PublicClient;
  readonly redact: (text: string) => string;
  readonly pollingInterval: number;
}

function connect(opts: EvmConnectionOptions): Connection {
  if ((opts.rpcUrl === undefined) === (opts.transport === undefined)) {
    throw new EvmAnchorError('give exactly one of rpcUrl and transport', 'config', false);
  }
  let transport: Transport;
  let redact = (text: string): string => text;
  if (opts.rpcUrl !== undefined) {
    const rpcUrl = opts.rpcUrl;
    let parsed: URL;
    try {
      parsed = new URL(rpcUrl);
    } catch {
      throw new EvmAnchorError('rpcUrl is not a valid URL', 'config', false);
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
      throw new EvmAnchorError(`rpcUrl must be http(s), not ${parsed.protocol}`, 'config', false);
    }
    // Error texts may quote the URL; keep only scheme://host:port (paths and userinfo can hold API keys).
    if (parsed.username || parsed.password || parsed.pathname !== '/' || parsed.search) {
      const shown = `${parsed.origin}/…`;
      const secrets = [rpcUrl, parsed.href, `${parsed.origin}${parsed.pathname}${parsed.search}`, `${parsed.host}${parsed.pathname}${parsed.search}`].sort((x, y) => y.length - x.length);
      const pattern = new RegExp(secrets.map((x) => x.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|'), 'g');
      redact = (text) => text.replace(pattern, shown);
    }
    transport = http(rpcUrl, {
      timeout: opts.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS,
      retryCount: HTTP_RETRY_COUNT,
      retryDelay: HTTP_RETRY_DELAY_MS,
    });
  } else {
    transport = opts.transport as Transport;
  }
  const account = accountFrom(opts.privateKey);
  if (opts.chainId !== undefined && (!Number.isSafeInteger(opts.chainId) || opts.chainId <= 0)) {
    throw new EvmAnchorError('chainId must be a positive integer', 'config', false);
  }
  if (opts.confirmations !== undefined && (!Number.isSafeInteger(opts.confirmations) || opts.confirmations < 1)) {
    throw new EvmAnchorError('confirmations must be an integer >= 1', 'config', false);
  }
  const pollingInterval = opts.pollingIntervalMs ?? DEFAULT_POLLING_INTERVAL_MS;
  const publicClient = createPublicClient({ transport, pollingInterval, cacheTime: 0 });
  return { transport, account, publicClient, redact, pollingInterval };
}

function accountFrom(privateKey: string): PrivateKeyAccount {
  // Never echo the key (or any part of it) in the message.
  const hex = typeof privateKey === 'string' ? (privateKey.startsWith('0x') ? privateKey : `0x${privateKey}`) : '';
  if (!/^0x[0-9a-fA-F]{64}$/.test(hex)) {
    throw new EvmAnchorError('privateKey must be 32 bytes of hex (64 hex digits, 0x optional)', 'config', false);
  }
  try {
    return privateKeyToAccount(hex as Hex);
  } catch {
    throw new EvmAnchorError('privateKey is not a valid secp256k1 private key', 'config', false);
  }
}

function chainFor(id: number): Chain {
  return defineChain({
    id,
    name: `chain ${id}`,
    nativeCurrency: { name: 'Ether', symbol: 'ETH', decimals: 18 },
    rpcUrls: { default: { http: [] } },
  });
}

/** Turns any failure into an anchor error with a readable, secret-free message. */
function toAnchorError(err: unknown, action: string, redact: (text: string) => string): Error {
  if (err instanceof EvmAnchorError || err instanceof AnchorConflictError || err instanceof AnchorInputError) return err;
  if (err instanceof BaseError) {
    const revert = decodeAnchorRevert(err);
    if (revert) {
      if (revert.errorName === 'SizeNotIncreasing' || revert.errorName === 'RootAlreadyAnchored') {
        return new AnchorConflictError(`${action}: ${describeRevert(revert)}`);
      }
      return new EvmAnchorError(`${action}: ${describeRevert(revert)}`, 'rejected', false);
    }
    if (err.walk((e) => e instanceof InsufficientFundsError)) {
      return new EvmAnchorError(`${action}: the writer account cannot pay for gas (insufficient funds)`, 'insufficient-funds', false);
    }
    if (err instanceof WaitForTransactionReceiptTimeoutError) {
      return new EvmAnchorError(`${action}: timed out waiting for the transaction to be mined`, 'unavailable', true);
    }
    const network = err.walk(
      (e) => e instanceof HttpRequestError || e instanceof TimeoutError || e instanceof WebSocketRequestError || e instanceof SocketClosedError,
    );
    const detail = redact([err.shortMessage, err.details].filter((s) => s && s.length > 0).join(' — '));
    if (network) return new EvmAnchorError(`${action}: the EVM node did not answer (${detail})`, 'unavailable', true);
    // Other JSON-RPC errors (nonce races, pool full, node syncing) are transient more often than not.
    return new EvmAnchorError(`${action}: ${detail}`, 'unavailable', true);
  }
  const message = err instanceof Error ? err.message : String(err);
  return new EvmAnchorError(`${action}: ${redact(message)}`, 'unavailable', true);
}

/** A decoded contract revert: the custom error's name and arguments (`Error` with the reason string for `require`). */
export interface AnchorRevert {
  readonly errorName: string;
  readonly args: readonly unknown[];
}

/**
 * Finds and decodes `FhirAnchorLog` revert data anywhere in a viem error's cause chain. Nodes report
 * reverts differently (JSON-RPC code 3 with `data`; Besu's -32000 "Execution reverted"; Hardhat's
 * in-process provider without a code), and viem only decodes some of them itself.
 *
 * @returns the revert, or undefined when the error carries no decodable revert data.
 */
export function decodeAnchorRevert(err: unknown): AnchorRevert | undefined {
  if (!(err instanceof BaseError)) return undefined;
  const decoded = err.walk((e) => e instanceof ContractFunctionRevertedError);
  if (decoded instanceof ContractFunctionRevertedError && decoded.data) {
    return { errorName: decoded.data.errorName, args: decoded.data.args ?? [] };
  }
  let found: AnchorRevert | undefined;
  err.walk((e) => {
    const raw = typeof e === 'object' && e !== null && 'data' in e ? (e as { data: unknown }).data : undefined;
    const nested = typeof raw === 'object' && raw !== null && 'data' in raw ? (raw as { data: unknown }).data : raw;
    if (typeof nested !== 'string' || !/^0x[0-9a-fA-F]{8}/.test(nested)) return false;
    try {
      const result = decodeErrorResult({ abi, data: nested as Hex });
      found = { errorName: result.errorName, args: result.args ?? [] };
      return true;
    } catch {
      return false;
    }
  });
  return found;
}

function describeRevert(revert: AnchorRevert): string {
  const { errorName: name, args } = revert;
  switch (name) {
    case 'NotWriter':
      return `account ${String(args[0])} is not an authorised writer of the contract (the owner must call setWriter)`;
    case 'NotOwner':
      return `account ${String(args[0])} is not the contract owner`;
    case 'RootAlreadyAnchored':
      return `the contract already holds this root (size ${String(args[2])}); duplicate roots are refused`;
    case 'SizeNotIncreasing':
      return `the contract refused size ${String(args[1])}: sizes must grow and the latest anchored size is ${String(args[2])}`;
    case 'ZeroAddress':
      return 'the zero address is not allowed';
    case 'Error':
      return `the contract reverted (${String(args[0])})`;
    default:
      return `the contract reverted (${name})`;
  }
}

function checkCheckpoint(cp: AnchorCheckpoint): void {
  if (typeof cp.origin !== 'string' || cp.origin.length === 0) throw new AnchorInputError('checkpoint origin must be a non-empty string');
  if (!Number.isSafeInteger(cp.size) || cp.size < 1) {
    throw new AnchorInputError('checkpoint size must be a positive safe integer (the contract refuses size 0)');
  }
  if (!(cp.rootHash instanceof Uint8Array) || cp.rootHash.length !== 32) throw new AnchorInputError('checkpoint root hash must be 32 bytes');
}

function checkSignedNote(cp: AnchorCheckpoint, verifiers: readonly NoteVerifier[]): void {
  let opened;
  try {
    opened = openCheckpoint(cp.signedNote, cp.origin, verifiers).checkpoint;
  } catch (err) {
    throw new AnchorInputError(`checkpoint is not signed by the log: ${(err as Error).message}`);
  }
  if (opened.size !== cp.size || !bytesEqual(opened.rootHash, cp.rootHash)) {
    throw new AnchorInputError('signed note does not match the checkpoint size and root');
  }
}

const isCount = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
const isoSeconds = (seconds: number): string => new Date(seconds * 1000).toISOString();
const HASH_RE = /^0x[0-9a-fA-F]{64}$/;

/**
 * Deploys a fresh `FhirAnchorLog` (first use of a chain). The deploying account becomes the owner and
 * the first writer; add the middleware's writer with {@link setAnchorWriter} if it is another account.
 *
 * @throws EvmAnchorError on a bad option, an unreachable node or a failed deployment.
 */
export async function deployAnchorContract(opts: EvmConnectionOptions): Promise<DeployedAnchorContract> {
  return deployWith(connect(opts), opts);
}

async function deployWith(conn: Connection, opts: EvmConnectionOptions): Promise<DeployedAnchorContract> {
  const action = 'deploying the anchor contract';
  try {
    const chainId = await conn.publicClient.getChainId();
    if (opts.chainId !== undefined && opts.chainId !== chainId) {
      throw new EvmAnchorError(`${action}: the node serves chain ${chainId}, not the configured ${opts.chainId}`, 'wrong-chain', false);
    }
    const wallet = createWalletClient({ account: conn.account, chain: chainFor(chainId), transport: conn.transport });
    const txHash = await wallet.deployContract({ abi, bytecode });
    const receipt = await conn.publicClient.waitForTransactionReceipt({
      hash: txHash,
      confirmations: opts.confirmations ?? 1,
      pollingInterval: conn.pollingInterval,
      timeout: opts.receiptTimeoutMs ?? DEFAULT_RECEIPT_TIMEOUT_MS,
    });
    if (receipt.status !== 'success' || !receipt.contractAddress) {
      throw new EvmAnchorError(`${action}: the deployment transaction ${txHash} reverted`, 'reverted', false);
    }
    return { address: getAddress(receipt.contractAddress), chainId, txHash, blockNumber: Number(receipt.blockNumber), owner: conn.account.address };
  } catch (err) {
    throw toAnchorError(err, action, conn.redact);
  }
}

/**
 * Allows (or forbids) `writer` to anchor on `contractAddress`; must be sent by the contract owner.
 *
 * @returns the transaction hash.
 * @throws EvmAnchorError when the sender is not the owner or the node fails.
 */
export async function setAnchorWriter(
  opts: EvmConnectionOptions & { readonly contractAddress: string; readonly writer: string; readonly allowed: boolean },
): Promise<Hash> {
  const conn = connect(opts);
  const action = 'setting an anchor writer';
  if (!isAddress(opts.contractAddress) || !isAddress(opts.writer)) {
    throw new EvmAnchorError(`${action}: contractAddress and writer must be 20-byte hex addresses`, 'config', false);
  }
  try {
    const chainId = await conn.publicClient.getChainId();
    const wallet = createWalletClient({ account: conn.account, chain: chainFor(chainId), transport: conn.transport });
    const { request } = await conn.publicClient.simulateContract({
      account: conn.account,
      address: opts.contractAddress,
      abi,
      functionName: 'setWriter',
      args: [opts.writer, opts.allowed],
    });
    const hash = await wallet.writeContract({ ...request, chain: chainFor(chainId) });
    const receipt = await conn.publicClient.waitForTransactionReceipt({
      hash,
      confirmations: opts.confirmations ?? 1,
      pollingInterval: conn.pollingInterval,
      timeout: opts.receiptTimeoutMs ?? DEFAULT_RECEIPT_TIMEOUT_MS,
    });
    if (receipt.status !== 'success') throw new EvmAnchorError(`${action}: transaction ${hash} reverted`, 'reverted', false);
    return hash;
  } catch (err) {
    throw toAnchorError(err, action, conn.redact);
  }
}

/**
 * Creates an EVM {@link LedgerAnchor}.
 *
 * - `anchor()` sends one `anchor(originHash, size, root)` transaction per checkpoint and waits for
 *   `confirmations` blocks. It is idempotent: when the contract already holds the root with the same
 *   size, it returns a receipt for that record (read from the contract and its `Anchored` event)
 *   instead of sending anything. Calls are serialised, so one process never races itself for nonces.
 * - `verify()` reads the contract's record for the root, the transaction receipt, its `Anchored`
 *   event and the block, and checks each against the checkpoint and the receipt.
 * - `ping()` calls `eth_chainId` and `eth_blockNumber`.
 *
 * Errors: {@link AnchorConflictError} when the chain contradicts the checkpoint (size not above the
 * latest anchored one, or the root anchored with another size); {@link AnchorInputError} for a malformed
 * checkpoint; {@link EvmAnchorError} otherwise (`retryable` for an unreachable node or a timeout).
 *
 * @throws EvmAnchorError (code `config`) for invalid options; never echoes the private key.
 */
export function createEvmAnchor(opts: EvmAnchorOptions): EvmAnchor {
  if (typeof opts.name !== 'string' || opts.name.length === 0) throw new EvmAnchorError('name must be a non-empty string', 'config', false);
  const conn = connect(opts);
  const { publicClient, account, redact } = conn;
  const log = opts.logger?.child({ anchor: opts.name, kind: EVM_ANCHOR_KIND });
  const confirmations = opts.confirmations ?? 1;
  const receiptTimeout = opts.receiptTimeoutMs ?? DEFAULT_RECEIPT_TIMEOUT_MS;
  if (opts.contractAddress !== undefined && !isAddress(opts.contractAddress, { strict: false })) {
    throw new EvmAnchorError('contractAddress must be a 20-byte hex address', 'config', false);
  }
  let contract: Address | undefined = opts.contractAddress === undefined ? undefined : getAddress(opts.contractAddress);
  let closed = false;
  let chainIdPromise: Promise<number> | undefined;
  const checkedContracts = new Set<Address>();
  let tail: Promise<unknown> = Promise.resolve();

  const assertOpen = (): void => {
    if (closed) throw new EvmAnchorError(`EVM anchor ${opts.name} is closed`, 'closed', false);
  };

  /** The node's chain id, checked against the configured one; retried after a failure. */
  const chainId = (): Promise<number> => {
    chainIdPromise ??= (async () => {
      const id = await publicClient.getChainId();
      if (opts.chainId !== undefined && id !== opts.chainId) {
        throw new EvmAnchorError(`the EVM node serves chain ${id}, not the configured chain ${opts.chainId}`, 'wrong-chain', false);
      }
      return id;
    })();
    chainIdPromise.catch(() => {
      chainIdPromise = undefined;
    });
    return chainIdPromise;
  };

  /** Fails unless contract code exists at `address`; warns when it is not this build of FhirAnchorLog. */
  const checkContract = async (address: Address): Promise<void> => {
    if (checkedContracts.has(address)) return;
    const code = await publicClient.getCode({ address });
    if (code === undefined || code === '0x') {
      throw new EvmAnchorError(`no contract code at ${address} on chain ${await chainId()} (check the contract address and chain)`, 'no-contract', false);
    }
    if (code.toLowerCase() !== deployedBytecode.toLowerCase()) {
      log?.warn({ contract: address }, 'contract bytecode differs from this build of FhirAnchorLog');
    }
    checkedContracts.add(address);
  };

  let deploying: Promise<Address> | undefined;
  /** The configured contract, or (first use without one) a freshly deployed one. */
  const contractForWrite = async (): Promise<Address> => {
    if (contract !== undefined) return contract;
    deploying ??= deployWith(conn, opts).then((d) => {
      contract = d.address;
      log?.warn({ contract: d.address, chainId: d.chainId, txHash: d.txHash }, 'deployed a new FhirAnchorLog contract; configure its address');
      return d.address;
    });
    deploying.catch(() => {
      deploying = undefined;
    });
    return deploying;
  };

  const readRecord = async (address: Address, originHash: Hex, root: Hex): Promise<OnChainRecord> => {
    const [size, timestamp, blockNumber] = await publicClient.readContract({ address, abi, functionName: 'recordOf', args: [originHash, root] });
    return { size, timestamp, blockNumber };
  };

  const buildReceipt = (cp: AnchorCheckpoint, evidence: Evidence): AnchorReceipt => ({
    kind: EVM_ANCHOR_KIND,
    anchor: opts.name,
    size: cp.size,
    rootHash: toHex(cp.rootHash),
    anchoredAt: isoSeconds(Number(evidence.blockTimestamp)),
    evidence: {
      chainId: evidence.chainId,
      contract: evidence.contract,
      txHash: evidence.txHash,
      blockNumber: Number(evidence.blockNumber),
      blockHash: evidence.blockHash,
      blockTimestamp: Number(evidence.blockTimestamp),
      originHash: evidence.originHash,
    },
  });

  /** A receipt for a root the contract already holds (idempotent re-anchor), from its Anchored event. */
  const existingReceipt = async (cp: AnchorCheckpoint, address: Address, id: number, originHash: Hex, root: Hex, record: OnChainRecord): Promise<AnchorReceipt> => {
    if (record.size !== BigInt(cp.size)) {
      throw new AnchorConflictError(`root ${root} is already anchored with size ${record.size}, but the checkpoint says size ${cp.size}`);
    }
    const logs = await publicClient.getContractEvents({
      address,
      abi,
      eventName: 'Anchored',
      args: { originHash },
      fromBlock: record.blockNumber,
      toBlock: record.blockNumber,
    });
    const event = logs.find((l) => l.args.root?.toLowerCase() === root.toLowerCase() && l.args.size === record.size);
    if (!event || event.transactionHash === null || event.blockHash === null) {
      throw new EvmAnchorError(`the contract holds root ${root} but its Anchored event is missing in block ${record.blockNumber}`, 'inconsistent', false);
    }
    log?.info({ size: cp.size, txHash: event.transactionHash, blockNumber: Number(record.blockNumber) }, 'checkpoint already anchored');
    return buildReceipt(cp, {
      chainId: id,
      contract: address,
      txHash: event.transactionHash,
      blockNumber: record.blockNumber,
      blockHash: event.blockHash,
      blockTimestamp: record.timestamp,
      originHash,
    });
  };

  const anchorOnce = async (cp: AnchorCheckpoint): Promise<AnchorReceipt> => {
    assertOpen();
    checkCheckpoint(cp);
    if (opts.verifiers !== undefined) checkSignedNote(cp, opts.verifiers);
    const action = `anchoring checkpoint size ${cp.size} on ${opts.name}`;
    try {
      const id = await chainId();
      const address = await contractForWrite();
      await checkContract(address);
      const originHash = originHashOf(cp.origin);
      const root = bytesToHex(cp.rootHash);
      const existing = await readRecord(address, originHash, root);
      if (existing.size !== 0n) return await existingReceipt(cp, address, id, originHash, root, existing);

      let hash: Hash;
      try {
        const { request } = await publicClient.simulateContract({
          account,
          address,
          abi,
          functionName: 'anchor',
          args: [originHash, BigInt(cp.size), root],
        });
        const wallet = createWalletClient({ account, chain: chainFor(id), transport: conn.transport });
        hash = await wallet.writeContract({ ...request, chain: chainFor(id) });
      } catch (err) {
        // Another writer may have anchored the same root between our read and our send.
        const raced = await readRecord(address, originHash, root).catch(() => undefined);
        if (raced && raced.size !== 0n) return await existingReceipt(cp, address, id, originHash, root, raced);
        throw err;
      }
      log?.debug({ size: cp.size, txHash: hash }, 'anchor transaction sent');
      const receipt = await publicClient.waitForTransactionReceipt({ hash, confirmations, pollingInterval: conn.pollingInterval, timeout: receiptTimeout });
      if (receipt.status !== 'success') {
        const raced = await readRecord(address, originHash, root);
        if (raced.size !== 0n) return await existingReceipt(cp, address, id, originHash, root, raced);
        throw new EvmAnchorError(`${action}: transaction ${hash} reverted in block ${receipt.blockNumber}`, 'reverted', false);
      }
      const [event] = parseEventLogs({ abi, eventName: 'Anchored', logs: receipt.logs }).filter((l) => isAddressEqual(l.address, address));
      if (!event) throw new EvmAnchorError(`${action}: transaction ${hash} emitted no Anchored event`, 'inconsistent', false);
      log?.info({ size: cp.size, txHash: hash, blockNumber: Number(receipt.blockNumber), gasUsed: Number(receipt.gasUsed) }, 'checkpoint anchored');
      return buildReceipt(cp, {
        chainId: id,
        contract: address,
        txHash: hash,
        blockNumber: receipt.blockNumber,
        blockHash: receipt.blockHash,
        blockTimestamp: event.args.timestamp,
        originHash,
      });
    } catch (err) {
      throw toAnchorError(err, action, redact);
    }
  };

  const verifyOnce = async (cp: AnchorCheckpoint, receipt: AnchorReceipt): Promise<AnchorVerification> => {
    const invalid = (reason: string): AnchorVerification => ({ valid: false, reason });
    if (receipt.kind !== EVM_ANCHOR_KIND) return invalid(`receipt kind is ${receipt.kind}, not ${EVM_ANCHOR_KIND}`);
    if (!(cp.rootHash instanceof Uint8Array) || cp.rootHash.length !== 32) return invalid('checkpoint root hash must be 32 bytes');
    if (receipt.size !== cp.size) return invalid(`receipt size ${receipt.size} differs from checkpoint size ${cp.size}`);
    if (typeof receipt.rootHash !== 'string' || receipt.rootHash.toLowerCase() !== toHex(cp.rootHash)) return invalid('receipt root hash differs from the checkpoint root hash');
    const ev = receipt.evidence ?? {};
    const { chainId: evChainId, contract: evContract, txHash, blockHash, blockNumber, blockTimestamp, originHash: evOriginHash } = ev;
    if (!isCount(evChainId) || !isCount(blockNumber) || !isCount(blockTimestamp)) {
      return invalid('receipt evidence lacks chainId, blockNumber or blockTimestamp (non-negative integers)');
    }
    if (typeof evContract !== 'string' || !isAddress(evContract, { strict: false })) return invalid('receipt evidence lacks a contract address');
    if (typeof txHash !== 'string' || !HASH_RE.test(txHash) || typeof blockHash !== 'string' || !HASH_RE.test(blockHash)) return invalid('receipt evidence lacks a transaction or block hash');
    if (contract === undefined) return invalid(`anchor ${opts.name} has no contract configured`);
    if (!isAddressEqual(evContract, contract)) return invalid(`receipt names contract ${evContract}, not the configured ${contract}`);
    const originHash = originHashOf(cp.origin);
    if (evOriginHash !== undefined && (typeof evOriginHash !== 'string' || evOriginHash.toLowerCase() !== originHash)) return invalid('receipt origin hash differs from the checkpoint origin');
    if (receipt.anchoredAt !== isoSeconds(blockTimestamp)) return invalid('receipt anchoredAt differs from its block timestamp');
    const action = `verifying checkpoint size ${cp.size} on ${opts.name}`;
    try {
      const id = await chainId();
      if (evChainId !== id) return invalid(`receipt is for chain ${evChainId}, the node serves chain ${id}`);
      await checkContract(contract);
      const root = bytesToHex(cp.rootHash);
      const record = await readRecord(contract, originHash, root);
      if (record.size === 0n) return invalid('the contract holds no record of this root for this origin');
      if (record.size !== BigInt(cp.size)) return invalid(`the contract records this root with size ${record.size}, not ${cp.size}`);
      if (record.timestamp !== BigInt(blockTimestamp)) return invalid(`the contract records timestamp ${record.timestamp}, the receipt says ${blockTimestamp}`);
      if (record.blockNumber !== BigInt(blockNumber)) return invalid(`the contract records block ${record.blockNumber}, the receipt says ${blockNumber}`);
      let tx;
      try {
        tx = await publicClient.getTransactionReceipt({ hash: txHash as Hash });
      } catch (err) {
        if (err instanceof BaseError && err.walk((e) => e instanceof TransactionReceiptNotFoundError)) return invalid(`transaction ${txHash} is not on chain`);
        throw err;
      }
      if (tx.status !== 'success') return invalid(`transaction ${txHash} reverted`);
      if (tx.to === null || !isAddressEqual(tx.to, contract)) return invalid(`transaction ${txHash} was not sent to the contract`);
      if (tx.blockHash.toLowerCase() !== blockHash.toLowerCase()) return invalid(`transaction ${txHash} is in block ${tx.blockHash}, the receipt says ${blockHash}`);
      if (tx.blockNumber !== BigInt(blockNumber)) return invalid(`transaction ${txHash} is in block ${tx.blockNumber}, the receipt says ${blockNumber}`);
      const events = parseEventLogs({ abi, eventName: 'Anchored', logs: tx.logs });
      const matching = events.some(
        (e) =>
          isAddressEqual(e.address, contract as Address) &&
          e.args.originHash.toLowerCase() === originHash &&
          e.args.root.toLowerCase() === root.toLowerCase() &&
          e.args.size === BigInt(cp.size) &&
          e.args.timestamp === BigInt(blockTimestamp),
      );
      if (!matching) return invalid(`transaction ${txHash} did not emit Anchored for this checkpoint`);
      const block = await publicClient.getBlock({ blockNumber: BigInt(blockNumber) });
      if (block.hash === null || block.hash.toLowerCase() !== blockHash.toLowerCase()) return invalid(`block ${blockNumber} on chain has another hash than the receipt's`);
      if (block.timestamp !== BigInt(blockTimestamp)) return invalid(`block ${blockNumber} has timestamp ${block.timestamp}, the receipt says ${blockTimestamp}`);
      if (confirmations > 1) {
        const head = await publicClient.getBlockNumber({ cacheTime: 0 });
        const have = Number(head - block.number + 1n);
        if (have < confirmations) return invalid(`only ${have} of ${confirmations} confirmations so far`);
      }
      return { valid: true };
    } catch (err) {
      throw toAnchorError(err, action, redact);
    }
  };

  return {
    kind: EVM_ANCHOR_KIND,
    name: opts.name,
    writer: account.address,
    contractAddress: () => contract,
    anchor(checkpoint) {
      const run = tail.then(
        () => anchorOnce(checkpoint),
        () => anchorOnce(checkpoint),
      );
      tail = run.catch(() => undefined);
      return run;
    },
    async verify(checkpoint, receipt) {
      assertOpen();
      return verifyOnce(checkpoint, receipt);
    },
    async ping() {
      assertOpen();
      try {
        await chainId();
        await publicClient.getBlockNumber({ cacheTime: 0 });
      } catch (err) {
        throw toAnchorError(err, `EVM anchor ${opts.name} is not reachable`, redact);
      }
    },
    async close() {
      closed = true;
      await tail;
    },
  };
}

/**
 * Checks an EVM anchor receipt against a chain with read-only calls, for the offline verifier
 * (`fhir-anchor verify --anchor FILE --rpc URL`). It needs no writer key: a throwaway account is used
 * only to satisfy the client; nothing is ever sent.
 */
export async function verifyEvmReceipt(
  checkpoint: AnchorCheckpoint,
  receipt: AnchorReceipt,
  context: { readonly verifiers: readonly NoteVerifier[]; readonly rpcUrl?: string },
): Promise<AnchorVerification> {
  if (!context.rpcUrl) return { valid: false, reason: 'an EVM anchor needs --rpc URL to be checked against its chain' };
  const contract = receipt.evidence.contract;
  if (typeof contract !== 'string') return { valid: false, reason: 'the receipt names no contract' };
  const anchor = createEvmAnchor({
    name: receipt.anchor,
    rpcUrl: context.rpcUrl,
    contractAddress: contract,
    privateKey: generatePrivateKey(),
    verifiers: context.verifiers,
  });
  try {
    return await anchor.verify(checkpoint, receipt);
  } finally {
    await anchor.close();
  }
}
