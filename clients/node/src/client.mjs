/** WorkflowClient: the service's HTTP API, its event streams and waitFor, over fetch. */

import {
  ConnectionError,
  ForbiddenError,
  NotFoundError,
  RequestTimeoutError,
  ServiceError,
  StreamError,
  UnauthorizedError,
  errorFor,
} from "./errors.mjs";
import { linkedController, sleep } from "./signals.mjs";
import { MAX_EVENT_CHARS, parseSse } from "./sse.mjs";

/** Statuses after which an execution changes no more. */
export const TERMINAL_STATUSES = Object.freeze(["completed", "failed", "cancelled"]);
/** The event types that end an execution's stream. */
export const TERMINAL_EVENTS = Object.freeze([
  "execution.completed",
  "execution.failed",
  "execution.cancelled",
]);

const RECONNECT_MAX_MS = 10_000;
const QUICK_CLOSE_MS = 5_000;

function path(template, ...ids) {
  let i = 0;
  return template.replace(/\{\}/g, () => encodeURIComponent(String(ids[i++])));
}

function defined(object) {
  return Object.fromEntries(Object.entries(object).filter(([, v]) => v !== undefined));
}

function typesParam(types) {
  return Array.isArray(types) ? types.join(",") : types;
}

export class WorkflowClient {
  /**
   * @param {string | URL | {baseUrl: string | URL, apiKey?: string, fetch?: typeof fetch,
   *   timeoutMs?: number, streamIdleMs?: number, maxEventChars?: number}} options
   */
  constructor(options) {
    const opts =
      typeof options === "string" || options instanceof URL ? { baseUrl: options } : { ...options };
    if (!opts.baseUrl) throw new TypeError("WorkflowClient needs a baseUrl");
    this.baseUrl = String(opts.baseUrl).replace(/\/+$/, "");
    this.apiKey = opts.apiKey ?? null;
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    this.streamIdleMs = opts.streamIdleMs ?? 45_000; // the service pings after 15 s of quiet
    this.maxEventChars = opts.maxEventChars ?? MAX_EVENT_CHARS;
    this.fetch = opts.fetch ?? globalThis.fetch;
    if (typeof this.fetch !== "function") {
      throw new TypeError("No fetch: use Node >= 18 or pass options.fetch");
    }
  }

  _url(route, query = {}) {
    const url = new URL(this.baseUrl + route);
    for (const [key, value] of Object.entries(query)) {
      if (value !== undefined && value !== null) url.searchParams.set(key, String(value));
    }
    return url;
  }

  _headers(extra = {}) {
    const headers = { Accept: "application/json", ...extra };
    if (this.apiKey) headers.Authorization = `Bearer ${this.apiKey}`;
    return headers;
  }

  /**
   * One request; resolves to the answer's JSON, rejects with a ServiceError subclass.
   * @param {string} method
   * @param {string} route
   * @param {{query?: object, body?: unknown, headers?: object, signal?: AbortSignal}} [options]
   */
  async request(method, route, { query, body, headers, signal } = {}) {
    const url = this._url(route, query);
    const timeout = () =>
      new RequestTimeoutError(`No answer from ${method} ${url.pathname} within ${this.timeoutMs} ms`);
    const link = linkedController([signal], this.timeoutMs, timeout);
    const extra = body === undefined ? headers : { "Content-Type": "application/json", ...headers };
    try {
      let response;
      let text;
      try {
        response = await this.fetch(url, {
          method,
          headers: this._headers(extra),
          body: body === undefined ? undefined : JSON.stringify(body),
          signal: link.signal,
        });
        text = await response.text();
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        if (link.signal.aborted) throw link.signal.reason;
        throw new ConnectionError(`Request failed: ${err?.cause?.message ?? err?.message ?? err}`, {
          cause: err,
        });
      }
      let parsed;
      try {
        parsed = text ? JSON.parse(text) : undefined;
      } catch {
        parsed = undefined;
      }
      if (!response.ok) throw errorFor(response.status, parsed, text);
      if (parsed === undefined) {
        throw new ServiceError(`Invalid JSON response: ${text.slice(0, 200)}`, {
          status: response.status,
          detail: text,
        });
      }
      return parsed;
    } finally {
      link.dispose();
    }
  }

  /** `GET /`: `{service, status, version, timestamp}`. */
  health(options) {
    return this.request("GET", "/", options);
  }

