/** Abort-signal helpers that also work on Node 18 (which lacks AbortSignal.any). */

/**
 * A controller aborted when any of `signals` aborts (with that signal's reason), or when
 * `timeoutMs` passes (with `onTimeout()` as the reason). `dispose()` drops the listeners and
 * the timer; call it once the work is done.
 *
 * @param {(AbortSignal | undefined | null)[]} signals
 * @param {number} [timeoutMs] Infinity or undefined: no timer
 * @param {() => unknown} [onTimeout]
 */
export function linkedController(signals, timeoutMs, onTimeout) {
  const controller = new AbortController();
  const cleanups = [];
  for (const signal of signals) {
    if (!signal) continue;
    if (signal.aborted) {
      controller.abort(signal.reason);
      break;
    }
    const listener = () => controller.abort(signal.reason);
    signal.addEventListener("abort", listener, { once: true });
    cleanups.push(() => signal.removeEventListener("abort", listener));
  }
  let timer = null;
  if (timeoutMs !== undefined && Number.isFinite(timeoutMs) && !controller.signal.aborted) {
    timer = setTimeout(() => controller.abort(onTimeout ? onTimeout() : undefined), timeoutMs);
  }
  return {
    controller,
    signal: controller.signal,
    /** restarts the timer (an idle timeout) */
    touch() {
      if (timer === null) return;
      clearTimeout(timer);
      timer = setTimeout(() => controller.abort(onTimeout ? onTimeout() : undefined), timeoutMs);
    },
    dispose() {
      if (timer !== null) clearTimeout(timer);
      timer = null;
      for (const cleanup of cleanups) cleanup();
    },
  };
}

/** Resolves after `ms`, or rejects with the signal's reason once it aborts. */
export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
