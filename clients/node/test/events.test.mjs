// events(): one execution's stream, the global stream with a filter, resuming after a real
// disconnect from the last event id; parseSse's framing and bounds.
import assert from "node:assert/strict";
import { test } from "node:test";

import { StreamError, TERMINAL_EVENTS, WorkflowClient, parseSse } from "../src/index.mjs";
import { BASE_URL, ORG, WORKFLOW_ID, cuttingProxy, localServer, markerWorkflow } from "./helpers.mjs";

const client = new WorkflowClient(BASE_URL);

async function collect(iterable) {
  const out = [];
  for await (const item of iterable) out.push(item);
  return out;
}

async function run(marker) {
  const { executionId } = await client.execute({ workflow: markerWorkflow(marker), organizationId: ORG });
  await client.waitFor(executionId);
  return executionId;
}

test("events(id) yields the whole run in order and ends after the terminal event", async () => {
  const id = await run("events");
  const events = await collect(client.events(id));
  assert.equal(events[0].type, "execution.queued");
  assert.equal(events.at(-1).type, "execution.completed");
  assert.ok(events.every((e) => e.executionId === id));
  const ids = events.map((e) => e.id);
  assert.deepEqual(ids, [...ids].sort((a, b) => a - b));
  assert.equal(new Set(ids).size, ids.length);
  const completed = events.filter((e) => e.type === "node.completed").map((e) => e.nodeId);
  assert.deepEqual(completed, ["t", "a", "o"]);
  const types = await collect(client.events(id, { types: ["node.completed"], after: ids[2] }));
  assert.deepEqual(
    types.map((e) => e.id),
    events.filter((e) => e.type === "node.completed" && e.id > ids[2]).map((e) => e.id),
  );
  const bad = await collect(client.events(id, { types: ["no.such"] })).catch((e) => e);
  assert.equal(bad.status, 422);
});

test("events resume from the last event id after a forced disconnect", async () => {
  const id = await run("resume");
  const reference = await collect(client.events(id));
  const proxy = await cuttingProxy(BASE_URL);
  try {
    const through = new WorkflowClient(proxy.url);
    const events = await collect(through.events(id));
    assert.deepEqual(
      events.map((e) => e.id),
      reference.map((e) => e.id),
    );
    assert.equal(proxy.streams.length, 2, JSON.stringify(proxy.streams));
    assert.equal(proxy.streams[0].lastEventId, null);
    assert.equal(proxy.streams[1].lastEventId, String(reference[0].id));
  } finally {
    await proxy.close();
  }
});

test("events(filter) follows every execution of a workflow, from a resume point, and resumes", async () => {
  const before = await run("before");
  const lastBefore = (await collect(client.events(before))).at(-1).id;
  const stored = async () => {
    const { executionId } = await client.execute(WORKFLOW_ID, { organizationId: ORG, version: "draft" });
    await client.waitFor(executionId);
    return executionId;
  };
  const a = await stored();
  const other = await run("not-this-workflow");
  const b = await stored();
  const proxy = await cuttingProxy(BASE_URL);
  try {
    const through = new WorkflowClient(proxy.url);
    const ended = new Set();
    const seen = [];
    const filter = { workflowId: WORKFLOW_ID, after: lastBefore, types: TERMINAL_EVENTS };
    for await (const event of through.events(filter)) {
      seen.push(event);
      if (event.executionId === a || event.executionId === b) ended.add(event.executionId);
      if (ended.size === 2) break;
    }
    assert.ok(seen.every((e) => TERMINAL_EVENTS.includes(e.type) && e.id > lastBefore));
    assert.ok(seen.every((e) => e.workflowId === WORKFLOW_ID && e.executionId !== other));
    assert.ok(proxy.streams.length >= 2, "the stream was cut and resumed");
    assert.equal(proxy.streams[1].lastEventId, String(seen[0].id));
    const ids = seen.map((e) => e.id);
    assert.equal(new Set(ids).size, ids.length, "no event twice");
  } finally {
    await proxy.close();
  }
});

test("events stop when their signal aborts", async () => {
  const controller = new AbortController();
  const iterator = client.events({}, { signal: controller.signal });
  setTimeout(() => controller.abort(new Error("enough")), 300);
  const err = await collect(iterator).catch((e) => e);
  assert.equal(err.message, "enough");
});

test("a stream silent for streamIdleMs reconnects, then gives up after maxRetries", async () => {
  const silent = await localServer((req, res) => {
    res.writeHead(200, { "Content-Type": "text/event-stream" });
    res.write(": hello\n\n");
  });
  try {
    const idle = new WorkflowClient({ baseUrl: silent.url, streamIdleMs: 200 });
    const err = await collect(idle.events({}, { maxRetries: 2, reconnectDelayMs: 10 })).catch((e) => e);
    assert.equal(err.name, "RequestTimeoutError");
    assert.match(err.message, /No data from \/api\/events for 200 ms/);
    assert.equal(silent.requests.length, 3);
  } finally {
    await silent.close();
  }
});

test("a stream that keeps closing at once without an event fails after maxRetries", async () => {
  const closing = await localServer((req, res) => {
    res.writeHead(200, { "Content-Type": "text/event-stream" });
    res.end(": bye\n\n");
  });
  try {
    const quick = new WorkflowClient(closing.url);
    const err = await collect(quick.events({}, { maxRetries: 2, reconnectDelayMs: 10 })).catch((e) => e);
    assert.equal(err.name, "StreamError");
    assert.match(err.message, /keeps closing without an event/);
    assert.equal(closing.requests.length, 3);
  } finally {
    await closing.close();
  }
});

test("unknown execution: events throw NotFoundError before any event", async () => {
  const err = await collect(client.events("no_such_execution")).catch((e) => e);
  assert.equal(err.name, "NotFoundError");
  assert.equal(err.status, 404);
});

function streamOf(chunks) {
  const encoder = new TextEncoder();
  return new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(encoder.encode(chunk));
      controller.close();
    },
  });
}

test("parseSse: line endings split across chunks, multi-line data, comments, retry, BOM", async () => {
  const frames = await collect(
    parseSse(streamOf(["\uFEFFid: 1\r", "\nevent: a\r\ndata: x\n", "data: y\n\n: ping\n\n", "retry: 5\rid: 2\rdata: z\r\r", "data: cut"])),
  );
  assert.deepEqual(frames, [
    { id: "1", event: "a", data: "x\ny", retry: null },
    { id: "2", event: "message", data: "z", retry: 5 },
  ]);
});

test("parseSse: an event or a line over the bound is a StreamError", async () => {
  const big = "x".repeat(2000);
  const overEvent = await collect(parseSse(streamOf([`data: ${big}\n`, `data: ${big}\n\n`]), { maxEventChars: 3000 })).catch((e) => e);
  assert.ok(overEvent instanceof StreamError, String(overEvent));
  const overLine = await collect(parseSse(streamOf([`data: ${big}`, big]), { maxEventChars: 3000 })).catch((e) => e);
  assert.ok(overLine instanceof StreamError, String(overLine));
});
