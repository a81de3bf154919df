// Codegen output plugs into the client: `tsc --noEmit` accepts correct use and
// rejects a wrong graph name, params, fields and results.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { dirname, resolve } from "node:path";
import { it } from "node:test";
import { fileURLToPath } from "node:url";

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), "../../.."); // clients/ts
const tsc = resolve(pkg, "node_modules/typescript/bin/tsc");

it("typed use compiles, and every @ts-expect-error is an error", () => {
  const r = spawnSync("node", [tsc, "-p", "test/typed/tsconfig.json"], { cwd: pkg, encoding: "utf8" });
  assert.equal(r.status, 0, r.stdout + r.stderr);
});

it("a wrong graph name fails to compile", () => {
  const r = spawnSync("node", [tsc, "-p", "test/typed/tsconfig.bad.json"], { cwd: pkg, encoding: "utf8" });
  assert.notEqual(r.status, 0);
  assert.match(r.stdout, /bad\.ts.*"project_taks"/);
});
