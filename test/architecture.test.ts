/**
 * Architecture rules as tests (BRIEF habit 10): bullmq/ioredis only in src/queue, SQL only in
 * src/store, no console.* in src/, and no circular imports.
 */
import { readFileSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const SRC = fileURLToPath(new URL('../src/', import.meta.url));

function sourceFiles(dir: string = SRC): string[] {
  return readdirSync(dir).flatMap((name) => {
    const full = path.join(dir, name);
    if (statSync(full).isDirectory()) return name === 'generated' ? [] : sourceFiles(full);
    return full.endsWith('.ts') ? [full] : [];
  });
}

const files = sourceFiles();
const rel = (f: string): string => path.relative(SRC, f).split(path.sep).join('/');
const read = (f: string): string => readFileSync(f, 'utf8');
const stripComments = (code: string): string => code.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:'"`])\/\/.*$/gm, '$1');

function importsOf(file: string): string[] {
  const code = read(file);
  const specs: string[] = [];
  for (const m of code.matchAll(/(?:import|export)\s[^'"]*?from\s*['"]([^'"]+)['"]/g)) specs.push(m[1]!);
  for (const m of code.matchAll(/import\(\s*['"]([^'"]+)['"]\s*\)/g)) specs.push(m[1]!);
  return specs;
}

describe('architecture', () => {
  it('finds the source tree', () => {
    expect(files.length).toBeGreaterThan(10);
  });

  it('imports bullmq and ioredis only inside src/queue', () => {
    const offenders = files.filter((f) => !rel(f).startsWith('queue/') && importsOf(f).some((s) => s === 'bullmq' || s.startsWith('bullmq/') || s === 'ioredis'));
    expect(offenders.map(rel)).toEqual([]);
  });

  it('keeps SQL inside src/store (and the queue backend migration call in src/queue)', () => {
    const sql = /\b(SELECT\s+[\w*]|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX|SCHEMA)|DROP\s+(TABLE|SCHEMA))\b/i;
    const offenders = files.filter((f) => !rel(f).startsWith('store/') && sql.test(stripComments(read(f))));
    expect(offenders.map(rel)).toEqual([]);
  });

  it('imports pg only in src/store and src/queue', () => {
    const offenders = files.filter((f) => !/^(store|queue)\//.test(rel(f)) && importsOf(f).includes('pg'));
    expect(offenders.map(rel)).toEqual([]);
  });

  it('has no console.* calls in src/', () => {
    const offenders = files.filter((f) => /\bconsole\.(log|error|warn|info|debug|trace)\s*\(/.test(stripComments(read(f))));
    expect(offenders.map(rel)).toEqual([]);
  });

  it('has no circular imports', () => {
    const graph = new Map<string, string[]>();
    for (const f of files) {
      const deps = importsOf(f)
        .filter((s) => s.startsWith('.'))
        .map((s) => path.resolve(path.dirname(f), s).replace(/\.js$/, '.ts'))
        .filter((d) => graph.has(d) || files.includes(d));
      graph.set(f, deps);
    }
    const cycles: string[] = [];
    const state = new Map<string, 'visiting' | 'done'>();
    const stack: string[] = [];
    const visit = (node: string): void => {
      state.set(node, 'visiting');
      stack.push(node);
      for (const dep of graph.get(node) ?? []) {
        if (state.get(dep) === 'visiting') cycles.push([...stack.slice(stack.indexOf(dep)), dep].map(rel).join(' -> '));
        else if (!state.has(dep)) visit(dep);
      }
      stack.pop();
      state.set(node, 'done');
    };
    for (const f of files) if (!state.has(f)) visit(f);
    expect(cycles).toEqual([]);
  });
});
