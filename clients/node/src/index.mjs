/** workflow-orchestration-client: the service's typed client (ES module build). */

export { TERMINAL_EVENTS, TERMINAL_STATUSES, WorkflowClient } from "./client.mjs";
export {
  BadRequestError,
  ConflictError,
  ConnectionError,
  ForbiddenError,
  NotFoundError,
  PayloadTooLargeError,
  RateLimitError,
  RequestTimeoutError,
  ServerError,
  ServiceError,
  StreamError,
  UnauthorizedError,
  ValidationError,
} from "./errors.mjs";
export { PREFECT_TIMEOUT_MS, PrefectClient, prefectClient } from "./prefect.mjs";
export { MAX_EVENT_CHARS, parseSse } from "./sse.mjs";
