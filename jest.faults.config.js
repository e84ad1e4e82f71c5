/**
 * Fault-injection and scale-out tests (`npm run test:faults`): slower, with their own PostgreSQL,
 * redis-server and fhir-anchor processes, so kept out of the default `npm test`. Same ESM/ts-jest
 * settings as jest.config.js.
 */
export default {
  testEnvironment: 'node',
  extensionsToTreatAsEsm: ['.ts'],
  roots: ['<rootDir>/test/faults', '<rootDir>/test/scale'],
  testMatch: ['**/*.test.ts'],
  moduleNameMapper: { '^(\\.{1,2}/.*)\\.js$': '$1' },
  transform: {
    '^.+\\.ts$': ['ts-jest', { useESM: true, tsconfig: 'tsconfig.json' }],
  },
  testTimeout: 180000,
  // The fault files skip themselves unless this is set (so a plain `jest` run that picks them up skips them).
  globals: { FHIR_ANCHOR_FAULT_TESTS: true },
};
