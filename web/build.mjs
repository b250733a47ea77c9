// Builds the dashboard into the gateway's embed folder: the page's own files
// from src/ as they are, and Chart.js's minified UMD build from node_modules
// (installed by `npm ci` from the lock file). Nothing is fetched at run time.
import { copyFile, mkdir, readdir, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, '..', 'gateway', 'internal', 'dashboard', 'dist');

await mkdir(out, { recursive: true });
for (const name of await readdir(out)) {
  if (name !== '.gitignore') await rm(join(out, name), { recursive: true, force: true });
}
const files = [
  ...(await readdir(join(here, 'src'))).map((name) => [join(here, 'src', name), name]),
  [join(here, 'node_modules', 'chart.js', 'dist', 'chart.umd.min.js'), 'chart.umd.min.js'],
];
for (const [from, name] of files) await copyFile(from, join(out, name));
console.log(`dashboard: ${files.length} files into ${out}`);
