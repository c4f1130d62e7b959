// PrefectClient: the Node backend's server/prefectClient.js, same resolutions and messages.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { test } from "node:test";

import { PREFECT_TIMEOUT_MS, PrefectClient, prefectClient } from "../src/index.mjs";
import { BASE_URL, ORG, WORKFLOW_ID, closedPort, json, localServer, sleep } from "./helpers.mjs";

const client = new PrefectClient(BASE_URL);

async function ended(executionId) {
  for (let i = 0; i < 600; i += 1) {
    const status = await client.getExecutionStatus(executionId);
    if (["completed", "failed", "cancelled"].includes(status.status)) return status;
    await sleep(100);
  }
  throw new Error(`${executionId} did not end`);
}

test("executeWorkflow, getExecutionStatus, getExecutionLogs resolve as the backend's client", async () => {
  const result = await client.executeWorkflow(WORKFLOW_ID, {}, ORG);
  assert.deepEqual(Object.keys(result), ["success", "executionId", "status", "message", "usingPrefect"]);
  assert.equal(result.success, true);
  assert.equal(result.usingPrefect, true);
  assert.equal(result.status, "pending");
  assert.equal(result.message, "Workflow execution started in background");
  const status = await ended(result.executionId);
  assert.equal(status.status, "completed");
  assert.equal(status.executionId, result.executionId);
  assert.ok(status.progress && Array.isArray(status.logs));
  const logs = await client.getExecutionLogs(result.executionId);
  assert.ok(Array.isArray(logs) && logs.length > 0);
  assert.ok(logs.every((row) => row.executionId === result.executionId));
});

test("executeNode and cancelExecution resolve to the service's JSON as it is", async () => {
  const node = { id: "n1", type: "addField", config: { addFieldName: "k", addFieldValue: 1 } };
  const ran = await client.executeNode({ workflowId: WORKFLOW_ID, nodeId: "n1", nodeType: "addField", node, inputData: {} });
  assert.equal(ran.success, true);
  assert.equal(ran.message, "Node executed successfully");
  assert.deepEqual(ran.output.outputData, { k: 1 });
  const { executionId } = await client.executeWorkflow(WORKFLOW_ID, {}, ORG);
  await ended(executionId);
  const cancelled = await client.cancelExecution(executionId);
  assert.equal(cancelled.success, false);
  assert.equal(cancelled.executionId, executionId);
  assert.equal(cancelled.message, "Cannot cancel execution with status 'completed'");
});

test("failures carry the backend client's messages with the answer's detail", async () => {
  const cases = [
    [() => client.executeWorkflow("no_such_workflow", {}, ORG), "Prefect service error: Workflow no_such_workflow not found"],
    [() => client.getExecutionStatus("nope"), "Failed to get execution status: Execution nope not found"],
    [() => client.getExecutionLogs("nope"), /^Failed to get execution logs: .*nope/],
    [() => client.cancelExecution("nope"), "Failed to cancel execution: Execution nope not found"],
    [() => client.executeNode({ workflowId: WORKFLOW_ID, nodeId: "x" }), /^Prefect service error: ./],
  ];
  for (const [call, expected] of cases) {
    const err = await call().catch((e) => e);
    assert.ok(err instanceof Error);
    if (expected instanceof RegExp) assert.match(err.message, expected);
    else assert.equal(err.message, expected);
  }
});

test("isAvailable: true for the service, false (never a rejection) when it is down or not running", async () => {
  assert.equal(await client.isAvailable(), true);
  assert.equal(await new PrefectClient(`http://127.0.0.1:${await closedPort()}`).isAvailable(), false);
  const stopping = await localServer((req, res) => json(res, 200, { status: "stopping" }));
  try {
    assert.equal(await new PrefectClient(stopping.url).isAvailable(), false);
  } finally {
    await stopping.close();
  }
});

test("Request failed, Request timeout, error/HTTP fallbacks, Invalid JSON response", async () => {
  const down = new PrefectClient(`http://127.0.0.1:${await closedPort()}`);
  const refused = await down.executeWorkflow("wf").catch((e) => e);
  assert.match(refused.message, /^Prefect service error: Request failed: connect ECONNREFUSED 127\.0\.0\.1:\d+$/);
  const fake = await localServer((req, res) => {
    if (req.url === "/api/executions/slow") setTimeout(() => json(res, 200, {}), 3000).unref();
    else if (req.url === "/api/executions/err") json(res, 500, { error: "worker crashed" });
    else if (req.url === "/api/executions/bare") json(res, 502, { other: 1 });
    else if (req.url === "/api/executions/text") {
      res.writeHead(500);
      res.end("Internal Server Error");
    } else json(res, 200, { executionId: "e1", status: "pending", message: "m" });
  });
  try {
    const local = new PrefectClient(fake.url);
    assert.equal(local.timeout, PREFECT_TIMEOUT_MS);
    assert.equal(PREFECT_TIMEOUT_MS, 30_000);
    local.timeout = 200;
    const started = Date.now();
    const late = await local.getExecutionStatus("slow").catch((e) => e);
    assert.equal(late.message, "Failed to get execution status: Request timeout");
    assert.ok(Date.now() - started < 2500);
    assert.equal((await local.getExecutionStatus("err").catch((e) => e)).message, "Failed to get execution status: worker crashed");
    assert.equal((await local.getExecutionStatus("bare").catch((e) => e)).message, "Failed to get execution status: HTTP 502");
    assert.equal(
      (await local.getExecutionStatus("text").catch((e) => e)).message,
      "Failed to get execution status: Invalid JSON response: Internal Server Error",
    );
    const before = fake.requests.length;
    await local.cancelExecution("e1");
    await local.executeWorkflow("wf1");
    const [cancel, execute] = fake.requests.slice(before);
    assert.equal(cancel.method, "POST");
    assert.equal(cancel.headers["content-type"], "application/json");
    assert.equal(cancel.body, "");
    assert.deepEqual(JSON.parse(execute.body), { workflowId: "wf1", inputs: {}, organizationId: null });
    assert.equal(execute.headers.authorization, undefined);
  } finally {
    await fake.close();
  }
});

test("prefectClient reads PREFECT_SERVICE_URL, else http://localhost:8000", async () => {
  assert.ok(prefectClient instanceof PrefectClient);
  const index = fileURLToPath(new URL("../src/index.mjs", import.meta.url));
  const script = `import(${JSON.stringify(index)}).then((m) => console.log(m.prefectClient.baseUrl))`;
  const run = promisify(execFile);
  const env = { PATH: process.env.PATH };
  const set = await run(process.execPath, ["-e", script], { env: { ...env, PREFECT_SERVICE_URL: "http://svc:9000" } });
  assert.equal(set.stdout.trim(), "http://svc:9000");
  const unset = await run(process.execPath, ["-e", script], { env });
  assert.equal(unset.stdout.trim(), "http://localhost:8000");
});
