// Types of workflow-orchestration-client (hand-written; the service's /openapi.json is the
// source of the shapes).

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type ExecutionStatus = "pending" | "running" | "completed" | "failed" | "cancelled" | (string & {});
export type Priority = "high" | "normal" | "low";
export type VersionSelector = "draft" | "published" | number;
export type EventType =
  | "execution.queued"
  | "execution.started"
  | "execution.resumed"
  | "node.started"
  | "node.completed"
  | "node.failed"
  | "node.skipped"
  | "execution.completed"
  | "execution.failed"
  | "execution.cancelled";

export interface ClientOptions {
  baseUrl: string | URL;
  /** sent as `Authorization: Bearer <key>` */
  apiKey?: string;
  fetch?: typeof fetch;
  /** per request, and for an event stream until its answer starts (default 30000) */
  timeoutMs?: number;
  /** an event stream without a byte for this long reconnects (default 45000) */
  streamIdleMs?: number;
  /** the largest event (and line) an event stream may send (default 1 MiB) */
  maxEventChars?: number;
}

export interface RequestOptions {
  signal?: AbortSignal;
}

export interface Callback {
  url: string;
  events?: EventType[];
}

export interface WorkflowDefinition {
  nodes: Array<{ id: string; type: string; label?: string; config?: Record<string, Json>; [key: string]: Json | undefined }>;
  connections: Array<{ fromNodeId: string; toNodeId: string; branch?: string | null; inputPort?: string | null; [key: string]: Json | undefined | null }>;
}

export interface ExecuteRequest extends RequestOptions {
  workflowId?: string;
  workflow?: WorkflowDefinition;
  inputs?: Record<string, Json>;
  organizationId?: string | null;
  /** the `Idempotency-Key` header: the same key and organization within 24 h give the same execution */
  idempotencyKey?: string;
  version?: VersionSelector;
  priority?: Priority;
  callback?: Callback;
  mode?: "prefect" | "inline";
}

export interface ExecutionSubmitted {
  success: boolean;
  executionId: string;
  status: ExecutionStatus;
  message: string;
  workflowId: string | null;
  workflowName: string | null;
}

export interface RetrySubmitted extends ExecutionSubmitted {
  retryOf: string;
}

export interface Progress {
  totalNodes: number;
  completedNodes: number;
  failedNodes: number;
  skippedNodes: number;
  percentage: number;
}

export interface LogRow {
  id: string;
  executionId: string;
  nodeId: string | null;
  nodeType: string | null;
  nodeLabel: string | null;
  status: string | null;
  inputData: string | null;
  outputData: string | null;
  error: string | null;
  duration: number | null;
  timestamp: string | null;
}

export interface CallbackDelivery {
  webhookId: string;
  url: string;
  event: EventType;
  status: "pending" | "delivered" | "failed";
  attempts: number;
  nextAttemptAt: string | null;
  lastError: string | null;
  deliveredAt: string | null;
}

export interface Execution {
  executionId: string;
  workflowId: string | null;
  workflowName: string | null;
  organizationId: string | null;
  status: ExecutionStatus;
  createdAt: string | null;
  startedAt: string | null;
  completedAt: string | null;
  currentNodeId: string | null;
  error: string | null;
  progress: Progress;
  logs: LogRow[];
  inputs: Json;
  nodeResults: Record<string, Json> | null;
  finalOutput: Json;
  mode: string | null;
  modeReason: string | null;
  attempts: number | null;
  resumedAt: string | null;
  retryOf: string | null;
  flowRunId: string | null;
  prefectUrl: string | null;
  callbacks: CallbackDelivery[];
  workflowVersion: number | null;
  workflowHash: string | null;
  /** its claim priority; null for rows the service did not create */
  priority: Priority | null;
}

export interface ExecutionLogs {
  executionId: string;
  logs: LogRow[];
}

export interface CancelResult {
  success: boolean;
  executionId: string;
  message: string;
  previousStatus: ExecutionStatus;
}