  /**
   * Starts an execution of a stored workflow (`workflowId`) or of an inline `workflow`
   * (`{nodes, connections}`); `execute("wf1", {inputs})` is short for
   * `execute({workflowId: "wf1", inputs})`. Resolves to `{success, executionId, status, ...}`.
   */
  execute(request, more = {}) {
    const r = typeof request === "string" ? { ...more, workflowId: request } : { ...request };
    const { idempotencyKey, signal, ...fields } = r;
    const body = defined({
      workflowId: fields.workflowId,
      workflow: fields.workflow,
      inputs: fields.inputs ?? {},
      organizationId: fields.organizationId,
      version: fields.version,
      priority: fields.priority,
      callback: fields.callback,
      mode: fields.mode,
    });
    const headers = idempotencyKey ? { "Idempotency-Key": String(idempotencyKey) } : undefined;
    return this.request("POST", "/api/workflows/execute", { body, headers, signal });
  }

  /** `GET /api/executions/{id}`: the execution's status, progress, results and logs. */
  get(executionId, options) {
    return this.request("GET", path("/api/executions/{}", executionId), options);
  }

  /** `GET /api/executions/{id}/logs`: `{executionId, logs}`, every log row oldest first. */
  logs(executionId, options) {
    return this.request("GET", path("/api/executions/{}/logs", executionId), options);
  }

  /** `POST /api/executions/{id}/cancel`: `{success, executionId, message, previousStatus}`. */
  cancel(executionId, options) {
    return this.request("POST", path("/api/executions/{}/cancel", executionId), options);
  }

  /** `POST /api/executions/{id}/retry` with `{fromScratch, callback, priority}`. */
  retry(executionId, { fromScratch, callback, priority, signal } = {}) {
    const body = defined({ fromScratch, callback, priority });
    return this.request("POST", path("/api/executions/{}/retry", executionId), { body, signal });
  }

  /** `POST /api/nodes/execute`: runs one node, `{workflowId, nodeId, nodeType, node, inputData}`. */
  runNode({ signal, ...node }) {
    return this.request("POST", "/api/nodes/execute", { body: defined(node), signal });
  }

  /** `GET /api/workflows/{id}/executions?limit=`: one workflow's executions, newest first. */
  history(workflowId, { limit, signal } = {}) {
    const route = path("/api/workflows/{}/executions", workflowId);
    return this.request("GET", route, { query: { limit }, signal });
  }

  /** `GET /api/executions?status=&workflowId=&limit=&before=`: every workflow's, a page. */
  list({ status, workflowId, limit, before, signal } = {}) {
    const query = { status, workflowId, limit, before };
    return this.request("GET", "/api/executions", { query, signal });
  }

  /** `GET /api/workflows/{id}/versions`: `{versions: [...]}`, newest first. */
  versions(workflowId, { limit, signal } = {}) {
    const route = path("/api/workflows/{}/versions", workflowId);
    return this.request("GET", route, { query: { limit }, signal });
  }

  /** `GET /api/workflows/{id}/versions/{n}`: one version with its definition as `workflow`. */
  version(workflowId, version, options) {
    return this.request("GET", path("/api/workflows/{}/versions/{}", workflowId, version), options);
  }

  /** `GET /api/workflows/{id}/versions/diff?from=&to=` (version numbers or `"draft"`). */
  diff(workflowId, from, to, { signal } = {}) {
    const route = path("/api/workflows/{}/versions/diff", workflowId);
    return this.request("GET", route, { query: { from, to }, signal });
  }

  /**
   * Resolves to the execution as `GET /api/executions/{id}` answers once it has ended. Waits on
   * the event stream (terminal events only); when the stream cannot be used it polls every
   * `pollIntervalMs`. `timeoutMs` (default: none) rejects with RequestTimeoutError.
   */
  async waitFor(executionId, { timeoutMs, pollIntervalMs = 1000, signal } = {}) {
    const timeout = () =>
      new RequestTimeoutError(`Execution ${executionId} did not end within ${timeoutMs} ms`);
    const link = linkedController([signal], timeoutMs, timeout);
    const own = { signal: link.signal };
    try {
      let execution = await this.get(executionId, own);
      if (TERMINAL_STATUSES.includes(execution.status)) return execution;
      try {
        const stream = this.events(executionId, { types: TERMINAL_EVENTS, maxRetries: 3, ...own });
        for await (const event of stream) {
          if (TERMINAL_EVENTS.includes(event.type)) break;
        }
      } catch (err) {
        if (link.signal.aborted) throw link.signal.reason;
        const fatal = [NotFoundError, UnauthorizedError, ForbiddenError];
        if (fatal.some((cls) => err instanceof cls)) throw err;
        // any other stream failure: polling still answers
      }
      for (;;) {
        execution = await this.get(executionId, own);
        if (TERMINAL_STATUSES.includes(execution.status)) return execution;
        await sleep(pollIntervalMs, link.signal);
      }
    } finally {
      link.dispose();
    }
  }

