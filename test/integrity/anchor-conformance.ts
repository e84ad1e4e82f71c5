/**
 * Conformance suite for {@link LedgerAnchor} adapters (BRIEF habit 7). Every anchor kind runs it:
 *
 * ```ts
 * anchorConformance('evm', async () => ({ anchor, signer, origin }), async () => { ... });
 * ```
 *
 * `setup` returns a fresh anchor plus the log key that signs the checkpoints it is given (anchors
 * may check the signature). The suite anchors growing checkpoints, re-anchors one (idempotent),
 * expects a shrinking size and a different root at an anchored size to be refused, and checks that
 * `verify` accepts the anchor's receipts and rejects tampered receipts and checkpoints.
 */
import { randomBytes } from 'node:crypto';
import type { AnchorCheckpoint, AnchorReceipt, LedgerAnchor } from '../../src/integrity/anchor.js';
import { signCheckpoint } from '../../src/integrity/checkpoint.js';
import type { NoteSigner } from '../../src/integrity/note.js';

export interface AnchorUnderTest {
  readonly anchor: LedgerAnchor;
  /** Signs the checkpoints handed to the anchor; its name is the origin. */
  readonly signer: NoteSigner;
}

export function anchorConformance(name: string, setup: () => Promise<AnchorUnderTest>, teardown: () => Promise<void>): void {
  describe(`LedgerAnchor conformance: ${name}`, () => {
    let t: AnchorUnderTest;
    beforeEach(async () => {
      t = await setup();
    });
    afterEach(async () => {
      await t.anchor.close();
      await teardown();
    });

    const checkpoint = (size: number, rootHash: Uint8Array = new Uint8Array(randomBytes(32))): AnchorCheckpoint => ({
      origin: t.signer.name,
      size,
      rootHash,
      signedNote: signCheckpoint({ origin: t.signer.name, size, rootHash }, t.signer),
    });

    it('answers ping', async () => {
      await expect(t.anchor.ping()).resolves.toBeUndefined();
    });

    it('anchors growing checkpoints and verifies every receipt', async () => {
      const receipts: Array<[AnchorCheckpoint, AnchorReceipt]> = [];
      for (const size of [1, 2, 7, 100, 101]) {
        const cp = checkpoint(size);
        const receipt = await t.anchor.anchor(cp);
        expect(receipt).toMatchObject({ kind: t.anchor.kind, anchor: t.anchor.name, size });
        expect(receipt.rootHash).toBe(Buffer.from(cp.rootHash).toString('hex'));
        expect(Number.isNaN(Date.parse(receipt.anchoredAt))).toBe(false);
        // Receipts are JSON: they survive a round trip unchanged.
        expect(JSON.parse(JSON.stringify(receipt))).toEqual(receipt);
        receipts.push([cp, receipt]);
      }
      for (const [cp, receipt] of receipts) {
        await expect(t.anchor.verify(cp, receipt)).resolves.toEqual({ valid: true });
      }
    });

    it('re-anchoring the same (size, root) is idempotent', async () => {
      const cp = checkpoint(5);
      const a = await t.anchor.anchor(cp);
      const later = checkpoint(9);
      await t.anchor.anchor(later);
      const b = await t.anchor.anchor(cp);
      expect(b.size).toBe(a.size);
      expect(b.rootHash).toBe(a.rootHash);
      await expect(t.anchor.verify(cp, b)).resolves.toEqual({ valid: true });
    });

    it('rejects a shrinking size', async () => {
      await t.anchor.anchor(checkpoint(10));
      await expect(t.anchor.anchor(checkpoint(4))).rejects.toThrow();
    });

    it('rejects a different root at an anchored size', async () => {
      await t.anchor.anchor(checkpoint(3));
      await expect(t.anchor.anchor(checkpoint(3))).rejects.toThrow();
    });

    it('rejects tampered receipts and checkpoints', async () => {
      const cp = checkpoint(8);
      const receipt = await t.anchor.anchor(cp);
      const other = checkpoint(8, new Uint8Array(randomBytes(32)));
      const flipped = Buffer.from(cp.rootHash);
      flipped[0] = (flipped[0] ?? 0) ^ 1;
      const cases: Array<[AnchorCheckpoint, AnchorReceipt]> = [
        [cp, { ...receipt, size: 9 }],
        [cp, { ...receipt, rootHash: flipped.toString('hex') }],
        [{ ...cp, rootHash: new Uint8Array(flipped) }, receipt],
        [{ ...cp, size: 9 }, receipt],
        [other, receipt],
        [cp, { ...receipt, evidence: Object.fromEntries(Object.entries(receipt.evidence).map(([k, v]) => [k, typeof v === 'number' ? v + 1 : `${v}x`])) }],
      ];
      for (const [c, r] of cases) {
        const v = await t.anchor.verify(c, r);
        expect(v.valid).toBe(false);
      }
    });
  });
}
