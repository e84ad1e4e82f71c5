/**
 * `target.push(...items)` without the spread: a spread passes every item as a call argument, and V8
 * throws "Maximum call stack size exceeded" past roughly 100,000 of them. Used wherever the items come
 * from input (a resource's arrays, a request's lists, a source's answers).
 */
export function pushAll<T>(target: T[], items: Iterable<T>): void {
  for (const item of items) target.push(item);
}
