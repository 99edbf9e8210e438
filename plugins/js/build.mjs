// Builds one JavaScript plugin into a WebAssembly component:
//   node build.mjs SOURCE.js WIT_DIR WORLD OUT.wasm
// WASI http and fetch-event are disabled, so the component imports nothing
// the eventfold host does not grant.
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';

const [sourcePath, witPath, worldName, out] = process.argv.slice(2);
if (!out) {
  console.error('usage: node build.mjs SOURCE.js WIT_DIR WORLD OUT.wasm');
  process.exit(2);
}
const { component } = await componentize({
  sourcePath,
  witPath,
  worldName,
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile(out, component);
