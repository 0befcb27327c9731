/**
 * Cancellation that reaches into native calls: `withCancel(backend, signal, fn)` runs `fn` with a
 * cancel token in scope (AsyncLocalStorage follows it through every await); the native backend
 * hands the token to each addon call made in that scope, and an abort sets it, so a convolution
 * in flight stops at its next chunk (a fraction of a layer) instead of running to its end. The
 * promise then rejects with the signal's reason.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import type { Backend } from "./types.js";

/** The token of the cancellable computation this async context belongs to. */
export const cancelScope = new AsyncLocalStorage<unknown>();

export async function withCancel<T>(be: Backend, signal: AbortSignal | undefined, fn: () => Promise<T>): Promise<T> {
  if (!signal) return fn();
  signal.throwIfAborted();
  const tok = be.cancelToken?.();
  if (!tok) return fn();
  const onAbort = () => tok.cancel();
  signal.addEventListener("abort", onAbort, { once: true });
  try {
    return await cancelScope.run(tok.token, fn);
  } catch (e) {
    if (signal.aborted) throw signal.reason;
    throw e;
  } finally {
    signal.removeEventListener("abort", onAbort);
  }
}
