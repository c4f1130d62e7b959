// The package's builds: the committed CommonJS file and types match the sources, and both
// entry points export the same names and work.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { test } from "node:test";

import * as esm from "../src/index.mjs";
import { BASE_URL } from "./helpers.mjs";

const require = createRequire(import.meta.url);
const root = fileURLToPath(new URL("..", import.meta.url));

test("dist/index.cjs and types/index.d.cts are what build.mjs derives", async () => {
  const { stdout, stderr } = await promisify(execFile)(process.execPath, ["build.mjs", "--check"], { cwd: root }).catch((e) => e);
  assert.equal(stderr, "", stdout);
});

test("package.json: no dependencies; exports map import/require to the builds and their types", () => {
  const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));
  assert.equal(pkg.dependencies, undefined);
  const dot = pkg.exports["."];
  assert.deepEqual(dot.import, { types: "./types/index.d.mts", default: "./src/index.mjs" });
  assert.deepEqual(dot.require, { types: "./types/index.d.cts", default: "./dist/index.cjs" });
  const declared = readFileSync(new URL("../types/index.d.mts", import.meta.url), "utf8");
  for (const name of Object.keys(esm)) {
    assert.match(declared, new RegExp(`export declare (class|const|function) ${name}\\b`), name);
  }
});

test("the CommonJS build exports what the ES module exports, and works", async () => {
  const cjs = require(pkgMain());
  assert.deepEqual(Object.keys(cjs).sort(), Object.keys(esm).sort());
  const client = new cjs.WorkflowClient(BASE_URL);
  assert.equal((await client.health()).status, "running");
  const err = await client.get("no_such_execution").catch((e) => e);
  assert.ok(err instanceof cjs.NotFoundError && err instanceof cjs.ServiceError);
  assert.equal(err.name, "NotFoundError");
  assert.equal(await new cjs.PrefectClient(BASE_URL).isAvailable(), true);
});

function pkgMain() {
  return require.resolve("../dist/index.cjs");
}
