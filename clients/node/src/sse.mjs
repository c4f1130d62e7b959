/**
 * Server-Sent Events parsing over a fetch body (a ReadableStream of bytes), as the HTML
 * specification's event-stream interpretation says, with bounded buffers.
 */

import { StreamError } from "./errors.mjs";

/** Default bound of one event (its data lines together) and of one line, in characters. */
export const MAX_EVENT_CHARS = 1024 * 1024;

const LINE_END = /\r\n|\r|\n/g;

/**
 * Reads an SSE stream and yields its events as `{id, event, data, retry}` (`id` is the last
 * event id seen so far, as EventSource keeps it; `retry` the last reconnection time the server
 * asked for, or null). Comments (`: ping`) are skipped; a line or event longer than
 * `maxEventChars` throws StreamError, so a hostile server cannot grow memory without bound.
 *
 * @param {ReadableStream<Uint8Array>} body
 * @param {{maxEventChars?: number, onActivity?: () => void}} [options]
 */
export async function* parseSse(body, { maxEventChars = MAX_EVENT_CHARS, onActivity } = {}) {
  const reader = body.getReader();
  const decoder = new TextDecoder("utf-8");
  let buffer = "";
  let data = [];
  let dataChars = 0;
  let type = "";
  let lastId = null;
  let retry = null;
  let started = false; // the UTF-8 byte order mark may lead the stream only
  let pendingCr = false; // a chunk ended with \r: a \n opening the next one belongs to it

  function* takeLine(line) {
    if (line === "") {
      if (data.length > 0) {
        yield { id: lastId, event: type || "message", data: data.join("\n"), retry };
      }
      data = [];
      dataChars = 0;
      type = "";
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") {
      dataChars += value.length + 1;
      if (dataChars > maxEventChars) {
        throw new StreamError(`An event of the stream exceeds ${maxEventChars} characters`);
      }
      data.push(value);
    } else if (field === "event") {
      type = value;
    } else if (field === "id") {
      if (!value.includes("\0")) lastId = value;
    } else if (field === "retry") {
      if (/^\d+$/.test(value)) retry = Number(value);
    }
  }

  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      onActivity?.();
      let text = decoder.decode(value, { stream: true });
      if (!started && text.length > 0) {
        started = true;
        if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
      }
      if (pendingCr && text.startsWith("\n")) text = text.slice(1);
      pendingCr = false;
      buffer += text;
      let start = 0;
      for (;;) {
        LINE_END.lastIndex = start;
        const found = LINE_END.exec(buffer);
        if (found === null) break;
        if (found[0] === "\r" && found.index === buffer.length - 1) {
          pendingCr = true; // may be the first half of \r\n split across chunks
        }
        yield* takeLine(buffer.slice(start, found.index));
        start = found.index + found[0].length;
      }
      buffer = buffer.slice(start);
      if (buffer.length > maxEventChars) {
        throw new StreamError(`A line of the stream exceeds ${maxEventChars} characters`);
      }
    }
    // an event not followed by a blank line is incomplete: dropped, as EventSource drops it
  } finally {
    reader.cancel().catch(() => {}); // closes the connection when the caller stops early
  }
}
