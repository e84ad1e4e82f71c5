#!/usr/bin/env node
/**
 * The `fhir-anchor` command line. `serve` (the default) runs the API and the workers in one process;
 * `api` and `worker` run them separately for scaling out; `migrate` applies database migrations.
 */
import { Command } from 'commander';
import { ConfigError, loadConfig, ENV_VARS, type Config } from './config/index.js';
import { verifyEvmReceipt } from './integrity/anchors/evm.js';
import { registerVerifyCommand } from './integrity/cli-verify.js';
import { registerDeidCommand } from './research/index.js';
import { systemClock } from './platform/clock.js';
import { createLogger } from './platform/logger.js';
import { migrateQueueSchema } from './queue/index.js';
import { backfill, importFiles, FILE_IMPORT_SOURCE, type BulkDeps, type BulkSummary } from './ingest/bulk.js';
import { handleSignals, startService, type Roles } from './runtime.js';
import { EmbeddedPostgresError, openDatabase } from './store/index.js';
import { VERSION } from './version.js';

function fail(message: string): never {
  process.stderr.write(`fhir-anchor: ${message}\n`);
  process.exit(1);
}

function configOrExit(): Config {
  try {
    return loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) fail(err.message);
    throw err;
  }
}

async function run(roles: Roles): Promise<void> {
  const config = configOrExit();
  try {
    const service = await startService({ config, roles });
    handleSignals(service, config);
  } catch (err) {
    if (err instanceof EmbeddedPostgresError) fail(err.message);
    fail(`could not start: ${err instanceof Error ? err.message : String(err)}`);
  }
}

const envHelp = `\nEnvironment:\n${Object.entries(ENV_VARS)
  .map(([k, v]) => `  ${k.padEnd(20)} ${v}`)
  .join('\n')}\n`;

const program = new Command()
  .name('fhir-anchor')
  .description('FHIR middleware: ingest EHR notifications, normalise to US Core, anchor every version, serve consent-gated reads.')
  .version(VERSION)
  .addHelpText('after', envHelp);

program
  .command('serve', { isDefault: true })
  .description('run the HTTP API and the queue workers in one process (the default)')
  .addHelpText('after', envHelp)
  .action(() => run({ api: true, workers: true }));

program
  .command('api')
  .description('run only the HTTP API (scale out: several api processes behind a load balancer)')
  .addHelpText('after', envHelp)
  .action(() => run({ api: true, workers: false }));

program
  .command('worker')
  .description('run only the queue workers (scale out: as many worker processes as needed)')
  .addHelpText('after', envHelp)
  .action(() => run({ api: false, workers: true }));

program
  .command('migrate')
  .description('apply pending database migrations (fhir-anchor tables, and BullMQ tables when queues run on PostgreSQL), then exit')
  .addHelpText('after', envHelp)
  .action(async () => {
    const config = configOrExit();
    const logger = createLogger(config.logLevel);
    try {
      const db = await openDatabase({ config, logger, clock: systemClock, migrate: true });
      try {
        if (config.queue.backend === 'postgres') await migrateQueueSchema(db.connectionString, config.queue.schema);
        logger.info('migrations complete');
      } finally {
        await db.close();
      }
    } catch (err) {
      fail(`migration failed: ${err instanceof Error ? err.message : String(err)}`);
    }
  });

/** Draws one progress line on a terminal, or a line every few seconds otherwise. */
function progressReporter(): BulkDeps['progress'] {
  let last = 0;
  return (p) => {
    const text = `${p.phase}: ${p.done}${p.total !== undefined ? `/${p.total}` : ''}${p.detail ? ` (${p.detail})` : ''}`;
    if (process.stderr.isTTY) {
      const width = 30;
      const bar = p.total ? '#'.repeat(Math.round((p.done / Math.max(1, p.total)) * width)).padEnd(width, '.') : '';
      process.stderr.write(`\r${bar ? `[${bar}] ` : ''}${text}`.slice(0, 200).padEnd(100));
    } else if (Date.now() - last > 2000 || p.done === p.total) {
      last = Date.now();
      process.stderr.write(`${text}\n`);
    }
  };
}

/** Runs a bulk job with in-process workers, then shuts down; exit 1 when any item ended dead. */
async function runBulk(job: (deps: BulkDeps) => Promise<BulkSummary>): Promise<void> {
  const config = configOrExit();
  let service;
  try {
    service = await startService({ config, roles: { api: false, workers: true } });
  } catch (err) {
    fail(`could not start: ${err instanceof Error ? err.message : String(err)}`);
  }
  let code = 0;
  try {
    const summary = await job({ store: service.database.store, queues: service.queues, registry: service.ingest.registry, logger: service.logger, progress: progressReporter() });
    if (process.stderr.isTTY) process.stderr.write('\n');
    process.stdout.write(
      `${summary.items} item(s): ${summary.done} done, ${summary.dead} dead, ${summary.alreadyReceived} received before; ${summary.stored} version(s) stored, ${summary.duplicates} duplicate(s), ` +
        `${summary.invalid} not conforming to their profile (stored, flagged), ${summary.deadLetters} entr${summary.deadLetters === 1 ? 'y' : 'ies'} dead-lettered\n`,
    );
    if (summary.dead > 0) code = 1;
  } catch (err) {
    process.stderr.write(`\nfhir-anchor: ${err instanceof Error ? err.message : String(err)}\n`);
    code = 1;
  } finally {
    await service.close();
  }
  process.exit(code);
}

program
  .command('import')
  .description('ingest FHIR bundles, resources (.json) or NDJSON (.ndjson) from a file or directory, then exit')
  .argument('<path>', 'file or directory (searched recursively)')
  .option('--source <id>', 'source to attribute the data to (default: a local file-import source)', FILE_IMPORT_SOURCE)
  .addHelpText('after', envHelp)
  .action((target: string, opts: { source: string }) => runBulk((deps) => importFiles(deps, target, opts.source)));

program
  .command('backfill')
  .description("page through a registered source's FHIR search API and ingest everything (resumable), then exit")
  .requiredOption('--source <id>', 'registered source id')
  .option('--type <type...>', 'resource types (default: the US Core types)')
  .option('--since <date>', 'only resources updated at or after this date (ISO 8601)')
  .option('--restart', 'ignore saved progress and start over')
  .addHelpText('after', envHelp)
  .action((opts: { source: string; type?: string[]; since?: string; restart?: boolean }) => {
    const since = opts.since ? new Date(opts.since) : undefined;
    if (since && Number.isNaN(since.getTime())) fail(`--since: not a date: ${opts.since}`);
    if (opts.type?.some((t) => !/^[A-Z][A-Za-z]{1,63}$/.test(t))) fail('--type: resource type names only (e.g. Patient Observation)');
    return runBulk((deps) =>
      backfill(deps, { sourceId: opts.source, ...(opts.type ? { types: opts.type } : {}), ...(since ? { since } : {}), ...(opts.restart ? { restart: true } : {}) }),
    );
  });

registerVerifyCommand(program, { anchorVerifiers: { evm: verifyEvmReceipt } });
registerDeidCommand(program, { keys: () => configOrExit().research.keys });

await program.parseAsync(process.argv);
