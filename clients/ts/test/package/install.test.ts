// The package as users get it: packed with `npm pack` (or installed from its
// folder), installed into a fresh project, each entry point imported by Node.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, resolve } from "node:path";
import { after, it } from "node:test";
import { fileURLToPath } from "node:url";

const pkgDir = resolve(dirname(fileURLToPath(import.meta.url)), "../../.."); // clients/ts
const temps: string[] = [];
after(() => {
  for (const d of temps) rmSync(d, { recursive: true, force: true });
});

function tempProject(): string {
  const dir = mkdtempSync(resolve(tmpdir(), "arcana-install-"));
  temps.push(dir);
  writeFileSync(resolve(dir, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
  return dir;
}

function npm(cwd: string, ...args: string[]): string {
  return execFileSync("npm", [...args, "--no-audit", "--no-fund", "--prefer-offline"], {
    cwd,
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
}

// Imports every entry point and checks that the main export of each is there.
const probe = `
const checks = {
  "@arcana/client": (m) => typeof m.ArcanaClient === "function" && typeof m.MemoryStore === "function",
  "@arcana/client/node": (m) => typeof m.createNodeClient === "function",
  "@arcana/client/web": (m) => typeof m.createWebClient === "function",
  "@arcana/client/react": (m) => typeof m.useView === "function" && typeof m.ArcanaProvider === "function",
  "@arcana/client/vue": (m) => typeof m.useView === "function" && typeof m.provideArcana === "function",
  "@arcana/client/svelte": (m) => typeof m.viewStore === "function",
};
for (const [name, ok] of Object.entries(checks)) {
  const m = await import(name);
  if (!ok(m)) throw new Error(name + ": missing exports: " + Object.keys(m).join(", "));
  console.log("ok " + name);
}
`;

const PEERS = [
  "@bufbuild/protobuf@2.13.0",
  "@connectrpc/connect@2.1.2",
  "@connectrpc/connect-node@2.1.2",
  "@connectrpc/connect-web@2.1.2",
  "react@19",
  "vue@3",
];

function check(dir: string): void {
  writeFileSync(resolve(dir, "probe.mjs"), probe);
  const out = execFileSync("node", ["probe.mjs"], { cwd: dir, encoding: "utf8" });
  assert.equal(out.trim().split("\n").length, 6, out);
}

it("installs from the npm pack tarball and every entry point imports", { timeout: 300_000 }, () => {
  const packDir = mkdtempSync(resolve(tmpdir(), "arcana-pack-"));
  temps.push(packDir);
  // --ignore-scripts would skip the build: pack must run `prepare` to produce dist/.
  const tarball = npm(pkgDir, "pack", "--pack-destination", packDir).trim().split("\n").pop()!;
  const app = tempProject();
  // The app brings the peers: @connectrpc/* at one version (connect-node and
  // connect-web pin connect exactly), and the UI libraries it uses.
  npm(app, "install", resolve(packDir, tarball), ...PEERS);
  check(app);
});

it("installs from the package folder", { timeout: 300_000 }, () => {
  const app = tempProject();
  // --install-links copies the folder as a pack would (running `prepare`)
  // instead of linking to it.
  npm(app, "install", "--install-links", pkgDir, ...PEERS);
  check(app);
});
