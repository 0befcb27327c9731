/**
 * Admission of jobs: `concurrency` run at once, `queue` wait, the rest are refused at once (503 +
 * Retry-After) — before their bodies are read, decoded or a model is loaded. An admitted job
 * reserves the bytes it decodes against a per-request cap (413) and a cap on all jobs in flight
 * (503). A job's slot and bytes are given back only by release(), which the server calls once the
 * job's work has stopped.
 */
import { HttpError } from "./errors.js";

export interface AdmissionLimits {
  concurrency: number;
  queue: number;
  /** Decoded bytes one request may hold. */
  maxRequestBytes: number;
  /** Decoded bytes all admitted requests together may hold. */
  maxInflightBytes: number;
}

export class Ticket {
  bytes = 0;
  private released = false;
  constructor(private readonly owner: Admission) {}
  /** Reserves `bytes` of decoded data for `what` (a name for the message) or throws 413/503. */
  reserve(bytes: number, what: string): void {
    const { maxRequestBytes, maxInflightBytes } = this.owner.limits;
    if (this.bytes + bytes > maxRequestBytes) {
      throw new HttpError(
        413,
        "too_large",
        `${what} decodes to ${bytes} bytes; with this request's other data (${this.bytes} bytes) that exceeds the server's ${maxRequestBytes}-byte limit per request`,
      );
    }
    if (this.owner.inflightBytes + bytes > maxInflightBytes) {
      throw new HttpError(
        503,
        "busy",
        `the server holds ${this.owner.inflightBytes} decoded bytes of other requests; ${what} (${bytes} bytes) would exceed its ${maxInflightBytes}-byte limit; retry later`,
        { "retry-after": "5" },
      );
    }
    this.bytes += bytes;
    this.owner.inflightBytes += bytes;
  }
  release(): void {
    if (this.released) return;
    this.released = true;
    this.owner.inflightBytes -= this.bytes;
    this.bytes = 0;
    this.owner.leave();
  }
}

export class Admission {
  active = 0;
  inflightBytes = 0;
  private waiting: { admit: () => void }[] = [];
  constructor(readonly limits: AdmissionLimits) {}

  /** A slot, at once or after waiting in the queue; 503 when the queue is full; rejects if `signal` aborts while waiting. */
  async enter(signal: AbortSignal): Promise<Ticket> {
    if (this.active < this.limits.concurrency && this.waiting.length === 0) {
      this.active++;
      return new Ticket(this);
    }
    if (this.waiting.length >= this.limits.queue) {
      throw new HttpError(
        503,
        "busy",
        `all ${this.limits.concurrency} workers are busy and the queue of ${this.limits.queue} is full; retry later`,
        { "retry-after": "5" },
      );
    }
    signal.throwIfAborted();
    return new Promise<Ticket>((resolve, reject) => {
      const entry = {
        admit: () => {
          signal.removeEventListener("abort", onAbort);
          this.active++;
          resolve(new Ticket(this));
        },
      };
      const onAbort = () => {
        const i = this.waiting.indexOf(entry);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(signal.reason);
      };
      signal.addEventListener("abort", onAbort, { once: true });
      this.waiting.push(entry);
    });
  }

  /** Called by Ticket.release: frees the slot and admits the next waiting job. */
  leave(): void {
    this.active--;
    while (this.active < this.limits.concurrency && this.waiting.length) this.waiting.shift()!.admit();
  }

  get load(): { active: number; waiting: number } {
    return { active: this.active, waiting: this.waiting.length };
  }
}
