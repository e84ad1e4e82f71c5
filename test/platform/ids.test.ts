import { createTimeOrderedIds, timeOrderedId } from '../../src/platform/ids.js';

describe('timeOrderedId', () => {
  it('makes RFC 9562 version 7 UUIDs carrying the current Unix milliseconds', () => {
    const before = Date.now();
    const id = timeOrderedId();
    const after = Date.now();
    expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    const ms = parseInt(id.replace(/-/g, '').slice(0, 12), 16);
    expect(ms).toBeGreaterThanOrEqual(before);
    expect(ms).toBeLessThanOrEqual(after);
  });

  it('increases from one id to the next, also within a millisecond, so B-tree inserts append', () => {
    const ids = Array.from({ length: 20_000 }, () => timeOrderedId());
    expect(new Set(ids).size).toBe(ids.length);
    // Compared as PostgreSQL compares uuid values (bytes, i.e. the lower-case hex text).
    expect(ids.filter((id, i) => i > 0 && !(id > ids[i - 1]!))).toEqual([]);
  });
});

describe('createTimeOrderedIds', () => {
  const VERSION_7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
  const msOf = (id: string): number => parseInt(id.replace(/-/g, '').slice(0, 12), 16);

  it('keeps increasing when the clock goes back', () => {
    const times = [5_000, 5_000, 4_000, 4_500, 5_000, 6_000];
    const next = createTimeOrderedIds(() => times.shift()!);
    const ids = Array.from({ length: 6 }, () => next());
    for (const id of ids) expect(id).toMatch(VERSION_7);
    for (let i = 1; i < ids.length; i++) expect(ids[i]! > ids[i - 1]!).toBe(true);
    expect(ids.map(msOf)).toEqual([5_000, 5_000, 5_000, 5_000, 5_000, 6_000]);
  });

  it('borrows the next millisecond when the 31-bit counter runs over, and stays a version 7 UUID', () => {
    // Random bytes of 0xff start the counter at its top (bits 6..9: 7f ff ff ff).
    const next = createTimeOrderedIds(
      () => 9_000,
      (pool) => pool.fill(0xff),
    );
    const ids = Array.from({ length: 4 }, () => next());
    for (const id of ids) expect(id).toMatch(VERSION_7);
    for (let i = 1; i < ids.length; i++) expect(ids[i]! > ids[i - 1]!).toBe(true);
    expect(ids.map(msOf)).toEqual([9_000, 9_001, 9_001, 9_001]);
  });
});
