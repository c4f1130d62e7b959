// Shared by the tests: the service the Python test started (env), local servers, workflows.
import assert from "node:assert/strict";
import http from "node:http";

export const BASE_URL = process.env.WOS_BASE_URL;
export const WORKFLOW_ID = process.env.WOS_WORKFLOW_ID;
export const ORG = process.env.WOS_ORGANIZATION_ID;
export const CALLBACK_SECRET = process.env.WOS_CALLBACK_SECRET;
assert.ok(BASE_URL && WORKFLOW_ID && ORG, "run through tests/test_client_node.py (WOS_* env)");

/** A local HTTP server; `handler(req, res, body)` answers. Resolves to {url, port, requests, close}. */
export async function localServer(handler) {
  const requests = [];
  const sockets = new Set();
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      requests.push({ method: req.method, url: req.url, headers: req.headers, body });
      handler(req, res, body);
    });
  });
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    requests,
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

/** A port nothing listens on (bound, then released). */
export async function closedPort() {
  const s = await localServer(() => {});
  await s.close();
  return s.port;
}

export function json(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) });
  res.end(text);
}

/** trigger -> addField (`marker`) -> output, inline. */
export function markerWorkflow(marker) {
  return {
    nodes: [
      { id: "t", type: "trigger" },
      { id: "a", type: "addField", config: { addFieldName: "ran", addFieldValue: marker } },
      { id: "o", type: "output" },
    ],
    connections: [
      { fromNodeId: "t", toNodeId: "a" },
      { fromNodeId: "a", toNodeId: "o" },
    ],
  };
}

/** trigger -> http GET `url` -> output, inline. */
export function httpWorkflow(url) {
  return {
    nodes: [
      { id: "t", type: "trigger" },
      { id: "h", type: "http", config: { httpUrl: url, httpMethod: "GET" } },
      { id: "o", type: "output" },
    ],
    connections: [
      { fromNodeId: "t", toNodeId: "h" },
      { fromNodeId: "h", toNodeId: "o" },
    ],
  };
}

/**
 * A proxy to the service that cuts the first event-stream connection right after the first
 * complete event it forwarded (a real TCP disconnect mid-stream); every request's
 * Last-Event-ID is recorded in `streams`.
 */
export async function cuttingProxy(target) {
  const streams = [];
  let cut = false;
  const proxy = await localServer((req, res, body) => {
    const isStream = req.url.includes("/events");
    if (isStream) streams.push({ url: req.url, lastEventId: req.headers["last-event-id"] ?? null });
    const upstream = http.request(
      `${target}${req.url}`,
      { method: req.method, headers: { ...req.headers, host: new URL(target).host } },
      (up) => {
        res.writeHead(up.statusCode, up.headers);
        let seen = "";
        up.on("data", (chunk) => {
          if (isStream && !cut) {
            seen += chunk.toString("utf8");
            const end = seen.indexOf("\n\n");
            if (end !== -1) {
              cut = true;
              const first = seen.slice(0, end + 2);
              res.write(first, () => {
                up.destroy();
                res.socket.destroy();
              });
              return;
            }
            return; // held back until the first event is complete
          }
          res.write(chunk);
        });
        up.on("end", () => res.end());
        up.on("error", () => res.destroy());
      },
    );
    upstream.on("error", () => res.destroy());
    res.on("close", () => upstream.destroy()); // the client left: so does the upstream stream
    upstream.end(body);
  });
  return { ...proxy, streams };
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
