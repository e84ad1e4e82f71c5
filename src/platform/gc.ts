/**
 * An explicit full garbage collection, for the few places where a long-lived process knows a large
 * amount of short-lived data just died: after loading the FHIR definitions (about 180 MB allocated,
 * 16 MB kept) and every few pages of a bulk export. Without it V8, sized for the machine's memory
 * (a 4 GB heap limit on a 24 GiB host), lets that garbage sit until the heap reaches hundreds of MB,
 * which is what the process's RSS then shows.
 *
 * `global.gc` exists only under `--expose-gc`; otherwise the flag is switched on at run time and the
 * collector fetched from a fresh context (V8 installs `gc` there once the flag is set). If neither
 * works, collection is left to V8 and this is a no-op.
 *
 * @see https://nodejs.org/api/v8.html#v8setflagsfromstringflags
 */
import v8 from 'node:v8';
import vm from 'node:vm';

let collector: (() => void) | undefined | null = null;

function resolve(): (() => void) | undefined {
  const existing = (globalThis as { gc?: () => void }).gc;
  if (typeof existing === 'function') return existing;
  try {
    v8.setFlagsFromString('--expose-gc');
    const fn = vm.runInNewContext('gc') as unknown;
    return typeof fn === 'function' ? (fn as () => void) : undefined;
  } catch {
    return undefined;
  }
}

/** Runs a full collection now (synchronous; tens of ms for a heap of ~100 MB). Returns whether it ran. */
export function collectGarbage(): boolean {
  if (collector === null) collector = resolve();
  if (!collector) return false;
  collector();
  return true;
}
