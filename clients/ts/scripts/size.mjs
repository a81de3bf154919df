// Bundles the web entry point with its dependencies (minified, as an app
// would ship it) and prints its gzipped size. Fails above the budget.
import { gzipSync } from "node:zlib";
import { build } from "esbuild";

const BUDGET_KIB = 47;
const r = await build({
  entryPoints: [new URL("../src/web.ts", import.meta.url).pathname],
  bundle: true,
  minify: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  write: false,
  logLevel: "silent",
});
const js = r.outputFiles[0].contents;
const kib = (n) => (n / 1024).toFixed(1);
const gz = gzipSync(js, { level: 9 }).length;
console.log(`web client: ${kib(js.length)} KiB minified, ${kib(gz)} KiB minified+gzipped (budget ${BUDGET_KIB} KiB)`);
if (gz > BUDGET_KIB * 1024) {
  console.error("over budget");
  process.exit(1);
}