export interface NodeRunRequest extends RequestOptions {
  workflowId?: string;
  nodeId: string;
  nodeType: string;
  node: Record<string, Json>;
  inputData?: Json;
}

export type NodeRunResult =
  | { success: true; nodeId: string; nodeType: string; output: Json; message: string }
  | { success: false; nodeId: string; nodeType: string; error: string; message: string };

export interface ExecutionSummary {
  id: string;
  workflowId: string;
  status: ExecutionStatus;
  createdAt: string | null;
  startedAt: string | null;
  completedAt: string | null;
  error: string | null;
  workflowVersion: number | null;
  workflowHash: string | null;
}

export interface WorkflowExecutions {
  workflowId: string;
  workflowName: string | null;
  executions: ExecutionSummary[];
  total: number;
}

export interface ExecutionListed {
  executionId: string;
  workflowId: string | null;
  workflowName: string | null;
  organizationId: string | null;
  status: ExecutionStatus;
  createdAt: string | null;
  startedAt: string | null;
  completedAt: string | null;
  error: string | null;
  workflowVersion: number | null;
  workflowHash: string | null;
}

export interface ExecutionsPage {
  executions: ExecutionListed[];
  counts: { pending: number; running: number };
  nextCursor: string | null;
}

export interface VersionSummary {
  version: number;
  name: string | null;
  description: string | null;
  createdAt: string | null;
  createdByName: string | null;
  published: boolean;
  hash: string;
}

export interface VersionDetail extends VersionSummary {
  workflow: WorkflowDefinition;
}

export interface VersionDiff {
  nodes: { added: string[]; removed: string[]; changed: Array<{ id: string; keys: string[] }> };
  connections: { added: Json[]; removed: Json[] };
}

export interface Health {
  service: string;
  status: string;
  version: string;
  timestamp: string;
}

/** One event of a stream (see the service README, Execution events). */
export interface ExecutionEvent {
  id: number;
  type: EventType;
  executionId: string;
  workflowId: string | null;
  timestamp: string;
  progress: Progress;
  nodeId?: string;
  nodeType?: string;
  nodeLabel?: string | null;
  durationMs?: number;
  attempts?: number;
  output?: Json;
  error?: string | null;
  [key: string]: unknown;
}

export interface EventOptions extends RequestOptions {
  types?: EventType[] | string;
  /** resume after this event id */
  after?: number | string;
  /** consecutive failed connections before the iterator throws (default 8) */
  maxRetries?: number;
  /** first reconnection delay, doubled per failure up to 10 s (default 250) */
  reconnectDelayMs?: number;
}

export interface EventFilter extends EventOptions {
  workflowId?: string;
  organizationId?: string;
}

export interface WaitOptions extends RequestOptions {
  /** reject with RequestTimeoutError after this long (default: no limit) */
  timeoutMs?: number;
  /** polling interval when the event stream cannot be used (default 1000) */
  pollIntervalMs?: number;
}

export declare const TERMINAL_STATUSES: readonly ["completed", "failed", "cancelled"];
export declare const TERMINAL_EVENTS: readonly ["execution.completed", "execution.failed", "execution.cancelled"];
export declare const MAX_EVENT_CHARS: number;
export declare const PREFECT_TIMEOUT_MS: number;

