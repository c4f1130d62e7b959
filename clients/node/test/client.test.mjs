// WorkflowClient against the real service: every method, its errors, waitFor, callbacks.
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { test } from "node:test";

import {
  ConflictError,
  ConnectionError,
  NotFoundError,
  RequestTimeoutError,
  ServiceError,
  ValidationError,
  WorkflowClient,
} from "../src/index.mjs";
import {
  BASE_URL,
  CALLBACK_SECRET,
  ORG,
  WORKFLOW_ID,
  closedPort,
  httpWorkflow,
  json,
  localServer,
  markerWorkflow,
  sleep,
} from "./helpers.mjs";

const client = new WorkflowClient(BASE_URL);
const ran = (execution) => execution.finalOutput?.o?.ran ?? execution.nodeResults?.o?.outputData?.ran;

test("constructor takes a string or {baseUrl}; health answers running", async () => {
  assert.equal((await client.health()).status, "running");
  const withOptions = new WorkflowClient({ baseUrl: `${BASE_URL}/`, timeoutMs: 5000 });
  assert.equal(withOptions.baseUrl, BASE_URL);
  assert.equal((await withOptions.health()).status, "running");
  assert.throws(() => new WorkflowClient({}), TypeError);
});

test("execute a version, waitFor it, get, logs: the execution records version and hash", async () => {
  const submitted = await client.execute({ workflowId: WORKFLOW_ID, organizationId: ORG, version: 1 });
  assert.equal(submitted.success, true);
  assert.equal(submitted.workflowId, WORKFLOW_ID);
  const ended = await client.waitFor(submitted.executionId, { timeoutMs: 60_000 });
  assert.equal(ended.status, "completed");
  assert.equal(ended.executionId, submitted.executionId);
  assert.equal(ran(ended), "v1");
  assert.equal(ended.workflowVersion, 1);
  const { versions } = await client.versions(WORKFLOW_ID);
  assert.equal(ended.workflowHash, versions.find((v) => v.version === 1).hash);
  assert.deepEqual(await client.get(submitted.executionId), ended);
  const logs = await client.logs(submitted.executionId);
  assert.equal(logs.executionId, submitted.executionId);
  assert.deepEqual([...new Set(logs.logs.map((row) => row.nodeId))], ["t", "a", "o"]);
  assert.ok(logs.logs.some((row) => row.nodeId === "a" && row.status === "completed"));
});

test("execute without a version runs the published one; draft and published by name", async () => {
  const auto = await client.waitFor((await client.execute(WORKFLOW_ID, { organizationId: ORG })).executionId);
  assert.equal(ran(auto), "v2");
  assert.equal(auto.workflowVersion, 2);
  const draft = await client.execute(WORKFLOW_ID, { organizationId: ORG, version: "draft" });
  const draftRun = await client.waitFor(draft.executionId);
  assert.equal(ran(draftRun), "draft");
  assert.equal(draftRun.workflowVersion, null);
  const published = await client.waitFor(
    (await client.execute(WORKFLOW_ID, { organizationId: ORG, version: "published" })).executionId,
  );
  assert.equal(published.workflowVersion, 2);
  assert.equal(published.workflowHash, auto.workflowHash);
});

test("execute an inline workflow with a priority; a bad priority is a ValidationError", async () => {
  const submitted = await client.execute({ workflow: markerWorkflow("inline"), organizationId: ORG, priority: "high" });
  const ended = await client.waitFor(submitted.executionId);
  assert.equal(ran(ended), "inline");
  assert.equal(ended.priority, "high");
  const err = await client.execute({ workflow: markerWorkflow("x"), priority: "urgent" }).catch((e) => e);
  assert.ok(err instanceof ValidationError && err instanceof ServiceError && err instanceof Error);
  assert.equal(err.name, "ValidationError");
  assert.equal(err.status, 422);
  assert.equal(typeof err.detail, "string");
  assert.match(err.message, /priority/);
});

test("idempotencyKey: the same key gives the same execution, another body a ConflictError", async () => {
  const key = `node-client-${Date.now()}`;
  const body = { workflowId: WORKFLOW_ID, organizationId: ORG, inputs: { n: 1 }, idempotencyKey: key };
  const first = await client.execute(body);
  const again = await client.execute(body);
  assert.equal(again.executionId, first.executionId);
  const err = await client.execute({ ...body, inputs: { n: 2 } }).catch((e) => e);
  assert.ok(err instanceof ConflictError);
  assert.equal(err.status, 409);
  assert.match(String(err.detail), /Idempotency/i);
  await client.waitFor(first.executionId);
});

