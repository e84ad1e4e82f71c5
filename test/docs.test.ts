/** The README stays true: its first two commands are the set-up, and every env var is documented. */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { ENV_VARS } from '../src/config/index.js';

const readme = readFileSync(fileURLToPath(new URL('../README.md', import.meta.url)), 'utf8');

describe('README', () => {
  it('starts its quick start with `npm install && npm start` and then `npm test`', () => {
    const quickStart = readme.slice(readme.indexOf('## Quick start'));
    const commands = [...quickStart.matchAll(/```sh\n([\s\S]*?)```/g)].flatMap((m) => m[1]!.split('\n').filter((l) => l.trim()));
    expect(commands[0]).toMatch(/^npm install && npm start\b/);
    expect(commands[1]).toMatch(/^npm test\b/);
  });

  it('documents every environment variable in the configuration table', () => {
    for (const name of Object.keys(ENV_VARS)) expect(readme).toContain(`| \`${name}\` |`);
  });
});