export declare class WorkflowClient {
  constructor(options: string | URL | ClientOptions);
  readonly baseUrl: string;
  apiKey: string | null;
  timeoutMs: number;
  streamIdleMs: number;
  maxEventChars: number;
  request<T = Json>(
    method: string,
    route: string,
    options?: { query?: Record<string, string | number | undefined | null>; body?: unknown; headers?: Record<string, string>; signal?: AbortSignal },
  ): Promise<T>;
  health(options?: RequestOptions): Promise<Health>;
  execute(request: ExecuteRequest): Promise<ExecutionSubmitted>;
  execute(workflowId: string, request?: Omit<ExecuteRequest, "workflowId" | "workflow">): Promise<ExecutionSubmitted>;
  get(executionId: string, options?: RequestOptions): Promise<Execution>;
  logs(executionId: string, options?: RequestOptions): Promise<ExecutionLogs>;
  cancel(executionId: string, options?: RequestOptions): Promise<CancelResult>;
  retry(executionId: string, options?: RequestOptions & { fromScratch?: boolean; callback?: Callback; priority?: Priority }): Promise<RetrySubmitted>;
  runNode(request: NodeRunRequest): Promise<NodeRunResult>;
  history(workflowId: string, options?: RequestOptions & { limit?: number }): Promise<WorkflowExecutions>;
  list(options?: RequestOptions & { status?: ExecutionStatus; workflowId?: string; limit?: number; before?: string }): Promise<ExecutionsPage>;
  versions(workflowId: string, options?: RequestOptions & { limit?: number }): Promise<{ versions: VersionSummary[] }>;
  version(workflowId: string, version: number, options?: RequestOptions): Promise<VersionDetail>;
  diff(workflowId: string, from: number | "draft", to: number | "draft", options?: RequestOptions): Promise<VersionDiff>;
  waitFor(executionId: string, options?: WaitOptions): Promise<Execution>;
  events(executionId: string, options?: EventOptions): AsyncGenerator<ExecutionEvent, void, undefined>;
  events(filter?: EventFilter, options?: EventOptions): AsyncGenerator<ExecutionEvent, void, undefined>;
}

export declare class ServiceError extends Error {
  constructor(message: string, options?: { status?: number | null; detail?: unknown; cause?: unknown });
  /** the HTTP status; null when no answer came (connection, timeout, stream format) */
  readonly status: number | null;
  /** the answer's `detail` as sent (usually a string), else the message */
  readonly detail: unknown;
}
export declare class BadRequestError extends ServiceError {}
export declare class UnauthorizedError extends ServiceError {}
export declare class ForbiddenError extends ServiceError {}
export declare class NotFoundError extends ServiceError {}
export declare class ConflictError extends ServiceError {}
export declare class PayloadTooLargeError extends ServiceError {}
export declare class ValidationError extends ServiceError {}
export declare class RateLimitError extends ServiceError {}
export declare class ServerError extends ServiceError {}
export declare class ConnectionError extends ServiceError {}
export declare class RequestTimeoutError extends ServiceError {}
export declare class StreamError extends ServiceError {}

export interface SseFrame {
  id: string | null;
  event: string;
  data: string;
  retry: number | null;
}
export declare function parseSse(
  body: ReadableStream<Uint8Array>,
  options?: { maxEventChars?: number; onActivity?: () => void },
): AsyncGenerator<SseFrame, void, undefined>;

/** The Node backend's `server/prefectClient.js`, method for method. */
export declare class PrefectClient {
  constructor(baseUrl?: string);
  baseUrl: string;
  /** socket inactivity timeout per request, ms (default 30000) */
  timeout: number;
  executeWorkflow(
    workflowId: string,
    inputs?: Record<string, Json>,
    organizationId?: string | null,
  ): Promise<{ success: true; executionId: string; status: string; message: string; usingPrefect: true }>;
  getExecutionStatus(executionId: string): Promise<Execution>;
  getExecutionLogs(executionId: string): Promise<LogRow[]>;
  executeNode(request: { workflowId?: string; nodeId: string; nodeType?: string; node?: Record<string, Json>; inputData?: Json }): Promise<NodeRunResult>;
  cancelExecution(executionId: string): Promise<CancelResult>;
  isAvailable(): Promise<boolean>;
  makeRequest<T = Json>(
    path: string,
    options?: { method?: string; body?: unknown; headers?: Record<string, string>; timeout?: number },
  ): Promise<T>;
}
export declare const prefectClient: PrefectClient;
