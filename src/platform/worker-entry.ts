/**
 * How to start a worker thread on a module of this codebase. Compiled: the `.js` file next to the
 * caller. From source (tsx, ts-jest), the thread first registers tsx's loader itself, then imports the
 * `.ts` entry: a worker thread does not inherit a loader from a test runner.
 *
 * @param callerUrl - `import.meta.url` of the module starting the thread
 * @param name - the entry's file name without extension, in the caller's folder
 */
export function workerEntry(callerUrl: string, name: string): { script: URL | string; eval: boolean } {
  if (!callerUrl.endsWith('.ts')) return { script: new URL(`./${name}.js`, callerUrl), eval: false };
  const entry = new URL(`./${name}.ts`, callerUrl).href;
  return {
    eval: true,
    script: `import('tsx/esm/api').then(({ register }) => { register(); return import(${JSON.stringify(entry)}); }).catch((err) => { throw err; });`,
  };
}
