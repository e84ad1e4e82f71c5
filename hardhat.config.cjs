// Hardhat 2 serves only as a local EVM for the EVM-anchor tests and the gas benchmark: in-process
// (`require('hardhat').network.provider`) and as a JSON-RPC node (`npx hardhat node`), the same eth_*
// surface a Besu node serves. It compiles nothing: scripts/compile-contract.mjs compiles
// contracts/FhirAnchorLog.sol with the pinned solc-js, so no compiler is ever downloaded. Sources point
// to an empty folder and cache/artifacts to the temp dir, so Hardhat finds nothing to compile and writes
// nothing into the repository.
/* global require, module */
/* eslint-disable @typescript-eslint/no-require-imports -- Hardhat 2 loads its config with require() */
const os = require('node:os');
const path = require('node:path');

const scratch = path.join(os.tmpdir(), 'fhir-anchor-hardhat');

/** @type {import('hardhat/config').HardhatUserConfig} */
module.exports = {
  defaultNetwork: 'hardhat',
  networks: {
    hardhat: {
      chainId: 31337,
      // "merge" is the Paris fork: the contract is compiled for paris, and running the tests on a
      // pre-Shanghai chain proves the bytecode needs no PUSH0 (many Besu/QBFT networks are pre-Shanghai).
      hardfork: 'merge',
    },
  },
  paths: {
    sources: path.join(scratch, 'no-sources'),
    cache: path.join(scratch, 'cache'),
    artifacts: path.join(scratch, 'artifacts'),
  },
};
