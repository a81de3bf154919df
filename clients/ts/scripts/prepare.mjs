// `prepare`: builds dist/. npm runs it when the package is packed (`npm pack`,
// publishing) and when it is installed from its folder or from git; then the
// folder may be a clean checkout without node_modules, where tsc is missing.
// In that case the build tools (TypeScript and the packages whose types src/
// compiles against, at the exact versions of devDependencies) are installed
// into a temporary folder, linked as node_modules for the build, and removed
// afterwards, so the folder is left as it was found, plus dist/.
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(dirname(fileURLToPath(import.meta.url))); // clients/ts
const modules = join(here, "node_modules");

// What src/ imports (or needs the types of) to compile. sql.js itself is not
// needed: its types come from @types/sql.js.
const TOOLS = [
  "typescript",
  "@types/node",
  "@bufbuild/protobuf",
  "@connectrpc/connect",
  "@connectrpc/connect-node",
  "@connectrpc/connect-web",
  "react",
  "@types/react",
  "vue",
  "@types/sql.js",
];

function tsc(modulesDir) {
  execFileSync(process.execPath, [join(modulesDir, "typescript/bin/tsc"), "-p", "tsconfig.json"], {
    cwd: here,
    // stdout to stderr: `npm pack` prints the tarball's name on stdout.
    stdio: ["ignore", 2, 2],
  });
}

if (existsSync(join(modules, "typescript/bin/tsc"))) {
  tsc(modules);
} else if (existsSync(modules)) {
  console.error("node_modules has no typescript: run `npm ci` in " + here);
  process.exit(1);
} else {
  const dev = JSON.parse(readFileSync(join(here, "package.json"), "utf8")).devDependencies;
  const tools = mkdtempSync(join(tmpdir(), "arcana-client-build-"));
  try {
    const dependencies = Object.fromEntries(TOOLS.map((name) => [name, dev[name]]));
    writeFileSync(join(tools, "package.json"), JSON.stringify({ private: true, dependencies }));
    // npm passes its own settings down as npm_config_* variables: an install
    // run with --global or --omit must not steer this one. Keep only where
    // packages come from (registry, cache, proxy, certificates, auth files).
    const kept = new RegExp(
      "^npm_config_(" +
        ["cache", "userconfig", "globalconfig", "registry", ".*:registry", "cafile", "ca", "cert", "key"]
          .concat(["strict_ssl", "proxy", "https_proxy", "noproxy", "offline", "prefer_offline", "prefer_online"])
          .concat(["fetch_.*"])
          .join("|") +
        ")$",
      "i",
    );
    const env = Object.fromEntries(
      Object.entries(process.env).filter(([k]) => !/^npm_config_/i.test(k) || kept.test(k)),
    );
    // The npm that runs this script, else the one on PATH (pnpm and yarn set
    // npm_execpath to themselves, and take other flags).
    const exec = process.env.npm_execpath;
    const npm = exec && /npm-cli\.[cm]?js$/.test(exec) ? [process.execPath, exec] : ["npm"];
    console.error(`installing the build tools (${TOOLS.join(", ")}) into ${tools}`);
    execFileSync(
      npm[0],
      [
        ...npm.slice(1),
        "install",
        "--prefix",
        tools,
        "--global=false",
        "--ignore-scripts",
        "--no-package-lock",
        "--no-audit",
        "--no-fund",
        "--prefer-offline",
        "--loglevel=error",
      ],
      { cwd: tools, env, stdio: ["ignore", 2, 2] },
    );
    symlinkSync(join(tools, "node_modules"), modules, "junction");
    try {
      tsc(modules);
    } finally {
      unlinkSync(modules);
    }
  } finally {
    rmSync(tools, { recursive: true, force: true });
  }
}
