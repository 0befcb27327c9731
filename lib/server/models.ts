/**
 * The service's models: loaded once per name, shared by concurrent requests, and kept in
 * least-recently-used order within a byte budget. A model's bytes are counted as its weights as
 * loaded, or its .onnx file's size where that is larger (the native backend's packed copies come
 * on top of that; a model whose tensors live in external data has a small .onnx file). When a load passes
 * the budget, the least recently used models are dropped until it fits again (the one just used is
 * always kept, so a model larger than the budget still serves); a dropped model is disposed (its
 * weights and packed or device copies released) as soon as no request is using it.
 *
 * Hand-written rather than lru-cache: entries here are leased (a model in use must not be disposed
 * under a running job) and sized only once their load has finished, which a generic cache's
 * eviction callback cannot wait for.
 */
import { stat } from "node:fs/promises";
import { loadModelAt, type LoadedModel } from "../model/named.js";

interface Entry {
  name: string;
  model: Promise<LoadedModel>;
  /** Counted bytes, 0 until loaded. */
  bytes: number;
  /** Requests holding a lease. */
  users: number;
  /** Dropped from the cache: disposed when the last user lets go. */
  dropped: boolean;
}

/** A model in use by one request; `release()` once the request is done with it (idempotent). */
export interface ModelLease {
  model: LoadedModel;
  release(): void;
}

export interface ModelCacheStats {
  /** Names held, least recently used first. */
  names: string[];
  bytes: number;
  budget: number;
}

export class ModelCache {
  private readonly entries = new Map<string, Entry>(); // least recently used first
  private closed = false;

  /** `load` defaults to loadModelAt: an .onnx file or a model folder (tests pass their own). */
  constructor(
    readonly budget: number,
    private readonly load: (path: string) => Promise<LoadedModel> = (p) => loadModelAt(p),
  ) {
    if (!(budget > 0) || !Number.isFinite(budget))
      throw new RangeError(`Expected a positive number of bytes for the model cache budget but received ${String(budget)}`);
  }

  /** The model at `path` under `name`, loaded once; concurrent requests for it share the load. */
  async acquire(name: string, path: string): Promise<ModelLease> {
    if (this.closed) throw new Error("the model cache is closed");
    let e = this.entries.get(name);
    if (e) {
      this.entries.delete(name); // to the most recently used end
      this.entries.set(name, e);
    } else {
      const entry: Entry = { name, model: this.sizedLoad(name, path), bytes: 0, users: 0, dropped: false };
      e = entry;
      this.entries.set(name, entry);
      entry.model.catch(() => {
        if (this.entries.get(name) === entry) this.entries.delete(name);
      });
    }
    e.users++;
    let model: LoadedModel;
    try {
      model = await e.model;
    } catch (err) {
      e.users--;
      throw err;
    }
    const entry = e;
    let released = false;
    return {
      model,
      release: () => {
        if (released) return;
        released = true;
        entry.users--;
        if (entry.dropped && entry.users === 0) model.dispose();
      },
    };
  }

  private async sizedLoad(name: string, path: string): Promise<LoadedModel> {
    const fileBytes = (await stat(path)).size;
    const model = await this.load(path);
    const e = this.entries.get(name);
    if (e) {
      // the weights as loaded: a model whose tensors live in external data has a small .onnx file
      e.bytes = Math.max(fileBytes, model.weightBytes ?? 0);
      this.evict(e);
    }
    return model;
  }

  /** Drops least recently used entries (never `keep`, never one still loading) until the budget holds. */
  private evict(keep: Entry) {
    for (const e of [...this.entries.values()]) {
      if (this.total() <= this.budget) return;
      if (e === keep || e.bytes === 0) continue;
      this.drop(e);
    }
  }

  private drop(e: Entry) {
    this.entries.delete(e.name);
    e.dropped = true;
    if (e.users === 0)
      void e.model.then(
        (m) => m.dispose(),
        () => undefined,
      );
  }

  private total(): number {
    let n = 0;
    for (const e of this.entries.values()) n += e.bytes;
    return n;
  }

  get stats(): ModelCacheStats {
    return { names: [...this.entries.keys()], bytes: this.total(), budget: this.budget };
  }

  /** Drops every model (each disposed once its requests are done); no more can be acquired. */
  close(): void {
    this.closed = true;
    for (const e of [...this.entries.values()]) this.drop(e);
  }
}
