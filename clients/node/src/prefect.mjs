/**
 * PrefectClient: a drop-in for the Node backend's `server/prefectClient.js`, with the same
 * methods, resolutions and error messages, so the backend switches by changing one import.
 */

import http from "node:http";
import https from "node:https";

/** The socket timeout of every request, as the backend's client has it. */
export const PREFECT_TIMEOUT_MS = 30_000;

export class PrefectClient {
  /** @param {string} [baseUrl] paths resolve with `new URL(path, baseUrl)` */
  constructor(baseUrl = "http://localhost:8000") {
    this.baseUrl = baseUrl;
    /** Socket inactivity timeout of a request, ms (`Request timeout` when it passes). */
    this.timeout = PREFECT_TIMEOUT_MS;
  }

  /** Resolves to `{success: true, executionId, status, message, usingPrefect: true}`. */
  async executeWorkflow(workflowId, inputs = {}, organizationId = null) {
    try {
      const response = await this.makeRequest("/api/workflows/execute", {
        method: "POST",
        body: { workflowId, inputs, organizationId },
      });
      return {
        success: true,
        executionId: response.executionId,
        status: response.status,
        message: response.message,
        usingPrefect: true,
      };
    } catch (error) {
      throw new Error(`Prefect service error: ${error.message}`);
    }
  }

  /** Resolves to `GET /api/executions/{id}`'s JSON as it is. */
  async getExecutionStatus(executionId) {
    try {
      return await this.makeRequest(`/api/executions/${executionId}`, { method: "GET" });
    } catch (error) {
      throw new Error(`Failed to get execution status: ${error.message}`);
    }
  }

  /** Resolves to the execution's `logs` array (`[]` when the answer has none). */
  async getExecutionLogs(executionId) {
    try {
      const response = await this.makeRequest(`/api/executions/${executionId}/logs`, {
        method: "GET",
      });
      return response.logs || [];
    } catch (error) {
      throw new Error(`Failed to get execution logs: ${error.message}`);
    }
  }

  /** Runs one node: resolves to `POST /api/nodes/execute`'s JSON as it is. */
  async executeNode({ workflowId, nodeId, nodeType, node, inputData }) {
    try {
      return await this.makeRequest("/api/nodes/execute", {
        method: "POST",
        body: { workflowId, nodeId, nodeType, node, inputData },
      });
    } catch (error) {
      throw new Error(`Prefect service error: ${error.message}`);
    }
  }

  /** Resolves to `POST /api/executions/{id}/cancel`'s JSON as it is (sent without a body). */
  async cancelExecution(executionId) {
    try {
      return await this.makeRequest(`/api/executions/${executionId}/cancel`, { method: "POST" });
    } catch (error) {
      throw new Error(`Failed to cancel execution: ${error.message}`);
    }
  }

  /** Whether `GET /` says `status: "running"`; never rejects. */
  async isAvailable() {
    try {
      const response = await this.makeRequest("/", { method: "GET" });
      return response.status === "running";
    } catch {
      return false;
    }
  }

  /**
   * One request with `Content-Type: application/json`; the body is parsed before the status is
   * looked at. Rejects with `Invalid JSON response: <body>`, the answer's `detail` (else its
   * `error`, else `HTTP <code>`), `Request failed: <reason>` or `Request timeout`.
   */
  makeRequest(path, options = {}) {
    return new Promise((resolve, reject) => {
      const url = new URL(path, this.baseUrl);
      const isHttps = url.protocol === "https:";
      const transport = isHttps ? https : http;
      const request = transport.request(
        {
          hostname: url.hostname,
          port: url.port || (isHttps ? 443 : 80),
          path: url.pathname + url.search,
          method: options.method || "GET",
          headers: { "Content-Type": "application/json", ...options.headers },
          timeout: options.timeout || this.timeout,
        },
        (res) => {
          let data = "";
          res.setEncoding("utf8");
          res.on("data", (chunk) => {
            data += chunk;
          });
          res.on("end", () => {
            try {
              const parsed = JSON.parse(data);
              if (res.statusCode >= 200 && res.statusCode < 300) {
                resolve(parsed);
              } else {
                reject(new Error(parsed.detail || parsed.error || `HTTP ${res.statusCode}`));
              }
            } catch {
              reject(new Error(`Invalid JSON response: ${data}`));
            }
          });
        },
      );
      request.on("error", (error) => {
        reject(new Error(`Request failed: ${error.message}`));
      });
      request.on("timeout", () => {
        request.destroy();
        reject(new Error("Request timeout"));
      });
      if (options.body) {
        request.write(JSON.stringify(options.body));
      }
      request.end();
    });
  }
}

/** The backend's instance: PREFECT_SERVICE_URL, else http://localhost:8000. */
export const prefectClient = new PrefectClient(
  (typeof process !== "undefined" && process.env.PREFECT_SERVICE_URL) || "http://localhost:8000",
);