  /**
   * The events of one execution (`events(id)`: everything so far, then live, ending after its
   * terminal event) or of every execution the key may see (`events({workflowId, organizationId,
   * types})`: live, never ending; stop with `break` or `signal`). Resumes after a disconnect
   * from the last event id it yielded (Last-Event-ID), so nothing is lost or repeated.
   *
   * @param {string | {workflowId?: string, organizationId?: string, types?: string[] | string,
   *   after?: number | string, signal?: AbortSignal, maxRetries?: number}} target
   * @param {{types?: string[] | string, after?: number | string, signal?: AbortSignal,
   *   maxRetries?: number, reconnectDelayMs?: number}} [options]
   */
  async *events(target, options = {}) {
    const single = typeof target === "string";
    const opts = single ? { ...options } : { ...target, ...options };
    const { signal, maxRetries = 8, reconnectDelayMs = 250 } = opts;
    const route = single ? path("/api/executions/{}/events", target) : "/api/events";
    const query = { types: typesParam(opts.types) };
    if (!single) Object.assign(query, { workflowId: opts.workflowId, organizationId: opts.organizationId });
    let lastId = opts.after !== undefined && opts.after !== null ? String(opts.after) : null;
    let failures = 0;
    let draining = false; // the execution has ended: one more connection drains what is left
    let retryMs = null;
    for (;;) {
      const connection = this._stream(route, query, lastId, signal);
      const opened = Date.now();
      let cleanEnd = false;
      let received = 0;
      try {
        for await (const frame of connection) {
          failures = 0;
          received += 1;
          if (frame.retry !== null) retryMs = frame.retry;
          if (frame.id !== null) lastId = frame.id;
          let event;
          try {
            event = JSON.parse(frame.data);
          } catch (err) {
            throw new StreamError(`An event of the stream is not JSON: ${frame.data.slice(0, 200)}`, {
              cause: err,
            });
          }
          yield event;
          if (single && TERMINAL_EVENTS.includes(event.type)) return;
        }
        cleanEnd = true;
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        const retryable =
          err instanceof ConnectionError ||
          err instanceof RequestTimeoutError ||
          (err instanceof ServiceError && err.status !== null && (err.status >= 500 || err.status === 429));
        failures += 1;
        if (!retryable || failures > maxRetries) throw err;
      }
      if (cleanEnd && received === 0 && Date.now() - opened < QUICK_CLOSE_MS) {
        // a server that keeps closing at once is a failure too, not a reason to spin
        failures += 1;
        if (failures > maxRetries && !draining) {
          throw new StreamError(`The stream ${route} keeps closing without an event`);
        }
      }
      if (single && cleanEnd) {
        if (draining) return;
        const execution = await this.get(target, { signal });
        draining = TERMINAL_STATUSES.includes(execution.status);
        if (draining) continue;
      }
      const backoff = Math.min(RECONNECT_MAX_MS, (retryMs ?? reconnectDelayMs) * 2 ** Math.max(0, failures - 1));
      await sleep(backoff, signal);
    }
  }

  /** One SSE connection: yields its frames; rejects like `request` when it cannot open. */
  async *_stream(route, query, lastId, signal) {
    const url = this._url(route, query);
    const idle = () => new RequestTimeoutError(`No data from ${url.pathname} for ${this.streamIdleMs} ms`);
    const connect = () => new RequestTimeoutError(`No answer from ${url.pathname} within ${this.timeoutMs} ms`);
    let link = linkedController([signal], this.timeoutMs, connect);
    const controller = link.controller;
    const headers = this._headers({ Accept: "text/event-stream" });
    if (lastId !== null) headers["Last-Event-ID"] = lastId;
    try {
      let response;
      try {
        response = await this.fetch(url, { headers, signal: link.signal });
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        if (link.signal.aborted) throw link.signal.reason;
        throw new ConnectionError(`Request failed: ${err?.cause?.message ?? err?.message ?? err}`, {
          cause: err,
        });
      }
      if (!response.ok || !response.body) {
        const text = await response.text().catch(() => "");
        let parsed;
        try {
          parsed = JSON.parse(text);
        } catch {
          parsed = undefined;
        }
        throw errorFor(response.status, parsed, text);
      }
      link.dispose();
      // from here on the timer is an idle timeout, restarted by every chunk
      link = linkedController([signal], this.streamIdleMs, idle);
      link.signal.addEventListener("abort", () => controller.abort(link.signal.reason), { once: true });
      try {
        yield* parseSse(response.body, { maxEventChars: this.maxEventChars, onActivity: link.touch });
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        if (link.signal.aborted) throw link.signal.reason;
        if (err instanceof ServiceError) throw err;
        throw new ConnectionError(`Stream interrupted: ${err?.cause?.message ?? err?.message ?? err}`, {
          cause: err,
        });
      }
    } finally {
      link.dispose();
      controller.abort(); // a caller that stopped early closes the connection
    }
  }
}