test("unknown ids and versions are NotFoundError with status and detail", async () => {
  for (const call of [
    () => client.get("no_such_execution"),
    () => client.logs("no_such_execution"),
    () => client.cancel("no_such_execution"),
    () => client.retry("no_such_execution"),
    () => client.execute({ workflowId: "no_such_workflow", organizationId: ORG }),
    () => client.execute({ workflowId: WORKFLOW_ID, organizationId: ORG, version: 99 }),
    () => client.version(WORKFLOW_ID, 99),
    () => client.diff(WORKFLOW_ID, 1, 99),
    () => client.versions("no_such_workflow"),
    () => client.history("no_such_workflow"),
  ]) {
    const err = await call().catch((e) => e);
    assert.ok(err instanceof NotFoundError, `${call}: ${err}`);
    assert.equal(err.status, 404);
    assert.equal(err.detail, err.message);
    assert.ok(err.detail.length > 0);
  }
});

test("versions, version, diff", async () => {
  const { versions } = await client.versions(WORKFLOW_ID);
  assert.deepEqual(
    versions.map((v) => [v.version, v.published, v.name, v.createdByName]),
    [
      [2, true, "Version 2", "Ana"],
      [1, false, "Version 1", "Ana"],
    ],
  );
  assert.match(versions[0].hash, /^[0-9a-f]{64}$/);
  const one = await client.version(WORKFLOW_ID, 1);
  assert.equal(one.version, 1);
  assert.deepEqual(
    one.workflow.nodes.map((n) => n.id),
    ["t", "a", "o"],
  );
  const diff = await client.diff(WORKFLOW_ID, 1, 2);
  assert.deepEqual(diff.nodes, { added: ["extra"], removed: [], changed: [{ id: "a", keys: ["addFieldValue"] }] });
  assert.deepEqual(diff.connections, { added: [], removed: [] });
  const fromDraft = await client.diff(WORKFLOW_ID, "draft", 2);
  assert.deepEqual(fromDraft.nodes.added, ["extra"]);
});

test("history and list show the executions with their version", async () => {
  const submitted = await client.execute(WORKFLOW_ID, { organizationId: ORG, version: 1 });
  await client.waitFor(submitted.executionId);
  const history = await client.history(WORKFLOW_ID, { limit: 50 });
  assert.equal(history.workflowId, WORKFLOW_ID);
  const row = history.executions.find((e) => e.id === submitted.executionId);
  assert.equal(row.status, "completed");
  assert.equal(row.workflowVersion, 1);
  const page = await client.list({ workflowId: WORKFLOW_ID, status: "completed", limit: 2 });
  assert.equal(page.executions.length, 2);
  assert.equal(page.executions[0].executionId, submitted.executionId);
  assert.ok(page.nextCursor);
  const next = await client.list({ workflowId: WORKFLOW_ID, status: "completed", limit: 2, before: page.nextCursor });
  assert.ok(next.executions.every((e) => !page.executions.some((p) => p.executionId === e.executionId)));
});

test("runNode runs one node", async () => {
  const result = await client.runNode({
    workflowId: WORKFLOW_ID,
    nodeId: "a1",
    nodeType: "addField",
    node: { id: "a1", type: "addField", config: { addFieldName: "k", addFieldValue: 7 } },
    inputData: { x: 1 },
  });
  assert.equal(result.success, true);
  assert.equal(result.nodeId, "a1");
  assert.deepEqual(result.output.outputData, { x: 1, k: 7 });
});

test("cancel a running execution, then retry it", async () => {
  let calls = 0;
  const slow = await localServer((req, res) => {
    calls += 1;
    if (calls === 1) setTimeout(() => json(res, 200, { late: true }), 20_000).unref();
    else json(res, 200, { fast: true });
  });
  try {
    const submitted = await client.execute({ workflow: httpWorkflow(`${slow.url}/data`), organizationId: ORG });
    for await (const event of client.events(submitted.executionId)) {
      if (event.type === "node.started" && event.nodeId === "h") break;
    }
    const cancelled = await client.cancel(submitted.executionId);
    assert.equal(cancelled.success, true);
    assert.equal(cancelled.previousStatus, "running");
    const ended = await client.waitFor(submitted.executionId, { timeoutMs: 30_000 });
    assert.equal(ended.status, "cancelled");
    const again = await client.cancel(submitted.executionId);
    assert.equal(again.success, false);
    assert.equal(again.previousStatus, "cancelled");
    const retried = await client.retry(submitted.executionId, { priority: "high" });
    assert.equal(retried.retryOf, submitted.executionId);
    const retriedRun = await client.waitFor(retried.executionId, { timeoutMs: 60_000 });
    assert.equal(retriedRun.status, "completed");
    assert.equal(retriedRun.retryOf, submitted.executionId);
    const err = await client.retry(retried.executionId).catch((e) => e);
    assert.ok(err instanceof ConflictError, String(err));
  } finally {
    await slow.close();
  }
});

