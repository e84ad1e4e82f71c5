import { LogAnchor } from '../../src/integrity/anchors/log.js';
import { generateEd25519Key, parseSignerKey, parseVerifierKey } from '../../src/integrity/note.js';
import { openIntegrityEnv, ORIGIN, type IntegrityEnv } from './integrity-env.js';
import { anchorConformance } from './anchor-conformance.js';
import { signCheckpoint } from '../../src/integrity/checkpoint.js';

let env: IntegrityEnv | undefined;

anchorConformance(
  'built-in log',
  async () => {
    env = await openIntegrityEnv();
    const anchor = new LogAnchor({ store: env.integrity, clock: env.clock, verifiers: [parseVerifierKey(env.key.verifierKey)] });
    return { anchor, signer: env.key.signer };
  },
  async () => {
    await env?.close();
    env = undefined;
  },
);

describe('log anchor', () => {
  it('refuses checkpoints not signed by the log key', async () => {
    const e = await openIntegrityEnv();
    try {
      const anchor = new LogAnchor({ store: e.integrity, clock: e.clock, verifiers: [parseVerifierKey(e.key.verifierKey)] });
      const stranger = parseSignerKey(generateEd25519Key(ORIGIN).signerKey);
      const rootHash = new Uint8Array(32);
      await expect(
        anchor.anchor({ origin: ORIGIN, size: 1, rootHash, signedNote: signCheckpoint({ origin: ORIGIN, size: 1, rootHash }, stranger) }),
      ).rejects.toThrow(/not signed by the log/);
    } finally {
      await e.close();
    }
  });
});
