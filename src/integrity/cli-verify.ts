/**
 * `fhir-anchor verify`: the offline verifier on the command line. Exits 0 only when every check
 * passes; otherwise prints which check failed and why, and exits 1 (2 for unreadable input files).
 *
 * ```
 * fhir-anchor verify --resource version.json --salt <base64> --receipt proof.tlog-proof \
 *   --key "<vkey or file>" [--anchor receipt.json ...] [--rpc URL] [--json]
 * ```
 *
 * @packageDocumentation
 */
import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import type { AnchorReceipt } from './anchor.js';
import { verifyOffline, type AnchorReceiptVerifier } from './verifier.js';

/** Options of {@link registerVerifyCommand}. */
export interface VerifyCommandOptions {
  /** Verifiers for anchor kinds other than `log` (the EVM anchor registers its own). */
  readonly anchorVerifiers?: Readonly<Record<string, AnchorReceiptVerifier>>;
  /** Output streams (tests); default process.stdout / process.stderr. */
  readonly out?: (text: string) => void;
  readonly err?: (text: string) => void;
}

interface CliOptions {
  resource: string;
  salt: string;
  receipt: string;
  key: string;
  anchor?: string[];
  rpc?: string;
  origin?: string;
  json?: boolean;
}

/** A vkey contains `+`; anything else is read as a file holding one. */
async function readKey(value: string): Promise<string> {
  return value.includes('+') ? value : (await readFile(value, 'utf8')).trim();
}

async function readReceipts(files: readonly string[]): Promise<Array<AnchorReceipt | string>> {
  const out: Array<AnchorReceipt | string> = [];
  for (const f of files) {
    const text = await readFile(f, 'utf8');
    let parsed: unknown;
    try {
      parsed = JSON.parse(text) as unknown;
    } catch {
      out.push(text); // reported as "not JSON" by the verifier
      continue;
    }
    if (Array.isArray(parsed)) out.push(...(parsed as AnchorReceipt[]));
    else if (typeof parsed === 'object' && parsed !== null && Array.isArray((parsed as { receipts?: unknown }).receipts)) {
      out.push(...((parsed as { receipts: AnchorReceipt[] }).receipts)); // GET /ledger/anchors output
    } else out.push(parsed as AnchorReceipt);
  }
  return out;
}

/**
 * Adds the `verify` command to the CLI program (commander 14).
 *
 * @param program - the root command.
 * @param options - extra anchor verifiers and output streams.
 * @returns the new sub-command.
 */
export function registerVerifyCommand(program: Command, options: VerifyCommandOptions = {}): Command {
  const out = options.out ?? ((t: string) => void process.stdout.write(t));
  const err = options.err ?? ((t: string) => void process.stderr.write(t));
  return program
    .command('verify')
    .description('verify offline that a FHIR resource version is in the integrity log (no database needed)')
    .requiredOption('--resource <file>', 'the version as served by /{type}/{id}/_history/{vid} (JSON), or its delete marker')
    .requiredOption('--salt <base64>', 'the version salt (the salt parameter of $verify)')
    .requiredOption('--receipt <file>', 'the C2SP tlog-proof (the receipt parameter of $verify)')
    .requiredOption('--key <vkey>', 'the log verifier key (GET /ledger/key), or a file holding it')
    .option('--anchor <file...>', 'anchor receipt JSON files (one receipt, an array, or GET /ledger/anchors output)')
    .option('--rpc <url>', 'JSON-RPC URL for chain anchors')
    .option('--origin <origin>', 'expected log origin (default: the key name)')
    .option('--json', 'print the result as JSON')
    .action(async (opts: CliOptions) => {
      let inputs;
      try {
        inputs = {
          resourceJson: await readFile(opts.resource, 'utf8'),
          receiptText: await readFile(opts.receipt, 'utf8'),
          vkey: await readKey(opts.key),
          anchorReceipts: await readReceipts(opts.anchor ?? []),
        };
      } catch (e) {
        err(`fhir-anchor verify: ${(e as Error).message}\n`);
        process.exitCode = 2;
        return;
      }
      const result = await verifyOffline({
        ...inputs,
        saltB64: opts.salt,
        ...(opts.rpc !== undefined ? { rpcUrl: opts.rpc } : {}),
        ...(opts.origin !== undefined ? { origin: opts.origin } : {}),
        ...(options.anchorVerifiers !== undefined ? { anchorVerifiers: options.anchorVerifiers } : {}),
      });
      if (opts.json) {
        out(`${JSON.stringify(result, null, 2)}\n`);
      } else {
        for (const c of result.checks) out(`${c.ok ? 'ok  ' : 'FAIL'} ${c.name}: ${c.detail}\n`);
        out(result.ok ? 'verified: the record is in the log, unchanged\n' : 'NOT verified\n');
      }
      process.exitCode = result.ok ? 0 : 1;
    });
}