test("execute with a callback: the signed terminal event reaches the receiver", async () => {
  const receiver = await localServer((req, res) => json(res, 200, {}));
  try {
    const callback = { url: `${receiver.url}/hook`, events: ["execution.completed"] };
    const submitted = await client.execute({ workflow: markerWorkflow("cb"), organizationId: ORG, callback });
    await client.waitFor(submitted.executionId);
    const deadline = Date.now() + 30_000;
    while (receiver.requests.length === 0 && Date.now() < deadline) await sleep(100);
    const [delivery] = receiver.requests;
    assert.ok(delivery, "no callback arrived");
    const event = JSON.parse(delivery.body);
    assert.equal(event.type, "execution.completed");
    assert.equal(event.executionId, submitted.executionId);
    const key = Buffer.from(CALLBACK_SECRET.slice("whsec_".length), "base64");
    const signed = `${delivery.headers["webhook-id"]}.${delivery.headers["webhook-timestamp"]}.${delivery.body}`;
    const signature = createHmac("sha256", key).update(signed).digest("base64");
    assert.ok(delivery.headers["webhook-signature"].split(" ").includes(`v1,${signature}`));
    const seen = await client.get(submitted.executionId);
    assert.equal(seen.callbacks[0]?.url, callback.url);
  } finally {
    await receiver.close();
  }
});

test("ConnectionError when nothing listens; RequestTimeoutError after timeoutMs", async () => {
  const down = new WorkflowClient(`http://127.0.0.1:${await closedPort()}`);
  const err = await down.health().catch((e) => e);
  assert.ok(err instanceof ConnectionError && err instanceof ServiceError);
  assert.equal(err.status, null);
  assert.match(err.message, /^Request failed: .*ECONNREFUSED/);
  const slow = await localServer((req, res) => setTimeout(() => json(res, 200, {}), 5000).unref());
  try {
    const impatient = new WorkflowClient({ baseUrl: slow.url, timeoutMs: 200 });
    const started = Date.now();
    const late = await impatient.health().catch((e) => e);
    assert.ok(late instanceof RequestTimeoutError, String(late));
    assert.ok(Date.now() - started < 3000);
  } finally {
    await slow.close();
  }
});

test("apiKey is sent as a bearer token; error answers map to their classes", async () => {
  const answers = {
    "/api/executions/a": [401, { detail: "Missing or invalid API key" }],
    "/api/executions/b": [403, { detail: "Another organization" }],
    "/api/executions/c": [500, { error: "boom" }],
    "/api/executions/d": [503, {}],
  };
  const fake = await localServer((req, res) => json(res, ...answers[req.url]));
  try {
    const keyed = new WorkflowClient({ baseUrl: fake.url, apiKey: "k-123" });
    const errors = await Promise.all(["a", "b", "c", "d"].map((id) => keyed.get(id).catch((e) => e)));
    assert.deepEqual(
      errors.map((e) => [e.name, e.status, e.message]),
      [
        ["UnauthorizedError", 401, "Missing or invalid API key"],
        ["ForbiddenError", 403, "Another organization"],
        ["ServerError", 500, "boom"],
        ["ServerError", 503, "HTTP 503"],
      ],
    );
    assert.ok(fake.requests.every((r) => r.headers.authorization === "Bearer k-123"));
  } finally {
    await fake.close();
  }
});

test("waitFor falls back to polling when the event stream is unavailable, and times out", async () => {
  const streams = [];
  const noStreams = (url, init) => {
    if (String(url).includes("/events")) {
      streams.push(String(url));
      return Promise.resolve(new Response(JSON.stringify({ detail: "down" }), { status: 503 }));
    }
    return fetch(url, init);
  };
  const polling = new WorkflowClient({ baseUrl: BASE_URL, fetch: noStreams });
  const slow = await localServer((req, res) => setTimeout(() => json(res, 200, { ok: 1 }), 1500));
  try {
    const submitted = await polling.execute({ workflow: httpWorkflow(`${slow.url}/x`), organizationId: ORG });
    const ended = await polling.waitFor(submitted.executionId, { pollIntervalMs: 200, timeoutMs: 60_000 });
    assert.equal(ended.status, "completed");
    assert.ok(streams.length >= 1, "the stream was tried first");
    const next = await client.execute({ workflow: httpWorkflow(`${slow.url}/y`), organizationId: ORG });
    const err = await client.waitFor(next.executionId, { timeoutMs: 300 }).catch((e) => e);
    assert.ok(err instanceof RequestTimeoutError, String(err));
    assert.match(err.message, /did not end within 300 ms/);
    await client.waitFor(next.executionId);
  } finally {
    await slow.close();
  }
});
