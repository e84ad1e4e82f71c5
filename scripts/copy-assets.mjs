// Copies non-TypeScript runtime assets (SQL migrations) next to the compiled JavaScript in dist/.
import { cpSync } from 'node:fs';
cpSync('src/store/migrations', 'dist/store/migrations', { recursive: true });
