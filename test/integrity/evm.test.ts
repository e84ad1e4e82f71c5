/**
 * EVM anchor on the in-process Hardhat network (viem `custom` transport over Hardhat's EIP-1193
 * provider), the generated contract artefact's freshness, option validation and secret hygiene.
 * test/integrity/evm-node.test.ts runs the same checks against `hardhat node` over JSON-RPC.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { bytecode, deployedBytecode } from '../../src/integrity/anchors/evm-contract.js';
import { EvmAnchorError, createEvmAnchor, deployAnchorContract } from '../../src/integrity/anchors/evm.js';
import { HARDHAT_KEYS, conformanceSetup, evmAnchorSuite, freePort, inProcessHardhat, testCheckpoint } from '../helpers/hardhat.js';
import { anchorConformance } from './anchor-conformance.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

describe('evm-contract.ts (generated)', () => {
  it('is up to date with contracts/FhirAnchorLog.sol (else run: node scripts/compile-contract.mjs)', () => {
    const fresh = execFileSync(process.execPath, ['scripts/compile-contract.mjs', '--print'], { cwd: ROOT, encoding: 'utf8' });
    const current = readFileSync(`${ROOT}src/integrity/anchors/evm-contract.ts`, 'utf8');
    expect(current === fresh).toBe(true);
  }, 60_000);

  it('is paris bytecode (no PUSH0 in the runtime code) and small', () => {
    // Walk the opcodes, skipping PUSH1..PUSH32 immediates, up to the CBOR metadata (after INVALID 0xfe).
    const code = Buffer.from(deployedBytecode.slice(2), 'hex');
    const ops: number[] = [];
    for (let i = 0; i < code.length; i++) {
      const op = code[i]!;
      ops.push(op);
      if (op >= 0x60 && op <= 0x7f) i += op - 0x5f;
      if (op === 0xfe) break;
    }
    expect(ops).not.toContain(0x5f);
    expect(bytecode.length / 2 - 1).toBeLessThan(24_576); // EIP-170 limit
  });
});

anchorConformance('evm (in-process Hardhat)', () => conformanceSetup(inProcessHardhat()), async () => {});

evmAnchorSuite('in-process Hardhat', () => inProcessHardhat());

describe('EVM anchor options and failures', () => {
  const base = { name: 'evm-test', transport: inProcessHardhat().transport, privateKey: HARDHAT_KEYS[0] };

  it('validates options without echoing the private key', () => {
    const badKey = 'zz' + HARDHAT_KEYS[0].slice(4);
    const attempt = (opts: Parameters<typeof createEvmAnchor>[0]): unknown => {
      try {
        createEvmAnchor(opts);
        return undefined;
      } catch (err) {
        return err;
      }
    };
    const err = attempt({ ...base, privateKey: badKey });
    expect(err).toBeInstanceOf(EvmAnchorError);
    expect(err).toMatchObject({ code: 'config', retryable: false });
    expect((err as Error).message).not.toContain(badKey.slice(2, 20));
    expect(attempt({ ...base, privateKey: HARDHAT_KEYS[0].slice(2) })).toBeUndefined(); // 0x optional
    expect(attempt({ ...base, rpcUrl: 'http://127.0.0.1:1' })).toMatchObject({ message: 'give exactly one of rpcUrl and transport' });
    expect(attempt({ name: 'x', privateKey: HARDHAT_KEYS[0] })).toMatchObject({ code: 'config' });
    expect(attempt({ name: 'x', rpcUrl: 'ws://127.0.0.1:1', privateKey: HARDHAT_KEYS[0] })).toMatchObject({ code: 'config' });
    expect(attempt({ ...base, contractAddress: '0x1234' })).toMatchObject({ code: 'config' });
    expect(attempt({ ...base, confirmations: 0 })).toMatchObject({ code: 'config' });
    expect(attempt({ ...base, name: '' })).toMatchObject({ code: 'config' });
  });

  it('node down: ping and anchor throw a retryable error that names neither the key nor the URL path', async () => {
    const port = await freePort(); // nothing listens here
    const rpcUrl = `http://user:pw@127.0.0.1:${port}/rpc/secret-api-key`;
    const anchor = createEvmAnchor({ name: 'down', rpcUrl, privateKey: HARDHAT_KEYS[0], contractAddress: '0x000000000000000000000000000000000000dEaD', requestTimeoutMs: 1_000 });
    const calls = [() => anchor.ping(), () => anchor.anchor(testCheckpoint('o', 1, 's')), () => deployAnchorContract({ rpcUrl, privateKey: HARDHAT_KEYS[0] })];
    for (const call of calls) {
      const err = await call().then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(EvmAnchorError);
      expect(err).toMatchObject({ code: 'unavailable', retryable: true });
      const message = (err as Error).message;
      expect(message).toMatch(/did not answer/);
      expect(message).not.toContain('secret-api-key');
      expect(message).not.toContain('pw');
      expect(message).not.toContain(HARDHAT_KEYS[0].slice(2));
    }
    await anchor.close();
  });
});
