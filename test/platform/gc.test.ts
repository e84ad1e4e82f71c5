/** `collectGarbage` obtains V8's collector without `--expose-gc` and really collects. */
import { collectGarbage } from '../../src/platform/gc.js';

it('runs a full collection that frees unreachable memory', () => {
  expect(collectGarbage()).toBe(true);
  let garbage: unknown[] | undefined = Array.from({ length: 200_000 }, (_, i) => ({ i, s: `x${i}` }));
  const withGarbage = process.memoryUsage().heapUsed;
  expect((garbage as unknown[]).length).toBe(200_000);
  garbage = undefined;
  collectGarbage();
  expect(process.memoryUsage().heapUsed).toBeLessThan(withGarbage - 5 * 2 ** 20);
  expect(garbage).toBeUndefined();
});
