/**
 * `fhir-anchor deid`: de-identifies files or folders of FHIR JSON (a resource or Bundle per file) and
 * NDJSON (a resource per line, streamed line by line so memory stays bounded by the longest line).
 *
 * ```
 * fhir-anchor deid --input PATH --output PATH [--config anonymizer-config.json | --policy safe-harbor]
 * ```
 *
 * Keys come from DEID_CRYPTO_HASH_KEY / DEID_DATE_SHIFT_KEY / DEID_ENCRYPT_KEY (or the config file's
 * parameters). Progress goes to stderr: a live line on a TTY, otherwise a count every
 * {@link PROGRESS_EVERY} resources. Exit codes: 0 done, 1 a resource was refused (processingErrors
 * raise), 2 unusable configuration or input.
 *
 * @packageDocumentation
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import type { Command } from 'commander';
import type { Resource } from '@medplum/fhirtypes';
import { DeidConfigError, type DeidKeys } from './deid/config.js';
import { createDeidentifier, type Deidentifier } from './deid/deidentifier.js';

/** Non-TTY progress: one line per this many resources (and one per file). */
export const PROGRESS_EVERY = 10_000;
/** TTY progress refresh interval, ms. */
const TTY_REFRESH_MS = 250;

/** Options of {@link registerDeidCommand}. */
export interface DeidCommandOptions {
  /**
   * Keys, or where to get them when the command runs. The CLI passes its loaded configuration's
   * (`DEID_*` variables, validated once by the config loader); without it, no keys.
   */
  readonly keys?: DeidKeys | (() => DeidKeys);
  readonly out?: (text: string) => void;
  readonly err?: (text: string) => void;
  /** Whether stderr is a terminal (default: process.stderr.isTTY). */
  readonly isTTY?: boolean;
  /** Exit (default: process.exitCode). */
  readonly setExitCode?: (code: number) => void;
}

interface CliOptions {
  input: string;
  output: string;
  config?: string;
  policy?: string;
}

/** A refusal (processingErrors raise) with where it happened. */
class InputError extends Error {}

interface Counters {
  resources: number;
  dropped: number;
  files: number;
}

const isNdjson = (f: string): boolean => /\.(ndjson|jsonl)$/i.test(f);
const isJson = (f: string): boolean => /\.json$/i.test(f);

async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of (await readdir(dir, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name))) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await listFiles(full)));
    else if (isJson(entry.name) || isNdjson(entry.name)) out.push(full);
  }
  return out;
}

/**
 * Adds the `deid` command to the CLI program (commander 14).
 *
 * @param program - the root command.
 * @param options - keys and output streams (tests).
 * @returns the new sub-command.
 */
export function registerDeidCommand(program: Command, options: DeidCommandOptions = {}): Command {
  const out = options.out ?? ((t: string) => void process.stdout.write(t));
  const err = options.err ?? ((t: string) => void process.stderr.write(t));
  const tty = options.isTTY ?? Boolean(process.stderr.isTTY);
  const setExit = options.setExitCode ?? ((c: number) => void (process.exitCode = c));
  return program
    .command('deid')
    .description('de-identify FHIR JSON / NDJSON files or folders (Microsoft anonymizer configuration format)')
    .requiredOption('--input <path>', 'a .json / .ndjson file or a folder of them (searched recursively)')
    .requiredOption('--output <path>', 'output file (for a file input) or folder (mirrors the input tree)')
    .option('--config <file>', 'anonymizer configuration file (FHIR Tools for Anonymization format)')
    .option('--policy <name>', 'built-in policy when --config is not given (default safe-harbor)')
    .action(async (opts: CliOptions) => {
      try {
        const keys = typeof options.keys === 'function' ? options.keys() : (options.keys ?? {});
        await runDeid(opts, keys, { out, err, tty });
      } catch (e) {
        if (e instanceof DeidConfigError) {
          err(`fhir-anchor deid: ${e.message}\n`);
          setExit(2);
        } else if (e instanceof InputError) {
          err(`fhir-anchor deid: ${e.message}\n`);
          setExit(1);
        } else {
          err(`fhir-anchor deid: ${e instanceof Error ? e.message : String(e)}\n`);
          setExit(2);
        }
      }
    });
}

interface Io {
  readonly out: (t: string) => void;
  readonly err: (t: string) => void;
  readonly tty: boolean;
}

