/**
 * The values at an element path of a FHIR JSON resource (`['contact', 'gender']`), arrays expanded,
 * each with its FHIRPath-style location (`.contact[0].gender`). Shared by the binding and reference
 * checks of validation.
 */
export function valuesAt(node: unknown, path: readonly string[], i = 0, at = ''): Array<{ value: unknown; expression: string }> {
  if (node === null || node === undefined) return [];
  if (Array.isArray(node)) return node.flatMap((n, k) => valuesAt(n, path, i, `${at}[${k}]`));
  if (i === path.length) return [{ value: node, expression: at }];
  if (typeof node !== 'object') return [];
  const name = path[i]!;
  return valuesAt((node as Record<string, unknown>)[name], path, i + 1, `${at}.${name}`);
}
