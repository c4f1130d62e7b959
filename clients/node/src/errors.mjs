/**
 * Errors of the client. Every failure is a ServiceError:
 *
 *   ServiceError (status, detail)
 *   ├── BadRequestError        400
 *   ├── UnauthorizedError      401  missing or invalid API key
 *   ├── ForbiddenError         403  another organization's data
 *   ├── NotFoundError          404  unknown workflow, execution or version
 *   ├── ConflictError          409  idempotency key reused with another body; retry of a run
 *   ├── PayloadTooLargeError   413
 *   ├── ValidationError        422  invalid body or query
 *   ├── RateLimitError         429
 *   ├── ServerError            5xx
 *   ├── ConnectionError        status null: the request never got an answer
 *   ├── RequestTimeoutError    status null: no answer within timeoutMs (or waitFor's timeout)
 *   └── StreamError            status null: an event stream broke the SSE format or its bounds
 */

export class ServiceError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number | null, detail?: unknown, cause?: unknown}} [options]
   */
  constructor(message, { status = null, detail = message, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = new.target.name;
    this.status = status;
    this.detail = detail;
  }
}

export class BadRequestError extends ServiceError {}
export class UnauthorizedError extends ServiceError {}
export class ForbiddenError extends ServiceError {}
export class NotFoundError extends ServiceError {}
export class ConflictError extends ServiceError {}
export class PayloadTooLargeError extends ServiceError {}
export class ValidationError extends ServiceError {}
export class RateLimitError extends ServiceError {}
export class ServerError extends ServiceError {}
export class ConnectionError extends ServiceError {}
export class RequestTimeoutError extends ServiceError {}
export class StreamError extends ServiceError {}

const BY_STATUS = new Map([
  [400, BadRequestError],
  [401, UnauthorizedError],
  [403, ForbiddenError],
  [404, NotFoundError],
  [409, ConflictError],
  [413, PayloadTooLargeError],
  [422, ValidationError],
  [429, RateLimitError],
]);

/** The most readable text of an error answer: its `detail` (FastAPI's list of problems joined),
 * else its `error`, else the body itself when it is not JSON, else `HTTP <status>`. */
function detailText(status, body, text) {
  const detail = body && typeof body === "object" ? (body.detail ?? body.error) : undefined;
  if (typeof detail === "string" && detail) return detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => (d && typeof d === "object" ? d.msg ?? JSON.stringify(d) : String(d))).join("; ");
  }
  if (detail !== undefined && detail !== null) return JSON.stringify(detail);
  const trimmed = body === undefined ? (text ?? "").trim() : ""; // a body that is not JSON
  return trimmed ? trimmed.slice(0, 2000) : `HTTP ${status}`;
}

/**
 * The error for a non-2xx answer.
 * @param {number} status
 * @param {unknown} body the parsed JSON body (undefined when it was not JSON)
 * @param {string} text the raw body
 * @returns {ServiceError}
 */
export function errorFor(status, body, text) {
  const Cls = BY_STATUS.get(status) ?? (status >= 500 ? ServerError : ServiceError);
  const detail =
    body && typeof body === "object" && "detail" in body ? body.detail : detailText(status, body, text);
  return new Cls(detailText(status, body, text), { status, detail });
}
