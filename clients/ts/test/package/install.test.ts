// The package as users get it, from a clean copy of its folder (no
// node_modules, no dist: a fresh clone), installed the two ways the README
// documents: packed with `npm pack` and installed from the tarball, and
// installed from the folder with `--install-links`. Node imports every entry
// point that package.json "exports" lists, and Vite builds a small app from
// the folder install. npm's cache is reused; every npm call has a time limit.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, relative, resolve, sep } from "node:path";
import { after, it } from "node:test";
import { fileURLToPath } from "node:url";

const pkgDir = resolve(dirname(fileURLToPath(import.meta.url)), "../../.."); // clients/ts
const pkg = JSON.parse(readFileSync(resolve(pkgDir, "package.json"), "utf8")) as {
  exports: Record<string, unknown>;
  devDependencies: Record<string, string>;
};
const temps: string[] = [];
after(() => {
  for (const d of temps) rmSync(d, { recursive: true, force: true });
});

function temp(prefix: string): string {
  const dir = mkdtempSync(resolve(tmpdir(), prefix));
  temps.push(dir);
  return dir;
}

/** What a fresh clone holds: the package folder without what builds and installs make. */
const GENERATED = new Set(["node_modules", "dist", "dist-test", "artifacts"]);

function cleanCopy(): string {
  const dir = resolve(temp("arcana-pkg-"), "ts");
  cpSync(pkgDir, dir, {
    recursive: true,
    filter: (src) => !relative(pkgDir, src).split(sep).some((part) => GENERATED.has(part)),
  });
  assert.ok(!existsSync(resolve(dir, "node_modules")) && !existsSync(resolve(dir, "dist")));
  return dir;
}

function tempProject(): string {
  const dir = temp("arcana-install-");
  writeFileSync(resolve(dir, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
  return dir;
}

function npm(cwd: string, ...args: string[]): string {
  return execFileSync("npm", [...args, "--no-audit", "--no-fund", "--prefer-offline"], {
    cwd,
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
    timeout: 240_000,
  });
}

/** What each entry point must export (a new entry point must be added here). */
const EXPECTED: Record<string, string[]> = {
  ".": ["ArcanaClient", "MemoryStore", "clientStatus", "onClientStatus"],
  "./node": ["createNodeClient", "ArcanaClient"],
  "./web": ["createWebClient", "ArcanaClient"],
  "./react": ["ArcanaProvider", "useView", "useWindow", "useMutation", "useRow", "useStatus"],
  "./vue": ["provideArcana", "arcanaPlugin", "useView", "useWindow", "useMutation", "useRow", "useStatus"],
  "./svelte": ["viewStore", "windowStore", "mutationStore", "rowStore", "statusStore"],
  "./offline": ["OfflineStore", "MemoryStorage"],
  "./offline/node": ["openNodeOfflineStore", "SqlJsStorage"],
  "./offline/web": ["openWebOfflineStore"],
};

const ENTRIES = Object.keys(pkg.exports).filter((k) => k !== "./package.json");

it("every entry point in package.json is checked", () => {
  assert.deepEqual([...ENTRIES].sort(), Object.keys(EXPECTED).sort());
});

// Imports every entry point under Node and checks its exports.
const probe = `
const expected = ${JSON.stringify(EXPECTED)};
for (const [entry, names] of Object.entries(expected)) {
  const name = "@arcana/client" + entry.slice(1);
  const m = await import(name);
  const missing = names.filter((n) => typeof m[n] !== "function");
  if (missing.length) throw new Error(name + " lacks " + missing.join(", ") + "; it has " + Object.keys(m).join(", "));
  console.log("ok " + name);
}
`;

/** The peers an app brings, at the versions the package is tested with. */
const PEERS = [
  "@bufbuild/protobuf",
  "@connectrpc/connect",
  "@connectrpc/connect-node",
  "@connectrpc/connect-web",
  "react",
  "vue",
].map((p) => `${p}@${pkg.devDependencies[p]}`);

function check(app: string): void {
  writeFileSync(resolve(app, "probe.mjs"), probe);
  const out = execFileSync("node", ["probe.mjs"], { cwd: app, encoding: "utf8", timeout: 60_000 });
  assert.deepEqual(
    out.trim().split("\n"),
    ENTRIES.map((e) => `ok @arcana/client${e.slice(1)}`),
  );
}

it("npm pack in a clean copy builds dist, and the tarball installs", { timeout: 600_000 }, () => {
  const copy = cleanCopy();
  // Pack runs `prepare`, which builds dist/ (bringing its own tsc here).
  const tarball = npm(copy, "pack").trim().split("\n").pop()!;
  assert.equal(tarball, "arcana-client-0.1.0.tgz", "the name the README gives");
  assert.ok(existsSync(resolve(copy, "dist/index.js")));
  assert.ok(!existsSync(resolve(copy, "node_modules")), "the build tools were not left behind");
  const app = tempProject();
  npm(app, "install", resolve(copy, tarball), ...PEERS);
  check(app);
});

it("installs from a clean copy of the folder, as the README says, and Vite builds an app", { timeout: 600_000 }, () => {
  const copy = cleanCopy();
  const app = tempProject();
  npm(app, "install", "--install-links", copy, ...PEERS, `vite@${pkg.devDependencies.vite}`);
  check(app);

  // A page that uses the web client, React and Vue hooks and a Svelte store.
  writeFileSync(
    resolve(app, "index.html"),
    '<!doctype html><html><body><div id="app"></div><script type="module" src="/main.js"></script></body></html>',
  );
  writeFileSync(
    resolve(app, "main.js"),
    `import { createElement } from "react";
import { createWebClient } from "@arcana/client/web";
import { ArcanaProvider, useStatus, useRow } from "@arcana/client/react";
import { useWindow } from "@arcana/client/vue";
import { statusStore } from "@arcana/client/svelte";

const client = createWebClient({ baseUrl: "http://127.0.0.1:50051", token: "dev-alice" });
function Status() {
  const s = useStatus();
  const row = useRow("tasks", 1);
  return createElement("p", null, s.status + " " + (row ? row.title : ""));
}
window.app = { tree: createElement(ArcanaProvider, { client }, createElement(Status)), useWindow, status: statusStore(client) };
`,
  );
  execFileSync("node", [resolve(app, "node_modules/vite/bin/vite.js"), "build", "--logLevel", "warn"], {
    cwd: app,
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
    timeout: 120_000,
  });
  const assets = resolve(app, "dist/assets");
  const js = readdirSync(assets)
    .filter((f) => f.endsWith(".js"))
    .map((f) => readFileSync(resolve(assets, f), "utf8"))
    .join("\n");
  // The client and the React bindings made it into the bundle (messages of theirs).
  assert.ok(js.includes("the client is closed"), "the client is in the bundle");
  assert.ok(js.includes("wrap the tree in <ArcanaProvider"), "the React bindings are in the bundle");
  assert.match(readFileSync(resolve(app, "dist/index.html"), "utf8"), /<script type="module"[^>]*src="\/assets\//);
});
