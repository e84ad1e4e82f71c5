#!/usr/bin/env node
/**
 * The `fhir-anchor` command line. `serve` (the default) runs the API and the workers in one process;
 * `api` and `worker` run them separately for scaling out; `migrate` applies database migrations.
 */
import { Command } from 'commander';
import { ConfigError, loadConfig, ENV_VARS, type Config } from './config/index.js';
import { verifyEvmReceipt } from './integrity/anchors/evm.js';
import { registerVerifyCommand } from './integrity/cli-verify.js';
import { systemClock } from './platform/clock.js';
import { createLogger } from './platform/logger.js';
import { migrateQueueSchema } from './queue/index.js';
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

registerVerifyCommand(program, { anchorVerifiers: { evm: verifyEvmReceipt } });

await program.parseAsync(process.argv);