async function runDeid(opts: CliOptions, keys: DeidKeys, io: Io): Promise<void> {
  let policy: string | object = opts.policy ?? 'safe-harbor';
  if (opts.config) {
    let text: string;
    try {
      text = await readFile(opts.config, 'utf8');
    } catch {
      throw new DeidConfigError([`cannot read --config ${opts.config}`]);
    }
    try {
      policy = JSON.parse(text.replace(/^\uFEFF/, '')) as object;
    } catch {
      throw new DeidConfigError([`--config ${opts.config} is not valid JSON`]);
    }
  }
  const deid = createDeidentifier({ keys }, { policy: policy as never });
  const inputStat = await stat(opts.input).catch(() => undefined);
  if (!inputStat) throw new DeidConfigError([`--input ${opts.input} does not exist`]);
  const counters: Counters = { resources: 0, dropped: 0, files: 0 };
  const progress = makeProgress(io, counters);
  const folderName = path.basename(opts.input.replace(/[\\/]+$/, ''));
  try {
    if (inputStat.isDirectory()) {
      for (const file of await listFiles(opts.input)) {
        const target = path.join(opts.output, path.relative(opts.input, file));
        await processFile(deid, file, target, deid.config.dateShiftScope === 'folder' ? folderName : path.basename(file), counters, progress.tick);
      }
    } else {
      const outStat = await stat(opts.output).catch(() => undefined);
      const target = outStat?.isDirectory() ? path.join(opts.output, path.basename(opts.input)) : opts.output;
      const prefix = deid.config.dateShiftScope === 'folder' ? path.basename(path.dirname(path.resolve(opts.input))) : path.basename(opts.input);
      await processFile(deid, opts.input, target, prefix, counters, progress.tick);
    }
  } finally {
    progress.stop();
  }
  io.out(`${counters.files} file(s), ${counters.resources} resource(s) de-identified, ${counters.dropped} dropped\n`);
}

function makeProgress(io: Io, c: Counters): { tick: (fileDone?: boolean) => void; stop: () => void } {
  let lastTty = 0;
  let lastCount = 0;
  const line = (): string => `deid: ${c.files} file(s), ${c.resources} resource(s), ${c.dropped} dropped`;
  return {
    tick(fileDone = false) {
      if (io.tty) {
        const now = Date.now();
        if (fileDone || now - lastTty >= TTY_REFRESH_MS) {
          lastTty = now;
          io.err(`\r${line()}`);
        }
      } else if (fileDone || c.resources - lastCount >= PROGRESS_EVERY) {
        lastCount = c.resources;
        io.err(`${line()}\n`);
      }
    },
    stop() {
      if (io.tty) io.err(`\r${line()}\n`);
    },
  };
}

async function processFile(deid: Deidentifier, file: string, target: string, prefix: string, c: Counters, tick: (fileDone?: boolean) => void): Promise<void> {
  await mkdir(path.dirname(target), { recursive: true });
  if (isNdjson(file)) await processNdjson(deid, file, target, prefix, c, tick);
  else {
    let parsed: unknown;
    try {
      parsed = JSON.parse((await readFile(file, 'utf8')).replace(/^\uFEFF/, '')) as unknown;
    } catch {
      throw new InputError(`${file}: not valid JSON`);
    }
    if (typeof parsed !== 'object' || parsed === null || typeof (parsed as Resource).resourceType !== 'string') {
      throw new InputError(`${file}: not a FHIR resource`);
    }
    const r = deidentifyOrExplain(deid, parsed as Resource, prefix, file);
    const entries = (parsed as { entry?: unknown[] }).entry;
    c.resources += Array.isArray(entries) ? entries.length : 1;
    if (r.kind === 'deidentified') {
      c.dropped += r.droppedEntries.length;
      await writeFile(target, `${JSON.stringify(r.resource, null, 2)}\n`);
    } else c.dropped += Array.isArray(entries) ? entries.length : 1;
  }
  c.files++;
  tick(true);
}

function deidentifyOrExplain(deid: Deidentifier, r: Resource, prefix: string, where: string): ReturnType<Deidentifier['deidentify']> {
  try {
    return deid.deidentify(r, { dateShiftKeyPrefix: prefix });
  } catch (e) {
    throw new InputError(`${where}: ${e instanceof Error ? e.message : String(e)}`);
  }
}

async function processNdjson(deid: Deidentifier, file: string, target: string, prefix: string, c: Counters, tick: (fileDone?: boolean) => void): Promise<void> {
  const input = createReadStream(file, { encoding: 'utf8' });
  const output = createWriteStream(target);
  const lines = createInterface({ input, crlfDelay: Infinity });
  let n = 0;
  try {
    for await (const raw of lines) {
      n++;
      const line = n === 1 ? raw.replace(/^\uFEFF/, '') : raw;
      if (line.trim() === '') continue;
      let parsed: unknown;
      try {
        parsed = JSON.parse(line) as unknown;
      } catch {
        throw new InputError(`${file}:${n}: not valid JSON`);
      }
      if (typeof parsed !== 'object' || parsed === null || typeof (parsed as Resource).resourceType !== 'string') {
        throw new InputError(`${file}:${n}: not a FHIR resource`);
      }
      const r = deidentifyOrExplain(deid, parsed as Resource, prefix, `${file}:${n}`);
      c.resources++;
      if (r.kind === 'deidentified') {
        c.dropped += r.droppedEntries.length;
        if (!output.write(`${JSON.stringify(r.resource)}\n`)) await once(output, 'drain');
      } else c.dropped++;
      tick();
    }
  } finally {
    lines.close();
    input.destroy();
    output.end();
    await once(output, 'close');
  }
}
