// The service's /openapi.json is the contract: every route the client calls exists there, the
// execute body carries every field of ExecutionCreate, and the declared response types have
// exactly the properties of the schemas they stand for.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { before, test } from "node:test";

import { WorkflowClient } from "../src/index.mjs";
import { BASE_URL } from "./helpers.mjs";

let spec;
let schemas;
before(async () => {
  spec = await new WorkflowClient(BASE_URL).request("GET", "/openapi.json");
  schemas = spec.components.schemas;
});

/** Every request a client makes, recorded instead of sent. */
function recorder() {
  const calls = [];
  const fetch = async (url, init) => {
    calls.push({ method: init.method ?? "GET", url: new URL(url), body: init.body ? JSON.parse(init.body) : undefined });
    const status = String(url).includes("/events") ? 404 : 200; // a stream ends at once
    return new Response("{}", { status, headers: { "Content-Type": "application/json" } });
  };
  return { calls, client: new WorkflowClient({ baseUrl: "http://127.0.0.1:9", fetch }) };
}

function routeOf(pathname) {
  for (const template of Object.keys(spec.paths)) {
    const pattern = new RegExp(`^${template.replace(/\{[^}]+\}/g, "[^/]+").replace(/\./g, "\\.")}$`);
    if (pattern.test(pathname)) return template;
  }
  return null;
}

test("every route the client calls is in /openapi.json with that method", async () => {
  const { calls, client } = recorder();
  await client.health();
  await client.execute({ workflowId: "w" });
  await client.get("e");
  await client.logs("e");
  await client.cancel("e");
  await client.retry("e");
  await client.runNode({ nodeId: "n", nodeType: "addField", node: {} });
  await client.history("w");
  await client.list();
  await client.versions("w");
  await client.version("w", 1);
  await client.diff("w", 1, 2);
  const streams = [client.events("e"), client.events({})];
  for (const stream of streams) await stream.next().catch(() => {});
  for (const call of calls) {
    const route = routeOf(call.url.pathname);
    assert.ok(route, `${call.url.pathname} is not in /openapi.json`);
    assert.ok(spec.paths[route][call.method.toLowerCase()], `${call.method} ${route}`);
    const known = (spec.paths[route][call.method.toLowerCase()].parameters ?? []).map((p) => p.name);
    for (const name of call.url.searchParams.keys()) assert.ok(known.includes(name), `${route}?${name}`);
  }
  assert.equal(new Set(calls.map((c) => routeOf(c.url.pathname))).size, 14);
});

test("execute sends every field of ExecutionCreate, retry every field of RetryRequest", async () => {
  const { calls, client } = recorder();
  await client.execute({
    workflowId: "w",
    workflow: { nodes: [], connections: [] },
    inputs: { a: 1 },
    organizationId: "o",
    version: 1,
    priority: "low",
    callback: { url: "http://cb" },
    mode: "inline",
  });
  await client.retry("e", { fromScratch: true, callback: { url: "http://cb" }, priority: "high" });
  assert.deepEqual(Object.keys(calls[0].body).sort(), Object.keys(schemas.ExecutionCreate.properties).sort());
  assert.deepEqual(Object.keys(calls[1].body).sort(), Object.keys(schemas.RetryRequest.properties).sort());
});

/** Property names of an interface in the declarations, with those of the one it extends. */
function declared(name, text) {
  const found = new RegExp(`export interface ${name}(?: extends (\\w+))? \\{\\n([\\s\\S]*?)\\n\\}`).exec(text);
  assert.ok(found, `interface ${name}`);
  const own = [...found[2].matchAll(/^ {2}(\w+)\??:/gm)].map((m) => m[1]);
  return found[1] ? [...declared(found[1], text), ...own] : own;
}

test("the declared response types have exactly the schemas' properties", () => {
  const text = readFileSync(new URL("../types/index.d.mts", import.meta.url), "utf8");
  const pairs = {
    Health: "Health",
    ExecutionSubmitted: "ExecutionSubmitted",
    RetrySubmitted: "RetrySubmitted",
    Execution: "ExecutionPublic",
    Progress: "ExecutionProgress",
    LogRow: "ExecutionLogRow",
    CallbackDelivery: "CallbackPublic",
    ExecutionLogs: "ExecutionLogs",
    CancelResult: "CancelResult",
    ExecutionSummary: "ExecutionSummary",
    WorkflowExecutions: "WorkflowExecutions",
    ExecutionListed: "ExecutionListed",
    ExecutionsPage: "ExecutionsPage",
    VersionSummary: "VersionPublic",
    VersionDetail: "VersionDetail",
    VersionDiff: "VersionDiff",
  };
  for (const [ours, theirs] of Object.entries(pairs)) {
    assert.deepEqual(declared(ours, text).sort(), Object.keys(schemas[theirs].properties).sort(), `${ours} vs ${theirs}`);
  }
});
